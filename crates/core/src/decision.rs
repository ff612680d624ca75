//! The metering decisions: reserve, settle (commit and track) and the limit arithmetic.
//!
//! A request is load → decide → persist. The store loads the counter state of every limit that
//! matches the event, calls one function here, and writes what it returns. These functions see
//! only numbers, so the invariants they promise (a hard quota is never exceeded by a hold; usage
//! that happened is never dropped; every figure stays an exact integer in `0 ..= 2^53-1`) are
//! checked here once for every backend.
//!
//! The arithmetic is checked, never saturating or wrapping: a command that would take a
//! counter, a hold or a sum an answer shows (`used + reserved`) past [`QUANTITY_MAX`] is refused
//! as a whole with [`OutOfRange`], before anything is written, so every figure the API shows
//! stays a JSON integer every client keeps exact.

use crate::input::QUANTITY_MAX;
use crate::plan::{Enforcement, Limit, LimitKind};

/// The state of one limit's counter in one window. For a concurrency limit `used` is 0 and
/// `reserved` is the number of reservations in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterState {
    pub used: u64,
    pub reserved: u64,
}

impl CounterState {
    /// `max(0, quota - used - reserved)`.
    pub fn remaining(self, quota: u64) -> u64 {
        quota.saturating_sub(self.used.saturating_add(self.reserved))
    }
}

/// A command refused because it would take a figure of the limit at index `check` (of the
/// checks or settle inputs given) past [`QUANTITY_MAX`]: `quantity × multiplier` itself, or
/// what the counter would hold (`used + reserved` once the command applied). Nothing of the
/// command may be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("would take limit #{check} past {QUANTITY_MAX} (2^53-1)")]
pub struct OutOfRange {
    pub check: usize,
}

/// The sum of `terms`, if it is at most [`QUANTITY_MAX`].
pub fn sum_in_range(terms: &[u64]) -> Option<u64> {
    terms
        .iter()
        .try_fold(0u64, |acc, &t| acc.checked_add(t))
        .filter(|&n| n <= QUANTITY_MAX)
}

/// Why a request was denied. Order is the order of `reasons` in answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DenyReason {
    LimitReached,
    ConcurrencyLimitReached,
    UnmatchedEvent,
    NoSubscription,
}

named_enum!(DenyReason {
    LimitReached => "limit_reached",
    ConcurrencyLimitReached => "concurrency_limit_reached",
    UnmatchedEvent => "unmatched_event",
    NoSubscription => "no_subscription",
});

/// One matching limit as a decision sees it.
#[derive(Debug, Clone, Copy)]
pub struct LimitCheck<'a> {
    pub limit: &'a Limit,
    /// The quota in force for this subject (a subscription's `customLimits` may override it).
    pub quota: u64,
    pub state: CounterState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveDecision {
    pub allowed: bool,
    /// Units to hold on each limit, in the order of the checks; all zero when denied.
    pub holds: Vec<u64>,
    /// Indices of the checks that refused.
    pub denied_by: Vec<usize>,
    pub reasons: Vec<DenyReason>,
}

/// Decides a reserve (or an enforced track) of `quantity` against every matching limit:
/// all are held or none is. Soft limits never refuse.
///
/// `Err` when `quantity × multiplier` of a limit is past [`QUANTITY_MAX`], or when an admitted
/// hold would take a counter's `used + reserved` past it (only a soft limit can: a hard one
/// admits nothing past its quota, which is in range). A denial writes nothing, so it is
/// answered as a denial whatever the sums.
pub fn decide_reserve(
    checks: &[LimitCheck<'_>],
    quantity: u64,
) -> Result<ReserveDecision, OutOfRange> {
    let mut denied_by = Vec::new();
    let mut reasons = Vec::new();
    let mut holds = Vec::with_capacity(checks.len());
    // The first soft limit whose counter the hold would take out of range.
    let mut overflowing = None;
    for (i, check) in checks.iter().enumerate() {
        let units = check.limit.units(quantity).ok_or(OutOfRange { check: i })?;
        holds.push(units);
        let load = sum_in_range(&[check.state.used, check.state.reserved, units]);
        if check.limit.enforcement == Enforcement::Soft {
            if load.is_none() && overflowing.is_none() {
                overflowing = Some(i);
            }
            continue;
        }
        // A hold of nothing (a request credits pay for in full) fits even a counter that
        // overage took past its quota.
        if units > 0 && load.is_none_or(|load| load > check.quota) {
            denied_by.push(i);
            let reason = match check.limit.kind {
                LimitKind::Consumable => DenyReason::LimitReached,
                LimitKind::Concurrency => DenyReason::ConcurrencyLimitReached,
            };
            if !reasons.contains(&reason) {
                reasons.push(reason);
            }
        }
    }
    let allowed = denied_by.is_empty();
    if !allowed {
        holds.iter_mut().for_each(|h| *h = 0);
    } else if let Some(check) = overflowing {
        return Err(OutOfRange { check });
    }
    reasons.sort();
    let decision = ReserveDecision {
        allowed,
        holds,
        denied_by,
        reasons,
    };
    debug_assert!(checks.iter().zip(&decision.holds).all(|(c, &h)| {
        let load = u128::from(c.state.used) + u128::from(c.state.reserved) + u128::from(h);
        h == 0
            || (load <= u128::from(QUANTITY_MAX)
                && (c.limit.enforcement == Enforcement::Soft || load <= u128::from(c.quota)))
    }));
    Ok(decision)
}

/// One limit being settled by a commit or a track.
#[derive(Debug, Clone, Copy)]
pub struct SettleInput {
    pub kind: LimitKind,
    pub multiplier: u64,
    pub quota: u64,
    /// Usage counted in the window the charge lands in.
    pub used: u64,
    /// The most usage any window holding the charge counts: `used` for a fixed window; for a
    /// rolling one, the usage within one window length either side of the charge (a charge at
    /// an earlier instant also lands in windows that end later).
    pub used_around: u64,
    /// Held by everything else in flight, not by the reservation being settled.
    pub reserved_others: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// Units added to `used` on each limit (always the full final amount: usage that happened
    /// is never lost).
    pub charged: Vec<u64>,
    /// Units on each limit that did not fit within its quota.
    pub overage_units: Vec<u64>,
    /// The part of the event's quantity that did not fit, in event units: the largest over
    /// the limits.
    pub overage: u64,
}

/// Settles `quantity` of a usage event on the limits it matched. The hold being settled (if any)
/// has already been taken out of `reserved_others`.
///
/// Everything is charged, so nothing may be refused for want of quota; `Err` only when the
/// charge would take a counter (`used`, or `used + reserved` of a window holding the charge)
/// past [`QUANTITY_MAX`].
pub fn settle(inputs: &[SettleInput], quantity: u64) -> Result<Settlement, OutOfRange> {
    let mut charged = Vec::with_capacity(inputs.len());
    let mut overage_units = Vec::with_capacity(inputs.len());
    let mut overage = 0;
    for (i, input) in inputs.iter().enumerate() {
        if input.kind == LimitKind::Concurrency {
            charged.push(0);
            overage_units.push(0);
            continue;
        }
        let out_of_range = OutOfRange { check: i };
        let units = quantity
            .checked_mul(input.multiplier)
            .filter(|&u| u <= QUANTITY_MAX)
            .ok_or(out_of_range)?;
        let around = input.used_around.max(input.used);
        sum_in_range(&[around, units, input.reserved_others]).ok_or(out_of_range)?;
        let room = input
            .quota
            .saturating_sub(input.used + input.reserved_others);
        let over = units.saturating_sub(room);
        charged.push(units);
        overage_units.push(over);
        overage = overage.max(over.div_ceil(input.multiplier.max(1)));
    }
    Ok(Settlement {
        charged,
        overage_units,
        overage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{EventPattern, MatchRule, Scope, WindowSpec};
    use proptest::prelude::*;

    fn limit(quota: u64, kind: LimitKind, enforcement: Enforcement, multiplier: u64) -> Limit {
        Limit {
            id: "l".into(),
            label: "l".into(),
            unit: "count".into(),
            quota,
            kind,
            scope: Scope::User,
            enforcement,
            multiplier,
            window: WindowSpec::Lifetime,
            rules: vec![MatchRule {
                event: EventPattern::parse("*").unwrap(),
                metadata: vec![],
            }],
            rollover: None,
        }
    }

    #[test]
    fn all_or_nothing() {
        let total = limit(10, LimitKind::Consumable, Enforcement::Hard, 1);
        let premium = limit(2, LimitKind::Consumable, Enforcement::Hard, 1);
        let checks = [
            LimitCheck {
                limit: &total,
                quota: 10,
                state: CounterState {
                    used: 3,
                    reserved: 0,
                },
            },
            LimitCheck {
                limit: &premium,
                quota: 2,
                state: CounterState {
                    used: 2,
                    reserved: 0,
                },
            },
        ];
        let d = decide_reserve(&checks, 1).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.holds, vec![0, 0]);
        assert_eq!(d.denied_by, vec![1]);
        assert_eq!(d.reasons, vec![DenyReason::LimitReached]);
    }

    #[test]
    fn soft_limits_allow_and_concurrency_counts_one() {
        let soft = limit(1, LimitKind::Consumable, Enforcement::Soft, 1);
        let conc = limit(3, LimitKind::Concurrency, Enforcement::Hard, 1);
        let d = decide_reserve(
            &[
                LimitCheck {
                    limit: &soft,
                    quota: 1,
                    state: CounterState {
                        used: 5,
                        reserved: 0,
                    },
                },
                LimitCheck {
                    limit: &conc,
                    quota: 3,
                    state: CounterState {
                        used: 0,
                        reserved: 2,
                    },
                },
            ],
            40,
        )
        .unwrap();
        assert!(d.allowed);
        assert_eq!(d.holds, vec![40, 1]);
        let d = decide_reserve(
            &[LimitCheck {
                limit: &conc,
                quota: 3,
                state: CounterState {
                    used: 0,
                    reserved: 3,
                },
            }],
            1,
        )
        .unwrap();
        assert_eq!(d.reasons, vec![DenyReason::ConcurrencyLimitReached]);
    }

    #[test]
    fn settle_more_than_reserved_records_overage() {
        let s = settle(
            &[SettleInput {
                kind: LimitKind::Consumable,
                multiplier: 1,
                quota: 100,
                used: 90,
                used_around: 90,
                reserved_others: 5,
            }],
            8,
        )
        .unwrap();
        assert_eq!(s.charged, vec![8]);
        assert_eq!(s.overage_units, vec![3]);
        assert_eq!(s.overage, 3);
        let s = settle(
            &[SettleInput {
                kind: LimitKind::Consumable,
                multiplier: 5,
                quota: 10,
                used: 0,
                used_around: 0,
                reserved_others: 0,
            }],
            3,
        )
        .unwrap();
        assert_eq!(s.charged, vec![15]);
        assert_eq!(s.overage, 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve(u64),
        Commit(usize, u64),
        Release(usize),
        Expire(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u64..8).prop_map(Op::Reserve),
            (0usize..16, 0u64..12).prop_map(|(i, q)| Op::Commit(i, q)),
            (0usize..16).prop_map(Op::Release),
            (0usize..16).prop_map(Op::Expire),
        ]
    }

    proptest! {
        /// Any interleaving of reserve / commit / release / expire against one hard limit:
        /// used + reserved never exceeds the quota unless the excess is recorded as overage,
        /// and `used` equals the sum of committed quantities.
        #[test]
        fn interleavings_never_exceed_a_hard_quota(
            quota in 0u64..40,
            multiplier in 1u64..4,
            ops in proptest::collection::vec(op(), 1..120),
        ) {
            let l = limit(quota, LimitKind::Consumable, Enforcement::Hard, multiplier);
            let mut state = CounterState::default();
            let mut pending: Vec<Option<u64>> = Vec::new();
            let mut committed_units = 0u64;
            let mut overage_units = 0u64;
            for op in ops {
                match op {
                    Op::Reserve(q) => {
                        let d = decide_reserve(&[LimitCheck { limit: &l, quota, state }], q).unwrap();
                        if d.allowed {
                            state.reserved += d.holds[0];
                            pending.push(Some(d.holds[0]));
                        } else {
                            prop_assert!(state.used + state.reserved + q * multiplier > quota);
                        }
                    }
                    Op::Commit(i, q) => {
                        if let Some(Some(hold)) = pending.get(i).copied() {
                            state.reserved -= hold;
                            let s = settle(&[SettleInput {
                                kind: LimitKind::Consumable, multiplier, quota,
                                used: state.used, used_around: state.used,
                                reserved_others: state.reserved,
                            }], q).unwrap();
                            state.used += s.charged[0];
                            committed_units += q * multiplier;
                            overage_units += s.overage_units[0];
                            pending[i] = None;
                        }
                    }
                    Op::Release(i) | Op::Expire(i) => {
                        if let Some(Some(hold)) = pending.get(i).copied() {
                            state.reserved -= hold;
                            pending[i] = None;
                        }
                    }
                }
                prop_assert!(state.used + state.reserved <= quota + overage_units);
                prop_assert_eq!(state.used, committed_units);
                let held: u64 = pending.iter().flatten().sum();
                prop_assert_eq!(state.reserved, held);
            }
        }
    }

    /// Quantities, multipliers and quotas a caller may send, biased to the edges of
    /// `0 ..= 2^53-1` where the arithmetic could break.
    fn edge(min: u64) -> impl Strategy<Value = u64> {
        prop_oneof![
            min..min + 4,
            Just(QUANTITY_MAX),
            Just(QUANTITY_MAX / 2),
            Just(QUANTITY_MAX / 2 + 1),
            Just(4096),
            (QUANTITY_MAX - 4)..=QUANTITY_MAX,
            min..=QUANTITY_MAX,
        ]
    }

    #[derive(Debug, Clone)]
    enum RangeOp {
        Reserve(u64),
        /// Commit pending reservation `i` at its held quantity plus or minus a delta, or at any
        /// quantity.
        Commit(usize, i8),
        CommitAny(usize, u64),
        Release(usize),
        Track {
            quantity: u64,
            enforce: bool,
        },
    }

    fn range_op() -> impl Strategy<Value = RangeOp> {
        prop_oneof![
            edge(1).prop_map(RangeOp::Reserve),
            (0usize..8, -2i8..3).prop_map(|(i, d)| RangeOp::Commit(i, d)),
            (0usize..8, edge(0)).prop_map(|(i, q)| RangeOp::CommitAny(i, q)),
            (0usize..8).prop_map(RangeOp::Release),
            (edge(0), any::<bool>())
                .prop_map(|(quantity, enforce)| RangeOp::Track { quantity, enforce }),
        ]
    }

    fn ranged_limit() -> impl Strategy<Value = Limit> {
        (edge(0), edge(1), any::<bool>()).prop_map(|(quota, multiplier, soft)| {
            let enforcement = if soft {
                Enforcement::Soft
            } else {
                Enforcement::Hard
            };
            limit(quota, LimitKind::Consumable, enforcement, multiplier)
        })
    }

    /// A pending reservation in the model: its quantity and its hold on each limit.
    #[derive(Debug, Clone)]
    struct Held {
        quantity: u64,
        holds: Vec<u64>,
    }

    /// What a command would do to each limit in unbounded arithmetic: true if any figure
    /// would pass 2^53-1. `holding` adds the units to `reserved` (a reserve), else to `used`.
    fn would_overflow(limits: &[Limit], states: &[CounterState], quantity: u64) -> bool {
        let max = u128::from(QUANTITY_MAX);
        limits.iter().zip(states).any(|(l, s)| {
            let units = u128::from(quantity) * u128::from(l.multiplier);
            units > max || u128::from(s.used) + u128::from(s.reserved) + units > max
        })
    }

    proptest! {
        /// Any limits and any sequence of reserve, commit (less, equal, more), release and
        /// track with quantities up to 2^53-1: every figure stays in range, `used` is the sum
        /// of what was settled, `reserved` the sum of what is held, and a command is refused
        /// exactly when unbounded arithmetic would have taken a figure past 2^53-1.
        #[test]
        fn every_figure_stays_in_range(
            limits in proptest::collection::vec(ranged_limit(), 1..4),
            ops in proptest::collection::vec(range_op(), 1..80),
        ) {
            let mut states = vec![CounterState::default(); limits.len()];
            let mut settled = vec![0u64; limits.len()];
            let mut pending: Vec<Option<Held>> = Vec::new();
            let checks = |states: &[CounterState]| -> Vec<LimitCheck<'_>> {
                limits.iter().zip(states).map(|(l, &state)| LimitCheck {
                    limit: l, quota: l.quota, state,
                }).collect::<Vec<_>>()
            };
            for op in ops {
                // A settlement to run: its quantity and the pending reservation it ends.
                let mut settle_with: Option<(u64, Option<usize>)> = None;
                match op {
                    RangeOp::Reserve(q) => {
                        let decided = decide_reserve(&checks(&states), q);
                        let hard_fits = limits.iter().zip(&states).all(|(l, s)| {
                            l.enforcement == Enforcement::Soft
                                || u128::from(s.used) + u128::from(s.reserved)
                                    + u128::from(q) * u128::from(l.multiplier)
                                    <= u128::from(l.quota)
                        });
                        let units_fit = limits.iter().all(|l| {
                            u128::from(q) * u128::from(l.multiplier) <= u128::from(QUANTITY_MAX)
                        });
                        let refused = !units_fit
                            || (hard_fits && would_overflow(&limits, &states, q));
                        prop_assert_eq!(decided.is_err(), refused, "reserve {}", q);
                        if let Ok(d) = decided {
                            prop_assert_eq!(d.allowed, hard_fits);
                            if d.allowed {
                                for (s, h) in states.iter_mut().zip(&d.holds) {
                                    s.reserved += h;
                                }
                                pending.push(Some(Held { quantity: q, holds: d.holds }));
                            }
                        }
                    }
                    RangeOp::Commit(i, delta) => {
                        if let Some(Some(held)) = pending.get(i) {
                            let q = held.quantity.saturating_add_signed(i64::from(delta));
                            settle_with = Some((q.min(QUANTITY_MAX), Some(i)));
                        }
                    }
                    RangeOp::CommitAny(i, q) => {
                        if let Some(Some(_)) = pending.get(i) {
                            settle_with = Some((q, Some(i)));
                        }
                    }
                    RangeOp::Release(i) => {
                        if let Some(Some(held)) = pending.get(i).cloned() {
                            for (s, h) in states.iter_mut().zip(&held.holds) {
                                s.reserved -= h;
                            }
                            pending[i] = None;
                        }
                    }
                    RangeOp::Track { quantity, enforce } => {
                        let allowed = if enforce {
                            match decide_reserve(&checks(&states), quantity) {
                                Ok(d) => d.allowed,
                                Err(_) => {
                                    prop_assert!(
                                        would_overflow(&limits, &states, quantity)
                                    );
                                    false
                                }
                            }
                        } else {
                            true
                        };
                        if allowed {
                            settle_with = Some((quantity, None));
                        }
                    }
                }
                if let Some((q, ends)) = settle_with {
                    let own = match ends {
                        Some(i) => pending[i].as_ref().map(|h| h.holds.clone()).unwrap(),
                        None => vec![0; limits.len()],
                    };
                    let others: Vec<CounterState> = states.iter().zip(&own)
                        .map(|(s, o)| CounterState { used: s.used, reserved: s.reserved - o })
                        .collect();
                    let inputs: Vec<SettleInput> = limits.iter().zip(&others)
                        .map(|(l, s)| SettleInput {
                            kind: l.kind, multiplier: l.multiplier, quota: l.quota,
                            used: s.used, used_around: s.used, reserved_others: s.reserved,
                        })
                        .collect();
                    match settle(&inputs, q) {
                        Err(_) => prop_assert!(would_overflow(&limits, &others, q)),
                        Ok(st) => {
                            prop_assert!(!would_overflow(&limits, &others, q));
                            prop_assert!(st.overage <= q);
                            for (j, s) in states.iter_mut().enumerate() {
                                s.reserved -= own[j];
                                s.used += st.charged[j];
                                settled[j] += st.charged[j];
                                prop_assert_eq!(st.charged[j], q * limits[j].multiplier);
                            }
                            if let Some(i) = ends {
                                pending[i] = None;
                            }
                        }
                    }
                }
                // A refused command changed nothing (it was not applied, and `used` and
                // `reserved` still equal their sums); an applied one kept every figure exact.
                for (j, s) in states.iter().enumerate() {
                    prop_assert!(s.used <= QUANTITY_MAX);
                    prop_assert!(s.reserved <= QUANTITY_MAX);
                    prop_assert!(s.used + s.reserved <= QUANTITY_MAX);
                    prop_assert!(s.remaining(limits[j].quota) <= limits[j].quota);
                    prop_assert_eq!(s.used, settled[j]);
                    let held: u64 = pending.iter().flatten().map(|h| h.holds[j]).sum();
                    prop_assert_eq!(s.reserved, held);
                }
            }
        }
    }
}
