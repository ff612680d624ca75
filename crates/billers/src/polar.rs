//! Reads a verified Polar event into a [`BillerEvent`].
//!
//! Polar's body is `{"type", "timestamp", "data"}` (Standard Webhooks); the event id is the
//! `webhook-id` header, stable across retries. As for Stripe, the structs hold only what
//! Tollgate uses, every field optional.

use crate::error::ParseError;
use crate::sources::{clean_id, is_clean_id, resolve, Sources};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;
use tollgate_core::biller::{
    Biller, BillerEvent, BillerFact, BillerPrice, BillerStatus, OwnerHint, Purchase,
    SubscriptionSnapshot,
};

pub use crate::sources::{ACCOUNT_ID_FROM, POLAR_USER_ID_FROM};

/// Parses a verified Polar body; `webhook_id` is the delivery's `webhook-id` header and
/// `sources` says where the app's subject is found in `data`.
pub fn parse_polar(
    body: &[u8],
    webhook_id: &str,
    sources: &Sources,
) -> Result<BillerEvent, ParseError> {
    if webhook_id.is_empty() {
        return Err(ParseError::MissingField("webhook-id"));
    }
    if !is_clean_id(webhook_id) {
        return Err(ParseError::BadField("webhook-id"));
    }
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| ParseError::from_json(&e, "event"))?;
    let event_type = envelope
        .event_type
        .ok_or(ParseError::MissingField("type"))?;
    let created = envelope
        .timestamp
        .ok_or(ParseError::MissingField("timestamp"))?;
    let created: Timestamp = created
        .parse()
        .map_err(|_| ParseError::BadField("timestamp"))?;
    let fact = fact(&event_type, envelope.data.as_ref(), created, sources)?;
    Ok(BillerEvent {
        biller: Biller::Polar,
        event_id: webhook_id.to_string(),
        event_type,
        created,
        fact,
    })
}

fn fact(
    event_type: &str,
    data: Option<&Value>,
    created: Timestamp,
    sources: &Sources,
) -> Result<BillerFact, ParseError> {
    let data = || data.ok_or(ParseError::MissingField("data"));
    match event_type {
        "subscription.revoked" => subscription(data()?, true, created, sources),
        t if t.starts_with("subscription.") => subscription(data()?, false, created, sources),
        "order.paid" => order_paid(data()?, sources),
        "customer.created" | "customer.updated" => customer(data()?, sources),
        t => Ok(ignored(format!("Polar event type {t} is not used"))),
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// RFC 3339.
    timestamp: Option<String>,
    data: Option<Value>,
}

#[derive(Deserialize)]
struct PolarSubscription {
    id: Option<String>,
    customer_id: Option<String>,
    status: Option<String>,
    current_period_start: Option<Timestamp>,
    current_period_end: Option<Timestamp>,
    cancel_at_period_end: Option<bool>,
    ends_at: Option<Timestamp>,
    ended_at: Option<Timestamp>,
    product_id: Option<String>,
    seats: Option<u64>,
    customer: Option<IdOnly>,
    product: Option<IdOnly>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: Option<String>,
}

/// A `subscription.*` snapshot; `revoked` forces the end (with `ended_at`, else the event's
/// time). Polar sells one product per subscription: it is the one price, its quantity the
/// seats.
fn subscription(
    data: &Value,
    revoked: bool,
    created: Timestamp,
    sources: &Sources,
) -> Result<BillerFact, ParseError> {
    let sub = PolarSubscription::deserialize(data)
        .map_err(|e| ParseError::from_json(&e, "data (subscription)"))?;
    let subscription_id = sub.id.ok_or(ParseError::MissingField("data.id"))?;
    let status = if revoked {
        BillerStatus::Ended
    } else {
        let status = sub.status.ok_or(ParseError::MissingField("data.status"))?;
        match status_of(&status) {
            Some(s) => s,
            None => {
                return Ok(ignored(format!(
                    "unknown Polar subscription status {status}"
                )))
            }
        }
    };
    let period = sub.current_period_start.zip(sub.current_period_end);
    let product_id = sub.product_id.or(sub.product.and_then(|p| p.id));
    let prices = product_id
        .map(|id| BillerPrice {
            id,
            lookup_key: None,
            quantity: sub.seats,
            period,
        })
        .into_iter()
        .collect();
    let cancel_at_period_end = sub.cancel_at_period_end.unwrap_or(false);
    Ok(BillerFact::Subscription(SubscriptionSnapshot {
        subscription_id,
        customer_id: sub.customer_id.or(sub.customer.and_then(|c| c.id)),
        owner: sources.owner(data),
        status,
        prices,
        period,
        cancel_at_period_end,
        // With cancel_at_period_end, ends_at is the period end the core derives itself.
        cancel_at: if cancel_at_period_end {
            None
        } else {
            sub.ends_at
        },
        ended_at: if revoked {
            Some(sub.ended_at.unwrap_or(created))
        } else {
            sub.ended_at
        },
        seats: sub.seats,
    }))
}

/// Polar's subscription statuses, reduced; `None` for one Tollgate does not know.
fn status_of(status: &str) -> Option<BillerStatus> {
    Some(match status {
        "active" => BillerStatus::Active,
        "trialing" => BillerStatus::Trialing,
        "past_due" => BillerStatus::PastDue,
        "incomplete" => BillerStatus::Incomplete,
        "canceled" | "unpaid" | "incomplete_expired" => BillerStatus::Ended,
        _ => return None,
    })
}

#[derive(Deserialize)]
struct PolarOrder {
    id: Option<String>,
    billing_reason: Option<String>,
    customer_id: Option<String>,
    product_id: Option<String>,
}

/// A paid order: a one-time purchase, unless it pays a subscription (whose own events move
/// the plan).
fn order_paid(data: &Value, sources: &Sources) -> Result<BillerFact, ParseError> {
    let order =
        PolarOrder::deserialize(data).map_err(|e| ParseError::from_json(&e, "data (order)"))?;
    let order_id = order.id.ok_or(ParseError::MissingField("data.id"))?;
    if let Some(reason) = order
        .billing_reason
        .as_deref()
        .filter(|r| r.starts_with("subscription"))
    {
        return Ok(ignored(format!(
            "order for a subscription (billing_reason {reason}): the subscription's own events move the plan"
        )));
    }
    Ok(BillerFact::Purchase(Purchase {
        payment_ref: order_id,
        customer_id: order.customer_id,
        owner: sources.owner(data),
        pack_id: resolve(data, "metadata.pack_id")
            .and_then(clean_id)
            .map(str::to_string),
        price_ids: order.product_id.into_iter().collect(),
    }))
}

#[derive(Deserialize)]
struct PolarCustomer {
    id: Option<String>,
    external_id: Option<String>,
}

/// A customer with an `external_id` is linked to that user (or to the account an account
/// path names).
fn customer(data: &Value, sources: &Sources) -> Result<BillerFact, ParseError> {
    let customer = PolarCustomer::deserialize(data)
        .map_err(|e| ParseError::from_json(&e, "data (customer)"))?;
    let customer_id = customer.id.ok_or(ParseError::MissingField("data.id"))?;
    let account = match sources.owner(data) {
        Some(account @ OwnerHint::Account(_)) => Some(account),
        _ => None,
    };
    let user = customer
        .external_id
        .filter(|id| is_clean_id(id))
        .map(OwnerHint::User);
    match account.or(user) {
        Some(owner) => Ok(BillerFact::Customer { customer_id, owner }),
        None => Ok(ignored("the customer has no external_id")),
    }
}

fn ignored(note: impl Into<String>) -> BillerFact {
    BillerFact::Ignored { note: note.into() }
}

#[cfg(test)]
mod tests;
