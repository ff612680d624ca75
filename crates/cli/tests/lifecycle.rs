//! The plan lifecycle (API.md §5 and §6, PRODUCT.md "Subscription"), driven by the test clock:
//! upgrades, downgrades, cancels now, at the period end and at a timestamp, per-subscriber
//! `customLimits`, and the `past_due` / `trialing` statuses.
//!
//! `free` (the default plan) and `pro` share the limit ids `images_daily` and `images_monthly`
//! (calendar windows, the same in both plans): "the same id in two plans is the same counter",
//! so no round trip through the plans can refresh a quota. `pro` alone has `videos_daily`.

mod common;

use common::*;

fn limit_on(id: &str, quota: i64, window: Value, event: &str) -> Value {
    json!({"id": id, "quota": quota, "window": window, "match": [{"event": event}]})
}

fn monthly() -> Value {
    json!({"type": "calendar", "period": "month", "timezone": "UTC"})
}

/// `free` (default): 3 images a UTC day, 20 a UTC month. `pro`: 10 a day, 100 a month, and 2
/// videos a day.
fn lifecycle_plans() -> Value {
    json!({
        "defaultPlan": "free",
        "plans": [
            {"id": "free", "limits": [
                limit_on("images_daily", 3, daily(), "image.*"),
                limit_on("images_monthly", 20, monthly(), "image.*"),
            ]},
            {"id": "pro", "limits": [
                limit_on("images_daily", 10, daily(), "image.*"),
                limit_on("images_monthly", 100, monthly(), "image.*"),
                limit_on("videos_daily", 2, daily(), "video.*"),
            ]},
        ]
    })
}

async fn lifecycle_server() -> (TestServer, Client) {
    TestServer::with_plans(lifecycle_plans()).await
}

async fn reserve_images(c: &Client, user: &str, quantity: u64) -> Value {
    c.reserve_q(user, "image.render", quantity).await
}

/// `user` can get exactly `n` more images admitted right now under `plan`, no more: `n + 1` at
/// once is refused by `denied_by`, `n` is allowed (and committed), then one more is refused.
async fn admits_exactly(c: &Client, user: &str, plan: &str, n: u64, denied_by: &str) {
    let d = reserve_images(c, user, n + 1).await;
    assert_denied(&d, plan, &["limit_reached"], &[denied_by]);
    if n > 0 {
        let r = assert_allowed(&reserve_images(c, user, n).await, plan);
        let a = c.commit(&r, json!({})).await.ok();
        assert_eq!(int(&a, "overage"), 0, "{a}");
    }
    let d = reserve_images(c, user, 1).await;
    assert_denied(&d, plan, &["limit_reached"], &[denied_by]);
}

/// The history rows of `user`, oldest first, and their types.
async fn history_rows(c: &Client, user: &str) -> (Vec<Value>, Vec<String>) {
    let h = c.history(user).await.ok();
    let rows = h["history"]
        .as_array()
        .unwrap_or_else(|| panic!("history answer has no `history` array: {h}"))
        .clone();
    let types = rows
        .iter()
        .map(|r| r["type"].as_str().unwrap_or("?").to_string())
        .collect();
    (rows, types)
}

/// Every history row says `source: "api"` and they are oldest first.
#[track_caller]
fn assert_api_rows_in_order(rows: &[Value]) {
    let mut last = i64::MIN;
    for row in rows {
        assert_eq!(row["source"], "api", "{row}");
        let at = ts_ms(&row["at"]);
        assert!(at >= last, "history must be oldest first: {rows:?}");
        last = at;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn free_to_pro_to_cancel_now_to_free_never_admits_more_than_the_plan_in_force() {
    let (_s, c) = lifecycle_server().await;
    // Noon: the day (and so the month) cannot turn over during the test.
    c.advance_to_next_utc_hour(12).await;

    // On free (no subscription): exactly free's 3.
    admits_exactly(&c, "u1", "free", 3, "images_daily").await;
    let u = c.usage("u1").await.ok();
    assert_eq!(u["planId"], "free");
    assert_counts(limit(&u, "images_daily"), 3, 3, 0);
    assert_counts(limit(&u, "images_monthly"), 20, 3, 0);

    // Upgrade: the same counter, pro's quota. 7 more and no more.
    let s = c
        .subscribe(json!({"userId": "u1", "planId": "pro"}))
        .await
        .ok();
    assert_eq!((&s["planId"], &s["changed"]), (&json!("pro"), &json!(true)));
    let sub_id = s["subscriptionId"].clone();
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 3, 0);
    assert_denied(
        &reserve_images(&c, "u1", 8).await,
        "pro",
        &["limit_reached"],
        &["images_daily"],
    );
    let r = assert_allowed(&reserve_images(&c, "u1", 5).await, "pro");
    c.commit(&r, json!({})).await.ok();
    // 2 more held (still pending when the plan ends), then pro is full.
    let held = reserve_images(&c, "u1", 2).await;
    let hold = assert_allowed(&held, "pro");
    assert_counts(limit(&held, "images_daily"), 10, 8, 2);
    assert_denied(
        &reserve_images(&c, "u1", 1).await,
        "pro",
        &["limit_reached"],
        &["images_daily"],
    );

    // Cancel now: back on free, whose 3 a day are long spent.
    let now = c.now().await;
    let a = c
        .cancel(json!({"userId": "u1", "at": "now", "reason": "downgrade"}))
        .await
        .ok();
    assert_eq!(a["subscriptionId"], sub_id);
    assert_eq!(a["planId"], "pro");
    assert_ts_near(&a["endsAt"], now, 5, "endsAt of a cancel now");
    c.advance_clock(1).await;

    let d = reserve_images(&c, "u1", 1).await;
    assert_denied(&d, "free", &["limit_reached"], &["images_daily"]);
    assert_counts(limit(&d, "images_daily"), 3, 8, 2);
    assert_eq!(int(limit(&d, "images_daily"), "remaining"), 0, "{d}");
    assert_counts(limit(&d, "images_monthly"), 20, 8, 2);
    assert_eq!(limit_ids(&d), vec!["images_daily", "images_monthly"]);

    // The hold admitted under pro still commits in full, without overage.
    // (Its answer's quota is checked in `commit_after_a_plan_change_answers_the_new_quota`.)
    let a = c.commit(&hold, json!({})).await.ok();
    assert_eq!(int(&a, "quantity"), 2, "{a}");
    assert_eq!(int(&a, "overage"), 0, "{a}");
    let l = limit(&a, "images_daily");
    assert_eq!((int(l, "used"), int(l, "reserved")), (10, 0), "{a}");
    let u = c.usage("u1").await.ok();
    assert_eq!(u["planId"], "free");
    assert_counts(limit(&u, "images_daily"), 3, 10, 0);
    assert_eq!(int(limit(&u, "images_daily"), "remaining"), 0);
    assert_counts(limit(&u, "images_monthly"), 20, 10, 0);
    assert_denied(
        &reserve_images(&c, "u1", 1).await,
        "free",
        &["limit_reached"],
        &["images_daily"],
    );
    let ch = c
        .check(json!({"userId": "u1", "event": "image.render"}))
        .await
        .ok();
    assert_denied(&ch, "free", &["limit_reached"], &["images_daily"]);
    // pro's video limit went with pro: free has nothing for videos.
    assert_denied(
        &c.reserve_q("u1", "video.render", 1).await,
        "free",
        &["unmatched_event"],
        &[],
    );

    // Subscribing to pro again does not refresh anything either: 10 of 10 are used.
    let s = c
        .subscribe(json!({"userId": "u1", "planId": "pro"}))
        .await
        .ok();
    assert_eq!(
        s["subscriptionId"], sub_id,
        "the same subscription restarts"
    );
    assert_eq!(s["endsAt"], Value::Null, "{s}");
    let d = reserve_images(&c, "u1", 1).await;
    assert_denied(&d, "pro", &["limit_reached"], &["images_daily"]);
    assert_counts(limit(&d, "images_daily"), 10, 10, 0);
    assert_counts(limit(&d, "images_monthly"), 100, 10, 0);

    let (rows, types) = history_rows(&c, "u1").await;
    assert_eq!(
        types,
        vec!["created", "canceled", "reactivated"],
        "{rows:?}"
    );
    assert_eq!(rows[0]["toPlanId"], "pro");
    assert_eq!(rows[1]["fromPlanId"], "pro");
    assert_eq!(rows[1]["reason"], "downgrade");
    assert_eq!(rows[2]["toPlanId"], "pro");
    assert_api_rows_in_order(&rows);
}

/// A hold admitted under pro and committed after a downgrade to free: the commit answers the
/// limit state a read sees afterwards (API.md §3: the user's limit state), i.e. free's quota.
#[tokio::test(flavor = "multi_thread")]
async fn commit_after_a_plan_change_answers_the_new_quota() {
    let (_s, c) = lifecycle_server().await;
    c.advance_to_next_utc_hour(12).await;
    c.subscribe(json!({"userId": "u1", "planId": "pro"}))
        .await
        .ok();
    let r = assert_allowed(&reserve_images(&c, "u1", 8).await, "pro");
    c.commit(&r, json!({})).await.ok();
    let hold = assert_allowed(&reserve_images(&c, "u1", 2).await, "pro");
    c.subscribe(json!({"userId": "u1", "planId": "free"}))
        .await
        .ok();
    assert_counts(&c.limit_state("u1", "images_daily").await, 3, 8, 2);

    let a = c.commit(&hold, json!({})).await.ok();
    assert_eq!(int(&a, "overage"), 0, "admitted under pro: {a}");
    let read = c.usage("u1").await.ok();
    assert_counts(limit(&read, "images_daily"), 3, 10, 0);
    assert_counts(limit(&read, "images_monthly"), 20, 10, 0);
    assert_counts(limit(&a, "images_daily"), 3, 10, 0);
    assert_counts(limit(&a, "images_monthly"), 20, 10, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn downgrade_below_usage_leaves_remaining_zero_and_denies() {
    let (_s, c) = lifecycle_server().await;
    c.advance_to_next_utc_hour(12).await;
    let s = c
        .subscribe(json!({"userId": "u1", "planId": "pro"}))
        .await
        .ok();
    let r = assert_allowed(&reserve_images(&c, "u1", 8).await, "pro");
    c.commit(&r, json!({})).await.ok();
    let u = c.usage("u1").await.ok();
    assert_counts(limit(&u, "images_daily"), 10, 8, 0);
    assert_eq!(
        limit_ids(&u),
        vec!["images_daily", "images_monthly", "videos_daily"]
    );

    // Downgrade to free (3 a day) with 8 used.
    let d = c
        .subscribe(json!({"userId": "u1", "planId": "free"}))
        .await
        .ok();
    assert_eq!(d["changed"], true);
    assert_eq!(d["planId"], "free");
    assert_eq!(d["subscriptionId"], s["subscriptionId"]);
    assert_eq!(
        d["cycleStart"], s["cycleStart"],
        "a plan change keeps the anchor"
    );

    let u = c.usage("u1").await.ok();
    assert_eq!(u["planId"], "free");
    assert_eq!(limit_ids(&u), vec!["images_daily", "images_monthly"]);
    let l = limit(&u, "images_daily");
    assert_counts(l, 3, 8, 0);
    assert_eq!(int(l, "remaining"), 0, "never negative: {l}");
    assert_eq!(int(l, "used"), 8, "used is not reset: {l}");
    assert_counts(limit(&u, "images_monthly"), 20, 8, 0);

    let a = reserve_images(&c, "u1", 1).await;
    assert_denied(&a, "free", &["limit_reached"], &["images_daily"]);
    assert_counts(limit(&a, "images_daily"), 3, 8, 0);
    let ch = c
        .check(json!({"userId": "u1", "event": "image.render"}))
        .await
        .ok();
    assert_denied(&ch, "free", &["limit_reached"], &["images_daily"]);

    // An enforced track records nothing; an unenforced one records and reports the overage.
    let t = c
        .track(json!({"userId": "u1", "event": "image.render", "quantity": 1, "enforce": true}))
        .await
        .ok();
    assert_eq!(
        (&t["recorded"], &t["allowed"], &t["eventId"]),
        (&json!(false), &json!(false), &Value::Null),
        "{t}"
    );
    assert_eq!(strs(&t["reasons"]), vec!["limit_reached"], "{t}");
    assert_counts(&c.limit_state("u1", "images_daily").await, 3, 8, 0);
    let t = c.track_q("u1", "image.render", 1).await;
    assert_eq!(t["recorded"], true, "{t}");
    assert_eq!(int(&t, "overage"), 1, "{t}");
    assert_counts(limit(&t, "images_daily"), 3, 9, 0);
    assert_counts(&c.limit_state("u1", "images_daily").await, 3, 9, 0);

    // Back up to pro: the same 9 used, exactly 1 left.
    c.subscribe(json!({"userId": "u1", "planId": "pro"}))
        .await
        .ok();
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 9, 0);
    admits_exactly(&c, "u1", "pro", 1, "images_daily").await;

    let (rows, types) = history_rows(&c, "u1").await;
    assert_eq!(
        types,
        vec!["created", "plan_changed", "plan_changed"],
        "{rows:?}"
    );
    assert_eq!(
        (&rows[1]["fromPlanId"], &rows[1]["toPlanId"]),
        (&json!("pro"), &json!("free"))
    );
    assert_eq!(
        (&rows[2]["fromPlanId"], &rows[2]["toPlanId"]),
        (&json!("free"), &json!("pro"))
    );
    assert_api_rows_in_order(&rows);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_at_period_end_keeps_pro_until_the_end_then_falls_back_to_free() {
    let (_s, c) = lifecycle_server().await;
    let noon = c.advance_to_next_utc_hour(12).await;
    let c0 = noon - 60;
    let end = add_months(c0, 1);
    let s = c
        .subscribe(json!({"userId": "u1", "planId": "pro", "cycleStart": fmt_ts(c0)}))
        .await
        .ok();
    c.track_q("u1", "image.render", 5).await;

    let a = c
        .cancel(json!({"userId": "u1", "at": "period_end", "reason": "too expensive"}))
        .await
        .ok();
    assert_eq!(a["subscriptionId"], s["subscriptionId"]);
    assert_eq!(a["planId"], "pro");
    assert_ts(&a["endsAt"], end, "endsAt = the end of the current period");

    let g = c.get_subscription("u1").await.ok();
    assert_eq!(g["planId"], "pro");
    assert_eq!(g["status"], "active");
    assert_ts(&g["endsAt"], end, "GET shows endsAt");
    assert_ts(&g["currentPeriod"]["start"], c0, "currentPeriod.start");
    assert_ts(&g["currentPeriod"]["end"], end, "currentPeriod.end");
    let (rows, types) = history_rows(&c, "u1").await;
    assert_eq!(types, vec!["created", "cancel_scheduled"], "{rows:?}");
    assert_eq!(rows[1]["fromPlanId"], "pro");
    assert_eq!(rows[1]["reason"], "too expensive");
    assert_ts_near(&rows[1]["at"], noon, 10, "cancel_scheduled at the cancel");
    assert_api_rows_in_order(&rows);

    // Right after the cancel nothing changed.
    let r = assert_allowed(&reserve_images(&c, "u1", 1).await, "pro");
    c.release(&r, json!({})).await.ok();
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 5, 0);

    // A minute before the end: still pro, pro's quota in a fresh day (and a new month).
    c.advance_to(end - 60).await;
    let u = c.usage("u1").await.ok();
    assert_eq!(u["planId"], "pro", "{u}");
    assert_eq!(
        limit_ids(&u),
        vec!["images_daily", "images_monthly", "videos_daily"]
    );
    assert_counts(limit(&u, "images_daily"), 10, 0, 0);
    admits_exactly(&c, "u1", "pro", 10, "images_daily").await;
    assert_counts(&c.limit_state("u1", "images_monthly").await, 100, 10, 0);
    let v = c.reserve_q("u1", "video.render", 2).await;
    let rv = assert_allowed(&v, "pro");
    c.commit(&rv, json!({})).await.ok();
    let (_, types) = history_rows(&c, "u1").await;
    assert_eq!(types, vec!["created", "cancel_scheduled"], "not ended yet");

    // A minute after the end: free, in the same UTC day, with pro's 10 still counted.
    c.advance_to(end + 60).await;
    let d = reserve_images(&c, "u1", 1).await;
    assert_denied(&d, "free", &["limit_reached"], &["images_daily"]);
    assert_eq!(limit_ids(&d), vec!["images_daily", "images_monthly"]);
    assert_counts(limit(&d, "images_daily"), 3, 10, 0);
    assert_counts(limit(&d, "images_monthly"), 20, 10, 0);
    assert_denied(
        &c.reserve_q("u1", "video.render", 1).await,
        "free",
        &["unmatched_event"],
        &[],
    );
    let u = c.usage("u1").await.ok();
    assert_eq!(u["planId"], "free", "{u}");
    assert_eq!(limit_ids(&u), vec!["images_daily", "images_monthly"]);

    // The ended subscription is still returned, with its endsAt and its last period.
    let g = c.get_subscription("u1").await.ok();
    assert_eq!(g["subscriptionId"], s["subscriptionId"]);
    assert_eq!(g["planId"], "pro");
    assert_ts(&g["endsAt"], end, "endsAt after the end");
    assert_ts(&g["currentPeriod"]["start"], c0, "last period start");
    assert_ts(&g["currentPeriod"]["end"], end, "last period end");

    let (rows, types) = history_rows(&c, "u1").await;
    assert_eq!(
        types,
        vec!["created", "cancel_scheduled", "ended"],
        "{rows:?}"
    );
    assert_eq!(rows[2]["fromPlanId"], "pro");
    assert_ts(&rows[2]["at"], end, "ended at endsAt");
    assert_api_rows_in_order(&rows);

    c.cancel(json!({"userId": "u1", "at": "period_end"}))
        .await
        .err(409, "already_canceled");
    c.cancel(json!({"userId": "u1", "at": "now"}))
        .await
        .err(409, "already_canceled");
    assert_eq!(
        history_rows(&c, "u1").await.1.len(),
        3,
        "a refused cancel adds nothing"
    );

    // The next UTC day: free's own fresh 3.
    c.advance_to(end + DAY).await;
    assert_counts(&c.limit_state("u1", "images_daily").await, 3, 0, 0);
    admits_exactly(&c, "u1", "free", 3, "images_daily").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_limits_override_a_quota_for_that_subscriber_only() {
    let (_s, c) = lifecycle_server().await;
    c.advance_to_next_utc_hour(12).await;
    let a = c
        .subscribe(json!({"userId": "u1", "planId": "pro", "customLimits": {"images_daily": 4}}))
        .await
        .ok();
    assert_eq!(a["customLimits"], json!({"images_daily": 4}), "{a}");
    let b = c
        .subscribe(json!({"userId": "u2", "planId": "pro"}))
        .await
        .ok();
    assert_eq!(b["customLimits"], json!({}), "{b}");

    // u1: 4 a day instead of 10; the other limits keep the plan's quota.
    let u = c.usage("u1").await.ok();
    assert_counts(limit(&u, "images_daily"), 4, 0, 0);
    assert_counts(limit(&u, "images_monthly"), 100, 0, 0);
    assert_counts(limit(&u, "videos_daily"), 2, 0, 0);
    admits_exactly(&c, "u1", "pro", 4, "images_daily").await;
    // u2, on the same plan: the plan's 10.
    assert_counts(&c.limit_state("u2", "images_daily").await, 10, 0, 0);
    admits_exactly(&c, "u2", "pro", 10, "images_daily").await;

    // A custom quota may also be above the plan's, on any plan.
    c.subscribe(json!({"userId": "u3", "planId": "free", "customLimits": {"images_daily": 6}}))
        .await
        .ok();
    assert_counts(&c.limit_state("u3", "images_daily").await, 6, 0, 0);
    admits_exactly(&c, "u3", "free", 6, "images_daily").await;
    assert_counts(&c.limit_state("u3", "images_monthly").await, 20, 6, 0);

    // A new map replaces the old one: u1's daily quota is pro's again, its monthly one is 5.
    let a = c
        .subscribe(json!({"userId": "u1", "planId": "pro", "customLimits": {"images_monthly": 5}}))
        .await
        .ok();
    assert_eq!(a["changed"], true);
    assert_eq!(a["customLimits"], json!({"images_monthly": 5}), "{a}");
    let u = c.usage("u1").await.ok();
    assert_counts(limit(&u, "images_daily"), 10, 4, 0);
    assert_counts(limit(&u, "images_monthly"), 5, 4, 0);
    admits_exactly(&c, "u1", "pro", 1, "images_monthly").await;
    assert_eq!(
        c.get_subscription("u1").await.ok()["customLimits"],
        json!({"images_monthly": 5})
    );
    // No map at all: the plan's quotas.
    c.subscribe(json!({"userId": "u1", "planId": "pro", "customLimits": {}}))
        .await
        .ok();
    assert_counts(&c.limit_state("u1", "images_monthly").await, 100, 5, 0);

    // A key that is not a limit of the plan named in the request is refused; nothing changes.
    c.subscribe(json!({"userId": "u2", "planId": "free", "customLimits": {"videos_daily": 1}}))
        .await
        .invalid("customLimits.videos_daily");
    let g = c.get_subscription("u2").await.ok();
    assert_eq!(
        (&g["planId"], &g["customLimits"]),
        (&json!("pro"), &json!({}))
    );
    // Other users (on the default plan) are untouched by all of this.
    assert_counts(&c.limit_state("u4", "images_daily").await, 3, 0, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn past_due_keeps_the_plan_and_trialing_behaves_as_active() {
    let (_s, c) = lifecycle_server().await;
    c.advance_to_next_utc_hour(12).await;

    // past_due from the start: pro's limits still apply (grace).
    let a = c
        .subscribe(json!({"userId": "u1", "planId": "pro", "status": "past_due"}))
        .await
        .ok();
    assert_eq!(
        (&a["status"], &a["planId"]),
        (&json!("past_due"), &json!("pro"))
    );
    let u = c.usage("u1").await.ok();
    assert_eq!(u["planId"], "pro", "{u}");
    assert_counts(limit(&u, "images_daily"), 10, 0, 0);
    admits_exactly(&c, "u1", "pro", 10, "images_daily").await;
    let v = c.reserve_q("u1", "video.render", 2).await;
    assert_allowed(&v, "pro");
    assert_counts(limit(&v, "videos_daily"), 2, 0, 2);
    assert_eq!(c.get_subscription("u1").await.ok()["status"], "past_due");

    // trialing: like active.
    let t = c
        .subscribe(json!({"userId": "u2", "planId": "pro", "status": "trialing"}))
        .await
        .ok();
    assert_eq!(
        (&t["status"], &t["planId"]),
        (&json!("trialing"), &json!("pro"))
    );
    assert_eq!(c.usage("u2").await.ok()["planId"], "pro");
    admits_exactly(&c, "u2", "pro", 10, "images_daily").await;
    assert_counts(&c.limit_state("u2", "images_monthly").await, 100, 10, 0);

    // An active subscriber falling past_due mid-window keeps the plan and its usage.
    c.subscribe(json!({"userId": "u3", "planId": "pro"}))
        .await
        .ok();
    let r = assert_allowed(&reserve_images(&c, "u3", 6).await, "pro");
    c.commit(&r, json!({})).await.ok();
    let p = c
        .subscribe(json!({"userId": "u3", "planId": "pro", "status": "past_due"}))
        .await
        .ok();
    assert_eq!(
        (&p["status"], &p["changed"]),
        (&json!("past_due"), &json!(true))
    );
    assert_counts(&c.limit_state("u3", "images_daily").await, 10, 6, 0);
    admits_exactly(&c, "u3", "pro", 4, "images_daily").await;
    let b = c
        .subscribe(json!({"userId": "u3", "planId": "pro", "status": "active"}))
        .await
        .ok();
    assert_eq!(
        (&b["status"], &b["changed"]),
        (&json!("active"), &json!(true))
    );
    assert_counts(&c.limit_state("u3", "images_daily").await, 10, 10, 0);

    // A trial that converts to active keeps its usage too.
    c.subscribe(json!({"userId": "u2", "planId": "pro", "status": "active"}))
        .await
        .ok();
    assert_counts(&c.limit_state("u2", "images_daily").await, 10, 10, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_at_an_explicit_timestamp() {
    let (_s, c) = lifecycle_server().await;
    let noon = c.advance_to_next_utc_hour(12).await;
    c.subscribe(json!({"userId": "u1", "planId": "pro"}))
        .await
        .ok();
    let r = assert_allowed(&reserve_images(&c, "u1", 7).await, "pro");
    c.commit(&r, json!({})).await.ok();

    // 14:00:00.500 the same day (millisecond precision is kept).
    let at = noon + 2 * HOUR;
    let at_ms = at * 1000 + 500;
    let at_text = format!("{}.500Z", &fmt_ts(at)[..19]);
    let a = c
        .cancel(json!({"userId": "u1", "at": at_text, "reason": "churn"}))
        .await
        .ok();
    assert_eq!(a["planId"], "pro");
    assert_eq!(ts_ms(&a["endsAt"]), at_ms, "endsAt = the given time: {a}");
    assert_eq!(ts_ms(&c.get_subscription("u1").await.ok()["endsAt"]), at_ms);
    let (rows, types) = history_rows(&c, "u1").await;
    assert_eq!(types, vec!["created", "cancel_scheduled"], "{rows:?}");
    assert_eq!(rows[1]["reason"], "churn");

    // A minute before: pro, 3 more and no more.
    c.advance_to(at - 60).await;
    admits_exactly(&c, "u1", "pro", 3, "images_daily").await;
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 10, 0);

    // A minute after: free, the same day's 10 counted against free's 3.
    c.advance_to(at + 60).await;
    let d = reserve_images(&c, "u1", 1).await;
    assert_denied(&d, "free", &["limit_reached"], &["images_daily"]);
    assert_counts(limit(&d, "images_daily"), 3, 10, 0);
    assert_eq!(c.usage("u1").await.ok()["planId"], "free");
    let (rows, types) = history_rows(&c, "u1").await;
    assert_eq!(
        types,
        vec!["created", "cancel_scheduled", "ended"],
        "{rows:?}"
    );
    assert_eq!(ts_ms(&rows[2]["at"]), at_ms, "ended at endsAt: {rows:?}");
    assert_api_rows_in_order(&rows);
    c.cancel(json!({"userId": "u1", "at": fmt_ts(at + HOUR)}))
        .await
        .err(409, "already_canceled");

    // A second cancel before the end moves the end (here: earlier).
    c.subscribe(json!({"userId": "u2", "planId": "pro"}))
        .await
        .ok();
    let now = c.now().await;
    let a = c
        .cancel(json!({"userId": "u2", "at": fmt_ts(now + 3 * HOUR)}))
        .await
        .ok();
    assert_ts(&a["endsAt"], now + 3 * HOUR, "first scheduled end");
    let a = c
        .cancel(json!({"userId": "u2", "at": fmt_ts(now + HOUR)}))
        .await
        .ok();
    assert_ts(&a["endsAt"], now + HOUR, "moved end");
    c.advance_to(now + HOUR - 60).await;
    assert_eq!(c.usage("u2").await.ok()["planId"], "pro");
    c.advance_to(now + HOUR + 60).await;
    assert_eq!(c.usage("u2").await.ok()["planId"], "free");
    let (rows, types) = history_rows(&c, "u2").await;
    assert_eq!(
        types,
        vec!["created", "cancel_scheduled", "cancel_scheduled", "ended"],
        "{rows:?}"
    );
    assert_ts(&rows[3]["at"], now + HOUR, "ended at the moved end");

    // A time already past means now.
    c.subscribe(json!({"userId": "u3", "planId": "pro"}))
        .await
        .ok();
    let now = c.now().await;
    let a = c
        .cancel(json!({"userId": "u3", "at": fmt_ts(now - DAY)}))
        .await
        .ok();
    assert_ts_near(&a["endsAt"], now, 5, "a past time means now");
    c.advance_clock(1).await;
    assert_eq!(c.usage("u3").await.ok()["planId"], "free");
    let (rows, types) = history_rows(&c, "u3").await;
    assert_eq!(types, vec!["created", "canceled"], "{rows:?}");
}

/// `subscription` windows: the billing cycle for a subscriber, the calendar month for a user
/// on the default plan. Starting, cancelling and restarting a subscription move the user to
/// another window, and none of them gives back usage; only a renewal starts afresh.
#[tokio::test(flavor = "multi_thread")]
async fn subscription_windows_carry_usage_across_upgrade_cancel_and_restart() {
    let cycle = || json!({"type": "subscription"});
    let (_s, c) = TestServer::with_plans(json!({
        "defaultPlan": "free",
        "plans": [
            {"id": "free", "limits": [limit_on("images_cycle", 5, cycle(), "image.*")]},
            {"id": "pro", "limits": [limit_on("images_cycle", 50, cycle(), "image.*")]},
        ]
    }))
    .await;
    let noon = c.advance_to_next_utc_hour(12).await;
    let r = assert_allowed(&reserve_images(&c, "u1", 4).await, "free");
    c.commit(&r, json!({})).await.ok();
    let l = c.limit_state("u1", "images_cycle").await;
    assert_counts(&l, 5, 4, 0);
    let month_start = unix_month_start(noon);
    assert_ts(
        &l["windowStart"],
        month_start,
        "default plan: the calendar month",
    );

    // Upgrade: the cycle starts now, and the month's 4 come along.
    c.subscribe(json!({"userId": "u1", "planId": "pro"}))
        .await
        .ok();
    let l = c.limit_state("u1", "images_cycle").await;
    assert_counts(&l, 50, 4, 0);
    assert_ts_near(
        &l["windowStart"],
        noon,
        5,
        "pro's cycle starts at the upgrade",
    );
    let r = assert_allowed(&reserve_images(&c, "u1", 10).await, "pro");
    c.commit(&r, json!({})).await.ok();

    // Cancel now: back on free's calendar month, which counts at least pro's 14.
    c.cancel(json!({"userId": "u1", "at": "now"})).await.ok();
    let l = c.limit_state("u1", "images_cycle").await;
    assert_counts(&l, 5, 14, 0);
    assert_eq!(l["remaining"], 0);
    assert_denied(
        &reserve_images(&c, "u1", 1).await,
        "free",
        &["limit_reached"],
        &["images_cycle"],
    );

    // Starting over after the end: a new cycle from now, still counting the 14.
    c.advance_clock(60).await;
    c.subscribe(json!({"userId": "u1", "planId": "pro"}))
        .await
        .ok();
    assert_counts(&c.limit_state("u1", "images_cycle").await, 50, 14, 0);

    // A renewal (a later cycleStart, as a biller sends on the billing date) starts afresh.
    c.advance_clock(3600).await;
    let now = c.now().await;
    let s = c
        .subscribe(json!({"userId": "u1", "planId": "pro", "cycleStart": fmt_ts(now)}))
        .await
        .ok();
    assert_eq!(s["changed"], true);
    let l = c.limit_state("u1", "images_cycle").await;
    assert_counts(&l, 50, 0, 0);
    assert_ts(&l["windowStart"], now, "the renewed cycle");
    let h = c.history("u1").await.ok();
    let kinds: Vec<&str> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["created", "canceled", "reactivated", "renewed"]);
}

/// The first instant of the UTC calendar month containing `t` (seconds).
fn unix_month_start(t: i64) -> i64 {
    let d = jiff::Timestamp::from_second(t)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    unix(i64::from(d.year()), i64::from(d.month()), 1, 0, 0, 0)
}

/// Issue 10, item 4: free and pro share limit `m` (subscription window). A reservation
/// pending across a subscription write still shows in `reserved` afterwards; its release or
/// expiry gives everything back, and its commit charges exactly what it commits, once. The
/// write carries usage, never holds.
#[tokio::test(flavor = "multi_thread")]
async fn a_reservation_pending_across_a_subscription_write_is_never_turned_into_usage() {
    let cycle = || json!({"type": "subscription"});
    let (_s, c) = TestServer::with_plans(json!({
        "defaultPlan": "free",
        "plans": [
            {"id": "free", "limits": [limit_on("m", 10, cycle(), "image.*")]},
            {"id": "pro", "limits": [limit_on("m", 10, cycle(), "image.*")]},
        ]
    }))
    .await;
    c.advance_to_next_utc_hour(12).await;

    // Released after the upgrade: everything comes back, also after cancelling to free.
    c.track_q("u1", "image.render", 2).await;
    let r = assert_allowed(&reserve_images(&c, "u1", 6).await, "free");
    assert_counts(&c.limit_state("u1", "m").await, 10, 2, 6);
    c.subscribe(json!({"userId": "u1", "planId": "pro"}))
        .await
        .ok();
    assert_counts(&c.limit_state("u1", "m").await, 10, 2, 6);
    let released = c.release(&r, json!({})).await.ok();
    assert_counts(limit(&released, "m"), 10, 2, 0);
    assert_counts(&c.limit_state("u1", "m").await, 10, 2, 0);
    c.cancel(json!({"userId": "u1", "at": "now"})).await.ok();
    let l = c.limit_state("u1", "m").await;
    assert_counts(&l, 10, 2, 0);
    assert_eq!(l["remaining"], 8, "2 of 10 used on free again: {l}");

    // Expired after the upgrade: the same.
    c.track_q("u2", "image.render", 2).await;
    assert_allowed(&reserve_images(&c, "u2", 6).await, "free");
    c.subscribe(json!({"userId": "u2", "planId": "pro"}))
        .await
        .ok();
    c.advance_clock(61).await;
    assert_counts(&c.limit_state("u2", "m").await, 10, 2, 0);
    c.cancel(json!({"userId": "u2", "at": "now"})).await.ok();
    assert_counts(&c.limit_state("u2", "m").await, 10, 2, 0);

    // Committed after the upgrade, more than fits: charged exactly once, the excess is overage.
    c.track_q("u3", "image.render", 2).await;
    let r = assert_allowed(&reserve_images(&c, "u3", 6).await, "free");
    c.subscribe(json!({"userId": "u3", "planId": "pro"}))
        .await
        .ok();
    let done = c.commit(&r, json!({"quantity": 9})).await.ok();
    assert_eq!(
        (int(&done, "quantity"), int(&done, "overage")),
        (9, 1),
        "{done}"
    );
    assert_counts(limit(&done, "m"), 10, 11, 0);
    c.cancel(json!({"userId": "u3", "at": "now"})).await.ok();
    assert_counts(&c.limit_state("u3", "m").await, 10, 11, 0);
}
