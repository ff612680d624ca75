//! API.md §3 and §4: reserve, commit, release, extend, reservations, track, check, usage.

mod common;

use common::*;

/// Free plan (default): 10 `image.*` a UTC day.
fn images_plan() -> Value {
    free_plan(json!([{
        "id": "images_daily", "label": "Images per day", "quota": 10,
        "window": daily(), "match": [{"event": "image.*"}]
    }]))
}

async fn images_server() -> (TestServer, Client) {
    TestServer::with_plans(images_plan()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn reserve_answer_and_limit_state_fields() {
    let (_s, c) = images_server().await;
    let noon = c.advance_to_next_utc_hour(12).await;
    let day_start = noon.div_euclid(DAY) * DAY;

    let a = c
        .reserve(json!({"userId": "u1", "event": "image.render", "quantity": 4, "metadata": {"model": "flux-pro"}}))
        .await
        .ok();
    assert_eq!(a["allowed"], true, "{a}");
    assert!(
        a["reservationId"].as_str().unwrap().starts_with("rsv_"),
        "{a}"
    );
    assert_ts_near(
        &a["expiresAt"],
        noon + 60,
        10,
        "expiresAt = now + default TTL 60 s",
    );
    assert_eq!(a["planId"], "free");
    assert_eq!(a["reasons"], json!([]));
    assert_eq!(a["deniedBy"], json!([]));
    assert_eq!(a["credits"]["held"], 0, "{a}");
    assert_eq!(limit_ids(&a), vec!["images_daily"]);

    let l = limit(&a, "images_daily");
    assert_eq!(l["label"], "Images per day");
    assert_eq!(l["unit"], "count");
    assert_eq!(l["kind"], "consumable");
    assert_eq!(l["scope"], "user");
    assert_eq!(l["enforcement"], "hard");
    assert_counts(l, 10, 0, 4);
    assert_eq!(int(l, "remaining"), 6);
    assert_ts(
        &l["windowStart"],
        day_start,
        "windowStart of a calendar day",
    );
    assert_ts(
        &l["resetsAt"],
        day_start + DAY,
        "resetsAt of a calendar day",
    );

    // The usage endpoint reports the same state.
    let u = c.usage("u1").await.ok();
    assert_eq!(u["userId"], "u1");
    assert_eq!(u["planId"], "free");
    assert_eq!(u["subscription"], Value::Null, "no subscription: {u}");
    assert_eq!(u["credits"], json!([]));
    let l = limit(&u, "images_daily");
    assert_counts(l, 10, 0, 4);
    assert_ts(&l["windowStart"], day_start, "usage windowStart");
    assert_ts(&l["resetsAt"], day_start + DAY, "usage resetsAt");
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_less_equal_more_and_zero() {
    let (_s, c) = images_server().await;
    c.advance_to_next_utc_hour(12).await;

    // Less than reserved: the rest is returned; a concurrent hold is untouched.
    let other = Client::must_allow(&c.reserve_q("u1", "image.render", 1).await);
    let r1 = Client::must_allow(&c.reserve_q("u1", "image.render", 4).await);
    let a = c.commit(&r1, json!({"quantity": 3})).await.ok();
    assert_eq!(a["reservationId"], r1.as_str());
    assert_eq!(a["status"], "committed");
    assert!(a["eventId"].as_str().unwrap().starts_with("evt_"), "{a}");
    assert_eq!(int(&a, "quantity"), 3);
    assert_eq!(int(&a, "overage"), 0);
    assert_counts(limit(&a, "images_daily"), 10, 3, 1);
    c.release(&other, json!({})).await.ok();

    // Equal (default quantity = the reserved one).
    let r2 = Client::must_allow(&c.reserve_q("u1", "image.render", 2).await);
    let a = c.commit(&r2, json!({})).await.ok();
    assert_eq!(int(&a, "quantity"), 2);
    assert_eq!(int(&a, "overage"), 0);
    assert_counts(limit(&a, "images_daily"), 10, 5, 0);

    // Zero is a valid final quantity.
    let r0 = Client::must_allow(&c.reserve_q("u1", "image.render", 1).await);
    let a = c.commit(&r0, json!({"quantity": 0})).await.ok();
    assert_eq!(int(&a, "quantity"), 0);
    assert_counts(limit(&a, "images_daily"), 10, 5, 0);

    // More: 5 used, 2 held, commit 7 → 5 fit (2 held + 3 extra), 2 are overage, all recorded.
    let r3 = Client::must_allow(&c.reserve_q("u1", "image.render", 2).await);
    let a = c.commit(&r3, json!({"quantity": 7})).await.ok();
    assert_eq!(int(&a, "quantity"), 7);
    assert_eq!(int(&a, "overage"), 2, "{a}");
    assert_counts(limit(&a, "images_daily"), 10, 12, 0);
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 12, 0);

    // Full: the next reserve is denied.
    let d = c.reserve_q("u1", "image.render", 1).await;
    assert_eq!(d["allowed"], false);
    assert_eq!(d["reservationId"], Value::Null);
    assert_eq!(strs(&d["reasons"]), vec!["limit_reached"]);
    assert_eq!(strs(&d["deniedBy"]), vec!["images_daily"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn release_returns_the_hold_and_is_idempotent() {
    let (_s, c) = images_server().await;
    let r = Client::must_allow(&c.reserve_q("u1", "image.render", 7).await);
    let a = c
        .release(
            &r,
            json!({"reason": "provider_error", "errorCode": "timeout", "response": "partial"}),
        )
        .await
        .ok();
    assert_eq!(a["reservationId"], r.as_str());
    assert_eq!(a["status"], "released");
    assert_counts(limit(&a, "images_daily"), 10, 0, 0);
    let again = c.release(&r, json!({})).await.ok();
    assert_eq!(again["status"], "released");
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 0, 0);
    // The whole quota is available again.
    Client::must_allow(&c.reserve_q("u1", "image.render", 10).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn get_reservation_in_every_state() {
    let (_s, c) = images_server().await;
    let now = c.now().await;
    let a = c
        .reserve(
            json!({"userId": "u1", "event": "image.render", "quantity": 2,
                        "metadata": {"model": "flux-pro"}, "ttlSeconds": 30}),
        )
        .await
        .ok();
    let pending = Client::must_allow(&a);
    let g = c.get_reservation(&pending).await.ok();
    assert_eq!(g["reservationId"], pending.as_str());
    assert_eq!(g["status"], "pending");
    assert_eq!(g["userId"], "u1");
    assert_eq!(g["event"], "image.render");
    assert_eq!(int(&g, "quantity"), 2);
    assert_eq!(g["metadata"], json!({"model": "flux-pro"}));
    assert_ts_near(&g["createdAt"], now, 10, "createdAt");
    assert_ts_near(
        &g["expiresAt"],
        now + 30,
        10,
        "expiresAt = now + ttlSeconds",
    );
    assert_eq!(g["expiresAt"], a["expiresAt"]);
    assert_eq!(g["eventId"], Value::Null, "pending has no event: {g}");

    let committed = Client::must_allow(&c.reserve_q("u1", "image.render", 1).await);
    let ca = c.commit(&committed, json!({})).await.ok();
    let g = c.get_reservation(&committed).await.ok();
    assert_eq!(g["status"], "committed");
    assert_eq!(
        g["eventId"], ca["eventId"],
        "GET shows the commit's event: {g}"
    );

    let released = Client::must_allow(&c.reserve_q("u1", "image.render", 1).await);
    c.release(&released, json!({})).await.ok();
    assert_eq!(
        c.get_reservation(&released).await.ok()["status"],
        "released"
    );

    // Past its TTL the pending one is `expired` at once, sweeper or not.
    c.advance_clock(31).await;
    let g = c.get_reservation(&pending).await.ok();
    assert_eq!(g["status"], "expired", "{g}");
    assert_eq!(
        c.get_reservation(&committed).await.ok()["status"],
        "committed"
    );
    assert_eq!(
        c.get_reservation(&released).await.ok()["status"],
        "released"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_of_a_committed_reservation_is_idempotent() {
    let (_s, c) = images_server().await;
    let r = Client::must_allow(&c.reserve_q("u1", "image.render", 3).await);
    let first = c.commit(&r, json!({"quantity": 2})).await.ok();
    let second = c.commit(&r, json!({"quantity": 2})).await.ok();
    assert_eq!(first, second, "committing again returns the same answer");
    let third = c.commit(&r, json!({})).await.ok();
    assert_eq!(third["eventId"], first["eventId"]);
    assert_eq!(int(&third, "quantity"), 2);
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 2, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn terminal_states_answer_reservation_not_pending() {
    let (_s, c) = images_server().await;
    let committed = Client::must_allow(&c.reserve_q("u1", "image.render", 1).await);
    c.commit(&committed, json!({})).await.ok();
    let released = Client::must_allow(&c.reserve_q("u1", "image.render", 1).await);
    c.release(&released, json!({})).await.ok();
    let expiring = Client::must_allow(
        &c.reserve(json!({"userId": "u1", "event": "image.render", "ttlSeconds": 5}))
            .await
            .ok(),
    );
    c.advance_clock(6).await;

    let e = c
        .release(&committed, json!({}))
        .await
        .err(409, "reservation_not_pending");
    assert_eq!(e["status"], "committed", "{e}");
    let e = c
        .extend(&committed, 60)
        .await
        .err(409, "reservation_not_pending");
    assert_eq!(e["status"], "committed", "{e}");

    let e = c
        .commit(&released, json!({}))
        .await
        .err(409, "reservation_not_pending");
    assert_eq!(e["status"], "released", "{e}");
    let e = c
        .extend(&released, 60)
        .await
        .err(409, "reservation_not_pending");
    assert_eq!(e["status"], "released", "{e}");

    let e = c
        .extend(&expiring, 60)
        .await
        .err(409, "reservation_not_pending");
    assert_eq!(e["status"], "expired", "{e}");
    let e = c
        .commit(&expiring, json!({}))
        .await
        .err(409, "reservation_not_pending");
    assert_eq!(e["status"], "expired", "{e}");
    let e = c
        .release(&expiring, json!({}))
        .await
        .err(409, "reservation_not_pending");
    assert_eq!(e["status"], "expired", "{e}");

    // Nothing of that changed the counters: 1 committed, nothing held.
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 1, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn extend_moves_the_expiry() {
    let (_s, c) = images_server().await;
    let r = Client::must_allow(
        &c.reserve(json!({"userId": "u1", "event": "image.render", "ttlSeconds": 10}))
            .await
            .ok(),
    );
    c.advance_clock(8).await;
    let now = c.now().await;
    let a = c.extend(&r, 60).await.ok();
    assert_eq!(a["reservationId"], r.as_str());
    assert_eq!(a["status"], "pending");
    assert_ts_near(&a["expiresAt"], now + 60, 5, "expiresAt = now + ttlSeconds");
    // Past the original expiry, still pending and held.
    c.advance_clock(30).await;
    assert_eq!(c.get_reservation(&r).await.ok()["status"], "pending");
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 0, 1);
    // Past the extended one, expired.
    c.advance_clock(31).await;
    assert_eq!(c.get_reservation(&r).await.ok()["status"], "expired");
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 0, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_reservation_never_holds_quota() {
    let (_s, c) = images_server().await;
    let r = Client::must_allow(
        &c.reserve(
            json!({"userId": "u1", "event": "image.render", "quantity": 10, "ttlSeconds": 5}),
        )
        .await
        .ok(),
    );
    let d = c.reserve_q("u1", "image.render", 1).await;
    assert_eq!(d["allowed"], false, "the hold counts while held: {d}");

    c.advance_clock(6).await;
    // Immediately: no sweeper needs to have run.
    assert_eq!(c.get_reservation(&r).await.ok()["status"], "expired");
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 0, 0);
    let a = c.reserve_q("u1", "image.render", 10).await;
    assert_eq!(a["allowed"], true, "an expired hold must not count: {a}");
    assert_counts(limit(&a, "images_daily"), 10, 0, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn track_without_enforce_records_and_reports_overage() {
    let (_s, c) = images_server().await;
    let a = c.track_q("u1", "image.render", 8).await;
    assert_eq!(a["recorded"], true);
    assert!(a["eventId"].as_str().unwrap().starts_with("evt_"), "{a}");
    assert_eq!(a["matchStatus"], "matched");
    assert_eq!(int(&a, "overage"), 0);
    assert_counts(limit(&a, "images_daily"), 10, 8, 0);

    let a = c.track_q("u1", "image.render", 5).await;
    assert_eq!(
        a["recorded"], true,
        "without enforce it is always recorded: {a}"
    );
    assert!(a["eventId"].as_str().unwrap().starts_with("evt_"), "{a}");
    assert_eq!(int(&a, "overage"), 3, "{a}");
    assert_counts(limit(&a, "images_daily"), 10, 13, 0);
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 13, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn track_with_enforce_denies_and_records_nothing() {
    let (_s, c) = images_server().await;
    c.track_q("u1", "image.render", 8).await;
    let a = c
        .track(json!({"userId": "u1", "event": "image.render", "quantity": 3, "enforce": true}))
        .await
        .ok();
    assert_eq!(a["allowed"], false);
    assert_eq!(a["recorded"], false);
    assert_eq!(a["eventId"], Value::Null);
    assert_eq!(strs(&a["reasons"]), vec!["limit_reached"]);
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 8, 0);

    let a = c
        .track(json!({"userId": "u1", "event": "image.render", "quantity": 2, "enforce": true}))
        .await
        .ok();
    assert_eq!(a["allowed"], true);
    assert_eq!(a["recorded"], true);
    assert!(a["eventId"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(int(&a, "overage"), 0);
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 10, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn track_match_status() {
    let (_s, c) = images_server().await;
    assert_eq!(
        c.track_q("u1", "image.render", 1).await["matchStatus"],
        "matched"
    );
    let a = c.track_q("u1", "video.render", 1).await;
    assert_eq!(a["matchStatus"], "unmatched", "{a}");
    assert_eq!(
        a["recorded"], true,
        "without enforce it is always recorded: {a}"
    );

    // No default plan, no subscription.
    let (_s2, c2) = TestServer::with_plans(json!({"plans": [{"id": "pro", "limits": []}]})).await;
    let a = c2.track_q("u1", "image.render", 1).await;
    assert_eq!(a["matchStatus"], "no_subscription", "{a}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_has_no_side_effect() {
    let (_s, c) = images_server().await;
    let a = c
        .check(json!({"userId": "u1", "event": "image.render", "quantity": 3}))
        .await
        .ok();
    assert_eq!(a["allowed"], true);
    assert_eq!(a["planId"], "free");
    assert_eq!(a["reasons"], json!([]));
    assert_eq!(a["deniedBy"], json!([]));
    assert_eq!(limit_ids(&a), vec!["images_daily"]);
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 0, 0);

    let a = c
        .check(json!({"userId": "u1", "event": "image.render", "quantity": 11}))
        .await
        .ok();
    assert_eq!(a["allowed"], false);
    assert_eq!(strs(&a["reasons"]), vec!["limit_reached"]);
    assert_eq!(strs(&a["deniedBy"]), vec!["images_daily"]);

    // Many checks later the whole quota is still reservable.
    for _ in 0..5 {
        c.check(json!({"userId": "u1", "event": "image.render", "quantity": 10}))
            .await
            .ok();
    }
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 0, 0);
    Client::must_allow(&c.reserve_q("u1", "image.render", 10).await);
    let a = c
        .check(json!({"userId": "u1", "event": "image.render"}))
        .await
        .ok();
    assert_eq!(a["allowed"], false, "check sees the hold: {a}");
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 0, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_limits_on_one_event_are_held_all_or_nothing() {
    let (_s, c) = TestServer::with_plans(free_plan(json!([
        {"id": "total", "quota": 5, "window": daily(), "match": [{"event": "image.*"}]},
        {"id": "premium", "quota": 2, "window": daily(),
         "match": [{"event": "image.*", "metadata": {"model": ["flux-pro", "dall-e-3"]}}]}
    ])))
    .await;
    let premium = |m: &str, q: u64| json!({"userId": "u1", "event": "image.render", "quantity": q, "metadata": {"model": m}});

    let a = c.reserve(premium("flux-pro", 2)).await.ok();
    let p1 = Client::must_allow(&a);
    assert_eq!(limit_ids(&a), vec!["premium", "total"]);
    assert_counts(limit(&a, "premium"), 2, 0, 2);
    assert_counts(limit(&a, "total"), 5, 0, 2);

    // Premium full, total has room: denied by premium only, nothing held on total.
    let d = c.reserve(premium("dall-e-3", 1)).await.ok();
    assert_eq!(d["allowed"], false);
    assert_eq!(strs(&d["deniedBy"]), vec!["premium"]);
    assert_eq!(strs(&d["reasons"]), vec!["limit_reached"]);
    let u = c.usage("u1").await.ok();
    assert_counts(limit(&u, "total"), 5, 0, 2);
    assert_counts(limit(&u, "premium"), 2, 0, 2);

    // A standard image matches total only.
    let a = c.reserve(premium("sdxl", 3)).await.ok();
    Client::must_allow(&a);
    assert_eq!(limit_ids(&a), vec!["total"]);
    assert_counts(limit(&a, "total"), 5, 0, 5);
    let d = c.reserve(premium("sdxl", 1)).await.ok();
    assert_eq!(strs(&d["deniedBy"]), vec!["total"]);
    let d = c.reserve(premium("flux-pro", 1)).await.ok();
    assert_eq!(strs(&d["deniedBy"]), vec!["premium", "total"]);

    // Releasing the premium hold frees it on both.
    c.release(&p1, json!({})).await.ok();
    let u = c.usage("u1").await.ok();
    assert_counts(limit(&u, "total"), 5, 0, 3);
    assert_counts(limit(&u, "premium"), 2, 0, 0);
    // Total has room for 2, premium for 2; asking 3 premium is refused by both, holds nothing.
    let d = c.reserve(premium("flux-pro", 3)).await.ok();
    assert_eq!(strs(&d["deniedBy"]), vec!["premium", "total"]);
    let d = c.reserve(premium("sdxl", 3)).await.ok();
    assert_eq!(strs(&d["deniedBy"]), vec!["total"]);
    let u = c.usage("u1").await.ok();
    assert_counts(limit(&u, "total"), 5, 0, 3);
    assert_counts(limit(&u, "premium"), 2, 0, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_limit_counts_reservations_in_flight() {
    let (_s, c) = TestServer::with_plans(free_plan(json!([
        {"id": "streams", "kind": "concurrency", "quota": 3, "window": lifetime(),
         "match": [{"event": "llm.stream"}]}
    ])))
    .await;
    let mut held = Vec::new();
    for n in 1..=3 {
        // Quantity 5: a concurrency limit counts reservations, not units.
        let a = c.reserve_q("u1", "llm.stream", 5).await;
        held.push(Client::must_allow(&a));
        let l = limit(&a, "streams");
        assert_eq!(l["kind"], "concurrency");
        assert_counts(l, 3, 0, n);
    }
    let d = c.reserve_q("u1", "llm.stream", 1).await;
    assert_eq!(d["allowed"], false);
    assert_eq!(strs(&d["reasons"]), vec!["concurrency_limit_reached"]);
    assert_eq!(strs(&d["deniedBy"]), vec!["streams"]);

    c.release(&held[0], json!({})).await.ok();
    assert_counts(&c.limit_state("u1", "streams").await, 3, 0, 2);
    held[0] = Client::must_allow(&c.reserve_q("u1", "llm.stream", 1).await);

    // A commit ends the stream too; `used` stays 0 for a concurrency limit.
    let a = c.commit(&held[1], json!({})).await.ok();
    assert_eq!(a["status"], "committed");
    assert_counts(&c.limit_state("u1", "streams").await, 3, 0, 2);
    Client::must_allow(&c.reserve_q("u1", "llm.stream", 1).await);
    assert_eq!(c.reserve_q("u1", "llm.stream", 1).await["allowed"], false);
    // Another user has their own slots.
    Client::must_allow(&c.reserve_q("u2", "llm.stream", 1).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn soft_limit_allows_and_reports_overage() {
    let (_s, c) = TestServer::with_plans(free_plan(json!([
        {"id": "images_soft", "quota": 2, "enforcement": "soft", "window": daily(),
         "match": [{"event": "image.*"}]}
    ])))
    .await;
    let a = c
        .track(json!({"userId": "u1", "event": "image.render", "quantity": 3, "enforce": true}))
        .await
        .ok();
    assert_eq!(a["allowed"], true, "a soft limit never denies: {a}");
    assert_eq!(a["recorded"], true);
    assert_eq!(int(&a, "overage"), 1, "{a}");
    let l = limit(&a, "images_soft");
    assert_eq!(l["enforcement"], "soft");
    assert_counts(l, 2, 3, 0);

    let a = c.reserve_q("u1", "image.render", 5).await;
    let r = Client::must_allow(&a);
    assert_counts(limit(&a, "images_soft"), 2, 3, 5);
    c.commit(&r, json!({})).await.ok();
    assert_counts(&c.limit_state("u1", "images_soft").await, 2, 8, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn multiplier_weights_events() {
    let (_s, c) = TestServer::with_plans(free_plan(json!([
        {"id": "premium_weighted", "quota": 10, "multiplier": 5, "window": daily(),
         "match": [{"event": "image.*"}]}
    ])))
    .await;
    let a = c.reserve_q("u1", "image.render", 1).await;
    let r1 = Client::must_allow(&a);
    assert_counts(limit(&a, "premium_weighted"), 10, 0, 5);
    let a = c.reserve_q("u1", "image.render", 1).await;
    Client::must_allow(&a);
    assert_counts(limit(&a, "premium_weighted"), 10, 0, 10);
    let d = c.reserve_q("u1", "image.render", 1).await;
    assert_eq!(d["allowed"], false);
    assert_eq!(strs(&d["deniedBy"]), vec!["premium_weighted"]);
    c.commit(&r1, json!({})).await.ok();
    assert_counts(&c.limit_state("u1", "premium_weighted").await, 10, 5, 5);
    // Tracking 1 more unit counts 5.
    c.track_q("u2", "image.render", 1).await;
    assert_counts(&c.limit_state("u2", "premium_weighted").await, 10, 5, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn unmatched_events_are_denied_by_default() {
    let (_s, c) = images_server().await;
    let d = c.reserve_q("u1", "video.render", 1).await;
    assert_eq!(d["allowed"], false);
    assert_eq!(d["reservationId"], Value::Null);
    assert_eq!(strs(&d["reasons"]), vec!["unmatched_event"]);
    assert_eq!(d["deniedBy"], json!([]), "no limit refused: {d}");
    let d = c
        .check(json!({"userId": "u1", "event": "video.render"}))
        .await
        .ok();
    assert_eq!(d["allowed"], false);
    assert_eq!(strs(&d["reasons"]), vec!["unmatched_event"]);
    let d = c
        .track(json!({"userId": "u1", "event": "video.render", "enforce": true}))
        .await
        .ok();
    assert_eq!(d["allowed"], false);
    assert_eq!(d["recorded"], false);
    assert_eq!(d["eventId"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn unmatched_events_are_allowed_when_the_plan_document_says_allow() {
    let mut doc = images_plan();
    doc["unmatchedEvents"] = json!("allow");
    let (_s, c) = TestServer::with_plans(doc).await;
    let a = c.reserve_q("u1", "video.render", 1).await;
    let r = Client::must_allow(&a);
    assert_eq!(a["limits"], json!([]));
    c.commit(&r, json!({})).await.ok();
    assert_eq!(c.reserve_q("u1", "image.render", 10).await["allowed"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_default_plan_and_no_subscription_is_denied() {
    let (_s, c) = TestServer::with_plans(json!({
        "plans": [{"id": "pro", "limits": [
            {"id": "images_daily", "quota": 100, "window": daily(), "match": [{"event": "image.*"}]}]}]
    }))
    .await;
    let d = c.reserve_q("u1", "image.render", 1).await;
    assert_eq!(d["allowed"], false);
    assert_eq!(d["reservationId"], Value::Null);
    assert_eq!(strs(&d["reasons"]), vec!["no_subscription"]);
    let d = c
        .check(json!({"userId": "u1", "event": "image.render"}))
        .await
        .ok();
    assert_eq!(strs(&d["reasons"]), vec!["no_subscription"]);

    c.subscribe(json!({"userId": "u1", "planId": "pro"}))
        .await
        .ok();
    let a = c.reserve_q("u1", "image.render", 1).await;
    Client::must_allow(&a);
    assert_eq!(a["planId"], "pro");
    // Another user still has nothing.
    assert_eq!(
        strs(&c.reserve_q("u2", "image.render", 1).await["reasons"]),
        vec!["no_subscription"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reserve_idempotency_key() {
    let (_s, c) = images_server().await;
    let body = json!({"userId": "u1", "event": "image.render", "quantity": 3, "idempotencyKey": "req-8f1"});
    let first = c.reserve(body.clone()).await.ok();
    Client::must_allow(&first);
    let second = c.reserve(body.clone()).await.ok();
    assert_eq!(
        first, second,
        "the same key and body return the first answer"
    );
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 0, 3);

    let mut changed = body.clone();
    changed["quantity"] = json!(4);
    c.reserve(changed).await.err(409, "idempotency_conflict");
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 0, 3);

    let mut other_key = body.clone();
    other_key["idempotencyKey"] = json!("req-8f2");
    let third = c.reserve(other_key).await.ok();
    assert_ne!(third["reservationId"], first["reservationId"]);
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 0, 6);

    // A retry after the reservation was committed still answers the first answer and holds
    // nothing again.
    let id = first["reservationId"].as_str().unwrap();
    c.commit(id, json!({})).await.ok();
    let retry = c.reserve(body).await.ok();
    assert_eq!(
        retry, first,
        "a retry after commit returns the first answer"
    );
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 3, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn track_occurred_at_lands_in_the_window_that_contains_it() {
    let (_s, c) = images_server().await;
    let noon = c.advance_to_next_utc_hour(12).await;
    let a = c
        .track(
            json!({"userId": "u1", "event": "image.render", "quantity": 4,
                      "occurredAt": fmt_ts(noon - DAY)}),
        )
        .await
        .ok();
    assert_eq!(a["recorded"], true);
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 0, 0);
    c.track(
        json!({"userId": "u1", "event": "image.render", "quantity": 2,
                   "occurredAt": fmt_ts(noon - HOUR)}),
    )
    .await
    .ok();
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 2, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn track_idempotency_key() {
    let (_s, c) = images_server().await;
    let body = json!({"userId": "u1", "event": "image.render", "quantity": 3, "idempotencyKey": "call-77"});
    let first = c.track(body.clone()).await.ok();
    assert_eq!(first["recorded"], true);
    let second = c.track(body.clone()).await.ok();
    assert_eq!(second["eventId"], first["eventId"], "{first} vs {second}");
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 3, 0);
    let mut changed = body;
    changed["quantity"] = json!(5);
    c.track(changed).await.err(409, "idempotency_conflict");
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 3, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_lists_every_limit_or_those_matching_an_event() {
    let (_s, c) = TestServer::with_plans(free_plan(json!([
        {"id": "images_daily", "quota": 10, "window": daily(), "match": [{"event": "image.*"}]},
        {"id": "tokens_monthly", "quota": 100000, "unit": "token",
         "window": {"type": "calendar", "period": "month", "timezone": "UTC"},
         "match": [{"event": "llm.tokens"}]}
    ])))
    .await;
    c.track_q("u1", "llm.tokens", 1250).await;
    let u = c.usage("u1").await.ok();
    assert_eq!(u["userId"], "u1");
    assert_eq!(u["planId"], "free");
    assert_eq!(limit_ids(&u), vec!["images_daily", "tokens_monthly"]);
    let t = limit(&u, "tokens_monthly");
    assert_eq!(t["unit"], "token");
    assert_eq!(
        t["label"], "tokens_monthly",
        "label defaults to the id: {t}"
    );
    assert_counts(t, 100000, 1250, 0);

    let u = c.usage_for_event("u1", "image.render").await.ok();
    assert_eq!(limit_ids(&u), vec!["images_daily"]);
    let u = c.usage_for_event("u1", "llm.tokens").await.ok();
    assert_eq!(limit_ids(&u), vec!["tokens_monthly"]);
    assert_counts(limit(&u, "tokens_monthly"), 100000, 1250, 0);
    let u = c.usage_for_event("u1", "video.render").await.ok();
    assert_eq!(u["limits"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn lifetime_window_never_resets() {
    let (_s, c) = TestServer::with_plans(free_plan(json!([
        {"id": "trial_images", "quota": 3, "window": lifetime(), "match": [{"event": "image.*"}]}
    ])))
    .await;
    let a = c.track_q("u1", "image.render", 3).await;
    let l = limit(&a, "trial_images");
    assert!(
        l.get("resetsAt").is_some_and(Value::is_null),
        "resetsAt must be null for lifetime: {l}"
    );
    c.advance_clock(400 * DAY).await;
    let l = c.limit_state("u1", "trial_images").await;
    assert!(l["resetsAt"].is_null(), "{l}");
    assert_counts(&l, 3, 3, 0);
    assert_eq!(c.reserve_q("u1", "image.render", 1).await["allowed"], false);
}

/// Issue 10, item 7: work that outran its reservation's TTL is recorded when the commit says
/// `"ifExpired": "record"`, charged like a commit of more than was held (what does not fit is
/// overage), and answered `late: true`; without it the `409` names the option.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_after_the_ttl_records_the_work_when_asked() {
    let (_s, c) = images_server().await;
    c.advance_to_next_utc_hour(12).await;
    c.track_q("u1", "image.render", 7).await;
    let r = Client::must_allow(
        &c.reserve(
            json!({"userId": "u1", "event": "image.render", "quantity": 2, "ttlSeconds": 5}),
        )
        .await
        .ok(),
    );
    c.advance_clock(6).await;

    let refused = c.commit(&r, json!({})).await;
    let e = refused.err(409, "reservation_not_pending");
    assert_eq!(e["status"], "expired", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("ifExpired"),
        "the 409 names the way to record the work: {e}"
    );
    c.commit(&r, json!({"ifExpired": "sometimes"}))
        .await
        .invalid("ifExpired");

    // 7 used; the expired hold gave its 2 back; a late commit of 5 fits 3 and overruns by 2.
    let late = c
        .commit(&r, json!({"ifExpired": "record", "quantity": 5}))
        .await
        .ok();
    assert_eq!(late["status"], "committed", "{late}");
    assert_eq!(late["late"], true, "{late}");
    assert_eq!(
        (int(&late, "quantity"), int(&late, "overage")),
        (5, 2),
        "{late}"
    );
    assert_counts(limit(&late, "images_daily"), 10, 12, 0);
    let event_id = late["eventId"].as_str().expect("eventId").to_string();

    // Committing again answers the same; the reservation reads as committed, late.
    let again = c
        .commit(&r, json!({"ifExpired": "record", "quantity": 5}))
        .await
        .ok();
    assert_eq!(again["eventId"], event_id.as_str());
    assert_eq!(again["late"], true);
    let plain_again = c.commit(&r, json!({})).await.ok();
    assert_eq!(plain_again["eventId"], event_id.as_str());
    let view = c.get_reservation(&r).await.ok();
    assert_eq!(
        (view["status"].clone(), view["eventId"].clone()),
        (json!("committed"), json!(event_id))
    );
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 12, 0);

    // The expiry and the late commit are both usage events of the reservation.
    let events = c.get("/v1/events?userId=u1").await.ok();
    let of_reservation: Vec<(String, i64)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reservationId"] == r.as_str())
        .map(|e| {
            (
                e["status"].as_str().unwrap().to_string(),
                int(e, "quantity"),
            )
        })
        .collect();
    // Newest first: the expiry at its TTL, then the commit, dated like every commit at the
    // reservation's start (the window it is charged to).
    assert_eq!(
        of_reservation,
        [("expired".to_string(), 2), ("committed".to_string(), 5)],
        "{events}"
    );

    // A released reservation is never recorded late; a pending one commits as usual.
    let released = Client::must_allow(&c.reserve_q("u2", "image.render", 1).await);
    c.release(&released, json!({})).await.ok();
    let e = c.commit(&released, json!({"ifExpired": "record"})).await;
    assert_eq!(e.err(409, "reservation_not_pending")["status"], "released");
    let pending = Client::must_allow(&c.reserve_q("u2", "image.render", 1).await);
    let on_time = c
        .commit(&pending, json!({"ifExpired": "record"}))
        .await
        .ok();
    assert_eq!(on_time["late"], false, "{on_time}");
}

/// Issue 10, item 8: the `Idempotency-Key` header is the body's `idempotencyKey` by another
/// name, on every route that takes one; both present and different is `400`.
#[tokio::test(flavor = "multi_thread")]
async fn the_idempotency_key_header_makes_a_retry_safe() {
    let (_s, c) = images_server().await;
    let body = json!({"userId": "u1", "event": "image.render", "quantity": 2});
    let first = c
        .post_with_headers("/v1/reserve", body.clone(), &[("Idempotency-Key", "k1")])
        .await
        .ok();
    let again = c
        .post_with_headers("/v1/reserve", body.clone(), &[("Idempotency-Key", "k1")])
        .await
        .ok();
    assert_eq!(
        first["reservationId"], again["reservationId"],
        "{first} {again}"
    );
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 0, 2);
    // The header and the field are the same key: the field alone replays too.
    let mut with_field = body.clone();
    with_field["idempotencyKey"] = json!("k1");
    let by_field = c.reserve(with_field.clone()).await.ok();
    assert_eq!(by_field["reservationId"], first["reservationId"]);
    let both = c
        .post_with_headers("/v1/reserve", with_field, &[("Idempotency-Key", "k1")])
        .await
        .ok();
    assert_eq!(both["reservationId"], first["reservationId"]);
    // Another request under the same key is a conflict, as with the field.
    let mut other = body.clone();
    other["quantity"] = json!(3);
    c.post_with_headers("/v1/reserve", other, &[("Idempotency-Key", "k1")])
        .await
        .err(409, "idempotency_conflict");

    let mut differs = body.clone();
    differs["idempotencyKey"] = json!("k2");
    c.post_with_headers("/v1/reserve", differs, &[("Idempotency-Key", "k1")])
        .await
        .invalid("idempotencyKey");
    let long = "k".repeat(129);
    c.post_with_headers("/v1/reserve", body.clone(), &[("Idempotency-Key", &long)])
        .await
        .invalid("Idempotency-Key");
    c.post_with_headers("/v1/reserve", body, &[("Idempotency-Key", "")])
        .await
        .invalid("Idempotency-Key");

    // Track takes it too: one event for two sends.
    let track = json!({"userId": "u9", "event": "image.render", "quantity": 3});
    let a = c
        .post_with_headers("/v1/track", track.clone(), &[("Idempotency-Key", "t1")])
        .await
        .ok();
    let b = c
        .post_with_headers("/v1/track", track, &[("Idempotency-Key", "t1")])
        .await
        .ok();
    assert_eq!(a["eventId"], b["eventId"]);
    assert_counts(&c.limit_state("u9", "images_daily").await, 10, 3, 0);
}
