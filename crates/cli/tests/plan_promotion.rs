//! Promoting plans from test to live (API.md §12, docs/browser.md "Promoting plans"): the diff,
//! the copy with live's own biller ids kept, and live's counters untouched; over the API and
//! with `tollgate plans diff|promote`.

mod common;

use common::*;

fn plans(quota: u64, with_pro: bool, price: &str) -> Value {
    let mut plans = vec![
        json!({"id": "free", "name": "Free", "stripePriceIds": [price],
        "limits": [{"id": "images", "quota": quota, "window": {"type": "lifetime"},
                    "match": [{"event": "image.render"}]}]}),
    ];
    if with_pro {
        plans.push(
            json!({"id": "pro", "name": "Pro", "price": {"amount": 900, "currency": "usd",
            "interval": "month"}, "limits": [{"id": "images", "quota": 500,
            "window": {"type": "lifetime"}, "match": [{"event": "image.render"}]}]}),
        );
    }
    json!({"defaultPlan": "free", "plans": plans})
}

fn images(usage: &Value) -> &Value {
    usage["limits"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["limitId"] == "images"))
        .unwrap_or_else(|| panic!("no images limit in {usage}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn promotion_copies_test_to_live_and_leaves_live_usage_alone() {
    let (s, test) = TestServer::with_plans(plans(20, true, "price_test_free")).await;
    let live = s.live();
    live.put_plans(plans(10, false, "price_live_free"))
        .await
        .ok();
    // A live user with usage on the limit the promotion changes.
    live.track(json!({"userId": "alice", "event": "image.render", "quantity": 3}))
        .await
        .ok();
    let before = live.usage("alice").await.ok();
    assert_eq!(images(&before)["used"], 3);
    assert_eq!(images(&before)["quota"], 10);
    let live_version = live.get_plans().await.ok()["version"].as_i64().unwrap();

    let diff = test.get("/v1/plans/diff?from=test&to=live").await.ok();
    assert_eq!(diff["from"]["environment"], "test");
    assert_eq!(diff["to"]["version"], live_version);
    let changes: Vec<(String, String)> = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().into(),
                c["change"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("plans[free].limits[images].quota".into(), "changed".into()),
            ("plans[pro]".into(), "added".into()),
        ],
        "{diff}"
    );
    assert_eq!(diff["changes"][0]["from"], 10);
    assert_eq!(diff["changes"][0]["to"], 20);
    // A live key sees the same diff (either environment's secret key may ask).
    assert_eq!(
        live.get("/v1/plans/diff?from=test&to=live").await.ok(),
        diff
    );

    let done = test
        .post(
            "/v1/plans/promote",
            json!({"from": "test", "to": "live", "expectedToVersion": live_version}),
        )
        .await
        .ok();
    assert_eq!(done["changed"], true);
    assert_eq!(done["to"]["version"], live_version + 1);
    assert_eq!(done["changes"], diff["changes"]);

    let promoted = live.get_plans().await.ok();
    assert_eq!(promoted["plans"][0]["limits"][0]["quota"], 20);
    assert_eq!(promoted["plans"][1]["id"], "pro");
    // Live keeps its own Stripe price; the test price never reaches live.
    assert_eq!(
        promoted["plans"][0]["stripePriceIds"],
        json!(["price_live_free"])
    );
    assert!(!promoted.to_string().contains("price_test"), "{promoted}");
    // Live usage is where it was, under the new quota.
    let after = live.usage("alice").await.ok();
    assert_eq!(images(&after)["used"], 3);
    assert_eq!(images(&after)["quota"], 20);
    assert_eq!(images(&after)["remaining"], 17);
    // Test is untouched, and nothing is left to promote.
    assert_eq!(
        test.get_plans().await.ok()["plans"][0]["stripePriceIds"],
        json!(["price_test_free"])
    );
    let again = test.get("/v1/plans/diff?from=test&to=live").await.ok();
    assert_eq!(again["changes"], json!([]));
    let same = test
        .post("/v1/plans/promote", json!({"from": "test", "to": "live"}))
        .await
        .ok();
    assert_eq!(same["changed"], false);
    assert_eq!(same["to"]["version"], live_version + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn promotion_refuses_what_it_cannot_do_and_changes_nothing() {
    let s = TestServer::start().await;
    let test = s.client();
    // Nothing to promote yet.
    test.post("/v1/plans/promote", json!({"from": "test", "to": "live"}))
        .await
        .err(404, "not_found");
    test.put_plans(plans(20, false, "p")).await.ok();
    // Onto itself: nothing changes.
    let same = test
        .post("/v1/plans/promote", json!({"from": "test", "to": "test"}))
        .await
        .ok();
    assert_eq!(
        (same["changed"].clone(), same["changes"].clone()),
        (json!(false), json!([]))
    );
    test.post(
        "/v1/plans/promote",
        json!({"from": "staging", "to": "live"}),
    )
    .await
    .invalid("from");
    test.get("/v1/plans/diff?from=test&to=prod")
        .await
        .err(400, "invalid_request");
    // The diff was made against live version 0; live moved since.
    s.live().put_plans(plans(10, false, "q")).await.ok();
    test.post(
        "/v1/plans/promote",
        json!({"from": "test", "to": "live", "expectedToVersion": 0}),
    )
    .await
    .err(409, "version_conflict");
    test.post(
        "/v1/plans/promote",
        json!({"from": "test", "to": "live", "expectedFromVersion": 7}),
    )
    .await
    .err(409, "version_conflict");
    assert_eq!(
        s.live().get_plans().await.ok()["plans"][0]["limits"][0]["quota"],
        10
    );
    s.publishable()
        .post("/v1/plans/promote", json!({"from": "test", "to": "live"}))
        .await
        .err(403, "requires_secret_key");
    // Into an environment with no document: everything is added.
    let s2 = TestServer::start().await;
    s2.client().put_plans(plans(5, true, "p")).await.ok();
    let diff = s2
        .client()
        .get("/v1/plans/diff?from=test&to=live")
        .await
        .ok();
    assert_eq!(diff["to"]["version"], 0);
    assert!(diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["change"] == "added"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_shows_the_diff_and_asks_before_promoting() {
    let (s, _) = TestServer::with_plans(plans(20, true, "price_test_free")).await;
    s.live()
        .put_plans(plans(10, false, "price_live_free"))
        .await
        .ok();
    let (ok, out, err) = tollgate(&s, &["plans", "diff", "--from", "test", "--to", "live"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("~ plans[free].limits[images].quota: 10 -> 20"),
        "{out}"
    );
    assert!(out.contains("+ plans[pro]"), "{out}");
    // No terminal to ask on: nothing is promoted without --yes.
    let (ok, out, err) = tollgate(&s, &["plans", "promote"]);
    assert!(!ok, "{out}");
    assert!(err.contains("--yes"), "{err}");
    assert!(out.contains("~ plans[free].limits[images].quota"), "{out}");
    assert_eq!(
        s.live().get_plans().await.ok()["plans"][0]["limits"][0]["quota"],
        10
    );
    let (ok, out, err) = tollgate(&s, &["plans", "promote", "--yes"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("Promoted test version 1 to live: now version 2."),
        "{out}"
    );
    assert_eq!(
        s.live().get_plans().await.ok()["plans"][0]["limits"][0]["quota"],
        20
    );
    let (ok, out, _) = tollgate(&s, &["plans", "promote", "--yes"]);
    assert!(ok);
    assert!(out.contains("Nothing to promote."), "{out}");
}
