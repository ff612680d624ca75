//! `tollgate credits grant|show|ledger|revoke` against a real server, and the refusals of the
//! credit routes (API.md §8) a user meets through them.

mod common;

use common::*;

#[track_caller]
fn succeeds(run: (bool, String, String)) -> String {
    assert!(run.0, "the command failed: {}{}", run.1, run.2);
    run.1
}

#[track_caller]
fn fails_with(run: (bool, String, String), wanted: &str) {
    assert!(!run.0, "the command should fail: {}", run.1);
    assert!(run.2.contains(wanted), "stderr lacks {wanted:?}: {}", run.2);
}

/// Plan quota 2 images a day, and a pack of 5 images that expires after 30 days.
fn plans_with_pack() -> Value {
    let mut doc = free_plan(json!([{
        "id": "images_daily", "quota": 2, "window": daily(), "match": [{"event": "image.*"}]
    }]));
    doc["creditPacks"] = json!([{
        "id": "pack5", "name": "5 images", "expiresAfterDays": 30,
        "items": [{"id": "imgs", "quantity": 5, "match": [{"event": "image.*"}]}]
    }]);
    doc
}

#[tokio::test(flavor = "multi_thread")]
async fn credit_requests_are_checked_before_anything_is_granted() {
    let (s, c) = TestServer::with_plans(plans_with_pack()).await;

    let e = c
        .post(
            "/v1/credits/grants",
            json!({"userId": "u1", "packId": "nope"}),
        )
        .await;
    e.err(404, "not_found");
    c.post(
        "/v1/credits/grants",
        json!({"userId": "u1", "packId": "pack5", "source": "rollover"}),
    )
    .await
    .invalid("source");
    c.post(
        "/v1/credits/grants",
        json!({"userId": "u1", "packId": "pack5", "expiresAt": "2020-01-01T00:00:00Z"}),
    )
    .await
    .invalid("expiresAt");
    c.post(
        "/v1/credits/grants",
        json!({"userId": "u1", "packId": "pack5", "quantity": 10_001}),
    )
    .await
    .invalid("quantity");
    c.post(
        "/v1/credits/grants",
        json!({"userId": "u1", "accountId": "acme", "packId": "pack5"}),
    )
    .await
    .invalid("accountId");
    c.post(
        "/v1/credits/grants",
        json!({"userId": "u1", "packId": "pack5", "quantiy": 2}),
    )
    .await
    .invalid("quantiy");
    c.post("/v1/credits/revoke", json!({"grantId": "rsv_1"}))
        .await
        .err(404, "not_found");
    c.post("/v1/credits/revoke", json!({}))
        .await
        .invalid("grantId");
    c.get("/v1/users/u1/credits/ledger?cursor=abc")
        .await
        .invalid("cursor");
    c.get("/v1/users/u1/credits/ledger?limit=1001")
        .await
        .invalid("limit");
    c.get("/v1/accounts/acme/credits/ledger?limit=0")
        .await
        .invalid("limit");
    s.publishable()
        .get("/v1/users/u1/credits")
        .await
        .err(403, "requires_secret_key");

    // The CLI says what the server refused, and refuses what it cannot send.
    fails_with(
        tollgate(&s, &["credits", "grant", "--user", "u1", "--pack", "nope"]),
        "not_found",
    );
    fails_with(
        tollgate(
            &s,
            &[
                "credits",
                "grant",
                "--user",
                "u1",
                "--pack",
                "pack5",
                "--expires-at",
                "2020-01-01T00:00:00Z",
            ],
        ),
        "expiresAt",
    );
    fails_with(
        tollgate(
            &s,
            &[
                "credits",
                "grant",
                "--user",
                "u1",
                "--account",
                "a",
                "--pack",
                "pack5",
            ],
        ),
        "cannot be used with",
    );
    fails_with(
        tollgate(
            &s,
            &["credits", "ledger", "--user", "u1", "--limit", "1001"],
        ),
        "limit",
    );
    fails_with(
        tollgate(&s, &["credits", "revoke", "--grant", "nope"]),
        "not_found",
    );
    fails_with(tollgate(&s, &["credits", "show"]), "required");
}

#[tokio::test(flavor = "multi_thread")]
async fn credits_are_granted_shown_spent_and_revoked_through_the_cli() {
    let (s, c) = TestServer::with_plans(plans_with_pack()).await;
    c.advance_to_next_utc_hour(12).await;

    let out = succeeds(tollgate(
        &s,
        &[
            "credits",
            "grant",
            "--user",
            "u1",
            "--pack",
            "pack5",
            "--external-ref",
            "pay_1",
            "--note",
            "first purchase",
        ],
    ));
    assert!(
        out.starts_with("Granted 1 pack of pack5 to user u1."),
        "{out}"
    );
    assert!(out.contains("pack5") && out.contains("imgs"), "{out}");
    let again = succeeds(tollgate(
        &s,
        &[
            "credits",
            "grant",
            "--user",
            "u1",
            "--pack",
            "pack5",
            "--external-ref",
            "pay_1",
        ],
    ));
    assert!(again.starts_with("Already granted"), "{again}");
    // The same reference for another owner is a conflict.
    fails_with(
        tollgate(
            &s,
            &[
                "credits",
                "grant",
                "--user",
                "u2",
                "--pack",
                "pack5",
                "--external-ref",
                "pay_1",
            ],
        ),
        "idempotency_conflict",
    );

    let shown: Value = serde_json::from_str(&succeeds(tollgate(
        &s,
        &["credits", "show", "--user", "u1", "--json"],
    )))
    .expect("JSON");
    assert_eq!(shown["userId"], "u1");
    let grants = shown["grants"].as_array().expect("grants");
    assert_eq!(grants.len(), 1, "{shown}");
    let grant_id = grants[0]["grantId"].as_str().expect("grantId").to_string();
    assert!(grant_id.starts_with("grt_"));
    assert_eq!(grants[0]["available"], 5);
    assert_eq!(grants[0]["source"], "purchase");
    assert_eq!(grants[0]["note"], "first purchase");
    assert_eq!(
        shown["packs"],
        json!([{"packId": "pack5", "itemId": "imgs", "unit": "count", "available": 5, "held": 0}])
    );
    let table = succeeds(tollgate(&s, &["credits", "show", "--user", "u1"]));
    assert!(table.contains(&grant_id), "{table}");

    // 3 images: 2 from the plan, 1 from the pack.
    let r = c.reserve_q("u1", "image.render", 3).await;
    let rsv = Client::must_allow(&r);
    assert_eq!(
        r["credits"],
        json!({"held": 1, "grants": [{"grantId": grant_id, "quantity": 1}]})
    );
    let done = c.commit(&rsv, json!({})).await.ok();
    assert_eq!(done["creditsUsed"], 1, "{done}");

    let ledger: Value = serde_json::from_str(&succeeds(tollgate(
        &s,
        &["credits", "ledger", "--user", "u1", "--json"],
    )))
    .expect("JSON");
    let types: Vec<&str> = ledger["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["burn", "hold", "grant"], "newest first: {ledger}");
    assert_eq!(ledger["entries"][0]["reservationId"], rsv.as_str());
    assert_eq!(ledger["entries"][0]["remainingAfter"], 4);
    let lines = succeeds(tollgate(&s, &["credits", "ledger", "--user", "u1"]));
    assert_eq!(lines.lines().count(), 3, "{lines}");
    assert!(lines.lines().next().unwrap().contains("burn"), "{lines}");
    let page = succeeds(tollgate(
        &s,
        &["credits", "ledger", "--user", "u1", "--limit", "1"],
    ));
    assert!(page.contains("More: pass --cursor"), "{page}");

    let usage = c.usage("u1").await.ok();
    assert_eq!(usage["credits"][0]["available"], 4, "{usage}");

    let revoked = succeeds(tollgate(
        &s,
        &[
            "credits",
            "revoke",
            "--external-ref",
            "pay_1",
            "--reason",
            "chargeback",
        ],
    ));
    assert_eq!(revoked.trim(), format!("Revoked 4 units of {grant_id}."));
    let empty = succeeds(tollgate(&s, &["credits", "show", "--user", "u1"]));
    assert_eq!(empty, "No credits for user u1.\n");

    // An account's credits, shown for the account.
    let out = succeeds(tollgate(
        &s,
        &[
            "credits",
            "grant",
            "--account",
            "acme",
            "--pack",
            "pack5",
            "--quantity",
            "2",
            "--expires-at",
            "never",
            "--source",
            "manual",
        ],
    ));
    assert!(
        out.starts_with("Granted 2 packs of pack5 to account acme."),
        "{out}"
    );
    let shown = c.get("/v1/accounts/acme/credits").await.ok();
    assert_eq!(shown["accountId"], "acme");
    assert_eq!(shown["grants"][0]["quantity"], 10);
    assert_eq!(shown["grants"][0]["expiresAt"], Value::Null);
    assert_eq!(shown["grants"][0]["accountId"], "acme");
}
