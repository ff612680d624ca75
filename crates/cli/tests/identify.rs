//! Anonymous users and `POST /v1/identify` (API.md §9, PRODUCT.md "Persons and funnels"): a
//! sign-up carries the anonymous usage over, so it cannot refresh a free quota.

mod common;

use std::time::Duration;

use common::*;

/// 10 images a UTC day on the default plan, for anonymous ids and users alike.
async fn images_server() -> (TestServer, Client) {
    let (s, c) = TestServer::with_plans(free_plan(json!([{
        "id": "images_daily", "quota": 10, "window": daily(), "match": [{"event": "image.*"}]
    }])))
    .await;
    c.advance_to_next_utc_hour(12).await;
    (s, c)
}

async fn make(c: &Client, user: &str, n: u64) {
    let r = Client::must_allow(&c.reserve_q(user, "image.render", n).await);
    c.commit(&r, json!({})).await.ok();
}

async fn identify(c: &Client, anonymous: &str, user: &str) -> Resp {
    c.post(
        "/v1/identify",
        json!({"anonymousId": anonymous, "userId": user}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sign_up_keeps_the_anonymous_usage_and_repeating_it_changes_nothing() {
    let (_s, c) = images_server().await;
    for _ in 0..3 {
        make(&c, "anon_1", 1).await;
    }
    assert_counts(&c.limit_state("anon_1", "images_daily").await, 10, 3, 0);

    let a = identify(&c, "anon_1", "u1").await.ok();
    assert_eq!(
        a,
        json!({"userId": "u1", "merged": true, "eventsMerged": 3})
    );
    let l = c.limit_state("u1", "images_daily").await;
    assert_counts(&l, 10, 3, 0);
    assert_eq!(
        l["remaining"], 7,
        "3 of 10 made anonymously: 7 left, not 10"
    );
    // Through the anonymous id the answer is the user's, and names the user.
    let through_alias = c.usage("anon_1").await.ok();
    assert_eq!(through_alias["userId"], "u1", "{through_alias}");
    assert_counts(limit(&through_alias, "images_daily"), 10, 3, 0);
    // The merge is visible in the events: the user's, each with the id it was made under.
    let e = c.get("/v1/events?userId=u1").await.ok();
    let events = e["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{e}");
    for ev in events {
        assert_eq!(ev["userId"], "u1", "{ev}");
        assert_eq!(ev["anonymousId"], "anon_1", "{ev}");
        assert_eq!(ev["status"], "committed", "{ev}");
    }
    let none = c.get("/v1/events?userId=anon_1").await.ok();
    assert_eq!(
        none["events"],
        json!([]),
        "nothing left under the anonymous id: {none}"
    );

    // Again: nothing changes.
    let again = identify(&c, "anon_1", "u1").await.ok();
    assert_eq!(
        again,
        json!({"userId": "u1", "merged": false, "eventsMerged": 0})
    );
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 3, 0);

    // The anonymous id now stands for the user, for every call.
    make(&c, "anon_1", 2).await;
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 5, 0);
    assert_counts(&c.limit_state("anon_1", "images_daily").await, 10, 5, 0);
    let ch = c
        .check(json!({"userId": "anon_1", "event": "image.render", "quantity": 6}))
        .await
        .ok();
    assert_eq!(ch["allowed"], false, "{ch}");
    c.track(json!({"userId": "anon_1", "event": "image.render", "quantity": 1}))
        .await
        .ok();
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 6, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn merging_into_a_user_with_usage_adds_the_two_and_stops_at_the_quota() {
    let (_s, c) = images_server().await;
    make(&c, "u2", 4).await;
    make(&c, "anon_2", 5).await;
    let a = identify(&c, "anon_2", "u2").await.ok();
    assert_eq!(a["eventsMerged"], 1);
    assert_counts(&c.limit_state("u2", "images_daily").await, 10, 9, 0);
    let d = c.reserve_q("u2", "image.render", 2).await;
    assert_eq!(strs(&d["deniedBy"]), vec!["images_daily"]);
    make(&c, "u2", 1).await;
    let d = c.reserve_q("anon_2", "image.render", 1).await;
    assert_eq!(d["allowed"], false, "the merged total is at the quota: {d}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reservation_pending_at_the_sign_up_is_held_and_committed_for_the_user() {
    let (_s, c) = images_server().await;
    make(&c, "anon_3", 2).await;
    let pending = Client::must_allow(&c.reserve_q("anon_3", "image.render", 3).await);
    identify(&c, "anon_3", "u3").await.ok();
    assert_counts(&c.limit_state("u3", "images_daily").await, 10, 2, 3);
    let a = c.commit(&pending, json!({})).await.ok();
    assert_counts(limit(&a, "images_daily"), 10, 5, 0);
    assert_counts(&c.limit_state("u3", "images_daily").await, 10, 5, 0);
    let g = c.get_reservation(&pending).await.ok();
    assert_eq!(g["userId"], "u3", "{g}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anonymous_id_stands_for_one_user_and_chains_collapse() {
    let (_s, c) = images_server().await;
    identify(&c, "anon_4", "u4").await.ok();
    let e = identify(&c, "anon_4", "u5")
        .await
        .err(409, "already_identified");
    assert!(
        e["message"].as_str().unwrap().contains("u4"),
        "names the user it stands for: {e}"
    );
    // Identifying into an id that is itself an alias merges into the user it stands for.
    make(&c, "anon_5", 1).await;
    let a = identify(&c, "anon_5", "anon_4").await.ok();
    assert_eq!(a["userId"], "u4");
    assert_counts(&c.limit_state("u4", "images_daily").await, 10, 1, 0);
    // An id merged into an anonymous id follows it when that one is identified.
    make(&c, "anon_7", 2).await;
    identify(&c, "anon_7", "anon_6").await.ok();
    identify(&c, "anon_6", "u6").await.ok();
    make(&c, "anon_7", 1).await;
    assert_counts(&c.limit_state("u6", "images_daily").await, 10, 3, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn identify_refuses_what_it_cannot_do() {
    let (_s, c) = images_server().await;
    identify(&c, "anon_8", "anon_8").await.invalid("userId");
    identify(&c, "", "u8").await.invalid("anonymousId");
    identify(&c, "anon_8", &"u".repeat(257))
        .await
        .invalid("userId");
    c.post(
        "/v1/identify",
        json!({"anonymousId": "anon_8", "userId": "u8", "traits": ["plan", "pro"]}),
    )
    .await
    .invalid("traits");
    c.post("/v1/identify", json!({"userId": "u8"}))
        .await
        .err(400, "invalid_request");
    // Nothing was merged by any of them.
    make(&c, "anon_8", 1).await;
    assert_counts(&c.limit_state("u8", "images_daily").await, 10, 0, 0);
}

/// Clients race for one person's last images under both ids while the sign-up happens: every
/// commit is counted for the user (nothing lost), and once merged, no reserve is admitted past
/// the quota.
#[tokio::test(flavor = "multi_thread")]
async fn a_sign_up_racing_reserves_under_both_ids_loses_nothing() {
    let (_s, c) = images_server().await;
    make(&c, "anon_r", 6).await;
    make(&c, "u_r", 3).await;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let c = c.clone();
        let user = if i % 2 == 0 { "anon_r" } else { "u_r" };
        tasks.push(tokio::spawn(async move {
            if i == 16 {
                identify(&c, "anon_r", "u_r").await.ok();
            }
            let a = c.reserve_q(user, "image.render", 1).await;
            match a["reservationId"].as_str() {
                Some(r) => {
                    c.commit(r, json!({})).await.ok();
                    1
                }
                None => 0,
            }
        }));
    }
    let mut committed = 0;
    for t in futures::future::join_all(tasks).await {
        committed += t.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let l = c.limit_state("u_r", "images_daily").await;
    assert_eq!(
        int(&l, "used"),
        6 + 3 + committed,
        "every commit counted: {l}"
    );
    assert_eq!(int(&l, "reserved"), 0);
    // Before the merge each id had its own 10, so the total may pass 10; from the merge on,
    // nothing more is admitted once the user is at the quota.
    let d = c.reserve_q("anon_r", "image.render", 1).await;
    assert_eq!(d["allowed"], false, "{d}");
    assert!(int(&l, "used") <= 20, "{l}");
}
