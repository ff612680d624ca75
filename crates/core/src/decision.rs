//! The metering decisions: reserve, settle (commit and track) and the limit arithmetic.
//!
//! A request is load → decide → persist. The store loads the counter state of every limit that
//! matches the event, calls one function here, and writes what it returns. These functions see
//! only numbers, so the invariants they promise (a hard quota is never exceeded by a hold; usage
//! that happened is never dropped) are checked here once for every backend.

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

/// Why a request was denied. Order is the order of `reasons` in answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DenyReason {
    LimitReached,
    ConcurrencyLimitReached,
    UnmatchedEvent,
    NoSubscription,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::LimitReached => "limit_reached",
            DenyReason::ConcurrencyLimitReached => "concurrency_limit_reached",
            DenyReason::UnmatchedEvent => "unmatched_event",
            DenyReason::NoSubscription => "no_subscription",
        }
    }
}

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
pub fn decide_reserve(checks: &[LimitCheck<'_>], quantity: u64) -> ReserveDecision {
    let mut denied_by = Vec::new();
    let mut reasons = Vec::new();
    let mut holds = Vec::with_capacity(checks.len());
    for (i, check) in checks.iter().enumerate() {
        let units = check.limit.units(quantity);
        holds.push(units);
        if check.limit.enforcement == Enforcement::Soft {
            continue;
        }
        let load = check
            .state
            .used
            .saturating_add(check.state.reserved)
            .saturating_add(units);
        if load > check.quota {
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
    }
    reasons.sort();
    let decision = ReserveDecision {
        allowed,
        holds,
        denied_by,
        reasons,
    };
    debug_assert!(checks.iter().zip(&decision.holds).all(|(c, &h)| {
        c.limit.enforcement == Enforcement::Soft
            || h == 0
            || c.state.used + c.state.reserved + h <= c.quota
    }));
    decision
}

/// One limit being settled by a commit or a track.
#[derive(Debug, Clone, Copy)]
pub struct SettleInput {
    pub kind: LimitKind,
    pub multiplier: u64,
    pub quota: u64,
    pub used: u64,
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
pub fn settle(inputs: &[SettleInput], quantity: u64) -> Settlement {
    let mut charged = Vec::with_capacity(inputs.len());
    let mut overage_units = Vec::with_capacity(inputs.len());
    let mut overage = 0;
    for input in inputs {
        if input.kind == LimitKind::Concurrency {
            charged.push(0);
            overage_units.push(0);
            continue;
        }
        let units = quantity.saturating_mul(input.multiplier);
        let room = input
            .quota
            .saturating_sub(input.used.saturating_add(input.reserved_others));
        let over = units.saturating_sub(room);
        charged.push(units);
        overage_units.push(over);
        overage = overage.max(over.div_ceil(input.multiplier.max(1)));
    }
    Settlement {
        charged,
        overage_units,
        overage,
    }
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
        let d = decide_reserve(&checks, 1);
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
        );
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
        );
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
                reserved_others: 5,
            }],
            8,
        );
        assert_eq!(s.charged, vec![8]);
        assert_eq!(s.overage_units, vec![3]);
        assert_eq!(s.overage, 3);
        let s = settle(
            &[SettleInput {
                kind: LimitKind::Consumable,
                multiplier: 5,
                quota: 10,
                used: 0,
                reserved_others: 0,
            }],
            3,
        );
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
                        let d = decide_reserve(&[LimitCheck { limit: &l, quota, state }], q);
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
                                used: state.used, reserved_others: state.reserved,
                            }], q);
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
}
