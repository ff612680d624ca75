//! Per-seat pricing: an account subscription's own `seats` overrides its plan's seat cap while
//! the subscription is in force. Raising lets more members in, lowering removes nobody but
//! refuses new members until there is room, and clearing falls back to the plan's cap.

use super::*;
use tollgate_core::subscription::Subscription;

/// `free` (the default plan) caps nothing; `team` caps an account at 2 seats.
fn seat_plans() -> Arc<PlanDocument> {
    let free = Plan {
        id: "free".into(),
        billing: BillingInterval {
            unit: IntervalUnit::Month,
            count: 1,
        },
        seats: None,
        limits: Vec::new(),
    };
    let team = Plan {
        id: "team".into(),
        seats: Some(2),
        ..free.clone()
    };
    Arc::new(
        PlanDocument::new(
            Some("free".into()),
            None,
            UnmatchedEvents::Deny,
            vec![free, team],
        )
        .expect("a valid document"),
    )
}

fn acme() -> AccountId {
    AccountId::parse("acme").expect("a valid account id")
}

fn team_with(seats: Option<Option<u32>>) -> UpsertRequest {
    UpsertRequest {
        plan_id: "team".into(),
        seats,
        source: "api".into(),
        ..Default::default()
    }
}

struct Seats {
    store: Arc<dyn Store>,
    env: EnvId,
    plans: Arc<PlanDocument>,
    now: Timestamp,
}

impl Seats {
    async fn subscribe(&self, seats: Option<Option<u32>>) -> UpsertOutcome {
        self.store
            .upsert_subscription(
                self.env,
                Owner::Account(acme()),
                self.plans.clone(),
                team_with(seats),
                "sub_acme".into(),
                self.now,
            )
            .await
            .expect("upsert the account's subscription")
    }

    async fn add(&self, user_id: &str) -> StoreResult<Timestamp> {
        self.store
            .add_member(
                self.env,
                acme(),
                user(user_id),
                self.plans.clone(),
                self.now,
            )
            .await
    }

    async fn remove(&self, user_id: &str) {
        self.store
            .remove_member(self.env, acme(), user(user_id))
            .await
            .expect("remove a member");
    }

    /// (members, seats_max) as the account view answers them.
    async fn view(&self) -> (Vec<String>, Option<u32>) {
        let v = self
            .store
            .account(self.env, acme(), self.plans.clone(), self.now)
            .await
            .expect("read the account");
        (
            v.members.into_iter().map(|m| m.user_id).collect(),
            v.seats_max,
        )
    }

    async fn stored(&self) -> Subscription {
        self.store
            .get_subscription(self.env, &Owner::Account(acme()))
            .await
            .expect("read the subscription")
            .expect("the account has a subscription")
    }
}

#[track_caller]
fn assert_full(result: StoreResult<Timestamp>, max: u32) {
    match result {
        Err(StoreError::SeatLimitReached { max: got }) => assert_eq!(got, max),
        other => panic!("expected SeatLimitReached {{ max: {max} }}, got {other:?}"),
    }
}

pub async fn subscription_seats_override_the_plans_cap(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let s = Seats {
        store,
        env,
        plans: seat_plans(),
        now: t0(),
    };

    // Raised: team caps 2, the subscription's 3 lets a third member in, not a fourth.
    let created = s.subscribe(Some(Some(3))).await;
    assert!(created.changed);
    assert_eq!(created.subscription.seats, Some(3));
    assert_eq!(s.stored().await.seats, Some(3), "seats survive storage");
    for u in ["u1", "u2", "u3"] {
        s.add(u).await.expect("a free seat");
    }
    assert_full(s.add("u4").await, 3);
    assert_eq!(
        s.view().await,
        (vec!["u1".into(), "u2".into(), "u3".into()], Some(3))
    );

    // Naming no seats keeps them.
    let kept = s.subscribe(None).await;
    assert!(!kept.changed);
    assert_eq!(s.stored().await.seats, Some(3));

    // Lowered below the members: a change with no history row; nobody leaves; no one joins.
    let lowered = s.subscribe(Some(Some(1))).await;
    assert!(lowered.changed);
    assert!(lowered.history.is_empty(), "{:?}", lowered.history);
    assert_eq!(s.stored().await.seats, Some(1));
    assert_eq!(
        s.view().await,
        (vec!["u1".into(), "u2".into(), "u3".into()], Some(1))
    );
    assert_full(s.add("u4").await, 1);
    // Adding an existing member again is still a no-op, not a refusal.
    s.add("u1")
        .await
        .expect("re-adding a member changes nothing");
    s.remove("u2").await;
    s.remove("u3").await;
    assert_full(s.add("u4").await, 1);
    assert_eq!(s.view().await, (vec!["u1".into()], Some(1)));

    // Cleared: the plan's 2 again.
    let cleared = s.subscribe(Some(None)).await;
    assert!(cleared.changed);
    assert_eq!(s.stored().await.seats, None);
    assert_eq!(s.view().await.1, Some(2));
    s.add("u4").await.expect("the plan's second seat");
    assert_full(s.add("u5").await, 2);

    // Only the subscription's own history rows: created, nothing for the seat changes.
    let history = s
        .store
        .subscription_history(env, &Owner::Account(acme()))
        .await
        .expect("history");
    let kinds: Vec<_> = history.iter().map(|h| h.kind).collect();
    assert_eq!(kinds, vec![HistoryKind::Created]);

    // Ended: the default plan (no cap) applies, not the subscription's seats.
    s.subscribe(Some(Some(2))).await;
    s.store
        .cancel_subscription(
            env,
            Owner::Account(acme()),
            s.plans.clone(),
            CancelAt::Now,
            None,
            s.now,
        )
        .await
        .expect("cancel");
    assert_eq!(
        s.stored().await.seats,
        Some(2),
        "the ended row keeps its seats"
    );
    assert_eq!(s.view().await.1, None);
    s.add("u5").await.expect("no cap on the default plan");
}

pub async fn seats_are_refused_on_a_users_subscription(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let plans = seat_plans();
    let owner = Owner::User(user("u1"));
    let refused = store
        .upsert_subscription(
            env,
            owner.clone(),
            plans.clone(),
            team_with(Some(Some(3))),
            "sub_u1".into(),
            t0(),
        )
        .await;
    match refused {
        Err(StoreError::Invalid { field, .. }) => assert_eq!(field, "seats"),
        other => panic!("expected Invalid {{ field: seats }}, got {other:?}"),
    }
    assert_eq!(
        store.get_subscription(env, &owner).await.expect("read"),
        None,
        "nothing was written"
    );
    // An account's cap of 0 is refused as well.
    let zero = store
        .upsert_subscription(
            env,
            Owner::Account(acme()),
            plans,
            team_with(Some(Some(0))),
            "sub_acme".into(),
            t0(),
        )
        .await;
    assert!(
        matches!(&zero, Err(StoreError::Invalid { field, .. }) if field == "seats"),
        "{zero:?}"
    );
}
