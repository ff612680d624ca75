//! `tollgate bench`: a load generator against a running server (or one it starts on a temporary
//! data dir), with per-operation latency percentiles and an exactness check that fails the run
//! when a quota was exceeded or committed usage went missing.
//!
//! The same generator drives the Redis Lua reference implementation (`bench/redis/tollgate.lua`,
//! the script teams write by hand), so `--compare-redis` measures both in one run, on one
//! machine, with the same clients.
//!
//! It replaces the plan document of the key's environment, so it refuses live keys.
//!
//! The credits scenario measures the same reserve → commit paid by credits instead of the plan:
//! the plan's quota is 0 and every user holds a grant that covers the whole run.

mod target;

use crate::redis_ref::Persistence;
use crate::table::Table;
use anyhow::{bail, ensure, Context, Result};
use clap::ValueEnum;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use target::{Backend, Conn};

/// Most users a run may spread over.
pub const BENCH_USERS_MAX: usize = 10_000_000;
/// Most concurrent clients.
pub const BENCH_CONCURRENCY_MAX: usize = 4096;
/// Most limits in the bench plan.
pub const BENCH_LIMITS_MAX: usize = 100;
/// Most events --seed-events loads.
pub const BENCH_SEED_EVENTS_MAX: u64 = 1_000_000_000;
/// Most rounds of --compare-redis.
pub const BENCH_ROUNDS_MAX: usize = 20;
/// Users whose usage the exactness check reads back at the end (a sample when more were hit).
pub const EXACTNESS_SAMPLE_USERS: usize = 500;
/// TTL of the reservations the mixed scenario leaves to expire, in seconds.
const EXPIRING_TTL_SECONDS: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Reserve then commit, over many users.
    ReserveCommit,
    /// Many clients racing for one user's quota (`--quota`).
    HotUser,
    /// Track only.
    Track,
    /// Check only (no side effect).
    Check,
    /// Reserve, then commit, release or let expire.
    Mixed,
    /// Reserve then commit, paid by credits: the plan's quota is 0 and every user first gets a
    /// grant that covers the run.
    Credits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Skew {
    Uniform,
    /// Zipf with exponent 1: a few users get most of the traffic.
    Zipf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// A Tollgate server over HTTP.
    Tollgate,
    /// The Redis Lua reference script.
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RedisPersistence {
    /// `appendonly yes`, `appendfsync always`: an answered write is on disk.
    Durable,
    /// No AOF, no snapshots: everything is lost when Redis stops.
    None,
}

impl From<RedisPersistence> for Persistence {
    fn from(p: RedisPersistence) -> Self {
        match p {
            RedisPersistence::Durable => Persistence::Durable,
            RedisPersistence::None => Persistence::None,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Base URL of a running server; without it the bench starts its own on a temp data dir
    #[arg(long, env = "TOLLGATE_URL")]
    url: Option<String>,
    /// A test secret key of that server (required with --url)
    #[arg(long, env = "TOLLGATE_KEY", hide_env_values = true)]
    key: Option<String>,
    #[arg(long, value_enum, default_value = "reserve-commit")]
    scenario: Scenario,
    /// Concurrent clients
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// How long to run, in seconds
    #[arg(long, default_value_t = 10)]
    duration_seconds: u64,
    /// Users the load spreads over
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    #[arg(long, value_enum, default_value = "uniform")]
    skew: Skew,
    /// Limits in the plan, each matching every bench event
    #[arg(long, default_value_t = 1)]
    limits: usize,
    /// The per-user quota of the hot-user scenario
    #[arg(long, default_value_t = 100)]
    quota: u64,
    /// Iterations per second across all clients (0: each client goes as fast as it can).
    /// A client behind its schedule measures latency from when the call was due, so a stall
    /// counts in full
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// What to drive: a Tollgate server, or the Redis Lua reference script
    #[arg(long, value_enum, default_value = "tollgate")]
    target: TargetKind,
    /// Redis to load the reference script into (`--target redis`); without it the bench starts
    /// its own redis-server on a temp dir
    #[arg(long)]
    redis_url: Option<String>,
    /// Persistence of the redis-server the bench starts for `--target redis`
    #[arg(long, value_enum, default_value = "durable")]
    redis_persistence: RedisPersistence,
    /// Run the same load against Tollgate, then Redis durable (appendfsync always), then Redis
    /// without persistence, each on a server of its own, and print the ratios
    #[arg(long, conflicts_with_all = ["target", "redis_url"])]
    compare_redis: bool,
    /// With --compare-redis: how many times to run each target, interleaved (Tollgate, Redis
    /// durable, Redis without persistence, then again); the comparison uses each target's
    /// median, which a shared, noisy machine needs
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Before the run, load this many committed events (over --users users and 30 days)
    /// straight into the bench's own server's database, to measure the hot path on a store
    /// that already holds many
    #[arg(long, default_value_t = 0, conflicts_with = "url")]
    seed_events: u64,
}

/// Latencies of one operation, in microseconds, and its error count.
#[derive(Default)]
struct OpStats {
    micros: Vec<u32>,
    errors: u64,
}

#[derive(Default)]
struct Shared {
    ops: Mutex<HashMap<&'static str, OpStats>>,
    /// Committed (or tracked) units per user, as acknowledged by the target.
    committed: Mutex<HashMap<usize, u64>>,
    admitted: AtomicU64,
    denied: AtomicU64,
    /// Iterations finished without an error.
    done: AtomicU64,
    /// Admitted reserves of the credits scenario that held anything but their 1 unit in
    /// credits (the plan paid, or nothing did).
    uncredited: AtomicU64,
    /// The first failure, shown in the report.
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn record<T>(&self, op: &'static str, took: Duration, r: &Result<T>) {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let s = ops.entry(op).or_default();
        match r {
            Ok(_) => s
                .micros
                .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX)),
            Err(e) => {
                s.errors += 1;
                let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
                first.get_or_insert_with(|| format!("{op}: {e:#}"));
            }
        }
    }

    fn committed(&self, user: usize, units: u64) {
        *self
            .committed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(user)
            .or_default() += units;
    }
}

/// Picks users by rank; Zipf by inverting a precomputed CDF.
struct Picker {
    cdf: Option<Vec<f64>>,
    users: usize,
}

impl Picker {
    fn new(users: usize, skew: Skew) -> Self {
        let cdf = (skew == Skew::Zipf).then(|| {
            let mut acc = 0.0;
            let mut cdf: Vec<f64> = (1..=users)
                .map(|k| {
                    acc += 1.0 / k as f64;
                    acc
                })
                .collect();
            cdf.iter_mut().for_each(|c| *c /= acc);
            cdf
        });
        Self { cdf, users }
    }

    fn pick(&self, rng: &mut impl Rng) -> usize {
        match &self.cdf {
            None => rng.random_range(0..self.users),
            Some(cdf) => {
                let x: f64 = rng.random();
                cdf.partition_point(|&c| c < x).min(self.users - 1)
            }
        }
    }
}

/// The quota of every bench limit.
fn quota(args: &BenchArgs) -> u64 {
    match args.scenario {
        Scenario::HotUser => args.quota,
        // Credits pay for every unit.
        Scenario::Credits => 0,
        _ => tollgate_core::input::QUANTITY_MAX,
    }
}

/// One client's loop until the deadline.
async fn run_client(
    mut conn: Conn,
    args: Arc<BenchArgs>,
    picker: Arc<Picker>,
    shared: Arc<Shared>,
    (deadline, stop): (Instant, Arc<AtomicBool>),
    mut due: Option<(Instant, Duration)>,
) {
    let mut rng = rand::rngs::StdRng::from_os_rng();
    loop {
        let start = match &mut due {
            None => Instant::now(),
            Some((next, interval)) => {
                let at = *next;
                *next += *interval;
                if Instant::now() < at {
                    // On time: the latency counts from the send, so the timer's own lateness
                    // (tokio's timers tick in milliseconds) is not charged to the target.
                    tokio::time::sleep_until(at.into()).await;
                    Instant::now()
                } else {
                    // Behind schedule: the latency counts from when the call was due, so a
                    // stall of the target shows in full (no coordinated omission).
                    at
                }
            }
        };
        if start >= deadline || stop.load(Ordering::Relaxed) {
            break;
        }
        let user = match args.scenario {
            Scenario::HotUser => 0,
            _ => picker.pick(&mut rng),
        };
        let ok = match args.scenario {
            Scenario::Track => {
                let r = conn.track(user).await;
                shared.record("track", start.elapsed(), &r);
                if let Ok(true) = r {
                    shared.committed(user, 1);
                }
                r.is_ok()
            }
            Scenario::Check => {
                let r = conn.check(user).await;
                shared.record("check", start.elapsed(), &r);
                r.is_ok()
            }
            _ => reserve_then(&mut conn, &args, &shared, user, start, &mut rng).await,
        };
        if ok {
            shared.done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn reserve_then(
    conn: &mut Conn,
    args: &BenchArgs,
    shared: &Shared,
    user: usize,
    start: Instant,
    rng: &mut impl Rng,
) -> bool {
    let mixed = args.scenario == Scenario::Mixed;
    let expire = mixed && rng.random_range(0..100) < 15;
    let r = conn
        .reserve(user, expire.then_some(EXPIRING_TTL_SECONDS))
        .await;
    shared.record("reserve", start.elapsed(), &r);
    let Ok(r) = r else { return false };
    let Some(target::Reservation { id, credits_held }) = r else {
        shared.denied.fetch_add(1, Ordering::Relaxed);
        return true;
    };
    shared.admitted.fetch_add(1, Ordering::Relaxed);
    if args.scenario == Scenario::Credits && credits_held != 1 {
        shared.uncredited.fetch_add(1, Ordering::Relaxed);
    }
    if expire {
        return true;
    }
    let t = Instant::now();
    if mixed && rng.random_range(0..100) < 30 {
        let r = conn.release(user, &id).await;
        shared.record("release", t.elapsed(), &r);
        return r.is_ok();
    }
    let quantity = if mixed { rng.random_range(0..=2) } else { 1 };
    let r = conn.commit(user, &id, quantity).await;
    shared.record("commit", t.elapsed(), &r);
    if r.is_ok() {
        shared.committed(user, quantity);
    }
    r.is_ok()
}

fn percentile(sorted: &[u32], p: f64) -> Option<f64> {
    let i = ((sorted.len().checked_sub(1)?) as f64 * p).round() as usize;
    Some(f64::from(sorted[i]) / 1000.0)
}

fn millis(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |ms| format!("{ms:.3}"))
}

/// What one run measured.
struct Outcome {
    label: String,
    /// Iterations per second (reserve+commit pairs, tracks or checks).
    rate: f64,
    reserve_p50: Option<f64>,
    reserve_p99: Option<f64>,
    errors: u64,
    exactness: Result<String>,
}

/// Runs the load once against `backend` and prints its table.
async fn run_once(args: &BenchArgs, backend: &Backend) -> Result<Outcome> {
    target::new_run();
    if args.scenario == Scenario::Credits {
        let started = Instant::now();
        eprint!("granting credits to {} user(s)", args.users);
        backend.grant_credits(args.users).await?;
        eprintln!(" in {:.1} s", started.elapsed().as_secs_f64());
    }
    let args = Arc::new(args.clone());
    let picker = Arc::new(Picker::new(args.users, args.skew));
    let shared = Arc::new(Shared::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut conns = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        conns.push(backend.connect().await?);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_seconds);
    let interval = (args.rate > 0)
        .then(|| Duration::from_secs_f64(args.concurrency as f64 / args.rate as f64));
    let mut tasks = Vec::new();
    for (i, conn) in conns.into_iter().enumerate() {
        // Clients with a rate start evenly spread over one interval.
        let due = interval.map(|iv| (started + iv.mul_f64(i as f64 / args.concurrency as f64), iv));
        tasks.push(tokio::spawn(run_client(
            conn,
            args.clone(),
            picker.clone(),
            shared.clone(),
            (deadline, stop.clone()),
            due,
        )));
    }
    let progress = {
        let shared = shared.clone();
        let total = args.duration_seconds;
        tokio::spawn(async move {
            for s in 1..=total {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let filled = (s * 30 / total.max(1)) as usize;
                eprint!(
                    "\r[{}{}] {s}/{total} s  {} ops",
                    "#".repeat(filled),
                    " ".repeat(30 - filled),
                    shared.done.load(Ordering::Relaxed)
                );
            }
            eprintln!();
        })
    };
    for t in tasks {
        t.await?;
    }
    progress.abort();
    let elapsed = started.elapsed().as_secs_f64();

    let mut table = Table::new(&[
        "OPERATION",
        "COUNT",
        "PER SECOND",
        "P50 MS",
        "P90 MS",
        "P99 MS",
        "P99.9 MS",
        "ERRORS",
    ]);
    let (mut errors, mut reserve_p50, mut reserve_p99) = (0, None, None);
    {
        let mut ops = shared.ops.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<_> = ops.keys().copied().collect();
        names.sort_unstable();
        for name in names {
            let s = ops.get_mut(name).expect("the name came from the map");
            s.micros.sort_unstable();
            errors += s.errors;
            if name == "reserve" {
                reserve_p50 = percentile(&s.micros, 0.50);
                reserve_p99 = percentile(&s.micros, 0.99);
            }
            table.row(vec![
                name.to_string(),
                s.micros.len().to_string(),
                format!("{:.0}", s.micros.len() as f64 / elapsed),
                millis(percentile(&s.micros, 0.50)),
                millis(percentile(&s.micros, 0.90)),
                millis(percentile(&s.micros, 0.99)),
                millis(percentile(&s.micros, 0.999)),
                s.errors.to_string(),
            ]);
        }
    }
    let pace = match args.rate {
        0 => String::new(),
        r => format!(", paced at {r}/s"),
    };
    println!(
        "{}: scenario {:?}, {} clients, {} users ({:?}), {} limit(s){pace}, {elapsed:.1} s",
        backend.label(),
        args.scenario,
        args.concurrency,
        args.users,
        args.skew,
        args.limits
    );
    print!("{}", table.render());
    println!(
        "admitted {}, denied {}",
        shared.admitted.load(Ordering::Relaxed),
        shared.denied.load(Ordering::Relaxed)
    );
    if let Some(e) = shared
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        println!("first error: {e}");
    }
    let exactness = exactness(&args, backend, &shared).await;
    match &exactness {
        Ok(summary) => println!("exactness: ok ({summary})"),
        Err(e) => println!("exactness: FAILED: {e:#}"),
    }
    Ok(Outcome {
        label: backend.label(),
        rate: shared.done.load(Ordering::Relaxed) as f64 / elapsed,
        reserve_p50,
        reserve_p99,
        errors,
        exactness,
    })
}

/// Reads usage back and compares it with what the target acknowledged.
async fn exactness(args: &BenchArgs, backend: &Backend, shared: &Shared) -> Result<String> {
    let mut conn = backend.connect().await?;
    if args.scenario == Scenario::Mixed {
        // Let every reservation left to expire pass its TTL on the (test) clock.
        conn.advance_clock(i64::from(EXPIRING_TTL_SECONDS) + 1)
            .await
            .context("advancing the clock")?;
    }
    let committed = shared
        .committed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut users: Vec<usize> = match args.scenario {
        Scenario::HotUser => vec![0],
        Scenario::Check => (0..args.users.min(EXACTNESS_SAMPLE_USERS)).collect(),
        _ => committed.keys().copied().collect(),
    };
    users.sort_unstable();
    users.truncate(EXACTNESS_SAMPLE_USERS);
    if args.scenario == Scenario::Credits {
        return credits_exactness(&mut conn, shared, &committed, &users).await;
    }
    let admitted = shared.admitted.load(Ordering::Relaxed);
    if args.scenario == Scenario::HotUser {
        ensure!(
            admitted <= args.quota,
            "admitted {admitted} over the quota of {}",
            args.quota
        );
    }
    for &u in &users {
        let want = committed.get(&u).copied().unwrap_or(0);
        for (used, reserved, quota) in conn.usage(u).await? {
            ensure!(
                used + reserved <= quota,
                "user {u}: used {used} + reserved {reserved} over quota {quota}"
            );
            ensure!(
                reserved == 0,
                "user {u}: {reserved} still reserved after the run"
            );
            ensure!(
                used == want,
                "user {u}: used {used}, but {want} was acknowledged as committed"
            );
        }
    }
    Ok(format!(
        "{} user(s) read back, used == acknowledged, nothing over quota",
        users.len()
    ))
}

/// The credits scenario's check: every reserve was admitted on credits alone, and each sampled
/// user's grant lost exactly the acknowledged commits, with nothing still held and nothing
/// counted on the plan (whose quota is 0, so any unit past the grant would show there).
async fn credits_exactness(
    conn: &mut Conn,
    shared: &Shared,
    committed: &HashMap<usize, u64>,
    users: &[usize],
) -> Result<String> {
    let denied = shared.denied.load(Ordering::Relaxed);
    ensure!(
        denied == 0,
        "{denied} reserve(s) denied, though every user's grant covers the run"
    );
    let uncredited = shared.uncredited.load(Ordering::Relaxed);
    ensure!(
        uncredited == 0,
        "{uncredited} admitted reserve(s) did not hold their unit in credits"
    );
    let granted = target::CREDITS_GRANT_UNITS;
    for &u in users {
        let want = committed.get(&u).copied().unwrap_or(0);
        let (available, held) = conn.credits(u).await?;
        ensure!(
            held == 0,
            "user {u}: {held} credit(s) still held after the run"
        );
        ensure!(
            available <= granted,
            "user {u}: {available} credit(s) available, more than the {granted} granted"
        );
        let consumed = granted - available;
        ensure!(
            consumed == want,
            "user {u}: {consumed} credit(s) consumed, but {want} commit(s) were acknowledged"
        );
        for (used, reserved, quota) in conn.usage(u).await? {
            ensure!(
                used == 0 && reserved == 0,
                "user {u}: the plan counted used {used}, reserved {reserved} (quota {quota}); \
                 credits should have paid for everything"
            );
        }
    }
    Ok(format!(
        "{} user(s) read back, credits consumed == acknowledged, nothing held, \
         nothing drawn beyond the grant",
        users.len()
    ))
}

fn validate(args: &BenchArgs) -> Result<()> {
    ensure!(
        (1..=BENCH_CONCURRENCY_MAX).contains(&args.concurrency),
        "--concurrency must be 1-{BENCH_CONCURRENCY_MAX}"
    );
    ensure!(
        (1..=BENCH_USERS_MAX).contains(&args.users),
        "--users must be 1-{BENCH_USERS_MAX}"
    );
    ensure!(
        (1..=BENCH_LIMITS_MAX).contains(&args.limits),
        "--limits must be 1-{BENCH_LIMITS_MAX}"
    );
    ensure!(
        args.duration_seconds >= 1,
        "--duration-seconds must be at least 1"
    );
    ensure!(
        (1..=BENCH_ROUNDS_MAX).contains(&args.rounds),
        "--rounds must be 1-{BENCH_ROUNDS_MAX}"
    );
    ensure!(
        args.seed_events <= BENCH_SEED_EVENTS_MAX,
        "--seed-events must be at most {BENCH_SEED_EVENTS_MAX}"
    );
    if args.url.is_some() && args.key.is_none() {
        bail!("--url needs --key (a test secret key)");
    }
    if args.scenario == Scenario::Credits
        && (args.compare_redis || args.target == TargetKind::Redis)
    {
        bail!("--scenario credits runs against Tollgate only: the Redis reference has no credits");
    }
    Ok(())
}

pub async fn run(args: BenchArgs) -> Result<()> {
    validate(&args)?;
    let outcomes = if args.compare_redis {
        let backends = [
            Backend::tollgate(&args).await?,
            Backend::redis(&args, None, Persistence::Durable).await?,
            Backend::redis(&args, None, Persistence::None).await?,
        ];
        let mut outcomes = Vec::new();
        for round in 1..=args.rounds {
            for backend in &backends {
                if args.rounds > 1 {
                    println!("\nround {round} of {}", args.rounds);
                }
                outcomes.push(run_once(&args, backend).await?);
            }
        }
        compare(&outcomes);
        outcomes
    } else {
        let backend = match args.target {
            TargetKind::Tollgate => Backend::tollgate(&args).await?,
            TargetKind::Redis => {
                Backend::redis(
                    &args,
                    args.redis_url.as_deref(),
                    args.redis_persistence.into(),
                )
                .await?
            }
        };
        vec![run_once(&args, &backend).await?]
    };
    let mut failed = Vec::new();
    for o in &outcomes {
        if let Err(e) = &o.exactness {
            failed.push(format!("{}: exactness FAILED: {e:#}", o.label));
        }
        if o.errors > 0 {
            failed.push(format!("{}: {} request(s) failed", o.label, o.errors));
        }
    }
    ensure!(failed.is_empty(), "{}", failed.join("; "));
    Ok(())
}

/// Prints each target's median rate (over its rounds) as a ratio of durable Redis's.
fn compare(outcomes: &[Outcome]) {
    let mut labels: Vec<&str> = Vec::new();
    for o in outcomes {
        if !labels.contains(&o.label.as_str()) {
            labels.push(&o.label);
        }
    }
    let median = |label: &str, f: &dyn Fn(&Outcome) -> Option<f64>| {
        let mut v: Vec<f64> = outcomes
            .iter()
            .filter(|o| o.label == label)
            .filter_map(f)
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let rate = |label: &str| median(label, &|o: &Outcome| Some(o.rate)).unwrap_or(0.0);
    let Some(baseline) = labels
        .iter()
        .find(|l| l.contains("durable"))
        .map(|l| rate(l))
    else {
        return;
    };
    let mut table = Table::new(&[
        "TARGET",
        "RUNS",
        "PER SECOND",
        "RESERVE P50 MS",
        "RESERVE P99 MS",
        "VS REDIS DURABLE",
    ]);
    for label in labels {
        let runs = outcomes.iter().filter(|o| o.label == label);
        let all: Vec<String> = runs.map(|o| format!("{:.0}", o.rate)).collect();
        table.row(vec![
            label.to_string(),
            all.join(" "),
            format!("{:.0}", rate(label)),
            millis(median(label, &|o: &Outcome| o.reserve_p50)),
            millis(median(label, &|o: &Outcome| o.reserve_p99)),
            format!("{:.2}x", rate(label) / baseline.max(f64::MIN_POSITIVE)),
        ]);
    }
    println!("\ncomparison (same load, same machine, one run; medians over the rounds):");
    print!("{}", table.render());
}
