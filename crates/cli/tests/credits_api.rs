//! API.md §8 credits (issue 11), black-box over real HTTP, call by call: revoke, credits
//! without a plan, concurrency and soft limits, the inputs of grants and of the ledger's pages,
//! account credits, track, and commits of more than reserved.
//!
//! Every test starts at noon UTC (test clock), so no calendar day turns over unless a test moves
//! the clock on purpose. The helpers live in `common/credits.rs`.

mod common;

use std::collections::HashSet;

use common::credits::*;
use common::*;

// ---------------------------------------------------------------------------------------------
// 1. Revoke

#[tokio::test(flavor = "multi_thread")]
async fn revoke_by_grant_and_by_reference_removes_what_is_not_held() {
    let bundle = json!({"id": "bundle", "items": [
        {"id": "imgs", "quantity": 10, "match": [{"event": "image.*"}]},
        {"id": "texts", "quantity": 20, "match": [{"event": "text.*"}]}
    ]});
    let (s, c) = TestServer::with_plans(no_plan_with_packs(json!([pack10(), bundle]))).await;
    let g_a = id_of(&grant_one(&c, "u1", "pack10", "order-a").await, "grantId");
    // A second later, so the two grants' createdAt (the spend order's last key) differ.
    c.advance_clock(1).await;
    let b = grant(
        &c,
        json!({"userId": "u1", "packId": "bundle", "externalRef": "order-b"}),
    )
    .await
    .ok();
    let bundle_grants = arr(&b["grants"]);
    assert_eq!(bundle_grants.len(), 2, "one grant per item: {b}");
    let mut b_ids: Vec<(String, i64)> = bundle_grants
        .iter()
        .map(|g| (id_of(g, "grantId"), int(g, "quantity")))
        .collect();
    b_ids.sort();
    assert_eq!(b_ids.iter().map(|(_, q)| *q).sum::<i64>(), 30, "{b}");

    // 3 of g_a held (oldest of equal priority and expiry goes first), then g_a is revoked.
    let (r, a) = reserve_images(&c, "u1", 3).await;
    assert_eq!(a["planId"], Value::Null, "{a}");
    assert_drawn(&a, &[(&g_a, 3)]);
    let rv = revoke(&c, json!({"grantId": g_a, "reason": "chargeback"}))
        .await
        .ok();
    assert_eq!(
        rv["revoked"],
        json!([{"grantId": g_a, "quantity": 7}]),
        "what remained unheld"
    );
    let cr = credits(&c, "u1").await;
    assert_eq!(
        balance(listed(&cr, &g_a).unwrap()),
        (3, 3, 0),
        "the hold survives: {cr}"
    );
    let entries = ledger(&c, "u1").await;
    assert_entry(&entries[0], "revoke", &g_a, 7, 3, 3);
    // The held units are still spent by their commit; nothing else comes from g_a.
    assert_eq!(int(&c.commit(&r, json!({})).await.ok(), "creditsUsed"), 3);
    let (_, a) = reserve_images(&c, "u1", 1).await;
    assert_drawn(&a, &[(&b_ids.iter().find(|(_, q)| *q == 10).unwrap().0, 1)]);

    // By reference: every grant made with it; the held unit stays.
    let rv = revoke(&c, json!({"externalRef": "order-b"})).await.ok();
    let mut got: Vec<(String, i64)> = arr(&rv["revoked"])
        .iter()
        .map(|x| (id_of(x, "grantId"), int(x, "quantity")))
        .collect();
    got.sort();
    let want: Vec<(String, i64)> = b_ids
        .iter()
        .map(|(id, q)| (id.clone(), if *q == 10 { 9 } else { 20 }))
        .collect();
    assert_eq!(got, want, "{rv}");
    let cr = credits(&c, "u1").await;
    assert_eq!(pack_balance(&cr["packs"], "bundle").0, 0, "{cr}");
    let entries = ledger(&c, "u1").await;
    replay(&entries);
    let revokes: Vec<&Value> = entries.iter().filter(|e| e["type"] == "revoke").collect();
    assert_eq!(revokes.len(), 3, "{}", Value::Array(entries.clone()));
    // Nothing left to revoke: 200 with 0.
    let rv = revoke(&c, json!({"grantId": g_a})).await.ok();
    assert_eq!(
        rv["revoked"],
        json!([{"grantId": g_a, "quantity": 0}]),
        "{rv}"
    );

    // Unknown: 404. Both or neither: 400.
    revoke(&c, json!({"grantId": "grt_unknown"}))
        .await
        .err(404, "not_found");
    revoke(&c, json!({"externalRef": "no-such-order"}))
        .await
        .err(404, "not_found");
    revoke(&c, json!({"grantId": g_a, "externalRef": "order-a"}))
        .await
        .err(400, "invalid_request");
    revoke(&c, json!({})).await.err(400, "invalid_request");
    revoke(&c, json!({"reason": "x"}))
        .await
        .err(400, "invalid_request");
    revoke(&c, json!({"grantId": g_a, "reason": "r".repeat(501)}))
        .await
        .invalid("reason");
    revoke(&c, json!({"grantId": g_a, "reason": "r".repeat(500)}))
        .await
        .ok();
    revoke(&c, json!({"grantId": g_a, "reasn": "x"}))
        .await
        .invalid("reasn");
    s.publishable()
        .post("/v1/credits/revoke", json!({"grantId": g_a}))
        .await
        .err(403, "requires_secret_key");
}

// ---------------------------------------------------------------------------------------------
// 2. No plan, concurrency and soft limits

#[tokio::test(flavor = "multi_thread")]
async fn without_a_plan_credits_alone_pay_and_without_credits_it_is_no_subscription() {
    let (_s, c) = TestServer::with_plans(no_plan_with_packs(json!([pack10()]))).await;
    let g = id_of(&grant_one(&c, "rich", "pack10", "o-rich").await, "grantId");

    let (r, a) = reserve_images(&c, "rich", 4).await;
    assert_eq!(a["planId"], Value::Null, "no plan: {a}");
    assert_eq!(a["limits"], json!([]), "{a}");
    assert_drawn(&a, &[(&g, 4)]);
    let done = c.commit(&r, json!({})).await.ok();
    assert_eq!(int(&done, "creditsUsed"), 4, "{done}");

    let d = c.reserve_q("poor", "image.render", 1).await;
    assert_eq!(
        (d["allowed"].clone(), d["reservationId"].clone()),
        (json!(false), Value::Null),
        "{d}"
    );
    assert_eq!(strs(&d["reasons"]), vec!["no_subscription"], "{d}");
    assert_eq!(held(&d), 0, "{d}");

    // More than is left, or an event no credit matches: no_subscription, nothing held.
    let d = c.reserve_q("rich", "image.render", 7).await;
    assert_eq!(strs(&d["reasons"]), vec!["no_subscription"], "{d}");
    assert_eq!(held(&d), 0, "{d}");
    let d = c.reserve_q("rich", "text.write", 1).await;
    assert_eq!(strs(&d["reasons"]), vec!["no_subscription"], "{d}");

    // check answers what a reserve would hold, and holds nothing.
    let chk = c
        .check(json!({"userId": "rich", "event": "image.render", "quantity": 6}))
        .await
        .ok();
    assert_eq!(chk["allowed"], true, "{chk}");
    assert_drawn(&chk, &[(&g, 6)]);
    let cr = credits(&c, "rich").await;
    assert_eq!(
        balance(listed(&cr, &g).unwrap()),
        (6, 0, 6),
        "check wrote nothing: {cr}"
    );
    assert_eq!(ledger(&c, "rich").await.len(), 3, "grant, hold, burn");
    let t = c.track_q("rich", "image.render", 2).await;
    assert_eq!(
        (t["recorded"].clone(), int(&t, "creditsUsed")),
        (json!(true), 2),
        "{t}"
    );
    assert_eq!(
        pack_balance(&credits(&c, "rich").await["packs"], "pack10"),
        (4, 0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrency_denial_is_never_funded_by_credits() {
    let (_s, c) = TestServer::with_plans(free_with_packs(
        json!([
            images_daily(3),
            {"id": "inflight", "kind": "concurrency", "quota": 1, "window": lifetime(),
             "match": [{"event": "image.*"}]}
        ]),
        json!([pack10()]),
    ))
    .await;
    c.advance_to_next_utc_hour(12).await;
    let g1 = id_of(&grant_one(&c, "u1", "pack10", "o-1").await, "grantId");
    let g2 = id_of(&grant_one(&c, "u2", "pack10", "o-2").await, "grantId");

    // u1: quota used; the concurrency limit admits, so credits pay for the image.
    c.track_q("u1", "image.render", 3).await;
    let (r, a) = reserve_images(&c, "u1", 1).await;
    assert_drawn(&a, &[(&g1, 1)]);
    assert_eq!(int(limit(&a, "inflight"), "reserved"), 1, "{a}");
    // A second one in flight is refused by concurrency; credits do not help.
    let d = c.reserve_q("u1", "image.render", 1).await;
    assert_eq!(d["allowed"], false, "{d}");
    assert!(
        strs(&d["reasons"]).contains(&"concurrency_limit_reached".to_string()),
        "{d}"
    );
    assert!(
        strs(&d["deniedBy"]).contains(&"inflight".to_string()),
        "{d}"
    );
    assert_eq!(held(&d), 0, "{d}");
    let cr = credits(&c, "u1").await;
    assert_eq!(
        balance(listed(&cr, &g1).unwrap()),
        (10, 1, 9),
        "only the first hold: {cr}"
    );
    c.commit(&r, json!({})).await.ok();

    // u2: quota left, one in flight: the second is refused and draws nothing.
    let (r2, a) = reserve_images(&c, "u2", 1).await;
    assert_drawn(&a, &[]);
    let d = c.reserve_q("u2", "image.render", 1).await;
    assert_denied(&d, "free", &["concurrency_limit_reached"], &["inflight"]);
    assert_eq!(held(&d), 0, "{d}");
    let chk = c
        .check(json!({"userId": "u2", "event": "image.render"}))
        .await
        .ok();
    assert_eq!(chk["allowed"], false, "{chk}");
    assert_eq!(held(&chk), 0, "{chk}");
    c.release(&r2, json!({})).await.ok();
    assert_eq!(
        balance(listed(&credits(&c, "u2").await, &g2).unwrap()),
        (10, 0, 10)
    );
    assert_eq!(types(&ledger(&c, "u2").await), ["grant"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_soft_limit_never_draws_credits_and_counts_only_the_plan_share() {
    let both = pack("pack10", "imgs", 10, None, &["image.*", "text.*"]);
    let (_s, c) = TestServer::with_plans(free_with_packs(
        json!([
            {"id": "images_hard", "quota": 5, "window": daily(), "match": [{"event": "image.*"}]},
            {"id": "images_soft", "quota": 2, "enforcement": "soft", "window": daily(),
             "match": [{"event": "image.*"}]},
            {"id": "texts_soft", "quota": 1, "enforcement": "soft", "window": daily(),
             "match": [{"event": "text.*"}]}
        ]),
        json!([both]),
    ))
    .await;
    c.advance_to_next_utc_hour(12).await;
    let g = id_of(&grant_one(&c, "u1", "pack10", "o-1").await, "grantId");

    // Past the soft quota but within the hard one: the plan pays, no credits.
    let (r, a) = reserve_images(&c, "u1", 5).await;
    assert_drawn(&a, &[]);
    assert_eq!(int(&c.commit(&r, json!({})).await.ok(), "creditsUsed"), 0);
    // Only a soft limit matches: the plan pays all of it.
    let a = c.reserve_q("u1", "text.write", 3).await;
    let rt = Client::must_allow(&a);
    assert_drawn(&a, &[]);
    assert_eq!(int(&c.commit(&rt, json!({})).await.ok(), "creditsUsed"), 0);
    assert_eq!(
        pack_balance(&credits(&c, "u1").await["packs"], "pack10"),
        (10, 0)
    );

    // The hard quota is used: credits pay, and the soft limit counts only the plan's share (0).
    let (r, a) = reserve_images(&c, "u1", 2).await;
    assert_drawn(&a, &[(&g, 2)]);
    assert_counts(limit(&a, "images_soft"), 2, 5, 0);
    let done = c.commit(&r, json!({})).await.ok();
    assert_eq!(int(&done, "creditsUsed"), 2, "{done}");
    assert_counts(&c.limit_state("u1", "images_soft").await, 2, 5, 0);
    assert_counts(&c.limit_state("u1", "images_hard").await, 5, 5, 0);
    assert_eq!(
        pack_balance(&credits(&c, "u1").await["packs"], "pack10"),
        (8, 0)
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Input errors and the ledger's pages

#[tokio::test(flavor = "multi_thread")]
async fn grant_and_ledger_inputs_are_checked_at_their_limits() {
    let huge = pack("huge", "units", 1 << 50, None, &["image.*"]);
    let (s, c) = TestServer::with_plans(free_with_packs(
        json!([images_daily(10)]),
        json!([pack10(), huge]),
    ))
    .await;
    let ok = |edit: fn(&mut Value)| {
        let mut body = json!({"userId": "u1", "packId": "pack10"});
        edit(&mut body);
        body
    };

    grant(&c, ok(|b| b["packId"] = json!("nope")))
        .await
        .err(404, "not_found");
    grant(&c, ok(|b| b["quantity"] = json!(0)))
        .await
        .invalid("quantity");
    grant(&c, ok(|b| b["quantity"] = json!(10_001)))
        .await
        .invalid("quantity");
    let a = grant(&c, ok(|b| b["quantity"] = json!(10_000))).await.ok();
    assert_eq!(
        int(&a["grants"][0], "quantity"),
        100_000,
        "item quantity × packs: {a}"
    );
    // item.quantity × packs past 2^53 − 1.
    grant(&c, json!({"userId": "u1", "packId": "huge", "quantity": 8}))
        .await
        .invalid("quantity");
    let a = grant(&c, json!({"userId": "u1", "packId": "huge", "quantity": 7}))
        .await
        .ok();
    assert_eq!(int(&a["grants"][0], "quantity"), 7 << 50, "{a}");

    grant(&c, ok(|b| b["externalRef"] = json!("r".repeat(257))))
        .await
        .invalid("externalRef");
    grant(&c, ok(|b| b["externalRef"] = json!("")))
        .await
        .invalid("externalRef");
    grant(&c, ok(|b| b["externalRef"] = json!("a\nb")))
        .await
        .invalid("externalRef");
    grant(&c, ok(|b| b["externalRef"] = json!("r".repeat(256))))
        .await
        .ok();
    grant(&c, ok(|b| b["quantiy"] = json!(2)))
        .await
        .invalid("quantiy");
    grant(&c, ok(|b| b["expiresAt"] = json!("2020-01-01T00:00:00Z")))
        .await
        .invalid("expiresAt");
    grant(&c, ok(|b| b["expiresAt"] = json!("tomorrow")))
        .await
        .invalid("expiresAt");
    let a = grant(&c, ok(|b| b["expiresAt"] = Value::Null)).await.ok();
    assert_eq!(a["grants"][0]["expiresAt"], Value::Null, "null: never: {a}");
    grant(&c, ok(|b| b["source"] = json!("rollover")))
        .await
        .invalid("source");
    grant(&c, ok(|b| b["source"] = json!("gift")))
        .await
        .invalid("source");
    for source in ["purchase", "grant", "refund", "manual"] {
        let a = grant(
            &c,
            json!({"userId": "u1", "packId": "pack10", "source": source}),
        )
        .await
        .ok();
        assert_eq!(a["grants"][0]["source"], source, "{a}");
    }
    grant(&c, ok(|b| b["note"] = json!("n".repeat(501))))
        .await
        .invalid("note");
    grant(&c, ok(|b| b["note"] = json!("n".repeat(500))))
        .await
        .ok();
    grant(&c, ok(|b| b["userId"] = json!("u".repeat(257))))
        .await
        .invalid("userId");
    grant(&c, json!({"packId": "pack10"}))
        .await
        .err(400, "invalid_request");
    grant(&c, ok(|b| b["accountId"] = json!("acme")))
        .await
        .err(400, "invalid_request");
    grant(&c, json!({"userId": "u1"}))
        .await
        .err(400, "invalid_request");

    // The same reference for another owner or another pack is a conflict.
    grant(
        &c,
        json!({"userId": "u1", "packId": "pack10", "externalRef": "order-x"}),
    )
    .await
    .ok();
    grant(
        &c,
        json!({"userId": "u2", "packId": "pack10", "externalRef": "order-x"}),
    )
    .await
    .err(409, "idempotency_conflict");
    grant(
        &c,
        json!({"userId": "u1", "packId": "huge", "externalRef": "order-x"}),
    )
    .await
    .err(409, "idempotency_conflict");
    s.publishable()
        .post(
            "/v1/credits/grants",
            json!({"userId": "u1", "packId": "pack10"}),
        )
        .await
        .err(403, "requires_secret_key");
    s.publishable()
        .get("/v1/users/u1/credits/ledger")
        .await
        .err(403, "requires_secret_key");

    // The ledger's limit and cursor.
    let base = "/v1/users/u1/credits/ledger";
    c.get(&format!("{base}?limit=0")).await.invalid("limit");
    c.get(&format!("{base}?limit=1001")).await.invalid("limit");
    c.get(&format!("{base}?limit=1000")).await.ok();
    c.get(&format!("{base}?cursor=nonsense"))
        .await
        .invalid("cursor");

    // Pages of 2 walk every entry exactly once, newest first.
    grant_one(&c, "u9", "pack10", "o-9").await;
    c.track_q("u9", "image.render", 10).await;
    for q in [3, 2] {
        let (r, _) = reserve_images(&c, "u9", q).await;
        c.commit(&r, json!({"quantity": 1})).await.ok();
    }
    let all = ledger(&c, "u9").await;
    assert_eq!(
        types(&all),
        ["refund", "burn", "hold", "refund", "burn", "hold", "grant"]
    );
    let full = c.get("/v1/users/u9/credits/ledger").await.ok();
    assert_eq!(
        arr(&full["entries"]),
        all,
        "default limit 100 holds them all"
    );
    let mut seen: Vec<Value> = Vec::new();
    let mut path = "/v1/users/u9/credits/ledger?limit=2".to_string();
    loop {
        let page = c.get(&path).await.ok();
        let entries = arr(&page["entries"]);
        assert!(entries.len() <= 2, "{page}");
        seen.extend(entries);
        match page["nextCursor"].as_str() {
            Some(cursor) => path = format!("/v1/users/u9/credits/ledger?limit=2&cursor={cursor}"),
            None => break,
        }
        assert!(seen.len() <= all.len(), "pages run past the ledger");
    }
    assert_eq!(seen, all, "every entry once, newest first");
    let at: Vec<i64> = all.iter().map(|e| ts_ms(&e["at"])).collect();
    assert!(
        at.windows(2).all(|w| w[0] >= w[1]),
        "`at` never grows down the ledger: {at:?}"
    );
    assert_eq!(
        all.iter()
            .map(|e| id_of(e, "entryId"))
            .collect::<HashSet<_>>()
            .len(),
        all.len(),
        "entry ids are unique"
    );
    // A user with no credits has an empty ledger and empty balances.
    let none = c.get("/v1/users/nobody/credits/ledger").await.ok();
    assert_eq!(
        (none["entries"].clone(), none["nextCursor"].clone()),
        (json!([]), Value::Null)
    );
    let cr = credits(&c, "nobody").await;
    assert_eq!(
        (cr["grants"].clone(), cr["packs"].clone()),
        (json!([]), json!([])),
        "{cr}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Account credits

#[tokio::test(flavor = "multi_thread")]
async fn an_accounts_credits_are_spent_by_its_members() {
    let (_s, c) =
        TestServer::with_plans(free_with_packs(json!([images_daily(1)]), json!([pack10()]))).await;
    c.advance_to_next_utc_hour(12).await;
    c.put("/v1/accounts/acme/members/u1", json!({})).await.ok();
    let a = grant(
        &c,
        json!({"accountId": "acme", "packId": "pack10", "externalRef": "acme-1"}),
    )
    .await
    .ok();
    let g = &arr(&a["grants"])[0];
    assert_grant_shape(g);
    assert_eq!(g["accountId"], "acme", "{g}");
    assert!(
        g.get("userId").is_none_or(Value::is_null),
        "an account's grant: {g}"
    );
    let g = id_of(g, "grantId");

    // A member spends them once the plan's quota is used; another user cannot.
    c.track_q("u1", "image.render", 1).await;
    let (r, a) = reserve_images(&c, "u1", 3).await;
    assert_drawn(&a, &[(&g, 3)]);
    assert_eq!(int(&c.commit(&r, json!({})).await.ok(), "creditsUsed"), 3);
    c.track_q("u2", "image.render", 1).await;
    let d = c.reserve_q("u2", "image.render", 1).await;
    assert_denied(&d, "free", &["limit_reached"], &["images_daily"]);
    assert_eq!(held(&d), 0, "{d}");

    let ac = account_credits(&c, "acme").await;
    assert_eq!(grant_ids(&ac), vec![g.clone()]);
    assert_eq!(balance(listed(&ac, &g).unwrap()), (7, 0, 7), "{ac}");
    assert_eq!(pack_balance(&ac["packs"], "pack10"), (7, 0), "{ac}");
    // The member sees the account's credits in their own balance and usage.
    let cr = credits(&c, "u1").await;
    assert_eq!(pack_balance(&cr["packs"], "pack10"), (7, 0), "{cr}");
    assert!(listed(&cr, &g).is_some(), "{cr}");
    let u = c.usage("u1").await.ok();
    assert_eq!(pack_balance(&u["credits"], "pack10"), (7, 0), "{u}");
    assert_eq!(
        pack_balance(&credits(&c, "u2").await["packs"], "pack10"),
        (0, 0)
    );

    // The account's ledger has every entry; the member's has those of their requests.
    let entries = ledger_at(&c, "/v1/accounts/acme/credits/ledger").await;
    assert_eq!(types(&entries), ["burn", "hold", "grant"]);
    assert_entry(&entries[0], "burn", &g, 3, 7, 0);
    assert_entry(&entries[1], "hold", &g, 3, 10, 3);
    assert_entry(&entries[2], "grant", &g, 10, 10, 0);
    assert_eq!(entries[1]["userId"], "u1", "whose request: {}", entries[1]);
    assert_eq!(entries[1]["reservationId"], r.as_str());
    assert_eq!(replay(&entries)[&g], (7, 0));
    let mine = ledger(&c, "u1").await;
    assert_eq!(
        types(&mine),
        ["burn", "hold"],
        "{}",
        Value::Array(mine.clone())
    );
    assert_eq!(ledger(&c, "u2").await, Vec::<Value>::new());

    // A member's own grant expiring sooner goes first, then the account's.
    let now = c.now().await;
    let own = grant(
        &c,
        json!({"userId": "u1", "packId": "pack10", "expiresAt": fmt_ts(now + DAY)}),
    )
    .await
    .ok();
    let own = id_of(&own["grants"][0], "grantId");
    let (_, a) = reserve_images(&c, "u1", 12).await;
    assert_drawn(&a, &[(&own, 10), (&g, 2)]);
    assert_eq!(
        pack_balance(&account_credits(&c, "acme").await["packs"], "pack10"),
        (5, 2)
    );
    c.get("/v1/accounts/acme/credits/ledger?limit=0")
        .await
        .invalid("limit");
}

// ---------------------------------------------------------------------------------------------
// 5. Track (and commits of more than reserved)

#[tokio::test(flavor = "multi_thread")]
async fn track_draws_credits_after_the_plan_and_enforce_denies_what_they_do_not_cover() {
    let (_s, c) =
        TestServer::with_plans(free_with_packs(json!([images_daily(5)]), json!([pack10()]))).await;
    c.advance_to_next_utc_hour(12).await;
    let g = id_of(&grant_one(&c, "u1", "pack10", "o-1").await, "grantId");

    let t = c.track_q("u1", "image.render", 4).await;
    assert_eq!(int(&t, "creditsUsed"), 0, "{t}");
    // 3 with 1 unit of plan left: 1 from the plan, 2 from credits.
    let t = c.track_q("u1", "image.render", 3).await;
    assert_eq!(
        (t["recorded"].clone(), t["allowed"].clone()),
        (json!(true), json!(true)),
        "{t}"
    );
    assert_eq!((int(&t, "creditsUsed"), int(&t, "overage")), (2, 0), "{t}");
    assert_counts(limit(&t, "images_daily"), 5, 5, 0);
    let tracked = id_of(&t, "eventId");
    let entries = ledger(&c, "u1").await;
    assert_eq!(types(&entries), ["burn", "grant"]);
    assert_entry(&entries[0], "burn", &g, 2, 8, 0);
    assert_eq!(
        entries[0]["eventId"],
        tracked.as_str(),
        "a track's burn names its event"
    );
    assert_eq!(entries[0]["reservationId"], Value::Null);

    // Enforced and not covered by plan + credits: denied, nothing recorded.
    let d = c
        .track(json!({"userId": "u1", "event": "image.render", "quantity": 9, "enforce": true}))
        .await
        .ok();
    assert_eq!(
        (
            d["allowed"].clone(),
            d["recorded"].clone(),
            d["eventId"].clone()
        ),
        (json!(false), json!(false), Value::Null),
        "{d}"
    );
    assert_eq!(strs(&d["reasons"]), vec!["limit_reached"], "{d}");
    assert_eq!(ledger(&c, "u1").await.len(), 2, "nothing written");
    assert_eq!(
        pack_balance(&credits(&c, "u1").await["packs"], "pack10"),
        (8, 0)
    );
    let t = c
        .track(json!({"userId": "u1", "event": "image.render", "quantity": 8, "enforce": true}))
        .await
        .ok();
    assert_eq!(
        (
            t["allowed"].clone(),
            int(&t, "creditsUsed"),
            int(&t, "overage")
        ),
        (json!(true), 8, 0),
        "{t}"
    );
    // Not enforced with nothing left: recorded as overage, no credits.
    let t = c.track_q("u1", "image.render", 3).await;
    assert_eq!((int(&t, "creditsUsed"), int(&t, "overage")), (0, 3), "{t}");
    assert!(listed(&credits(&c, "u1").await, &g).is_none());

    let events = c.get("/v1/events?userId=u1&status=tracked").await.ok();
    // Events of the same millisecond may list in either order: compare them as a set.
    let mut got: Vec<(i64, i64)> = arr(&events["events"])
        .iter()
        .map(|e| (int(e, "quantity"), int(e, "creditsUsed")))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [(3, 0), (3, 2), (4, 0), (8, 8)],
        "usage events carry creditsUsed: {events}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_of_more_than_reserved_takes_plan_room_then_credits_then_overage() {
    let (_s, c) =
        TestServer::with_plans(free_with_packs(json!([images_daily(5)]), json!([pack10()]))).await;
    c.advance_to_next_utc_hour(12).await;
    let g = id_of(&grant_one(&c, "u2", "pack10", "o-2").await, "grantId");
    c.track_q("u2", "image.render", 3).await;

    // Held 1 from the plan, commit 5: 1 more fits the plan, 3 come from credits.
    let (r, a) = reserve_images(&c, "u2", 1).await;
    assert_drawn(&a, &[]);
    let done = c.commit(&r, json!({"quantity": 5})).await.ok();
    assert_eq!(
        (int(&done, "creditsUsed"), int(&done, "overage")),
        (3, 0),
        "{done}"
    );
    assert_counts(limit(&done, "images_daily"), 5, 5, 0);
    let e1 = id_of(&done, "eventId");

    // Held 1 from credits, commit 10: 1 held + 6 more from credits, 3 overage.
    let (r, a) = reserve_images(&c, "u2", 1).await;
    assert_drawn(&a, &[(&g, 1)]);
    let done = c.commit(&r, json!({"quantity": 10})).await.ok();
    assert_eq!(
        (int(&done, "creditsUsed"), int(&done, "overage")),
        (7, 3),
        "{done}"
    );
    assert_counts(limit(&done, "images_daily"), 5, 8, 0);
    let e2 = id_of(&done, "eventId");
    assert!(
        listed(&credits(&c, "u2").await, &g).is_none(),
        "all 10 spent"
    );

    let entries = ledger(&c, "u2").await;
    assert_eq!(replay(&entries)[&g], (0, 0));
    let burned_for = |rsv: &str| -> i64 {
        entries
            .iter()
            .filter(|e| e["type"] == "burn" && e["reservationId"] == rsv)
            .map(|e| int(e, "quantity"))
            .sum()
    };
    assert_eq!(burned_for(&r), 7, "{}", Value::Array(entries.clone()));
    assert_eq!(entries.iter().filter(|e| e["type"] == "refund").count(), 0);

    let events = c.get("/v1/events?userId=u2&status=committed").await.ok();
    let mut got: Vec<(String, i64)> = arr(&events["events"])
        .iter()
        .map(|e| (id_of(e, "eventId"), int(e, "creditsUsed")))
        .collect();
    got.sort();
    let mut want = vec![(e2, 7), (e1, 3)];
    want.sort();
    assert_eq!(got, want, "{events}");
}
