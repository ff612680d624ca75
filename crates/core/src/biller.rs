//! Biller events as Tollgate understands them, whichever biller sent them, and the pure rules
//! that turn one into a subscription change.
//!
//! The wire formats (Stripe, Polar) are read elsewhere (`tollgate-billers`) into a
//! [`BillerEvent`]; the store applies it through `procedure::billers`, which asks
//! [`subscription_change`] what the snapshot means for the subject's subscription.

use crate::plan::PlanDocument;
use crate::subscription::{SubscriptionStatus, UpsertRequest};
use jiff::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Biller {
    Stripe,
    Polar,
}

impl Biller {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stripe => "stripe",
            Self::Polar => "polar",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Stripe, Self::Polar]
            .into_iter()
            .find(|b| b.as_str() == s)
    }
}

/// The app's subject a biller object names, as the integration's `userIdFrom` (or
/// `accountIdFrom`) found it in the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerHint {
    User(String),
    Account(String),
}

/// A biller's subscription status, reduced to what decides access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillerStatus {
    Active,
    Trialing,
    /// A renewal payment failed and the biller is retrying: the environment's `pastDue`
    /// policy decides (keep the plan, or end it).
    PastDue,
    /// Not paid for yet (Stripe `incomplete`, Polar `incomplete`): grants nothing yet.
    Incomplete,
    /// Over: canceled, expired unpaid, revoked. Falls back to the default plan.
    Ended,
    /// Stripe `paused` (a trial ended without a payment method): no access until resumed.
    Paused,
}

/// One priced line of a subscription: a Stripe subscription item, or Polar's product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillerPrice {
    /// Stripe price id (`price_…`), Polar product id.
    pub id: String,
    /// Stripe `price.lookup_key`.
    pub lookup_key: Option<String>,
    /// Units bought (Stripe item `quantity`, Polar `seats`).
    pub quantity: Option<u64>,
    /// This line's billing period (Stripe basil and later put it on the item).
    pub period: Option<(Timestamp, Timestamp)>,
}

/// A full snapshot of a biller subscription at the event's time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSnapshot {
    /// The biller's id (`sub_…`, a Polar uuid).
    pub subscription_id: String,
    pub customer_id: Option<String>,
    pub owner: Option<OwnerHint>,
    pub status: BillerStatus,
    pub prices: Vec<BillerPrice>,
    /// The subscription-level period: what older Stripe API versions and Polar send.
    pub period: Option<(Timestamp, Timestamp)>,
    /// Ends at the end of the current period unless taken back.
    pub cancel_at_period_end: bool,
    /// A scheduled end at a given time (Stripe `cancel_at`, Polar `ends_at`).
    pub cancel_at: Option<Timestamp>,
    /// When it ended, if it has.
    pub ended_at: Option<Timestamp>,
    /// Whether a per-seat quantity is meant as seats (Polar `seats` is; a Stripe item's
    /// quantity is when its price maps to a plan with `seats`).
    pub seats: Option<u64>,
}

/// A one-time purchase: a Stripe Checkout session in payment mode, a Polar order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchase {
    /// The payment's id, the grant's `externalRef`: the payment intent (else the session id),
    /// the Polar order id.
    pub payment_ref: String,
    pub customer_id: Option<String>,
    pub owner: Option<OwnerHint>,
    /// The pack named outright (`metadata.pack_id`).
    pub pack_id: Option<String>,
    /// Prices or products bought (`metadata.price_id`, Polar `product_id`).
    pub price_ids: Vec<String>,
}

/// What one biller event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BillerFact {
    Subscription(SubscriptionSnapshot),
    Purchase(Purchase),
    /// A customer's subject is known (a Checkout session in subscription mode).
    Customer {
        customer_id: String,
        owner: OwnerHint,
    },
    /// Acknowledged, changes nothing (`note` says why).
    Ignored {
        note: String,
    },
}

/// A verified, parsed biller event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillerEvent {
    pub biller: Biller,
    /// Stripe `evt_…`, Polar `webhook-id`: deliveries of one event share it.
    pub event_id: String,
    pub event_type: String,
    /// When the biller made the event (Stripe `created`, Polar payload `timestamp`): orders
    /// snapshots of one subscription.
    pub created: Timestamp,
    pub fact: BillerFact,
}

/// What an environment does with a subscription whose renewal payment failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PastDuePolicy {
    /// Keep the plan while the biller retries (status `past_due`).
    #[default]
    Keep,
    /// End the subscription at once; a later recovery brings it back.
    End,
}

impl PastDuePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Keep => "keep",
            Self::End => "end",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Keep, Self::End]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// What a snapshot does to the subject's subscription.
#[derive(Debug, Clone)]
pub enum SubscriptionChange {
    Upsert(UpsertRequest),
    /// Ends the subscription at `at` (now or earlier: at once).
    End {
        at: Timestamp,
    },
    /// Changes nothing (`note` says why).
    Nothing {
        note: String,
    },
}

/// What a biller id sells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BillerTarget {
    Plan(String),
    Pack(String),
}

/// The plan document's biller ids: plans' and packs' `stripePriceIds` (price ids or lookup
/// keys) and `polarProductIds`, in document order (plans first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BillerIds {
    pub stripe: Vec<(String, BillerTarget)>,
    pub polar: Vec<(String, BillerTarget)>,
}

impl BillerIds {
    fn of(&self, biller: Biller) -> &[(String, BillerTarget)] {
        match biller {
            Biller::Stripe => &self.stripe,
            Biller::Polar => &self.polar,
        }
    }

    /// The plan a price sells: the first plan listing its id (or, on Stripe, its lookup key).
    pub fn plan_for(&self, biller: Biller, price: &BillerPrice) -> Option<&str> {
        self.of(biller)
            .iter()
            .find_map(|(id, target)| match target {
                BillerTarget::Plan(plan)
                    if *id == price.id || price.lookup_key.as_deref() == Some(id.as_str()) =>
                {
                    Some(plan.as_str())
                }
                _ => None,
            })
    }

    /// The pack a price or product buys.
    pub fn pack_for(&self, biller: Biller, price_id: &str) -> Option<&str> {
        self.of(biller)
            .iter()
            .find_map(|(id, target)| match target {
                BillerTarget::Pack(pack) if id == price_id => Some(pack.as_str()),
                _ => None,
            })
    }
}

/// The pack a purchase buys: the one named outright, else the first that lists a bought price.
pub fn pack_for_purchase<'d>(
    doc: &'d PlanDocument,
    biller: Biller,
    purchase: &Purchase,
) -> Option<&'d str> {
    if let Some(id) = &purchase.pack_id {
        return doc
            .credit_packs
            .iter()
            .find(|p| p.id == *id)
            .map(|p| p.id.as_str());
    }
    purchase
        .price_ids
        .iter()
        .find_map(|bought| doc.biller_ids.pack_for(biller, bought))
}

/// What a snapshot means for the subject's subscription, given the plans in force and the
/// environment's `pastDue` policy; `now` is the environment's time.
///
/// The mapped line (the first price that maps to a plan) decides the plan, the window (its
/// own period, else the subscription's: Stripe before basil) and the seats (its quantity,
/// when the plan is sold per seat). A period start is the subscription's `cycleStart`, so a
/// later one is a renewal and the same one with another price is a plan change that keeps
/// the window and its usage.
pub fn subscription_change(
    doc: &PlanDocument,
    biller: Biller,
    snap: &SubscriptionSnapshot,
    past_due: PastDuePolicy,
    now: Timestamp,
) -> SubscriptionChange {
    let status = match snap.status {
        BillerStatus::Active => SubscriptionStatus::Active,
        BillerStatus::Trialing => SubscriptionStatus::Trialing,
        BillerStatus::PastDue => match past_due {
            PastDuePolicy::Keep => SubscriptionStatus::PastDue,
            PastDuePolicy::End => return SubscriptionChange::End { at: now },
        },
        BillerStatus::Ended | BillerStatus::Paused => {
            let at = snap.ended_at.map_or(now, |t| t.min(now));
            return SubscriptionChange::End { at };
        }
        BillerStatus::Incomplete => {
            return SubscriptionChange::Nothing {
                note: "the subscription is not paid for yet (incomplete)".into(),
            }
        }
    };
    let Some((price, plan_id)) = snap
        .prices
        .iter()
        .find_map(|p| doc.biller_ids.plan_for(biller, p).map(|plan| (p, plan)))
    else {
        let ids: Vec<&str> = snap.prices.iter().map(|p| p.id.as_str()).collect();
        return SubscriptionChange::Nothing {
            note: format!(
                "no plan lists {} {} in {}",
                match biller {
                    Biller::Stripe => "price",
                    Biller::Polar => "product",
                },
                if ids.is_empty() {
                    "(none)".to_string()
                } else {
                    ids.join(", ")
                },
                match biller {
                    Biller::Stripe => "stripePriceIds",
                    Biller::Polar => "polarProductIds",
                }
            ),
        };
    };
    let period = price.period.or(snap.period);
    let ends_at = match (snap.cancel_at_period_end, snap.cancel_at) {
        (_, Some(at)) => Some(at),
        (true, None) => period.map(|(_, end)| end),
        (false, None) => None,
    };
    let per_seat = doc.plan(plan_id).is_some_and(|p| p.seats.is_some());
    let seats = snap
        .seats
        .or(if per_seat { price.quantity } else { None })
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n > 0);
    SubscriptionChange::Upsert(UpsertRequest {
        plan_id: plan_id.to_string(),
        cycle_start: period.map(|(start, _)| start),
        ends_at: Some(ends_at),
        status: Some(status),
        seats: seats.map(Some),
        source: biller.as_str().to_string(),
        ..UpsertRequest::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Plan, UnmatchedEvents};
    use crate::window::{BillingInterval, IntervalUnit};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn doc() -> PlanDocument {
        let plan = |id: &str, seats| Plan {
            id: id.into(),
            billing: BillingInterval {
                unit: IntervalUnit::Month,
                count: 1,
            },
            seats,
            limits: Vec::new(),
        };
        let plans = vec![plan("free", None), plan("pro", None), plan("team", Some(3))];
        let mut d =
            PlanDocument::new(Some("free".into()), None, UnmatchedEvents::Deny, plans).unwrap();
        d.biller_ids.stripe = vec![
            ("price_pro".into(), BillerTarget::Plan("pro".into())),
            ("pro_lookup".into(), BillerTarget::Plan("pro".into())),
            ("price_team".into(), BillerTarget::Plan("team".into())),
            ("price_pack".into(), BillerTarget::Pack("pack".into())),
        ];
        d
    }

    fn snap(price: &str, status: BillerStatus) -> SubscriptionSnapshot {
        SubscriptionSnapshot {
            subscription_id: "sub_1".into(),
            customer_id: Some("cus_1".into()),
            owner: None,
            status,
            prices: vec![
                BillerPrice {
                    id: "price_addon".into(),
                    lookup_key: None,
                    quantity: Some(1),
                    period: Some((ts("2026-11-15T00:00:00Z"), ts("2026-12-15T00:00:00Z"))),
                },
                BillerPrice {
                    id: price.into(),
                    lookup_key: None,
                    quantity: Some(4),
                    period: Some((ts("2026-11-01T00:00:00Z"), ts("2026-12-01T00:00:00Z"))),
                },
            ],
            period: None,
            cancel_at_period_end: false,
            cancel_at: None,
            ended_at: None,
            seats: None,
        }
    }

    fn upsert(change: SubscriptionChange) -> UpsertRequest {
        match change {
            SubscriptionChange::Upsert(r) => r,
            other => panic!("expected an upsert, got {other:?}"),
        }
    }

    const NOW: &str = "2026-11-20T00:00:00Z";

    #[test]
    fn the_mapped_item_decides_plan_and_window_not_the_first_item() {
        let r = upsert(subscription_change(
            &doc(),
            Biller::Stripe,
            &snap("price_pro", BillerStatus::Active),
            PastDuePolicy::Keep,
            ts(NOW),
        ));
        assert_eq!(r.plan_id, "pro");
        assert_eq!(r.cycle_start, Some(ts("2026-11-01T00:00:00Z")));
        assert_eq!(
            r.ends_at,
            Some(None),
            "no cancel: a scheduled end is cleared"
        );
        assert_eq!(r.status, Some(SubscriptionStatus::Active));
        assert_eq!(r.source, "stripe");
    }

    #[test]
    fn a_per_seat_plans_quantity_is_the_seats() {
        let now = ts(NOW);
        let team = snap("price_team", BillerStatus::Active);
        let r = upsert(subscription_change(
            &doc(),
            Biller::Stripe,
            &team,
            PastDuePolicy::Keep,
            now,
        ));
        assert_eq!((r.plan_id.as_str(), r.seats), ("team", Some(Some(4))));
        let pro = snap("price_pro", BillerStatus::Active);
        let r = upsert(subscription_change(
            &doc(),
            Biller::Stripe,
            &pro,
            PastDuePolicy::Keep,
            now,
        ));
        assert_eq!(
            r.seats, None,
            "a plan without seats: the quantity is not seats"
        );
        let mut polar = pro.clone();
        polar.seats = Some(7);
        let r = upsert(subscription_change(
            &doc(),
            Biller::Stripe,
            &polar,
            PastDuePolicy::Keep,
            now,
        ));
        assert_eq!(r.seats, Some(Some(7)), "seats given outright");
    }

    #[test]
    fn lookup_keys_map_and_unmapped_prices_change_nothing() {
        let mut s = snap("price_other", BillerStatus::Active);
        let change = subscription_change(&doc(), Biller::Stripe, &s, PastDuePolicy::Keep, ts(NOW));
        assert!(
            matches!(&change, SubscriptionChange::Nothing { note } if note.contains("price_other")),
            "{change:?}"
        );
        s.prices[1].lookup_key = Some("pro_lookup".into());
        let r = upsert(subscription_change(
            &doc(),
            Biller::Stripe,
            &s,
            PastDuePolicy::Keep,
            ts(NOW),
        ));
        assert_eq!(r.plan_id, "pro");
    }

    #[test]
    fn cancels_past_due_and_endings() {
        let d = doc();
        let now = ts(NOW);
        let mut s = snap("price_pro", BillerStatus::Active);
        s.cancel_at_period_end = true;
        let r = upsert(subscription_change(
            &d,
            Biller::Stripe,
            &s,
            PastDuePolicy::Keep,
            now,
        ));
        assert_eq!(
            r.ends_at,
            Some(Some(ts("2026-12-01T00:00:00Z"))),
            "the period end"
        );
        s.cancel_at = Some(ts("2026-11-25T00:00:00Z"));
        let r = upsert(subscription_change(
            &d,
            Biller::Stripe,
            &s,
            PastDuePolicy::Keep,
            now,
        ));
        assert_eq!(r.ends_at, Some(Some(ts("2026-11-25T00:00:00Z"))));

        let due = snap("price_pro", BillerStatus::PastDue);
        let r = upsert(subscription_change(
            &d,
            Biller::Stripe,
            &due,
            PastDuePolicy::Keep,
            now,
        ));
        assert_eq!(r.status, Some(SubscriptionStatus::PastDue));
        let end = subscription_change(&d, Biller::Stripe, &due, PastDuePolicy::End, now);
        assert!(
            matches!(end, SubscriptionChange::End { at } if at == now),
            "{end:?}"
        );

        let mut gone = snap("price_pro", BillerStatus::Ended);
        gone.ended_at = Some(ts("2026-11-19T00:00:00Z"));
        let end = subscription_change(&d, Biller::Stripe, &gone, PastDuePolicy::Keep, now);
        assert!(
            matches!(end, SubscriptionChange::End { at } if at == ts("2026-11-19T00:00:00Z")),
            "{end:?}"
        );
        let waiting = snap("price_pro", BillerStatus::Incomplete);
        let nothing = subscription_change(&d, Biller::Stripe, &waiting, PastDuePolicy::Keep, now);
        assert!(
            matches!(nothing, SubscriptionChange::Nothing { .. }),
            "{nothing:?}"
        );
    }

    #[test]
    fn packs_by_id_or_by_price() {
        let mut d = doc();
        d.credit_packs = vec![crate::plan::CreditPack {
            id: "pack".into(),
            priority: 0,
            expires_after_days: None,
            items: Vec::new(),
        }];
        let mut p = Purchase {
            payment_ref: "pi_1".into(),
            customer_id: None,
            owner: None,
            pack_id: None,
            price_ids: vec!["price_pack".into()],
        };
        assert_eq!(pack_for_purchase(&d, Biller::Stripe, &p), Some("pack"));
        assert_eq!(
            pack_for_purchase(&d, Biller::Polar, &p),
            None,
            "Polar's ids are its own"
        );
        p.pack_id = Some("nope".into());
        assert_eq!(pack_for_purchase(&d, Biller::Stripe, &p), None);
        p.pack_id = Some("pack".into());
        assert_eq!(pack_for_purchase(&d, Biller::Stripe, &p), Some("pack"));
    }
}
