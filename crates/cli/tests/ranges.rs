//! Issue 10, items 2 and 3: every figure the API shows stays an exact integer in
//! `0 ..= 2^53-1`. A write that would take a counter, a hold or a sum past it is refused as a
//! whole with `400` naming `quantity`, nothing applied; no saturation, no wrap, no REAL column,
//! no 500, on SQLite and on PostgreSQL.

mod common;

use common::*;
use std::sync::Arc;

/// A quarter of the range: four fit, the fifth does not.
const QUARTER: u64 = QUANTITY_MAX / 4;

/// Asserts the `400` of an out-of-range write: `field` is `quantity` and the message names
/// the limit.
#[track_caller]
fn assert_out_of_range(r: &Resp, limit_id: &str) {
    let e = r.invalid("quantity");
    let message = e["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(limit_id) && message.contains("2^53"),
        "the message should name the limit and the range: {e}"
    );
}

/// Every figure of every limit state in `answer` is an integer in range.
#[track_caller]
fn assert_in_range(answer: &Value) {
    for l in answer["limits"].as_array().expect("limits") {
        for field in ["quota", "used", "reserved", "remaining"] {
            let n = l[field].as_u64().unwrap_or_else(|| panic!("{field}: {l}"));
            assert!(n <= QUANTITY_MAX, "{field} out of range: {l}");
        }
        assert!(int(l, "used") as u64 + int(l, "reserved") as u64 <= QUANTITY_MAX);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_weighted_quantity_past_the_range_is_refused_before_anything_is_counted() {
    let (_s, c) = TestServer::with_plans(free_plan(json!([
        { "id": "weighted", "quota": 100, "multiplier": 4096, "window": lifetime(),
          "match": [{"event": "image.*"}] },
        { "id": "weighted_soft", "quota": 100, "multiplier": 4096, "enforcement": "soft",
          "window": lifetime(), "match": [{"event": "soft.*"}] }
    ])))
    .await;
    for event in ["image.render", "soft.render"] {
        let limit_id = if event == "image.render" {
            "weighted"
        } else {
            "weighted_soft"
        };
        let body = json!({"userId": "u1", "event": event, "quantity": QUANTITY_MAX});
        assert_out_of_range(&c.track(body.clone()).await, limit_id);
        assert_out_of_range(&c.reserve(body.clone()).await, limit_id);
        assert_out_of_range(&c.check(body).await, limit_id);
        // 2^41 × 4096 = 2^53: one past the range.
        let body = json!({"userId": "u1", "event": event, "quantity": 1u64 << 41});
        assert_out_of_range(&c.track(body).await, limit_id);
    }
    let u = c.usage("u1").await.ok();
    assert_counts(limit(&u, "weighted"), 100, 0, 0);
    assert_counts(limit(&u, "weighted_soft"), 100, 0, 0);
    let events = c.get("/v1/events?userId=u1").await.ok();
    assert_eq!(
        events["events"],
        json!([]),
        "a refused write records no event"
    );

    // 2^40 × 4096 = 2^52 fits: recorded, the part past the quota is overage.
    let t = c
        .track(json!({"userId": "u1", "event": "image.render", "quantity": 1u64 << 40}))
        .await
        .ok();
    assert_eq!(t["recorded"], true, "{t}");
    // 2^52 units against a quota of 100: all but 100 units are over, which rounds up to every
    // one of the 2^40 events.
    assert_eq!(t["overage"], 1u64 << 40, "{t}");
    assert_in_range(&t);
    assert_eq!(c.limit_state("u1", "weighted").await["used"], 1u64 << 52);

    // A soft reserve of that size is held; a commit that would pass the range is refused
    // and the reservation stays pending for a commit that fits.
    let r = c
        .reserve(json!({"userId": "u2", "event": "soft.render", "quantity": 1u64 << 40}))
        .await
        .ok();
    let id = Client::must_allow(&r);
    assert_in_range(&r);
    assert_out_of_range(
        &c.commit(&id, json!({"quantity": 1u64 << 41})).await,
        "weighted_soft",
    );
    assert_eq!(c.get_reservation(&id).await.ok()["status"], "pending");
    let done = c
        .commit(&id, json!({"quantity": (1u64 << 41) - 1}))
        .await
        .ok();
    assert_in_range(&done);
    assert_eq!(
        c.limit_state("u2", "weighted_soft").await["used"],
        ((1u64 << 41) - 1) * 4096
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_tracks_and_soft_holds_stop_at_the_end_of_the_range() {
    let (s, c) = TestServer::with_plans(free_plan(json!([
        { "id": "total", "quota": 10, "window": lifetime(), "match": [{"event": "image.*"}] },
        { "id": "soft", "quota": 10, "enforcement": "soft", "window": lifetime(),
          "match": [{"event": "soft.*"}] }
    ])))
    .await;
    let c = Arc::new(c.tolerating_overload());
    const CLIENTS: usize = 48;

    // Un-enforced tracks of a quarter of the range on a lifetime limit: four are recorded,
    // every other one is refused whole.
    for (user, event, path) in [
        ("tracks", "image.render", "/v1/track"),
        ("holds", "soft.render", "/v1/reserve"),
    ] {
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let body = json!({"userId": user, "event": event, "quantity": QUARTER});
                loop {
                    let r = c.post(path, body.clone()).await;
                    if r.status != 503 {
                        return r;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }));
        }
        let mut accepted = 0;
        for t in tasks {
            let r = t.await.expect("client task");
            match r.status {
                200 => {
                    assert_in_range(&r.body);
                    accepted += 1;
                }
                _ => assert_out_of_range(&r, if user == "tracks" { "total" } else { "soft" }),
            }
        }
        assert_eq!(accepted, 4, "{user}: exactly four quarters fit in 2^53-1");
    }
    let tracks = c.limit_state("tracks", "total").await;
    assert_eq!(tracks["used"], 4 * QUARTER, "{tracks}");
    let holds = c.limit_state("holds", "soft").await;
    assert_eq!(
        (holds["used"].clone(), holds["reserved"].clone()),
        (json!(0), json!(4 * QUARTER))
    );

    // The user is not broken: every read and a small write still answer, and after a restart
    // the stored counters load back exact (no REAL column on SQLite, no bigint overflow).
    let mut s = s;
    s.restart().await;
    let c = s.client();
    let u = c.usage("tracks").await.ok();
    assert_in_range(&u);
    assert_eq!(limit(&u, "total")["used"], 4 * QUARTER);
    let check = c
        .check(json!({"userId": "tracks", "event": "image.render"}))
        .await
        .ok();
    assert_eq!(check["allowed"], false, "{check}");
    let t = c.track_q("tracks", "image.render", 3).await;
    assert_eq!(t["recorded"], true, "{t}");
    assert_eq!(
        c.limit_state("tracks", "total").await["used"],
        4 * QUARTER + 3
    );
    assert_out_of_range(
        &c.track(json!({"userId": "tracks", "event": "image.render", "quantity": QUARTER}))
            .await,
        "total",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backdated_charge_counts_in_every_rolling_window_it_lands_in() {
    let (_s, c) = TestServer::with_plans(free_plan(json!([
        { "id": "hourly", "quota": 10, "window": {"type": "rolling", "seconds": 3600},
          "match": [{"event": "image.*"}] }
    ])))
    .await;
    let now = c.now().await;
    let half = QUANTITY_MAX / 2 + 1;
    c.track_q("u1", "image.render", half).await;
    // A window ending ten minutes ago does not hold the charge above, but every window from
    // now on holds both: refused, although the window at `occurredAt` alone has room.
    let backdated = json!({"userId": "u1", "event": "image.render", "quantity": half,
                           "occurredAt": fmt_ts(now - 600)});
    assert_out_of_range(&c.track(backdated).await, "hourly");
    let early = json!({"userId": "u1", "event": "image.render", "quantity": half,
                       "occurredAt": fmt_ts(now - 2 * HOUR)});
    assert_eq!(
        c.track(early).await.ok()["recorded"],
        true,
        "two hours back shares no window"
    );
    assert_eq!(c.limit_state("u1", "hourly").await["used"], half);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identify_that_would_sum_past_the_range_changes_nothing() {
    let (_s, c) = TestServer::with_plans(free_plan(json!([
        { "id": "total", "quota": 10, "window": lifetime(), "match": [{"event": "image.*"}] }
    ])))
    .await;
    let half = QUANTITY_MAX / 2 + 1;
    c.track_q("anon_1", "image.render", half).await;
    c.track_q("u1", "image.render", half).await;
    let r = c
        .post(
            "/v1/identify",
            json!({"anonymousId": "anon_1", "userId": "u1"}),
        )
        .await;
    let e = r.invalid("anonymousId");
    assert!(
        e["message"].as_str().unwrap_or_default().contains("total"),
        "{e}"
    );
    assert_eq!(c.limit_state("anon_1", "total").await["used"], half);
    assert_eq!(c.limit_state("u1", "total").await["used"], half);
    // Nothing was aliased: a small identify of another anonymous id still works.
    c.track_q("anon_2", "image.render", 1).await;
    let ok = c
        .post(
            "/v1/identify",
            json!({"anonymousId": "anon_2", "userId": "u1"}),
        )
        .await
        .ok();
    assert_eq!(ok["merged"], true, "{ok}");
    assert_eq!(c.limit_state("u1", "total").await["used"], half + 1);
}
