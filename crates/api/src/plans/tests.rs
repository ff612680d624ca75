//! Unit tests of the plan document: defaults, refusals by field, limits on the way in, and
//! reading back what was stored under looser rules.

use super::*;
use serde_json::json;

fn apply(doc: serde_json::Value) -> Result<(serde_json::Value, core::PlanDocument), FieldError> {
    plan_document_from_json(&doc.to_string()).map(|n| (n.json, n.document))
}

fn error_field(doc: serde_json::Value) -> String {
    apply(doc).unwrap_err().field
}

fn example() -> serde_json::Value {
    json!({
      "defaultPlan": "free",
      "plans": [{
        "id": "free", "name": "Free",
        "price": {"amount": 0, "currency": "USD"},
        "stripePriceIds": ["price_1"],
        "limits": [
          {"id": "images_daily", "label": "Images per day", "quota": 10,
           "window": {"type": "calendar", "period": "day", "timezone": "Europe/Paris"},
           "match": [{"event": "image.*"}]},
          {"id": "premium_images", "quota": 0, "window": {"type": "subscription"},
           "match": [{"event": "image.*", "metadata": {"model": ["flux-pro", "dall-e-3"]}}]},
          {"id": "streams", "quota": 2, "kind": "concurrency", "match": [{"event": "*"}]}
        ]}]
    })
}

#[test]
fn defaults_are_filled_in() {
    let (value, doc) = apply(example()).unwrap();
    assert_eq!(value["unmatchedEvents"], "deny");
    let plan = &value["plans"][0];
    assert_eq!(plan["public"], true);
    assert_eq!(
        plan["billing"],
        json!({"interval": "month", "intervalCount": 1})
    );
    assert_eq!(
        plan["price"],
        json!({"amount": 0, "currency": "usd", "interval": "month"})
    );
    let limit = &plan["limits"][1];
    assert_eq!(limit["label"], "premium_images");
    assert_eq!(limit["kind"], "consumable");
    assert_eq!(limit["scope"], "user");
    assert_eq!(limit["enforcement"], "hard");
    assert_eq!(limit["multiplier"], 1);
    assert_eq!(limit["unit"], "count");
    assert_eq!(limit["notify"], json!([80, 100]));
    assert_eq!(plan["limits"][2]["window"], json!({"type": "lifetime"}));
    assert_eq!(doc.plans[0].limits.len(), 3);
    assert_eq!(doc.default_plan.as_deref(), Some("free"));
    // Normalizing is idempotent: the stored form parses to itself.
    let again = plan_document_from_json(&value.to_string()).unwrap();
    assert_eq!(again.json, value);
    assert_eq!(again.text, value.to_string());
    let stored = plan_document_from_stored(&again.text).unwrap();
    assert_eq!(stored.text, again.text);
}

#[test]
fn bad_fields_are_named() {
    let mut doc = example();
    doc["plans"][0]["limits"][0]["window"]["timezone"] = json!("Mars/Olympus");
    assert_eq!(error_field(doc), "plans[0].limits[0].window.timezone");
    let mut doc = example();
    doc["plans"][0]["limits"][1]["quota"] = json!(1.5);
    assert_eq!(error_field(doc), "plans[0].limits[1].quota");
    let mut doc = example();
    doc["plans"][0]["limits"][1]["quota"] = json!(-1);
    assert_eq!(error_field(doc), "plans[0].limits[1].quota");
    let mut doc = example();
    doc["plans"][0]["limits"][1]["quota"] = json!(9_007_199_254_740_992u64);
    assert_eq!(error_field(doc), "plans[0].limits[1].quota");
    let mut doc = example();
    doc["plans"][0]["limits"][1]["match"][0]["event"] = json!("image render");
    assert_eq!(error_field(doc), "plans[0].limits[1].match[0].event");
    let mut doc = example();
    doc["plans"][0]["limits"][0]["quotta"] = json!(3);
    assert_eq!(error_field(doc), "plans[0].limits[0].quotta");
    let mut doc = example();
    doc["plans"][0]["limits"][0]["window"]["seconds"] = json!(60);
    assert_eq!(error_field(doc), "plans[0].limits[0].window.seconds");
    let mut doc = example();
    doc["plans"][0]["limits"][1]["window"] = json!({"type": "rolling"});
    assert_eq!(error_field(doc), "plans[0].limits[1].window.seconds");
    let mut doc = example();
    doc["plans"][0]["limits"][1]["id"] = json!("images_daily");
    assert_eq!(error_field(doc), "plans[0].limits[1].id");
    let mut doc = example();
    doc["defaultPlan"] = json!("pro");
    assert_eq!(error_field(doc), "defaultPlan");
    let mut doc = example();
    doc["plans"][0]["limits"][0]
        .as_object_mut()
        .unwrap()
        .remove("window");
    assert_eq!(error_field(doc), "plans[0].limits[0].window");
}

#[test]
fn counts_are_capped() {
    let plan = |i: usize| json!({"id": format!("p{i}")});
    let plans: Vec<_> = (0..PLANS_MAX).map(plan).collect();
    assert!(apply(json!({"plans": plans})).is_ok());
    let plans: Vec<_> = (0..=PLANS_MAX).map(plan).collect();
    assert_eq!(error_field(json!({"plans": plans})), "plans");
    let limit = |j: usize| {
        json!({"id": format!("l{j}"), "quota": 1, "window": {"type": "lifetime"},
               "match": [{"event": "*"}]})
    };
    let limits: Vec<_> = (0..LIMITS_PER_PLAN_MAX).map(limit).collect();
    assert!(apply(json!({"plans": [{"id": "p", "limits": limits}]})).is_ok());
    let limits: Vec<_> = (0..=LIMITS_PER_PLAN_MAX).map(limit).collect();
    assert_eq!(
        error_field(json!({"plans": [{"id": "p", "limits": limits}]})),
        "plans[0].limits"
    );
}

#[test]
fn document_size_is_capped() {
    let padding = " ".repeat(PLAN_DOCUMENT_BYTES_MAX - 2);
    assert!(plan_document_from_json(&format!("{{{padding}}}")).is_ok());
    let padding = " ".repeat(PLAN_DOCUMENT_BYTES_MAX - 1);
    assert!(plan_document_from_json(&format!("{{{padding}}}")).is_err());
}

/// A document whose stored form is exactly `len` bytes, padding a plan description.
fn stored_of_len(len: usize) -> String {
    let mut doc = json!({"plans": [{"id": "p", "description": ""}]});
    let base = plan_document_from_json(&doc.to_string())
        .unwrap()
        .text
        .len();
    doc["plans"][0]["description"] = json!("d".repeat(len - base));
    doc.to_string()
}

#[test]
fn the_size_limit_applies_to_the_stored_form() {
    let at = plan_document_from_json(&stored_of_len(PLAN_DOCUMENT_BYTES_MAX)).unwrap();
    assert_eq!(at.text.len(), PLAN_DOCUMENT_BYTES_MAX);
    let past = stored_of_len(PLAN_DOCUMENT_BYTES_MAX + 1);
    assert!(past.len() < PLAN_DOCUMENT_BYTES_MAX, "the body itself fits");
    let e = plan_document_from_json(&past).unwrap_err();
    assert_eq!(e.field, "");
    assert!(e.message.contains("as stored"), "{}", e.message);
    // The repro of issue 10: 729 KB sent, 1.29 MB once every default is filled in.
    let limit = |n: usize| {
        json!({"id": format!("limit_{n}"), "label": format!("Limit number {n}"),
               "quota": 100, "window": {"type": "calendar", "period": "day"},
               "match": [{"event": format!("event.{n}")}]})
    };
    let plans: Vec<_> = (0..PLANS_MAX)
        .map(|i| json!({"id": format!("plan_{i}"), "limits": (0..25).map(limit).collect::<Vec<_>>()}))
        .collect();
    let body = json!({ "plans": plans }).to_string();
    assert!(body.len() < PLAN_DOCUMENT_BYTES_MAX);
    assert_eq!(plan_document_from_json(&body).unwrap_err().field, "");
}

#[test]
fn a_stored_document_is_not_judged_by_input_limits_again() {
    // As a build with looser limits might have stored it: over the size limit, more plans
    // than allowed, a label and a window longer than allowed, an event pattern and a
    // threshold today's rules refuse.
    let limit = json!({"id": "l", "label": "x".repeat(DISPLAY_NAME_BYTES_MAX + 1),
        "quota": 5, "window": {"type": "rolling", "seconds": WINDOW_SECONDS_MAX + 1},
        "notify": [NOTIFY_PERCENT_MAX + 1], "match": [{"event": "image render"}]});
    let mut plans = vec![
        json!({"id": "p0", "description": "d".repeat(PLAN_DOCUMENT_BYTES_MAX),
                                "limits": [limit]}),
    ];
    plans.extend((1..=PLANS_MAX).map(|i| json!({"id": format!("p{i}")})));
    let text = json!({"defaultPlan": "p0", "plans": plans}).to_string();
    assert!(plan_document_from_json(&text).is_err());
    let stored = plan_document_from_stored(&text).unwrap();
    assert_eq!(stored.document.plans.len(), PLANS_MAX + 1);
    let limit = &stored.document.plans[0].limits[0];
    assert!(limit.rules[0].event.matches("image render"));
    assert!(matches!(
        limit.window,
        core::WindowSpec::Rolling { seconds } if seconds == WINDOW_SECONDS_MAX + 1
    ));
    // What no build can represent still fails to load, naming the field.
    let mut unknown_zone = example();
    unknown_zone["plans"][0]["limits"][0]["window"]["timezone"] = json!("Mars/Olympus");
    let e = plan_document_from_stored(&unknown_zone.to_string()).unwrap_err();
    assert_eq!(e.field, "plans[0].limits[0].window.timezone");
    let mut newer_field = example();
    newer_field["plans"][0]["limits"][0]["resetsOn"] = json!("monday");
    let e = plan_document_from_stored(&newer_field.to_string()).unwrap_err();
    assert_eq!(e.field, "plans[0].limits[0].resetsOn");
}

#[test]
fn publishable_view_hides_private_plans_and_biller_ids() {
    let mut doc = example();
    doc["plans"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "secret", "public": false}));
    let (value, _) = apply(doc).unwrap();
    let public = public_plan_document(&value);
    assert_eq!(public["plans"].as_array().unwrap().len(), 1);
    assert!(public["plans"][0].get("stripePriceIds").is_none());
    assert!(public.get("costs").is_none());
}

#[test]
fn biller_ids_map_to_plans_and_packs_once_each() {
    use tollgate_core::biller::BillerTarget;
    let mut doc = example();
    doc["plans"][0]["polarProductIds"] = json!(["prod-1"]);
    doc["creditPacks"] = json!([{"id": "pack", "stripePriceIds": ["price_pack"],
        "items": [{"id": "i", "quantity": 5, "match": [{"event": "image.*"}]}]}]);
    let (_, core) = apply(doc.clone()).unwrap();
    assert_eq!(
        core.biller_ids.stripe,
        [
            ("price_1".to_string(), BillerTarget::Plan("free".into())),
            ("price_pack".to_string(), BillerTarget::Pack("pack".into())),
        ]
    );
    assert_eq!(
        core.biller_ids.polar,
        [("prod-1".to_string(), BillerTarget::Plan("free".into()))]
    );
    // One price selling a plan and a pack would make a purchase ambiguous.
    doc["creditPacks"][0]["stripePriceIds"] = json!(["price_1"]);
    assert_eq!(error_field(doc.clone()), "creditPacks[0].stripePriceIds[0]");
    // A stored document that has it still loads; the first listing wins.
    let stored = plan_document_from_stored(&doc.to_string()).unwrap();
    assert_eq!(stored.document.biller_ids.stripe.len(), 1);
}
