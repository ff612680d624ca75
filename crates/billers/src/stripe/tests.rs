use super::*;
use crate::samples::{self, body, with_field, with_type};
use serde_json::json;
use tollgate_core::biller::OwnerHint;

const START: i64 = 1_767_225_600;
const END: i64 = 1_769_904_000;
const CREATED: i64 = 1_767_225_700;

fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(s).unwrap()
}

fn parse(event: &Value) -> Result<BillerEvent, ParseError> {
    parse_stripe(&body(event), &Sources::stripe_default())
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

fn sub(status: &str, basil: bool) -> Value {
    samples::stripe_subscription(
        "evt_1",
        CREATED,
        "sub_1",
        "cus_1",
        Some("u_1"),
        "price_pro",
        status,
        (START, END),
        basil,
    )
}

const SKELETON_SUBSCRIPTION: &str = r#"{
  "id": "evt_1Qxx", "object": "event", "api_version": "2026-09-30.endive",
  "created": 1767225600, "livemode": false, "pending_webhooks": 1,
  "request": { "id": null, "idempotency_key": null },
  "type": "customer.subscription.updated",
  "data": {
    "object": {
      "id": "sub_1Abc", "object": "subscription", "customer": "cus_9Xyz",
      "status": "active", "cancel_at_period_end": false, "cancel_at": null,
      "canceled_at": null, "ended_at": null, "billing_cycle_anchor": 1764547200,
      "trial_start": null, "trial_end": null, "start_date": 1764547200,
      "billing_mode": { "type": "flexible" },
      "latest_invoice": "in_2Def", "metadata": { "user_id": "u_42" },
      "items": { "object": "list", "data": [ {
        "id": "si_3Ghi", "object": "subscription_item", "quantity": 1,
        "current_period_start": 1767225600, "current_period_end": 1769904000,
        "price": { "id": "price_pro_monthly", "lookup_key": "pro_monthly", "product": "prod_P",
                   "recurring": { "interval": "month", "interval_count": 1,
                                  "usage_type": "licensed", "meter": null } }
      } ] }
    },
    "previous_attributes": {
      "latest_invoice": "in_1Old",
      "items": { "data": [ { "id": "si_3Ghi", "current_period_start": 1764547200,
                             "current_period_end": 1767225600 } ] }
    }
  }
}"#;

const SKELETON_INVOICE: &str = r#"{ "id": "evt_2", "object": "event", "type": "invoice.paid", "created": 1767229200,
  "data": { "object": {
    "id": "in_2Def", "object": "invoice", "customer": "cus_9Xyz", "status": "paid",
    "billing_reason": "subscription_cycle", "amount_paid": 2000, "currency": "usd",
    "period_start": 1764547200, "period_end": 1767225600,
    "parent": { "type": "subscription_details",
                "subscription_details": { "subscription": "sub_1Abc", "metadata": { "user_id": "u_42" } } },
    "lines": { "data": [ {
      "id": "il_1", "period": { "start": 1767225600, "end": 1769904000 },
      "parent": { "type": "subscription_item_details",
                  "subscription_item_details": { "subscription": "sub_1Abc", "subscription_item": "si_3Ghi" } },
      "pricing": { "type": "price_details", "price_details": { "price": "price_pro_monthly", "product": "prod_P" } }
    } ] } } } }"#;

const SKELETON_CHECKOUT: &str = r#"{ "id": "evt_3", "object": "event", "type": "checkout.session.completed",
  "data": { "object": { "id": "cs_test_1", "object": "checkout.session", "mode": "subscription",
    "client_reference_id": "u_42", "customer": "cus_9Xyz", "subscription": "sub_1Abc",
    "status": "complete", "payment_status": "paid", "metadata": {} } } }"#;

fn parse_str(s: &str) -> Result<BillerEvent, ParseError> {
    parse_stripe(s.as_bytes(), &Sources::stripe_default())
}

#[test]
fn skeleton_subscription_updated_parses_exactly() {
    let event = parse_str(SKELETON_SUBSCRIPTION).unwrap();
    assert_eq!(event.biller, Biller::Stripe);
    assert_eq!(event.event_id, "evt_1Qxx");
    assert_eq!(event.event_type, "customer.subscription.updated");
    assert_eq!(event.created, ts(1_767_225_600));
    assert_eq!(
        event.fact,
        BillerFact::Subscription(SubscriptionSnapshot {
            subscription_id: "sub_1Abc".into(),
            customer_id: Some("cus_9Xyz".into()),
            owner: Some(OwnerHint::User("u_42".into())),
            status: BillerStatus::Active,
            prices: vec![BillerPrice {
                id: "price_pro_monthly".into(),
                lookup_key: Some("pro_monthly".into()),
                quantity: Some(1),
                period: Some((ts(1_767_225_600), ts(1_769_904_000))),
            }],
            period: None,
            cancel_at_period_end: false,
            cancel_at: None,
            ended_at: None,
            seats: None,
        })
    );
}

#[test]
fn skeleton_invoice_paid_is_ignored() {
    let event = parse_str(SKELETON_INVOICE).unwrap();
    assert_eq!(event.event_id, "evt_2");
    assert_eq!(event.created, ts(1_767_229_200));
    assert_eq!(
        event.fact,
        BillerFact::Ignored {
            note: INVOICE_NOTE.into()
        }
    );
}

/// billers.md's checkout skeleton has no `created`, which every real event carries and the
/// event's order needs: verbatim it is refused for that alone; with `created` it parses.
#[test]
fn skeleton_checkout_subscription_needs_only_created() {
    assert_eq!(
        parse_str(SKELETON_CHECKOUT),
        Err(ParseError::MissingField("created"))
    );
    let mut v: Value = serde_json::from_str(SKELETON_CHECKOUT).unwrap();
    v["created"] = json!(1_767_225_000);
    let event = parse(&v).unwrap();
    assert_eq!(event.event_id, "evt_3");
    assert_eq!(
        event.fact,
        BillerFact::Customer {
            customer_id: "cus_9Xyz".into(),
            owner: OwnerHint::User("u_42".into()),
        }
    );
}

#[test]
fn basil_period_is_on_the_item_only() {
    let s = snapshot(&sub("active", true));
    assert_eq!(s.period, None);
    assert_eq!(s.prices.len(), 1);
    assert_eq!(s.prices[0].period, Some((ts(START), ts(END))));
    assert_eq!(s.prices[0].id, "price_pro");
    assert_eq!(s.prices[0].quantity, Some(1));
    assert_eq!(s.seats, None);
}

#[test]
fn pre_basil_period_comes_from_the_subscription() {
    let event = sub("active", false);
    assert_eq!(event["api_version"], "2024-06-20");
    let s = snapshot(&event);
    assert_eq!(s.period, Some((ts(START), ts(END))));
    assert_eq!(s.prices[0].period, Some((ts(START), ts(END))));
}

#[test]
fn an_items_own_period_beats_the_subscriptions() {
    // Older API versions rendered today carry both; items may cycle apart (flexible billing).
    let event = with_field(
        sub("active", false),
        "/data/object/items/data/0/current_period_start",
        json!(START + 86_400),
    );
    let event = with_field(
        event,
        "/data/object/items/data/0/current_period_end",
        json!(END + 86_400),
    );
    let s = snapshot(&event);
    assert_eq!(s.period, Some((ts(START), ts(END))));
    assert_eq!(
        s.prices[0].period,
        Some((ts(START + 86_400), ts(END + 86_400)))
    );
}

#[test]
fn statuses_map_to_biller_statuses() {
    let table = [
        ("active", BillerStatus::Active),
        ("trialing", BillerStatus::Trialing),
        ("past_due", BillerStatus::PastDue),
        ("incomplete", BillerStatus::Incomplete),
        ("unpaid", BillerStatus::Ended),
        ("canceled", BillerStatus::Ended),
        ("incomplete_expired", BillerStatus::Ended),
        ("paused", BillerStatus::Paused),
    ];
    for (wire, status) in table {
        assert_eq!(snapshot(&sub(wire, true)).status, status, "{wire}");
    }
    assert_eq!(
        note(&sub("frozen", true)),
        "unknown Stripe subscription status frozen"
    );
}

#[test]
fn every_subscription_type_is_a_snapshot() {
    for t in [
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.paused",
        "customer.subscription.resumed",
    ] {
        let event = parse(&with_type(sub("trialing", true), t)).unwrap();
        assert_eq!(event.event_type, t);
        match event.fact {
            BillerFact::Subscription(s) => assert_eq!(s.status, BillerStatus::Trialing),
            other => panic!("{t}: {other:?}"),
        }
    }
}

#[test]
fn deleted_is_ended_at_ended_at_else_the_event_time() {
    let ended = START + 1000;
    let s = snapshot(&samples::stripe_deleted(sub("active", true), ended));
    assert_eq!(s.status, BillerStatus::Ended);
    assert_eq!(s.ended_at, Some(ts(ended)));
    // Even a status that says otherwise, and with no ended_at.
    let event = with_type(sub("active", true), "customer.subscription.deleted");
    let s = snapshot(&event);
    assert_eq!(s.status, BillerStatus::Ended);
    assert_eq!(s.ended_at, Some(ts(CREATED)));
}

#[test]
fn cancellation_fields_are_carried() {
    let s = snapshot(&samples::stripe_cancel_at_period_end(
        sub("active", true),
        true,
    ));
    assert!(s.cancel_at_period_end);
    assert_eq!(s.cancel_at, None);
    let s = snapshot(&samples::stripe_cancel_at(
        sub("active", true),
        Some(END - 5),
    ));
    assert!(!s.cancel_at_period_end);
    assert_eq!(s.cancel_at, Some(ts(END - 5)));
    let ended = with_field(
        sub("canceled", true),
        "/data/object/ended_at",
        json!(START + 7),
    );
    assert_eq!(snapshot(&ended).ended_at, Some(ts(START + 7)));
}

#[test]
fn an_expanded_customer_gives_its_id() {
    let event = with_field(
        sub("active", true),
        "/data/object/customer",
        json!({"id": "cus_x", "object": "customer", "email": "a@b.c"}),
    );
    assert_eq!(snapshot(&event).customer_id.as_deref(), Some("cus_x"));
    let none = with_field(sub("active", true), "/data/object/customer", json!(null));
    assert_eq!(snapshot(&none).customer_id, None);
}

#[test]
fn legacy_plan_ids_and_unusable_items() {
    let event = with_field(
        sub("active", true),
        "/data/object/items/data",
        json!([
            { "id": "si_a", "plan": { "id": "plan_old" }, "quantity": 3,
              "current_period_start": START, "current_period_end": END },
            { "id": "si_b", "quantity": 1 },
            { "id": "si_c", "price": { "id": "price_c", "lookup_key": "c" }, "quantity": null }
        ]),
    );
    let s = snapshot(&event);
    assert_eq!(
        s.prices,
        vec![
            BillerPrice {
                id: "plan_old".into(),
                lookup_key: None,
                quantity: Some(3),
                period: Some((ts(START), ts(END))),
            },
            BillerPrice {
                id: "price_c".into(),
                lookup_key: Some("c".into()),
                quantity: None,
                period: None,
            },
        ]
    );
}

#[test]
fn owner_comes_from_the_object_and_an_account_wins() {
    let s = snapshot(&sub("active", true));
    assert_eq!(s.owner, Some(OwnerHint::User("u_1".into())));
    let event = with_field(
        sub("active", true),
        "/data/object/metadata/account_id",
        json!("acc_1"),
    );
    assert_eq!(
        snapshot(&event).owner,
        Some(OwnerHint::Account("acc_1".into()))
    );
    let anonymous = samples::stripe_subscription(
        "evt_1",
        CREATED,
        "sub_1",
        "cus_1",
        None,
        "price_pro",
        "active",
        (START, END),
        true,
    );
    assert_eq!(snapshot(&anonymous).owner, None);
    let custom = Sources {
        user_id_from: vec!["metadata.uid".into()],
        account_id_from: vec![],
    };
    let event = with_field(
        sub("active", true),
        "/data/object/metadata/uid",
        json!("u_7"),
    );
    match parse_stripe(&body(&event), &custom).unwrap().fact {
        BillerFact::Subscription(s) => assert_eq!(s.owner, Some(OwnerHint::User("u_7".into()))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_and_missing_optional_fields_never_fail() {
    let event = with_field(
        sub("active", true),
        "/data/object/brand_new",
        json!({"x": [1]}),
    );
    let event = with_field(event, "/brand_new_envelope_field", json!(true));
    let mut event = event;
    for field in [
        "cancel_at_period_end",
        "cancel_at",
        "ended_at",
        "metadata",
        "customer",
    ] {
        event["data"]["object"]
            .as_object_mut()
            .unwrap()
            .remove(field);
    }
    let s = snapshot(&event);
    assert_eq!(s.subscription_id, "sub_1");
    assert!(!s.cancel_at_period_end);
    assert_eq!(s.owner, None);
    let no_items = {
        let mut e = sub("active", true);
        e["data"]["object"].as_object_mut().unwrap().remove("items");
        e
    };
    assert_eq!(snapshot(&no_items).prices, vec![]);
}

fn checkout_payment(payment_intent: Option<&str>) -> Value {
    samples::stripe_checkout_payment(
        "evt_c",
        CREATED,
        "cs_1",
        Some("cus_1"),
        Some("u_1"),
        payment_intent,
        Some("pack_small"),
        Some("price_pack"),
    )
}

#[test]
fn paid_checkout_payment_is_a_purchase() {
    assert_eq!(
        fact_of(&checkout_payment(Some("pi_1"))),
        BillerFact::Purchase(Purchase {
            payment_ref: "pi_1".into(),
            customer_id: Some("cus_1".into()),
            owner: Some(OwnerHint::User("u_1".into())),
            pack_id: Some("pack_small".into()),
            price_ids: vec!["price_pack".into()],
        })
    );
}

#[test]
fn purchase_reference_falls_back_to_the_session_id() {
    match fact_of(&checkout_payment(None)) {
        BillerFact::Purchase(p) => assert_eq!(p.payment_ref, "cs_1"),
        other => panic!("{other:?}"),
    }
    let expanded = with_field(
        checkout_payment(None),
        "/data/object/payment_intent",
        json!({"id": "pi_x", "object": "payment_intent"}),
    );
    match fact_of(&expanded) {
        BillerFact::Purchase(p) => assert_eq!(p.payment_ref, "pi_x"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_guest_purchase_without_metadata() {
    let event = samples::stripe_checkout_payment(
        "evt_c",
        CREATED,
        "cs_1",
        None,
        None,
        Some("pi_1"),
        None,
        None,
    );
    assert_eq!(
        fact_of(&event),
        BillerFact::Purchase(Purchase {
            payment_ref: "pi_1".into(),
            customer_id: None,
            owner: None,
            pack_id: None,
            price_ids: vec![],
        })
    );
}

#[test]
fn unpaid_checkout_waits_for_the_async_payment() {
    let unpaid = with_field(
        checkout_payment(Some("pi_1")),
        "/data/object/payment_status",
        json!("unpaid"),
    );
    assert_eq!(
        note(&unpaid),
        "the checkout session is not paid (payment_status unpaid)"
    );
    let succeeded = with_type(
        checkout_payment(Some("pi_1")),
        "checkout.session.async_payment_succeeded",
    );
    match fact_of(&succeeded) {
        BillerFact::Purchase(p) => assert_eq!(p.payment_ref, "pi_1"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn subscription_checkout_links_the_customer() {
    let event = samples::stripe_checkout_subscription(
        "evt_s",
        CREATED,
        "cs_2",
        "cus_2",
        Some("u_2"),
        "sub_2",
    );
    assert_eq!(
        fact_of(&event),
        BillerFact::Customer {
            customer_id: "cus_2".into(),
            owner: OwnerHint::User("u_2".into())
        }
    );
    let by_metadata = with_field(
        samples::stripe_checkout_subscription("evt_s", CREATED, "cs_2", "cus_2", None, "sub_2"),
        "/data/object/metadata/user_id",
        json!("u_3"),
    );
    assert_eq!(
        fact_of(&by_metadata),
        BillerFact::Customer {
            customer_id: "cus_2".into(),
            owner: OwnerHint::User("u_3".into())
        }
    );
}

#[test]
fn subscription_checkout_without_owner_or_customer_is_ignored() {
    let anonymous =
        samples::stripe_checkout_subscription("evt_s", CREATED, "cs_2", "cus_2", None, "sub_2");
    assert_eq!(
        note(&anonymous),
        "no user id found in the checkout session by client_reference_id, metadata.user_id"
    );
    let no_customer = with_field(
        samples::stripe_checkout_subscription("evt_s", CREATED, "cs_2", "cus_2", Some("u"), "s"),
        "/data/object/customer",
        json!(null),
    );
    assert_eq!(
        note(&no_customer),
        "the subscription checkout session has no customer"
    );
    let setup = with_field(checkout_payment(None), "/data/object/mode", json!("setup"));
    assert_eq!(note(&setup), "checkout session mode setup is not used");
}

#[test]
fn invoices_and_other_types_are_ignored() {
    let invoice = samples::stripe_invoice_paid(
        "evt_i",
        CREATED,
        "in_1",
        "cus_1",
        "sub_1",
        "price_pro",
        (START, END),
        Some("u_1"),
    );
    assert_eq!(note(&invoice), INVOICE_NOTE);
    for t in ["invoice.payment_failed", "invoice.created"] {
        assert_eq!(note(&with_type(invoice.clone(), t)), INVOICE_NOTE);
    }
    let other = with_type(sub("active", true), "customer.subscription.trial_will_end");
    assert_eq!(
        note(&other),
        "Stripe event type customer.subscription.trial_will_end is not used"
    );
    // Ignored types never read the object, so any shape is fine.
    let bare = json!({"id": "evt_x", "type": "charge.succeeded", "created": CREATED});
    assert_eq!(
        note(&bare),
        "Stripe event type charge.succeeded is not used"
    );
}

#[test]
fn broken_bodies_are_parse_errors_without_the_body() {
    let secret_looking = br#"{"id": "evt_1", "type": "x", "created": "sk_live_SECRET"}"#;
    let err = parse_stripe(secret_looking, &Sources::stripe_default()).unwrap_err();
    assert_eq!(err, ParseError::BadField("event"));
    assert!(!err.to_string().contains("SECRET"));
    assert_eq!(
        parse_stripe(b"not json sk_live_SECRET", &Sources::stripe_default()),
        Err(ParseError::NotJson)
    );
    assert_eq!(
        parse_stripe(b"", &Sources::stripe_default()),
        Err(ParseError::NotJson)
    );
    for (field, code) in [("id", "id"), ("type", "type"), ("created", "created")] {
        let mut v = sub("active", true);
        v.as_object_mut().unwrap().remove(field);
        assert_eq!(parse(&v), Err(ParseError::MissingField(code)));
        assert_eq!(parse(&v).unwrap_err().code(), "missing_field");
    }
    let huge = with_field(sub("active", true), "/created", json!(i64::MAX));
    assert_eq!(parse(&huge), Err(ParseError::BadField("created")));
    let long_id = with_field(sub("active", true), "/id", json!("e".repeat(257)));
    assert_eq!(parse(&long_id), Err(ParseError::BadField("id")));
}

#[test]
fn broken_subscription_objects_are_parse_errors() {
    let mut no_object = sub("active", true);
    no_object["data"].as_object_mut().unwrap().remove("object");
    assert_eq!(
        parse(&no_object),
        Err(ParseError::MissingField("data.object"))
    );
    let mut no_id = sub("active", true);
    no_id["data"]["object"]
        .as_object_mut()
        .unwrap()
        .remove("id");
    assert_eq!(
        parse(&no_id),
        Err(ParseError::MissingField("data.object.id"))
    );
    let mut no_status = sub("active", true);
    no_status["data"]["object"]
        .as_object_mut()
        .unwrap()
        .remove("status");
    assert_eq!(
        parse(&no_status),
        Err(ParseError::MissingField("data.object.status"))
    );
    let bad_quantity = with_field(
        sub("active", true),
        "/data/object/items/data/0/quantity",
        json!(-1),
    );
    assert_eq!(
        parse(&bad_quantity),
        Err(ParseError::BadField("data.object (subscription)"))
    );
}
