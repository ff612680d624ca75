//! Prompt and response logging (API.md §9, §12; docs/api.md "Prompt logging and erasure"):
//! off by default, stored and capped at 32 KiB when on, cleared once older than the
//! environment's `promptRetentionDays` by its clock, erased with their user by
//! `DELETE /v1/users/{userId}` (with the traits `identify` stored) while the events keep their
//! counts; and `recordDenials`, which decides whether a denial is a `denied` event.

mod common;

use common::*;

const TEXT_MAX: usize = 32 * KIB;

fn plans(quota: u64) -> Value {
    free_plan(
        json!([{"id": "images", "quota": quota, "window": lifetime(),
        "match": [{"event": "image.*"}]}]),
    )
}

async fn settings(c: &Client, patch: Value) -> Resp {
    c.call(Method::PATCH, "/v1/settings", Some(patch)).await
}

async fn event(c: &Client, id: &str) -> Value {
    c.get(&format!("/v1/events/{id}")).await.ok()
}

/// Tracks one image for `user` with a prompt and a response; returns the event id.
async fn track(c: &Client, user: &str, prompt: &str, response: &str) -> String {
    let t = c
        .track(
            json!({"userId": user, "event": "image.render", "quantity": 2,
            "prompt": prompt, "response": response}),
        )
        .await
        .ok();
    t["eventId"].as_str().expect("eventId").to_string()
}

async fn denied_events(c: &Client) -> usize {
    let page = c.get("/v1/events?status=denied").await.ok();
    page["events"].as_array().expect("events").len()
}

#[tokio::test(flavor = "multi_thread")]
async fn prompt_logging_is_off_until_switched_on_and_capped_when_on() {
    let (_s, c) = TestServer::with_plans(plans(1000)).await;
    let s = c.get("/v1/settings").await.ok();
    assert_eq!(
        (
            &s["promptLogging"],
            &s["promptRetentionDays"],
            &s["recordDenials"]
        ),
        (&json!(false), &json!(30), &json!(true))
    );
    // Off: checked for size and dropped.
    let id = track(&c, "u1", "a red fox", "an image").await;
    let e = event(&c, &id).await;
    assert_eq!((&e["prompt"], &e["response"]), (&Value::Null, &Value::Null));
    assert_eq!(e["truncated"], false);
    assert_eq!(e["quantity"], 2);

    // On: the PATCH is in force on this node at once.
    let on = settings(&c, json!({"promptLogging": true})).await.ok();
    assert_eq!(on["promptLogging"], true);
    assert_eq!(
        on["promptRetentionDays"], 30,
        "a patch changes only its fields"
    );
    let id = track(&c, "u1", "a red fox", "an image").await;
    let e = event(&c, &id).await;
    assert_eq!(
        (&e["prompt"], &e["response"]),
        (&json!("a red fox"), &json!("an image"))
    );
    assert_eq!(e["truncated"], false);

    // The cap: 32 KiB is kept whole (just inside), one byte more is cut and flagged.
    let inside = "p".repeat(TEXT_MAX);
    let id = track(&c, "u1", &inside, "r").await;
    let e = event(&c, &id).await;
    assert_eq!(e["prompt"].as_str().map(str::len), Some(TEXT_MAX));
    assert_eq!(e["truncated"], false);
    let outside = "q".repeat(TEXT_MAX + 1);
    let id = track(&c, "u1", "p", &outside).await;
    let e = event(&c, &id).await;
    assert_eq!(e["response"].as_str().map(str::len), Some(TEXT_MAX));
    assert_eq!(e["truncated"], true);

    // Reserve carries the prompt, commit the response; a release carries one too.
    let r = c
        .reserve(
            json!({"userId": "u2", "event": "image.render", "quantity": 1,
            "prompt": "reserved prompt"}),
        )
        .await
        .ok();
    let rid = r["reservationId"].as_str().expect("admitted");
    let done = c.commit(rid, json!({"response": "committed"})).await.ok();
    let e = event(&c, done["eventId"].as_str().expect("eventId")).await;
    assert_eq!(
        (&e["prompt"], &e["response"]),
        (&json!("reserved prompt"), &json!("committed"))
    );

    // Off again: the next call logs nothing.
    settings(&c, json!({"promptLogging": false})).await.ok();
    let id = track(&c, "u1", "a red fox", "an image").await;
    let e = event(&c, &id).await;
    assert_eq!((&e["prompt"], &e["response"]), (&Value::Null, &Value::Null));
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_take_the_prompt_fields_within_their_limits() {
    let (_s, c) = TestServer::with_plans(plans(10)).await;
    settings(&c, json!({"corsOrigins": ["https://app.example"]}))
        .await
        .ok();
    for inside in [1, 3650] {
        let s = settings(&c, json!({"promptRetentionDays": inside}))
            .await
            .ok();
        assert_eq!(s["promptRetentionDays"], inside);
        assert_eq!(s["corsOrigins"], json!(["https://app.example"]));
    }
    for outside in [json!(0), json!(3651), json!(-1), json!(1.5), json!("30")] {
        settings(
            &c,
            json!({"promptRetentionDays": outside, "promptLogging": true}),
        )
        .await
        .invalid("promptRetentionDays");
    }
    settings(&c, json!({"recordDenials": "no"}))
        .await
        .invalid("recordDenials");
    let s = c.get("/v1/settings").await.ok();
    assert_eq!(s["promptRetentionDays"], 3650);
    assert_eq!(s["promptLogging"], false, "a refused patch changes nothing");
    assert_eq!(s["recordDenials"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn logged_text_is_purged_once_past_retention_and_the_event_stays() {
    let (_s, c) = TestServer::with_plans(plans(1000)).await;
    settings(&c, json!({"promptLogging": true, "promptRetentionDays": 1}))
        .await
        .ok();
    let old = track(&c, "u1", "old prompt", "old response").await;
    // Just inside a day (a few seconds of real time may pass meanwhile): kept.
    c.advance_clock(DAY - 10).await;
    let young = track(&c, "u1", "young prompt", "young response").await;
    assert_eq!(event(&c, &old).await["prompt"], "old prompt");
    // Just outside: the advance purges it; the event and its quantity stay.
    c.advance_clock(20).await;
    let e = event(&c, &old).await;
    assert_eq!((&e["prompt"], &e["response"]), (&Value::Null, &Value::Null));
    assert_eq!(
        (&e["quantity"], &e["status"]),
        (&json!(2), &json!("tracked"))
    );
    assert_eq!(event(&c, &young).await["prompt"], "young prompt");
    assert_eq!(
        limit(&c.usage("u1").await.ok(), "images")["used"],
        4,
        "usage counts the purged event still"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn erasing_a_user_removes_their_text_and_traits_and_keeps_their_usage() {
    let (s, c) = TestServer::with_plans(plans(1000)).await;
    settings(&c, json!({"promptLogging": true})).await.ok();
    c.post(
        "/v1/identify",
        json!({"anonymousId": "anon_1", "userId": "u1",
        "traits": {"plan": "free", "name": "Ada"}}),
    )
    .await
    .ok();
    c.post(
        "/v1/identify",
        json!({"anonymousId": "anon_2", "userId": "u1",
        "traits": {"plan": "pro", "seats": 3}}),
    )
    .await
    .ok();
    let mine = [
        track(&c, "u1", "p1", "r1").await,
        track(&c, "u1", "p2", "r2").await,
    ];
    let theirs = track(&c, "u2", "p3", "r3").await;
    let before = c.usage("u1").await.ok();
    let erased = c.delete("/v1/users/u1").await.ok();
    assert_eq!(
        erased,
        json!({"erased": {"prompts": 2, "responses": 2, "traits": 3}})
    );
    for id in &mine {
        let e = event(&c, id).await;
        assert_eq!((&e["prompt"], &e["response"]), (&Value::Null, &Value::Null));
        assert_eq!((&e["quantity"], &e["userId"]), (&json!(2), &json!("u1")));
    }
    assert_eq!(c.usage("u1").await.ok(), before, "usage unchanged");
    assert_eq!(event(&c, &theirs).await["prompt"], "p3");
    // Done already, and a user with nothing stored: zeros, 200.
    for user in ["u1", "nobody"] {
        let again = c.delete(&format!("/v1/users/{user}")).await.ok();
        assert_eq!(
            again,
            json!({"erased": {"prompts": 0, "responses": 0, "traits": 0}})
        );
    }
    // Secret keys only; the id is a user id.
    s.publishable()
        .delete("/v1/users/u2")
        .await
        .err(403, "requires_secret_key");
    c.delete(&format!("/v1/users/{}", "u".repeat(257)))
        .await
        .invalid("userId");
    assert_eq!(event(&c, &theirs).await["prompt"], "p3");
}

/// `{"k0": 0, ...}` with `n` keys.
fn keys(n: usize, prefix: &str) -> Value {
    Value::Object((0..n).map(|i| (format!("{prefix}{i}"), json!(i))).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn identify_stores_traits_within_their_limits() {
    let (_s, c) = TestServer::with_plans(plans(10)).await;
    let identify = |anon: &'static str, traits: Value| {
        let c = c.clone();
        async move {
            c.post(
                "/v1/identify",
                json!({"anonymousId": anon, "userId": "u1",
                "traits": traits}),
            )
            .await
        }
    };
    // 64 keys: just inside; 65: just outside.
    identify("anon_a", keys(65, "k")).await.invalid("traits");
    identify("anon_a", keys(64, "k")).await.ok();
    // Merged past 64 (a new key over 64 stored): refused, and nothing else happened.
    identify("anon_b", json!({"new": 1}))
        .await
        .invalid("traits");
    identify("anon_b", json!({"k0": "again"})).await.ok();
    // 16 KiB as JSON: `{"a":"…"}` is 8 bytes around the value.
    c.delete("/v1/users/u1").await.ok();
    identify("anon_c", json!({"a": "x".repeat(16 * KIB - 7)}))
        .await
        .invalid("traits");
    identify("anon_c", json!({"a": "x".repeat(16 * KIB - 8)}))
        .await
        .ok();
    identify("anon_d", json!(["not", "an", "object"]))
        .await
        .invalid("traits");
    let erased = c.delete("/v1/users/u1").await.ok();
    assert_eq!(erased["erased"]["traits"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn denials_are_recorded_unless_record_denials_is_off() {
    let (_s, c) = TestServer::with_plans(plans(1)).await;
    let over = json!({"userId": "u1", "event": "image.render", "quantity": 2});
    assert_eq!(c.reserve(over.clone()).await.ok()["allowed"], false);
    assert_eq!(denied_events(&c).await, 1);
    let s = settings(&c, json!({"recordDenials": false})).await.ok();
    assert_eq!(s["recordDenials"], false);
    assert_eq!(c.reserve(over.clone()).await.ok()["allowed"], false);
    let mut enforced = over.clone();
    enforced["enforce"] = json!(true);
    assert_eq!(c.track(enforced).await.ok()["allowed"], false);
    assert_eq!(denied_events(&c).await, 1, "no denied event while off");
    settings(&c, json!({"recordDenials": true})).await.ok();
    assert_eq!(c.reserve(over).await.ok()["allowed"], false);
    assert_eq!(denied_events(&c).await, 2);
}

/// Erasing runs in steps of `LOGGED_TEXT_BATCH_MAX` (1,000) rows: a user with one more
/// logged event than a step takes is erased whole, in one call, and counted exactly.
#[tokio::test(flavor = "multi_thread")]
async fn erasing_more_than_a_step_erases_everything_in_one_call() {
    const STEP: usize = 1000;
    let (_s, c) = TestServer::with_plans(plans(1_000_000)).await;
    settings(&c, json!({"promptLogging": true})).await.ok();
    let tasks: Vec<_> = (0..8)
        .map(|worker| {
            let c = c.clone();
            tokio::spawn(async move {
                for i in (worker..=STEP).step_by(8) {
                    let prompt = format!("prompt {i}");
                    track(&c, "heavy", &prompt, "r").await;
                }
            })
        })
        .collect();
    for t in futures::future::join_all(tasks).await {
        t.expect("a tracking task");
    }
    let erased = c.delete("/v1/users/heavy").await.ok();
    assert_eq!(
        erased,
        json!({"erased": {"prompts": STEP + 1, "responses": STEP + 1, "traits": 0}})
    );
    assert_eq!(
        limit(&c.usage("heavy").await.ok(), "images")["used"],
        2 * (STEP + 1),
        "usage unchanged"
    );
}
