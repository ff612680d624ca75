//! API.md §5: the plan document — versions, validation, reads, visibility, size limits.

mod common;

use common::*;

fn doc() -> Value {
    json!({
        "defaultPlan": "free",
        "unmatchedEvents": "deny",
        "plans": [
            { "id": "free", "name": "Free", "description": "Try it", "public": true,
              "price": {"amount": 0, "currency": "usd", "interval": "month"},
              "features": ["10 images a day"],
              "billing": {"interval": "month", "intervalCount": 1},
              "stripePriceIds": [], "polarProductIds": [],
              "limits": [
                { "id": "images_daily", "label": "Images per day", "unit": "count", "quota": 10,
                  "kind": "consumable", "scope": "user", "enforcement": "hard", "multiplier": 1,
                  "window": {"type": "calendar", "period": "day", "timezone": "UTC"},
                  "match": [{"event": "image.*"}] },
                { "id": "premium_images", "quota": 0, "window": {"type": "subscription"},
                  "match": [{"event": "image.*", "metadata": {"model": ["flux-pro", "dall-e-3"]}}] }
              ] },
            { "id": "pro", "name": "Pro", "price": {"amount": 2000, "currency": "usd", "interval": "month"},
              "stripePriceIds": ["price_pro_monthly"], "polarProductIds": ["polar_prod_pro"],
              "limits": [
                { "id": "images_daily", "quota": 500, "window": {"type": "calendar", "period": "day", "timezone": "UTC"},
                  "match": [{"event": "image.*"}] } ] },
            { "id": "internal", "name": "Internal", "public": false,
              "stripePriceIds": ["price_internal"], "limits": [] }
        ],
        "creditPacks": []
    })
}

/// Plan ids of a `GET /v1/plans` answer (the document's `plans`, or a bare list).
fn plan_ids(v: &Value) -> Vec<String> {
    let list = match v.get("plans").and_then(Value::as_array) {
        Some(a) => a.clone(),
        None => rows(v),
    };
    let mut ids: Vec<String> = list
        .iter()
        .map(|p| p["id"].as_str().expect("plan id").to_string())
        .collect();
    ids.sort();
    ids
}

/// The plan object of a `GET /v1/plans/{id}` answer.
fn plan_of(v: &Value) -> &Value {
    if v.get("id").is_some() {
        v
    } else {
        v.get("plan").unwrap_or_else(|| panic!("no plan in {v}"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn put_answers_the_version_and_the_document() {
    let s = TestServer::start().await;
    let c = s.client();
    let a = c.put_plans(doc()).await.ok();
    assert_eq!(int(&a, "version"), 1, "{a}");
    assert_eq!(a["defaultPlan"], "free");
    assert_eq!(plan_ids(&a), vec!["free", "internal", "pro"]);

    let mut d2 = doc();
    d2["plans"][1]["limits"][0]["quota"] = json!(600);
    let a = c.put_plans(d2.clone()).await.ok();
    assert_eq!(int(&a, "version"), 2);
    assert_eq!(a["plans"][1]["limits"][0]["quota"], 600);
    assert_eq!(a["changed"], true, "{a}");
    let a = c.put_plans(d2).await.ok();
    assert_eq!(
        int(&a, "version"),
        2,
        "the same document again is no new version"
    );
    assert_eq!(a["changed"], false, "{a}");

    let g = c.get_plans().await.ok();
    assert_eq!(plan_ids(&g), vec!["free", "internal", "pro"]);
    if let Some(v) = g.get("version") {
        assert_eq!(v, 2, "{g}");
    }
    // The new quota applies at once.
    let pro = c.get_plan("pro").await.ok();
    assert_eq!(plan_of(&pro)["limits"][0]["quota"], 600, "{pro}");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_documents_are_rejected_with_a_path_and_change_nothing() {
    let s = TestServer::start().await;
    let c = s.client();
    assert_eq!(int(&c.put_plans(doc()).await.ok(), "version"), 1);

    type Edit = fn(&mut Value);
    let cases: Vec<(&str, &str, Edit)> = vec![
        ("unknown limit field", "quotaa", |d| {
            d["plans"][0]["limits"][0]["quotaa"] = json!(5)
        }),
        ("unknown top-level field", "defaultPlann", |d| {
            d["defaultPlann"] = json!("free")
        }),
        ("unknown plan field", "nmae", |d| {
            d["plans"][1]["nmae"] = json!("Pro")
        }),
        ("duplicate limit id", "limits", |d| {
            d["plans"][0]["limits"][1]["id"] = json!("images_daily")
        }),
        ("bad window type", "window", |d| {
            d["plans"][0]["limits"][0]["window"] = json!({"type": "fortnightly"})
        }),
        ("bad timezone", "window", |d| {
            d["plans"][0]["limits"][0]["window"]["timezone"] = json!("Mars/Olympus")
        }),
        ("bad calendar period", "window", |d| {
            d["plans"][0]["limits"][0]["window"]["period"] = json!("decade")
        }),
        ("negative quota", "quota", |d| {
            d["plans"][0]["limits"][0]["quota"] = json!(-1)
        }),
        ("float quota", "quota", |d| {
            d["plans"][0]["limits"][0]["quota"] = json!(1.5)
        }),
        ("string quota", "quota", |d| {
            d["plans"][0]["limits"][0]["quota"] = json!("10")
        }),
        ("bad kind", "kind", |d| {
            d["plans"][0]["limits"][0]["kind"] = json!("bogus")
        }),
        ("bad enforcement", "enforcement", |d| {
            d["plans"][0]["limits"][0]["enforcement"] = json!("maybe")
        }),
        ("bad unmatchedEvents", "unmatchedEvents", |d| {
            d["unmatchedEvents"] = json!("sometimes")
        }),
        ("default plan not in plans", "defaultPlan", |d| {
            d["defaultPlan"] = json!("gold")
        }),
    ];
    for (what, path_part, edit) in cases {
        let mut bad = doc();
        edit(&mut bad);
        let r = c.put_plans(bad).await;
        assert_eq!(
            r.status, 400,
            "{what}: expected 400, got {}: {}",
            r.status, r.text
        );
        r.invalid_path_containing(path_part);

        let g = c.get_plans().await.ok();
        assert_eq!(
            plan_ids(&g),
            vec!["free", "internal", "pro"],
            "{what} changed the plans"
        );
        if let Some(v) = g.get("version") {
            assert_eq!(v, 1, "{what} changed the version: {g}");
        }
        let pro = c.get_plan("free").await.ok();
        assert_eq!(plan_of(&pro)["limits"][0]["quota"], 10, "{what}: {pro}");
    }
    // The next good PUT is version 2: the failures created none.
    let mut changed = doc();
    changed["plans"][0]["limits"][0]["quota"] = json!(11);
    assert_eq!(int(&c.put_plans(changed).await.ok(), "version"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn get_plan_by_id() {
    let s = TestServer::start().await;
    let c = s.client();
    c.put_plans(doc()).await.ok();
    let p = c.get_plan("pro").await.ok();
    let p = plan_of(&p);
    assert_eq!(p["id"], "pro");
    assert_eq!(p["name"], "Pro");
    assert_eq!(p["limits"][0]["id"], "images_daily");
    assert_eq!(p["limits"][0]["quota"], 500);
    // The secret key sees the biller ids.
    assert_eq!(p["stripePriceIds"], json!(["price_pro_monthly"]));
    // Private plans are visible to the secret key.
    c.get_plan("internal").await.ok();
    c.get_plan("gold").await.err(404, "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn publishable_key_sees_public_plans_without_biller_ids() {
    let s = TestServer::start().await;
    s.client().put_plans(doc()).await.ok();
    let p = s.publishable();
    let g = p.get_plans().await.ok();
    assert_eq!(
        plan_ids(&g),
        vec!["free", "pro"],
        "private plans are hidden: {g}"
    );
    for key in ["stripePriceIds", "polarProductIds"] {
        assert!(
            !has_key_anywhere(&g, key),
            "{key} leaked to a publishable key: {g}"
        );
    }
    let r = p.get_plans().await;
    assert!(
        !r.text.contains("price_pro_monthly") && !r.text.contains("polar_prod_pro"),
        "{}",
        r.text
    );

    let pro = p.get_plan("pro").await.ok();
    assert_eq!(plan_of(&pro)["id"], "pro");
    assert!(!has_key_anywhere(&pro, "stripePriceIds"), "{pro}");
    assert!(!has_key_anywhere(&pro, "polarProductIds"), "{pro}");
    p.get_plan("internal").await.err(404, "not_found");
    // Writing plans needs the secret key.
    p.put_plans(doc()).await.err(403, "requires_secret_key");
}

fn plan_n(i: usize) -> Value {
    json!({"id": format!("p{i}"), "limits": [
        {"id": "images", "quota": i, "window": {"type": "lifetime"}, "match": [{"event": "image.*"}]}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn at_most_200_plans() {
    let s = TestServer::start().await;
    let c = s.client();
    let plans: Vec<Value> = (0..200).map(plan_n).collect();
    let a = c.put_plans(json!({"plans": plans})).await.ok();
    assert_eq!(int(&a, "version"), 1);
    let plans: Vec<Value> = (0..201).map(plan_n).collect();
    c.put_plans(json!({"plans": plans}))
        .await
        .invalid_path_containing("plans");
    let g = c.get_plans().await.ok();
    assert_eq!(plan_ids(&g).len(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn at_most_100_limits_a_plan() {
    let s = TestServer::start().await;
    let c = s.client();
    let limits = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| {
                json!({"id": format!("l{i}"), "quota": 1, "window": {"type": "lifetime"},
                            "match": [{"event": format!("e{i}")}]})
            })
            .collect()
    };
    let a = c
        .put_plans(json!({"plans": [{"id": "big", "limits": limits(100)}]}))
        .await
        .ok();
    assert_eq!(int(&a, "version"), 1);
    assert_eq!(a["plans"][0]["limits"].as_array().map(Vec::len), Some(100));
    c.put_plans(json!({"plans": [{"id": "big", "limits": limits(101)}]}))
        .await
        .invalid_path_containing("limits");
    let g = c.get_plan("big").await.ok();
    assert_eq!(plan_of(&g)["limits"].as_array().map(Vec::len), Some(100));
}

/// A document whose JSON body is exactly `len` bytes (padding the plan description).
fn doc_of_len(len: usize) -> Vec<u8> {
    let mut d =
        json!({"defaultPlan": "free", "plans": [{"id": "free", "description": "", "limits": []}]});
    let base = serde_json::to_vec(&d).unwrap().len();
    d["plans"][0]["description"] = json!("d".repeat(len - base));
    let bytes = serde_json::to_vec(&d).unwrap();
    assert_eq!(bytes.len(), len);
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_document_at_most_1_mib() {
    let s = TestServer::start().await;
    let c = s.client();
    let key = Some(s.keys.test_secret.as_str());
    // Just inside (a little room for the defaults the server fills in).
    let r = c
        .send(
            Method::PUT,
            "/v1/plans",
            key,
            Some("application/json"),
            Some(doc_of_len(MIB - 4 * KIB)),
        )
        .await;
    assert_eq!(int(&r.clone().ok(), "version"), 1);
    // Just past: the body limit answers first.
    let r = c
        .send(
            Method::PUT,
            "/v1/plans",
            key,
            Some("application/json"),
            Some(doc_of_len(MIB + 1)),
        )
        .await;
    r.err(413, "payload_too_large");
    let g = c.get_plans().await.ok();
    if let Some(v) = g.get("version") {
        assert_eq!(v, 1, "{}", &g.to_string()[..200.min(g.to_string().len())]);
    }
    assert_eq!(int(&c.put_plans(doc()).await.ok(), "version"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_plan_applies_to_anon_user_ids() {
    let s = TestServer::start().await;
    let c = s.client();
    let mut d = doc();
    d["anonymousPlan"] = json!("internal");
    c.put_plans(d).await.ok();
    let a = c
        .check(json!({"userId": "anon_123", "event": "image.render"}))
        .await
        .ok();
    assert_eq!(a["planId"], "internal", "{a}");
    let a = c
        .check(json!({"userId": "u1", "event": "image.render"}))
        .await
        .ok();
    assert_eq!(a["planId"], "free", "{a}");
    // Without anonymousPlan, anonymous users get the default plan.
    c.put_plans(doc()).await.ok();
    let a = c
        .check(json!({"userId": "anon_123", "event": "image.render"}))
        .await
        .ok();
    assert_eq!(a["planId"], "free", "{a}");
}
