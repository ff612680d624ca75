//! `GET /v1/plans/recommendation` (API.md §12): a user's last months of usage replayed against
//! every public plan, for three prepared histories whose right answer a person can see.

mod common;

use common::*;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

fn plans() -> Value {
    let plan = |id: &str, amount: u64, quota: u64, public: bool| {
        json!({"id": id, "name": id, "public": public,
            "price": {"amount": amount, "currency": "usd", "interval": "month"},
            "limits": [{"id": "images_daily", "quota": quota,
                "window": {"type": "calendar", "period": "day", "timezone": "UTC"},
                "match": [{"event": "image.*"}]}]})
    };
    // Users stay on the unlimited, private plan while their history is written: no denial
    // changes what they used.
    json!({"defaultPlan": "internal", "plans": [
        plan("max", 9_900, 1_000, true),
        plan("free", 0, 10, true),
        plan("pro", 1_900, 100, true),
        plan("internal", 0, 1_000_000_000, false),
    ]})
}

async fn images(c: &Client, user: &str, n: u64) {
    c.track(json!({"userId": user, "event": "image.render", "quantity": n}))
        .await
        .ok();
}

/// Moves the test clock to the 2nd of next month, 12:00 UTC.
async fn next_month(c: &Client) {
    let now: Timestamp = c.clock().await.ok()["now"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let today = now.to_zoned(TimeZone::UTC).date();
    let next = Date::new(today.year(), today.month(), 2)
        .unwrap()
        .checked_add(1.month())
        .unwrap()
        .at(12, 0, 0, 0)
        .to_zoned(TimeZone::UTC)
        .unwrap()
        .timestamp();
    c.advance_clock((next.as_second() - now.as_second()) as i64)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_histories_get_the_plan_a_person_would_pick() {
    let (_s, c) = TestServer::with_plans(plans()).await;
    // Month 1: light uses 3 a day; steady 8; burst has one day of 400.
    next_month(&c).await;
    images(&c, "light", 3).await;
    images(&c, "steady", 8).await;
    images(&c, "burst", 400).await;
    // Month 2: steady has a day of 40 (past free's 10); burst is quiet.
    next_month(&c).await;
    images(&c, "light", 2).await;
    images(&c, "steady", 40).await;
    images(&c, "burst", 5).await;
    // Month 3 (now).
    next_month(&c).await;
    images(&c, "light", 4).await;
    images(&c, "steady", 12).await;

    let light = c.get("/v1/plans/recommendation?userId=light").await.ok();
    assert_eq!(light["planId"], "free", "{light}");
    assert!(light["reason"]
        .as_str()
        .unwrap()
        .contains("free is the cheapest public plan"));
    assert_eq!(light["eventsRead"], 3);
    let peaks: Vec<u64> = light["periods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["usage"]["images_daily"].as_u64().unwrap())
        .collect();
    assert_eq!(peaks, [3, 2, 4]);

    let steady = c.get("/v1/plans/recommendation?userId=steady").await.ok();
    assert_eq!(steady["planId"], "pro", "{steady}");
    let reason = steady["reason"].as_str().unwrap();
    assert!(
        reason.contains("free would have denied images_daily (peak 40 against a quota of 10"),
        "{reason}"
    );

    let burst = c.get("/v1/plans/recommendation?userId=burst").await.ok();
    assert_eq!(burst["planId"], "max", "{burst}");
    // Every public plan is judged, cheapest first; the private one never is.
    let candidates: Vec<(&str, bool, u64)> = burst["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["planId"].as_str().unwrap(),
                c["fits"].as_bool().unwrap(),
                c["yearlyAmount"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        candidates,
        [
            ("free", false, 0),
            ("pro", false, 22_800),
            ("max", true, 118_800)
        ]
    );
    assert_eq!(burst["candidates"][1]["exceeded"][0]["peak"], 400);

    // One month back only: burst's 400 is out of the window, and free covers it.
    let recent = c
        .get("/v1/plans/recommendation?userId=burst&periods=1")
        .await
        .ok();
    assert_eq!(recent["planId"], "free", "{recent}");
    assert_eq!(recent["periods"].as_array().unwrap().len(), 1);
    // A user with no usage: the cheapest plan.
    let nobody = c.get("/v1/plans/recommendation?userId=nobody").await.ok();
    assert_eq!(nobody["planId"], "free");
    assert_eq!(nobody["eventsRead"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn when_no_plan_fits_it_says_so_and_checks_its_input() {
    let (s, c) = TestServer::with_plans(plans()).await;
    images(&c, "huge", 5_000).await;
    let r = c.get("/v1/plans/recommendation?userId=huge").await.ok();
    assert_eq!(r["planId"], Value::Null, "{r}");
    assert!(r["reason"]
        .as_str()
        .unwrap()
        .contains("even max would have denied images_daily (peak 5000"));
    for bad in ["periods=0", "periods=13"] {
        c.get(&format!("/v1/plans/recommendation?userId=huge&{bad}"))
            .await
            .invalid("periods");
    }
    c.get("/v1/plans/recommendation")
        .await
        .err(400, "invalid_request");
    s.publishable()
        .get("/v1/plans/recommendation?userId=huge")
        .await
        .err(403, "requires_secret_key");
}
