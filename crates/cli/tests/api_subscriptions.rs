//! API.md §6 for users: upsert, plan changes, renewals, history and cancellation.

mod common;

use common::*;

/// `free` (default) and `pro` share the limit id `images_cycle`: one counter across plans.
fn plans(default: bool) -> Value {
    let cycle = json!({"type": "subscription"});
    let mut d = json!({"plans": [
        {"id": "free", "limits": [{"id": "images_cycle", "quota": 3, "window": cycle, "match": [{"event": "image.*"}]}]},
        {"id": "pro", "limits": [{"id": "images_cycle", "quota": 10, "window": cycle, "match": [{"event": "image.*"}]}]}
    ]});
    if default {
        d["defaultPlan"] = json!("free");
    }
    d
}

/// The check answer (no side effect) tells the user's effective plan.
async fn plan_of_user(c: &Client, user: &str) -> Value {
    c.check(json!({"userId": user, "event": "image.render"}))
        .await
        .ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn upsert_creates_and_the_same_call_is_a_no_op() {
    let (_s, c) = TestServer::with_plans(plans(true)).await;
    let now = c.now().await;
    let a = c
        .subscribe(json!({"userId": "u1", "planId": "pro"}))
        .await
        .ok();
    let sub_id = a["subscriptionId"]
        .as_str()
        .expect("subscriptionId")
        .to_string();
    assert!(sub_id.starts_with("sub_"), "{a}");
    assert_eq!(a["userId"], "u1");
    assert_eq!(a["planId"], "pro");
    assert_eq!(a["status"], "active");
    assert_eq!(a["changed"], true);
    assert_eq!(a["endsAt"], Value::Null);
    assert_ts_near(&a["createdAt"], now, 10, "createdAt");
    // Without cycleStart the anchor is the creation time.
    assert_ts_near(&a["cycleStart"], now, 10, "cycleStart");
    assert_eq!(a["currentPeriod"]["start"], a["cycleStart"]);
    let start_ms = parse_ts_ms(a["cycleStart"].as_str().unwrap());
    let end_ms = parse_ts_ms(
        a["currentPeriod"]["end"]
            .as_str()
            .expect("currentPeriod.end"),
    );
    assert_eq!(
        end_ms,
        add_months(start_ms.div_euclid(1000), 1) * 1000 + start_ms.rem_euclid(1000),
        "a monthly period ends a month after its start: {a}"
    );

    let again = c
        .subscribe(json!({"userId": "u1", "planId": "pro"}))
        .await
        .ok();
    assert_eq!(again["changed"], false, "{again}");
    assert_eq!(again["subscriptionId"], sub_id.as_str());
    assert_eq!(again["cycleStart"], a["cycleStart"]);

    let g = c.get_subscription("u1").await.ok();
    assert_eq!(g["subscriptionId"], sub_id.as_str());
    assert_eq!(g["planId"], "pro");
    assert_eq!(g["currentPeriod"], a["currentPeriod"]);
    assert_eq!(plan_of_user(&c, "u1").await["planId"], "pro");

    let t = c
        .subscribe(json!({"userId": "u1", "planId": "pro", "status": "trialing"}))
        .await
        .ok();
    assert_eq!(t["status"], "trialing");
    assert_eq!(t["changed"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_plan_and_unknown_subscriber_are_404() {
    let (_s, c) = TestServer::with_plans(plans(true)).await;
    c.subscribe(json!({"userId": "u1", "planId": "gold"}))
        .await
        .err(404, "not_found");
    c.get_subscription("u1").await.err(404, "not_found");
    c.get_subscription("never").await.err(404, "not_found");
    c.subscribe(json!({"userId": "u1", "planId": "pro"}))
        .await
        .ok();
    c.subscribe(json!({"userId": "u1", "planId": "gold"}))
        .await
        .err(404, "not_found");
    assert_eq!(c.get_subscription("u1").await.ok()["planId"], "pro");
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_changes_keep_usage_and_a_renewal_opens_a_fresh_window() {
    let (_s, c) = TestServer::with_plans(plans(true)).await;
    let noon = c.advance_to_next_utc_hour(12).await;
    let c0 = noon - 60;
    c.subscribe(json!({"userId": "u1", "planId": "free", "cycleStart": fmt_ts(c0)}))
        .await
        .ok();
    c.track_q("u1", "image.render", 3).await;
    assert_eq!(c.reserve_q("u1", "image.render", 1).await["allowed"], false);

    // Upgrade: same anchor, same window, same counter, bigger quota.
    let a = c
        .subscribe(json!({"userId": "u1", "planId": "pro"}))
        .await
        .ok();
    assert_eq!(a["changed"], true);
    assert_eq!(a["planId"], "pro");
    assert_ts(&a["cycleStart"], c0, "a plan change keeps the anchor");
    let l = c.limit_state("u1", "images_cycle").await;
    assert_counts(&l, 10, 3, 0);
    assert_ts(&l["windowStart"], c0, "same window");
    c.track_q("u1", "image.render", 2).await;

    // Downgrade: the quota can't be refreshed by going round the plans.
    c.subscribe(json!({"userId": "u1", "planId": "free"}))
        .await
        .ok();
    assert_counts(&c.limit_state("u1", "images_cycle").await, 3, 5, 0);
    assert_eq!(c.reserve_q("u1", "image.render", 1).await["allowed"], false);

    // Renewal: the same plan with a later cycleStart opens a fresh window.
    c.advance_clock(DAY).await;
    let c1 = noon + DAY - 60;
    let a = c
        .subscribe(json!({"userId": "u1", "planId": "free", "cycleStart": fmt_ts(c1)}))
        .await
        .ok();
    assert_eq!(a["changed"], true);
    assert_ts(&a["currentPeriod"]["start"], c1, "renewed period");
    let l = c.limit_state("u1", "images_cycle").await;
    assert_counts(&l, 3, 0, 0);
    assert_ts(&l["windowStart"], c1, "renewed window");
    assert_ts(&l["resetsAt"], add_months(c1, 1), "renewed window end");
    Client::must_allow(&c.reserve_q("u1", "image.render", 3).await);

    let h = rows(&c.history("u1").await.ok());
    let types: Vec<&str> = h
        .iter()
        .map(|r| r["type"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        types,
        vec!["created", "plan_changed", "plan_changed", "renewed"],
        "{h:?}"
    );
    assert_eq!(h[0]["toPlanId"], "free");
    assert_eq!(
        (&h[1]["fromPlanId"], &h[1]["toPlanId"]),
        (&json!("free"), &json!("pro"))
    );
    assert_eq!(
        (&h[2]["fromPlanId"], &h[2]["toPlanId"]),
        (&json!("pro"), &json!("free"))
    );
    assert_eq!(h[3]["toPlanId"], "free");
    let mut last = i64::MIN;
    for row in &h {
        assert_eq!(row["source"], "api", "{row}");
        let at = parse_ts_ms(row["at"].as_str().expect("at"));
        assert!(at >= last, "history is oldest first: {h:?}");
        last = at;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_now_falls_back_to_the_default_plan() {
    let (_s, c) = TestServer::with_plans(plans(true)).await;
    let s = c
        .subscribe(json!({"userId": "u1", "planId": "pro"}))
        .await
        .ok();
    assert_eq!(plan_of_user(&c, "u1").await["planId"], "pro");
    let now = c.now().await;
    let a = c
        .cancel(json!({"userId": "u1", "at": "now", "reason": "asked"}))
        .await
        .ok();
    assert_eq!(a["subscriptionId"], s["subscriptionId"]);
    assert_eq!(a["planId"], "pro");
    assert_ts_near(&a["endsAt"], now, 10, "endsAt = now");

    c.advance_clock(1).await;
    assert_eq!(plan_of_user(&c, "u1").await["planId"], "free");
    assert_eq!(c.usage("u1").await.ok()["planId"], "free");
    // An ended subscription is still returned, with its endsAt.
    let g = c.get_subscription("u1").await.ok();
    assert_eq!(g["endsAt"], a["endsAt"]);
    c.cancel(json!({"userId": "u1", "at": "now"}))
        .await
        .err(409, "already_canceled");

    let h = rows(&c.history("u1").await.ok());
    let last = h.last().expect("history rows");
    assert!(
        matches!(last["type"].as_str(), Some("canceled" | "ended")),
        "the last history row records the end: {h:?}"
    );
    assert_eq!(last["source"], "api");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_at_period_end() {
    let (_s, c) = TestServer::with_plans(plans(true)).await;
    let noon = c.advance_to_next_utc_hour(12).await;
    let c0 = noon - 60;
    let end = add_months(c0, 1);
    c.subscribe(json!({"userId": "u1", "planId": "pro", "cycleStart": fmt_ts(c0)}))
        .await
        .ok();
    c.track_q("u1", "image.render", 5).await;
    let a = c
        .cancel(json!({"userId": "u1", "at": "period_end"}))
        .await
        .ok();
    assert_eq!(a["planId"], "pro");
    assert_ts(&a["endsAt"], end, "endsAt = current period end");
    let h = rows(&c.history("u1").await.ok());
    assert!(h.iter().any(|r| r["type"] == "cancel_scheduled"), "{h:?}");

    // Until endsAt nothing changes.
    c.advance_to(end - 60).await;
    assert_eq!(plan_of_user(&c, "u1").await["planId"], "pro");
    assert_counts(&c.limit_state("u1", "images_cycle").await, 10, 5, 0);
    assert_eq!(c.get_subscription("u1").await.ok()["planId"], "pro");

    c.advance_to(end + 60).await;
    let a = plan_of_user(&c, "u1").await;
    assert_eq!(a["planId"], "free", "{a}");
    c.cancel(json!({"userId": "u1", "at": "period_end"}))
        .await
        .err(409, "already_canceled");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_at_a_timestamp_without_default_plan() {
    let (_s, c) = TestServer::with_plans(plans(false)).await;
    let noon = c.advance_to_next_utc_hour(12).await;
    c.subscribe(json!({"userId": "u1", "planId": "pro"}))
        .await
        .ok();
    let at = noon + 2 * HOUR;
    let a = c
        .cancel(json!({"userId": "u1", "at": fmt_ts(at), "reason": "churn"}))
        .await
        .ok();
    assert_ts(&a["endsAt"], at, "endsAt = the given timestamp");

    c.advance_to(noon + HOUR).await;
    let r = plan_of_user(&c, "u1").await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(r["planId"], "pro");

    c.advance_to(at + 60).await;
    let r = plan_of_user(&c, "u1").await;
    assert_eq!(r["allowed"], false);
    assert_eq!(strs(&r["reasons"]), vec!["no_subscription"]);
    c.cancel(json!({"userId": "u1", "at": "now"}))
        .await
        .err(409, "already_canceled");
    c.cancel(json!({"userId": "nobody", "at": "now"}))
        .await
        .err(404, "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_limits_override_the_plan_quota() {
    let (_s, c) = TestServer::with_plans(plans(true)).await;
    c.subscribe(json!({"userId": "u1", "planId": "pro", "customLimits": {"images_cycle": 4}}))
        .await
        .ok();
    c.track_q("u1", "image.render", 4).await;
    assert_counts(&c.limit_state("u1", "images_cycle").await, 4, 4, 0);
    assert_eq!(c.reserve_q("u1", "image.render", 1).await["allowed"], false);
    // Another pro user has the plan's quota.
    c.subscribe(json!({"userId": "u2", "planId": "pro"}))
        .await
        .ok();
    assert_counts(&c.limit_state("u2", "images_cycle").await, 10, 0, 0);
}
