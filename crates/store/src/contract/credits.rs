//! Credits (issue 11): grants idempotent on their reference, the part of a request no plan
//! quota covers paid from grants in spend order, holds burned, refunded, released and expired
//! through ledger entries, revokes. The property test over generated sequences of all of these
//! lives in `credits_property.rs` and uses the helpers here.

use super::*;
use tollgate_core::decision::DenyReason;

const PACK: &str = "images50";

pub(super) fn next() -> u64 {
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

pub(super) fn at(base: Timestamp, seconds: i64) -> Timestamp {
    base + SignedDuration::from_secs(seconds)
}

pub(super) fn owner(u: &str) -> Owner {
    Owner::User(user(u))
}

/// One grant of `units` images for `image.*` events, from pack `PACK`.
pub(super) fn grant_cmd(env: EnvId, u: &str, units: u64, now: Timestamp) -> GrantCommand {
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
pub(super) async fn ledger(store: &Arc<dyn Store>, env: EnvId, who: Owner) -> Vec<LedgerEntry> {
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

pub(super) async fn credits(
    store: &Arc<dyn Store>,
    env: EnvId,
    who: Owner,
    now: Timestamp,
) -> CreditsOutcome {
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
pub(super) fn of_reservation(
    entries: &[LedgerEntry],
    id: &str,
) -> Vec<(LedgerKind, String, u64, Balance)> {
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

pub(super) fn bal(remaining: u64, held: u64) -> Balance {
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

pub(super) fn track_cmd(
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

pub(super) async fn sweep(store: &Arc<dyn Store>, real_now: Timestamp) -> usize {
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
