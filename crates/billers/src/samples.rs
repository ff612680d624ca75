//! Real-shaped biller payloads for tests: this crate's and other crates' black-box tests build
//! Stripe and Polar bodies here, sign them with [`crate::verify::sign_stripe`] or
//! [`crate::verify::sign_standard`], and post them.
//!
//! Shapes follow billers.md §2.7 (Stripe, basil and later, plus the pre-basil period) and §4.4
//! (Polar). Times are unix seconds; Polar's are rendered as RFC 3339. Builders return a
//! `serde_json::Value`; the `with_*` functions take one and return it changed, so variants
//! chain: `stripe_cancel_at_period_end(stripe_subscription(..), true)`.

use jiff::Timestamp;
use serde_json::{json, Map, Value};

/// The API version basil-shaped Stripe samples carry.
pub const STRIPE_API_VERSION: &str = "2026-09-30.endive";
/// The API version pre-basil Stripe samples carry (period on the subscription only).
pub const STRIPE_API_VERSION_PRE_BASIL: &str = "2024-06-20";

/// A Stripe `customer.subscription.updated` event for a one-item subscription.
///
/// - `event_id`, `created`: the event's `id` (`evt_…`) and `created` (unix seconds).
/// - `sub_id`, `customer`: the subscription's `id` (`sub_…`) and `customer` (`cus_…`).
/// - `user_id`: put in the subscription's `metadata.user_id` when given (`metadata` is `{}`
///   otherwise).
/// - `price_id`: the item's `price.id`; its `lookup_key` is `None` (see [`with_field`]).
/// - `status`: Stripe's status string (`active`, `trialing`, `past_due`, `canceled`, …).
/// - `period`: `(current_period_start, current_period_end)`, unix seconds.
/// - `basil`: `true` puts the period on the item only (API [`STRIPE_API_VERSION`]); `false`
///   puts it on the subscription only (API [`STRIPE_API_VERSION_PRE_BASIL`]).
///
/// Change the type with [`with_type`] (`customer.subscription.created`, …), and see
/// [`stripe_cancel_at_period_end`], [`stripe_cancel_at`] and [`stripe_deleted`].
#[allow(clippy::too_many_arguments)]
pub fn stripe_subscription(
    event_id: &str,
    created: i64,
    sub_id: &str,
    customer: &str,
    user_id: Option<&str>,
    price_id: &str,
    status: &str,
    period: (i64, i64),
    basil: bool,
) -> Value {
    let (start, end) = period;
    let mut item = json!({
        "id": format!("si_{sub_id}"), "object": "subscription_item", "quantity": 1,
        "price": { "id": price_id, "lookup_key": null, "product": "prod_P",
                   "recurring": { "interval": "month", "interval_count": 1,
                                  "usage_type": "licensed", "meter": null } }
    });
    let mut subscription = json!({
        "id": sub_id, "object": "subscription", "customer": customer,
        "status": status, "cancel_at_period_end": false, "cancel_at": null,
        "canceled_at": null, "ended_at": null, "billing_cycle_anchor": start,
        "trial_start": null, "trial_end": null, "start_date": start,
        "billing_mode": { "type": "flexible" },
        "latest_invoice": format!("in_{event_id}"), "metadata": metadata(&[("user_id", user_id)]),
    });
    let target = if basil { &mut item } else { &mut subscription };
    target["current_period_start"] = json!(start);
    target["current_period_end"] = json!(end);
    subscription["items"] = json!({ "object": "list", "data": [item] });
    json!({
        "id": event_id, "object": "event",
        "api_version": if basil { STRIPE_API_VERSION } else { STRIPE_API_VERSION_PRE_BASIL },
        "created": created, "livemode": false, "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": "customer.subscription.updated",
        "data": { "object": subscription }
    })
}

/// Sets a Stripe subscription event's `cancel_at_period_end`.
pub fn stripe_cancel_at_period_end(event: Value, on: bool) -> Value {
    with_field(event, "/data/object/cancel_at_period_end", json!(on))
}

/// Sets a Stripe subscription event's `cancel_at` (unix seconds; `None` clears it).
pub fn stripe_cancel_at(event: Value, at: Option<i64>) -> Value {
    with_field(event, "/data/object/cancel_at", json!(at))
}

/// Makes a Stripe subscription event a `customer.subscription.deleted`: status `canceled`,
/// `ended_at` and `canceled_at` set to `ended_at` (unix seconds).
pub fn stripe_deleted(event: Value, ended_at: i64) -> Value {
    let event = with_type(event, "customer.subscription.deleted");
    let event = with_field(event, "/data/object/status", json!("canceled"));
    let event = with_field(event, "/data/object/canceled_at", json!(ended_at));
    with_field(event, "/data/object/ended_at", json!(ended_at))
}

/// A Stripe `checkout.session.completed` event for a one-time payment (`mode: "payment"`,
/// `payment_status: "paid"`).
///
/// - `event_id`, `created`: the event's id and unix seconds.
/// - `session_id`: the session's `id` (`cs_…`), the purchase's reference when there is no
///   payment intent.
/// - `customer`: the session's `customer` (`null` for a guest checkout).
/// - `user_id`: the session's `client_reference_id` (`null` when `None`).
/// - `payment_intent`: the session's `payment_intent` (`pi_…`, `null` when `None`).
/// - `pack_id`, `price_id`: put in `metadata.pack_id` / `metadata.price_id` when given.
///
/// Set `payment_status` to `unpaid` with [`with_field`] for an asynchronous payment, and the
/// type to `checkout.session.async_payment_succeeded` with [`with_type`].
#[allow(clippy::too_many_arguments)]
pub fn stripe_checkout_payment(
    event_id: &str,
    created: i64,
    session_id: &str,
    customer: Option<&str>,
    user_id: Option<&str>,
    payment_intent: Option<&str>,
    pack_id: Option<&str>,
    price_id: Option<&str>,
) -> Value {
    stripe_checkout(
        event_id,
        created,
        json!({ "id": session_id, "object": "checkout.session", "mode": "payment",
            "client_reference_id": user_id, "customer": customer, "subscription": null,
            "payment_intent": payment_intent, "status": "complete", "payment_status": "paid",
            "metadata": metadata(&[("pack_id", pack_id), ("price_id", price_id)]) }),
    )
}

/// A Stripe `checkout.session.completed` event for a subscription (`mode: "subscription"`),
/// the §2.7 skeleton with a `created`.
///
/// - `event_id`, `created`: the event's id and unix seconds.
/// - `session_id`, `customer`, `sub_id`: the session's `id`, `customer` (`cus_…`) and
///   `subscription` (`sub_…`).
/// - `user_id`: the session's `client_reference_id` (`null` when `None`).
pub fn stripe_checkout_subscription(
    event_id: &str,
    created: i64,
    session_id: &str,
    customer: &str,
    user_id: Option<&str>,
    sub_id: &str,
) -> Value {
    stripe_checkout(
        event_id,
        created,
        json!({ "id": session_id, "object": "checkout.session", "mode": "subscription",
            "client_reference_id": user_id, "customer": customer, "subscription": sub_id,
            "status": "complete", "payment_status": "paid", "metadata": {} }),
    )
}

fn stripe_checkout(event_id: &str, created: i64, session: Value) -> Value {
    json!({ "id": event_id, "object": "event", "api_version": STRIPE_API_VERSION,
        "created": created, "livemode": false, "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": "checkout.session.completed", "data": { "object": session } })
}

/// A Stripe `invoice.paid` event, basil shape: the subscription link under
/// `parent.subscription_details`, the price under `lines.data[].pricing.price_details`.
///
/// - `event_id`, `created`: the event's id and unix seconds.
/// - `invoice_id`, `customer`, `sub_id`, `price_id`: the invoice's `id`, `customer`, its
///   subscription and the line's price.
/// - `period`: the line's service period `(start, end)`, unix seconds; the invoice's own
///   `period_start/end` look one period back, as Stripe's do.
/// - `user_id`: put in `parent.subscription_details.metadata.user_id` when given.
#[allow(clippy::too_many_arguments)]
pub fn stripe_invoice_paid(
    event_id: &str,
    created: i64,
    invoice_id: &str,
    customer: &str,
    sub_id: &str,
    price_id: &str,
    period: (i64, i64),
    user_id: Option<&str>,
) -> Value {
    let (start, end) = period;
    let back = start - (end - start);
    json!({ "id": event_id, "object": "event", "api_version": STRIPE_API_VERSION,
      "type": "invoice.paid", "created": created,
      "livemode": false, "pending_webhooks": 1,
      "request": { "id": null, "idempotency_key": null },
      "data": { "object": {
        "id": invoice_id, "object": "invoice", "customer": customer, "status": "paid",
        "billing_reason": "subscription_cycle", "amount_paid": 2000, "currency": "usd",
        "period_start": back, "period_end": start,
        "parent": { "type": "subscription_details",
                    "subscription_details": { "subscription": sub_id,
                                              "metadata": metadata(&[("user_id", user_id)]) } },
        "lines": { "data": [ {
          "id": format!("il_{invoice_id}"), "period": { "start": start, "end": end },
          "parent": { "type": "subscription_item_details",
                      "subscription_item_details": { "subscription": sub_id,
                                                     "subscription_item": format!("si_{sub_id}") } },
          "pricing": { "type": "price_details",
                       "price_details": { "price": price_id, "product": "prod_P" } }
        } ] } } } })
}

/// A Polar subscription event (§4.4 shape).
///
/// - `event_type`: `subscription.created`, `.updated`, `.active`, `.canceled`, …
///   (see [`polar_revoked`] for `.revoked`).
/// - `timestamp`: the event's time, unix seconds (rendered RFC 3339).
/// - `sub_id`, `customer_id`, `product_id`: the subscription's `id`, `customer_id` (also
///   `customer.id`) and `product_id` (also `product.id`).
/// - `external_id`: the customer's `external_id` (the app's user id; `null` when `None`).
/// - `status`: Polar's status string (`active`, `trialing`, `past_due`, `canceled`, …).
/// - `period`: `(current_period_start, current_period_end)`, unix seconds.
/// - `seats`: the `seats` field (`null` when `None`).
#[allow(clippy::too_many_arguments)]
pub fn polar_subscription(
    event_type: &str,
    timestamp: i64,
    sub_id: &str,
    customer_id: &str,
    external_id: Option<&str>,
    product_id: &str,
    status: &str,
    period: (i64, i64),
    seats: Option<u64>,
) -> Value {
    let (start, end) = period;
    json!({ "type": event_type, "timestamp": rfc3339(timestamp),
      "data": { "id": sub_id, "status": status, "amount": 2000, "currency": "usd",
        "recurring_interval": "month", "recurring_interval_count": 1,
        "current_period_start": rfc3339(start), "current_period_end": rfc3339(end),
        "cancel_at_period_end": false, "canceled_at": null, "ends_at": null, "ended_at": null,
        "trial_start": null, "trial_end": null, "started_at": rfc3339(start),
        "customer_id": customer_id, "product_id": product_id, "checkout_id": null,
        "seats": seats,
        "metadata": {}, "customer": { "id": customer_id, "external_id": external_id,
                                      "email": "a@example.com" },
        "product": { "id": product_id, "name": "Pro" }, "prices": [ { "id": format!("price_{product_id}") } ],
        "meters": [] } })
}

/// Sets a Polar subscription's cancellation: `cancel_at_period_end`, `ends_at` (unix seconds,
/// `None` clears it) and `canceled_at` (the event's time when either is set).
pub fn polar_cancel(event: Value, cancel_at_period_end: bool, ends_at: Option<i64>) -> Value {
    let canceled_at = (cancel_at_period_end || ends_at.is_some())
        .then(|| event.get("timestamp").cloned())
        .flatten();
    let event = with_field(
        event,
        "/data/cancel_at_period_end",
        json!(cancel_at_period_end),
    );
    let event = with_field(event, "/data/ends_at", json!(ends_at.map(rfc3339)));
    with_field(event, "/data/canceled_at", json!(canceled_at))
}

/// Makes a Polar subscription event a `subscription.revoked`: status `canceled`, `ended_at`
/// (unix seconds) set.
pub fn polar_revoked(event: Value, ended_at: i64) -> Value {
    let event = with_type(event, "subscription.revoked");
    let event = with_field(event, "/data/status", json!("canceled"));
    with_field(event, "/data/ended_at", json!(rfc3339(ended_at)))
}

/// A Polar `order.paid` event.
///
/// - `timestamp`: the event's time, unix seconds.
/// - `order_id`: the order's `id`, the purchase's reference.
/// - `customer_id`, `external_id`: the order's `customer_id` and its customer's `external_id`.
/// - `product_id`: what was bought.
/// - `billing_reason`: `purchase` for a one-time order; `subscription_create`,
///   `subscription_cycle`, `subscription_update` for subscription orders.
/// - `pack_id`: put in `metadata.pack_id` when given.
#[allow(clippy::too_many_arguments)]
pub fn polar_order_paid(
    timestamp: i64,
    order_id: &str,
    customer_id: &str,
    external_id: Option<&str>,
    product_id: &str,
    billing_reason: &str,
    pack_id: Option<&str>,
) -> Value {
    json!({ "type": "order.paid", "timestamp": rfc3339(timestamp),
      "data": { "id": order_id, "status": "paid", "paid": true, "amount": 2000,
        "currency": "usd", "billing_reason": billing_reason, "customer_id": customer_id,
        "product_id": product_id, "subscription_id": null, "checkout_id": null,
        "created_at": rfc3339(timestamp),
        "metadata": metadata(&[("pack_id", pack_id)]),
        "customer": { "id": customer_id, "external_id": external_id, "email": "a@example.com" },
        "product": { "id": product_id, "name": "Pack" } } })
}

/// A Polar `customer.created` or `customer.updated` event (`event_type`) at `timestamp`
/// (unix seconds) for `customer_id`, with `external_id` (`null` when `None`).
pub fn polar_customer(
    event_type: &str,
    timestamp: i64,
    customer_id: &str,
    external_id: Option<&str>,
) -> Value {
    json!({ "type": event_type, "timestamp": rfc3339(timestamp),
      "data": { "id": customer_id, "external_id": external_id, "email": "a@example.com",
        "name": null, "metadata": {} } })
}

/// Sets an event's `type`.
pub fn with_type(event: Value, event_type: &str) -> Value {
    with_field(event, "/type", json!(event_type))
}

/// Sets the value at a JSON pointer (`/data/object/metadata/account_id`,
/// `/data/object/items/data/0/quantity`), creating missing object keys on the way; a step
/// into a scalar or past an array's end leaves `event` unchanged.
pub fn with_field(mut event: Value, pointer: &str, value: Value) -> Value {
    let keys: Vec<&str> = pointer.split('/').skip(1).collect();
    set_at(&mut event, &keys, value);
    event
}

fn set_at(slot: &mut Value, keys: &[&str], value: Value) {
    match keys.split_first() {
        None => *slot = value,
        Some((key, rest)) => match slot {
            Value::Object(map) => {
                let next = map
                    .entry(key.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                set_at(next, rest, value);
            }
            Value::Array(items) => {
                if let Some(next) = key.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    set_at(next, rest, value);
                }
            }
            _ => {}
        },
    }
}

/// The serialized body of a sample, as a biller would post it.
pub fn body(event: &Value) -> Vec<u8> {
    event.to_string().into_bytes()
}

/// A metadata object holding the given entries that are present.
fn metadata(entries: &[(&str, Option<&str>)]) -> Value {
    let map: Map<String, Value> = entries
        .iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), json!(v))))
        .collect();
    Value::Object(map)
}

/// Unix seconds as RFC 3339 (`2026-10-01T00:00:00Z`); out of range renders as the bare number,
/// which the parser refuses.
fn rfc3339(seconds: i64) -> String {
    Timestamp::from_second(seconds).map_or_else(|_| seconds.to_string(), |t| t.to_string())
}
