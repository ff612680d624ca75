//! How many reserve decisions one core makes per second with a million users' counters in memory.
//!
//! The server's answer to a reserve is load → decide → persist; this measures the middle part
//! alone, so the figure is the ceiling the core puts on every backend. The counter state of
//! every user is a flat `Vec<CounterState>` (one slot per user and limit), standing for the
//! in-memory state. One thread picks a random user, builds the checks of its limits, calls
//! [`decide_reserve`], holds what it admitted, and (in the settle variants) commits the hold at
//! once through [`settle`]. The window variants also resolve every limit's window with
//! [`limit_window`], as the store procedure does on every request.
//!
//! `cargo bench -p tollgate-core --bench decide [-- --users N --seconds S --limits L]`.
//! Under `cargo test --benches` (no `--bench` flag) it runs a tiny smoke round instead: it is a
//! benchmark, never a timed test, and nothing here asserts a speed.

use std::hint::black_box;
use std::time::{Duration, Instant};

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use tollgate_core::decision::{decide_reserve, settle, CounterState, LimitCheck, SettleInput};
use tollgate_core::plan::{Enforcement, Limit, LimitKind, Plan, Scope, WindowSpec};
use tollgate_core::subscription::{limit_window, Resolved, Subscription, SubscriptionStatus};
use tollgate_core::window::{BillingInterval, CalendarPeriod, IntervalUnit};

/// The quota of the first limit of every user; limit j has `QUOTA_FIRST + j * QUOTA_STEP`. Every
/// counter starts with a random `used` in `0..=quota`, so some reserves are denied from the
/// start and more as users fill up (the table reports the share admitted).
const QUOTA_FIRST: u64 = 50;
const QUOTA_STEP: u64 = 25;
/// Each reserve asks for 1..=4 units (2.5 on average): a user is full after ~20 reserves.
const QUANTITY_MASK: u64 = 3;
/// Operations between two reads of the clock, so `Instant::now` stays out of the figure.
const OPS_PER_CLOCK_READ: u64 = 1024;
/// The simulated clock of the window variants advances this much per request (1M requests/s).
const CLOCK_STEP_NANOS: i64 = 1_000;
/// 2026-03-29T00:59:58Z: the simulated clock of the window variants starts two seconds before
/// Europe/Berlin's spring-forward change, so every run resolves windows on both sides of it.
const CLOCK_START_SECOND: i64 = 1_774_745_998;

struct Options {
    /// Run by `cargo bench`; otherwise a smoke round.
    benching: bool,
    users: usize,
    seconds: f64,
    warmup_seconds: f64,
    limits: Vec<usize>,
}

impl Options {
    fn parse() -> Options {
        let args: Vec<String> = std::env::args().skip(1).collect();
        // `cargo bench` passes `--bench`; `cargo test --benches` does not.
        let benching = args.iter().any(|a| a == "--bench");
        let mut options = if benching {
            Options {
                benching,
                users: 1_000_000,
                seconds: 3.0,
                warmup_seconds: 0.3,
                limits: vec![1, 5, 20],
            }
        } else {
            Options {
                benching,
                users: 10_000,
                seconds: 0.01,
                warmup_seconds: 0.0,
                limits: vec![1, 5],
            }
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .unwrap_or_else(|| panic!("{name} needs a value"))
                    .clone()
            };
            match arg.as_str() {
                "--users" => options.users = value("--users").parse().expect("--users N"),
                "--seconds" => options.seconds = value("--seconds").parse().expect("--seconds S"),
                "--warmup" => {
                    options.warmup_seconds = value("--warmup").parse().expect("--warmup S")
                }
                "--limits" => {
                    options.limits = value("--limits")
                        .split(',')
                        .map(|l| l.parse().expect("--limits L[,L...]"))
                        .collect()
                }
                // cargo's own flags (`--bench`) and libtest filters are not ours.
                _ => {}
            }
        }
        assert!(
            options.users > 0 && options.users <= u32::MAX as usize,
            "--users must be in 1..=2^32-1"
        );
        assert!(
            options.limits.iter().all(|&l| l > 0),
            "--limits must be >= 1"
        );
        options
    }
}

/// SplitMix64: one add and two multiplies per number, so the generator stays out of the figure.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Window {
    /// No window resolution: the decision alone.
    None,
    CalendarDayBerlin,
    Rolling,
    SubscriptionMonth,
}

impl Window {
    fn spec(self) -> WindowSpec {
        match self {
            Window::None => WindowSpec::Lifetime,
            Window::CalendarDayBerlin => WindowSpec::Calendar {
                period: CalendarPeriod::Day,
                timezone: TimeZone::get("Europe/Berlin").expect("Europe/Berlin is in the tzdb"),
            },
            Window::Rolling => WindowSpec::Rolling { seconds: 3_600 },
            Window::SubscriptionMonth => WindowSpec::Subscription,
        }
    }
}

struct Variant {
    name: &'static str,
    settle: bool,
    window: Window,
}

const VARIANTS: [Variant; 5] = [
    Variant {
        name: "reserve",
        settle: false,
        window: Window::None,
    },
    Variant {
        name: "reserve+settle",
        settle: true,
        window: Window::None,
    },
    Variant {
        name: "reserve+settle, window day Europe/Berlin",
        settle: true,
        window: Window::CalendarDayBerlin,
    },
    Variant {
        name: "reserve+settle, window rolling 1h",
        settle: true,
        window: Window::Rolling,
    },
    Variant {
        name: "reserve+settle, window subscription month",
        settle: true,
        window: Window::SubscriptionMonth,
    },
];

fn limits(count: usize, window: &WindowSpec) -> Vec<Limit> {
    (0..count)
        .map(|j| Limit {
            id: format!("limit_{j}"),
            label: format!("Limit {j}"),
            unit: "requests".into(),
            quota: QUOTA_FIRST + j as u64 * QUOTA_STEP,
            kind: LimitKind::Consumable,
            scope: Scope::User,
            enforcement: Enforcement::Hard,
            multiplier: 1,
            window: window.clone(),
            rules: Vec::new(),
            rollover: None,
        })
        .collect()
}

fn plan(limits: Vec<Limit>) -> Plan {
    Plan {
        id: "pro".into(),
        billing: BillingInterval {
            unit: IntervalUnit::Month,
            count: 1,
        },
        seats: None,
        limits,
    }
}

/// A subscription anchored on a 31st, so the monthly cycle clamps.
fn subscription() -> Subscription {
    let anchor: Timestamp = "2025-01-31T09:30:00Z".parse().expect("valid timestamp");
    Subscription {
        id: "sub_1".into(),
        plan_id: "pro".into(),
        status: SubscriptionStatus::Active,
        cycle_start: anchor,
        ends_at: None,
        custom_limits: Default::default(),
        timezone: None,
        seats: None,
        created_at: anchor,
    }
}

/// What one measured run did.
#[derive(Default)]
struct Outcome {
    ops: u64,
    admitted: u64,
    denied: u64,
    elapsed: Duration,
    /// Folds every window's bounds, so their computation cannot be dropped.
    window_fold: u64,
}

/// The benchmark loop: one user's reserve (and settle) per iteration until `duration` is up.
struct Run<'a> {
    limits: &'a [Limit],
    resolved: Resolved<'a>,
    state: &'a mut [CounterState],
    users: usize,
    settle: bool,
    window: bool,
    rng: SplitMix64,
    /// Requests made so far, in all rounds: drives the simulated clock.
    requests: i64,
}

impl Run<'_> {
    fn round(&mut self, duration: Duration) -> Outcome {
        let count = self.limits.len();
        let mut checks: Vec<LimitCheck<'_>> = Vec::with_capacity(count);
        let mut inputs: Vec<SettleInput> = Vec::with_capacity(count);
        let mut outcome = Outcome::default();
        let clock_start = Timestamp::from_second(CLOCK_START_SECOND).expect("in range");
        let start = Instant::now();
        loop {
            for _ in 0..OPS_PER_CLOCK_READ {
                let r = self.rng.next();
                let user = (((r >> 32) * self.users as u64) >> 32) as usize;
                let quantity = 1 + (r & QUANTITY_MASK);
                let row = &mut self.state[user * count..(user + 1) * count];

                checks.clear();
                if self.window {
                    let now =
                        clock_start + SignedDuration::from_nanos(self.requests * CLOCK_STEP_NANOS);
                    for limit in self.limits {
                        let bounds = limit_window(&limit.window, self.resolved, None, now)
                            .expect("the simulated clock stays in range");
                        let end = bounds.end.map_or(0, |e| e.as_millisecond());
                        outcome.window_fold = outcome
                            .window_fold
                            .wrapping_add((bounds.start.as_millisecond() ^ end) as u64);
                    }
                }
                self.requests += 1;
                for (limit, state) in self.limits.iter().zip(row.iter()) {
                    checks.push(LimitCheck {
                        limit,
                        quota: limit.quota,
                        state: *state,
                    });
                }

                let decision = decide_reserve(black_box(&checks), black_box(quantity))
                    .expect("bench quantities stay far below 2^53-1");
                if !decision.allowed {
                    outcome.denied += 1;
                    continue;
                }
                outcome.admitted += 1;
                for (state, &hold) in row.iter_mut().zip(&decision.holds) {
                    state.reserved += hold;
                }
                if !self.settle {
                    continue;
                }

                // Commit the whole hold: take it out of `reserved`, settle against the rest.
                inputs.clear();
                for ((limit, state), &hold) in
                    self.limits.iter().zip(row.iter()).zip(&decision.holds)
                {
                    inputs.push(SettleInput {
                        kind: limit.kind,
                        multiplier: limit.multiplier,
                        quota: limit.quota,
                        used: state.used,
                        used_around: state.used,
                        reserved_others: state.reserved - hold,
                    });
                }
                let settlement = settle(black_box(&inputs), black_box(quantity))
                    .expect("bench quantities stay far below 2^53-1");
                assert_eq!(settlement.overage, 0, "a committed hold always fits");
                for ((state, &hold), &charged) in
                    row.iter_mut().zip(&decision.holds).zip(&settlement.charged)
                {
                    state.reserved -= hold;
                    state.used += charged;
                }
            }
            outcome.ops += OPS_PER_CLOCK_READ;
            let elapsed = start.elapsed();
            if elapsed >= duration {
                outcome.elapsed = elapsed;
                return outcome;
            }
        }
    }
}

/// Every counter within its quota; returns a checksum of the whole state.
fn check_state(limits: &[Limit], state: &[CounterState]) -> u64 {
    let mut checksum = 0u64;
    for row in state.chunks_exact(limits.len()) {
        for (limit, s) in limits.iter().zip(row) {
            assert!(
                s.used + s.reserved <= limit.quota,
                "a hard quota was exceeded: {s:?} > {}",
                limit.quota
            );
            checksum = checksum
                .wrapping_mul(31)
                .wrapping_add(s.used)
                .wrapping_mul(31)
                .wrapping_add(s.reserved);
        }
    }
    checksum
}

struct Row {
    variant: &'static str,
    limits: usize,
    users: usize,
    outcome: Outcome,
    checksum: u64,
}

impl Row {
    fn per_second(&self) -> f64 {
        self.outcome.ops as f64 / self.outcome.elapsed.as_secs_f64()
    }

    fn nanos_per_op(&self) -> f64 {
        self.outcome.elapsed.as_nanos() as f64 / self.outcome.ops as f64
    }
}

fn measure(options: &Options, variant: &Variant, count: usize) -> Row {
    let limits = limits(count, &variant.window.spec());
    let plan = plan(limits.clone());
    let subscription = subscription();
    let resolved = Resolved {
        plan: &plan,
        subscription: Some(&subscription),
        timezone: None,
    };
    let mut fill = SplitMix64(0xF111 ^ count as u64);
    let mut state: Vec<CounterState> = (0..options.users)
        .flat_map(|_| limits.iter())
        .map(|limit| CounterState {
            used: fill.next() % (limit.quota + 1),
            reserved: 0,
        })
        .collect();
    let mut run = Run {
        limits: &limits,
        resolved,
        state: &mut state,
        users: options.users,
        settle: variant.settle,
        window: variant.window != Window::None,
        rng: SplitMix64(0x7011_6A7E ^ count as u64),
        requests: 0,
    };
    run.round(Duration::from_secs_f64(options.warmup_seconds));
    let outcome = run.round(Duration::from_secs_f64(options.seconds));
    let checksum = check_state(&limits, &state) ^ outcome.window_fold;
    Row {
        variant: variant.name,
        limits: count,
        users: options.users,
        outcome,
        checksum,
    }
}

/// Window resolution alone, as `limit_window` does it for one limit of one request.
fn measure_window(options: &Options, window: Window) -> (f64, u64) {
    let limit = limits(1, &window.spec());
    let plan = plan(limit.clone());
    let subscription = subscription();
    let resolved = Resolved {
        plan: &plan,
        subscription: Some(&subscription),
        timezone: None,
    };
    let clock_start = Timestamp::from_second(CLOCK_START_SECOND).expect("in range");
    let duration = Duration::from_secs_f64(options.seconds / 3.0);
    let mut fold = 0u64;
    let mut requests = 0i64;
    let start = Instant::now();
    loop {
        for _ in 0..OPS_PER_CLOCK_READ {
            let now = clock_start + SignedDuration::from_nanos(requests * CLOCK_STEP_NANOS);
            requests += 1;
            let bounds = limit_window(&limit[0].window, resolved, None, black_box(now))
                .expect("the simulated clock stays in range");
            fold = fold.wrapping_add(bounds.start.as_millisecond() as u64);
        }
        let elapsed = start.elapsed();
        if elapsed >= duration {
            return (elapsed.as_nanos() as f64 / requests as f64, fold);
        }
    }
}

fn main() {
    let options = Options::parse();
    if !options.benching {
        println!("smoke run without `--bench` (as under `cargo test`): the figures mean nothing");
    }
    println!(
        "tollgate-core decide: {} users, {} s per row after {} s warm-up, one thread",
        options.users, options.seconds, options.warmup_seconds
    );
    println!(
        "quota {QUOTA_FIRST} (+{QUOTA_STEP} per further limit), quantity 1..={}, counters start \
         at a random used in 0..=quota and are checked against it after each row",
        QUANTITY_MASK + 1
    );
    println!();
    println!(
        "{:<44} {:>6} {:>9} {:>13} {:>13} {:>9} {:>16}",
        "variant", "limits", "users", "reserves/s", "ns/reserve", "admitted", "checksum"
    );
    for variant in &VARIANTS {
        for &count in &options.limits {
            let row = measure(&options, variant, count);
            let admitted = row.outcome.admitted as f64 / row.outcome.ops as f64 * 100.0;
            println!(
                "{:<44} {:>6} {:>9} {:>13.0} {:>13.1} {:>8.1}% {:>16x}",
                row.variant,
                row.limits,
                row.users,
                row.per_second(),
                row.nanos_per_op(),
                admitted,
                row.checksum
            );
            assert_eq!(row.outcome.admitted + row.outcome.denied, row.outcome.ops);
        }
    }
    println!(
        "(one decision per reserve; in the +settle rows every admitted reserve is also settled, \
         so reserves/s there is reserve+settle pairs/s; windows are resolved for every limit)"
    );
    println!();
    println!(
        "{:<44} {:>13} {:>13}",
        "window resolution alone", "windows/s", "ns/window"
    );
    for (name, window) in [
        ("calendar day Europe/Berlin", Window::CalendarDayBerlin),
        ("rolling 1h", Window::Rolling),
        ("subscription month", Window::SubscriptionMonth),
    ] {
        let (nanos, fold) = measure_window(&options, window);
        black_box(fold);
        println!("{:<44} {:>13.0} {:>13.1}", name, 1e9 / nanos, nanos);
    }
}
