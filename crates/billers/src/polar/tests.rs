use super::*;
use crate::samples::{self, body, with_field, with_type};
use serde_json::json;

const START: i64 = 1_790_812_800; // 2026-10-01T00:00:00Z
const END: i64 = 1_793_491_200; // 2026-11-01T00:00:00Z
const AT: i64 = START + 3;
const WEBHOOK_ID: &str = "msg_2abc";

fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(s).unwrap()
}

fn parse(event: &Value) -> Result<BillerEvent, ParseError> {
    parse_polar(&body(event), WEBHOOK_ID, &Sources::polar_default())
}

fn fact_of(event: &Value) -> BillerFact {
    parse(event).unwrap().fact
}

fn snapshot(event: &Value) -> SubscriptionSnapshot {
    match fact_of(event) {
        BillerFact::Subscription(s) => s,
        other => panic!("not a subscription: {other:?}"),
    }
}

fn note(event: &Value) -> String {
    match fact_of(event) {
        BillerFact::Ignored { note } => note,
        other => panic!("not ignored: {other:?}"),
    }
}

fn sub(event_type: &str, status: &str) -> Value {
    samples::polar_subscription(
        event_type,
        AT,
        "sub_uuid",
        "cus_uuid",
        Some("u_1"),
        "prod_pro",
        status,
        (START, END),
        None,
    )
}

const SKELETON: &str = r#"{ "type": "subscription.updated", "timestamp": "2026-10-01T00:00:03.120Z",
  "data": { "id": "0d3c...-uuid", "status": "active", "amount": 2000, "currency": "usd",
    "recurring_interval": "month", "recurring_interval_count": 1,
    "current_period_start": "2026-10-01T00:00:00Z", "current_period_end": "2026-11-01T00:00:00Z",
    "cancel_at_period_end": false, "canceled_at": null, "ends_at": null, "ended_at": null,
    "trial_start": null, "trial_end": null, "started_at": "2026-09-01T00:00:00Z",
    "customer_id": "5a1e...-uuid", "product_id": "9f7b...-uuid", "checkout_id": null,
    "metadata": {}, "customer": { "id": "5a1e...-uuid", "external_id": "u_42", "email": "a@example.com" },
    "product": { "id": "9f7b...-uuid", "name": "Pro" }, "prices": [ { "id": "c2d4...-uuid" } ],
    "meters": [] } }"#;

#[test]
fn skeleton_subscription_updated_parses_exactly() {
    let event = parse_polar(SKELETON.as_bytes(), WEBHOOK_ID, &Sources::polar_default()).unwrap();
    assert_eq!(event.biller, Biller::Polar);
    assert_eq!(event.event_id, WEBHOOK_ID);
    assert_eq!(event.event_type, "subscription.updated");
    assert_eq!(
        event.created,
        "2026-10-01T00:00:03.120Z".parse::<Timestamp>().unwrap()
    );
    let period = Some((ts(START), ts(END)));
    assert_eq!(
        event.fact,
        BillerFact::Subscription(SubscriptionSnapshot {
            subscription_id: "0d3c...-uuid".into(),
            customer_id: Some("5a1e...-uuid".into()),
            owner: Some(OwnerHint::User("u_42".into())),
            status: BillerStatus::Active,
            prices: vec![BillerPrice {
                id: "9f7b...-uuid".into(),
                lookup_key: None,
                quantity: None,
                period,
            }],
            period,
            cancel_at_period_end: false,
            cancel_at: None,
            ended_at: None,
            seats: None,
        })
    );
}

#[test]
fn sample_matches_the_skeleton_shape() {
    let s = snapshot(&sub("subscription.updated", "active"));
    assert_eq!(s.subscription_id, "sub_uuid");
    assert_eq!(s.customer_id.as_deref(), Some("cus_uuid"));
    assert_eq!(s.prices[0].id, "prod_pro");
    assert_eq!(s.period, Some((ts(START), ts(END))));
}

#[test]
fn statuses_map_to_biller_statuses() {
    let table = [
        ("active", BillerStatus::Active),
        ("trialing", BillerStatus::Trialing),
        ("past_due", BillerStatus::PastDue),
        ("incomplete", BillerStatus::Incomplete),
        ("canceled", BillerStatus::Ended),
        ("unpaid", BillerStatus::Ended),
        ("incomplete_expired", BillerStatus::Ended),
    ];
    for (wire, status) in table {
        assert_eq!(
            snapshot(&sub("subscription.updated", wire)).status,
            status,
            "{wire}"
        );
    }
    assert_eq!(
        note(&sub("subscription.updated", "paused")),
        "unknown Polar subscription status paused"
    );
}

#[test]
fn every_subscription_type_is_a_snapshot() {
    for t in [
        "subscription.created",
        "subscription.active",
        "subscription.updated",
        "subscription.canceled",
        "subscription.uncanceled",
        "subscription.past_due",
    ] {
        let s = snapshot(&sub(t, "active"));
        assert_eq!(s.status, BillerStatus::Active, "{t}");
    }
}

#[test]
fn revoked_is_ended_at_ended_at_else_the_event_time() {
    let s = snapshot(&samples::polar_revoked(
        sub("subscription.updated", "active"),
        START + 60,
    ));
    assert_eq!(s.status, BillerStatus::Ended);
    assert_eq!(s.ended_at, Some(ts(START + 60)));
    let bare = with_type(
        sub("subscription.updated", "active"),
        "subscription.revoked",
    );
    let s = snapshot(&bare);
    assert_eq!(s.status, BillerStatus::Ended);
    assert_eq!(s.ended_at, Some(ts(AT)));
}

#[test]
fn ends_at_is_a_cancel_at_only_without_cancel_at_period_end() {
    let at_period_end =
        samples::polar_cancel(sub("subscription.canceled", "active"), true, Some(END));
    let s = snapshot(&at_period_end);
    assert!(s.cancel_at_period_end);
    assert_eq!(s.cancel_at, None);
    let scheduled = samples::polar_cancel(
        sub("subscription.canceled", "active"),
        false,
        Some(END - 100),
    );
    let s = snapshot(&scheduled);
    assert!(!s.cancel_at_period_end);
    assert_eq!(s.cancel_at, Some(ts(END - 100)));
    let ended = with_field(
        sub("subscription.updated", "canceled"),
        "/data/ended_at",
        json!("2026-10-05T00:00:00Z"),
    );
    assert_eq!(
        snapshot(&ended).ended_at,
        Some("2026-10-05T00:00:00Z".parse().unwrap())
    );
}

#[test]
fn seats_are_the_quantity_and_the_seats() {
    let event = samples::polar_subscription(
        "subscription.updated",
        AT,
        "sub_uuid",
        "cus_uuid",
        Some("u_1"),
        "prod_team",
        "active",
        (START, END),
        Some(5),
    );
    let s = snapshot(&event);
    assert_eq!(s.seats, Some(5));
    assert_eq!(s.prices[0].quantity, Some(5));
}

#[test]
fn ids_fall_back_to_the_nested_objects() {
    let mut event = sub("subscription.updated", "active");
    let data = event["data"].as_object_mut().unwrap();
    data.remove("product_id");
    data.remove("customer_id");
    let s = snapshot(&event);
    assert_eq!(s.prices[0].id, "prod_pro");
    assert_eq!(s.customer_id.as_deref(), Some("cus_uuid"));
    let mut bare = sub("subscription.updated", "active");
    for f in ["product_id", "product", "current_period_end"] {
        bare["data"].as_object_mut().unwrap().remove(f);
    }
    let s = snapshot(&bare);
    assert_eq!(s.prices, vec![]);
    assert_eq!(s.period, None);
}

#[test]
fn owner_from_external_id_metadata_and_account() {
    let anonymous = samples::polar_subscription(
        "subscription.updated",
        AT,
        "s",
        "c",
        None,
        "p",
        "active",
        (START, END),
        None,
    );
    assert_eq!(snapshot(&anonymous).owner, None);
    let by_meta = with_field(anonymous.clone(), "/data/metadata/user_id", json!("u_m"));
    assert_eq!(
        snapshot(&by_meta).owner,
        Some(OwnerHint::User("u_m".into()))
    );
    let account = with_field(
        sub("subscription.updated", "active"),
        "/data/metadata/account_id",
        json!("acc_9"),
    );
    assert_eq!(
        snapshot(&account).owner,
        Some(OwnerHint::Account("acc_9".into()))
    );
}

#[test]
fn one_time_order_is_a_purchase() {
    let event = samples::polar_order_paid(
        AT,
        "ord_1",
        "cus_uuid",
        Some("u_1"),
        "prod_pack",
        "purchase",
        Some("pack_small"),
    );
    let parsed = parse(&event).unwrap();
    assert_eq!(parsed.event_type, "order.paid");
    assert_eq!(parsed.created, ts(AT));
    assert_eq!(
        parsed.fact,
        BillerFact::Purchase(Purchase {
            payment_ref: "ord_1".into(),
            customer_id: Some("cus_uuid".into()),
            owner: Some(OwnerHint::User("u_1".into())),
            pack_id: Some("pack_small".into()),
            price_ids: vec!["prod_pack".into()],
        })
    );
}

#[test]
fn subscription_orders_are_ignored() {
    for reason in [
        "subscription_create",
        "subscription_cycle",
        "subscription_update",
    ] {
        let event =
            samples::polar_order_paid(AT, "ord_1", "c", Some("u_1"), "prod_pro", reason, None);
        assert_eq!(
            note(&event),
            format!("order for a subscription (billing_reason {reason}): the subscription's own events move the plan")
        );
    }
    let created = with_type(
        samples::polar_order_paid(AT, "ord_1", "c", Some("u_1"), "p", "purchase", None),
        "order.created",
    );
    assert_eq!(note(&created), "Polar event type order.created is not used");
}

#[test]
fn customers_with_an_external_id_are_linked() {
    for t in ["customer.created", "customer.updated"] {
        let event = samples::polar_customer(t, AT, "cus_uuid", Some("u_5"));
        assert_eq!(
            fact_of(&event),
            BillerFact::Customer {
                customer_id: "cus_uuid".into(),
                owner: OwnerHint::User("u_5".into())
            }
        );
    }
    let none = samples::polar_customer("customer.created", AT, "cus_uuid", None);
    assert_eq!(note(&none), "the customer has no external_id");
    let account = with_field(
        samples::polar_customer("customer.updated", AT, "cus_uuid", Some("u_5")),
        "/data/metadata/account_id",
        json!("acc_1"),
    );
    assert_eq!(
        fact_of(&account),
        BillerFact::Customer {
            customer_id: "cus_uuid".into(),
            owner: OwnerHint::Account("acc_1".into())
        }
    );
    let deleted = samples::polar_customer("customer.deleted", AT, "cus_uuid", Some("u_5"));
    assert_eq!(
        note(&deleted),
        "Polar event type customer.deleted is not used"
    );
}

#[test]
fn broken_bodies_are_parse_errors() {
    let event = sub("subscription.updated", "active");
    let b = body(&event);
    let s = Sources::polar_default();
    assert_eq!(
        parse_polar(&b, "", &s),
        Err(ParseError::MissingField("webhook-id"))
    );
    assert_eq!(
        parse_polar(&b, "a\nb", &s),
        Err(ParseError::BadField("webhook-id"))
    );
    assert_eq!(parse_polar(b"{", WEBHOOK_ID, &s), Err(ParseError::NotJson));
    let bad_time = with_field(event.clone(), "/timestamp", json!("yesterday"));
    assert_eq!(parse(&bad_time), Err(ParseError::BadField("timestamp")));
    for (field, missing) in [
        ("type", "type"),
        ("timestamp", "timestamp"),
        ("data", "data"),
    ] {
        let mut v = event.clone();
        v.as_object_mut().unwrap().remove(field);
        assert_eq!(parse(&v), Err(ParseError::MissingField(missing)));
    }
    let bad_period = with_field(event.clone(), "/data/current_period_start", json!("soon"));
    assert_eq!(
        parse(&bad_period),
        Err(ParseError::BadField("data (subscription)"))
    );
    let mut no_id = event;
    no_id["data"].as_object_mut().unwrap().remove("id");
    assert_eq!(parse(&no_id), Err(ParseError::MissingField("data.id")));
}
