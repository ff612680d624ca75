//! Billers (API.md §10): snapshots of biller subscriptions applied once and in order, events
//! that wait on a customer mapping, purchases granting their pack once, integrations and
//! settings kept as given, and the outbox of committed usage on its way to Stripe meters.

use super::credits::{at, credits, track_cmd};
use super::*;
use tollgate_core::biller::{
    Biller, BillerEvent, BillerFact, BillerIds, BillerPrice, BillerStatus, BillerTarget, OwnerHint,
    PastDuePolicy, Purchase, SubscriptionSnapshot,
};

/// Plans `free` (the default), `pro` (Stripe `price_pro`) and `team` (`price_team`); credit
/// pack `pack` (Stripe `price_pack`): 50 images.
fn biller_doc() -> Arc<PlanDocument> {
    let free = Plan {
        id: "free".into(),
        billing: BillingInterval {
            unit: IntervalUnit::Month,
            count: 1,
        },
        seats: None,
        limits: vec![
            limit("images", 100, WindowSpec::Lifetime, rule("image.*", &[])),
            limit("texts", 100, WindowSpec::Lifetime, rule("text.*", &[])),
        ],
    };
    let plans = ["pro", "team"].map(|id| Plan {
        id: id.into(),
        ..free.clone()
    });
    let mut doc = PlanDocument::new(
        Some("free".into()),
        None,
        UnmatchedEvents::Deny,
        [vec![free], plans.to_vec()].concat(),
    )
    .expect("a valid document");
    doc.credit_packs = vec![CreditPack {
        id: "pack".into(),
        priority: 0,
        expires_after_days: None,
        items: vec![CreditItem {
            id: "images".into(),
            unit: "image".into(),
            quantity: 50,
            rules: vec![rule("image.*", &[])],
        }],
    }];
    let target = |plan: &str| BillerTarget::Plan(plan.into());
    doc.biller_ids = BillerIds {
        stripe: vec![
            ("price_pro".into(), target("pro")),
            ("price_team".into(), target("team")),
            ("price_pack".into(), BillerTarget::Pack("pack".into())),
        ],
        polar: Vec::new(),
    };
    Arc::new(doc)
}

fn ts(s: &str) -> Timestamp {
    s.parse().expect("a valid timestamp")
}

fn stripe_event(id: &str, created: Timestamp, fact: BillerFact) -> BillerEvent {
    BillerEvent {
        biller: Biller::Stripe,
        event_id: id.into(),
        event_type: "customer.subscription.updated".into(),
        created,
        fact,
    }
}

/// An active snapshot of `sub` (customer `customer`) on one price for one period.
fn snapshot(
    sub: &str,
    customer: &str,
    price: &str,
    period: (Timestamp, Timestamp),
) -> SubscriptionSnapshot {
    SubscriptionSnapshot {
        subscription_id: sub.into(),
        customer_id: Some(customer.into()),
        owner: None,
        status: BillerStatus::Active,
        prices: vec![BillerPrice {
            id: price.into(),
            lookup_key: None,
            quantity: Some(1),
            period: Some(period),
        }],
        period: None,
        cancel_at_period_end: false,
        cancel_at: None,
        ended_at: None,
        seats: None,
    }
}

fn apply_cmd(env: EnvId, event: BillerEvent, now: Timestamp) -> BillerEventCommand {
    let n = super::credits::next();
    BillerEventCommand {
        env,
        now,
        plans: biller_doc(),
        past_due: PastDuePolicy::Keep,
        body: format!("{{\"id\":\"{}\"}}", event.event_id),
        event,
        replay: false,
        new_subscription_id: format!("sub_t{n}"),
        ids: IdSeed(format!("b{n}_")),
    }
}

async fn apply(store: &Arc<dyn Store>, cmd: BillerEventCommand) -> BillerEventOutcome {
    store.apply_biller_event(cmd).await.expect("apply")
}

async fn subscription(store: &Arc<dyn Store>, env: EnvId, u: &str) -> Subscription {
    store
        .get_subscription(env, &Owner::User(user(u)))
        .await
        .expect("get")
        .expect("a subscription")
}

async fn history(store: &Arc<dyn Store>, env: EnvId, u: &str) -> Vec<HistoryKind> {
    store
        .subscription_history(env, &Owner::User(user(u)))
        .await
        .expect("history")
        .into_iter()
        .map(|h| h.kind)
        .collect()
}

async fn stored(store: &Arc<dyn Store>, env: EnvId, event_id: &str) -> StoredBillerEvent {
    store
        .biller_event(env, Biller::Stripe, event_id)
        .await
        .expect("read")
        .expect("a stored event")
}

pub async fn biller_snapshots_apply_once_and_in_order(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let now = t0();
    let (p0, p1, p2) = (
        ts("2026-03-01T00:00:00Z"),
        ts("2026-04-01T00:00:00Z"),
        ts("2026-05-01T00:00:00Z"),
    );
    let subject = Owner::User(user("u1")).subject();

    // A user hint: the subscription is created on the mapped plan, the customer is learned.
    let mut first = snapshot("sub_1", "cus_1", "price_pro", (p0, p1));
    first.owner = Some(OwnerHint::User("u1".into()));
    let created = at(now, -10);
    let evt_1 = stripe_event("evt_1", created, BillerFact::Subscription(first));
    let o = apply(&store, apply_cmd(env, evt_1.clone(), now)).await;
    assert_eq!((o.status, o.duplicate), (BillerEventStatus::Applied, false));
    let sub = subscription(&store, env, "u1").await;
    assert_eq!(
        (sub.plan_id.as_str(), sub.cycle_start, sub.ends_at),
        ("pro", p0, None)
    );
    assert_eq!(
        store
            .biller_customer_of(env, Biller::Stripe, &subject)
            .await
            .expect("mapping"),
        Some("cus_1".to_string())
    );
    let row = stored(&store, env, "evt_1").await;
    assert_eq!(
        (
            row.status,
            row.deliveries,
            row.received_at,
            row.customer_id.as_deref()
        ),
        (BillerEventStatus::Applied, 1, now, Some("cus_1"))
    );

    // The same event again: answered as a duplicate, nothing changes but the count.
    let again = apply(&store, apply_cmd(env, evt_1, at(now, 5))).await;
    assert_eq!(
        (again.status, again.duplicate),
        (BillerEventStatus::Applied, true)
    );
    assert_eq!(subscription(&store, env, "u1").await, sub);
    let row = stored(&store, env, "evt_1").await;
    assert_eq!((row.deliveries, row.received_at), (2, now));

    // An older snapshot arriving late is stale.
    let older = snapshot("sub_1", "cus_1", "price_team", (p0, p1));
    let evt_0 = stripe_event("evt_0", at(created, -10), BillerFact::Subscription(older));
    let o = apply(&store, apply_cmd(env, evt_0, at(now, 6))).await;
    assert_eq!(o.status, BillerEventStatus::Stale);
    assert_eq!(subscription(&store, env, "u1").await.plan_id, "pro");

    // A later period start is a renewal (the customer mapping names the user).
    let renewed_at = at(p1, 10);
    let renewal = snapshot("sub_1", "cus_1", "price_pro", (p1, p2));
    let evt_2 = stripe_event("evt_2", at(p1, 1), BillerFact::Subscription(renewal));
    let o = apply(&store, apply_cmd(env, evt_2, renewed_at)).await;
    assert_eq!(o.status, BillerEventStatus::Applied);
    let sub = subscription(&store, env, "u1").await;
    assert_eq!((sub.plan_id.as_str(), sub.cycle_start), ("pro", p1));
    assert_eq!(
        history(&store, env, "u1").await,
        vec![HistoryKind::Created, HistoryKind::Renewed]
    );

    // Another price in the same period: a plan change that keeps the cycle start.
    let change = snapshot("sub_1", "cus_1", "price_team", (p1, p2));
    let evt_3 = stripe_event("evt_3", at(p1, 2), BillerFact::Subscription(change.clone()));
    apply(&store, apply_cmd(env, evt_3, at(renewed_at, 1))).await;
    let sub = subscription(&store, env, "u1").await;
    assert_eq!((sub.plan_id.as_str(), sub.cycle_start), ("team", p1));

    // Canceled at the period end: it ends then.
    let mut cancel = change.clone();
    cancel.cancel_at_period_end = true;
    let evt_4 = stripe_event("evt_4", at(p1, 3), BillerFact::Subscription(cancel));
    apply(&store, apply_cmd(env, evt_4, at(renewed_at, 2))).await;
    assert_eq!(subscription(&store, env, "u1").await.ends_at, Some(p2));

    // Ended: the subscription ends now and the default plan applies.
    let ended_at = at(renewed_at, 3);
    let mut ended = change.clone();
    ended.status = BillerStatus::Ended;
    ended.ended_at = Some(ended_at);
    let evt_5 = stripe_event("evt_5", at(p1, 4), BillerFact::Subscription(ended));
    let o = apply(&store, apply_cmd(env, evt_5, ended_at)).await;
    assert_eq!(o.status, BillerEventStatus::Applied);
    assert_eq!(
        subscription(&store, env, "u1").await.ends_at,
        Some(ended_at)
    );
    let after = at(ended_at, 1);
    let usage = store
        .usage(UsageQuery {
            env,
            now: after,
            plans: biller_doc(),
            user_id: user("u1"),
            event: None,
        })
        .await
        .expect("usage");
    assert_eq!(usage.plan_id.as_deref(), Some("free"));
    assert_eq!(
        history(&store, env, "u1").await,
        vec![
            HistoryKind::Created,
            HistoryKind::Renewed,
            HistoryKind::PlanChanged,
            HistoryKind::CancelScheduled,
            HistoryKind::Canceled,
        ]
    );

    // Nothing brings an ended subscription back, not even a later active snapshot.
    let evt_6 = stripe_event("evt_6", at(p1, 5), BillerFact::Subscription(change));
    let o = apply(&store, apply_cmd(env, evt_6, after)).await;
    assert_eq!(o.status, BillerEventStatus::Stale);
    assert_eq!(
        subscription(&store, env, "u1").await.ends_at,
        Some(ended_at)
    );
}

pub async fn unresolved_biller_events_apply_once_the_customer_is_mapped(store: Arc<dyn Store>) {
    let (env, live) = setup(&store).await;
    let now = t0();
    let period = (ts("2026-03-01T00:00:00Z"), ts("2026-04-01T00:00:00Z"));
    let snap = snapshot("sub_9", "cus_9", "price_pro", period);
    let event = stripe_event("evt_u1", at(now, -1), BillerFact::Subscription(snap));
    let o = apply(&store, apply_cmd(env, event.clone(), now)).await;
    assert_eq!(o.status, BillerEventStatus::Unresolved);
    assert!(o.note.contains("cus_9"), "the note names the customer");
    assert_eq!(
        store
            .get_subscription(env, &Owner::User(user("u9")))
            .await
            .expect("get"),
        None
    );
    let waiting = |status: BillerEventStatus| BillerEventsQuery {
        env,
        biller: Biller::Stripe,
        status: Some(status),
        customer_id: Some("cus_9".into()),
        limit: 10,
        before: None,
    };
    let ids = |events: Vec<StoredBillerEvent>| -> Vec<String> {
        events.into_iter().map(|e| e.event_id).collect()
    };
    assert_eq!(
        ids(store
            .biller_events(waiting(BillerEventStatus::Unresolved))
            .await
            .expect("list")),
        vec!["evt_u1".to_string()]
    );

    // Mapped, then replayed: applied, received once more, still dated the first time.
    store
        .put_biller_customer(
            env,
            Biller::Stripe,
            "cus_9".into(),
            Owner::User(user("u9")),
            at(now, 1),
        )
        .await
        .expect("map");
    let mut replay = apply_cmd(env, event, at(now, 2));
    replay.replay = true;
    let o = apply(&store, replay).await;
    assert_eq!((o.status, o.duplicate), (BillerEventStatus::Applied, false));
    assert_eq!(subscription(&store, env, "u9").await.plan_id, "pro");
    let row = stored(&store, env, "evt_u1").await;
    assert_eq!(
        (row.status, row.deliveries, row.received_at),
        (BillerEventStatus::Applied, 2, now)
    );
    assert!(store
        .biller_events(waiting(BillerEventStatus::Unresolved))
        .await
        .expect("list")
        .is_empty());

    // Newest first, by page; purged by age; other environments see none of it.
    let ignored = BillerFact::Ignored {
        note: "not used".into(),
    };
    let later = at(now, 3600);
    apply(
        &store,
        apply_cmd(env, stripe_event("evt_u2", later, ignored), later),
    )
    .await;
    let page = |before: Option<(Timestamp, String)>| BillerEventsQuery {
        env,
        biller: Biller::Stripe,
        status: None,
        customer_id: None,
        limit: 10,
        before,
    };
    assert_eq!(
        ids(store.biller_events(page(None)).await.expect("list")),
        vec!["evt_u2".to_string(), "evt_u1".to_string()]
    );
    assert_eq!(
        ids(store
            .biller_events(page(Some((later, "evt_u2".into()))))
            .await
            .expect("list")),
        vec!["evt_u1".to_string()]
    );
    let mut other = page(None);
    other.env = live;
    assert!(store.biller_events(other).await.expect("list").is_empty());
    assert_eq!(
        store.purge_biller_events(at(now, 1)).await.expect("purge"),
        1
    );
    assert_eq!(
        ids(store.biller_events(page(None)).await.expect("list")),
        vec!["evt_u2".to_string()]
    );
}

pub async fn a_biller_purchase_grants_its_pack_once(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let now = t0();
    store
        .put_biller_customer(
            env,
            Biller::Stripe,
            "cus_p".into(),
            Owner::User(user("up")),
            now,
        )
        .await
        .expect("map");
    let purchase = |prices: &[&str]| {
        BillerFact::Purchase(Purchase {
            payment_ref: "pi_1".into(),
            customer_id: Some("cus_p".into()),
            owner: None,
            pack_id: None,
            price_ids: prices.iter().map(|p| p.to_string()).collect(),
        })
    };
    let o = apply(
        &store,
        apply_cmd(
            env,
            stripe_event("evt_p1", now, purchase(&["price_pack"])),
            now,
        ),
    )
    .await;
    assert_eq!(o.status, BillerEventStatus::Applied);
    let o = apply(
        &store,
        apply_cmd(
            env,
            stripe_event("evt_p2", at(now, 1), purchase(&["price_pack"])),
            at(now, 1),
        ),
    )
    .await;
    assert_eq!(
        (o.status, o.duplicate),
        (BillerEventStatus::Ignored, false),
        "another event of the same payment grants nothing again"
    );
    let o = apply(
        &store,
        apply_cmd(
            env,
            stripe_event("evt_p3", at(now, 2), purchase(&["price_other"])),
            at(now, 2),
        ),
    )
    .await;
    assert_eq!(o.status, BillerEventStatus::Ignored);
    let grants = credits(&store, env, Owner::User(user("up")), at(now, 3))
        .await
        .grants;
    let summary: Vec<_> = grants
        .iter()
        .map(|g| {
            (
                g.row.pack_id.as_deref(),
                g.row.quantity,
                g.row.external_ref.as_deref(),
                g.balance.remaining,
            )
        })
        .collect();
    assert_eq!(summary, vec![(Some("pack"), 50, Some("pi_1"), 50)]);
}

fn outbox(env: EnvId, status: Option<MeterStatus>) -> MeterEventsQuery {
    MeterEventsQuery {
        env,
        status,
        limit: 10,
        before: None,
    }
}

async fn claim(store: &Arc<dyn Store>, real_now: Timestamp) -> Vec<(String, u32, i64)> {
    let mut rows: Vec<_> = store
        .claim_meter_events(real_now, at(real_now, 30), 10)
        .await
        .expect("claim")
        .into_iter()
        .map(|(row, offset)| (row.event_id, row.attempts, offset))
        .collect();
    rows.sort();
    rows
}

pub async fn committed_usage_is_queued_for_its_stripe_meter(store: Arc<dyn Store>) {
    let (env, live) = setup(&store).await;
    let now = t0();
    let plans = biller_doc();
    let forwarding = vec![("image.render".to_string(), "images".to_string())];
    store
        .put_integration(
            env,
            Biller::Stripe,
            "{}".into(),
            forwarding,
            "we_m".into(),
            now,
        )
        .await
        .expect("integration");

    // A committed reservation and a track of a forwarded event: one row each.
    let cmd = reserve_cmd(env, &plans, "u1", 3, now);
    let committed = cmd.event_id.clone();
    let r = reserve(&store, cmd).await;
    let id = r.reservation_id.expect("an id");
    for _ in 0..2 {
        store
            .commit(commit_cmd(env, &plans, &id, Some(2), now))
            .await
            .expect("commit");
    }
    let tracked = track_cmd(env, &plans, "u1", 4, now);
    let tracked_id = tracked.event_id.clone();
    store.track(tracked).await.expect("track");
    let mut text = track_cmd(env, &plans, "u1", 5, now);
    text.event = EventName::parse("text.generate").expect("valid");
    store.track(text).await.expect("track");
    let mut rows: Vec<_> = store
        .meter_events(outbox(env, None))
        .await
        .expect("list")
        .into_iter()
        .map(|m| {
            (
                m.event_id,
                m.meter_event_name,
                m.user_id,
                m.value,
                m.status.as_str(),
                m.attempts,
            )
        })
        .collect();
    rows.sort();
    let pending = |id: &str, value| {
        (
            id.to_string(),
            "images".to_string(),
            "u1".to_string(),
            value,
            "pending",
            0,
        )
    };
    let mut expected = vec![pending(&committed, 2), pending(&tracked_id, 4)];
    expected.sort();
    assert_eq!(rows, expected);
    assert!(store
        .meter_events(outbox(live, None))
        .await
        .expect("list")
        .is_empty());

    // Claimed once: leased rows are not claimed again.
    let real = at(now, 1);
    let mut both = vec![(committed.clone(), 0, 0), (tracked_id.clone(), 0, 0)];
    both.sort();
    assert_eq!(claim(&store, real).await, both);
    assert_eq!(claim(&store, real).await, vec![]);

    // A retry is due at its time, not before; a delivered row is done.
    let retry = MeterAttempt::Retry {
        status: Some(429),
        error: "rate limited".into(),
        next_attempt_at: at(now, 120),
    };
    store
        .finish_meter_event(env, &committed, retry, real)
        .await
        .expect("finish");
    let delivered = MeterAttempt::Delivered { status: 200 };
    store
        .finish_meter_event(env, &tracked_id, delivered.clone(), real)
        .await
        .expect("finish");
    assert_eq!(claim(&store, at(now, 61)).await, vec![]);
    assert_eq!(
        claim(&store, at(now, 121)).await,
        vec![(committed.clone(), 1, 0)]
    );
    let retried = store
        .meter_events(outbox(env, Some(MeterStatus::Pending)))
        .await
        .expect("list");
    assert_eq!(
        retried
            .iter()
            .map(|m| (m.last_status, m.last_error.as_deref()))
            .collect::<Vec<_>>(),
        vec![(Some(429), Some("rate limited"))]
    );
    store
        .finish_meter_event(env, &committed, delivered, at(now, 122))
        .await
        .expect("finish");
    let done = store
        .meter_events(outbox(env, Some(MeterStatus::Delivered)))
        .await
        .expect("list");
    let mut done: Vec<_> = done
        .into_iter()
        .map(|m| (m.event_id, m.attempts, m.last_status, m.last_error))
        .collect();
    done.sort();
    let mut expected = vec![
        (committed.clone(), 2, Some(200), None),
        (tracked_id.clone(), 1, Some(200), None),
    ];
    expected.sort();
    assert_eq!(done, expected);

    // A failed row sent again is pending and due at the environment's time given.
    let failed = MeterAttempt::Failed {
        status: Some(400),
        error: "no such customer".into(),
    };
    store
        .finish_meter_event(env, &committed, failed, at(now, 123))
        .await
        .expect("finish");
    let failed_rows = store
        .meter_events(outbox(env, Some(MeterStatus::Failed)))
        .await
        .expect("list");
    assert_eq!(failed_rows.len(), 1);
    assert_eq!(failed_rows[0].attempts, 3);
    store
        .retry_meter_event(env, &committed, at(now, 3600))
        .await
        .expect("retry");
    assert_eq!(
        store.retry_meter_event(env, "evt_unknown", now).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(claim(&store, at(now, 200)).await, vec![]);
    store.advance_clock(env, 3600).await.expect("advance");
    assert_eq!(
        claim(&store, at(now, 200)).await,
        vec![(committed, 3, 3600)],
        "due by the environment's own clock"
    );
}

pub async fn integrations_and_settings_are_kept(store: Arc<dyn Store>) {
    let (env, live) = setup(&store).await;
    let now = t0();
    let put = |config: &str, endpoint: &str, when: Timestamp| {
        let store = store.clone();
        let (config, endpoint) = (config.to_string(), endpoint.to_string());
        async move {
            store
                .put_integration(env, Biller::Stripe, config, Vec::new(), endpoint, when)
                .await
                .expect("integration")
        }
    };
    let first = put("{\"a\":1}", "we_first", now).await;
    assert_eq!(first.endpoint_id, "we_first");
    let second = put("{\"b\":2}", "we_second", at(now, 1)).await;
    let expected = Integration {
        env,
        biller: Biller::Stripe,
        endpoint_id: "we_first".into(),
        config: "{\"b\":2}".into(),
        updated_at: at(now, 1),
    };
    assert_eq!(second, expected, "the endpoint made first stays");
    assert_eq!(
        store.integration(env, Biller::Stripe).await.expect("read"),
        Some(expected.clone())
    );
    assert_eq!(
        store.integration(live, Biller::Stripe).await.expect("read"),
        None
    );
    store.advance_clock(env, 60).await.expect("advance");
    assert_eq!(
        store
            .endpoint(Biller::Stripe, "we_first")
            .await
            .expect("read"),
        Some(EndpointTarget {
            clock_offset_seconds: 60,
            integration: expected,
        })
    );
    assert_eq!(
        store
            .endpoint(Biller::Stripe, "we_second")
            .await
            .expect("read"),
        None
    );
    assert_eq!(
        store
            .endpoint(Biller::Polar, "we_first")
            .await
            .expect("read"),
        None
    );

    // A failure is kept as given, for inspection and replay.
    let failure = StoredBillerEvent {
        biller: Biller::Stripe,
        event_id: "evt_f".into(),
        event_type: "invoice.paid".into(),
        received_at: now,
        customer_id: None,
        status: BillerEventStatus::Failed,
        note: "storage failed".into(),
        body: "{}".into(),
        deliveries: 1,
    };
    store
        .record_biller_failure(env, failure.clone())
        .await
        .expect("record");
    assert_eq!(stored(&store, env, "evt_f").await, failure);

    // Settings: one document per environment, replaced whole.
    assert_eq!(store.settings(env).await.expect("read"), None);
    store
        .put_settings(env, "{\"pastDue\":\"keep\"}".into(), now)
        .await
        .expect("put");
    store
        .put_settings(env, "{\"pastDue\":\"end\"}".into(), at(now, 5))
        .await
        .expect("put");
    assert_eq!(
        store.settings(env).await.expect("read"),
        Some(StoredSettings {
            document: "{\"pastDue\":\"end\"}".into(),
            updated_at: at(now, 5),
        })
    );
    assert_eq!(store.settings(live).await.expect("read"), None);
}

pub async fn a_failed_biller_event_is_applied_when_retried(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let now = t0();
    let period = (ts("2026-03-01T00:00:00Z"), ts("2026-04-01T00:00:00Z"));
    let mut snap = snapshot("sub_f", "cus_f", "price_pro", period);
    snap.owner = Some(OwnerHint::User("uf".into()));
    let event = stripe_event("evt_f", at(now, -1), BillerFact::Subscription(snap));
    let failure = StoredBillerEvent {
        biller: Biller::Stripe,
        event_id: "evt_f".into(),
        event_type: event.event_type.clone(),
        received_at: now,
        customer_id: Some("cus_f".into()),
        status: BillerEventStatus::Failed,
        note: "storage failed".into(),
        body: "{}".into(),
        deliveries: 1,
    };
    store
        .record_biller_failure(env, failure.clone())
        .await
        .expect("record");
    assert_eq!(stored(&store, env, "evt_f").await, failure);
    let o = apply(&store, apply_cmd(env, event.clone(), at(now, 60))).await;
    assert_eq!((o.status, o.duplicate), (BillerEventStatus::Applied, false));
    assert_eq!(subscription(&store, env, "uf").await.plan_id, "pro");
    let row = stored(&store, env, "evt_f").await;
    assert_eq!(
        (row.status, row.deliveries, row.received_at),
        (BillerEventStatus::Applied, 2, now)
    );
    let again = apply(&store, apply_cmd(env, event, at(now, 61))).await;
    assert!(again.duplicate, "once applied, a delivery is a duplicate");
}

pub async fn concurrent_snapshots_of_one_subscription_end_on_the_newest(store: Arc<dyn Store>) {
    const EVENTS: i64 = 12;
    let (env, _) = setup(&store).await;
    let now = t0();
    let period = (ts("2026-03-01T00:00:00Z"), ts("2026-04-01T00:00:00Z"));
    // Delivered newest first and all at once: whichever order they run in, the newest wins.
    let tasks: Vec<_> = (0..EVENTS)
        .rev()
        .map(|i| {
            let price = if i % 2 == 0 {
                "price_pro"
            } else {
                "price_team"
            };
            let mut snap = snapshot("sub_c", "cus_c", price, period);
            snap.owner = Some(OwnerHint::User("uc".into()));
            let event = stripe_event(
                &format!("evt_c{i}"),
                at(now, i - EVENTS),
                BillerFact::Subscription(snap),
            );
            let (store, cmd) = (store.clone(), apply_cmd(env, event, now));
            tokio::spawn(async move { store.apply_biller_event(cmd).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("apply");
    }
    let newest = if (EVENTS - 1) % 2 == 0 { "pro" } else { "team" };
    assert_eq!(subscription(&store, env, "uc").await.plan_id, newest);
    let last = stored(&store, env, &format!("evt_c{}", EVENTS - 1)).await;
    assert_eq!(last.status, BillerEventStatus::Applied);
}

pub async fn concurrent_meter_claims_take_each_row_once(store: Arc<dyn Store>) {
    const ROWS: u64 = 24;
    let (env, _) = setup(&store).await;
    let now = t0();
    let plans = biller_doc();
    let forwarding = vec![("image.render".to_string(), "images".to_string())];
    store
        .put_integration(
            env,
            Biller::Stripe,
            "{}".into(),
            forwarding,
            "we_c".into(),
            now,
        )
        .await
        .expect("integration");
    for _ in 0..ROWS {
        store
            .track(track_cmd(env, &plans, "u1", 1, now))
            .await
            .expect("track");
    }
    let real = at(now, 1);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .claim_meter_events(real, at(real, 30), 5)
                    .await
                    .expect("claim")
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(
            t.await
                .expect("task")
                .into_iter()
                .map(|(row, _)| row.event_id),
        );
    }
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "no row was claimed twice");
    assert_eq!(ids.len() as u64, ROWS, "every due row was claimed");
    assert_eq!(claim(&store, real).await, vec![]);
}
