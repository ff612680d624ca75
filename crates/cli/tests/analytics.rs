//! Analytics (API.md §9, docs/analytics.md), black-box with exact numbers: the seed's
//! question (premium images of one user in the last hour, by model), a daily series in a
//! non-UTC zone, top users by cost, the cost table, margin per plan and per user, and a
//! four-step funnel over captured and usage events.

mod common;

use common::*;
use jiff::{SignedDuration, Timestamp, ToSpan};

const TOKEN: &str = "X-Tollgate-User-Token";

fn plans() -> Value {
    json!({
        "defaultPlan": "free",
        "plans": [
            {"id": "free", "price": {"amount": 0, "currency": "usd"},
             "limits": [{"id": "everything", "quota": 1_000_000, "window": {"type": "lifetime"},
                         "match": [{"event": "*"}]}]},
            {"id": "pro", "price": {"amount": 2000, "currency": "usd", "interval": "month"},
             "limits": [{"id": "everything", "quota": 1_000_000, "window": {"type": "lifetime"},
                         "match": [{"event": "*"}]}]}
        ],
        "costs": [
            {"match": {"event": "llm.tokens", "metadata": {"model": "gpt-4o"}}, "microsPerUnit": 5},
            {"match": {"event": "image.*"}, "microsPerUnit": 40000}
        ]
    })
}

fn at(t: Timestamp) -> String {
    t.to_string()
}

async fn now(c: &Client) -> Timestamp {
    c.clock().await.ok()["now"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn track(c: &Client, body: Value) -> Value {
    c.track(body).await.ok()
}

async fn usage(c: &Client, body: Value) -> Vec<Value> {
    let answer = c.post("/v1/analytics/usage", body).await.ok();
    answer["rows"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn premium_images_of_one_user_in_the_last_hour_by_model() {
    let (_s, c) = TestServer::with_plans(plans()).await;
    let image = |user: &str, model: &str, tier: &str, q: u64| {
        json!({"userId": user, "event": "image.render", "quantity": q,
               "metadata": {"model": model, "tier": tier}})
    };
    // Two hours ago: premium images that the last hour must not count.
    track(&c, image("x", "flux-pro", "premium", 5)).await;
    c.advance_clock(2 * 3600).await;
    let start = now(&c).await;
    for _ in 0..3 {
        track(&c, image("x", "flux-pro", "premium", 1)).await;
    }
    track(&c, image("x", "dall-e-3", "premium", 2)).await;
    track(&c, image("x", "sdxl", "standard", 4)).await;
    track(&c, image("y", "flux-pro", "premium", 7)).await;
    // A reservation committed counts; one released does not.
    let r = c.reserve(image("x", "dall-e-3", "premium", 3)).await.ok();
    c.commit(r["reservationId"].as_str().unwrap(), json!({}))
        .await
        .ok();
    let r = c.reserve(image("x", "flux-pro", "premium", 9)).await.ok();
    c.release(r["reservationId"].as_str().unwrap(), json!({}))
        .await
        .ok();
    c.advance_clock(60).await;
    let to = now(&c).await;
    let from = to - SignedDuration::from_hours(1);
    assert!(
        from < start,
        "the last hour holds every event since the clock moved"
    );
    let rows = usage(
        &c,
        json!({"from": at(from), "to": at(to),
               "filters": {"userId": "x", "event": "image.*", "metadata": {"tier": "premium"}},
               "groupBy": ["metadata.model"], "metrics": ["events", "quantity", "costMicros"]}),
    )
    .await;
    assert_eq!(
        rows,
        [
            json!({"metadata.model": "dall-e-3", "events": 2, "quantity": 5,
                   "costMicros": 200_000}),
            json!({"metadata.model": "flux-pro", "events": 3, "quantity": 3,
                   "costMicros": 120_000}),
        ]
    );
    // The same with every status, grouped by status too: the release shows, nothing else.
    let rows = usage(
        &c,
        json!({"from": at(from), "to": at(to),
               "filters": {"userId": "x", "metadata": {"tier": ["premium"]},
                           "status": ["committed", "tracked", "released"]},
               "groupBy": ["status"], "metrics": ["events", "quantity", "users"]}),
    )
    .await;
    assert_eq!(
        rows,
        [
            json!({"status": "committed", "events": 1, "quantity": 3, "users": 1}),
            json!({"status": "released", "events": 1, "quantity": 9, "users": 1}),
            json!({"status": "tracked", "events": 4, "quantity": 5, "users": 1}),
        ]
    );
    // Every model of every user, with distinct users.
    let rows = usage(
        &c,
        json!({"from": at(from), "to": at(to), "groupBy": ["metadata.model"],
               "metrics": ["users", "quantity"]}),
    )
    .await;
    assert_eq!(
        rows,
        [
            json!({"metadata.model": "dall-e-3", "users": 1, "quantity": 5}),
            json!({"metadata.model": "flux-pro", "users": 2, "quantity": 10}),
            json!({"metadata.model": "sdxl", "users": 1, "quantity": 4}),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daily_series_follows_the_time_zone() {
    let (_s, c) = TestServer::with_plans(plans()).await;
    let noon = Timestamp::from_second(c.advance_to_next_utc_hour(12).await).unwrap();
    let m = |minutes: i64| SignedDuration::from_mins(minutes);
    let (hour, day) = (m(60), m(24 * 60));
    // (when, quantity): Asia/Kolkata is UTC+05:30, so its days start at 18:30Z.
    let events = [
        (noon - hour, 1),             // Kolkata day D, 16:30 local
        (noon - hour * 12, 2),        // D, 05:30 local
        (noon - m(17 * 60 + 30), 4),  // D, 00:00 local: the boundary
        (noon - m(17 * 60 + 31), 8),  // D-1, 23:59 local
        (noon - hour * 30, 16),       // D-1, 11:30 local
        (noon - day - hour * 16, 32), // D-1, 01:30 local
        (noon - day * 2, 64),         // D-2, 17:30 local
    ];
    for (when, q) in events {
        track(
            &c,
            json!({"userId": "u1", "event": "chat.message", "quantity": q,
                   "occurredAt": at(when)}),
        )
        .await;
    }
    let from = noon - day * 3 - hour * 12;
    let to = noon + m(1);
    let series = |zone: &str| {
        json!({"from": at(from), "to": at(to), "timezone": zone, "groupBy": ["day"],
               "metrics": ["events", "quantity"]})
    };
    let local_midnight = |days_back: i32| at(noon - m(17 * 60 + 30) - day * days_back);
    assert_eq!(
        usage(&c, series("Asia/Kolkata")).await,
        [
            json!({"day": local_midnight(2), "events": 1, "quantity": 64}),
            json!({"day": local_midnight(1), "events": 3, "quantity": 56}),
            json!({"day": local_midnight(0), "events": 3, "quantity": 7}),
        ]
    );
    let utc_midnight = |days_back: i32| at(noon - hour * 12 - day * days_back);
    assert_eq!(
        usage(&c, series("UTC")).await,
        [
            json!({"day": utc_midnight(2), "events": 2, "quantity": 96}),
            json!({"day": utc_midnight(1), "events": 3, "quantity": 28}),
            json!({"day": utc_midnight(0), "events": 2, "quantity": 3}),
        ]
    );
    // Hours in Kolkata start on the half hour.
    let rows = usage(
        &c,
        json!({"from": at(noon - hour * 2), "to": at(to), "timezone": "Asia/Kolkata",
               "groupBy": ["hour"], "metrics": ["quantity"]}),
    )
    .await;
    assert_eq!(rows, [json!({"hour": at(noon - m(90)), "quantity": 1})]);
}

#[tokio::test(flavor = "multi_thread")]
async fn top_users_by_cost_and_the_cost_table() {
    let (_s, c) = TestServer::with_plans(plans()).await;
    // The table costs gpt-4o tokens at 5 micros and images at 40,000; a given cost wins.
    let t = track(
        &c,
        json!({"userId": "a", "event": "llm.tokens", "quantity": 1000,
               "metadata": {"model": "gpt-4o"}}),
    )
    .await;
    let e = c
        .get(&format!("/v1/events/{}", t["eventId"].as_str().unwrap()))
        .await
        .ok();
    assert_eq!(e["costMicros"], 5000);
    track(
        &c,
        json!({"userId": "a", "event": "llm.tokens", "quantity": 10,
               "metadata": {"model": "gpt-4o"}, "costMicros": 7}),
    )
    .await;
    let t = track(
        &c,
        json!({"userId": "b", "event": "llm.tokens", "quantity": 500,
               "metadata": {"model": "other"}}),
    )
    .await;
    let e = c
        .get(&format!("/v1/events/{}", t["eventId"].as_str().unwrap()))
        .await
        .ok();
    assert_eq!(e["costMicros"], Value::Null, "no rule matches, no cost");
    let r = c
        .reserve(json!({"userId": "b", "event": "image.render", "quantity": 3}))
        .await
        .ok();
    c.commit(r["reservationId"].as_str().unwrap(), json!({"quantity": 2}))
        .await
        .ok();
    track(
        &c,
        json!({"userId": "c", "event": "chat.message", "quantity": 9, "costMicros": 1_000_000}),
    )
    .await;
    let top = c.get("/v1/analytics/top-users").await.ok();
    assert_eq!(
        top["users"],
        json!([
            {"userId": "c", "events": 1, "quantity": 9, "costMicros": 1_000_000},
            {"userId": "b", "events": 2, "quantity": 502, "costMicros": 80_000},
            {"userId": "a", "events": 2, "quantity": 1010, "costMicros": 5007},
        ])
    );
    let top = c
        .get("/v1/analytics/top-users?by=quantity&limit=2")
        .await
        .ok();
    let ids: Vec<&str> = top["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["userId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    let top = c
        .get("/v1/analytics/top-users?by=events&event=llm.*")
        .await
        .ok();
    assert_eq!(top["users"][0]["userId"], "a");
    assert_eq!(
        top["users"][1],
        json!({"userId": "b", "events": 1, "quantity": 500,
                                        "costMicros": 0})
    );
    c.get("/v1/analytics/top-users?limit=1001")
        .await
        .invalid("limit");
    c.get("/v1/analytics/top-users?limit=1000").await.ok();
    c.get("/v1/analytics/top-users?by=users")
        .await
        .invalid("by");
}

#[tokio::test(flavor = "multi_thread")]
async fn margin_per_plan_and_per_user() {
    let (_s, c) = TestServer::with_plans(plans()).await;
    let midnight = Timestamp::from_second(c.advance_to_next_utc_hour(0).await).unwrap();
    for user in ["p1", "p2"] {
        c.subscribe(json!({"userId": user, "planId": "pro", "cycleStart": at(midnight)}))
            .await
            .ok();
    }
    // The range: the subscriptions' second month, whole.
    let zoned = midnight.to_zoned(jiff::tz::TimeZone::UTC);
    let from = zoned.checked_add(1.month()).unwrap().timestamp();
    let to = zoned.checked_add(2.months()).unwrap().timestamp();
    c.advance_to(from.as_second()).await;
    let spend = |user: &str, cost: u64| json!({"userId": user, "event": "chat.message", "quantity": 1, "costMicros": cost});
    track(&c, spend("p1", 25_000_000)).await; // costs more than pro's $20
    track(&c, spend("p2", 1_000_000)).await;
    track(&c, spend("f1", 3_000_000)).await; // on free: all loss
    let margin = |group: &str| {
        format!(
            "/v1/analytics/margin?from={}&to={}&groupBy={group}",
            at(from),
            at(to)
        )
    };
    let by_plan = c.get(&margin("planId")).await.ok();
    assert_eq!(
        by_plan["rows"],
        json!([
            {"planId": "free", "revenueMicros": 0, "costMicros": 3_000_000,
             "marginMicros": -3_000_000},
            {"planId": "pro", "revenueMicros": 40_000_000, "costMicros": 26_000_000,
             "marginMicros": 14_000_000},
        ])
    );
    let by_user = c.get(&margin("userId")).await.ok();
    assert_eq!(
        by_user["rows"],
        json!([
            {"userId": "p1", "revenueMicros": 20_000_000, "costMicros": 25_000_000,
             "marginMicros": -5_000_000},
            {"userId": "f1", "revenueMicros": 0, "costMicros": 3_000_000,
             "marginMicros": -3_000_000},
            {"userId": "p2", "revenueMicros": 20_000_000, "costMicros": 1_000_000,
             "marginMicros": 19_000_000},
        ])
    );
    // Half the month: half the price.
    let half = from + SignedDuration::from_millis(to.duration_since(from).as_millis() as i64 / 2);
    let r = c
        .get(&format!(
            "/v1/analytics/margin?from={}&to={}&groupBy=planId",
            at(from),
            at(half)
        ))
        .await
        .ok();
    let pro = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["planId"] == "pro")
        .unwrap()
        .clone();
    assert_eq!(pro["revenueMicros"], 20_000_000);
    c.get("/v1/analytics/margin?groupBy=model")
        .await
        .invalid("groupBy");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_four_step_funnel_over_captured_and_usage_events() {
    let (s, c) = TestServer::with_plans(plans()).await;
    let base = now(&c).await - SignedDuration::from_hours(2);
    let capture = |user: &str, event: &str, secs: i64| json!({"userId": user, "event": event, "occurredAt": at(base + SignedDuration::from_secs(secs))});
    let render = |user: &str, secs: i64| json!({"userId": user, "event": "image.render", "occurredAt": at(base + SignedDuration::from_secs(secs))});
    // (user, steps done at seconds after base)
    for user in ["a", "b", "c", "d", "g"] {
        c.post("/v1/capture", capture(user, "signed_up", 0))
            .await
            .ok();
    }
    for user in ["a", "b", "c", "g"] {
        track(&c, render(user, 10)).await;
    }
    for user in ["a", "b"] {
        c.post("/v1/capture", capture(user, "viewed_paywall", 20))
            .await
            .ok();
    }
    c.post("/v1/capture", capture("a", "upgraded", 30))
        .await
        .ok();
    // g sees the paywall after the hour's window.
    c.post("/v1/capture", capture("g", "viewed_paywall", 3700))
        .await
        .ok();
    c.post("/v1/capture", capture("g", "upgraded", 3710))
        .await
        .ok();
    // e renders before signing up: only the first step.
    track(&c, render("e", 0)).await;
    c.post("/v1/capture", capture("e", "signed_up", 5))
        .await
        .ok();
    // f signs up anonymously, is identified, then goes all the way.
    c.post(
        "/v1/capture",
        json!({"anonymousId": "anon_f", "event": "signed_up", "occurredAt": at(base)}),
    )
    .await
    .ok();
    c.post(
        "/v1/identify",
        json!({"anonymousId": "anon_f", "userId": "f"}),
    )
    .await
    .ok();
    track(&c, render("f", 10)).await;
    // f's last two steps come through the browser: a publishable key and f's user token.
    let token = c.post("/v1/user-tokens", json!({"userId": "f"})).await.ok()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let browser = s.publishable();
    for (event, secs) in [("viewed_paywall", 20), ("upgraded", 30)] {
        let body =
            json!({"event": event, "occurredAt": at(base + SignedDuration::from_secs(secs))});
        let r = browser
            .post_with_headers("/v1/capture", body, &[(TOKEN, &token)])
            .await
            .ok();
        assert_eq!(r, json!({"captured": true}));
    }
    // A token records for its own user only; a publishable key alone records nothing.
    browser
        .post_with_headers(
            "/v1/capture",
            json!({"userId": "a", "event": "upgraded"}),
            &[(TOKEN, &token)],
        )
        .await
        .err(403, "forbidden");
    browser
        .post("/v1/capture", json!({"userId": "a", "event": "upgraded"}))
        .await
        .err(401, "invalid_key");

    let funnel = c
        .post(
            "/v1/analytics/funnel",
            json!({"steps": ["signed_up", "image.render", "viewed_paywall", "upgraded"],
                   "from": at(base - SignedDuration::from_mins(1)),
                   "to": at(base + SignedDuration::from_hours(1)),
                   "withinSeconds": 3600}),
        )
        .await
        .ok();
    assert_eq!(
        funnel["steps"],
        json!([
            {"event": "signed_up", "users": 7},
            {"event": "image.render", "users": 5},
            {"event": "viewed_paywall", "users": 3},
            {"event": "upgraded", "users": 2},
        ])
    );
    // A wider window takes g to the end too.
    let wide = c
        .post(
            "/v1/analytics/funnel",
            json!({"steps": ["signed_up", "image.render", "viewed_paywall", "upgraded"],
                   "from": at(base - SignedDuration::from_mins(1)),
                   "to": at(base + SignedDuration::from_hours(1)),
                   "withinSeconds": 7200}),
        )
        .await
        .ok();
    assert_eq!(wide["steps"][3]["users"], 3);
    // Captures are never metered: the usage of a is its one render.
    let u = c.usage("a").await.ok();
    assert_eq!(u["limits"][0]["used"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_named() {
    let (_s, c) = TestServer::with_plans(plans()).await;
    let (from, to) = ("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z");
    let ask = |extra: Value| {
        let mut body = json!({"from": from, "to": to});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let post = |body: Value| {
        let c = c.clone();
        async move { c.post("/v1/analytics/usage", body).await }
    };
    post(json!({"from": to, "to": from})).await.invalid("to");
    post(ask(json!({"timezone": "Mars/Olympus"})))
        .await
        .invalid("timezone");
    post(ask(json!({"groupBy": ["model"]})))
        .await
        .invalid("groupBy[0]");
    post(ask(json!({"groupBy": ["day", "hour"]})))
        .await
        .invalid("groupBy[1]");
    // Grouping or counting twice by one thing does it once.
    let twice = post(ask(
        json!({"groupBy": ["event", "event"], "metrics": ["events", "events"]}),
    ))
    .await
    .ok();
    assert_eq!(twice, json!({"rows": []}));
    post(ask(json!({"groupBy": ["metadata.a b"]})))
        .await
        .invalid("groupBy[0]");
    post(ask(json!({"metrics": ["revenue"]})))
        .await
        .invalid("metrics[0]");
    post(ask(json!({"filters": {"status": "done"}})))
        .await
        .invalid("filters.status");
    post(ask(json!({"filters": {"event": "image render"}})))
        .await
        .invalid("filters.event");
    let nine: Vec<String> = (0..9).map(|i| format!("metadata.k{i}")).collect();
    post(ask(json!({"groupBy": nine}))).await.invalid("groupBy");
    let eight: Vec<String> = (0..8).map(|i| format!("metadata.k{i}")).collect();
    post(ask(json!({"groupBy": eight}))).await.ok();
    // 10,000 buckets fit, 10,001 do not.
    let hours = |n: i64| {
        let start: Timestamp = from.parse().unwrap();
        json!({"from": from, "to": at(start + n.hours()), "groupBy": ["hour"]})
    };
    post(hours(10_000)).await.ok();
    post(hours(10_001)).await.invalid("groupBy");
    let funnel = |body: Value| {
        let c = c.clone();
        async move { c.post("/v1/analytics/funnel", body).await }
    };
    let steps: Vec<String> = (0..11).map(|i| format!("s{i}")).collect();
    funnel(json!({"steps": steps, "from": from, "to": to, "withinSeconds": 60}))
        .await
        .invalid("steps");
    funnel(json!({"steps": ["a"], "from": from, "to": to, "withinSeconds": 0}))
        .await
        .invalid("withinSeconds");
    funnel(json!({"steps": ["a"], "from": from, "to": to, "withinSeconds": 7_776_001}))
        .await
        .invalid("withinSeconds");
    funnel(json!({"steps": ["a"], "from": from, "to": to, "withinSeconds": 7_776_000}))
        .await
        .ok();
    let capture = |body: Value| {
        let c = c.clone();
        async move { c.post("/v1/capture", body).await }
    };
    capture(json!({"event": "x"})).await.invalid("userId");
    capture(json!({"userId": "u", "anonymousId": "anon_u", "event": "x"}))
        .await
        .invalid("anonymousId");
    capture(json!({"userId": "u", "event": "x", "properties": [1]}))
        .await
        .invalid("properties");
    let big = "v".repeat(wire_max_properties());
    capture(json!({"userId": "u", "event": "x", "properties": {"k": big}}))
        .await
        .invalid("properties");
    let fits = "v".repeat(wire_max_properties() - 8);
    capture(json!({"userId": "u", "event": "x", "properties": {"k": fits}}))
        .await
        .ok();
}

/// `CAPTURE_PROPERTIES_BYTES_MAX`: `{"k":"…"}` is 8 bytes around the value.
fn wire_max_properties() -> usize {
    16 * 1024
}

/// Top users and margins read whole days from the daily rollup and the partial days at either
/// end from the events: the same figures as summing every event, across day boundaries, an
/// identify that moves an anonymous id's days, and released or denied events that never count.
#[tokio::test(flavor = "multi_thread")]
async fn whole_days_from_the_rollup_agree_with_every_event() {
    let (_s, c) = TestServer::with_plans(plans()).await;
    let noon = Timestamp::from_second(c.advance_to_next_utc_hour(12).await).unwrap();
    let h = |hours: i64| SignedDuration::from_hours(hours);
    let spend = |user: &str, when: Timestamp, q: u64, cost: u64| {
        json!({"userId": user, "event": "chat.message", "quantity": q, "costMicros": cost,
               "occurredAt": at(when)})
    };
    // Ten days of usage, some right at midnight, some in today's partial day.
    let mut expected: std::collections::BTreeMap<&str, (u64, u64, u64)> = Default::default();
    for (user, back, q, cost) in [
        ("a", 12, 1, 100),
        ("a", 36, 2, 200),
        ("a", 240, 4, 400),
        ("a", 250, 1000, 0),
        ("b", 12 + 24 * 3, 8, 5000),
        ("b", 1, 16, 10),
        ("anon_c", 50, 32, 700),
        ("c", 60, 64, 1),
    ] {
        track(&c, spend(user, noon - h(back), q, cost)).await;
        let u = if user == "anon_c" { "c" } else { user };
        let e = expected.entry(u).or_default();
        *e = (e.0 + 1, e.1 + q, e.2 + cost);
    }
    // A denial and a release are events too, but not usage.
    let r = c
        .reserve(json!({"userId": "a", "event": "chat.message", "quantity": 1000}))
        .await
        .ok();
    c.release(r["reservationId"].as_str().unwrap(), json!({}))
        .await
        .ok();
    c.post(
        "/v1/identify",
        json!({"anonymousId": "anon_c", "userId": "c"}),
    )
    .await
    .ok();
    let from = noon - h(24 * 11 + 5);
    let to = noon + h(1);
    let top = c
        .get(&format!(
            "/v1/analytics/top-users?from={}&to={}&by=events",
            at(from),
            at(to)
        ))
        .await
        .ok();
    let got: Vec<(String, (u64, u64, u64))> = top["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            let n = |k: &str| u[k].as_u64().unwrap();
            (
                u["userId"].as_str().unwrap().to_string(),
                (n("events"), n("quantity"), n("costMicros")),
            )
        })
        .collect();
    let mut want: Vec<(String, (u64, u64, u64))> =
        expected.iter().map(|(u, v)| (u.to_string(), *v)).collect();
    want.sort_by(|x, y| y.1 .0.cmp(&x.1 .0).then(x.0.cmp(&y.0)));
    assert_eq!(got, want);
    // The same sums from every event (an event glob keeps the query off the rollup).
    let raw = usage(
        &c,
        json!({"from": at(from), "to": at(to), "filters": {"event": "*"},
               "groupBy": ["userId"], "metrics": ["events", "quantity", "costMicros"]}),
    )
    .await;
    let raw: Vec<(String, (u64, u64, u64))> = raw
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().unwrap();
            (
                r["userId"].as_str().unwrap().to_string(),
                (n("events"), n("quantity"), n("costMicros")),
            )
        })
        .collect();
    let mut by_user = want.clone();
    by_user.sort();
    assert_eq!(raw, by_user);
    // A range starting inside a day counts only that day's later events: from 13:00 the day's
    // rest is read from the events; from 03:00 the day is taken whole and its events before
    // 03:00 taken out.
    let late = top_user(&c, (noon - h(240) + h(1), to), "a").await;
    assert_eq!(
        late["events"], 2,
        "the event 240 hours back is before 13:00"
    );
    let early = top_user(&c, (noon - h(249), to), "a").await;
    assert_eq!(
        (early["events"].as_u64(), early["quantity"].as_u64()),
        (Some(3), Some(1 + 2 + 4)),
        "the event at 02:00 is before 03:00"
    );
}

/// One user's row of the top users by events over `[from, to)`.
async fn top_user(c: &Client, (from, to): (Timestamp, Timestamp), user: &str) -> Value {
    let top = c
        .get(&format!(
            "/v1/analytics/top-users?from={}&to={}&by=events",
            at(from),
            at(to)
        ))
        .await
        .ok();
    top["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["userId"] == user)
        .unwrap()
        .clone()
}
