//! The differential property test (issue 14): two stores, the same commands, the same answers,
//! the same final state.
//!
//! A second implementation of the metering behaviour (the in-memory engine) must answer
//! exactly as the SQL procedures do. Generated cases replay sequences of metering, identity,
//! subscription, account and credit commands through two stores made fresh for each case (A
//! and B: the backend's test file decides which implementations they are). Every command is
//! built from the case alone (its ids, `IdSeed`s, and `now` read off the environment's test
//! clock), so both stores receive the same bytes. After every step the two answers must be
//! equal, and after the last step so must everything the stores show: usage, events, ledgers,
//! balances, reservations, subscriptions, their history and the account. A mismatch is shrunk
//! (by hand: the runner is async) and reported with its step, command and both answers.
//!
//! Run with A = B it proves the harness deterministic: two stores of one backend differing
//! would be a non-determinism in the harness (or the backend) to remove.

use super::*;
use jiff::tz::TimeZone;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;

/// What a store factory returns: a fresh, empty store and what must live as long as it.
pub type Made = (Arc<dyn Store>, Box<dyn std::any::Any + Send>);

/// Cases run unless `TOLLGATE_DIFF_CASES` says otherwise.
pub const DIFF_CASES_DEFAULT: usize = 64;
/// Fewest and most steps of one case.
const STEPS_MIN: usize = 20;
const STEPS_MAX: usize = 40;
/// Most replays spent on each of the two ways a failing case is shrunk (each replay makes two
/// fresh stores, about 0.1 s).
const SHRINK_RUNS_MAX: usize = 150;
/// Rows per page when the final state reads events and ledgers.
const PAGE_ROWS: usize = 200;
/// Most pages read of one list: far past what a case can write, so a store that ignores the
/// cursor fails the case instead of looping.
const PAGES_MAX: usize = 100;

/// Zones of the daily limit (and of subscribers' own zones): a DST change in March, a day
/// that starts at 15:00 UTC, a half-hour DST change in October.
const ZONES: [&str; 3] = ["America/New_York", "Asia/Tokyo", "Australia/Lord_Howe"];
/// Where a case's clock starts: hours before New York's DST change, a month end, hours before
/// Lord Howe's DST change.
const STARTS: [&str; 3] = [
    "2026-03-07T22:00:00Z",
    "2026-01-31T20:00:00Z",
    "2026-10-03T12:00:00Z",
];
/// (event, `model` metadata): the last one matches no limit.
const EVENTS: [(&str, Option<&str>); 5] = [
    ("image.render", None),
    ("image.render", Some("basic")),
    ("image.render", Some("premium")),
    ("text.generate", None),
    ("video.render", None),
];
const PLANS: [&str; 3] = ["free", "pro", "team"];
const PACKS: [&str; 2] = ["boost", "promo"];
const ACCOUNT: &str = "acme";
/// An `owner` of a step at least this picks the account (drawn below [`OWNERS`]): writes to
/// the account's subscription and grants come about as often as a user's.
const OWNER_ACCOUNT: usize = 8;
const OWNERS: usize = 11;
const ANONYMOUS: &str = "anon_visitor";

/// Runs `cases` generated cases (see the module doc) through a store from `make_a` and one from
/// `make_b`, both fresh for each case. Panics with the shrunk case, the step, its command and
/// both answers on the first difference. `TOLLGATE_DIFF_SEED` (a number) picks other cases
/// than the default deterministic ones.
pub async fn differential<MA, FA, MB, FB>(make_a: MA, make_b: MB, cases: usize)
where
    MA: Fn() -> FA,
    FA: Future<Output = Made>,
    MB: Fn() -> FB,
    FB: Future<Output = Made>,
{
    let seed = std::env::var("TOLLGATE_DIFF_SEED")
        .ok()
        .filter(|s| !s.is_empty());
    let mut runner = match seed.as_deref().map(str::parse::<u64>) {
        Some(Ok(seed)) => {
            let bytes: Vec<u8> = seed.to_le_bytes().repeat(4);
            TestRunner::new_with_rng(
                Config::default(),
                TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
            )
        }
        Some(Err(e)) => panic!("TOLLGATE_DIFF_SEED must be a number: {e}"),
        None => TestRunner::deterministic(),
    };
    let strategy = case_strategy();
    for n in 0..cases {
        let mut tree = strategy.new_tree(&mut runner).expect("a case");
        let Err(first) = run_case(&tree.current(), &make_a, &make_b).await else {
            continue;
        };
        let (case, why, runs) = shrink(&mut tree, first, &make_a, &make_b).await;
        let steps: Vec<String> = case
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| format!("  {i}: {s:?}"))
            .collect();
        panic!(
            "stores A and B differ in case {n} (seed {}), shrunk in {runs} replays:\n{why}\n\n\
             the case: {} users, zone {}, start {}, quotas {:?}, default plan: {}, unmatched events \
             allowed: {}\n\
             steps:\n{}",
            seed.as_deref().unwrap_or("deterministic"),
            case.users,
            ZONES[case.zone],
            STARTS[case.start],
            case.quotas,
            case.default_plan,
            case.unmatched_allow,
            steps.join("\n")
        );
    }
}

/// The number of cases: `TOLLGATE_DIFF_CASES`, else [`DIFF_CASES_DEFAULT`].
pub fn diff_cases() -> usize {
    match std::env::var("TOLLGATE_DIFF_CASES") {
        Ok(n) => n
            .parse()
            .unwrap_or_else(|e| panic!("TOLLGATE_DIFF_CASES must be a number: {e}")),
        Err(_) => DIFF_CASES_DEFAULT,
    }
}

/// Shrinks a failing case: first as proptest's runner does (simplify while it fails,
/// complicate when it passes), at most [`SHRINK_RUNS_MAX`] replays, then by dropping single
/// steps (the generated cases never have fewer than [`STEPS_MIN`], so proptest alone cannot
/// go below), as long as the case still fails. Returns the simplest failing case, why it
/// failed and the replays spent.
async fn shrink<T, MA, FA, MB, FB>(
    tree: &mut T,
    first: String,
    make_a: &MA,
    make_b: &MB,
) -> (Case, String, usize)
where
    T: ValueTree<Value = Case>,
    MA: Fn() -> FA,
    FA: Future<Output = Made>,
    MB: Fn() -> FB,
    FB: Future<Output = Made>,
{
    let (mut case, mut why) = (tree.current(), first);
    let mut runs = 0;
    let mut more = tree.simplify();
    while more && runs < SHRINK_RUNS_MAX {
        runs += 1;
        let candidate = tree.current();
        match run_case(&candidate, make_a, make_b).await {
            Err(e) => {
                (case, why) = (candidate, e);
                more = tree.simplify();
            }
            Ok(()) => more = tree.complicate(),
        }
    }
    let mut i = case.steps.len();
    while i > 0 && runs < 2 * SHRINK_RUNS_MAX {
        i -= 1;
        runs += 1;
        let mut candidate = case.clone();
        candidate.steps.remove(i);
        if let Err(e) = run_case(&candidate, make_a, make_b).await {
            (case, why) = (candidate, e);
        }
    }
    (case, why, runs)
}

/// The quotas of the `free` plan (`pro` doubles the consumable ones), the credit packs' units,
/// the daily limit's rollover (`free`: none at 0; `pro`: one more) and the `team` plan's seat
/// cap.
#[derive(Debug, Clone, Copy)]
struct Quotas {
    lifetime: u64,
    daily: u64,
    rolling: u64,
    premium: u64,
    concurrent: u64,
    soft: u64,
    pool: u64,
    anonymous: u64,
    pack: u64,
    rollover: u64,
    seats: u32,
}

/// How a commit's final quantity compares to the reserved one.
#[derive(Debug, Clone, Copy)]
enum Final {
    Less(u64),
    Equal,
    More(u64),
}

/// One step of a case. `who` picks a user or the anonymous id, `owner` a user, the anonymous
/// id or the account (see [`OWNER_ACCOUNT`]), `pick` an earlier reservation, keyed command or grant (all modulo how
/// many there are); `event` indexes [`EVENTS`].
#[derive(Debug, Clone)]
enum Step {
    /// With `key`, an idempotency key of four (`rk0`…`rk3`): reused keys replay or conflict.
    Reserve {
        who: usize,
        event: usize,
        quantity: u64,
        ttl: u64,
        key: Option<u8>,
    },
    /// An earlier keyed reserve or track (or a grant with a reference) sent again with its key:
    /// the exact body (a client's retry) or another one (a conflict).
    Retry {
        pick: usize,
        same_body: bool,
    },
    /// `record`: `ifExpired: record`; `premium`: commit metadata `model=premium`.
    Commit {
        pick: usize,
        how: Final,
        record: bool,
        premium: bool,
    },
    Release {
        pick: usize,
    },
    Extend {
        pick: usize,
        ttl: u64,
    },
    /// `back`: seconds before now that the usage happened.
    Track {
        who: usize,
        event: usize,
        quantity: u64,
        enforce: bool,
        back: i64,
        key: Option<u8>,
    },
    Check {
        who: usize,
        event: usize,
        quantity: u64,
    },
    /// Usage and credits of `who`, and an earlier reservation.
    Read {
        who: usize,
        pick: usize,
    },
    /// The test clock moves on; with `sweep` the sweeper runs at the new time, else expiry is
    /// left to the commands (lazy).
    Advance {
        seconds: i64,
        sweep: bool,
    },
    /// The anonymous id turns out to be user `user`.
    Identify {
        user: usize,
    },
    /// `cycle_back`: the new anchor, seconds before now; `zone`: set or clear the subscriber's
    /// zone; `custom`: a custom `lifetime` quota; `seats`: the account's seat cap.
    Subscribe {
        owner: usize,
        plan: usize,
        cycle_back: Option<i64>,
        zone: Option<Option<usize>>,
        custom: Option<u64>,
        seats: Option<u32>,
    },
    /// `at`: 0 now, 1 at the period's end, else in `at` hours.
    Cancel {
        owner: usize,
        at: u8,
    },
    AddMember {
        user: usize,
    },
    RemoveMember {
        user: usize,
    },
    /// `reference`: an external reference of four (`ref0`…`ref3`): reused ones are idempotent
    /// or conflict.
    Grant {
        owner: usize,
        pack: usize,
        packs: u64,
        expires_in: Option<i64>,
        reference: Option<u8>,
    },
    Revoke {
        pick: usize,
        by_ref: bool,
    },
}

/// One generated case: the plan document's parameters and the steps.
#[derive(Debug, Clone)]
struct Case {
    /// Identified users `u0`…; the anonymous id comes on top.
    users: usize,
    zone: usize,
    start: usize,
    quotas: Quotas,
    /// Whether `free` is the default plan; without, a user with no subscription has no plan.
    default_plan: bool,
    unmatched_allow: bool,
    steps: Vec<Step>,
}

fn quotas_strategy() -> impl Strategy<Value = Quotas> {
    (
        (4u64..=60, 2u64..=30, 2u64..=30, 1u64..=8),
        (1u64..=3, 2u64..=20, 5u64..=60, 1u64..=10),
        (1u64..=20, 0u64..=6, 1u32..=2),
    )
        .prop_map(
            |(
                (lifetime, daily, rolling, premium),
                (concurrent, soft, pool, anonymous),
                (pack, rollover, seats),
            )| Quotas {
                lifetime,
                daily,
                rolling,
                premium,
                concurrent,
                soft,
                pool,
                anonymous,
                pack,
                rollover,
                seats,
            },
        )
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let who = 0usize..5;
    let event = 0usize..EVENTS.len();
    let key = proptest::option::weighted(0.35, 0u8..4);
    let how = prop_oneof![
        (1u64..=8).prop_map(Final::Less),
        Just(Final::Equal),
        (1u64..=8).prop_map(Final::More),
    ];
    let seconds = prop_oneof![
        4 => 1i64..=600,
        3 => 600i64..=4_000,
        1 => 6 * 3600i64..=30 * 3600,
        1 => 3 * 86_400i64..=12 * 86_400,
    ];
    prop_oneof![
        6 => (who.clone(), event.clone(), 1u64..=8, 30u64..=1200, key.clone()).prop_map(
            |(who, event, quantity, ttl, key)| Step::Reserve { who, event, quantity, ttl, key }
        ),
        2 => (0usize..64, proptest::bool::weighted(0.7))
            .prop_map(|(pick, same_body)| Step::Retry { pick, same_body }),
        4 => (0usize..64, how, proptest::bool::weighted(0.3), proptest::bool::weighted(0.15))
            .prop_map(|(pick, how, record, premium)| Step::Commit { pick, how, record, premium }),
        2 => (0usize..64).prop_map(|pick| Step::Release { pick }),
        1 => (0usize..64, 1u64..=1800).prop_map(|(pick, ttl)| Step::Extend { pick, ttl }),
        3 => (who.clone(), event.clone(), 0u64..=8, any::<bool>(), 0i64..=7200, key).prop_map(
            |(who, event, quantity, enforce, back, key)| Step::Track {
                who, event, quantity, enforce, back, key
            }
        ),
        1 => (who.clone(), event, 1u64..=8)
            .prop_map(|(who, event, quantity)| Step::Check { who, event, quantity }),
        1 => (who, 0usize..64).prop_map(|(who, pick)| Step::Read { who, pick }),
        4 => (seconds, any::<bool>()).prop_map(|(seconds, sweep)| Step::Advance { seconds, sweep }),
        1 => (0usize..4).prop_map(|user| Step::Identify { user }),
        2 => (
            0usize..OWNERS,
            0usize..PLANS.len(),
            proptest::option::weighted(0.4, 0i64..=40 * 86_400),
            proptest::option::weighted(0.3, proptest::option::weighted(0.7, 0usize..ZONES.len())),
            proptest::option::weighted(0.2, 0u64..=40),
            proptest::option::weighted(0.3, 1u32..=2),
        )
            .prop_map(|(owner, plan, cycle_back, zone, custom, seats)| Step::Subscribe {
                owner, plan, cycle_back, zone, custom, seats
            }),
        1 => (0usize..OWNERS, 0u8..=4).prop_map(|(owner, at)| Step::Cancel { owner, at }),
        2 => (0usize..4).prop_map(|user| Step::AddMember { user }),
        1 => (0usize..4).prop_map(|user| Step::RemoveMember { user }),
        2 => (
            0usize..OWNERS,
            0usize..PACKS.len(),
            1u64..=3,
            proptest::option::weighted(0.4, 60i64..=3 * 86_400),
            proptest::option::weighted(0.5, 0u8..4),
        )
            .prop_map(|(owner, pack, packs, expires_in, reference)| Step::Grant {
                owner, pack, packs, expires_in, reference
            }),
        1 => (0usize..64, any::<bool>()).prop_map(|(pick, by_ref)| Step::Revoke { pick, by_ref }),
    ]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        2usize..=4,
        0usize..ZONES.len(),
        0usize..STARTS.len(),
        quotas_strategy(),
        proptest::bool::weighted(0.75),
        proptest::bool::weighted(0.3),
        proptest::collection::vec(step_strategy(), STEPS_MIN..=STEPS_MAX),
    )
        .prop_map(
            |(users, zone, start, quotas, default_plan, unmatched_allow, steps)| Case {
                users,
                zone,
                start,
                quotas,
                default_plan,
                unmatched_allow,
                steps,
            },
        )
}

fn zone(index: usize) -> TimeZone {
    TimeZone::get(ZONES[index % ZONES.len()]).expect("a zone of the tz database")
}

fn calendar(period: CalendarPeriod, timezone: TimeZone) -> WindowSpec {
    WindowSpec::Calendar { period, timezone }
}

/// The case's plan document: `free` (the default), `pro`, `team` (with a seat cap), `anon`
/// (the anonymous plan), and credit packs `boost` and `promo`.
///
/// Every plan but `anon` has a lifetime limit, a daily calendar limit in the case's zone, a
/// rolling hour (multiplier 2), a metadata-matched sub-limit (`model=premium`) on the
/// subscription window, a concurrency limit, a soft monthly limit and an account-scoped pool.
fn plan_document(case: &Case) -> Arc<PlanDocument> {
    let q = case.quotas;
    let limits = |scale: u64, rollover: Option<u64>| {
        let day = CalendarPeriod::Day;
        let (images, texts) = (|| rule("image.*", &[]), || rule("text.*", &[]));
        let premium = rule("image.*", &[("model", &["premium"])]);
        let mut l = vec![
            limit(
                "lifetime",
                q.lifetime * scale,
                WindowSpec::Lifetime,
                images(),
            ),
            limit(
                "daily",
                q.daily * scale,
                calendar(day, zone(case.zone)),
                images(),
            ),
            limit(
                "rolling",
                q.rolling * scale,
                WindowSpec::Rolling { seconds: 3600 },
                texts(),
            ),
            limit(
                "premium",
                q.premium * scale,
                WindowSpec::Subscription,
                premium,
            ),
            limit("concurrent", q.concurrent, WindowSpec::Lifetime, images()),
            limit(
                "soft",
                q.soft * scale,
                calendar(CalendarPeriod::Month, TimeZone::UTC),
                texts(),
            ),
            limit("pool", q.pool * scale, WindowSpec::Lifetime, texts()),
        ];
        l[1].rollover = rollover;
        l[2].multiplier = 2;
        l[4].kind = LimitKind::Concurrency;
        l[5].enforcement = Enforcement::Soft;
        l[6].scope = Scope::Account;
        l[6].rules.push(images());
        l
    };
    let plan = |id: &str, seats, limits| Plan {
        id: id.into(),
        billing: BillingInterval {
            unit: IntervalUnit::Month,
            count: 1,
        },
        seats,
        limits,
    };
    let plans = vec![
        plan(
            "free",
            None,
            limits(1, (q.rollover > 0).then_some(q.rollover)),
        ),
        plan("pro", None, limits(2, Some(q.rollover + 1))),
        plan("team", Some(q.seats), limits(1, None)),
        plan(
            "anon",
            None,
            vec![limit(
                "lifetime",
                q.anonymous,
                WindowSpec::Lifetime,
                rule("*", &[]),
            )],
        ),
    ];
    let unmatched = if case.unmatched_allow {
        UnmatchedEvents::Allow
    } else {
        UnmatchedEvents::Deny
    };
    let mut doc = PlanDocument::new(
        case.default_plan.then(|| "free".into()),
        Some("anon".into()),
        unmatched,
        plans,
    )
    .expect("a valid document");
    let item = |id: &str, unit: &str, quantity, pattern| CreditItem {
        id: id.into(),
        unit: unit.into(),
        quantity,
        rules: vec![rule(pattern, &[])],
    };
    doc.credit_packs = vec![
        CreditPack {
            id: PACKS[0].into(),
            priority: 0,
            expires_after_days: None,
            items: vec![
                item("images", "image", q.pack, "image.*"),
                item("texts", "token", q.pack * 2, "text.*"),
            ],
        },
        CreditPack {
            id: PACKS[1].into(),
            priority: 5,
            expires_after_days: Some(2),
            items: vec![item("images", "image", q.pack.div_ceil(2), "image.*")],
        },
    ];
    Arc::new(doc)
}

/// One call to a store, with everything it carries.
#[derive(Debug, Clone)]
enum Command {
    Reserve(ReserveCommand),
    Commit(CommitCommand),
    Release(ReleaseCommand),
    Extend(ExtendCommand),
    Track(TrackCommand),
    Check(CheckCommand),
    Usage(UsageQuery),
    Reservation(String, Timestamp),
    Credits(CreditsQuery),
    Identify(IdentifyCommand),
    AdvanceClock(i64),
    /// The sweeper at the (unmoving) real time: each environment expires by its own clock.
    ExpireDue(IdSeed),
    Subscribe {
        owner: Owner,
        request: UpsertRequest,
        new_id: String,
        now: Timestamp,
    },
    Cancel {
        owner: Owner,
        at: CancelAt,
        now: Timestamp,
    },
    AddMember(UserId, Timestamp),
    RemoveMember(UserId),
    Grant(GrantCommand),
    Revoke(RevokeCommand),
    // Final-state reads.
    Events,
    Ledger(Owner),
    Subscription(Owner),
    History(Owner),
    Account(Timestamp),
}

impl Command {
    /// The command as a failure shows it: the plan document it carries (always the case's,
    /// described with the case) is left out.
    fn shown(&self) -> String {
        let mut c = self.clone();
        let elided = Arc::new(PlanDocument::empty());
        let text = format!("{elided:?}");
        match &mut c {
            Command::Reserve(x) => x.plans = elided,
            Command::Commit(x) => x.plans = elided,
            Command::Release(x) => x.plans = elided,
            Command::Track(x) => x.plans = elided,
            Command::Check(x) => x.plans = elided,
            Command::Usage(x) => x.plans = elided,
            Command::Identify(x) => x.plans = elided,
            _ => {}
        }
        format!("{c:?}").replace(&text, "<the case's document>")
    }
}

/// A store's answer as compared: its `Debug` text, whether it is a failure no sequence of
/// valid commands may cause, and the reservation an allowed reserve made.
struct Answer {
    text: String,
    broken: bool,
    reserved: Option<String>,
}

fn answer<T: Debug>(result: &StoreResult<T>) -> Answer {
    Answer {
        text: format!("{result:?}"),
        broken: matches!(
            result,
            Err(StoreError::Internal(_)
                | StoreError::Unavailable(_)
                | StoreError::OutcomeUnknown(_))
        ),
        reserved: None,
    }
}

fn render_reserve(o: &ReserveOutcome) -> String {
    format!("{o:?}")
}

fn render_track(o: &TrackOutcome) -> String {
    format!("{o:?}")
}

/// What the commands of a case need: the environment, the document and the real time (which
/// never moves: time passes on the test clock).
struct Ctx {
    env: EnvId,
    plans: Arc<PlanDocument>,
    real: Timestamp,
}

async fn run(store: &Arc<dyn Store>, ctx: &Ctx, command: &Command) -> Answer {
    let (env, plans) = (ctx.env, ctx.plans.clone());
    match command.clone() {
        Command::Reserve(c) => {
            let result = store.reserve(c).await;
            let mut a = answer(&result);
            if let Ok(Idempotent::Fresh(o)) = &result {
                a.reserved = o.reservation_id.clone().filter(|_| o.allowed);
            }
            a
        }
        Command::Commit(c) => answer(&store.commit(c).await),
        Command::Release(c) => answer(&store.release(c).await),
        Command::Extend(c) => answer(&store.extend(c).await),
        Command::Track(c) => answer(&store.track(c).await),
        Command::Check(c) => answer(&store.check(c).await),
        Command::Usage(q) => answer(&store.usage(q).await),
        Command::Reservation(id, now) => answer(&store.get_reservation(env, &id, now).await),
        Command::Credits(q) => answer(&store.credits(q).await),
        Command::Identify(c) => answer(&store.identify(c).await),
        Command::AdvanceClock(s) => answer(&store.advance_clock(env, s).await),
        Command::ExpireDue(ids) => answer(&store.expire_due(ctx.real, ids).await),
        Command::Subscribe {
            owner,
            request,
            new_id,
            now,
        } => answer(
            &store
                .upsert_subscription(env, owner, plans, request, new_id, now)
                .await,
        ),
        Command::Cancel { owner, at, now } => answer(
            &store
                .cancel_subscription(env, owner, plans, at, None, now)
                .await,
        ),
        Command::AddMember(u, now) => {
            answer(&store.add_member(env, account(), u, plans, now).await)
        }
        Command::RemoveMember(u) => answer(&store.remove_member(env, account(), u).await),
        Command::Grant(c) => answer(&store.grant_credits(c).await),
        Command::Revoke(c) => answer(&store.revoke_credits(c).await),
        Command::Events => answer(&all_events(store, env).await),
        Command::Ledger(owner) => answer(&whole_ledger(store, env, owner).await),
        Command::Subscription(owner) => answer(&store.get_subscription(env, &owner).await),
        Command::History(owner) => answer(&store.subscription_history(env, &owner).await),
        Command::Account(now) => answer(&store.account(env, account(), plans, now).await),
    }
}

/// Every usage event of the environment, newest first, read page by page.
async fn all_events(store: &Arc<dyn Store>, env: EnvId) -> StoreResult<Vec<StoredEvent>> {
    let mut all = Vec::new();
    let mut before = None;
    for _ in 0..PAGES_MAX {
        let page = store
            .events(EventsQuery {
                before: before.clone(),
                ..EventsQuery::all(env, PAGE_ROWS)
            })
            .await?;
        let last = page.len() < PAGE_ROWS;
        before = page.last().map(|e| (e.occurred_at, e.event_id.clone()));
        all.extend(page);
        if last {
            return Ok(all);
        }
    }
    Err(StoreError::Internal(format!(
        "events: more than {PAGES_MAX} pages"
    )))
}

/// An owner's whole credit ledger, newest first, read page by page.
async fn whole_ledger(
    store: &Arc<dyn Store>,
    env: EnvId,
    owner: Owner,
) -> StoreResult<Vec<LedgerEntry>> {
    let mut all = Vec::new();
    let mut before = None;
    for _ in 0..PAGES_MAX {
        let page = store
            .credit_ledger(LedgerQuery {
                env,
                owner: owner.clone(),
                limit: PAGE_ROWS,
                before,
            })
            .await?;
        let last = page.len() < PAGE_ROWS;
        before = page.last().map(|e| e.seq);
        all.extend(page);
        if last {
            return Ok(all);
        }
    }
    Err(StoreError::Internal(format!(
        "ledger: more than {PAGES_MAX} pages"
    )))
}

fn account() -> AccountId {
    AccountId::parse(ACCOUNT).expect("a valid account id")
}

/// What a case has sent so far: where the next commands' ids, picks and `now` come from. It
/// learns only from answers both stores gave alike.
struct Book {
    /// `u0`… then the anonymous id.
    ids: Vec<String>,
    now: Timestamp,
    /// Reservations an allowed reserve made, with the quantity reserved.
    held: Vec<(String, u64)>,
    /// Every reservation id a reserve carried.
    reservation_ids: Vec<String>,
    /// Reserves and tracks sent with an idempotency key, grants with an external reference.
    keyed: Vec<Command>,
    /// Every grant id and reference a grant carried.
    grants: Vec<String>,
    refs: Vec<String>,
}

impl Book {
    fn new(case: &Case, start: Timestamp) -> Self {
        let mut ids: Vec<String> = (0..case.users).map(|i| format!("u{i}")).collect();
        ids.push(ANONYMOUS.into());
        Self {
            ids,
            now: start,
            held: Vec::new(),
            reservation_ids: Vec::new(),
            keyed: Vec::new(),
            grants: Vec::new(),
            refs: Vec::new(),
        }
    }

    /// A user or the anonymous id.
    fn who(&self, who: usize) -> UserId {
        user(&self.ids[who % self.ids.len()])
    }

    /// An identified user (never the anonymous id).
    fn member(&self, n: usize) -> UserId {
        user(&self.ids[n % (self.ids.len() - 1)])
    }

    /// A user, the anonymous id or the account.
    fn owner(&self, n: usize) -> Owner {
        if n >= OWNER_ACCOUNT {
            return Owner::Account(account());
        }
        Owner::User(user(&self.ids[n % self.ids.len()]))
    }

    fn owners(&self) -> Vec<Owner> {
        let mut owners: Vec<Owner> = (0..self.ids.len()).map(|n| self.owner(n)).collect();
        owners.push(self.owner(OWNER_ACCOUNT));
        owners
    }

    fn learn(&mut self, command: &Command, a: &Answer) {
        if let (Command::Reserve(c), Some(id)) = (command, &a.reserved) {
            self.held.push((id.clone(), c.quantity.get()));
        }
    }

    /// The commands of step `i`, built from the case and what was sent before.
    fn commands(&mut self, ctx: &Ctx, i: usize, step: &Step) -> Vec<Command> {
        let s = Sent {
            env: ctx.env,
            now: self.now,
            plans: ctx.plans.clone(),
            i,
        };
        match *step {
            Step::Reserve { .. } | Step::Track { .. } | Step::Retry { .. } => {
                self.request(&s, step)
            }
            Step::Commit { .. } | Step::Release { .. } | Step::Extend { .. } => {
                self.settle(&s, step)
            }
            Step::Advance { seconds, sweep } => {
                self.now = s.now + SignedDuration::from_secs(seconds);
                let mut c = vec![Command::AdvanceClock(seconds)];
                c.extend(sweep.then(|| Command::ExpireDue(s.ids())));
                c
            }
            Step::Check {
                who,
                event,
                quantity,
            } => {
                let (name, metadata) = event_of(event);
                vec![Command::Check(CheckCommand {
                    env: s.env,
                    now: s.now,
                    plans: s.plans,
                    user_id: self.who(who),
                    event: name,
                    quantity: Quantity::positive(quantity).expect("a valid quantity"),
                    metadata,
                })]
            }
            Step::Read { who, pick } => {
                let mut reads = vec![
                    Command::Usage(UsageQuery {
                        env: s.env,
                        now: s.now,
                        plans: s.plans,
                        user_id: self.who(who),
                        event: None,
                    }),
                    Command::Credits(CreditsQuery {
                        env: s.env,
                        now: s.now,
                        owner: Owner::User(self.who(who)),
                    }),
                ];
                if let Some(id) = pick_from(&self.reservation_ids, pick) {
                    reads.push(Command::Reservation(id.clone(), s.now));
                }
                reads
            }
            Step::Identify { .. }
            | Step::Subscribe { .. }
            | Step::Cancel { .. }
            | Step::AddMember { .. }
            | Step::RemoveMember { .. } => self.subject(&s, step),
            Step::Grant { .. } | Step::Revoke { .. } => self.credit(&s, step),
        }
    }

    /// A reserve, a track, or the retry of an earlier keyed reserve, track or grant.
    fn request(&mut self, s: &Sent, step: &Step) -> Vec<Command> {
        let (rsv, evt) = (format!("rsv_s{}", s.i), format!("evt_s{}", s.i));
        let command = match *step {
            Step::Reserve {
                who,
                event,
                quantity,
                ttl,
                key,
            } => {
                let u = self.who(who);
                let (name, metadata) = event_of(event);
                let ttl = TtlSeconds::new(ttl).expect("a valid ttl");
                let fingerprint = format!("reserve {u} {name} {quantity} {metadata:?} {ttl:?}");
                Command::Reserve(ReserveCommand {
                    env: s.env,
                    now: s.now,
                    plans: s.plans.clone(),
                    reservation_id: rsv,
                    event_id: evt,
                    user_id: u,
                    event: name,
                    quantity: Quantity::positive(quantity).expect("a valid quantity"),
                    metadata,
                    ttl,
                    prompt: None,
                    record_denials: true,
                    idempotency: key.map(|k| Idempotency {
                        key: IdempotencyKey::parse(format!("rk{k}")).expect("a valid key"),
                        fingerprint,
                        render: render_reserve,
                    }),
                    ids: s.ids(),
                })
            }
            Step::Track {
                who,
                event,
                quantity,
                enforce,
                back,
                key,
            } => {
                let u = self.who(who);
                let (name, metadata) = event_of(event);
                let occurred_at = s.now - SignedDuration::from_secs(back);
                let fingerprint =
                    format!("track {u} {name} {quantity} {metadata:?} {enforce} {occurred_at}");
                Command::Track(TrackCommand {
                    env: s.env,
                    now: s.now,
                    plans: s.plans.clone(),
                    event_id: evt,
                    user_id: u,
                    event: name,
                    quantity: Quantity::new(quantity).expect("a valid quantity"),
                    metadata,
                    occurred_at,
                    cost_micros: None,
                    prompt: None,
                    response: None,
                    enforce,
                    record_denials: true,
                    idempotency: key.map(|k| Idempotency {
                        key: IdempotencyKey::parse(format!("tk{k}")).expect("a valid key"),
                        fingerprint,
                        render: render_track,
                    }),
                    ids: s.ids(),
                })
            }
            Step::Retry { pick, same_body } => {
                let Some(earlier) = pick_from(&self.keyed, pick) else {
                    return Vec::new();
                };
                // The client's retry: the same key (and body, unless `same_body` is false),
                // new ids from the server, now.
                let more = |q: Quantity, key: Option<&mut String>| {
                    key.into_iter().for_each(|k| k.push_str(" +1"));
                    Quantity::positive(q.get() + 1).expect("a valid quantity")
                };
                match earlier.clone() {
                    Command::Reserve(mut c) => {
                        (c.now, c.ids, c.reservation_id, c.event_id) = (s.now, s.ids(), rsv, evt);
                        if !same_body {
                            let key = c.idempotency.as_mut().map(|k| &mut k.fingerprint);
                            c.quantity = more(c.quantity, key);
                        }
                        self.reservation_ids.push(c.reservation_id.clone());
                        return vec![Command::Reserve(c)];
                    }
                    Command::Track(mut c) => {
                        (c.now, c.ids, c.event_id) = (s.now, s.ids(), evt);
                        if !same_body {
                            let key = c.idempotency.as_mut().map(|k| &mut k.fingerprint);
                            c.quantity = more(c.quantity, key);
                        }
                        return vec![Command::Track(c)];
                    }
                    Command::Grant(mut c) => {
                        (c.now, c.ids) = (s.now, s.ids());
                        let packs = c.packs + u64::from(!same_body);
                        for (j, item) in c.items.iter_mut().enumerate() {
                            item.grant_id = format!("grt_s{}_{j}", s.i);
                            item.quantity = item.quantity / c.packs * packs;
                            self.grants.push(item.grant_id.clone());
                        }
                        c.packs = packs;
                        return vec![Command::Grant(c)];
                    }
                    _ => return Vec::new(),
                }
            }
            _ => return Vec::new(),
        };
        match &command {
            Command::Reserve(c) => {
                self.reservation_ids.push(c.reservation_id.clone());
                if c.idempotency.is_some() {
                    self.keyed.push(command.clone());
                }
            }
            Command::Track(c) if c.idempotency.is_some() => self.keyed.push(command.clone()),
            _ => {}
        }
        vec![command]
    }

    /// A commit, release or extend of a reservation an earlier reserve made.
    fn settle(&mut self, s: &Sent, step: &Step) -> Vec<Command> {
        let (Step::Commit { pick, .. } | Step::Release { pick } | Step::Extend { pick, .. }) =
            *step
        else {
            return Vec::new();
        };
        let Some((id, reserved)) = pick_from(&self.held, pick).cloned() else {
            return Vec::new();
        };
        let command = match *step {
            Step::Commit {
                how,
                record,
                premium,
                ..
            } => Command::Commit(CommitCommand {
                env: s.env,
                now: s.now,
                plans: s.plans.clone(),
                reservation_id: id,
                quantity: match how {
                    Final::Less(d) => Some(reserved.saturating_sub(d)),
                    Final::Equal => None,
                    Final::More(d) => Some(reserved + d),
                }
                .map(|q| Quantity::new(q).expect("a valid quantity")),
                metadata: premium.then(|| event_of(2).1),
                cost_micros: Some(s.i as u64 * 1000),
                response: None,
                if_expired: if record {
                    IfExpired::Record
                } else {
                    IfExpired::Reject
                },
                late_event_id: format!("evt_late_s{}", s.i),
                ids: s.ids(),
            }),
            Step::Release { .. } => Command::Release(ReleaseCommand {
                env: s.env,
                now: s.now,
                plans: s.plans.clone(),
                reservation_id: id,
                reason: Some("upstream failed".into()),
                error_code: None,
                response: None,
                ids: s.ids(),
            }),
            Step::Extend { ttl, .. } => Command::Extend(ExtendCommand {
                env: s.env,
                now: s.now,
                reservation_id: id,
                ttl: TtlSeconds::new(ttl).expect("a valid ttl"),
            }),
            _ => return Vec::new(),
        };
        vec![command]
    }

    /// An identify, a subscription write or a membership change.
    fn subject(&self, s: &Sent, step: &Step) -> Vec<Command> {
        let now = s.now;
        let command = match *step {
            Step::Identify { user } => Command::Identify(IdentifyCommand {
                env: s.env,
                now,
                plans: s.plans.clone(),
                anonymous_id: self.who(self.ids.len() - 1),
                user_id: self.member(user),
                traits: None,
            }),
            Step::Subscribe {
                owner,
                plan,
                cycle_back,
                zone: tz,
                custom,
                seats,
            } => {
                let owner = self.owner(owner);
                let is_account = matches!(owner, Owner::Account(_));
                let request = UpsertRequest {
                    plan_id: PLANS[plan % PLANS.len()].into(),
                    cycle_start: cycle_back.map(|b| now - SignedDuration::from_secs(b)),
                    ends_at: None,
                    custom_limits: custom.map(|q| BTreeMap::from([("lifetime".into(), q)])),
                    status: None,
                    timezone: tz.map(|z| z.map(zone)),
                    seats: seats.filter(|_| is_account).map(Some),
                    source: "api".into(),
                };
                let new_id = format!("sub_s{}", s.i);
                Command::Subscribe {
                    owner,
                    request,
                    new_id,
                    now,
                }
            }
            Step::Cancel { owner, at } => Command::Cancel {
                owner: self.owner(owner),
                at: match at {
                    0 => CancelAt::Now,
                    1 => CancelAt::PeriodEnd,
                    h => CancelAt::At(now + SignedDuration::from_hours(i64::from(h))),
                },
                now,
            },
            Step::AddMember { user } => Command::AddMember(self.member(user), now),
            Step::RemoveMember { user } => Command::RemoveMember(self.member(user)),
            _ => return Vec::new(),
        };
        vec![command]
    }

    /// A grant of a pack (its items made as the server makes them) or a revoke.
    fn credit(&mut self, s: &Sent, step: &Step) -> Vec<Command> {
        match *step {
            Step::Grant {
                owner,
                pack,
                packs,
                expires_in,
                reference,
            } => {
                let pack = &s.plans.credit_packs[pack % s.plans.credit_packs.len()];
                let items: Vec<NewGrant> = pack
                    .items
                    .iter()
                    .enumerate()
                    .map(|(j, item)| NewGrant {
                        grant_id: format!("grt_s{}_{j}", s.i),
                        item_id: item.id.clone(),
                        unit: item.unit.clone(),
                        quantity: item.quantity * packs,
                        rules: item.rules.clone(),
                    })
                    .collect();
                self.grants.extend(items.iter().map(|g| g.grant_id.clone()));
                let external_ref = reference.map(|r| format!("ref{r}"));
                self.refs.extend(external_ref.clone());
                let grant = Command::Grant(GrantCommand {
                    env: s.env,
                    now: s.now,
                    owner: self.owner(owner),
                    pack_id: pack.id.clone(),
                    priority: pack.priority,
                    packs,
                    items,
                    expires_at: expires_in.map(|e| s.now + SignedDuration::from_secs(e)),
                    source: GrantSource::Purchase,
                    external_ref,
                    note: None,
                    ids: s.ids(),
                });
                if reference.is_some() {
                    self.keyed.push(grant.clone());
                }
                vec![grant]
            }
            Step::Revoke { pick, by_ref } => {
                let target = match (by_ref, pick_from(&self.refs, pick)) {
                    (true, Some(r)) => RevokeTarget::ExternalRef(r.clone()),
                    _ => match pick_from(&self.grants, pick) {
                        Some(g) => RevokeTarget::Grant(g.clone()),
                        None => return Vec::new(),
                    },
                };
                vec![Command::Revoke(RevokeCommand {
                    env: s.env,
                    now: s.now,
                    target,
                    reason: Some("refunded".into()),
                    ids: s.ids(),
                })]
            }
            _ => Vec::new(),
        }
    }

    /// The reads that make up a store's final state.
    fn final_reads(&self, ctx: &Ctx) -> Vec<Command> {
        let now = self.now;
        let mut reads = vec![Command::Events, Command::Account(now)];
        for id in &self.ids {
            for event in [None, Some(EVENTS[3].0)] {
                reads.push(Command::Usage(UsageQuery {
                    env: ctx.env,
                    now,
                    plans: ctx.plans.clone(),
                    user_id: user(id),
                    event: event.map(|e| EventName::parse(e).expect("a valid event")),
                }));
            }
        }
        for owner in self.owners() {
            reads.push(Command::Credits(CreditsQuery {
                env: ctx.env,
                now,
                owner: owner.clone(),
            }));
            reads.push(Command::Ledger(owner.clone()));
            reads.push(Command::Subscription(owner.clone()));
            reads.push(Command::History(owner));
        }
        for id in &self.reservation_ids {
            reads.push(Command::Reservation(id.clone(), now));
        }
        reads
    }
}

/// What every command of one step shares.
struct Sent {
    env: EnvId,
    now: Timestamp,
    plans: Arc<PlanDocument>,
    /// The step's index: every id the step's commands carry is made from it.
    i: usize,
}

impl Sent {
    fn ids(&self) -> IdSeed {
        IdSeed(format!("s{}_", self.i))
    }
}

fn pick_from<T>(list: &[T], pick: usize) -> Option<&T> {
    (!list.is_empty()).then(|| &list[pick % list.len()])
}

/// Event `n` of [`EVENTS`] and its metadata.
fn event_of(n: usize) -> (EventName, Metadata) {
    let (name, model) = EVENTS[n % EVENTS.len()];
    let map = model
        .map(|m| BTreeMap::from([("model".to_string(), m.to_string())]))
        .unwrap_or_default();
    (
        EventName::parse(name).expect("a valid event"),
        Metadata::parse(map).expect("valid metadata"),
    )
}

/// Replays one case through fresh stores from both factories.
async fn run_case<MA, FA, MB, FB>(case: &Case, make_a: &MA, make_b: &MB) -> Result<(), String>
where
    MA: Fn() -> FA,
    FA: Future<Output = Made>,
    MB: Fn() -> FB,
    FB: Future<Output = Made>,
{
    let ((a, _guard_a), (b, _guard_b)) = tokio::join!(make_a(), make_b());
    let result = replay(case, &a, &b).await;
    tokio::join!(a.shutdown(), b.shutdown());
    result
}

async fn replay(case: &Case, a: &Arc<dyn Store>, b: &Arc<dyn Store>) -> Result<(), String> {
    let ((env, _), (env_b, _)) = tokio::join!(setup(a), setup(b));
    if env != env_b {
        return Err(format!(
            "setup made environment {env:?} in A, {env_b:?} in B"
        ));
    }
    let real: Timestamp = STARTS[case.start].parse().expect("a valid timestamp");
    let ctx = Ctx {
        env,
        plans: plan_document(case),
        real,
    };
    let mut book = Book::new(case, real);
    for (i, step) in case.steps.iter().enumerate() {
        for command in book.commands(&ctx, i, step) {
            let answer = same_answer(a, b, &ctx, &command)
                .await
                .map_err(|why| format!("step {i} ({step:?}): {why}"))?;
            book.learn(&command, &answer);
        }
    }
    for read in book.final_reads(&ctx) {
        same_answer(a, b, &ctx, &read)
            .await
            .map_err(|why| format!("final state after {} steps: {why}", case.steps.len()))?;
    }
    Ok(())
}

/// Runs one command on both stores; their answers must be equal, and not a failure.
async fn same_answer(
    a: &Arc<dyn Store>,
    b: &Arc<dyn Store>,
    ctx: &Ctx,
    command: &Command,
) -> Result<Answer, String> {
    let (x, y) = tokio::join!(run(a, ctx, command), run(b, ctx, command));
    if x.text != y.text {
        return Err(format!(
            "the answers differ\ncommand: {}\n{}\nA answered: {}\nB answered: {}",
            command.shown(),
            first_difference(&x.text, &y.text),
            x.text,
            y.text
        ));
    }
    if x.broken {
        return Err(format!(
            "both stores failed\ncommand: {}\nanswer: {}",
            command.shown(),
            x.text
        ));
    }
    Ok(x)
}

/// Where two answers part, with some text before: long answers (every event of a case) are
/// hard to compare by eye.
fn first_difference(a: &str, b: &str) -> String {
    const BEFORE: usize = 80;
    const AFTER: usize = 120;
    let at = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i);
    let boundary = |s: &str, mut i: usize| {
        i = i.min(s.len());
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let around = |s: &str| {
        let (start, end) = (
            boundary(s, at.saturating_sub(BEFORE)),
            boundary(s, at + AFTER),
        );
        format!("…{}…", &s[start..end])
    };
    format!(
        "first difference at byte {at}:\n  A: {}\n  B: {}",
        around(a),
        around(b)
    )
}
