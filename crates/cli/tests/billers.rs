//! API.md §10 biller webhooks (issue 12), black-box over real HTTP: real-shaped Stripe and
//! Polar payloads (`tollgate_billers::samples`), signed the way each biller signs, posted to the
//! webhook endpoint of a real server; effects read back through §6 and §8. The meter forwarder
//! is pointed at a local HTTP server that answers 500, then 200.

mod common;

use common::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_billers::samples;
use tollgate_billers::{sign_standard, sign_stripe};

const STRIPE_SECRET: &str = "whsec_test_secret";
const DAY: i64 = 86_400;

fn plans() -> Value {
    json!({
        "defaultPlan": "free",
        "plans": [
            {"id": "free", "limits": [
                {"id": "images", "quota": 2, "window": {"type": "subscription"},
                 "match": [{"event": "image.*"}]}]},
            {"id": "pro", "stripePriceIds": ["price_pro"], "polarProductIds": ["prod-pro-uuid"],
             "limits": [
                {"id": "images", "quota": 10, "window": {"type": "subscription"},
                 "match": [{"event": "image.*"}]}]},
            {"id": "max", "stripePriceIds": ["max_monthly"], "limits": [
                {"id": "images", "quota": 50, "window": {"type": "subscription"},
                 "match": [{"event": "image.*"}]}]},
            {"id": "team", "seats": 2, "stripePriceIds": ["price_team_seat"],
             "polarProductIds": ["prod-team-uuid"], "limits": []}
        ],
        "creditPacks": [
            {"id": "pack50", "stripePriceIds": ["price_pack50"], "polarProductIds": ["prod-pack-uuid"],
             "items": [{"id": "imgs", "quantity": 50, "match": [{"event": "image.*"}]}]}
        ]
    })
}

/// A server with the plans above and a Stripe integration; the webhook path.
async fn stripe_server() -> (TestServer, Client, String) {
    let (s, c) = TestServer::with_plans(plans()).await;
    let i = c
        .put(
            "/v1/integrations/stripe",
            json!({"webhookSecrets": [STRIPE_SECRET]}),
        )
        .await
        .ok();
    let path = i["webhookPath"].as_str().unwrap().to_string();
    assert!(path.starts_with("/webhooks/stripe/we_"), "{i}");
    assert_eq!(i["webhookSecrets"], json!(["whsec_…cret"]), "masked: {i}");
    (s, c, path)
}

/// Posts a Stripe event signed with `secret` at the real `now`.
async fn post_stripe(s: &TestServer, path: &str, event: &Value, secret: &str) -> Resp {
    let t = jiff::Timestamp::now().as_second();
    post_signed_stripe(
        s,
        path,
        event,
        &sign_stripe(&samples::body(event), secret, t),
    )
    .await
}

async fn post_signed_stripe(s: &TestServer, path: &str, event: &Value, header: &str) -> Resp {
    s.anonymous()
        .post_with_headers(path, event.clone(), &[("Stripe-Signature", header)])
        .await
}

async fn deliver(s: &TestServer, path: &str, event: &Value) -> Value {
    post_stripe(s, path, event, STRIPE_SECRET).await.ok()
}

fn sub_event(id: &str, created: i64, price: &str, period: (i64, i64)) -> Value {
    samples::stripe_subscription(
        id,
        created,
        "sub_1",
        "cus_1",
        Some("u1"),
        price,
        "active",
        period,
        true,
    )
}

async fn images_used(c: &Client, user: &str) -> (i64, i64, Value) {
    let u = c.usage(user).await.ok();
    let l = limit(&u, "images").clone();
    (int(&l, "used"), int(&l, "quota"), l)
}

#[tokio::test(flavor = "multi_thread")]
async fn stripe_subscription_lifecycle_follows_the_billing_period() {
    let (s, c, path) = stripe_server().await;
    let now = c.now().await;
    let (start, end) = (now - 3600, now - 3600 + 30 * DAY);

    // Created: the plan of the item's price, the window from the item's period start.
    let a = deliver(
        &s,
        &path,
        &sub_event("evt_a", now, "price_pro", (start, end)),
    )
    .await;
    assert_eq!(
        (a["received"].clone(), a["applied"].clone()),
        (json!(true), json!(true)),
        "{a}"
    );
    let sub = c.get_subscription("u1").await.ok();
    assert_eq!(sub["planId"], "pro", "{sub}");
    assert_ts(&sub["currentPeriod"]["start"], start, "period start");
    c.track_q("u1", "image.render", 3).await;
    let (used, quota, l) = images_used(&c, "u1").await;
    assert_eq!((used, quota), (3, 10), "{l}");
    assert_ts(
        &l["windowStart"],
        start,
        "window start = the item's period start",
    );
    let history = c.history("u1").await.ok();
    assert_eq!(rows(&history)[0]["source"], "stripe", "{history}");

    // The same delivery again changes nothing.
    let again = deliver(
        &s,
        &path,
        &sub_event("evt_a", now, "price_pro", (start, end)),
    )
    .await;
    assert_eq!(
        (again["applied"].clone(), again["duplicate"].clone()),
        (json!(false), json!(true)),
        "{again}"
    );
    assert_eq!(
        rows(&c.history("u1").await.ok()).len(),
        rows(&history).len()
    );

    // Upgrade by lookup key: the plan changes, the window and its usage stay.
    let upgrade = samples::with_field(
        sub_event("evt_b", now + 1, "price_max_v2", (start, end)),
        "/data/object/items/data/0/price/lookup_key",
        json!("max_monthly"),
    );
    assert_eq!(deliver(&s, &path, &upgrade).await["applied"], true);
    let (used, quota, _) = images_used(&c, "u1").await;
    assert_eq!((used, quota), (3, 50), "an upgrade keeps the usage");

    // An older snapshot arriving late changes nothing.
    let late = deliver(
        &s,
        &path,
        &sub_event("evt_old", now - 10, "price_pro", (start, end)),
    )
    .await;
    assert_eq!(late["status"], "stale", "{late}");
    assert_eq!(c.get_subscription("u1").await.ok()["planId"], "max");

    // A proration invoice paid mid-cycle is not a renewal.
    let invoice = samples::stripe_invoice_paid(
        "evt_inv",
        now + 2,
        "in_1",
        "cus_1",
        "sub_1",
        "price_max_v2",
        (start, end),
        Some("u1"),
    );
    assert_eq!(deliver(&s, &path, &invoice).await["applied"], false);
    assert_eq!(images_used(&c, "u1").await.0, 3);

    // Renewal: Stripe moves the item's period; a fresh window opens on its start.
    c.advance_clock(30 * DAY).await;
    let renewed = samples::with_field(
        sub_event(
            "evt_c",
            now + 30 * DAY,
            "price_max_v2",
            (end, end + 30 * DAY),
        ),
        "/data/object/items/data/0/price/lookup_key",
        json!("max_monthly"),
    );
    assert_eq!(deliver(&s, &path, &renewed).await["applied"], true);
    let (used, quota, l) = images_used(&c, "u1").await;
    assert_eq!((used, quota), (0, 50), "{l}");
    assert_ts(
        &l["windowStart"],
        end,
        "the renewed window starts on the new period start",
    );
    let kinds: Vec<String> = rows(&c.history("u1").await.ok())
        .iter()
        .map(|r| r["type"].as_str().unwrap().to_string())
        .collect();
    assert!(kinds.contains(&"renewed".to_string()), "{kinds:?}");

    // Cancel at period end: the plan stays until the end.
    let cancel = samples::stripe_cancel_at_period_end(
        samples::with_field(renewed.clone(), "/id", json!("evt_d")),
        true,
    );
    let cancel = samples::with_field(cancel, "/created", json!(now + 30 * DAY + 1));
    assert_eq!(deliver(&s, &path, &cancel).await["applied"], true);
    let sub = c.get_subscription("u1").await.ok();
    assert_eq!(sub["planId"], "max");
    assert_ts(&sub["endsAt"], end + 30 * DAY, "ends at the period end");
    assert_eq!(images_used(&c, "u1").await.1, 50, "still max until the end");

    // Deleted: the default plan applies; a payment settling later never brings it back.
    let deleted = samples::stripe_deleted(
        samples::with_field(
            samples::with_field(renewed.clone(), "/id", json!("evt_e")),
            "/created",
            json!(now + 30 * DAY + 2),
        ),
        now + 30 * DAY + 2,
    );
    let d = deliver(&s, &path, &deleted).await;
    assert_eq!(d["applied"], true, "{d}");
    assert_eq!(images_used(&c, "u1").await.1, 2, "back on free");
    let revived = samples::with_field(
        samples::with_field(renewed, "/id", json!("evt_f")),
        "/created",
        json!(now + 30 * DAY + 5),
    );
    let r = deliver(&s, &path, &revived).await;
    assert_eq!(r["status"], "stale", "{r}");
    assert_eq!(
        images_used(&c, "u1").await.1,
        2,
        "an ended subscription stays ended"
    );

    // Every received event is kept for inspection.
    let list = c.get("/v1/integrations/stripe/events?limit=50").await.ok();
    assert_eq!(rows(&list["events"]).len(), 8, "{list}");
    let shown = c.get("/v1/integrations/stripe/events/evt_a").await.ok();
    assert_eq!(shown["body"]["id"], "evt_a", "{shown}");
    assert_eq!(shown["deliveries"], 2, "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pre_basil_subscriptions_read_the_period_from_the_subscription() {
    let (s, c, path) = stripe_server().await;
    let now = c.now().await;
    let (start, end) = (now - 7 * DAY, now + 23 * DAY);
    let old = samples::stripe_subscription(
        "evt_pb",
        now,
        "sub_pb",
        "cus_pb",
        Some("u2"),
        "price_pro",
        "trialing",
        (start, end),
        false,
    );
    assert_eq!(deliver(&s, &path, &old).await["applied"], true);
    let sub = c.get_subscription("u2").await.ok();
    assert_eq!(
        (sub["planId"].clone(), sub["status"].clone()),
        (json!("pro"), json!("trialing")),
        "{sub}"
    );
    assert_ts(
        &sub["currentPeriod"]["start"],
        start,
        "period start from the top level",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_signatures_are_refused_and_not_applied() {
    let (s, c, path) = stripe_server().await;
    let now = c.now().await;
    let event = sub_event("evt_sig", now, "price_pro", (now, now + 30 * DAY));
    let body = samples::body(&event);
    let t = jiff::Timestamp::now().as_second();

    // Tampered body: signed for another.
    let other = samples::body(&sub_event(
        "evt_sig",
        now,
        "price_max",
        (now, now + 30 * DAY),
    ));
    let tampered =
        post_signed_stripe(&s, &path, &event, &sign_stripe(&other, STRIPE_SECRET, t)).await;
    let e = tampered.err(400, "invalid_signature");
    assert!(
        !e["message"].as_str().unwrap().contains("evt_sig"),
        "no body in errors: {e}"
    );
    // Wrong secret.
    post_stripe(&s, &path, &event, "whsec_other")
        .await
        .err(400, "invalid_signature");
    // Stale timestamp (the real clock, 301 s ago).
    post_signed_stripe(
        &s,
        &path,
        &event,
        &sign_stripe(&body, STRIPE_SECRET, t - 301),
    )
    .await
    .err(400, "invalid_signature");
    // v0 only: a valid HMAC under an unknown scheme is ignored.
    let v1 = sign_stripe(&body, STRIPE_SECRET, t);
    let v0_only = v1.replace("v1=", "v0=");
    post_signed_stripe(&s, &path, &event, &v0_only)
        .await
        .err(400, "invalid_signature");
    // No header at all.
    s.anonymous()
        .post_with_headers(&path, event.clone(), &[])
        .await
        .err(400, "invalid_signature");
    // An unknown endpoint.
    post_stripe(&s, "/webhooks/stripe/we_nope", &event, STRIPE_SECRET)
        .await
        .err(404, "not_found");
    c.get_subscription("u1").await.err(404, "not_found");
    let log = s.log_all();
    assert!(log.contains("signature does not verify"), "logged: {log}");
    assert!(!log.contains("evt_sig"), "the body is never logged");

    // Rotation: two secrets configured, either verifies; two v1 entries, either is enough.
    c.put(
        "/v1/integrations/stripe",
        json!({"webhookSecrets": ["whsec_new", STRIPE_SECRET]}),
    )
    .await
    .ok();
    let both = format!(
        "{},v1={}",
        sign_stripe(&body, "whsec_new", t),
        sign_stripe(&body, "whsec_gone", t)
            .split("v1=")
            .nth(1)
            .unwrap()
    );
    let ok = post_signed_stripe(&s, &path, &event, &both).await.ok();
    assert_eq!(ok["applied"], true, "{ok}");
    assert_eq!(c.get_subscription("u1").await.ok()["planId"], "pro");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pack_purchase_grants_credits_once() {
    let (s, c, path) = stripe_server().await;
    let now = c.now().await;
    let paid = samples::stripe_checkout_payment(
        "evt_p1",
        now,
        "cs_1",
        Some("cus_9"),
        Some("u9"),
        Some("pi_1"),
        Some("pack50"),
        None,
    );
    let a = deliver(&s, &path, &paid).await;
    assert_eq!(a["applied"], true, "{a}");
    let again = deliver(&s, &path, &paid).await;
    assert_eq!(again["duplicate"], true, "{again}");
    // Another event for the same payment (an async success after the session) grants nothing.
    let async_ok = samples::with_type(
        samples::with_field(paid, "/id", json!("evt_p2")),
        "checkout.session.async_payment_succeeded",
    );
    let b = deliver(&s, &path, &async_ok).await;
    assert_eq!(b["applied"], false, "{b}");
    let credits = c.get("/v1/users/u9/credits").await.ok();
    let grants = rows(&credits["grants"]);
    assert_eq!(grants.len(), 1, "{credits}");
    assert_eq!(
        (
            int(&grants[0], "quantity"),
            grants[0]["externalRef"].clone()
        ),
        (50, json!("pi_1"))
    );
    // By price id instead of pack id.
    let by_price = samples::stripe_checkout_payment(
        "evt_p3",
        now,
        "cs_3",
        Some("cus_9"),
        Some("u9"),
        None,
        None,
        Some("price_pack50"),
    );
    assert_eq!(deliver(&s, &path, &by_price).await["applied"], true);
    let credits = c.get("/v1/users/u9/credits").await.ok();
    assert_eq!(rows(&credits["grants"]).len(), 2, "{credits}");
    assert!(
        rows(&credits["grants"])
            .iter()
            .any(|g| g["externalRef"] == "cs_3"),
        "no payment intent: the session id"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_for_an_unknown_customer_waits_for_its_mapping() {
    let (s, c, path) = stripe_server().await;
    let now = c.now().await;
    let anon = samples::stripe_subscription(
        "evt_w1",
        now,
        "sub_w",
        "cus_w",
        None,
        "price_pro",
        "active",
        (now, now + 30 * DAY),
        true,
    );
    let w = deliver(&s, &path, &anon).await;
    assert_eq!(w["status"], "unresolved", "{w}");
    assert!(w["note"].as_str().unwrap().contains("cus_w"), "{w}");
    // Checkout names the user: the mapping is learnt and the waiting event applies.
    let checkout = samples::stripe_checkout_subscription(
        "evt_w2",
        now + 1,
        "cs_w",
        "cus_w",
        Some("u7"),
        "sub_w",
    );
    assert_eq!(deliver(&s, &path, &checkout).await["applied"], true);
    assert_eq!(c.get_subscription("u7").await.ok()["planId"], "pro");
    // A mapping set by hand does the same.
    let other = samples::stripe_subscription(
        "evt_w3",
        now,
        "sub_x",
        "cus_x",
        None,
        "price_pro",
        "active",
        (now, now + 30 * DAY),
        true,
    );
    assert_eq!(deliver(&s, &path, &other).await["status"], "unresolved");
    let m = c
        .put(
            "/v1/integrations/stripe/customers/cus_x",
            json!({"userId": "u8"}),
        )
        .await
        .ok();
    assert_eq!(m["replayed"][0]["status"], "applied", "{m}");
    assert_eq!(c.get_subscription("u8").await.ok()["planId"], "pro");
    // Replay by hand after fixing the plans: an unmapped price, then mapped.
    let unmapped = samples::stripe_subscription(
        "evt_w4",
        now + 2,
        "sub_y",
        "cus_x",
        Some("u8"),
        "price_new",
        "active",
        (now, now + 30 * DAY),
        true,
    );
    assert_eq!(deliver(&s, &path, &unmapped).await["status"], "ignored");
    let mut doc = plans();
    doc["plans"][1]["stripePriceIds"] = json!(["price_pro", "price_new"]);
    c.put_plans(doc).await.ok();
    let r = c
        .post("/v1/integrations/stripe/events/evt_w4/replay", json!({}))
        .await
        .ok();
    assert_eq!(r["status"], "applied", "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn past_due_keeps_the_plan_unless_the_environment_ends_it() {
    let (s, c, path) = stripe_server().await;
    let now = c.now().await;
    let period = (now, now + 30 * DAY);
    deliver(&s, &path, &sub_event("evt_1", now, "price_pro", period)).await;
    assert_eq!(c.get("/v1/settings").await.ok()["pastDue"], "keep");
    let due = samples::stripe_subscription(
        "evt_2",
        now + 1,
        "sub_1",
        "cus_1",
        Some("u1"),
        "price_pro",
        "past_due",
        period,
        true,
    );
    deliver(&s, &path, &due).await;
    let sub = c.get_subscription("u1").await.ok();
    assert_eq!(
        (sub["planId"].clone(), sub["status"].clone()),
        (json!("pro"), json!("past_due")),
        "{sub}"
    );
    let set = c
        .call(
            Method::PATCH,
            "/v1/settings",
            Some(json!({"pastDue": "end"})),
        )
        .await
        .ok();
    assert_eq!(set["pastDue"], "end");
    c.call(
        Method::PATCH,
        "/v1/settings",
        Some(json!({"pastdue": "end"})),
    )
    .await
    .invalid("pastdue");
    let due = samples::with_field(
        samples::with_field(due, "/id", json!("evt_3")),
        "/created",
        json!(now + 2),
    );
    deliver(&s, &path, &due).await;
    assert_eq!(images_used(&c, "u1").await.1, 2, "ended: the default plan");
}

#[tokio::test(flavor = "multi_thread")]
async fn polar_subscriptions_and_orders_with_standard_and_legacy_secrets() {
    let (s, c) = TestServer::with_plans(plans()).await;
    // A secret made after 2026-09-08: whsec_ + base64 of the key.
    let standard = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let i = c
        .put(
            "/v1/integrations/polar",
            json!({"webhookSecrets": [standard]}),
        )
        .await
        .ok();
    let path = i["webhookPath"].as_str().unwrap().to_string();
    let now = c.now().await;
    let post = |event: Value, id: &'static str, legacy: bool, secret: &'static str| {
        let s = &s;
        let path = path.clone();
        async move {
            let t = jiff::Timestamp::now().as_second();
            let sig = sign_standard(id, t, &samples::body(&event), secret, legacy);
            let ts = t.to_string();
            s.anonymous()
                .post_with_headers(
                    &path,
                    event,
                    &[
                        ("webhook-id", id),
                        ("webhook-timestamp", &ts),
                        ("webhook-signature", &sig),
                    ],
                )
                .await
        }
    };
    let period = (now - 60, now + 30 * DAY);
    let created = samples::polar_subscription(
        "subscription.created",
        now,
        "ps-1",
        "pc-1",
        Some("u1"),
        "prod-pro-uuid",
        "active",
        period,
        None,
    );
    let a = post(created.clone(), "msg_1", false, standard).await.ok();
    assert_eq!(a["applied"], true, "{a}");
    let sub = c.get_subscription("u1").await.ok();
    assert_eq!(sub["planId"], "pro");
    assert_ts(&sub["currentPeriod"]["start"], now - 60, "Polar's period");
    assert_eq!(rows(&c.history("u1").await.ok())[0]["source"], "polar");
    // The legacy key (the whole secret's bytes) verifies too; a wrong key does not.
    let legacy = post(
        samples::polar_cancel(created.clone(), true, None),
        "msg_2",
        true,
        standard,
    )
    .await
    .ok();
    assert_eq!(legacy["applied"], true, "{legacy}");
    assert_ts(
        &c.get_subscription("u1").await.ok()["endsAt"],
        now + 30 * DAY,
        "cancel at period end",
    );
    post(
        created.clone(),
        "msg_3",
        false,
        "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    )
    .await
    .err(400, "invalid_signature");
    // Revoked: access ends now.
    let revoked = samples::polar_revoked(
        samples::with_field(created, "/timestamp", json!(samples_time(now + 5))),
        now + 5,
    );
    assert_eq!(
        post(revoked, "msg_4", false, standard).await.ok()["applied"],
        true
    );
    assert_eq!(images_used(&c, "u1").await.1, 2, "back on free");
    // A one-time order of a pack's product grants it once.
    let order = samples::polar_order_paid(
        now,
        "order-1",
        "pc-1",
        Some("u1"),
        "prod-pack-uuid",
        "purchase",
        None,
    );
    assert_eq!(
        post(order.clone(), "msg_5", false, standard).await.ok()["applied"],
        true
    );
    assert_eq!(
        post(order, "msg_5", false, standard).await.ok()["duplicate"],
        true
    );
    let credits = c.get("/v1/users/u1/credits").await.ok();
    assert_eq!(rows(&credits["grants"]).len(), 1, "{credits}");
    assert_eq!(rows(&credits["grants"])[0]["externalRef"], "order-1");
}

fn samples_time(t: i64) -> String {
    fmt_ts(t)
}

/// What the fake Stripe saw: (identifier, status answered, form fields, headers).
type Seen = Arc<Mutex<Vec<(String, u16, HashMap<String, String>, String)>>>;

/// A local HTTP server standing for Stripe's meter events endpoint: the first request is
/// answered 500, every later one 200.
async fn fake_stripe() -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head_end, length) = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        break (i + 4, length);
                    }
                };
                while buf.len() < head_end + length {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
                let form: HashMap<String, String> = body
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (decode(k), decode(v)))
                    .collect();
                let status = {
                    let mut seen = log.lock().unwrap();
                    let status = if seen.is_empty() { 500 } else { 200 };
                    seen.push((
                        form.get("identifier").cloned().unwrap_or_default(),
                        status,
                        form,
                        head,
                    ));
                    status
                };
                let reason = if status == 200 {
                    "OK"
                } else {
                    "Internal Server Error"
                };
                let answer = format!("HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}");
                let _ = sock.write_all(answer.as_bytes()).await;
            });
        }
    });
    (base, seen)
}

/// Percent-decoding of a form field (`+` is a space).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn committed_usage_reaches_the_stripe_meter_once_each() {
    let (base, seen) = fake_stripe().await;
    let (s, c) = TestServer::with_plans(plans()).await;
    let i = c
        .put(
            "/v1/integrations/stripe",
            json!({"webhookSecrets": [STRIPE_SECRET], "meterForwarding": {
                "enabled": true, "apiKey": "sk_test_meter", "apiBase": base,
                "eventNames": {"image.render": "image_generations"}}}),
        )
        .await
        .ok();
    assert_eq!(i["meterForwarding"]["apiKey"], "sk_test_…eter", "{i}");
    c.put(
        "/v1/integrations/stripe/customers/cus_m",
        json!({"userId": "u1"}),
    )
    .await
    .ok();
    let tracked = c.track_q("u1", "image.render", 1).await;
    let r = c
        .reserve(json!({"userId": "u1", "event": "image.render", "quantity": 1}))
        .await
        .ok();
    let rid = r["reservationId"].as_str().unwrap().to_string();
    let committed = c.commit(&rid, json!({})).await.ok();
    c.track_q("u1", "text.chat", 1).await; // not forwarded
    let ids = [
        tracked["eventId"].as_str().unwrap().to_string(),
        committed["eventId"].as_str().unwrap().to_string(),
    ];

    let mut delivered = Vec::new();
    for _ in 0..200 {
        let list = c
            .get("/v1/integrations/stripe/meter-events?status=delivered")
            .await
            .ok();
        delivered = rows(&list["meterEvents"]);
        if delivered.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        delivered.len(),
        2,
        "both delivered: {delivered:?} {:?}",
        seen.lock().unwrap()
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].1, 500, "the first attempt was answered 500");
    for id in &ids {
        let ok: Vec<_> = seen
            .iter()
            .filter(|(ident, status, _, _)| ident == id && *status == 200)
            .collect();
        assert_eq!(ok.len(), 1, "{id} delivered exactly once: {seen:?}");
        let (_, _, form, head) = ok[0];
        assert_eq!(form["event_name"], "image_generations");
        assert_eq!(form["payload[stripe_customer_id]"], "cus_m");
        assert!(
            head.to_lowercase()
                .contains("content-type: application/x-www-form-urlencoded"),
            "{head}"
        );
        assert!(
            head.contains("Bearer sk_test_meter")
                || head.to_lowercase().contains("bearer sk_test_meter"),
            "{head}"
        );
    }
    let values: Vec<&str> = ids
        .iter()
        .map(|id| {
            seen.iter()
                .find(|(i, s, _, _)| i == id && *s == 200)
                .unwrap()
                .2["payload[value]"]
                .as_str()
        })
        .collect();
    assert_eq!(values, ["1", "1"]);
    assert!(
        seen.iter().all(|(i, ..)| ids.contains(i)),
        "nothing else forwarded"
    );
    let retried = delivered.iter().find(|m| m["attempts"] == 2);
    assert!(
        retried.is_some(),
        "the event answered 500 was sent twice: {delivered:?}"
    );
    let metrics = s.anonymous().get("/metrics").await.text;
    for line in [
        r#"tollgate_meter_event_attempts_total{outcome="delivered"} 2"#,
        r#"tollgate_meter_event_attempts_total{outcome="retry"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_sets_integrations_and_lists_and_replays_events() {
    let (s, c) = TestServer::with_plans(plans()).await;
    let (ok, out, err) = tollgate(
        &s,
        &["integrations", "set", "stripe", "--secret", STRIPE_SECRET],
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("/webhooks/stripe/we_") && out.contains("whsec_…cret"),
        "{out}"
    );
    assert!(
        !out.contains(STRIPE_SECRET),
        "the secret is never printed: {out}"
    );
    let path = c.get("/v1/integrations/stripe").await.ok()["webhookPath"]
        .as_str()
        .unwrap()
        .to_string();
    let now = c.now().await;
    let event = samples::stripe_subscription(
        "evt_cli",
        now,
        "sub_c",
        "cus_c",
        None,
        "price_pro",
        "active",
        (now, now + 30 * DAY),
        true,
    );
    assert_eq!(deliver(&s, &path, &event).await["status"], "unresolved");
    let (ok, out, _) = tollgate(
        &s,
        &["webhooks", "list", "stripe", "--status", "unresolved"],
    );
    assert!(
        ok && out.contains("evt_cli") && out.contains("unresolved"),
        "{out}"
    );
    let (ok, out, err) = tollgate(
        &s,
        &[
            "integrations",
            "map-customer",
            "stripe",
            "cus_c",
            "--user",
            "u_c",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("evt_cli applied"),
        "the waiting event applied: {out}"
    );
    let (ok, out, _) = tollgate(&s, &["webhooks", "replay", "stripe", "evt_cli"]);
    assert!(ok && out.contains("evt_cli applied"), "{out}");
    let (ok, out, _) = tollgate(&s, &["webhooks", "show", "stripe", "evt_cli"]);
    assert!(ok && out.contains("\"sub_c\""), "the raw body: {out}");
    let (ok, _, err) = tollgate(
        &s,
        &["integrations", "set", "stripe", "--secret", "sk_test_oops"],
    );
    assert!(!ok && err.contains("whsec_"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_per_seat_quantity_caps_the_accounts_members() {
    let (s, c, path) = stripe_server().await;
    let now = c.now().await;
    let team = samples::stripe_subscription(
        "evt_t1",
        now,
        "sub_t",
        "cus_t",
        None,
        "price_team_seat",
        "active",
        (now, now + 30 * DAY),
        true,
    );
    let team = samples::with_field(team, "/data/object/metadata", json!({"account_id": "acme"}));
    let team = samples::with_field(team, "/data/object/items/data/0/quantity", json!(3));
    let a = deliver(&s, &path, &team).await;
    assert_eq!(a["applied"], true, "{a}");
    let acct = c.get("/v1/accounts/acme").await.ok();
    assert_eq!(
        acct["seats"]["max"], 3,
        "the quantity bought, not the plan's 2: {acct}"
    );
    for u in ["m1", "m2", "m3"] {
        c.put(&format!("/v1/accounts/acme/members/{u}"), json!({}))
            .await
            .ok();
    }
    c.put("/v1/accounts/acme/members/m4", json!({}))
        .await
        .err(409, "seat_limit_reached");
    // Polar's seats do the same.
    let i = c
        .put("/v1/integrations/polar", json!({"webhookSecrets": ["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"], "accountIdFrom": ["metadata.account_id"]}))
        .await
        .ok();
    let polar_path = i["webhookPath"].as_str().unwrap().to_string();
    let sub = samples::polar_subscription(
        "subscription.created",
        now,
        "ps-t",
        "pc-t",
        None,
        "prod-team-uuid",
        "active",
        (now, now + 30 * DAY),
        Some(5),
    );
    let sub = samples::with_field(sub, "/data/metadata", json!({"account_id": "beta"}));
    let t = jiff::Timestamp::now().as_second();
    let sig = sign_standard(
        "msg_t",
        t,
        &samples::body(&sub),
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        false,
    );
    let ts = t.to_string();
    let r = s
        .anonymous()
        .post_with_headers(
            &polar_path,
            sub,
            &[
                ("webhook-id", "msg_t"),
                ("webhook-timestamp", &ts),
                ("webhook-signature", &sig),
            ],
        )
        .await
        .ok();
    assert_eq!(r["applied"], true, "{r}");
    assert_eq!(c.get("/v1/accounts/beta").await.ok()["seats"]["max"], 5);
}
