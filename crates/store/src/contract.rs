//! The store contract suite: every storage behaviour written once, as a function over
//! `Arc<dyn Store>`, and run against each backend by [`store_contract_suite!`].
//!
//! A backend's test file calls the macro with an async constructor that returns a fresh, empty
//! store and a guard that keeps its resources (a temp dir, a database) alive for the test.

mod billers;
mod carry;
mod credits;
mod credits_property;
pub mod differential;
mod persons;
mod seats;
pub use billers::*;
pub use carry::*;
pub use credits::*;
pub use credits_property::*;
pub use persons::*;
pub use seats::*;

use crate::*;
use jiff::{SignedDuration, Timestamp};
use tollgate_core::plan::*;
use tollgate_core::subscription::{CancelAt, HistoryKind, UpsertRequest};
use tollgate_core::window::{BillingInterval, CalendarPeriod, IntervalUnit};

/// What a backend's constructor returns: the store and whatever must live as long as it, or
/// None when the backend is not available here (its tests then say so and pass).
pub type Harness = Option<(Arc<dyn Store>, Box<dyn std::any::Any + Send>)>;

/// Generates one `#[tokio::test]` per contract test for a backend.
#[macro_export]
macro_rules! store_contract_suite {
    ($make:path) => {
        $crate::store_contract_suite!(@each $make;
            the_admin_token_rotates,
            reserve_commit_release_are_exact,
            commit_more_than_reserved_records_overage,
            concurrent_reserves_never_exceed_a_hard_quota,
            two_limits_are_held_all_or_nothing,
            expired_reservations_hold_nothing,
            the_sweeper_expires_each_environment_by_its_own_clock,
            idempotency_keys_replay_or_conflict,
            environments_are_isolated,
            subscriptions_upsert_cancel_and_history,
            track_enforce_records_nothing_when_denied,
            calendar_windows_reset_at_the_boundary,
            subscription_writes_carry_usage_and_move_holds,
            plan_documents_keep_every_version_and_skip_a_repeat,
            concurrent_puts_of_one_plan_document_make_one_version,
            a_token_secret_is_made_once_per_environment,
            environments_are_found_by_project_and_mode,
            grant_is_idempotent_on_external_ref,
            credits_pay_for_what_the_plan_does_not_cover,
            credits_are_spent_in_order_and_across_grants,
            grants_and_credit_holds_expire_through_the_ledger,
            revoke_by_grant_or_reference,
            credits_pay_where_no_plan_applies,
            ledger_balances_hold_for_any_sequence,
            biller_snapshots_apply_once_and_in_order,
            unresolved_biller_events_apply_once_the_customer_is_mapped,
            a_biller_purchase_grants_its_pack_once,
            committed_usage_is_queued_for_its_stripe_meter,
            integrations_and_settings_are_kept,
            a_failed_biller_event_is_applied_when_retried,
            concurrent_snapshots_of_one_subscription_end_on_the_newest,
            concurrent_meter_claims_take_each_row_once,
            subscription_seats_override_the_plans_cap,
            seats_are_refused_on_a_users_subscription,
            logged_text_is_kept_as_given_and_denials_only_when_asked,
            logged_text_past_retention_is_purged_by_the_environments_clock,
            erasing_a_user_clears_their_text_and_traits_and_keeps_their_usage
        );
    };
    (@each $make:path; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some((store, _guard)) = $make().await else {
                    eprintln!("skipped: this backend is not configured here");
                    return;
                };
                $crate::contract::$name(store).await;
            }
        )*
    };
}

fn t0() -> Timestamp {
    "2026-03-10T12:00:00Z".parse().expect("a valid timestamp")
}

fn limit(id: &str, quota: u64, window: WindowSpec, rule: MatchRule) -> Limit {
    Limit {
        id: id.into(),
        label: id.into(),
        unit: "count".into(),
        quota,
        kind: LimitKind::Consumable,
        scope: Scope::User,
        enforcement: Enforcement::Hard,
        multiplier: 1,
        window,
        rules: vec![rule],
        rollover: None,
    }
}

fn rule(event: &str, metadata: &[(&str, &[&str])]) -> MatchRule {
    MatchRule {
        event: EventPattern::parse(event).expect("a valid pattern"),
        metadata: metadata
            .iter()
            .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
            .collect(),
    }
}

fn doc(limits: Vec<Limit>) -> Arc<PlanDocument> {
    let plan = Plan {
        id: "free".into(),
        billing: BillingInterval {
            unit: IntervalUnit::Month,
            count: 1,
        },
        seats: None,
        limits,
    };
    let pro = Plan {
        id: "pro".into(),
        ..plan.clone()
    };
    Arc::new(
        PlanDocument::new(
            Some("free".into()),
            None,
            UnmatchedEvents::Deny,
            vec![plan, pro],
        )
        .expect("a valid document"),
    )
}

/// Creates an install with one project and returns its (test, live) environments.
async fn setup(store: &Arc<dyn Store>) -> (EnvId, EnvId) {
    let mut keys = Vec::new();
    for (i, mode) in [Mode::Test, Mode::Live].into_iter().enumerate() {
        keys.push(NewKey {
            key_id: format!("key_{i}"),
            project_id: "prj_1".into(),
            mode,
            kind: KeyKind::Secret,
            name: "k".into(),
            prefix: "sk_".into(),
            hash: [i as u8 + 1; 32],
            created_at: t0(),
        });
    }
    let project = Project {
        project_id: "prj_1".into(),
        name: "p".into(),
        created_at: t0(),
    };
    store
        .initialize([9; 32], project, keys)
        .await
        .expect("initialize");
    let env = |h: u8| {
        let store = store.clone();
        async move {
            store
                .authenticate([h; 32])
                .await
                .expect("authenticate")
                .expect("a known key")
                .env
        }
    };
    (env(1).await, env(2).await)
}

/// Rotating the admin token: the old hash stops verifying, the new one verifies; before an
/// install exists there is nothing to rotate.
pub async fn the_admin_token_rotates(store: Arc<dyn Store>) {
    assert!(matches!(
        store.rotate_admin_token([7; 32]).await,
        Err(StoreError::NotFound)
    ));
    assert!(!store.verify_admin([7; 32]).await.expect("verify"));
    setup(&store).await;
    assert!(store.verify_admin([9; 32]).await.expect("verify"));
    store.rotate_admin_token([7; 32]).await.expect("rotate");
    assert!(!store.verify_admin([9; 32]).await.expect("verify"));
    assert!(store.verify_admin([7; 32]).await.expect("verify"));
    assert!(store.is_initialized().await.expect("initialized"));
}

fn user(s: &str) -> UserId {
    UserId::parse(s).expect("a valid user id")
}

fn reserve_cmd(
    env: EnvId,
    plans: &Arc<PlanDocument>,
    u: &str,
    q: u64,
    now: Timestamp,
) -> ReserveCommand {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ReserveCommand {
        env,
        now,
        plans: plans.clone(),
        reservation_id: format!("rsv_{n}"),
        event_id: format!("evt_{n}"),
        user_id: user(u),
        event: EventName::parse("image.render").expect("valid"),
        quantity: Quantity::positive(q).expect("valid"),
        metadata: Metadata::default(),
        ttl: TtlSeconds::new(60).expect("valid"),
        prompt: None,
        record_denials: true,
        idempotency: None,
        ids: IdSeed(format!("r{n}_")),
    }
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

async fn reserve(store: &Arc<dyn Store>, cmd: ReserveCommand) -> ReserveOutcome {
    match store.reserve(cmd).await.expect("reserve") {
        Idempotent::Fresh(o) => o,
        Idempotent::Replayed(_) => panic!("a fresh reserve was answered as a replay"),
    }
}

fn commit_cmd(
    env: EnvId,
    plans: &Arc<PlanDocument>,
    id: &str,
    q: Option<u64>,
    now: Timestamp,
) -> CommitCommand {
    CommitCommand {
        env,
        now,
        plans: plans.clone(),
        reservation_id: id.into(),
        quantity: q.map(|q| Quantity::new(q).expect("valid")),
        metadata: None,
        cost_micros: None,
        response: None,
        if_expired: IfExpired::Reject,
        late_event_id: format!("evt_late_{id}"),
        ids: IdSeed(format!("c_{id}_")),
    }
}

fn release_cmd(env: EnvId, plans: &Arc<PlanDocument>, id: &str, now: Timestamp) -> ReleaseCommand {
    ReleaseCommand {
        env,
        now,
        plans: plans.clone(),
        reservation_id: id.into(),
        reason: None,
        error_code: None,
        response: None,
        ids: IdSeed(format!("x_{id}_")),
    }
}

async fn usage(
    store: &Arc<dyn Store>,
    env: EnvId,
    plans: &Arc<PlanDocument>,
    u: &str,
    now: Timestamp,
) -> Vec<LimitState> {
    store
        .usage(UsageQuery {
            env,
            now,
            plans: plans.clone(),
            user_id: user(u),
            event: None,
        })
        .await
        .expect("usage")
        .limits
}

fn images(quota: u64) -> Arc<PlanDocument> {
    doc(vec![limit(
        "images",
        quota,
        WindowSpec::Lifetime,
        rule("image.*", &[]),
    )])
}

pub async fn reserve_commit_release_are_exact(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let plans = images(10);
    let now = t0();
    let a = reserve(&store, reserve_cmd(env, &plans, "u1", 3, now)).await;
    assert!(a.allowed);
    assert_eq!(
        (
            a.limits[0].used,
            a.limits[0].reserved,
            a.limits[0].remaining
        ),
        (0, 3, 7)
    );
    let id = a.reservation_id.expect("an id");
    let c = store
        .commit(commit_cmd(env, &plans, &id, Some(2), now))
        .await
        .expect("commit");
    assert_eq!((c.quantity, c.overage), (2, 0));
    assert_eq!((c.limits[0].used, c.limits[0].reserved), (2, 0));
    let again = store
        .commit(commit_cmd(env, &plans, &id, Some(2), now))
        .await
        .expect("commit again");
    assert_eq!(again, c, "committing twice answers the same");
    let b = reserve(&store, reserve_cmd(env, &plans, "u1", 5, now)).await;
    let bid = b.reservation_id.expect("an id");
    let r = store
        .release(release_cmd(env, &plans, &bid, now))
        .await
        .expect("release");
    assert_eq!((r.limits[0].used, r.limits[0].reserved), (2, 0));
    assert_eq!(
        store.commit(commit_cmd(env, &plans, &bid, None, now)).await,
        Err(StoreError::NotPending {
            status: ReservationStatus::Released
        })
    );
    assert_eq!(
        store
            .release(release_cmd(env, &plans, &id, now))
            .await
            .map(|_| ()),
        Err(StoreError::NotPending {
            status: ReservationStatus::Committed
        })
    );
    assert_eq!(
        store
            .commit(commit_cmd(env, &plans, "rsv_unknown", None, now))
            .await,
        Err(StoreError::NotFound)
    );
    let view = store.get_reservation(env, &id, now).await.expect("get");
    assert_eq!(
        (view.status, view.quantity),
        (ReservationStatus::Committed, 2)
    );
}

pub async fn commit_more_than_reserved_records_overage(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let plans = images(10);
    let now = t0();
    let a = reserve(&store, reserve_cmd(env, &plans, "u1", 8, now)).await;
    let c = store
        .commit(commit_cmd(
            env,
            &plans,
            &a.reservation_id.expect("id"),
            Some(13),
            now,
        ))
        .await
        .expect("commit");
    assert_eq!((c.quantity, c.overage), (13, 3));
    assert_eq!((c.limits[0].used, c.limits[0].remaining), (13, 0));
    let denied = reserve(&store, reserve_cmd(env, &plans, "u1", 1, now)).await;
    assert!(!denied.allowed);
    assert_eq!(
        denied.reasons,
        vec![tollgate_core::decision::DenyReason::LimitReached]
    );
    assert_eq!(denied.denied_by, vec!["images".to_string()]);
}

pub async fn concurrent_reserves_never_exceed_a_hard_quota(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let plans = images(100);
    let now = t0();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let store = store.clone();
        let plans = plans.clone();
        tasks.push(tokio::spawn(async move {
            let mut admitted = Vec::new();
            loop {
                let o = reserve(&store, reserve_cmd(env, &plans, "hot", 1, now)).await;
                if !o.allowed {
                    return admitted;
                }
                admitted.push(o.reservation_id.expect("id"));
            }
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.expect("task"));
    }
    assert_eq!(ids.len(), 100, "exactly the quota is admitted");
    // Commit odd ones with 1, release even ones: used equals the committed sum.
    let mut committed = 0;
    let mut tasks = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        let store = store.clone();
        let plans = plans.clone();
        if i % 2 == 1 {
            committed += 1;
        }
        tasks.push(tokio::spawn(async move {
            if i % 2 == 1 {
                store
                    .commit(commit_cmd(env, &plans, &id, None, now))
                    .await
                    .map(|_| ())
            } else {
                store
                    .release(release_cmd(env, &plans, &id, now))
                    .await
                    .map(|_| ())
            }
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("settle");
    }
    let l = &usage(&store, env, &plans, "hot", now).await[0];
    assert_eq!((l.used, l.reserved), (committed, 0));
}

pub async fn two_limits_are_held_all_or_nothing(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let plans = doc(vec![
        limit("total", 5, WindowSpec::Lifetime, rule("image.*", &[])),
        limit(
            "premium",
            1,
            WindowSpec::Lifetime,
            rule("image.*", &[("model", &["pro"])]),
        ),
    ]);
    let now = t0();
    let mut premium = reserve_cmd(env, &plans, "u1", 1, now);
    premium.metadata =
        Metadata::parse([("model".to_string(), "pro".to_string())].into()).expect("valid");
    let first = reserve(&store, premium.clone()).await;
    assert!(first.allowed);
    assert_eq!(first.limits.len(), 2);
    premium.reservation_id = "rsv_second_premium".into();
    premium.event_id = "evt_second_premium".into();
    let second = reserve(&store, premium).await;
    assert!(!second.allowed);
    assert_eq!(second.denied_by, vec!["premium".to_string()]);
    let total = usage(&store, env, &plans, "u1", now).await;
    assert_eq!(
        total[0].reserved, 1,
        "the denied premium request held nothing on total"
    );
}

pub async fn expired_reservations_hold_nothing(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let plans = images(1);
    let now = t0();
    let mut cmd = reserve_cmd(env, &plans, "u1", 1, now);
    cmd.ttl = TtlSeconds::new(1).expect("valid");
    let a = reserve(&store, cmd).await;
    let id = a.reservation_id.expect("id");
    let later = now + SignedDuration::from_secs(2);
    assert_eq!(usage(&store, env, &plans, "u1", later).await[0].reserved, 0);
    let view = store.get_reservation(env, &id, later).await.expect("get");
    assert_eq!(view.status, ReservationStatus::Expired);
    assert!(
        reserve(&store, reserve_cmd(env, &plans, "u1", 1, later))
            .await
            .allowed
    );
    assert_eq!(
        store
            .commit(commit_cmd(env, &plans, &id, None, later))
            .await,
        Err(StoreError::NotPending {
            status: ReservationStatus::Expired
        })
    );
    let ext = ExtendCommand {
        env,
        now: later,
        reservation_id: id.clone(),
        ttl: TtlSeconds::new(60).expect("valid"),
    };
    assert_eq!(
        store.extend(ext).await,
        Err(StoreError::NotPending {
            status: ReservationStatus::Expired
        })
    );
}

pub async fn the_sweeper_expires_each_environment_by_its_own_clock(store: Arc<dyn Store>) {
    let (test, live) = setup(&store).await;
    let plans = images(10);
    let real = Timestamp::now();
    let a = reserve(&store, reserve_cmd(test, &plans, "u1", 1, real)).await;
    let b = reserve(&store, reserve_cmd(live, &plans, "u1", 1, real)).await;
    assert_eq!(
        store
            .expire_due(real, IdSeed(format!("sweep{}", real.as_millisecond())))
            .await
            .expect("sweep"),
        0
    );
    store.advance_clock(test, 120).await.expect("advance");
    assert_eq!(
        store
            .expire_due(real, IdSeed(format!("sweep{}", real.as_millisecond())))
            .await
            .expect("sweep"),
        1
    );
    let va = store
        .get_reservation(test, &a.reservation_id.expect("id"), real)
        .await
        .expect("get");
    assert_eq!(
        va.status,
        ReservationStatus::Expired,
        "swept for good, whatever time a reader gives"
    );
    let vb = store
        .get_reservation(live, &b.reservation_id.expect("id"), real)
        .await
        .expect("get");
    assert_eq!(vb.status, ReservationStatus::Pending);
}

pub async fn idempotency_keys_replay_or_conflict(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let plans = images(10);
    let now = t0();
    fn render(o: &ReserveOutcome) -> String {
        format!("{:?}", o.reservation_id)
    }
    let idem = |fp: &str| Idempotency {
        key: IdempotencyKey::parse("req-1").expect("valid"),
        fingerprint: fp.into(),
        render,
    };
    let mut cmd = reserve_cmd(env, &plans, "u1", 2, now);
    cmd.idempotency = Some(idem("a"));
    let first = reserve(&store, cmd.clone()).await;
    let mut retry = reserve_cmd(env, &plans, "u1", 2, now);
    retry.idempotency = Some(idem("a"));
    match store.reserve(retry).await.expect("replay") {
        Idempotent::Replayed(body) => assert_eq!(body, render(&first)),
        Idempotent::Fresh(_) => panic!("a retry must replay"),
    }
    assert_eq!(
        usage(&store, env, &plans, "u1", now).await[0].reserved,
        2,
        "held once"
    );
    let mut other = reserve_cmd(env, &plans, "u1", 3, now);
    other.idempotency = Some(idem("b"));
    assert!(matches!(
        store.reserve(other).await,
        Err(StoreError::IdempotencyConflict)
    ));
}

pub async fn environments_are_isolated(store: Arc<dyn Store>) {
    let (test, live) = setup(&store).await;
    let plans = images(10);
    let now = t0();
    let a = reserve(&store, reserve_cmd(test, &plans, "u1", 4, now)).await;
    assert_eq!(usage(&store, live, &plans, "u1", now).await[0].reserved, 0);
    assert_eq!(
        store
            .get_reservation(live, &a.reservation_id.expect("id"), now)
            .await,
        Err(StoreError::NotFound)
    );
    store.put_plans(test, "{}".into(), now).await.expect("put");
    assert_eq!(store.get_plans(live).await.expect("get"), None);
    assert_eq!(
        store
            .put_plans(test, "{\"v\":2}".into(), now)
            .await
            .expect("put")
            .version,
        2
    );
    assert_eq!(store.plans_version(test).await.expect("version"), 2);
    assert_eq!(store.plans_version(live).await.expect("version"), 0);
}

pub async fn subscriptions_upsert_cancel_and_history(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let plans = images(10);
    let now = t0();
    let req = |plan: &str| UpsertRequest {
        plan_id: plan.into(),
        source: "api".into(),
        ..Default::default()
    };
    let u = Owner::User(user("u1"));
    let created = store
        .upsert_subscription(
            env,
            u.clone(),
            plans.clone(),
            req("free"),
            "sub_1".into(),
            now,
        )
        .await
        .expect("upsert");
    assert!(created.changed);
    let same = store
        .upsert_subscription(
            env,
            u.clone(),
            plans.clone(),
            req("free"),
            "sub_2".into(),
            now,
        )
        .await
        .expect("upsert");
    assert!(!same.changed);
    store
        .upsert_subscription(
            env,
            u.clone(),
            plans.clone(),
            req("pro"),
            "sub_3".into(),
            now,
        )
        .await
        .expect("upsert");
    let sub = store
        .get_subscription(env, &u)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!((sub.id.as_str(), sub.plan_id.as_str()), ("sub_1", "pro"));
    let (ended, entry) = store
        .cancel_subscription(
            env,
            u.clone(),
            plans.clone(),
            CancelAt::PeriodEnd,
            None,
            now,
        )
        .await
        .expect("cancel");
    assert_eq!(entry.kind, HistoryKind::CancelScheduled);
    assert_eq!(
        ended.ends_at,
        Some("2026-04-10T12:00:00Z".parse().expect("valid"))
    );
    let after = "2026-04-11T00:00:00Z".parse().expect("valid");
    assert_eq!(
        store
            .cancel_subscription(env, u.clone(), plans.clone(), CancelAt::Now, None, after)
            .await,
        Err(StoreError::AlreadyCanceled)
    );
    let kinds: Vec<_> = store
        .subscription_history(env, &u)
        .await
        .expect("history")
        .into_iter()
        .map(|h| h.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![
            HistoryKind::Created,
            HistoryKind::PlanChanged,
            HistoryKind::CancelScheduled
        ]
    );
    assert_eq!(
        store
            .get_subscription(env, &Owner::User(user("nobody")))
            .await
            .expect("get"),
        None
    );
}

pub async fn track_enforce_records_nothing_when_denied(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let plans = images(5);
    let now = t0();
    let track = |q: u64, enforce: bool, id: &str| TrackCommand {
        env,
        now,
        plans: plans.clone(),
        event_id: id.into(),
        user_id: user("u1"),
        event: EventName::parse("image.render").expect("valid"),
        quantity: Quantity::new(q).expect("valid"),
        metadata: Metadata::default(),
        occurred_at: now,
        cost_micros: None,
        prompt: None,
        response: None,
        enforce,
        record_denials: true,
        idempotency: None,
        ids: IdSeed(format!("t{id}_")),
    };
    let fresh = |r: StoreResult<Idempotent<TrackOutcome>>| match r.expect("track") {
        Idempotent::Fresh(o) => o,
        Idempotent::Replayed(_) => panic!("not a replay"),
    };
    let a = fresh(store.track(track(4, true, "evt_a")).await);
    assert!(a.recorded && a.allowed);
    let b = fresh(store.track(track(2, true, "evt_b")).await);
    assert!(!b.recorded && !b.allowed && b.event_id.is_none());
    assert_eq!(b.limits[0].used, 4);
    let c = fresh(store.track(track(3, false, "evt_c")).await);
    assert!(c.recorded);
    assert_eq!((c.overage, c.limits[0].used), (2, 7));
    assert_eq!(c.match_status, MatchStatus::Matched);
}

pub async fn calendar_windows_reset_at_the_boundary(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let tokyo = jiff::tz::TimeZone::get("Asia/Tokyo").expect("a known zone");
    let plans = doc(vec![limit(
        "daily",
        2,
        WindowSpec::Calendar {
            period: CalendarPeriod::Day,
            timezone: tokyo,
        },
        rule("image.*", &[]),
    )]);
    let before: Timestamp = "2026-03-10T14:59:00Z".parse().expect("valid");
    let a = reserve(&store, reserve_cmd(env, &plans, "u1", 2, before)).await;
    store
        .commit(commit_cmd(
            env,
            &plans,
            &a.reservation_id.expect("id"),
            None,
            before,
        ))
        .await
        .expect("commit");
    assert!(
        !reserve(&store, reserve_cmd(env, &plans, "u1", 1, before))
            .await
            .allowed
    );
    let midnight_tokyo: Timestamp = "2026-03-10T15:00:00Z".parse().expect("valid");
    let l = &usage(&store, env, &plans, "u1", midnight_tokyo).await[0];
    assert_eq!((l.used, l.window_start), (0, Some(midnight_tokyo)));
    assert!(
        reserve(&store, reserve_cmd(env, &plans, "u1", 1, midnight_tokyo))
            .await
            .allowed
    );
}

pub async fn plan_documents_keep_every_version_and_skip_a_repeat(store: Arc<dyn Store>) {
    let (test, live) = setup(&store).await;
    let now = t0();
    let put = |text: &str| {
        let store = store.clone();
        let text = text.to_string();
        async move { store.put_plans(test, text, now).await.expect("put") }
    };
    let made = |version| PutPlansOutcome {
        version,
        changed: true,
    };
    assert_eq!(put("{\"a\":1}").await, made(1));
    assert_eq!(
        put("{\"a\":1}").await,
        PutPlansOutcome {
            version: 1,
            changed: false
        },
        "the newest version's text again stores nothing"
    );
    assert_eq!(put("{\"b\":2}").await, made(2));
    // A repeat of an older version is a change: it is not the document in force.
    assert_eq!(put("{\"a\":1}").await, made(3));
    assert_eq!(store.plans_version(test).await.expect("version"), 3);

    let newest = store.get_plans(test).await.expect("get").expect("stored");
    assert_eq!((newest.version, newest.document.as_str()), (3, "{\"a\":1}"));
    assert_eq!(
        (newest.project_id.as_str(), newest.mode),
        ("prj_1", Mode::Test)
    );
    let before = |version| {
        let store = store.clone();
        async move {
            store
                .get_plans_before(test, version)
                .await
                .expect("get")
                .map(|p| (p.version, p.document))
        }
    };
    assert_eq!(before(3).await, Some((2, "{\"b\":2}".to_string())));
    assert_eq!(before(2).await, Some((1, "{\"a\":1}".to_string())));
    assert_eq!(before(1).await, None);
    assert_eq!(
        store.get_plans_before(live, 3).await.expect("get"),
        None,
        "another environment's versions are not its own"
    );
}

/// Concurrent first uses agree on one secret; each environment has its own, kept for good.
pub async fn a_token_secret_is_made_once_per_environment(store: Arc<dyn Store>) {
    const CALLS: usize = 16;
    let (test, live) = setup(&store).await;
    let calls = (0..CALLS).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .token_secret(test, format!("candidate_{i}"), t0())
                .await
        })
    });
    let mut seen = std::collections::BTreeSet::new();
    for call in calls {
        seen.insert(call.await.expect("task").expect("token secret"));
    }
    assert_eq!(
        seen.len(),
        1,
        "every first use answers one secret: {seen:?}"
    );
    let secret = seen.pop_first().expect("one");
    assert!(secret.starts_with("candidate_"), "{secret}");
    let again = store
        .token_secret(test, "later".into(), t0())
        .await
        .expect("read");
    assert_eq!(again, secret);
    let other = store
        .token_secret(live, "live_one".into(), t0())
        .await
        .expect("live");
    assert_eq!(other, "live_one");
}

pub async fn environments_are_found_by_project_and_mode(store: Arc<dyn Store>) {
    let (test, live) = setup(&store).await;
    let found = |mode| {
        let store = store.clone();
        async move { store.environment_of("prj_1", mode).await.expect("read") }
    };
    assert_eq!(found(Mode::Test).await, Some(test));
    assert_eq!(found(Mode::Live).await, Some(live));
    assert_eq!(
        store
            .environment_of("prj_none", Mode::Test)
            .await
            .expect("read"),
        None
    );
}

pub async fn concurrent_puts_of_one_plan_document_make_one_version(store: Arc<dyn Store>) {
    const PUTS: usize = 16;
    let (env, _) = setup(&store).await;
    let puts = (0..PUTS).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.put_plans(env, "{\"a\":1}".into(), t0()).await })
    });
    let mut changed = 0;
    for put in puts {
        let outcome = put.await.expect("task").expect("put");
        assert_eq!(outcome.version, 1, "every put answers the one version");
        changed += usize::from(outcome.changed);
    }
    assert_eq!(changed, 1, "exactly one put made the version");
    assert_eq!(store.plans_version(env).await.expect("version"), 1);
}
