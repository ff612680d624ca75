//! API.md §1 and §2: every input limit at and just past its value, and every error code a
//! client can provoke, with the `{"error": {"code", "message"}}` shape (checked by `Resp::err`).
//! A 5xx fails any test at once (see `common`).

mod common;

use common::*;

/// Everything allowed: a big catch-all limit and `unmatchedEvents: allow`.
async fn open_server() -> (TestServer, Client) {
    TestServer::with_plans(json!({
        "defaultPlan": "free", "unmatchedEvents": "allow",
        "plans": [{"id": "free", "limits": [
            {"id": "all", "quota": 1_000_000, "window": {"type": "lifetime"}, "match": [{"event": "*"}]}]}]
    }))
    .await
}

fn reserve_body(edit: impl FnOnce(&mut Value)) -> Value {
    let mut b = json!({"userId": "u1", "event": "image.render", "quantity": 1});
    edit(&mut b);
    b
}

/// Reserve must answer 200 (the input is valid).
async fn accepted(c: &Client, body: Value) -> Value {
    let r = c.reserve(body).await;
    assert_eq!(r.status, 200, "valid input rejected: {}", r.text);
    r.body
}

#[tokio::test(flavor = "multi_thread")]
async fn user_id_is_1_to_256_bytes_without_control_characters() {
    let (_s, c) = open_server().await;
    accepted(&c, reserve_body(|b| b["userId"] = json!("u".repeat(256)))).await;
    // Bytes, not characters: 128 × "é" is 256 bytes.
    accepted(&c, reserve_body(|b| b["userId"] = json!("é".repeat(128)))).await;
    c.reserve(reserve_body(|b| b["userId"] = json!("u".repeat(257))))
        .await
        .invalid("userId");
    c.reserve(reserve_body(|b| {
        b["userId"] = json!(format!("{}a", "é".repeat(128)))
    }))
    .await
    .invalid("userId");
    c.reserve(reserve_body(|b| b["userId"] = json!("")))
        .await
        .invalid("userId");
    for bad in ["u\u{0}1", "u\n1", "u\u{1f}", "u\u{7f}"] {
        c.reserve(reserve_body(|b| b["userId"] = json!(bad)))
            .await
            .invalid("userId");
    }
    c.reserve(json!({"event": "image.render"}))
        .await
        .invalid("userId");
    // The same limit on track and check.
    c.track(reserve_body(|b| b["userId"] = json!("u".repeat(257))))
        .await
        .invalid("userId");
    c.check(reserve_body(|b| b["userId"] = json!("u".repeat(257))))
        .await
        .invalid("userId");
    c.track(reserve_body(|b| b["userId"] = json!("u".repeat(256))))
        .await
        .ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn event_name_is_1_to_128_of_a_small_alphabet() {
    let (_s, c) = open_server().await;
    let alphabet = "Az09_.:-";
    let name_128: String = alphabet.chars().cycle().take(128).collect();
    accepted(&c, reserve_body(|b| b["event"] = json!(name_128.clone()))).await;
    c.reserve(reserve_body(|b| b["event"] = json!(format!("{name_128}x"))))
        .await
        .invalid("event");
    for bad in [
        "",
        "image render",
        "image/render",
        "imagé",
        "image*",
        "a\u{1}",
    ] {
        c.reserve(reserve_body(|b| b["event"] = json!(bad)))
            .await
            .invalid("event");
    }
    c.reserve(json!({"userId": "u1"})).await.invalid("event");
    c.track(reserve_body(|b| b["event"] = json!("image render")))
        .await
        .invalid("event");
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_at_most_32_entries_keys_64_values_512_bytes() {
    let (_s, c) = open_server().await;
    let entries = |n: usize| -> Value {
        Value::Object((0..n).map(|i| (format!("k{i}"), json!("v"))).collect())
    };
    accepted(&c, reserve_body(|b| b["metadata"] = entries(32))).await;
    let e = c
        .reserve(reserve_body(|b| b["metadata"] = entries(33)))
        .await
        .err(400, "invalid_request");
    assert!(
        e["field"]
            .as_str()
            .is_some_and(|f| f.starts_with("metadata")),
        "{e}"
    );

    let key_64: String = "Az09_.:-".chars().cycle().take(64).collect();
    accepted(
        &c,
        reserve_body(|b| b["metadata"] = json!({ key_64.clone(): "v" })),
    )
    .await;
    for bad_key in [
        format!("{key_64}x"),
        "bad key".to_string(),
        "".to_string(),
        "ké".to_string(),
    ] {
        let e = c
            .reserve(reserve_body(|b| {
                b["metadata"] = json!({ bad_key.clone(): "v" })
            }))
            .await
            .err(400, "invalid_request");
        assert!(
            e["field"]
                .as_str()
                .is_some_and(|f| f.starts_with("metadata")),
            "key {bad_key:?}: {e}"
        );
    }

    accepted(
        &c,
        reserve_body(|b| b["metadata"] = json!({"k": "v".repeat(512)})),
    )
    .await;
    accepted(
        &c,
        reserve_body(|b| b["metadata"] = json!({"k": "é".repeat(256)})),
    )
    .await;
    for bad_value in ["v".repeat(513), format!("{}v", "é".repeat(256))] {
        let e = c
            .reserve(reserve_body(|b| {
                b["metadata"] = json!({ "k": bad_value.clone() })
            }))
            .await
            .err(400, "invalid_request");
        assert!(
            e["field"]
                .as_str()
                .is_some_and(|f| f.starts_with("metadata")),
            "{e}"
        );
    }
    // Values are strings: a flat string map.
    let e = c
        .reserve(reserve_body(|b| b["metadata"] = json!({"k": 1})))
        .await
        .err(400, "invalid_request");
    assert!(
        e["field"]
            .as_str()
            .is_some_and(|f| f.starts_with("metadata")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_key_at_most_128_bytes() {
    let (_s, c) = open_server().await;
    accepted(
        &c,
        reserve_body(|b| b["idempotencyKey"] = json!("k".repeat(128))),
    )
    .await;
    c.reserve(reserve_body(|b| {
        b["idempotencyKey"] = json!("k".repeat(129))
    }))
    .await
    .invalid("idempotencyKey");
    c.track(reserve_body(|b| {
        b["idempotencyKey"] = json!("k".repeat(129))
    }))
    .await
    .invalid("idempotencyKey");
}

#[tokio::test(flavor = "multi_thread")]
async fn ttl_seconds_1_to_3600() {
    let (_s, c) = open_server().await;
    let now = c.now().await;
    let a = accepted(&c, reserve_body(|b| b["ttlSeconds"] = json!(1))).await;
    assert_ts_near(&a["expiresAt"], now + 1, 5, "ttl 1");
    let a = accepted(&c, reserve_body(|b| b["ttlSeconds"] = json!(3600))).await;
    assert_ts_near(&a["expiresAt"], now + 3600, 5, "ttl 3600");
    c.reserve(reserve_body(|b| b["ttlSeconds"] = json!(0)))
        .await
        .invalid("ttlSeconds");
    c.reserve(reserve_body(|b| b["ttlSeconds"] = json!(3601)))
        .await
        .invalid("ttlSeconds");
    let id = Client::must_allow(&a);
    c.extend(&id, 3600).await.ok();
    c.extend(&id, 3601).await.invalid("ttlSeconds");
    c.extend(&id, 0).await.invalid("ttlSeconds");
}

#[tokio::test(flavor = "multi_thread")]
async fn quantity_is_an_integer_up_to_2_pow_53_minus_1() {
    let (_s, c) = open_server().await;
    c.reserve(reserve_body(|b| b["quantity"] = json!(0)))
        .await
        .invalid("quantity");
    // Valid input, merely over the quota: 200 with allowed false.
    let a = accepted(&c, reserve_body(|b| b["quantity"] = json!(QUANTITY_MAX))).await;
    assert_eq!(a["allowed"], false, "{a}");
    assert_eq!(strs(&a["reasons"]), vec!["limit_reached"]);
    c.reserve(reserve_body(|b| b["quantity"] = json!(QUANTITY_MAX + 1)))
        .await
        .invalid("quantity");
    for bad in [json!(-1), json!(1.5), json!("1"), json!(1e3)] {
        c.reserve(reserve_body(|b| b["quantity"] = bad.clone()))
            .await
            .invalid("quantity");
    }
    c.track(reserve_body(|b| b["quantity"] = json!(QUANTITY_MAX + 1)))
        .await
        .invalid("quantity");
    let id = Client::must_allow(&accepted(&c, reserve_body(|_| {})).await);
    c.commit(&id, json!({"quantity": QUANTITY_MAX + 1}))
        .await
        .invalid("quantity");
    c.commit(&id, json!({"quantity": -1}))
        .await
        .invalid("quantity");
    c.get_reservation(&id).await.ok();
    assert_eq!(
        c.get_reservation(&id).await.ok()["status"],
        "pending",
        "a rejected commit applies nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prompt_and_response_over_32_kib_are_truncated_not_rejected() {
    let (_s, c) = open_server().await;
    let long = "p".repeat(40 * KIB);
    let a = accepted(&c, reserve_body(|b| b["prompt"] = json!(long.clone()))).await;
    let id = Client::must_allow(&a);
    c.commit(&id, json!({"response": long.clone()})).await.ok();
    let t = c
        .track(reserve_body(|b| {
            b["prompt"] = json!(long.clone());
            b["response"] = json!(long.clone());
        }))
        .await
        .ok();
    assert_eq!(t["recorded"], true);
}

/// A reserve body of exactly `len` bytes (padding the prompt).
fn reserve_of_len(len: usize) -> Vec<u8> {
    let head = br#"{"userId":"u1","event":"image.render","prompt":""#;
    let tail = br#""}"#;
    let mut body = head.to_vec();
    body.resize(len - tail.len(), b'x');
    body.extend_from_slice(tail);
    assert_eq!(body.len(), len);
    serde_json::from_slice::<Value>(&body).expect("valid json");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn request_body_at_most_1_mib() {
    let (s, c) = open_server().await;
    let key = Some(s.keys.test_secret.as_str());
    let r = c
        .send(
            Method::POST,
            "/v1/reserve",
            key,
            Some("application/json"),
            Some(reserve_of_len(MIB)),
        )
        .await;
    assert_eq!(
        r.status,
        200,
        "a 1 MiB body is within the limit: {}",
        &r.text[..r.text.len().min(300)]
    );
    let r = c
        .send(
            Method::POST,
            "/v1/reserve",
            key,
            Some("application/json"),
            Some(reserve_of_len(MIB + 1)),
        )
        .await;
    r.err(413, "payload_too_large");
    // Nothing was applied by the rejected one: only the first reservation holds.
    assert_counts(&c.limit_state("u1", "all").await, 1_000_000, 0, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_fields_are_rejected_by_name() {
    let (_s, c) = open_server().await;
    c.reserve(json!({"userId": "u1", "event": "image.render", "quantiy": 5}))
        .await
        .invalid("quantiy");
    c.track(json!({"userId": "u1", "event": "image.render", "quantiy": 5}))
        .await
        .invalid("quantiy");
    c.check(json!({"userId": "u1", "event": "image.render", "ttlSeconds": 5}))
        .await
        .invalid("ttlSeconds");
    let id = Client::must_allow(&accepted(&c, reserve_body(|_| {})).await);
    c.commit(&id, json!({"quantiy": 5}))
        .await
        .invalid("quantiy");
    c.release(&id, json!({"reasn": "x"})).await.invalid("reasn");
    c.subscribe(json!({"userId": "u1", "planId": "free", "cycleStrat": "2026-01-01T00:00:00Z"}))
        .await
        .invalid("cycleStrat");
    assert_counts(&c.limit_state("u1", "all").await, 1_000_000, 0, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_wrong_types_and_content_type() {
    let (s, c) = open_server().await;
    let key = Some(s.keys.test_secret.as_str());
    let json_ct = Some("application/json");
    for body in [
        &b"{\"userId\": \"u1\", "[..],
        b"not json",
        b"",
        b"[1,2]",
        b"{\"userId\": \"u1\", \"event\": \"e\"} trailing",
    ] {
        let r = c
            .send(
                Method::POST,
                "/v1/reserve",
                key,
                json_ct,
                Some(body.to_vec()),
            )
            .await;
        r.err(400, "invalid_request");
    }
    c.reserve(json!({"userId": 42, "event": "image.render"}))
        .await
        .invalid("userId");
    c.reserve(json!({"userId": "u1", "event": "image.render", "metadata": ["a"]}))
        .await
        .invalid("metadata");
    c.track(json!({"userId": "u1", "event": "image.render", "enforce": "yes"}))
        .await
        .invalid("enforce");

    let valid = serde_json::to_vec(&reserve_body(|_| {})).unwrap();
    let r = c
        .send(
            Method::POST,
            "/v1/reserve",
            key,
            Some("text/plain"),
            Some(valid.clone()),
        )
        .await;
    r.err(415, "unsupported_media_type");
    let r = c
        .send(
            Method::POST,
            "/v1/reserve",
            key,
            Some("application/x-www-form-urlencoded"),
            Some(valid.clone()),
        )
        .await;
    r.err(415, "unsupported_media_type");
    // Charset parameter is fine.
    let r = c
        .send(
            Method::POST,
            "/v1/reserve",
            key,
            Some("application/json; charset=utf-8"),
            Some(valid),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn occurred_at_at_most_35_days_back() {
    let (_s, c) = open_server().await;
    let now = c.now().await;
    let t = c
        .track(reserve_body(|b| {
            b["occurredAt"] = json!(fmt_ts(now - 34 * DAY))
        }))
        .await
        .ok();
    assert_eq!(t["recorded"], true);
    c.track(reserve_body(|b| {
        b["occurredAt"] = json!(fmt_ts(now - 36 * DAY))
    }))
    .await
    .invalid("occurredAt");
    c.track(reserve_body(|b| b["occurredAt"] = json!("yesterday")))
        .await
        .invalid("occurredAt");
}

#[tokio::test(flavor = "multi_thread")]
async fn release_reason_500_bytes_error_code_100_bytes() {
    let (_s, c) = open_server().await;
    let r1 = Client::must_allow(&accepted(&c, reserve_body(|_| {})).await);
    c.release(&r1, json!({"reason": "r".repeat(501)}))
        .await
        .invalid("reason");
    c.release(&r1, json!({"errorCode": "e".repeat(101)}))
        .await
        .invalid("errorCode");
    assert_eq!(c.get_reservation(&r1).await.ok()["status"], "pending");
    let a = c
        .release(
            &r1,
            json!({"reason": "r".repeat(500), "errorCode": "e".repeat(100)}),
        )
        .await
        .ok();
    assert_eq!(a["status"], "released");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_missing_garbage_malformed_are_401() {
    let (s, c) = open_server().await;
    let body = reserve_body(|_| {});
    c.request(Method::POST, "/v1/reserve", None, Some(body.clone()))
        .await
        .err(401, "invalid_key");
    c.request(
        Method::POST,
        "/v1/reserve",
        Some("nope"),
        Some(body.clone()),
    )
    .await
    .err(401, "invalid_key");
    c.request(
        Method::POST,
        "/v1/reserve",
        Some("sk_test_0000000000000000"),
        Some(body.clone()),
    )
    .await
    .err(401, "invalid_key");
    c.request(
        Method::GET,
        "/v1/users/u1/usage",
        Some("sk_live_garbage"),
        None,
    )
    .await
    .err(401, "invalid_key");
    let basic = format!("Basic {}", s.keys.test_secret);
    c.request_with_authorization(Method::POST, "/v1/reserve", &basic, body.clone())
        .await
        .err(401, "invalid_key");
    c.request_with_authorization(Method::POST, "/v1/reserve", "Bearer", body.clone())
        .await
        .err(401, "invalid_key");
    // The admin token is not an API key.
    c.request(
        Method::POST,
        "/v1/reserve",
        Some(&s.keys.admin_token),
        Some(body),
    )
    .await
    .err(401, "invalid_key");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_key_is_401() {
    let (s, _c) = open_server().await;
    let admin = s.admin();
    let k = admin
        .post(
            &format!("/admin/v1/projects/{}/keys", s.keys.project_id),
            json!({"environment": "test", "kind": "secret", "name": "ci"}),
        )
        .await
        .ok();
    let key = k["key"].as_str().expect("key").to_string();
    let kc = s.client_with(&key);
    kc.usage("u1").await.ok();
    admin
        .delete(&format!("/admin/v1/keys/{}", k["keyId"].as_str().unwrap()))
        .await
        .ok();
    kc.usage("u1").await.err(401, "invalid_key");
    kc.reserve(reserve_body(|_| {}))
        .await
        .err(401, "invalid_key");
    // The other keys still work.
    s.client().usage("u1").await.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn publishable_key_on_secret_routes_is_403() {
    let (s, c) = open_server().await;
    let id = Client::must_allow(&accepted(&c, reserve_body(|_| {})).await);
    let p = s.publishable();
    p.reserve(reserve_body(|_| {}))
        .await
        .err(403, "requires_secret_key");
    p.check(reserve_body(|_| {}))
        .await
        .err(403, "requires_secret_key");
    p.track(reserve_body(|_| {}))
        .await
        .err(403, "requires_secret_key");
    p.commit(&id, json!({}))
        .await
        .err(403, "requires_secret_key");
    p.release(&id, json!({}))
        .await
        .err(403, "requires_secret_key");
    p.extend(&id, 60).await.err(403, "requires_secret_key");
    p.get_reservation(&id).await.err(403, "requires_secret_key");
    p.usage("u1").await.err(403, "requires_secret_key");
    p.subscribe(json!({"userId": "u1", "planId": "free"}))
        .await
        .err(403, "requires_secret_key");
    p.get_subscription("u1")
        .await
        .err(403, "requires_secret_key");
    p.put_plans(json!({"plans": []}))
        .await
        .err(403, "requires_secret_key");
    // Nothing was applied.
    assert_eq!(c.get_reservation(&id).await.ok()["status"], "pending");
    c.get_subscription("u1").await.err(404, "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_clock_is_forbidden_in_live() {
    let (s, c) = open_server().await;
    let live = s.live();
    live.clock().await.err(403, "forbidden");
    live.post("/v1/test/clock/advance", json!({"seconds": 60}))
        .await
        .err(403, "forbidden");
    let clock = c.clock().await.ok();
    assert_eq!(int(&clock, "offsetSeconds"), 0);
    ts_secs(&clock["now"]);
    c.post("/v1/test/clock/advance", json!({"seconds": -1}))
        .await
        .invalid("seconds");
    let a = c.advance_clock(90).await;
    let clock = c.clock().await.ok();
    assert_eq!(int(&clock, "offsetSeconds"), 90, "{a} / {clock}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_reservation_is_404() {
    let (s, c) = open_server().await;
    let id = "rsv_doesnotexist";
    c.get_reservation(id).await.err(404, "not_found");
    c.commit(id, json!({})).await.err(404, "not_found");
    c.release(id, json!({})).await.err(404, "not_found");
    c.extend(id, 60).await.err(404, "not_found");
    c.get_reservation("garbage").await.err(404, "not_found");
    // Another environment's reservation is unknown too.
    let real = Client::must_allow(&accepted(&c, reserve_body(|_| {})).await);
    s.live().get_reservation(&real).await.err(404, "not_found");
}
