//! The carry rule under pending reservations (issue 10, item 4), as a table: every kind of
//! subscription write that moves a subject to new windows, crossed with every way a pending
//! reservation can end. The window entered carries the usage, never the holds: a hold moves
//! with the subject, its release or expiry gives everything back, and its commit charges
//! exactly the committed quantity, once.

use super::*;

/// Both plans share a `subscription` limit and a `calendar` day limit: a subscription write
/// moves the first when the subscription's window moves, the second when the subscriber's
/// time zone changes.
fn shared_limits() -> Arc<PlanDocument> {
    doc(vec![
        limit("m", 10, WindowSpec::Subscription, rule("image.*", &[])),
        limit(
            "d",
            10,
            WindowSpec::Calendar {
                period: CalendarPeriod::Day,
                timezone: jiff::tz::TimeZone::UTC,
            },
            rule("image.*", &[]),
        ),
    ])
}

/// A subscription write that moves the subject to a new window of at least one limit, and
/// what comes before it.
#[derive(Debug, Clone, Copy)]
enum Write {
    /// No subscription (the default plan's calendar month) → pro anchored now.
    Start,
    /// free → pro on the same anchor: no window moves, holds stay where they are.
    PlanChange,
    /// pro anchored five days ago → cancel now (the default plan's calendar month).
    CancelNow,
    /// pro that ended two days ago → pro again, anchored now.
    Restart,
    /// pro anchored five days ago → anchored twenty days ago.
    AnchorMove,
    /// pro in UTC → pro in Asia/Tokyo (the day limit's window moves).
    TimeZone,
}

/// How the pending reservation ends after the write.
#[derive(Debug, Clone, Copy)]
enum End {
    Release,
    Expire,
    Commit(u64),
}

fn upsert(plan: &str, cycle_start: Option<Timestamp>, tz: Option<&str>) -> UpsertRequest {
    UpsertRequest {
        plan_id: plan.into(),
        cycle_start,
        ends_at: None,
        custom_limits: None,
        status: None,
        timezone: tz.map(|z| Some(jiff::tz::TimeZone::get(z).expect("a known zone"))),
        seats: None,
        source: "api".into(),
    }
}

async fn subscribe(store: &Arc<dyn Store>, env: EnvId, u: &str, req: UpsertRequest, at: Timestamp) {
    store
        .upsert_subscription(
            env,
            Owner::User(user(u)),
            shared_limits(),
            req,
            format!("sub_{u}"),
            at,
        )
        .await
        .expect("upsert");
}

async fn cancel_now(store: &Arc<dyn Store>, env: EnvId, u: &str, at: Timestamp) {
    let owner = Owner::User(user(u));
    match store
        .cancel_subscription(env, owner, shared_limits(), CancelAt::Now, None, at)
        .await
    {
        Ok(_) | Err(StoreError::AlreadyCanceled) | Err(StoreError::NotFound) => {}
        Err(e) => panic!("cancel: {e}"),
    }
}

/// Sets the user up for `write`, which then runs at `now`.
async fn before(store: &Arc<dyn Store>, env: EnvId, u: &str, write: Write, now: Timestamp) {
    let days = |n: i64| now - SignedDuration::from_hours(24 * n);
    match write {
        Write::Start => {}
        Write::PlanChange => {
            subscribe(store, env, u, upsert("free", Some(days(5)), None), days(5)).await
        }
        Write::CancelNow | Write::AnchorMove | Write::TimeZone => {
            subscribe(store, env, u, upsert("pro", Some(days(5)), None), days(5)).await
        }
        Write::Restart => {
            subscribe(store, env, u, upsert("pro", Some(days(40)), None), days(40)).await;
            cancel_now(store, env, u, days(2)).await;
        }
    }
}

async fn apply(store: &Arc<dyn Store>, env: EnvId, u: &str, write: Write, now: Timestamp) {
    let days = |n: i64| now - SignedDuration::from_hours(24 * n);
    match write {
        Write::Start | Write::Restart => {
            subscribe(store, env, u, upsert("pro", Some(now), None), now).await
        }
        Write::PlanChange => subscribe(store, env, u, upsert("pro", None, None), now).await,
        Write::CancelNow => cancel_now(store, env, u, now).await,
        Write::AnchorMove => {
            subscribe(store, env, u, upsert("pro", Some(days(20)), None), now).await
        }
        Write::TimeZone => {
            subscribe(store, env, u, upsert("pro", None, Some("Asia/Tokyo")), now).await
        }
    }
}

/// `used` and `reserved` of both limits, which move together in this table.
async fn figures(store: &Arc<dyn Store>, env: EnvId, u: &str, now: Timestamp) -> Vec<(u64, u64)> {
    usage(store, env, &shared_limits(), u, now)
        .await
        .iter()
        .map(|l| (l.used, l.reserved))
        .collect()
}

pub async fn subscription_writes_carry_usage_and_move_holds(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let plans = shared_limits();
    let now = t0();
    let writes = [
        Write::Start,
        Write::PlanChange,
        Write::CancelNow,
        Write::Restart,
        Write::AnchorMove,
        Write::TimeZone,
    ];
    let ends = [
        End::Release,
        End::Expire,
        End::Commit(4),
        End::Commit(6),
        End::Commit(9),
    ];
    for write in writes {
        for end in ends {
            let u = format!("u_{write:?}_{end:?}").replace(['(', ')'], "");
            let case = format!("{write:?} then {end:?}");
            before(&store, env, &u, write, now).await;
            let track = TrackCommand {
                env,
                now,
                plans: plans.clone(),
                event_id: format!("evt_track_{u}"),
                user_id: user(&u),
                event: EventName::parse("image.render").expect("valid"),
                quantity: Quantity::new(2).expect("valid"),
                metadata: Metadata::default(),
                occurred_at: now,
                cost_micros: None,
                prompt: None,
                response: None,
                enforce: false,
                record_denials: true,
                idempotency: None,
                ids: IdSeed(format!("t{u}_")),
            };
            store.track(track).await.expect("track");
            let held = reserve(&store, reserve_cmd(env, &plans, &u, 6, now)).await;
            let id = held
                .reservation_id
                .expect("a reserve of 6 of 10 is allowed");
            assert_eq!(
                figures(&store, env, &u, now).await,
                [(2, 6), (2, 6)],
                "{case}: before"
            );

            apply(&store, env, &u, write, now).await;
            assert_eq!(
                figures(&store, env, &u, now).await,
                [(2, 6), (2, 6)],
                "{case}: the write carries the usage and moves the hold, never charges it"
            );

            let (expected, later) = match end {
                End::Release => {
                    store
                        .release(release_cmd(env, &plans, &id, now))
                        .await
                        .expect("release");
                    (2, now)
                }
                End::Expire => {
                    let later = now + SignedDuration::from_secs(61);
                    store
                        .expire_due(later, IdSeed(format!("sweep{}", later.as_millisecond())))
                        .await
                        .expect("sweep");
                    assert_eq!(
                        store
                            .commit(commit_cmd(env, &plans, &id, None, later))
                            .await,
                        Err(StoreError::NotPending {
                            status: ReservationStatus::Expired
                        }),
                        "{case}"
                    );
                    (2, later)
                }
                End::Commit(q) => {
                    let c = store
                        .commit(commit_cmd(env, &plans, &id, Some(q), now))
                        .await
                        .expect("commit");
                    assert_eq!(c.quantity, q, "{case}");
                    assert_eq!(c.overage, (2 + q).saturating_sub(10), "{case}: overage");
                    (2 + q, now)
                }
            };
            assert_eq!(
                figures(&store, env, &u, later).await,
                [(expected, 0), (expected, 0)],
                "{case}: after the reservation ended"
            );
            // Going back (cancel now) carries the same usage into the window it returns to:
            // a hold that was given back stays given back.
            cancel_now(&store, env, &u, later).await;
            assert_eq!(
                figures(&store, env, &u, later).await,
                [(expected, 0), (expected, 0)],
                "{case}: after cancelling"
            );
        }
    }
}
