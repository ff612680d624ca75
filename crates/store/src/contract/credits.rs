//! Credits (issue 11): grants idempotent on their reference, the part of a request no plan
//! quota covers paid from grants in spend order, holds burned, refunded, released and expired
//! through ledger entries, revokes; and a property test that replays generated sequences of all
//! of these and checks after every step that each grant's ledger adds up to the balance shown,
//! never goes negative, and that no unit is both paid with credits and counted on a plan.

use super::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use tollgate_core::credits::{draw, spend_order};
use tollgate_core::decision::DenyReason;

const PACK: &str = "images50";

fn next() -> u64 {
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn at(base: Timestamp, seconds: i64) -> Timestamp {
    base + SignedDuration::from_secs(seconds)
}

fn owner(u: &str) -> Owner {
    Owner::User(user(u))
}

/// One grant of `units` images for `image.*` events, from pack `PACK`.
fn grant_cmd(env: EnvId, u: &str, units: u64, now: Timestamp) -> GrantCommand {
    let n = next();
    GrantCommand {
        env,
        now,
        owner: owner(u),
        pack_id: PACK.into(),
        priority: 0,
        packs: 1,
        items: vec![NewGrant {
            grant_id: format!("grt_t{n}"),
            item_id: "images".into(),
            unit: "image".into(),
            quantity: units,
            rules: vec![rule("image.*", &[])],
        }],
        expires_at: None,
        source: GrantSource::Purchase,
        external_ref: None,
        note: None,
        ids: IdSeed(format!("g{n}_")),
    }
}

/// Makes a grant that must be new and returns its id.
async fn grant(store: &Arc<dyn Store>, cmd: GrantCommand) -> String {
    let units = cmd.items[0].quantity;
    let o = store.grant_credits(cmd).await.expect("grant");
    assert!(o.created, "a grant without a reference is always new");
    assert_eq!(o.grants.len(), 1);
    assert_eq!(
        o.grants[0].balance,
        Balance {
            remaining: units,
            held: 0
        }
    );
    o.grants[0].row.grant_id.clone()
}

/// A subject's whole ledger, oldest first.
async fn ledger(store: &Arc<dyn Store>, env: EnvId, who: Owner) -> Vec<LedgerEntry> {
    let mut entries = store
        .credit_ledger(LedgerQuery {
            env,
            owner: who,
            limit: 1000,
            before: None,
        })
        .await
        .expect("ledger");
    assert!(entries.len() < 1000, "the test's ledgers fit one page");
    assert!(
        entries.windows(2).all(|w| w[0].seq > w[1].seq),
        "newest first"
    );
    entries.reverse();
    entries
}

async fn credits(store: &Arc<dyn Store>, env: EnvId, who: Owner, now: Timestamp) -> CreditsOutcome {
    store
        .credits(CreditsQuery {
            env,
            now,
            owner: who,
        })
        .await
        .expect("credits")
}

async fn balance(
    store: &Arc<dyn Store>,
    env: EnvId,
    u: &str,
    grant_id: &str,
    now: Timestamp,
) -> Balance {
    credits(store, env, owner(u), now)
        .await
        .grants
        .iter()
        .find(|g| g.row.grant_id == grant_id)
        .map(|g| g.balance)
        .unwrap_or_default()
}

/// (kind, grant, quantity, after) of the entries a reservation made, in ledger order.
fn of_reservation(entries: &[LedgerEntry], id: &str) -> Vec<(LedgerKind, String, u64, Balance)> {
    entries
        .iter()
        .filter(|e| e.reservation_id.as_deref() == Some(id))
        .map(|e| (e.kind, e.grant_id.clone(), e.quantity, e.after))
        .collect()
}

/// (kind, quantity, after) of one grant's entries, in ledger order.
fn of_grant(entries: &[LedgerEntry], grant_id: &str) -> Vec<(LedgerKind, u64, Balance)> {
    entries
        .iter()
        .filter(|e| e.grant_id == grant_id)
        .map(|e| (e.kind, e.quantity, e.after))
        .collect()
}

fn bal(remaining: u64, held: u64) -> Balance {
    Balance { remaining, held }
}

fn drawn(grants: &[(&str, u64)]) -> CreditsDrawn {
    CreditsDrawn {
        held: grants.iter().map(|g| g.1).sum(),
        grants: grants.iter().map(|(g, n)| (g.to_string(), *n)).collect(),
    }
}

async fn commit(store: &Arc<dyn Store>, cmd: CommitCommand) -> CommitOutcome {
    store.commit(cmd).await.expect("commit")
}

fn track_cmd(
    env: EnvId,
    plans: &Arc<PlanDocument>,
    u: &str,
    q: u64,
    now: Timestamp,
) -> TrackCommand {
    let n = next();
    TrackCommand {
        env,
        now,
        plans: plans.clone(),
        event_id: format!("evt_track_{n}"),
        user_id: user(u),
        event: EventName::parse("image.render").expect("valid"),
        quantity: Quantity::new(q).expect("valid"),
        metadata: Metadata::default(),
        occurred_at: now,
        cost_micros: None,
        prompt: None,
        response: None,
        enforce: false,
        record_denials: true,
        idempotency: None,
        ids: IdSeed(format!("t{n}_")),
    }
}

async fn track(store: &Arc<dyn Store>, cmd: TrackCommand) -> TrackOutcome {
    match store.track(cmd).await.expect("track") {
        Idempotent::Fresh(o) => o,
        Idempotent::Replayed(_) => panic!("a fresh track was answered as a replay"),
    }
}

async fn sweep(store: &Arc<dyn Store>, real_now: Timestamp) -> usize {
    store
        .expire_due(real_now, IdSeed(format!("sw{}_", next())))
        .await
        .expect("sweep")
}

pub async fn grant_is_idempotent_on_external_ref(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let now = t0();
    let with_ref = |u: &str, pack: &str| {
        let mut cmd = grant_cmd(env, u, 50, now);
        cmd.pack_id = pack.into();
        cmd.external_ref = Some("ord_1".into());
        cmd.note = Some("bought on the web".into());
        cmd
    };
    let first = store
        .grant_credits(with_ref("u1", PACK))
        .await
        .expect("grant");
    assert!(first.created);
    assert_eq!(first.grants.len(), 1);
    let row = &first.grants[0].row;
    assert_eq!(
        (
            row.subject.as_str(),
            row.pack_id.as_deref(),
            row.item_id.as_str(),
            row.quantity,
            row.external_ref.as_deref(),
            row.source,
            row.created_at
        ),
        (
            owner("u1").subject().as_str(),
            Some(PACK),
            "images",
            50,
            Some("ord_1"),
            GrantSource::Purchase,
            now
        )
    );
    assert_eq!(first.grants[0].balance, bal(50, 0));

    // A retried webhook comes with new ids: it grants nothing and answers the first grants.
    let retry = store
        .grant_credits(with_ref("u1", PACK))
        .await
        .expect("retry");
    assert!(!retry.created);
    assert_eq!(retry.grants, first.grants);
    let entries = ledger(&store, env, owner("u1")).await;
    assert_eq!(entries.len(), 1, "one grant entry: {entries:?}");
    let e = &entries[0];
    assert_eq!(
        (e.kind, e.grant_id.as_str(), e.quantity, e.after),
        (LedgerKind::Grant, row.grant_id.as_str(), 50, bal(50, 0))
    );
    assert_eq!(e.external_ref.as_deref(), Some("ord_1"));
    assert!(!e.reason.is_empty());

    assert_eq!(
        store.grant_credits(with_ref("u2", PACK)).await,
        Err(StoreError::IdempotencyConflict),
        "the same reference for another owner"
    );
    assert_eq!(
        store.grant_credits(with_ref("u1", "other_pack")).await,
        Err(StoreError::IdempotencyConflict),
        "the same reference for another pack"
    );
    assert!(ledger(&store, env, owner("u2")).await.is_empty());
    assert_eq!(ledger(&store, env, owner("u1")).await.len(), 1);

    // A pack of two items makes one grant (and one grant entry) per item.
    let mut two = grant_cmd(env, "u3", 7, now);
    two.packs = 2;
    two.items[0].quantity = 14;
    two.items.push(NewGrant {
        grant_id: format!("grt_t{}", next()),
        item_id: "videos".into(),
        unit: "video".into(),
        quantity: 2,
        rules: vec![rule("video.*", &[])],
    });
    let made = store.grant_credits(two).await.expect("grant");
    assert!(made.created);
    let mut units: Vec<_> = made
        .grants
        .iter()
        .map(|g| (g.row.item_id.as_str(), g.balance.remaining))
        .collect();
    units.sort();
    assert_eq!(units, [("images", 14), ("videos", 2)]);
    let kinds: Vec<_> = ledger(&store, env, owner("u3"))
        .await
        .iter()
        .map(|e| (e.kind, e.quantity))
        .collect();
    assert_eq!(kinds.len(), 2);
    assert!(kinds.iter().all(|k| k.0 == LedgerKind::Grant));
}

pub async fn credits_pay_for_what_the_plan_does_not_cover(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let now = t0();
    let windows = [
        ("life", WindowSpec::Lifetime),
        (
            "day",
            WindowSpec::Calendar {
                period: CalendarPeriod::Day,
                timezone: jiff::tz::TimeZone::UTC,
            },
        ),
    ];
    for (u, window) in windows {
        let plans = doc(vec![limit("images", 10, window, rule("image.*", &[]))]);
        let g = grant(&store, grant_cmd(env, u, 50, now)).await;

        // 12 images: 10 from the plan, 2 from the pack.
        let mut ids = Vec::new();
        for i in 0..12 {
            let r = reserve(&store, reserve_cmd(env, &plans, u, 1, now)).await;
            assert!(r.allowed, "{u}: image {i}");
            let expected = if i < 10 {
                CreditsDrawn::default()
            } else {
                drawn(&[(&g, 1)])
            };
            assert_eq!(r.credits, expected, "{u}: image {i}");
            ids.push(r.reservation_id.expect("id"));
        }
        for (i, id) in ids.iter().enumerate() {
            let c = commit(&store, commit_cmd(env, &plans, id, None, now)).await;
            assert_eq!(c.credits_used, u64::from(i >= 10), "{u}: image {i}");
        }
        assert_eq!(usage(&store, env, &plans, u, now).await[0].used, 10, "{u}");
        assert_eq!(balance(&store, env, u, &g, now).await, bal(48, 0), "{u}");
        let entries = ledger(&store, env, owner(u)).await;
        for id in &ids[10..] {
            assert_eq!(
                of_reservation(&entries, id)
                    .iter()
                    .map(|e| (e.0, e.2))
                    .collect::<Vec<_>>(),
                [(LedgerKind::Hold, 1), (LedgerKind::Burn, 1)],
                "{u}: the ledger names the reservation"
            );
        }
        assert!(of_reservation(&entries, &ids[0]).is_empty());

        // A check answers what a reserve would hold, and holds nothing.
        let check = store
            .check(CheckCommand {
                env,
                now,
                plans: plans.clone(),
                user_id: user(u),
                event: EventName::parse("image.render").expect("valid"),
                quantity: Quantity::positive(3).expect("valid"),
                metadata: Metadata::default(),
            })
            .await
            .expect("check");
        assert!(check.allowed);
        assert_eq!(check.credits, drawn(&[(&g, 3)]), "{u}");
        assert_eq!(balance(&store, env, u, &g, now).await, bal(48, 0), "{u}");

        // A commit of less than reserved burns the hold and refunds the pack.
        let r = reserve(&store, reserve_cmd(env, &plans, u, 3, now)).await;
        assert_eq!(r.credits, drawn(&[(&g, 3)]), "{u}");
        let id = r.reservation_id.expect("id");
        let c = commit(&store, commit_cmd(env, &plans, &id, Some(1), now)).await;
        assert_eq!((c.quantity, c.overage, c.credits_used), (1, 0, 1), "{u}");
        let entries = ledger(&store, env, owner(u)).await;
        assert_eq!(
            of_reservation(&entries, &id),
            [
                (LedgerKind::Hold, g.clone(), 3, bal(48, 3)),
                (LedgerKind::Burn, g.clone(), 3, bal(45, 0)),
                (LedgerKind::Refund, g.clone(), 2, bal(47, 0)),
            ],
            "{u}"
        );
        assert_eq!(usage(&store, env, &plans, u, now).await[0].used, 10, "{u}");

        // A release gives the hold back.
        let r = reserve(&store, reserve_cmd(env, &plans, u, 4, now)).await;
        let id = r.reservation_id.expect("id");
        store
            .release(release_cmd(env, &plans, &id, now))
            .await
            .expect("release");
        let entries = ledger(&store, env, owner(u)).await;
        assert_eq!(
            of_reservation(&entries, &id),
            [
                (LedgerKind::Hold, g.clone(), 4, bal(47, 4)),
                (LedgerKind::Release, g.clone(), 4, bal(47, 0)),
            ],
            "{u}"
        );

        // A commit of more than reserved, with no plan room, burns more credits.
        let r = reserve(&store, reserve_cmd(env, &plans, u, 2, now)).await;
        let id = r.reservation_id.expect("id");
        let c = commit(&store, commit_cmd(env, &plans, &id, Some(5), now)).await;
        assert_eq!((c.quantity, c.overage, c.credits_used), (5, 0, 5), "{u}");
        let entries = ledger(&store, env, owner(u)).await;
        let burned: u64 = of_reservation(&entries, &id)
            .iter()
            .filter(|e| e.0 == LedgerKind::Burn)
            .map(|e| e.2)
            .sum();
        assert_eq!(burned, 5, "{u}");
        assert_eq!(balance(&store, env, u, &g, now).await, bal(42, 0), "{u}");
        assert_eq!(usage(&store, env, &plans, u, now).await[0].used, 10, "{u}");
    }

    // The day plan's quota is back the next day: no credits are held.
    let plans = doc(vec![limit(
        "images",
        10,
        WindowSpec::Calendar {
            period: CalendarPeriod::Day,
            timezone: jiff::tz::TimeZone::UTC,
        },
        rule("image.*", &[]),
    )]);
    let tomorrow = at(now, 24 * 3600);
    let r = reserve(&store, reserve_cmd(env, &plans, "day", 1, tomorrow)).await;
    assert!(r.allowed);
    assert_eq!(r.credits, CreditsDrawn::default());

    // Overage (used past the quota) leaves the plan no room, not a refusal: credits pay.
    let plans = images(1);
    let t = track(&store, track_cmd(env, &plans, "over", 3, now)).await;
    assert_eq!((t.overage, t.credits_used), (2, 0));
    assert_eq!(usage(&store, env, &plans, "over", now).await[0].used, 3);
    let g = grant(&store, grant_cmd(env, "over", 5, now)).await;
    let r = reserve(&store, reserve_cmd(env, &plans, "over", 2, now)).await;
    assert!(r.allowed, "{r:?}");
    assert_eq!(r.credits, drawn(&[(&g, 2)]));
}

pub async fn credits_are_spent_in_order_and_across_grants(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let now = t0();
    let plans = images(0);
    let u = "order";
    // Made in an order that is not the spend order: D (priority 5), B (expires tomorrow),
    // A (expires next month), C (never, older), E (never, newer).
    let make = |s: i64, priority: i32, expires: Option<i64>| {
        let mut cmd = grant_cmd(env, u, 2, at(now, s));
        cmd.priority = priority;
        cmd.expires_at = expires.map(|d| at(now, d * 24 * 3600));
        cmd
    };
    let c = grant(&store, make(0, 0, None)).await;
    let e = grant(&store, make(1, 0, None)).await;
    let a = grant(&store, make(2, 0, Some(30))).await;
    let b = grant(&store, make(3, 0, Some(1))).await;
    let d = grant(&store, make(4, 5, None)).await;
    let later = at(now, 10);
    let take = |expected: CreditsDrawn| {
        let store = store.clone();
        let plans = plans.clone();
        async move {
            let r = reserve(&store, reserve_cmd(env, &plans, u, 3, later)).await;
            assert!(r.allowed);
            assert_eq!(r.credits, expected);
            r.reservation_id.expect("id")
        }
    };
    let r1 = take(drawn(&[(&d, 2), (&b, 1)])).await;
    take(drawn(&[(&b, 1), (&a, 2)])).await;
    take(drawn(&[(&c, 2), (&e, 1)])).await;
    let denied_cmd = reserve_cmd(env, &plans, u, 2, later);
    let denied_id = denied_cmd.reservation_id.clone();
    let denied = reserve(&store, denied_cmd).await;
    assert!(!denied.allowed, "one unit is left, two are asked");
    assert_eq!(denied.reasons, vec![DenyReason::LimitReached]);
    assert_eq!(denied.credits.held, 0);

    // A partial burn across two grants.
    let c1 = commit(&store, commit_cmd(env, &plans, &r1, None, later)).await;
    assert_eq!((c1.credits_used, c1.overage), (3, 0));
    let entries = ledger(&store, env, owner(u)).await;
    assert!(of_reservation(&entries, &denied_id).is_empty());
    let mut burns: Vec<_> = of_reservation(&entries, &r1)
        .into_iter()
        .filter(|e| e.0 == LedgerKind::Burn)
        .map(|e| (e.1, e.2))
        .collect();
    burns.sort();
    let mut expected = vec![(d.clone(), 2), (b.clone(), 1)];
    expected.sort();
    assert_eq!(burns, expected);

    let shown = credits(&store, env, owner(u), later).await;
    let ids: Vec<_> = shown
        .grants
        .iter()
        .map(|g| g.row.grant_id.clone())
        .collect();
    assert_eq!(ids.len(), 4, "D is spent: {ids:?}");
    assert_eq!(&ids[..2], [b.clone(), a.clone()], "soonest expiry first");
    let balances: Vec<_> = shown.grants.iter().map(|g| g.balance).collect();
    assert_eq!(&balances[..2], [bal(1, 1), bal(2, 2)]);
    assert_eq!(
        shown.packs,
        vec![PackBalance {
            pack_id: Some(PACK.into()),
            item_id: "images".into(),
            unit: "image".into(),
            available: 1,
            held: 6,
        }]
    );
}

pub async fn grants_and_credit_holds_expire_through_the_ledger(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let now = t0();
    let plans = images(0);
    let u = "exp";
    let mut soon = grant_cmd(env, u, 10, now);
    soon.expires_at = Some(at(now, 3600));
    let g1 = grant(&store, soon).await;
    let g2 = grant(&store, grant_cmd(env, u, 5, now)).await;

    let r = reserve(&store, reserve_cmd(env, &plans, u, 1, at(now, 60))).await;
    assert_eq!(r.credits, drawn(&[(&g1, 1)]), "the expiring grant first");
    commit(
        &store,
        commit_cmd(
            env,
            &plans,
            &r.reservation_id.expect("id"),
            None,
            at(now, 60),
        ),
    )
    .await;

    // Past its expiry a grant is neither shown nor spendable; the sweeper writes `expire`.
    let t1 = at(now, 2 * 3600);
    let shown = credits(&store, env, owner(u), t1).await;
    assert_eq!(
        shown
            .grants
            .iter()
            .map(|g| g.row.grant_id.as_str())
            .collect::<Vec<_>>(),
        [g2.as_str()]
    );
    assert_eq!(shown.packs.iter().map(|p| p.available).sum::<u64>(), 5);
    assert!(sweep(&store, t1).await >= 1);
    let entries = ledger(&store, env, owner(u)).await;
    assert_eq!(
        of_grant(&entries, &g1),
        [
            (LedgerKind::Grant, 10, bal(10, 0)),
            (LedgerKind::Hold, 1, bal(10, 1)),
            (LedgerKind::Burn, 1, bal(9, 0)),
            (LedgerKind::Expire, 9, bal(0, 0)),
        ]
    );
    let denied = reserve(&store, reserve_cmd(env, &plans, u, 6, t1)).await;
    assert!(!denied.allowed, "the expired grant pays for nothing");

    // An expired reservation's credit hold comes back, with a reason that says so.
    let r = reserve(&store, reserve_cmd(env, &plans, u, 5, t1)).await;
    assert_eq!(r.credits, drawn(&[(&g2, 5)]));
    let id = r.reservation_id.expect("id");
    assert!(sweep(&store, at(t1, 61)).await >= 1);
    let entries = ledger(&store, env, owner(u)).await;
    let ended = of_reservation(&entries, &id);
    assert_eq!(
        ended,
        [
            (LedgerKind::Hold, g2.clone(), 5, bal(5, 5)),
            (LedgerKind::Release, g2.clone(), 5, bal(5, 0)),
        ]
    );
    let release = entries
        .iter()
        .find(|e| e.kind == LedgerKind::Release)
        .expect("a release");
    assert!(
        release.reason.to_lowercase().contains("expir"),
        "the reason says the reservation expired: {:?}",
        release.reason
    );
    assert_eq!(balance(&store, env, u, &g2, at(t1, 61)).await, bal(5, 0));

    // A grant that expires while partly held: the unheld part expires, the held part when
    // its hold is released.
    let t2 = at(now, 3 * 3600);
    let mut short = grant_cmd(env, u, 4, at(t2, -600));
    short.expires_at = Some(t2);
    let g3 = grant(&store, short).await;
    let mut cmd = reserve_cmd(env, &plans, u, 3, at(t2, -30));
    cmd.ttl = TtlSeconds::new(120).expect("valid");
    let r = reserve(&store, cmd).await;
    assert_eq!(r.credits, drawn(&[(&g3, 3)]));
    let id = r.reservation_id.expect("id");
    sweep(&store, at(t2, 10)).await;
    store
        .release(release_cmd(env, &plans, &id, at(t2, 20)))
        .await
        .expect("release");
    let entries = ledger(&store, env, owner(u)).await;
    assert_eq!(
        of_grant(&entries, &g3),
        [
            (LedgerKind::Grant, 4, bal(4, 0)),
            (LedgerKind::Hold, 3, bal(4, 3)),
            (LedgerKind::Expire, 1, bal(3, 3)),
            (LedgerKind::Release, 3, bal(3, 0)),
            (LedgerKind::Expire, 3, bal(0, 0)),
        ]
    );
}

pub async fn revoke_by_grant_or_reference(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let now = t0();
    let plans = images(0);
    let u = "rev";
    let revoke = |target: RevokeTarget| RevokeCommand {
        env,
        now,
        target,
        reason: Some("chargeback".into()),
        ids: IdSeed(format!("v{}_", next())),
    };
    let mut a = grant_cmd(env, u, 10, now);
    a.external_ref = Some("ord_a".into());
    let a = grant(&store, a).await;
    let r = reserve(&store, reserve_cmd(env, &plans, u, 3, now)).await;
    assert_eq!(r.credits, drawn(&[(&a, 3)]));
    let id = r.reservation_id.expect("id");

    // By grant id: what is not held goes now.
    let o = store
        .revoke_credits(revoke(RevokeTarget::Grant(a.clone())))
        .await
        .expect("revoke");
    assert_eq!(o.revoked, vec![(a.clone(), 7)]);
    let entries = ledger(&store, env, owner(u)).await;
    let last = entries.last().expect("an entry");
    assert_eq!(
        (last.kind, last.quantity, last.after),
        (LedgerKind::Revoke, 7, bal(3, 3))
    );
    commit(&store, commit_cmd(env, &plans, &id, None, now)).await;
    assert_eq!(
        of_grant(&ledger(&store, env, owner(u)).await, &a).last(),
        Some(&(LedgerKind::Burn, 3, bal(0, 0))),
        "the held part is still burned by its commit"
    );

    // By reference: every grant made with it.
    let mut b = grant_cmd(env, u, 4, now);
    b.external_ref = Some("ord_b".into());
    b.items.push(NewGrant {
        grant_id: format!("grt_t{}", next()),
        item_id: "videos".into(),
        unit: "video".into(),
        quantity: 2,
        rules: vec![rule("video.*", &[])],
    });
    let made = store.grant_credits(b).await.expect("grant");
    let mut expected: Vec<_> = made
        .grants
        .iter()
        .map(|g| (g.row.grant_id.clone(), g.row.quantity))
        .collect();
    expected.sort();
    let by_ref = RevokeTarget::ExternalRef("ord_b".into());
    let mut o = store
        .revoke_credits(revoke(by_ref.clone()))
        .await
        .expect("revoke")
        .revoked;
    o.sort();
    assert_eq!(o, expected);
    let count = ledger(&store, env, owner(u)).await.len();
    let mut again = store
        .revoke_credits(revoke(by_ref))
        .await
        .expect("revoke again")
        .revoked;
    again.sort();
    assert_eq!(
        again,
        expected
            .iter()
            .map(|(g, _)| (g.clone(), 0))
            .collect::<Vec<_>>(),
        "nothing left to remove"
    );
    assert_eq!(
        ledger(&store, env, owner(u)).await.len(),
        count,
        "no empty entries"
    );
    assert!(credits(&store, env, owner(u), now).await.grants.is_empty());
    assert!(
        !reserve(&store, reserve_cmd(env, &plans, u, 1, now))
            .await
            .allowed
    );

    for target in [
        RevokeTarget::Grant("grt_unknown".into()),
        RevokeTarget::ExternalRef("ord_unknown".into()),
    ] {
        assert_eq!(
            store.revoke_credits(revoke(target)).await,
            Err(StoreError::NotFound)
        );
    }
}

pub async fn credits_pay_where_no_plan_applies(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let now = t0();
    // No default plan: a user without a subscription has no plan at all.
    let no_plan = Arc::new(
        PlanDocument::new(
            None,
            None,
            UnmatchedEvents::Deny,
            doc(vec![limit(
                "images",
                10,
                WindowSpec::Lifetime,
                rule("image.*", &[]),
            )])
            .plans
            .clone(),
        )
        .expect("a valid document"),
    );
    let u = "np";
    let r = reserve(&store, reserve_cmd(env, &no_plan, u, 1, now)).await;
    assert!(!r.allowed);
    assert_eq!(r.reasons, vec![DenyReason::NoSubscription]);

    let g = grant(&store, grant_cmd(env, u, 5, now)).await;
    let r = reserve(&store, reserve_cmd(env, &no_plan, u, 3, now)).await;
    assert!(r.allowed);
    assert_eq!((r.plan_id.as_deref(), r.limits.len()), (None, 0));
    assert_eq!(r.credits, drawn(&[(&g, 3)]));
    let c = commit(
        &store,
        commit_cmd(env, &no_plan, &r.reservation_id.expect("id"), Some(2), now),
    )
    .await;
    assert_eq!((c.quantity, c.credits_used), (2, 2));
    let t = track(&store, track_cmd(env, &no_plan, u, 2, now)).await;
    assert!(t.recorded);
    assert_eq!(t.credits_used, 2);
    assert_eq!(balance(&store, env, u, &g, now).await, bal(1, 0));
    let mut enforced = track_cmd(env, &no_plan, u, 2, now);
    enforced.enforce = true;
    let t = track(&store, enforced).await;
    assert!(!t.recorded && !t.allowed);
    assert_eq!(t.reasons, vec![DenyReason::NoSubscription]);
    assert_eq!(balance(&store, env, u, &g, now).await, bal(1, 0));
    let r = reserve(&store, reserve_cmd(env, &no_plan, u, 2, now)).await;
    assert!(!r.allowed);
    assert_eq!(r.reasons, vec![DenyReason::NoSubscription]);

    // An event no limit matches, under `unmatchedEvents: deny`: credits for it pay in full.
    let plans = images(10);
    let video = |q: u64| {
        let mut cmd = reserve_cmd(env, &plans, "vid", q, now);
        cmd.event = EventName::parse("video.render").expect("valid");
        cmd
    };
    let r = reserve(&store, video(1)).await;
    assert_eq!(r.reasons, vec![DenyReason::UnmatchedEvent]);
    let mut videos = grant_cmd(env, "vid", 2, now);
    videos.items[0].rules = vec![rule("video.*", &[])];
    let v = grant(&store, videos).await;
    let images_only = grant(&store, grant_cmd(env, "vid", 9, now)).await;
    let r = reserve(&store, video(2)).await;
    assert!(r.allowed);
    assert_eq!(
        r.credits,
        drawn(&[(&v, 2)]),
        "only grants whose rules match pay"
    );
    let r = reserve(&store, video(1)).await;
    assert_eq!(r.reasons, vec![DenyReason::UnmatchedEvent]);
    assert_eq!(
        balance(&store, env, "vid", &images_only, now).await,
        bal(9, 0)
    );
}

// ---- the property test

/// How a commit's final quantity compares to the reserved one.
#[derive(Debug, Clone, Copy)]
enum Final {
    Less(u64),
    Equal,
    More(u64),
}

/// One step of a case; a `user` is taken modulo the case's number of users.
#[derive(Debug, Clone)]
enum Step {
    /// `expires_in` seconds from now (None: never).
    Grant {
        user: usize,
        units: u64,
        priority: i32,
        expires_in: Option<i64>,
    },
    Reserve {
        user: usize,
        quantity: u64,
        ttl: u64,
    },
    /// `pick` chooses among the reservations the case has not settled.
    Commit {
        pick: usize,
        how: Final,
    },
    Release {
        pick: usize,
    },
    Track {
        user: usize,
        quantity: u64,
    },
    /// Time passes; with `sweep` the sweeper runs at the new time, else commands are lazy.
    Advance {
        seconds: i64,
        sweep: bool,
    },
    /// `pick` chooses among the case's grants.
    Revoke {
        pick: usize,
        by_ref: bool,
    },
}

/// Each user's lifetime quota (None: no plan), and the steps.
#[derive(Debug, Clone)]
struct Case {
    quotas: Vec<Option<u64>>,
    steps: Vec<Step>,
}

const CASES: usize = 48;
const STEPS_MAX: usize = 30;

fn case_strategy() -> impl Strategy<Value = Case> {
    let users = 0usize..3;
    let step = prop_oneof![
        3 => (users.clone(), 1u64..=20, 0i32..3, proptest::option::weighted(0.6, 1i64..=900))
            .prop_map(|(user, units, priority, expires_in)| Step::Grant { user, units, priority, expires_in }),
        4 => (users.clone(), 1u64..=8, 30u64..=600)
            .prop_map(|(user, quantity, ttl)| Step::Reserve { user, quantity, ttl }),
        3 => (any::<usize>(), prop_oneof![
                (1u64..=8).prop_map(Final::Less),
                Just(Final::Equal),
                (1u64..=8).prop_map(Final::More),
            ])
            .prop_map(|(pick, how)| Step::Commit { pick, how }),
        2 => any::<usize>().prop_map(|pick| Step::Release { pick }),
        1 => (users, 1u64..=8).prop_map(|(user, quantity)| Step::Track { user, quantity }),
        2 => (1i64..=400, any::<bool>()).prop_map(|(seconds, sweep)| Step::Advance { seconds, sweep }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, by_ref)| Step::Revoke { pick, by_ref }),
    ];
    (
        proptest::collection::vec(proptest::option::weighted(0.8, 0u64..=5), 2..=3),
        proptest::collection::vec(step, 1..=STEPS_MAX),
    )
        .prop_map(|(quotas, steps)| Case { quotas, steps })
}

/// One plan per quota, `q0` … `q5`, each with one lifetime hard limit on `image.*`; no default
/// plan, so a user without a subscription has none.
fn quota_plans() -> Arc<PlanDocument> {
    let plans = (0..=5)
        .map(|q| Plan {
            id: format!("q{q}"),
            billing: BillingInterval {
                unit: IntervalUnit::Month,
                count: 1,
            },
            seats: None,
            limits: vec![limit(
                "images",
                q,
                WindowSpec::Lifetime,
                rule("image.*", &[]),
            )],
        })
        .collect();
    Arc::new(PlanDocument::new(None, None, UnmatchedEvents::Deny, plans).expect("a valid document"))
}

/// A reservation the case made.
#[derive(Debug)]
struct Held {
    id: String,
    user: usize,
    quantity: u64,
    credits: u64,
    expires_at: Timestamp,
    /// Committed, released, or found or swept expired.
    settled: bool,
}

#[derive(Debug)]
struct CaseGrant {
    id: String,
    external_ref: String,
    user: usize,
    units: u64,
    expires_at: Option<Timestamp>,
}

/// What the case did, to check the store against.
struct Model {
    env: EnvId,
    plans: Arc<PlanDocument>,
    users: Vec<String>,
    quotas: Vec<Option<u64>>,
    now: Timestamp,
    grants: Vec<CaseGrant>,
    held: Vec<Held>,
    /// Per user: final quantities committed or tracked, and the credits they used.
    committed: Vec<u64>,
    credits_used: Vec<u64>,
}

impl Model {
    /// Whether a reservation of the user may have expired without the store having settled
    /// it yet (lazily or by the sweeper): its hold may then still show in balances.
    fn maybe_lingering(&self, user: usize) -> bool {
        self.held
            .iter()
            .any(|h| h.user == user && !h.settled && h.expires_at <= self.now)
    }

    fn pick_unsettled(&self, pick: usize) -> Option<usize> {
        let open: Vec<usize> = (0..self.held.len())
            .filter(|&i| !self.held[i].settled)
            .collect();
        (!open.is_empty()).then(|| open[pick % open.len()])
    }
}

pub async fn ledger_balances_hold_for_any_sequence(store: Arc<dyn Store>) {
    let (env, _) = setup(&store).await;
    let plans = quota_plans();
    let mut runner = TestRunner::deterministic();
    let strategy = case_strategy();
    let cases: Vec<Case> = (0..CASES)
        .map(|_| strategy.new_tree(&mut runner).expect("a case").current())
        .collect();
    for (n, case) in cases.iter().enumerate() {
        // Each case in its own users and its own day, after every earlier case's.
        let base = at(t0(), 24 * 3600 * n as i64);
        for _ in 0..10 {
            if sweep(&store, base).await == 0 {
                break;
            }
        }
        let users: Vec<String> = (0..case.quotas.len())
            .map(|i| format!("c{n}u{i}"))
            .collect();
        for (u, quota) in users.iter().zip(&case.quotas) {
            let Some(q) = quota else { continue };
            store
                .upsert_subscription(
                    env,
                    owner(u),
                    plans.clone(),
                    UpsertRequest {
                        plan_id: format!("q{q}"),
                        source: "api".into(),
                        ..Default::default()
                    },
                    format!("sub_{u}"),
                    base,
                )
                .await
                .expect("subscribe");
        }
        let mut model = Model {
            env,
            plans: plans.clone(),
            users,
            quotas: case.quotas.clone(),
            now: base,
            grants: Vec::new(),
            held: Vec::new(),
            committed: vec![0; case.quotas.len()],
            credits_used: vec![0; case.quotas.len()],
        };
        for (i, step) in case.steps.iter().enumerate() {
            let context = format!(
                "case {n} (quotas {:?}), step {i} {step:?}, after steps {:#?}",
                case.quotas,
                &case.steps[..i]
            );
            // A second passes between steps, so no two grants are made at the same time.
            model.now = at(model.now, 1);
            apply_step(&store, &mut model, n, i, step, &context).await;
            check_invariants(&store, &model, &context).await;
        }
    }
}

async fn apply_step(
    store: &Arc<dyn Store>,
    m: &mut Model,
    case: usize,
    index: usize,
    step: &Step,
    context: &str,
) {
    let (env, now) = (m.env, m.now);
    match *step {
        Step::Grant {
            user,
            units,
            priority,
            expires_in,
        } => {
            let user = user % m.users.len();
            let mut cmd = grant_cmd(env, &m.users[user], units, now);
            let external_ref = format!("ref_c{case}_s{index}");
            cmd.priority = priority;
            cmd.expires_at = expires_in.map(|s| at(now, s));
            cmd.external_ref = Some(external_ref.clone());
            let expires_at = cmd.expires_at;
            let o = store
                .grant_credits(cmd)
                .await
                .unwrap_or_else(|e| panic!("{context}: grant: {e}"));
            assert!(o.created && o.grants.len() == 1, "{context}: {o:?}");
            assert_eq!(o.grants[0].balance, bal(units, 0), "{context}: {o:?}");
            let id = o.grants[0].row.grant_id.clone();
            m.grants.push(CaseGrant {
                id,
                external_ref,
                user,
                units,
                expires_at,
            });
        }
        Step::Reserve {
            user,
            quantity,
            ttl,
        } => {
            let user = user % m.users.len();
            let u = m.users[user].clone();
            let expected = if m.maybe_lingering(user) {
                None
            } else {
                Some(expected_draw(store, m, user, quantity).await)
            };
            let mut cmd = reserve_cmd(env, &m.plans, &u, quantity, now);
            cmd.ttl = TtlSeconds::new(ttl).expect("valid");
            let id = cmd.reservation_id.clone();
            let r = match store.reserve(cmd).await {
                Ok(Idempotent::Fresh(r)) => r,
                other => panic!("{context}: reserve: {other:?}"),
            };
            let parts: u64 = r.credits.grants.iter().map(|g| g.1).sum();
            assert_eq!(r.credits.held, parts, "{context}: held is its parts");
            assert!(r.credits.grants.iter().all(|g| g.1 > 0), "{context}: {r:?}");
            assert!(r.credits.held <= quantity, "{context}: {r:?}");
            if let Some(expected) = expected {
                match expected {
                    Some(draws) => {
                        assert!(r.allowed, "{context}: credits cover it: {r:?}");
                        assert_eq!(r.credits.grants, draws, "{context}: spend order");
                    }
                    None => assert!(!r.allowed, "{context}: credits do not cover it: {r:?}"),
                }
            }
            if r.allowed {
                m.held.push(Held {
                    id,
                    user,
                    quantity,
                    credits: r.credits.held,
                    expires_at: r.expires_at.expect("an allowed reserve expires"),
                    settled: false,
                });
            } else {
                let entries = ledger(store, env, owner(&u)).await;
                assert!(
                    of_reservation(&entries, &id).is_empty(),
                    "{context}: a denied reserve holds nothing"
                );
            }
        }
        Step::Commit { pick, how } => {
            let Some(k) = m.pick_unsettled(pick) else {
                return;
            };
            let h = &m.held[k];
            let f = match how {
                Final::Less(d) => Some(h.quantity.saturating_sub(d)),
                Final::Equal => None,
                Final::More(d) => Some(h.quantity + d),
            };
            let result = store.commit(commit_cmd(env, &m.plans, &h.id, f, now)).await;
            let expired = h.expires_at <= now;
            match result {
                Ok(c) => {
                    assert!(!expired, "{context}: an expired reservation committed");
                    let f = f.unwrap_or(h.quantity);
                    assert_eq!(c.quantity, f, "{context}");
                    if f <= h.quantity {
                        let refunded = (h.quantity - f).min(h.credits);
                        assert_eq!(c.credits_used, h.credits - refunded, "{context}: {c:?}");
                    } else {
                        assert!(
                            (h.credits..=h.credits + f - h.quantity).contains(&c.credits_used),
                            "{context}: {c:?}"
                        );
                    }
                    m.committed[h.user] += f;
                    m.credits_used[h.user] += c.credits_used;
                }
                Err(StoreError::NotPending {
                    status: ReservationStatus::Expired,
                }) => assert!(expired, "{context}: a live reservation read as expired"),
                Err(e) => panic!("{context}: commit: {e}"),
            }
            m.held[k].settled = true;
        }
        Step::Release { pick } => {
            let Some(k) = m.pick_unsettled(pick) else {
                return;
            };
            let h = &m.held[k];
            let expired = h.expires_at <= now;
            match store.release(release_cmd(env, &m.plans, &h.id, now)).await {
                Ok(_) => assert!(!expired, "{context}: an expired reservation released"),
                Err(StoreError::NotPending {
                    status: ReservationStatus::Expired,
                }) => assert!(expired, "{context}: a live reservation read as expired"),
                Err(e) => panic!("{context}: release: {e}"),
            }
            m.held[k].settled = true;
        }
        Step::Track { user, quantity } => {
            let user = user % m.users.len();
            let cmd = track_cmd(env, &m.plans, &m.users[user], quantity, now);
            let t = match store.track(cmd).await {
                Ok(Idempotent::Fresh(t)) => t,
                other => panic!("{context}: track: {other:?}"),
            };
            assert!(t.credits_used <= quantity, "{context}: {t:?}");
            if t.recorded {
                m.committed[user] += quantity;
                m.credits_used[user] += t.credits_used;
            } else {
                assert_eq!(t.credits_used, 0, "{context}: {t:?}");
            }
        }
        Step::Advance {
            seconds,
            sweep: true,
        } => {
            m.now = at(now, seconds);
            sweep(store, m.now).await;
            let now = m.now;
            for h in m.held.iter_mut().filter(|h| h.expires_at <= now) {
                h.settled = true;
            }
        }
        Step::Advance {
            seconds,
            sweep: false,
        } => m.now = at(now, seconds),
        Step::Revoke { pick, by_ref } => {
            if m.grants.is_empty() {
                return;
            }
            let g = &m.grants[pick % m.grants.len()];
            let target = if by_ref {
                RevokeTarget::ExternalRef(g.external_ref.clone())
            } else {
                RevokeTarget::Grant(g.id.clone())
            };
            let o = store
                .revoke_credits(RevokeCommand {
                    env,
                    now,
                    target,
                    reason: None,
                    ids: IdSeed(format!("v{}_", next())),
                })
                .await
                .unwrap_or_else(|e| panic!("{context}: revoke: {e}"));
            assert_eq!(o.revoked.len(), 1, "{context}: {o:?}");
            assert_eq!(o.revoked[0].0, g.id, "{context}: {o:?}");
            if g.expires_at.is_some_and(|e| e <= now) {
                // Whether an expired grant is expired or revoked first is the store's choice.
                return;
            }
            let entries = ledger(store, env, owner(&m.users[g.user])).await;
            let last = entries
                .iter()
                .rev()
                .find(|e| e.grant_id == g.id)
                .expect("a grant entry");
            assert_eq!(
                last.after.remaining, last.after.held,
                "{context}: a revoke leaves only what is held: {last:?}"
            );
        }
    }
}

/// What a reserve of `quantity` must hold now: the plan takes what fits in its room, credits
/// the rest in spend order, entirely or not at all (None: denied).
async fn expected_draw(
    store: &Arc<dyn Store>,
    m: &Model,
    user: usize,
    quantity: u64,
) -> Option<Vec<(String, u64)>> {
    let u = &m.users[user];
    let plan = match m.quotas[user] {
        None => 0,
        Some(_) => {
            let l = &usage(store, m.env, &m.plans, u, m.now).await[0];
            l.quota.saturating_sub(l.used + l.reserved).min(quantity)
        }
    };
    let mut grants = credits(store, m.env, owner(u), m.now).await.grants;
    grants.sort_by(|a, b| {
        let key = |g: &Grant| {
            (
                g.row.priority,
                g.row.expires_at,
                g.row.created_at,
                g.row.grant_id.clone(),
            )
        };
        let (a, b) = (key(a), key(b));
        spend_order((a.0, a.1, a.2, &a.3), (b.0, b.1, b.2, &b.3))
    });
    let available: Vec<u64> = grants
        .iter()
        .map(|g| g.balance.remaining - g.balance.held)
        .collect();
    let takes = draw(&available, quantity - plan)?;
    Some(
        grants
            .iter()
            .zip(takes)
            .filter(|(_, t)| *t > 0)
            .map(|(g, t)| (g.row.grant_id.clone(), t))
            .collect(),
    )
}

async fn check_invariants(store: &Arc<dyn Store>, m: &Model, context: &str) {
    for (user, u) in m.users.iter().enumerate() {
        let entries = ledger(store, m.env, owner(u)).await;
        let shown = credits(store, m.env, owner(u), m.now).await;
        let mut held_total = 0;
        for g in m.grants.iter().filter(|g| g.user == user) {
            let last = check_grant_ledger(&entries, g, context);
            held_total += last.held;
            let expired = g.expires_at.is_some_and(|e| e <= m.now);
            match shown.grants.iter().find(|s| s.row.grant_id == g.id) {
                Some(s) => {
                    assert_eq!(
                        s.balance,
                        last,
                        "{context}: {} shows its ledger's sum (a reservation of the user \
                         may have expired unsettled: {})",
                        g.id,
                        m.maybe_lingering(user)
                    );
                    assert!(!expired && last.remaining > 0, "{context}: {s:?} is shown");
                }
                None => assert!(
                    expired || last.remaining == 0,
                    "{context}: {} with {last:?} is not shown",
                    g.id
                ),
            }
        }
        let ids: Vec<_> = shown.grants.iter().map(|g| &g.row.grant_id).collect();
        assert!(
            ids.iter().all(|id| m.grants.iter().any(|g| &&g.id == id)),
            "{context}: shown grants are the case's: {ids:?}"
        );
        let available: u64 = shown
            .grants
            .iter()
            .map(|g| g.balance.remaining - g.balance.held)
            .sum();
        let held: u64 = shown.grants.iter().map(|g| g.balance.held).sum();
        assert_eq!(
            (
                shown.packs.iter().map(|p| p.available).sum::<u64>(),
                shown.packs.iter().map(|p| p.held).sum::<u64>()
            ),
            (available, held),
            "{context}: packs add up the grants shown"
        );

        // Holds belong to reservations: every unsettled live one holds what it was given; one
        // that may have expired unseen may still hold.
        let mine = || m.held.iter().filter(|h| h.user == user && !h.settled);
        let live: u64 = mine()
            .filter(|h| h.expires_at > m.now)
            .map(|h| h.credits)
            .sum();
        let open: u64 = mine().map(|h| h.credits).sum();
        assert!(
            (live..=open).contains(&held_total),
            "{context}: {u} holds {held_total} credits, its reservations {live}..={open}"
        );
        for h in m.held.iter().filter(|h| h.user == user) {
            let holds: u64 = entries
                .iter()
                .filter(|e| {
                    e.kind == LedgerKind::Hold && e.reservation_id.as_deref() == Some(&h.id)
                })
                .map(|e| e.quantity)
                .sum();
            assert_eq!(holds, h.credits, "{context}: the holds of {}", h.id);
        }

        // No unit is both paid with credits and counted on the plan.
        match m.quotas[user] {
            Some(_) => {
                let used = usage(store, m.env, &m.plans, u, m.now).await[0].used;
                assert_eq!(
                    used + m.credits_used[user],
                    m.committed[user],
                    "{context}: {u}: plan used {used} + credits used {} = committed",
                    m.credits_used[user]
                );
            }
            None => assert!(
                m.credits_used[user] <= m.committed[user],
                "{context}: {u}: credits used beyond what was committed"
            ),
        }
    }
}

/// Checks that each of a grant's entries moves its balance by exactly its quantity as its
/// kind says, never below zero nor holding more than remains; returns the final balance.
fn check_grant_ledger(entries: &[LedgerEntry], g: &CaseGrant, context: &str) -> Balance {
    let mine: Vec<&LedgerEntry> = entries.iter().filter(|e| e.grant_id == g.id).collect();
    let first = mine
        .first()
        .unwrap_or_else(|| panic!("{context}: {} has no entries", g.id));
    assert_eq!(
        (first.kind, first.quantity, first.after),
        (LedgerKind::Grant, g.units, bal(g.units, 0)),
        "{context}: {} opens with its grant",
        g.id
    );
    let mut b = first.after;
    for e in &mine[1..] {
        let q = e.quantity;
        let fail = || format!("{context}: {} after {b:?}: {e:?}", g.id);
        assert!(q > 0, "{}", fail());
        let less = |x: u64| {
            x.checked_sub(q)
                .unwrap_or_else(|| panic!("below zero: {}", fail()))
        };
        let next = match e.kind {
            LedgerKind::Hold => bal(b.remaining, b.held + q),
            LedgerKind::Release => bal(b.remaining, less(b.held)),
            LedgerKind::Refund => bal(b.remaining + q, b.held),
            LedgerKind::Expire | LedgerKind::Revoke => bal(less(b.remaining), b.held),
            LedgerKind::Burn => {
                // The burned units that were held leave the hold too.
                let held = e.after.held;
                assert!(held <= b.held && b.held - held <= q, "{}", fail());
                bal(less(b.remaining), held)
            }
            LedgerKind::Grant | LedgerKind::Rollover => panic!("a second opening: {}", fail()),
        };
        assert_eq!(e.after, next, "{}", fail());
        assert!(
            next.held <= next.remaining,
            "holds more than remains: {}",
            fail()
        );
        b = next;
    }
    b
}
