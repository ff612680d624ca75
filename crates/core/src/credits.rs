//! Credits: how much of a request the plan covers, which grants fund the rest, and how a
//! commit divides its final quantity between the two.
//!
//! The rule (PRODUCT.md): plan quota is spent first. The part of a request that fits under
//! every matching hard consumable limit comes from the plan; the remainder must come entirely
//! from credits whose items match the event, drawn from the highest priority grant first,
//! then the soonest to expire, then the oldest. A unit funded by credits is never counted
//! against a plan limit, and concurrency and soft limits never draw credits.

use jiff::Timestamp;
use std::cmp::Ordering;

/// The room one hard consumable limit leaves: `quota − used − reserved`, in units of
/// `multiplier` per unit of the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    pub multiplier: u64,
    pub quota: u64,
    pub used: u64,
    pub reserved: u64,
}

impl Room {
    /// Whole events of this limit's room.
    fn events(self) -> u64 {
        let free = self
            .quota
            .saturating_sub(self.used.saturating_add(self.reserved));
        free / self.multiplier.max(1)
    }
}

/// The most of `quantity` that every limit in `rooms` admits: the plan's share of a request.
/// With no room to respect (no hard consumable limit matched) the plan covers everything.
pub fn plan_share(rooms: &[Room], quantity: u64) -> u64 {
    rooms.iter().map(|r| r.events()).fold(quantity, u64::min)
}

/// The order grants are spent in: highest priority, then soonest expiry (a grant that never
/// expires last), then the oldest grant, then the grant id (so the order is total).
pub fn spend_order(
    a: (i32, Option<Timestamp>, Timestamp, &str),
    b: (i32, Option<Timestamp>, Timestamp, &str),
) -> Ordering {
    let expiry = |e: Option<Timestamp>| (e.is_none(), e);
    b.0.cmp(&a.0)
        .then_with(|| expiry(a.1).cmp(&expiry(b.1)))
        .then_with(|| a.2.cmp(&b.2))
        .then_with(|| a.3.cmp(b.3))
}

/// Takes `need` units from grants with `available` units each, in the order given (the spend
/// order): how much from each, or `None` when together they do not cover it. A request is
/// funded entirely or not at all.
pub fn draw(available: &[u64], need: u64) -> Option<Vec<u64>> {
    let mut left = need;
    let mut takes = Vec::with_capacity(available.len());
    for &a in available {
        let take = a.min(left);
        takes.push(take);
        left -= take;
    }
    (left == 0).then_some(takes)
}

/// How a commit of `final_quantity` settles a reservation that held `plan` units on the plan
/// and `credits` units of credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitSplit {
    /// Held credits burned (the whole hold: what was not used is refunded).
    pub burned: u64,
    /// Of `burned`, units given back: a final quantity below the reservation's returns
    /// credits first, then plan quota.
    pub refunded: u64,
    /// Units settled on the plan's limits, out of what the plan held.
    pub plan: u64,
    /// Units beyond the reservation's quantity: the plan takes what fits, then more credits,
    /// and what neither covers is overage on the plan.
    pub extra: u64,
}

impl CommitSplit {
    /// Credits spent: burned less refunded.
    pub fn credits_used(self) -> u64 {
        self.burned - self.refunded
    }
}

/// Splits a commit; `plan + credits` is the reservation's quantity.
pub fn split_commit(plan: u64, credits: u64, final_quantity: u64) -> CommitSplit {
    let reserved = plan.saturating_add(credits);
    if final_quantity >= reserved {
        return CommitSplit {
            burned: credits,
            refunded: 0,
            plan,
            extra: final_quantity - reserved,
        };
    }
    let returned = reserved - final_quantity;
    let refunded = returned.min(credits);
    CommitSplit {
        burned: credits,
        refunded,
        plan: plan - (returned - refunded),
        extra: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn room(quota: u64, used: u64, reserved: u64, multiplier: u64) -> Room {
        Room {
            multiplier,
            quota,
            used,
            reserved,
        }
    }

    #[test]
    fn the_plan_covers_what_every_hard_limit_admits() {
        assert_eq!(plan_share(&[], 7), 7);
        assert_eq!(plan_share(&[room(10, 8, 0, 1)], 5), 2);
        assert_eq!(plan_share(&[room(10, 8, 0, 1), room(50, 0, 0, 5)], 5), 2);
        assert_eq!(plan_share(&[room(10, 0, 0, 1), room(12, 0, 0, 5)], 5), 2);
        assert_eq!(plan_share(&[room(0, 0, 0, 1)], 5), 0);
        assert_eq!(plan_share(&[room(10, 9, 4, 1)], 5), 0);
    }

    #[test]
    fn grants_are_spent_by_priority_then_expiry_then_age() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let (d1, d2, d3) = (
            t("2026-12-01T00:00:00Z"),
            t("2026-12-02T00:00:00Z"),
            t("2026-12-03T00:00:00Z"),
        );
        let mut grants = [
            (0, None, d1, "a"),
            (0, Some(d3), d1, "b"),
            (0, Some(d2), d2, "c"),
            (1, None, d3, "d"),
            (0, Some(d2), d1, "e"),
        ];
        grants.sort_by(|a, b| spend_order(*a, *b));
        let ids: Vec<&str> = grants.iter().map(|g| g.3).collect();
        assert_eq!(ids, ["d", "e", "c", "b", "a"]);
    }

    #[test]
    fn a_draw_is_whole_or_nothing() {
        assert_eq!(draw(&[3, 5], 6), Some(vec![3, 3]));
        assert_eq!(draw(&[3, 5], 8), Some(vec![3, 5]));
        assert_eq!(draw(&[3, 5], 9), None);
        assert_eq!(draw(&[], 0), Some(vec![]));
    }

    #[test]
    fn a_smaller_commit_refunds_credits_first() {
        let s = split_commit(3, 2, 4);
        assert_eq!((s.burned, s.refunded, s.plan, s.extra), (2, 1, 3, 0));
        let s = split_commit(3, 2, 1);
        assert_eq!((s.burned, s.refunded, s.plan, s.extra), (2, 2, 1, 0));
        let s = split_commit(3, 2, 9);
        assert_eq!((s.burned, s.refunded, s.plan, s.extra), (2, 0, 3, 4));
    }

    proptest! {
        #[test]
        fn a_commit_accounts_for_every_unit(plan in 0u64..1000, credits in 0u64..1000, f in 0u64..3000) {
            let s = split_commit(plan, credits, f);
            prop_assert!(s.refunded <= s.burned && s.burned == credits);
            prop_assert!(s.plan <= plan);
            prop_assert_eq!(s.plan + s.credits_used() + s.extra, f);
            // Credits are returned before any plan quota is.
            prop_assert!(s.plan == plan || s.credits_used() == 0);
        }

        #[test]
        fn the_plan_share_fits_every_room(
            rooms in proptest::collection::vec((0u64..100, 0u64..100, 0u64..100, 1u64..5), 0..4),
            q in 0u64..200,
        ) {
            let rooms: Vec<Room> = rooms.into_iter().map(|(a, b, c, m)| room(a, b, c, m)).collect();
            let p = plan_share(&rooms, q);
            prop_assert!(p <= q);
            for r in &rooms {
                prop_assert!(r.used + r.reserved + p * r.multiplier <= r.quota.max(r.used + r.reserved));
            }
            // And it is the largest such share.
            if p < q {
                prop_assert!(rooms.iter().any(|r| r.used + r.reserved + (p + 1) * r.multiplier > r.quota));
            }
        }
    }
}
