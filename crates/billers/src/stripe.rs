//! Reads a verified Stripe event into a [`BillerEvent`].
//!
//! Stripe renders `data.object` with the endpoint's API version, and fields move between
//! versions (basil moved the billing period from the subscription onto its items), so the
//! structs here hold only what Tollgate uses, every field optional: an unknown or missing
//! field never fails a delivery. Only the envelope's `id`, `type` and `created` are required.

use crate::error::ParseError;
use crate::sources::{clean_id, is_clean_id, resolve, Sources};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;
use tollgate_core::biller::{
    Biller, BillerEvent, BillerFact, BillerPrice, BillerStatus, Purchase, SubscriptionSnapshot,
};

pub use crate::sources::{ACCOUNT_ID_FROM, STRIPE_USER_ID_FROM};

/// Why invoices are acknowledged and not applied.
const INVOICE_NOTE: &str = "an invoice never moves a window; the subscription's own events do";

/// Parses a verified Stripe event body; `sources` says where the app's subject is found in
/// `data.object`.
pub fn parse_stripe(body: &[u8], sources: &Sources) -> Result<BillerEvent, ParseError> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| ParseError::from_json(&e, "event"))?;
    let event_id = envelope.id.ok_or(ParseError::MissingField("id"))?;
    if !is_clean_id(&event_id) {
        return Err(ParseError::BadField("id"));
    }
    let event_type = envelope
        .event_type
        .ok_or(ParseError::MissingField("type"))?;
    let created = envelope
        .created
        .ok_or(ParseError::MissingField("created"))?;
    let created = unix(created, "created")?;
    let object = envelope.data.and_then(|d| d.object);
    let fact = fact(&event_type, object.as_ref(), created, sources)?;
    Ok(BillerEvent {
        biller: Biller::Stripe,
        event_id,
        event_type,
        created,
        fact,
    })
}

/// What an event type says, reading `data.object` only for the types Tollgate applies.
fn fact(
    event_type: &str,
    object: Option<&Value>,
    created: Timestamp,
    sources: &Sources,
) -> Result<BillerFact, ParseError> {
    let object = || object.ok_or(ParseError::MissingField("data.object"));
    match event_type {
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.paused"
        | "customer.subscription.resumed" => subscription(object()?, false, created, sources),
        "customer.subscription.deleted" => subscription(object()?, true, created, sources),
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            checkout_session(object()?, sources)
        }
        t if t.starts_with("invoice.") => Ok(ignored(INVOICE_NOTE)),
        t => Ok(ignored(format!("Stripe event type {t} is not used"))),
    }
}

#[derive(Deserialize)]
struct Envelope {
    id: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    created: Option<i64>,
    data: Option<EnvelopeData>,
}

#[derive(Deserialize)]
struct EnvelopeData {
    object: Option<Value>,
}

#[derive(Deserialize)]
struct StripeSubscription {
    id: Option<String>,
    /// A `cus_…` id, or the expanded customer object.
    customer: Option<Value>,
    status: Option<String>,
    cancel_at_period_end: Option<bool>,
    cancel_at: Option<i64>,
    ended_at: Option<i64>,
    /// Before basil only; basil and later put the period on the items.
    current_period_start: Option<i64>,
    current_period_end: Option<i64>,
    items: Option<List<StripeItem>>,
}

#[derive(Deserialize)]
struct List<T> {
    data: Option<Vec<T>>,
}

#[derive(Deserialize)]
struct StripeItem {
    quantity: Option<u64>,
    current_period_start: Option<i64>,
    current_period_end: Option<i64>,
    price: Option<StripePrice>,
    /// The legacy plan object, for subscriptions made before prices.
    plan: Option<StripePlan>,
}

#[derive(Deserialize)]
struct StripePrice {
    id: Option<String>,
    lookup_key: Option<String>,
}

#[derive(Deserialize)]
struct StripePlan {
    id: Option<String>,
}

/// A `customer.subscription.*` snapshot; `deleted` forces the end (with `ended_at`, else the
/// event's time).
fn subscription(
    object: &Value,
    deleted: bool,
    created: Timestamp,
    sources: &Sources,
) -> Result<BillerFact, ParseError> {
    let sub = StripeSubscription::deserialize(object)
        .map_err(|e| ParseError::from_json(&e, "data.object (subscription)"))?;
    let subscription_id = sub.id.ok_or(ParseError::MissingField("data.object.id"))?;
    let ended_at = opt_unix(sub.ended_at, "data.object.ended_at")?;
    let status = if deleted {
        BillerStatus::Ended
    } else {
        let status = sub
            .status
            .ok_or(ParseError::MissingField("data.object.status"))?;
        match status_of(&status) {
            Some(s) => s,
            None => {
                return Ok(ignored(format!(
                    "unknown Stripe subscription status {status}"
                )))
            }
        }
    };
    let top_period = period(
        sub.current_period_start,
        sub.current_period_end,
        "data.object.current_period_start/end",
    )?;
    let prices = sub
        .items
        .and_then(|l| l.data)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|item| price(item, top_period).transpose())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(BillerFact::Subscription(SubscriptionSnapshot {
        subscription_id,
        customer_id: sub.customer.as_ref().and_then(id_of),
        owner: sources.owner(object),
        status,
        prices,
        period: top_period,
        cancel_at_period_end: sub.cancel_at_period_end.unwrap_or(false),
        cancel_at: opt_unix(sub.cancel_at, "data.object.cancel_at")?,
        ended_at: if deleted {
            Some(ended_at.unwrap_or(created))
        } else {
            ended_at
        },
        seats: None,
    }))
}

/// One subscription item as a price; an item with neither a price nor a plan id is skipped
/// (nothing could map it). Its period is its own, else the subscription's (before basil).
fn price(
    item: StripeItem,
    top_period: Option<(Timestamp, Timestamp)>,
) -> Result<Option<BillerPrice>, ParseError> {
    let (id, lookup_key) = match item.price {
        Some(StripePrice {
            id: Some(id),
            lookup_key,
        }) => (id, lookup_key),
        Some(StripePrice { id: None, .. }) | None => match item.plan.and_then(|p| p.id) {
            Some(id) => (id, None),
            None => return Ok(None),
        },
    };
    let own = period(
        item.current_period_start,
        item.current_period_end,
        "data.object.items.data[].current_period_start/end",
    )?;
    Ok(Some(BillerPrice {
        id,
        lookup_key,
        quantity: item.quantity,
        period: own.or(top_period),
    }))
}

/// Stripe's subscription statuses, reduced; `None` for one Tollgate does not know.
fn status_of(status: &str) -> Option<BillerStatus> {
    Some(match status {
        "active" => BillerStatus::Active,
        "trialing" => BillerStatus::Trialing,
        "past_due" => BillerStatus::PastDue,
        "incomplete" => BillerStatus::Incomplete,
        "unpaid" | "canceled" | "incomplete_expired" => BillerStatus::Ended,
        "paused" => BillerStatus::Paused,
        _ => return None,
    })
}

#[derive(Deserialize)]
struct CheckoutSession {
    id: Option<String>,
    mode: Option<String>,
    payment_status: Option<String>,
    customer: Option<Value>,
    payment_intent: Option<Value>,
}

/// A completed Checkout session: a paid one-time payment is a purchase; a subscription
/// checkout links its customer to the subject.
fn checkout_session(object: &Value, sources: &Sources) -> Result<BillerFact, ParseError> {
    let session = CheckoutSession::deserialize(object)
        .map_err(|e| ParseError::from_json(&e, "data.object (checkout session)"))?;
    let session_id = session
        .id
        .ok_or(ParseError::MissingField("data.object.id"))?;
    let customer_id = session.customer.as_ref().and_then(id_of);
    let owner = sources.owner(object);
    match session.mode.as_deref() {
        Some("payment") => match session.payment_status.as_deref() {
            Some("paid") => Ok(BillerFact::Purchase(Purchase {
                payment_ref: session
                    .payment_intent
                    .as_ref()
                    .and_then(id_of)
                    .unwrap_or(session_id),
                customer_id,
                owner,
                pack_id: metadata_id(object, "metadata.pack_id"),
                price_ids: metadata_id(object, "metadata.price_id")
                    .into_iter()
                    .collect(),
            })),
            other => Ok(ignored(format!(
                "the checkout session is not paid (payment_status {})",
                other.unwrap_or("missing")
            ))),
        },
        Some("subscription") => match (customer_id, owner) {
            (Some(customer_id), Some(owner)) => Ok(BillerFact::Customer { customer_id, owner }),
            (None, _) => Ok(ignored("the subscription checkout session has no customer")),
            (Some(_), None) => Ok(ignored(format!(
                "no user id found in the checkout session by {}",
                sources.user_paths()
            ))),
        },
        other => Ok(ignored(format!(
            "checkout session mode {} is not used",
            other.unwrap_or("missing")
        ))),
    }
}

/// An id that is either a string or an expanded object's `id`.
fn id_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// A usable id at a dotted path of the object (`metadata.pack_id`).
fn metadata_id(object: &Value, path: &str) -> Option<String> {
    resolve(object, path).and_then(clean_id).map(str::to_string)
}

/// Unix seconds as a timestamp; out of range is a bad field.
fn unix(seconds: i64, field: &'static str) -> Result<Timestamp, ParseError> {
    Timestamp::from_second(seconds).map_err(|_| ParseError::BadField(field))
}

fn opt_unix(seconds: Option<i64>, field: &'static str) -> Result<Option<Timestamp>, ParseError> {
    seconds.map(|s| unix(s, field)).transpose()
}

/// A period when both ends are present.
fn period(
    start: Option<i64>,
    end: Option<i64>,
    field: &'static str,
) -> Result<Option<(Timestamp, Timestamp)>, ParseError> {
    match (start, end) {
        (Some(start), Some(end)) => Ok(Some((unix(start, field)?, unix(end, field)?))),
        _ => Ok(None),
    }
}

fn ignored(note: impl Into<String>) -> BillerFact {
    BillerFact::Ignored { note: note.into() }
}

#[cfg(test)]
mod tests;
