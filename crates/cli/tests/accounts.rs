//! API.md §6 accounts: members and seats, the account's subscription, the effective plan of a
//! member (own subscription, else the account's, else the default plan) and `scope: account`
//! limits, one pooled counter per account beside the per-seat `scope: user` counters.
//!
//! `team` gives each seat 50 `gen.*` a month (`gen_seat`, per user) and the whole account 120
//! (`gen_pool`, pooled), with 3 seats; `duo` is the same with 2 seats (for per-seat pricing,
//! where the subscription's `seats` override the plan's). `pro` is a user plan of 500
//! (`gen_pro`), `free` (the default) has 5 (`gen_free`). Every window is the UTC calendar month and every test starts at
//! noon, so no window turns over during a test.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const EVENT: &str = "gen.image";

fn monthly() -> Value {
    json!({"type": "calendar", "period": "month", "timezone": "UTC"})
}

fn gen_limit(id: &str, quota: i64, scope: &str) -> Value {
    json!({"id": id, "quota": quota, "scope": scope, "window": monthly(),
           "match": [{"event": "gen.*"}]})
}

fn account_plans() -> Value {
    json!({
        "defaultPlan": "free",
        "plans": [
            {"id": "free", "limits": [gen_limit("gen_free", 5, "user")]},
            {"id": "team", "seats": 3, "limits": [
                gen_limit("gen_seat", 50, "user"),
                gen_limit("gen_pool", 120, "account"),
            ]},
            {"id": "duo", "seats": 2, "limits": [
                gen_limit("gen_seat", 50, "user"),
                gen_limit("gen_pool", 120, "account"),
            ]},
            {"id": "pro", "limits": [gen_limit("gen_pro", 500, "user")]},
        ]
    })
}

async fn accounts_server() -> (TestServer, Client) {
    TestServer::with_plans(account_plans()).await
}

fn member_path(account: &str, user: &str) -> String {
    format!("/v1/accounts/{account}/members/{user}")
}

/// `PUT /v1/accounts/{account}/members/{user}` with `{}`; asserts the 200 answer's shape.
async fn add_member(c: &Client, account: &str, user: &str) -> Value {
    let a = c.put(&member_path(account, user), json!({})).await.ok();
    assert_eq!(a["accountId"], account, "{a}");
    assert_eq!(a["userId"], user, "{a}");
    ts_ms(&a["addedAt"]);
    a
}

/// `DELETE /v1/accounts/{account}/members/{user}` that must succeed.
async fn remove_member(c: &Client, account: &str, user: &str) {
    let a = c.delete(&member_path(account, user)).await.ok();
    assert_eq!(
        (&a["accountId"], &a["userId"], &a["removed"]),
        (&json!(account), &json!(user), &json!(true)),
        "{a}"
    );
}

async fn get_account(c: &Client, account: &str) -> Resp {
    c.get(&format!("/v1/accounts/{account}")).await
}

/// The `userId`s of `GET /v1/accounts/{id}`'s `members`, in the answer's order.
#[track_caller]
fn member_ids(acct: &Value) -> Vec<String> {
    acct["members"]
        .as_array()
        .unwrap_or_else(|| panic!("account answer has no `members` array: {acct}"))
        .iter()
        .map(|m| m["userId"].as_str().expect("members[].userId").to_string())
        .collect()
}

#[track_caller]
fn assert_seats(acct: &Value, used: i64, max: Value) {
    assert_eq!(
        (&acct["seats"]["used"], &acct["seats"]["max"]),
        (&json!(used), &max),
        "seats (used, max): {acct}"
    );
}

/// Subscribes the account; asserts the answer names the account and no user.
async fn subscribe_account(c: &Client, account: &str, plan: &str) -> Value {
    let s = c
        .subscribe(json!({"accountId": account, "planId": plan}))
        .await
        .ok();
    assert_eq!(s["accountId"], account, "{s}");
    assert!(
        s.get("userId").is_none(),
        "an account's subscription has no userId: {s}"
    );
    assert_eq!(s["planId"], plan, "{s}");
    assert_eq!(s["status"], "active", "{s}");
    assert!(
        s["subscriptionId"]
            .as_str()
            .is_some_and(|id| id.starts_with("sub_")),
        "{s}"
    );
    s
}

/// An account on `team` with these members.
async fn team_account(c: &Client, account: &str, members: &[&str]) {
    subscribe_account(c, account, "team").await;
    for m in members {
        add_member(c, account, m).await;
    }
}

async fn gen(c: &Client, user: &str, quantity: u64) -> Value {
    c.reserve_q(user, EVENT, quantity).await
}

/// A denied reserve or check answer decided by `plan`, refused by exactly `denied_by`.
#[track_caller]
fn assert_denied_by(answer: &Value, plan: &str, denied_by: &[&str]) {
    assert_denied(answer, plan, &["limit_reached"], denied_by);
}

/// Reserve `quantity` (must be allowed under `plan`) and commit it in full; returns the commit
/// answer.
async fn take(c: &Client, user: &str, quantity: u64, plan: &str) -> Value {
    let a = gen(c, user, quantity).await;
    let id = assert_allowed(&a, plan);
    let done = c.commit(&id, json!({})).await.ok();
    assert_eq!(done["status"], "committed", "{done}");
    assert_eq!(int(&done, "quantity"), quantity as i64, "{done}");
    assert_eq!(int(&done, "overage"), 0, "{done}");
    done
}

#[tokio::test(flavor = "multi_thread")]
async fn each_seat_stops_at_50_and_the_pool_stops_the_whole_account_at_120() {
    let (_s, c) = accounts_server().await;
    c.advance_to_next_utc_hour(12).await;
    team_account(&c, "acme", &["alice", "bob", "carol"]).await;

    // alice: 51 at once is over her seat while the pool has room: gen_seat alone refuses.
    let d = gen(&c, "alice", 51).await;
    assert_denied_by(&d, "team", &["gen_seat"]);
    assert_counts(limit(&d, "gen_seat"), 50, 0, 0);
    assert_counts(limit(&d, "gen_pool"), 120, 0, 0);
    let a = gen(&c, "alice", 50).await;
    let id = assert_allowed(&a, "team");
    assert_eq!(limit_ids(&a), vec!["gen_pool", "gen_seat"], "{a}");
    assert_counts(limit(&a, "gen_seat"), 50, 0, 50);
    assert_counts(limit(&a, "gen_pool"), 120, 0, 50);
    assert_eq!(limit(&a, "gen_seat")["scope"], "user", "{a}");
    assert_eq!(limit(&a, "gen_pool")["scope"], "account", "{a}");
    let done = c.commit(&id, json!({})).await.ok();
    assert_eq!(int(&done, "overage"), 0, "{done}");
    assert_counts(limit(&done, "gen_seat"), 50, 50, 0);
    assert_counts(limit(&done, "gen_pool"), 120, 50, 0);
    let d = gen(&c, "alice", 1).await;
    assert_denied_by(&d, "team", &["gen_seat"]);
    assert_counts(limit(&d, "gen_seat"), 50, 50, 0);
    assert_counts(limit(&d, "gen_pool"), 120, 50, 0);

    // bob: his own seat of 50; the pool shows alice's 50.
    assert_denied_by(&gen(&c, "bob", 51).await, "team", &["gen_seat"]);
    let a = gen(&c, "bob", 50).await;
    let id = assert_allowed(&a, "team");
    assert_counts(limit(&a, "gen_seat"), 50, 0, 50);
    assert_counts(limit(&a, "gen_pool"), 120, 50, 50);
    let done = c.commit(&id, json!({})).await.ok();
    assert_counts(limit(&done, "gen_seat"), 50, 50, 0);
    assert_counts(limit(&done, "gen_pool"), 120, 100, 0);
    assert_denied_by(&gen(&c, "bob", 1).await, "team", &["gen_seat"]);

    // carol: 50 left on her seat, 20 in the pool.
    let d = gen(&c, "carol", 51).await;
    assert_denied_by(&d, "team", &["gen_pool", "gen_seat"]);
    let d = gen(&c, "carol", 21).await;
    assert_denied_by(&d, "team", &["gen_pool"]);
    assert_counts(limit(&d, "gen_seat"), 50, 0, 0);
    assert_counts(limit(&d, "gen_pool"), 120, 100, 0);
    // check and an enforced track decide the same, and change nothing.
    let ch = c
        .check(json!({"userId": "carol", "event": EVENT, "quantity": 21}))
        .await
        .ok();
    assert_denied_by(&ch, "team", &["gen_pool"]);
    assert_counts(limit(&ch, "gen_pool"), 120, 100, 0);
    let t = c
        .track(json!({"userId": "carol", "event": EVENT, "quantity": 21, "enforce": true}))
        .await
        .ok();
    assert_eq!(
        (&t["allowed"], &t["recorded"], &t["eventId"]),
        (&json!(false), &json!(false), &Value::Null),
        "an enforced track over the pool records nothing: {t}"
    );
    assert_counts(limit(&t, "gen_seat"), 50, 0, 0);
    assert_counts(limit(&t, "gen_pool"), 120, 100, 0);

    let a = gen(&c, "carol", 20).await;
    let id = assert_allowed(&a, "team");
    assert_counts(limit(&a, "gen_seat"), 50, 0, 20);
    assert_counts(limit(&a, "gen_pool"), 120, 100, 20);
    c.commit(&id, json!({})).await.ok();
    // The pool is full: carol is refused by it though her seat has 30 left.
    let d = gen(&c, "carol", 1).await;
    assert_denied_by(&d, "team", &["gen_pool"]);
    assert_counts(limit(&d, "gen_seat"), 50, 20, 0);
    assert_eq!(int(limit(&d, "gen_seat"), "remaining"), 30, "{d}");
    assert_counts(limit(&d, "gen_pool"), 120, 120, 0);
    // alice now meets both.
    assert_denied_by(
        &gen(&c, "alice", 1).await,
        "team",
        &["gen_pool", "gen_seat"],
    );

    // The usage of every member lists both limits: their own seat and the account's pool.
    for (user, seat_used) in [("alice", 50), ("bob", 50), ("carol", 20)] {
        let u = c.usage(user).await.ok();
        assert_eq!(u["planId"], "team", "{u}");
        assert_eq!(limit_ids(&u), vec!["gen_pool", "gen_seat"], "{u}");
        assert_counts(limit(&u, "gen_seat"), 50, seat_used, 0);
        assert_counts(limit(&u, "gen_pool"), 120, 120, 0);
    }
    // A user in no account is on the default plan, untouched by the pool.
    let a = gen(&c, "dave", 1).await;
    assert_allowed(&a, "free");
    assert_eq!(limit_ids(&a), vec!["gen_free"], "{a}");
    assert_counts(limit(&a, "gen_free"), 5, 0, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn seats_cap_the_members_and_removing_one_frees_a_seat() {
    let (_s, c) = accounts_server().await;
    c.advance_to_next_utc_hour(12).await;
    subscribe_account(&c, "acme", "team").await;
    let now = c.now().await;

    // Empty body (no content type) and `{}` both add a member.
    let r = c
        .call(Method::PUT, &member_path("acme", "carol"), None)
        .await
        .ok();
    assert_eq!(
        (&r["accountId"], &r["userId"]),
        (&json!("acme"), &json!("carol")),
        "{r}"
    );
    assert_ts_near(&r["addedAt"], now, 5, "addedAt");
    let bob = add_member(&c, "acme", "bob").await;
    assert_ts_near(&bob["addedAt"], now, 5, "addedAt");
    add_member(&c, "acme", "alice").await;

    // The 4th is refused, and nothing changes.
    c.put(&member_path("acme", "dave"), json!({}))
        .await
        .err(409, "seat_limit_reached");
    let acct = get_account(&c, "acme").await.ok();
    assert_eq!(acct["accountId"], "acme", "{acct}");
    assert_eq!(
        member_ids(&acct),
        vec!["alice", "bob", "carol"],
        "sorted by userId"
    );
    assert_seats(&acct, 3, json!(3));
    assert_eq!(acct["planId"], "team", "{acct}");
    assert_eq!(acct["subscription"]["planId"], "team", "{acct}");
    let bob_row = acct["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["userId"] == "bob")
        .unwrap()
        .clone();
    assert_eq!(bob_row["addedAt"], bob["addedAt"], "{acct}");
    // dave is in no account: the default plan.
    assert_allowed(&gen(&c, "dave", 1).await, "free");

    // Adding an existing member again (at full seats) is a no-op: 200, the first addedAt.
    c.advance_clock(10).await;
    let again = add_member(&c, "acme", "bob").await;
    assert_eq!(
        again["addedAt"], bob["addedAt"],
        "re-adding is a no-op: {again}"
    );
    let acct = get_account(&c, "acme").await.ok();
    assert_eq!(member_ids(&acct), vec!["alice", "bob", "carol"]);
    assert_seats(&acct, 3, json!(3));

    // Removing frees a seat; removing again or a non-member is 404.
    remove_member(&c, "acme", "carol").await;
    c.delete(&member_path("acme", "carol"))
        .await
        .err(404, "not_found");
    c.delete(&member_path("acme", "dave"))
        .await
        .err(404, "not_found");
    let acct = get_account(&c, "acme").await.ok();
    assert_eq!(member_ids(&acct), vec!["alice", "bob"]);
    assert_seats(&acct, 2, json!(3));
    // carol is off the account: back on the default plan.
    assert_allowed(&gen(&c, "carol", 1).await, "free");

    add_member(&c, "acme", "dave").await;
    assert_allowed(&gen(&c, "dave", 1).await, "team");
    let acct = get_account(&c, "acme").await.ok();
    assert_eq!(member_ids(&acct), vec!["alice", "bob", "dave"]);
    assert_seats(&acct, 3, json!(3));
    c.put(&member_path("acme", "erin"), json!({}))
        .await
        .err(409, "seat_limit_reached");

    // A move into a full account is refused too, and leaves the user where they were.
    add_member(&c, "globex", "carol").await;
    c.put(&member_path("acme", "carol"), json!({}))
        .await
        .err(409, "seat_limit_reached");
    let globex = get_account(&c, "globex").await.ok();
    assert_eq!(member_ids(&globex), vec!["carol"], "{globex}");
    // globex has no subscription: its members are on the default plan, which has no cap.
    assert_seats(&globex, 1, Value::Null);
    assert_eq!(globex["planId"], "free", "{globex}");
    assert_eq!(globex["subscription"], Value::Null, "{globex}");
    let acct = get_account(&c, "acme").await.ok();
    assert_eq!(member_ids(&acct), vec!["alice", "bob", "dave"]);
}

/// `POST /v1/subscriptions` for `acme` on `duo` with this `seats` member (absent when None).
async fn subscribe_duo(c: &Client, seats: Option<Value>) -> Value {
    let mut body = json!({"accountId": "acme", "planId": "duo"});
    if let Some(seats) = seats {
        body["seats"] = seats;
    }
    let s = c.subscribe(body).await.ok();
    assert_eq!(
        (&s["accountId"], &s["planId"]),
        (&json!("acme"), &json!("duo")),
        "{s}"
    );
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn subscription_seats_override_the_plans_cap_and_lowering_removes_nobody() {
    let (_s, c) = accounts_server().await;
    c.advance_to_next_utc_hour(12).await;

    // duo caps 2 seats; the subscription buys 3: three members join, the 4th is refused.
    let s = subscribe_duo(&c, Some(json!(3))).await;
    assert_eq!(
        (&s["seats"], &s["changed"]),
        (&json!(3), &json!(true)),
        "{s}"
    );
    for user in ["alice", "bob", "carol"] {
        add_member(&c, "acme", user).await;
    }
    c.put(&member_path("acme", "dave"), json!({}))
        .await
        .err(409, "seat_limit_reached");
    let acct = get_account(&c, "acme").await.ok();
    assert_eq!(member_ids(&acct), vec!["alice", "bob", "carol"], "{acct}");
    assert_seats(&acct, 3, json!(3));
    assert_eq!(acct["subscription"]["seats"], 3, "{acct}");
    let g = c.get("/v1/accounts/acme/subscription").await.ok();
    assert_eq!(g["seats"], 3, "{g}");

    // Not naming seats keeps them: the same call without them is a no-op.
    let kept = subscribe_duo(&c, None).await;
    assert_eq!(
        (&kept["seats"], &kept["changed"]),
        (&json!(3), &json!(false)),
        "{kept}"
    );

    // Lowered to 1: nobody is removed, and nobody new gets in.
    let lowered = subscribe_duo(&c, Some(json!(1))).await;
    assert_eq!(
        (&lowered["seats"], &lowered["changed"]),
        (&json!(1), &json!(true)),
        "{lowered}"
    );
    let acct = get_account(&c, "acme").await.ok();
    assert_eq!(member_ids(&acct), vec!["alice", "bob", "carol"], "{acct}");
    assert_seats(&acct, 3, json!(1));
    c.put(&member_path("acme", "dave"), json!({}))
        .await
        .err(409, "seat_limit_reached");
    // The members keep their plan, and re-adding one is still a no-op.
    assert_allowed(&gen(&c, "carol", 1).await, "duo");
    add_member(&c, "acme", "bob").await;
    // Until enough have left there is still no room: 1 member of 1 seat.
    remove_member(&c, "acme", "bob").await;
    remove_member(&c, "acme", "carol").await;
    c.put(&member_path("acme", "dave"), json!({}))
        .await
        .err(409, "seat_limit_reached");
    assert_seats(&get_account(&c, "acme").await.ok(), 1, json!(1));

    // null clears the override: the plan's 2 again.
    let cleared = subscribe_duo(&c, Some(Value::Null)).await;
    assert_eq!(
        (&cleared["seats"], &cleared["changed"]),
        (&Value::Null, &json!(true)),
        "{cleared}"
    );
    add_member(&c, "acme", "dave").await;
    c.put(&member_path("acme", "erin"), json!({}))
        .await
        .err(409, "seat_limit_reached");
    let acct = get_account(&c, "acme").await.ok();
    assert_eq!(member_ids(&acct), vec!["alice", "dave"], "{acct}");
    assert_seats(&acct, 2, json!(2));
    assert_eq!(acct["subscription"]["seats"], Value::Null, "{acct}");
}

#[tokio::test(flavor = "multi_thread")]
async fn seats_are_for_accounts_only_and_in_range() {
    let (_s, c) = accounts_server().await;
    c.advance_to_next_utc_hour(12).await;

    // seats with userId: 400 naming `seats`, and nothing is written.
    for seats in [json!(3), Value::Null] {
        c.subscribe(json!({"userId": "u1", "planId": "pro", "seats": seats}))
            .await
            .invalid("seats");
    }
    c.get_subscription("u1").await.err(404, "not_found");
    // 1 ..= 2^32-1, integers only.
    for seats in [
        json!(0),
        json!(4_294_967_296_u64),
        json!(-1),
        json!(2.5),
        json!("3"),
    ] {
        c.subscribe(json!({"accountId": "acme", "planId": "duo", "seats": seats}))
            .await
            .invalid("seats");
    }
    c.get("/v1/accounts/acme/subscription")
        .await
        .err(404, "not_found");
    let top = subscribe_duo(&c, Some(json!(4_294_967_295_u64))).await;
    assert_eq!(top["seats"], 4_294_967_295_u64, "{top}");
    assert_eq!(
        c.get("/v1/accounts/acme/subscription").await.ok()["seats"],
        4_294_967_295_u64
    );
    // A user's subscription answers `"seats": null`.
    let u = c
        .subscribe(json!({"userId": "u1", "planId": "pro"}))
        .await
        .ok();
    assert_eq!(u.get("seats"), Some(&Value::Null), "{u}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_members_own_subscription_comes_before_the_accounts() {
    let (_s, c) = accounts_server().await;
    c.advance_to_next_utc_hour(12).await;
    team_account(&c, "acme", &["alice", "bob"]).await;
    c.subscribe(json!({"userId": "alice", "planId": "pro"}))
        .await
        .ok();

    // alice is on pro: 500 of her own, neither seat nor pool.
    let d = gen(&c, "alice", 501).await;
    assert_denied_by(&d, "pro", &["gen_pro"]);
    assert_eq!(limit_ids(&d), vec!["gen_pro"], "{d}");
    take(&c, "alice", 200, "pro").await;
    let a = gen(&c, "alice", 300).await;
    let id = assert_allowed(&a, "pro");
    assert_eq!(limit_ids(&a), vec!["gen_pro"], "{a}");
    assert_counts(limit(&a, "gen_pro"), 500, 200, 300);
    c.commit(&id, json!({})).await.ok();
    assert_denied_by(&gen(&c, "alice", 1).await, "pro", &["gen_pro"]);
    let u = c.usage("alice").await.ok();
    assert_eq!(u["planId"], "pro", "{u}");
    assert_eq!(limit_ids(&u), vec!["gen_pro"], "{u}");
    assert_counts(limit(&u, "gen_pro"), 500, 500, 0);

    // Her 500 did not touch the account's pool: bob has his 50 and the pool 120.
    let a = gen(&c, "bob", 50).await;
    let id = assert_allowed(&a, "team");
    assert_counts(limit(&a, "gen_seat"), 50, 0, 50);
    assert_counts(limit(&a, "gen_pool"), 120, 0, 50);
    c.commit(&id, json!({})).await.ok();

    // alice is still a member (and holds a seat).
    let acct = get_account(&c, "acme").await.ok();
    assert_eq!(member_ids(&acct), vec!["alice", "bob"]);
    assert_seats(&acct, 2, json!(3));

    // Her own subscription ends: the account's plan is hers again, her seat untouched.
    c.cancel(json!({"userId": "alice", "at": "now"})).await.ok();
    c.advance_clock(1).await;
    let a = gen(&c, "alice", 1).await;
    assert_allowed(&a, "team");
    assert_eq!(limit_ids(&a), vec!["gen_pool", "gen_seat"], "{a}");
    assert_counts(limit(&a, "gen_seat"), 50, 0, 1);
    assert_counts(limit(&a, "gen_pool"), 120, 50, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_who_moves_keeps_their_seat_usage_and_joins_the_new_pool() {
    let (_s, c) = accounts_server().await;
    c.advance_to_next_utc_hour(12).await;
    team_account(&c, "acme", &["alice", "carol"]).await;
    team_account(&c, "globex", &["bob"]).await;

    take(&c, "alice", 30, "team").await;
    take(&c, "bob", 40, "team").await;
    assert_counts(&c.limit_state("carol", "gen_pool").await, 120, 30, 0);

    // PUT into another account moves alice.
    let moved = add_member(&c, "globex", "alice").await;
    assert_eq!(moved["accountId"], "globex");
    let acme = get_account(&c, "acme").await.ok();
    assert_eq!(member_ids(&acme), vec!["carol"], "{acme}");
    assert_seats(&acme, 1, json!(3));
    let globex = get_account(&c, "globex").await.ok();
    assert_eq!(member_ids(&globex), vec!["alice", "bob"], "{globex}");
    assert_seats(&globex, 2, json!(3));
    c.delete(&member_path("acme", "alice"))
        .await
        .err(404, "not_found");

    // Her seat still counts her 30; the pool she sees is globex's 40.
    let d = gen(&c, "alice", 21).await;
    assert_denied_by(&d, "team", &["gen_seat"]);
    assert_counts(limit(&d, "gen_seat"), 50, 30, 0);
    assert_counts(limit(&d, "gen_pool"), 120, 40, 0);
    let a = gen(&c, "alice", 20).await;
    let id = assert_allowed(&a, "team");
    assert_counts(limit(&a, "gen_seat"), 50, 30, 20);
    assert_counts(limit(&a, "gen_pool"), 120, 40, 20);
    c.commit(&id, json!({})).await.ok();

    let u = c.usage("alice").await.ok();
    assert_counts(limit(&u, "gen_seat"), 50, 50, 0);
    assert_counts(limit(&u, "gen_pool"), 120, 60, 0);
    assert_counts(&c.limit_state("bob", "gen_pool").await, 120, 60, 0);
    // acme's pool keeps what alice used there, and gets nothing of what she used since.
    assert_counts(&c.limit_state("carol", "gen_pool").await, 120, 30, 0);
    assert_counts(&c.limit_state("carol", "gen_seat").await, 50, 0, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_subscription_lives_and_ends_and_its_members_follow_it() {
    let (_s, c) = accounts_server().await;
    c.advance_to_next_utc_hour(12).await;
    add_member(&c, "acme", "alice").await;
    add_member(&c, "acme", "bob").await;

    // Members but no subscription yet: the default plan.
    let acct = get_account(&c, "acme").await.ok();
    assert_eq!(member_ids(&acct), vec!["alice", "bob"]);
    // The account's planId is the plan in force for its members: here the default plan.
    assert_eq!(
        (&acct["planId"], &acct["subscription"]),
        (&json!("free"), &Value::Null),
        "{acct}"
    );
    assert_seats(&acct, 2, Value::Null);
    c.get("/v1/accounts/acme/subscription")
        .await
        .err(404, "not_found");
    c.cancel(json!({"accountId": "acme", "at": "now"}))
        .await
        .err(404, "not_found");
    let done = take(&c, "alice", 1, "free").await;
    assert_eq!(limit_ids(&done), vec!["gen_free"], "{done}");

    let now = c.now().await;
    let s = subscribe_account(&c, "acme", "team").await;
    assert_eq!(s["changed"], true, "{s}");
    assert_ts_near(&s["createdAt"], now, 10, "createdAt");
    assert_eq!(s["endsAt"], Value::Null, "{s}");
    let sub_id = s["subscriptionId"].clone();
    let again = subscribe_account(&c, "acme", "team").await;
    assert_eq!(again["changed"], false, "the same call is a no-op: {again}");
    assert_eq!(again["subscriptionId"], sub_id);

    let g = c.get("/v1/accounts/acme/subscription").await.ok();
    assert_eq!(g["subscriptionId"], sub_id, "{g}");
    assert_eq!(g["accountId"], "acme", "{g}");
    assert!(g.get("userId").is_none(), "{g}");
    assert_eq!(g["planId"], "team", "{g}");
    assert_eq!(g["currentPeriod"], s["currentPeriod"], "{g}");
    // alice has no subscription of her own.
    c.get_subscription("alice").await.err(404, "not_found");
    let acct = get_account(&c, "acme").await.ok();
    assert_eq!(acct["planId"], "team", "{acct}");
    assert_eq!(acct["subscription"]["subscriptionId"], sub_id, "{acct}");
    assert_seats(&acct, 2, json!(3));

    // Both members are on team now.
    take(&c, "alice", 3, "team").await;
    let a = gen(&c, "bob", 2).await;
    let id = assert_allowed(&a, "team");
    assert_counts(limit(&a, "gen_seat"), 50, 0, 2);
    assert_counts(limit(&a, "gen_pool"), 120, 3, 2);
    c.commit(&id, json!({})).await.ok();
    assert_eq!(c.usage("alice").await.ok()["planId"], "team");

    // Cancel now with accountId: the members fall back to free.
    let now = c.now().await;
    let x = c
        .cancel(json!({"accountId": "acme", "at": "now", "reason": "churn"}))
        .await
        .ok();
    assert_eq!(x["subscriptionId"], sub_id, "{x}");
    assert_eq!(x["planId"], "team", "{x}");
    assert_ts_near(&x["endsAt"], now, 5, "endsAt of a cancel now");
    c.advance_clock(1).await;

    for user in ["alice", "bob"] {
        let a = gen(&c, user, 1).await;
        assert_allowed(&a, "free");
        assert_eq!(limit_ids(&a), vec!["gen_free"], "{a}");
        assert_counts(limit(&a, "gen_free"), 5, i64::from(user == "alice"), 1);
        let u = c.usage(user).await.ok();
        assert_eq!(u["planId"], "free", "{u}");
    }
    c.cancel(json!({"accountId": "acme", "at": "now"}))
        .await
        .err(409, "already_canceled");
    // The ended subscription is still answered, with its endsAt.
    let g = c.get("/v1/accounts/acme/subscription").await.ok();
    assert_eq!(g["subscriptionId"], sub_id, "{g}");
    assert_eq!(g["endsAt"], x["endsAt"], "{g}");
    // The members stay, on the default plan, which caps no seats.
    let acct = get_account(&c, "acme").await.ok();
    assert_eq!(member_ids(&acct), vec!["alice", "bob"], "{acct}");
    assert_eq!(acct["planId"], "free", "back on the default plan: {acct}");
    assert_seats(&acct, 2, Value::Null);

    // Subscribing again starts over (the same subscription); the month's counters carry.
    let s2 = subscribe_account(&c, "acme", "team").await;
    assert_eq!(s2["subscriptionId"], sub_id, "{s2}");
    assert_eq!(s2["endsAt"], Value::Null, "{s2}");
    let a = gen(&c, "alice", 1).await;
    assert_allowed(&a, "team");
    assert_counts(limit(&a, "gen_seat"), 50, 3, 1);
    assert_counts(limit(&a, "gen_pool"), 120, 5, 1);
}

const RACE_CLIENTS: usize = 64;
const RACE_MEMBERS: [&str; 3] = ["alice", "bob", "carol"];

/// `attempts` reserves of 1 by `RACE_CLIENTS` concurrent clients, attempt `n` (counting down
/// from `attempts`) for `member_of(n)`, each admitted one committed at once. Every refusal must
/// be by a subset of `may_deny`. Returns the admitted count by member and the number denied.
async fn race(
    c: &Client,
    attempts: i64,
    member_of: fn(i64) -> &'static str,
    may_deny: &'static [&'static str],
) -> (HashMap<&'static str, i64>, i64) {
    let tickets = Arc::new(AtomicI64::new(attempts));
    let admitted: Arc<Mutex<HashMap<&'static str, i64>>> = Arc::default();
    let tasks: Vec<_> = (0..RACE_CLIENTS)
        .map(|_| {
            let (c, tickets, admitted) = (c.clone(), tickets.clone(), admitted.clone());
            tokio::spawn(async move {
                let mut denied = 0i64;
                loop {
                    let ticket = tickets.fetch_sub(1, SeqCst);
                    if ticket <= 0 {
                        return denied;
                    }
                    let user = member_of(ticket);
                    let a = post_retrying(
                        &c,
                        "/v1/reserve",
                        json!({"userId": user, "event": EVENT, "quantity": 1, "ttlSeconds": 3600}),
                    )
                    .await;
                    assert_eq!(a["planId"], "team", "{a}");
                    let pool = limit(&a, "gen_pool");
                    assert!(int(pool, "used") + int(pool, "reserved") <= 120, "{a}");
                    let seat = limit(&a, "gen_seat");
                    assert!(int(seat, "used") + int(seat, "reserved") <= 50, "{a}");
                    if a["allowed"] != true {
                        assert_eq!(strs(&a["reasons"]), vec!["limit_reached"], "{a}");
                        let by = strs(&a["deniedBy"]);
                        assert!(
                            !by.is_empty() && by.iter().all(|l| may_deny.contains(&l.as_str())),
                            "denied by {by:?}, expected some of {may_deny:?}: {a}"
                        );
                        denied += 1;
                        continue;
                    }
                    let id = a["reservationId"].as_str().expect("reservationId");
                    let done =
                        post_retrying(&c, &format!("/v1/reservations/{id}/commit"), json!({}))
                            .await;
                    assert_eq!(done["status"], "committed", "{done}");
                    assert_eq!(int(&done, "overage"), 0, "{done}");
                    *admitted.lock().unwrap().entry(user).or_default() += 1;
                }
            })
        })
        .collect();
    let mut denied = 0;
    for t in futures::future::join_all(tasks).await {
        denied += t.expect("client task");
    }
    let admitted = admitted.lock().unwrap().clone();
    (admitted, denied)
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_members_get_exactly_the_pool_and_no_seat_more_than_50() {
    let (_s, c) = accounts_server().await;
    c.advance_to_next_utc_hour(12).await;
    team_account(&c, "acme", &RACE_MEMBERS).await;
    let c = c.tolerating_overload();

    // A monitor: mid-race, neither the pool nor a seat ever holds more than its quota.
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (c, stop) = (c.clone(), stop.clone());
        tokio::spawn(async move {
            let mut samples = 0;
            while !stop.load(SeqCst) {
                let r = c.usage(RACE_MEMBERS[samples % 3]).await;
                if r.status == 200 {
                    let pool = limit(&r.body, "gen_pool");
                    assert!(
                        int(pool, "used") + int(pool, "reserved") <= 120,
                        "the pool over its quota mid-race: {pool}"
                    );
                    let seat = limit(&r.body, "gen_seat");
                    assert!(
                        int(seat, "used") + int(seat, "reserved") <= 50,
                        "a seat over its quota mid-race: {seat}"
                    );
                    samples += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            samples
        })
    };

    // Phase 1: 100 racing attempts by alice alone: her seat admits exactly 50, and only the
    // seat refuses (the pool has 70 left).
    let (admitted, denied) = race(&c, 100, |_| "alice", &["gen_seat"]).await;
    eprintln!("seat race: {admitted:?} admitted, {denied} denied");
    assert_eq!(admitted.get("alice").copied(), Some(50), "{admitted:?}");
    assert_eq!(admitted.len(), 1, "{admitted:?}");
    assert_eq!(denied, 50);
    let u = c.usage("alice").await.ok();
    assert_counts(limit(&u, "gen_seat"), 50, 50, 0);
    assert_counts(limit(&u, "gen_pool"), 120, 50, 0);

    // Phase 2: 200 racing attempts spread over the three (about 67 each): alice's seat is full,
    // and bob and carol could take 100 but the pool has 70.
    let (admitted, denied) = race(
        &c,
        200,
        |n| RACE_MEMBERS[(n % 3) as usize],
        &["gen_pool", "gen_seat"],
    )
    .await;
    stop.store(true, SeqCst);
    assert!(
        monitor.await.expect("monitor") > 0,
        "the monitor took no sample"
    );
    eprintln!("pool race: {admitted:?} admitted, {denied} denied");
    let total: i64 = admitted.values().sum();
    assert_eq!(
        admitted.get("alice"),
        None,
        "alice's seat is full: {admitted:?}"
    );
    assert_eq!(
        total, 70,
        "exactly the rest of the pool is admitted: {admitted:?}"
    );
    assert_eq!(total + denied, 200);

    let mut seats_used = 0;
    for user in RACE_MEMBERS {
        let u = c.usage(user).await.ok();
        let seat = limit(&u, "gen_seat");
        let mine = match user {
            "alice" => 50,
            _ => admitted.get(user).copied().unwrap_or(0),
        };
        assert!(mine <= 50, "{user} got {mine} of a 50 seat");
        assert_counts(seat, 50, mine, 0);
        assert_counts(limit(&u, "gen_pool"), 120, 120, 0);
        seats_used += int(seat, "used");
    }
    assert_eq!(seats_used, 120, "the seats add up to the pool");
    for user in RACE_MEMBERS {
        let d = gen(&c, user, 1).await;
        assert_eq!(d["allowed"], false, "{d}");
        assert!(
            strs(&d["deniedBy"]).contains(&"gen_pool".to_string()),
            "{d}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_adds_never_fill_more_than_the_seats() {
    let (_s, c) = accounts_server().await;
    c.advance_to_next_utc_hour(12).await;
    subscribe_account(&c, "acme", "team").await;
    let c = c.tolerating_overload();

    // 24 users try to join at once (each twice, so the repeat races too): 3 seats.
    let tasks: Vec<_> = (0..48)
        .map(|n| {
            let c = c.clone();
            tokio::spawn(async move {
                let user = format!("u{:02}", n % 24);
                for _ in 0..500 {
                    let r = c.put(&member_path("acme", &user), json!({})).await;
                    match r.status {
                        429 | 503 => tokio::time::sleep(Duration::from_millis(20)).await,
                        200 => return (user, true),
                        _ => {
                            r.err(409, "seat_limit_reached");
                            return (user, false);
                        }
                    }
                }
                panic!("PUT member {user}: overloaded for 500 attempts");
            })
        })
        .collect();
    let mut joined: Vec<String> = Vec::new();
    for t in futures::future::join_all(tasks).await {
        let (user, ok) = t.expect("client task");
        if ok {
            joined.push(user);
        }
    }
    joined.sort();
    joined.dedup();
    assert_eq!(
        joined.len(),
        3,
        "exactly 3 users hold the 3 seats: {joined:?}"
    );
    let acct = get_account(&c, "acme").await.ok();
    assert_eq!(member_ids(&acct), joined, "{acct}");
    assert_seats(&acct, 3, json!(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn account_and_member_ids_are_validated_and_unknown_accounts_are_404() {
    let (s, c) = accounts_server().await;
    c.advance_to_next_utc_hour(12).await;

    // 1 to 256 bytes: 256 is accepted, 257 refused, naming the path parameter.
    let (a256, a257) = ("a".repeat(256), "a".repeat(257));
    let (u256, u257) = ("u".repeat(256), "u".repeat(257));
    let r = c.put(&member_path(&a257, "u1"), json!({})).await;
    let e = r.err(400, "invalid_request");
    assert!(
        e.get("field").is_none() || e["field"] == "accountId",
        "`field` should name accountId: {}",
        r.text
    );
    let r = c.put(&member_path("acme", &u257), json!({})).await;
    let e = r.err(400, "invalid_request");
    assert!(
        e.get("field").is_none() || e["field"] == "userId",
        "`field` should name userId: {}",
        r.text
    );
    // No control characters (the path is percent-decoded).
    c.put(&member_path("acme%0A", "u1"), json!({}))
        .await
        .err(400, "invalid_request");
    add_member(&c, &a256, "u1").await;
    add_member(&c, "acme", &u256).await;
    let big = get_account(&c, &a256).await.ok();
    assert_eq!(big["accountId"], a256.as_str());
    assert_eq!(member_ids(&big), vec!["u1"]);
    c.get(&format!("/v1/accounts/{a257}"))
        .await
        .err(400, "invalid_request");

    // Unknown accounts.
    get_account(&c, "nope").await.err(404, "not_found");
    c.get("/v1/accounts/nope/subscription")
        .await
        .err(404, "not_found");
    c.delete(&member_path("nope", "u1"))
        .await
        .err(404, "not_found");
    // An account whose last member left, never subscribed, is unknown again.
    add_member(&c, "globex", "g1").await;
    get_account(&c, "globex").await.ok();
    remove_member(&c, "globex", "g1").await;
    get_account(&c, "globex").await.err(404, "not_found");

    // Subscriptions: an account on an unknown plan is 404; userId and accountId together is 400.
    c.subscribe(json!({"accountId": "acme", "planId": "nope"}))
        .await
        .err(404, "not_found");
    c.subscribe(json!({"accountId": "acme", "userId": "u1", "planId": "team"}))
        .await
        .err(400, "invalid_request");
    c.subscribe(json!({"accountId": a257, "planId": "team"}))
        .await
        .invalid("accountId");

    // Secret key only.
    s.publishable()
        .put(&member_path("acme", "u2"), json!({}))
        .await
        .err(403, "requires_secret_key");
    s.publishable()
        .get("/v1/accounts/acme")
        .await
        .err(403, "requires_secret_key");
}

/// `GET /v1/accounts/{accountId}/usage`: the pool and each member's seat in one answer, the
/// same figures each member's own usage answer shows; a pending reservation shows as reserved.
#[tokio::test(flavor = "multi_thread")]
async fn account_usage_shows_the_pool_and_every_seat_in_one_answer() {
    let (_s, c) = accounts_server().await;
    team_account(&c, "acme", &["bob", "alice"]).await;
    take(&c, "alice", 30, "team").await;
    take(&c, "bob", 20, "team").await;
    let pending = gen(&c, "bob", 5).await;
    assert_allowed(&pending, "team");
    let u = c.get("/v1/accounts/acme/usage").await.ok();
    assert_eq!(u["accountId"], "acme");
    assert_eq!(u["planId"], "team");
    assert_eq!(u["subscription"]["planId"], "team");
    let pool = &u["limits"];
    assert_eq!(pool.as_array().unwrap().len(), 1, "{u}");
    assert_eq!(pool[0]["limitId"], "gen_pool");
    assert_eq!(pool[0]["scope"], "account");
    assert_eq!(
        (
            int(&pool[0], "used"),
            int(&pool[0], "reserved"),
            int(&pool[0], "remaining")
        ),
        (50, 5, 65)
    );
    let members = u["members"].as_array().unwrap();
    let names: Vec<&str> = members
        .iter()
        .map(|m| m["userId"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"], "sorted by user id");
    for (m, (used, reserved)) in members.iter().zip([(30, 0), (20, 5)]) {
        let seat = &m["limits"];
        assert_eq!(seat.as_array().unwrap().len(), 1, "{m}");
        assert_eq!(seat[0]["limitId"], "gen_seat");
        assert_eq!(seat[0]["scope"], "user");
        assert_eq!(
            (int(&seat[0], "used"), int(&seat[0], "reserved")),
            (used, reserved)
        );
        // The same as the member's own answer.
        let own = c.usage(m["userId"].as_str().unwrap()).await.ok();
        let own_seat = own["limits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["limitId"] == "gen_seat")
            .unwrap()
            .clone();
        assert_eq!(seat[0], own_seat);
    }
    // An account with no members and no subscription is unknown.
    c.get("/v1/accounts/nobody/usage")
        .await
        .err(404, "not_found");
    // Members without an account subscription: the default plan has no pooled limit.
    add_member(&c, "loose", "carol").await;
    let u = c.get("/v1/accounts/loose/usage").await.ok();
    assert_eq!(u["planId"], "free");
    assert_eq!(u["limits"], json!([]));
    assert_eq!(u["members"][0]["limits"][0]["limitId"], "gen_free");
}
