//! The credits property test (issue 11): replays generated sequences of grants, reserves,
//! commits, releases, tracks, time passing (swept or not) and revokes, and checks after every
//! step that each grant's ledger adds up to the balance shown, never goes negative, and that no
//! unit is both paid with credits and counted on a plan.

use super::credits::*;
use super::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use tollgate_core::credits::{draw, spend_order};

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
