//! API.md §5 windows, driven by the test clock (§7): resets, time zones, DST changes, rolling,
//! first use, subscription cycles and month-end anchors.

mod common;

use common::*;

fn limit_on(id: &str, quota: i64, window: Value) -> Value {
    json!({"id": id, "quota": quota, "window": window, "match": [{"event": "image.*"}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn daily_limit_resets_after_a_day() {
    let (_s, c) =
        TestServer::with_plans(free_plan(json!([limit_on("images_daily", 3, daily())]))).await;
    let noon = c.advance_to_next_utc_hour(12).await;
    let day = noon.div_euclid(DAY) * DAY;
    c.track_q("u1", "image.render", 3).await;
    assert_eq!(c.reserve_q("u1", "image.render", 1).await["allowed"], false);

    c.advance_clock(DAY).await;
    let l = c.limit_state("u1", "images_daily").await;
    assert_counts(&l, 3, 0, 0);
    assert_ts(&l["windowStart"], day + DAY, "windowStart of the next day");
    assert_ts(&l["resetsAt"], day + 2 * DAY, "resetsAt of the next day");
    let a = c.reserve_q("u1", "image.render", 3).await;
    Client::must_allow(&a);
    assert_counts(limit(&a, "images_daily"), 3, 0, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn calendar_windows_have_exact_utc_boundaries() {
    let cal = |p: &str| json!({"type": "calendar", "period": p, "timezone": "UTC"});
    let (_s, c) = TestServer::with_plans(free_plan(json!([
        limit_on("per_minute", 100, cal("minute")),
        limit_on("per_hour", 100, cal("hour")),
        limit_on("per_day", 100, cal("day")),
        limit_on("per_week", 100, cal("week")),
        limit_on("per_month", 100, cal("month")),
        limit_on("per_year", 100, cal("year")),
        limit_on("per_cycle", 100, json!({"type": "subscription"})),
    ])))
    .await;
    let noon = c.advance_to_next_utc_hour(12).await;
    c.advance_clock(20).await;
    let a = c.track_q("u1", "image.render", 1).await;

    let days = noon.div_euclid(DAY);
    let (y, m, _) = civil_from_days(days);
    // 1970-01-01 was a Thursday; weeks start on Monday.
    let monday = (days - (days + 3).rem_euclid(7)) * DAY;
    let month = unix(y, m, 1, 0, 0, 0);
    let expected = [
        ("per_minute", noon, noon + MINUTE),
        ("per_hour", noon, noon + HOUR),
        ("per_day", days * DAY, days * DAY + DAY),
        ("per_week", monday, monday + 7 * DAY),
        ("per_month", month, add_months(month, 1)),
        (
            "per_year",
            unix(y, 1, 1, 0, 0, 0),
            unix(y + 1, 1, 1, 0, 0, 0),
        ),
        // No subscription, on the default plan: the calendar month in UTC.
        ("per_cycle", month, add_months(month, 1)),
    ];
    for (id, start, end) in expected {
        let l = limit(&a, id);
        assert_counts(l, 100, 1, 0);
        assert_ts(&l["windowStart"], start, &format!("{id} windowStart"));
        assert_ts(&l["resetsAt"], end, &format!("{id} resetsAt"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn calendar_day_in_tokyo_resets_at_tokyo_midnight() {
    let (_s, c) = TestServer::with_plans(free_plan(json!([
        limit_on(
            "tokyo_daily",
            1,
            json!({"type": "calendar", "period": "day", "timezone": "Asia/Tokyo"})
        ),
        limit_on("utc_daily", 5, daily()),
    ])))
    .await;
    // Tokyo midnight is 15:00 UTC (UTC+9, no DST).
    let now = c.now().await;
    let mut next = now.div_euclid(DAY) * DAY + 15 * HOUR;
    while next < now + 120 {
        next += DAY;
    }
    c.advance_to(next - 30).await;

    let a = c.reserve_q("u1", "image.render", 1).await;
    let r = Client::must_allow(&a);
    c.commit(&r, json!({})).await.ok();
    let l = limit(&a, "tokyo_daily");
    assert_ts(
        &l["windowStart"],
        next - DAY,
        "Tokyo day starts at 15:00 UTC",
    );
    assert_ts(&l["resetsAt"], next, "Tokyo day ends at 15:00 UTC");
    let d = c.reserve_q("u1", "image.render", 1).await;
    assert_eq!(strs(&d["deniedBy"]), vec!["tokyo_daily"]);

    c.advance_clock(60).await;
    let a = c.reserve_q("u1", "image.render", 1).await;
    Client::must_allow(&a);
    let l = limit(&a, "tokyo_daily");
    assert_counts(l, 1, 0, 1);
    assert_ts(&l["windowStart"], next, "new Tokyo day");
    assert_ts(&l["resetsAt"], next + DAY, "new Tokyo day end");
    // The UTC day did not turn over at 15:00 UTC.
    let u = limit(&a, "utc_daily");
    assert_counts(u, 5, 1, 1);
    assert_ts(
        &u["windowStart"],
        next.div_euclid(DAY) * DAY,
        "UTC day unchanged",
    );
}

/// The next instant Europe/Berlin falls back (the last Sunday of October, 03:00 CEST becomes
/// 02:00 CET at 01:00 UTC) whose first 02:00 CEST is more than a minute after `now`.
fn next_berlin_fall_back(now: i64) -> i64 {
    let mut year = civil_from_days(now.div_euclid(DAY)).0;
    loop {
        let october_31 = days_from_civil(year, 10, 31);
        // 1970-01-01 was a Thursday (3 days after a Monday); Sunday is 6 days after one.
        let since_monday = (october_31 + 3).rem_euclid(7);
        let last_sunday = october_31 - (since_monday + 1).rem_euclid(7);
        let change = last_sunday * DAY + HOUR;
        if change - HOUR > now + MINUTE {
            return change;
        }
        year += 1;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_hour_repeated_by_a_dst_change_is_a_window_of_its_own() {
    let (_s, c) = TestServer::with_plans(free_plan(json!([limit_on(
        "hourly",
        1,
        json!({"type": "calendar", "period": "hour", "timezone": "Europe/Berlin"})
    )])))
    .await;
    // 2027-10-31T01:00:00Z when this test was written.
    let change = next_berlin_fall_back(c.now().await);

    // 02:30 CEST, in the first 02:00–03:00 of the night.
    c.advance_to(change - 30 * MINUTE).await;
    let a = c.track_q("u1", "image.render", 1).await;
    let l = limit(&a, "hourly");
    assert_counts(l, 1, 1, 0);
    assert_ts(&l["windowStart"], change - HOUR, "the first 02:00, +02:00");
    assert_ts(&l["resetsAt"], change, "ends when the clock falls back");
    let d = c.reserve_q("u1", "image.render", 1).await;
    assert_eq!(
        strs(&d["deniedBy"]),
        vec!["hourly"],
        "the first hour is used"
    );

    // 02:30 CET, in the repeated 02:00–03:00: a new window, one hour long.
    c.advance_clock(HOUR).await;
    let a = c.reserve_q("u1", "image.render", 1).await;
    let r = Client::must_allow(&a);
    let l = limit(&a, "hourly");
    assert_counts(l, 1, 0, 1);
    assert_ts(&l["windowStart"], change, "the repeated 02:00, +01:00");
    assert_ts(&l["resetsAt"], change + HOUR, "one hour after its start");
    c.commit(&r, json!({})).await.ok();
    let d = c.reserve_q("u1", "image.render", 1).await;
    assert_eq!(
        strs(&d["deniedBy"]),
        vec!["hourly"],
        "the repeated hour has its own quota of 1"
    );

    // 03:30 CET: the next hour.
    c.advance_clock(HOUR).await;
    let l = c.limit_state("u1", "hourly").await;
    assert_counts(&l, 1, 0, 0);
    assert_ts(&l["windowStart"], change + HOUR, "03:00, +01:00");
    assert_ts(&l["resetsAt"], change + 2 * HOUR, "04:00, +01:00");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_in_tokyo_has_days_that_start_at_tokyo_midnight() {
    // One UTC daily limit; u1's subscription says Asia/Tokyo, u2 has none.
    let (_s, c) = TestServer::with_plans(free_plan(json!([limit_on("daily", 1, daily())]))).await;
    let s = c
        .subscribe(json!({"userId": "u1", "planId": "free", "timezone": "Asia/Tokyo"}))
        .await
        .ok();
    assert_eq!(s["timezone"], "Asia/Tokyo");
    assert_eq!(
        c.get_subscription("u1").await.ok()["timezone"],
        "Asia/Tokyo"
    );
    // Tokyo midnight is 15:00 UTC (UTC+9, no DST).
    let now = c.now().await;
    let mut tokyo_midnight = now.div_euclid(DAY) * DAY + 15 * HOUR;
    while tokyo_midnight < now + 120 {
        tokyo_midnight += DAY;
    }
    let utc_day = tokyo_midnight.div_euclid(DAY) * DAY;
    c.advance_to(tokyo_midnight - 30).await;

    for user in ["u1", "u2"] {
        let r = Client::must_allow(&c.reserve_q(user, "image.render", 1).await);
        c.commit(&r, json!({})).await.ok();
        let d = c.reserve_q(user, "image.render", 1).await;
        assert_eq!(strs(&d["deniedBy"]), vec!["daily"], "{user} used its day");
    }
    let l = c.limit_state("u1", "daily").await;
    assert_ts(&l["windowStart"], tokyo_midnight - DAY, "u1's day: Tokyo's");
    assert_ts(
        &l["resetsAt"],
        tokyo_midnight,
        "u1's day ends at Tokyo midnight",
    );
    let l = c.limit_state("u2", "daily").await;
    assert_ts(&l["windowStart"], utc_day, "u2's day: the limit's (UTC)");

    c.advance_clock(60).await;
    let a = c.reserve_q("u1", "image.render", 1).await;
    Client::must_allow(&a);
    let l = limit(&a, "daily");
    assert_counts(l, 1, 0, 1);
    assert_ts(&l["windowStart"], tokyo_midnight, "a new Tokyo day");
    assert_ts(
        &l["resetsAt"],
        tokyo_midnight + DAY,
        "which ends a day later",
    );
    let d = c.reserve_q("u2", "image.render", 1).await;
    assert_eq!(strs(&d["deniedBy"]), vec!["daily"], "u2's UTC day goes on");

    // An upsert that does not name the zone keeps it; null clears it.
    let s = c
        .subscribe(json!({"userId": "u1", "planId": "free", "customLimits": {"daily": 2}}))
        .await
        .ok();
    assert_eq!(s["timezone"], "Asia/Tokyo");
    let s = c
        .subscribe(json!({"userId": "u1", "planId": "free", "timezone": null}))
        .await
        .ok();
    assert_eq!(s.get("timezone"), None, "{s}");
    let l = c.limit_state("u1", "daily").await;
    assert_ts(&l["windowStart"], utc_day, "u1 back on the limit's zone");
    // The reservation pending in the Tokyo day moves along as a hold (never as usage): the
    // UTC day shows it reserved, not used.
    assert_counts(&l, 2, 0, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_time_zone_must_be_an_iana_name() {
    let (_s, c) = TestServer::with_plans(free_plan(json!([limit_on("daily", 1, daily())]))).await;
    for zone in [json!("Mars/Olympus"), json!("+09:00"), json!(""), json!(9)] {
        let r = c
            .subscribe(json!({"userId": "u1", "planId": "free", "timezone": zone}))
            .await;
        r.invalid("timezone");
    }
    let long = "A".repeat(65);
    let r = c
        .subscribe(json!({"userId": "u1", "planId": "free", "timezone": long}))
        .await;
    r.invalid("timezone");
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_window_releases_usage_as_it_ages_out() {
    let (_s, c) = TestServer::with_plans(free_plan(json!([limit_on(
        "rolling_hour",
        3,
        json!({"type": "rolling", "seconds": 3600})
    )])))
    .await;
    let t0 = c.advance_to_next_utc_hour(12).await;
    c.track_q("u1", "image.render", 2).await;
    c.advance_clock(1800).await;
    c.track_q("u1", "image.render", 1).await;
    assert_eq!(c.reserve_q("u1", "image.render", 1).await["allowed"], false);
    let l = c.limit_state("u1", "rolling_hour").await;
    assert_counts(&l, 3, 3, 0);
    // When the oldest counted usage leaves the window (a minute of slack for bucketing).
    assert_ts_near(&l["resetsAt"], t0 + 3600, 60, "rolling resetsAt");

    // Past t0 + 1 h the first 2 left; the 1 from t0 + 30 min is still counted.
    c.advance_to(t0 + 3600 + 120).await;
    let l = c.limit_state("u1", "rolling_hour").await;
    assert_counts(&l, 3, 1, 0);
    assert_ts_near(
        &l["resetsAt"],
        t0 + 1800 + 3600,
        60,
        "rolling resetsAt follows the oldest usage",
    );
    let r = Client::must_allow(&c.reserve_q("u1", "image.render", 2).await);
    let a = c.commit(&r, json!({})).await.ok();
    // The commit's answer is the state a read sees afterwards.
    let read = c.limit_state("u1", "rolling_hour").await;
    assert_counts(limit(&a, "rolling_hour"), 3, 3, 0);
    assert_counts(&read, 3, 3, 0);
    assert_eq!(limit(&a, "rolling_hour")["resetsAt"], read["resetsAt"]);
    assert_eq!(c.reserve_q("u1", "image.render", 1).await["allowed"], false);

    // Past t0 + 1.5 h the 1 left too; the 2 from t0 + 1 h remain.
    c.advance_to(t0 + 1800 + 3600 + 120).await;
    assert_counts(&c.limit_state("u1", "rolling_hour").await, 3, 2, 0);

    // Once the window is empty, a commit's usage is the oldest: it resets an hour on.
    let t1 = t0 + 4 * 3600;
    c.advance_to(t1).await;
    assert_counts(&c.limit_state("u1", "rolling_hour").await, 3, 0, 0);
    let r = Client::must_allow(&c.reserve_q("u1", "image.render", 1).await);
    let a = c.commit(&r, json!({})).await.ok();
    let read = c.limit_state("u1", "rolling_hour").await;
    assert_counts(limit(&a, "rolling_hour"), 3, 1, 0);
    assert_counts(&read, 3, 1, 0);
    assert_ts_near(
        &read["resetsAt"],
        t1 + 3600,
        60,
        "reset an hour after the use",
    );
    assert_eq!(limit(&a, "rolling_hour")["resetsAt"], read["resetsAt"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn first_use_window_starts_at_first_use() {
    let (_s, c) = TestServer::with_plans(free_plan(json!([limit_on(
        "session",
        2,
        json!({"type": "first_use", "seconds": 18000})
    )])))
    .await;
    c.advance_to_next_utc_hour(12).await;
    c.advance_clock(1234).await;
    let t1 = c.now().await;
    let a = c.track_q("u1", "image.render", 1).await;
    let l = limit(&a, "session");
    assert_ts_near(
        &l["windowStart"],
        t1,
        5,
        "first_use window opens at the first use",
    );
    // The window opens at the instant of the first use (milliseconds included).
    let start_ms = ts_ms(&l["windowStart"]);
    assert_eq!(
        ts_ms(&l["resetsAt"]),
        start_ms + 18_000_000,
        "first_use window lasts its seconds: {l}"
    );

    c.advance_clock(3600).await;
    let a = c.track_q("u1", "image.render", 1).await;
    let l = limit(&a, "session");
    assert_counts(l, 2, 2, 0);
    assert_eq!(
        ts_ms(&l["windowStart"]),
        start_ms,
        "same window an hour later: {l}"
    );
    assert_eq!(c.reserve_q("u1", "image.render", 1).await["allowed"], false);

    // After the window ended, the next use opens a new one from that moment.
    c.advance_to(start_ms / 1000 + 18000 + 60).await;
    assert_counts(&c.limit_state("u1", "session").await, 2, 0, 0);
    let t2 = c.now().await;
    let a = c.reserve_q("u1", "image.render", 1).await;
    Client::must_allow(&a);
    let l = limit(&a, "session");
    assert_counts(l, 2, 0, 1);
    assert_ts_near(&l["windowStart"], t2, 5, "new first_use window");
    let start2_ms = ts_ms(&l["windowStart"]);
    assert!(
        start2_ms >= start_ms + 18_000_000,
        "windows must not overlap: {l}"
    );
    assert_eq!(
        ts_ms(&l["resetsAt"]),
        start2_ms + 18_000_000,
        "new window end: {l}"
    );
}

/// `pro` with a subscription-window limit; no default plan.
fn pro_plan(quota: i64) -> Value {
    json!({"plans": [{"id": "pro", "limits": [limit_on("images_cycle", quota, json!({"type": "subscription"}))]}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn subscription_window_renews_when_the_cycle_does() {
    let (_s, c) = TestServer::with_plans(pro_plan(2)).await;
    let noon = c.advance_to_next_utc_hour(12).await;
    let c0 = noon - 60;
    let next = add_months(c0, 1);
    let s = c
        .subscribe(json!({"userId": "u1", "planId": "pro", "cycleStart": fmt_ts(c0)}))
        .await
        .ok();
    assert_ts(&s["cycleStart"], c0, "cycleStart");
    assert_ts(&s["currentPeriod"]["start"], c0, "currentPeriod.start");
    assert_ts(
        &s["currentPeriod"]["end"],
        next,
        "currentPeriod.end = cycleStart + 1 month",
    );

    let a = c.track_q("u1", "image.render", 2).await;
    let l = limit(&a, "images_cycle");
    assert_ts(&l["windowStart"], c0, "windowStart = cycle start");
    assert_ts(&l["resetsAt"], next, "resetsAt = cycle end");
    assert_eq!(c.reserve_q("u1", "image.render", 1).await["allowed"], false);

    c.advance_to(next - 5).await;
    assert_eq!(
        c.reserve_q("u1", "image.render", 1).await["allowed"],
        false,
        "not before the end"
    );
    c.advance_to(next + 5).await;
    let a = c.reserve_q("u1", "image.render", 2).await;
    Client::must_allow(&a);
    let l = limit(&a, "images_cycle");
    assert_counts(l, 2, 0, 2);
    assert_ts(&l["windowStart"], next, "the renewed window");
    assert_ts(
        &l["resetsAt"],
        add_months(c0, 2),
        "the renewed window's end",
    );
    let s = c.get_subscription("u1").await.ok();
    assert_ts(
        &s["currentPeriod"]["start"],
        next,
        "currentPeriod follows the clock",
    );
    assert_ts(
        &s["currentPeriod"]["end"],
        add_months(c0, 2),
        "currentPeriod end",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn subscription_anchored_on_the_31st_clamps_and_returns() {
    let (_s, c) = TestServer::with_plans(pro_plan(1)).await;
    let now = c.now().await;
    let mut year = civil_from_days(now.div_euclid(DAY)).0;
    while unix(year, 1, 31, 0, 0, 0) <= now + 60 {
        year += 1;
    }
    let jan31 = unix(year, 1, 31, 0, 0, 0);
    let feb_end = unix(year, 2, days_in_month(year, 2), 0, 0, 0);
    let mar31 = unix(year, 3, 31, 0, 0, 0);
    let apr30 = unix(year, 4, 30, 0, 0, 0);
    c.advance_to(jan31 + HOUR).await;

    let s = c
        .subscribe(json!({"userId": "u1", "planId": "pro", "cycleStart": fmt_ts(jan31)}))
        .await
        .ok();
    assert_ts(&s["currentPeriod"]["start"], jan31, "Jan 31");
    assert_ts(
        &s["currentPeriod"]["end"],
        feb_end,
        "clamped to the end of February",
    );
    let r = Client::must_allow(&c.reserve_q("u1", "image.render", 1).await);
    c.commit(&r, json!({})).await.ok();
    assert_eq!(c.reserve_q("u1", "image.render", 1).await["allowed"], false);

    c.advance_to(feb_end + HOUR).await;
    let a = c.reserve_q("u1", "image.render", 1).await;
    let r = Client::must_allow(&a);
    let l = limit(&a, "images_cycle");
    assert_ts(&l["windowStart"], feb_end, "February window");
    assert_ts(&l["resetsAt"], mar31, "back to the 31st in March");
    c.commit(&r, json!({})).await.ok();
    let s = c.get_subscription("u1").await.ok();
    assert_ts(
        &s["currentPeriod"]["start"],
        feb_end,
        "period start in February",
    );
    assert_ts(&s["currentPeriod"]["end"], mar31, "period end Mar 31");
    assert_eq!(c.reserve_q("u1", "image.render", 1).await["allowed"], false);

    c.advance_to(mar31 + HOUR).await;
    let a = c.reserve_q("u1", "image.render", 1).await;
    Client::must_allow(&a);
    let l = limit(&a, "images_cycle");
    assert_ts(&l["windowStart"], mar31, "March window starts on the 31st");
    assert_ts(&l["resetsAt"], apr30, "April clamps to the 30th");
}
