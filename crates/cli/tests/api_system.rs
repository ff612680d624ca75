//! API.md §7: environments, projects and keys, the admin token, system routes, and the process
//! lifecycle (graceful shutdown, restart on the same data dir).

mod common;

use common::*;

fn images_doc(quota: i64, extra_plan: &str) -> Value {
    json!({"defaultPlan": "free", "plans": [
        {"id": "free", "limits": [{"id": "images_daily", "quota": quota, "window": daily(), "match": [{"event": "image.*"}]}]},
        {"id": extra_plan, "limits": []}
    ]})
}

fn plan_ids(v: &Value) -> Vec<String> {
    let list = v
        .get("plans")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_else(|| rows(v));
    let mut ids: Vec<String> = list
        .iter()
        .map(|p| p["id"].as_str().unwrap_or("?").to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn live_and_test_environments_are_isolated() {
    let s = TestServer::start().await;
    let (test, live) = (s.client(), s.live());
    assert_eq!(
        int(
            &test.put_plans(images_doc(10, "test_only")).await.ok(),
            "version"
        ),
        1
    );
    assert_eq!(
        int(
            &live.put_plans(images_doc(5, "live_only")).await.ok(),
            "version"
        ),
        1,
        "versions are per environment"
    );
    assert_eq!(
        plan_ids(&test.get_plans().await.ok()),
        vec!["free", "test_only"]
    );
    assert_eq!(
        plan_ids(&live.get_plans().await.ok()),
        vec!["free", "live_only"]
    );

    test.track_q("u1", "image.render", 3).await;
    let r = Client::must_allow(&test.reserve_q("u1", "image.render", 1).await);
    assert_counts(&test.limit_state("u1", "images_daily").await, 10, 3, 1);
    assert_counts(&live.limit_state("u1", "images_daily").await, 5, 0, 0);
    live.track_q("u1", "image.render", 2).await;
    assert_counts(&test.limit_state("u1", "images_daily").await, 10, 3, 1);
    assert_counts(&live.limit_state("u1", "images_daily").await, 5, 2, 0);

    // Reservations and subscriptions of one environment are unknown in the other.
    live.get_reservation(&r).await.err(404, "not_found");
    live.commit(&r, json!({})).await.err(404, "not_found");
    test.subscribe(json!({"userId": "u1", "planId": "test_only"}))
        .await
        .ok();
    live.get_subscription("u1").await.err(404, "not_found");
    live.subscribe(json!({"userId": "u1", "planId": "test_only"}))
        .await
        .err(404, "not_found");
    assert_eq!(test.get_reservation(&r).await.ok()["status"], "pending");

    // Publishable keys are bound to their environment too.
    let pl = s.client_with(&s.keys.live_publishable);
    assert_eq!(
        plan_ids(&pl.get_plans().await.ok()),
        vec!["free", "live_only"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_creates_projects_and_keys_shown_once() {
    let s = TestServer::start().await;
    let admin = s.admin();
    let p = admin
        .post("/admin/v1/projects", json!({"name": "Second app"}))
        .await
        .ok();
    let pid = p["projectId"].as_str().expect("projectId").to_string();
    assert!(pid.starts_with("prj_"), "{p}");
    assert_ne!(pid, s.keys.project_id);
    assert_eq!(p["name"], "Second app");
    parse_ts_ms(p["createdAt"].as_str().expect("createdAt"));

    let list = rows(&admin.get("/admin/v1/projects").await.ok());
    let ids: Vec<&str> = list
        .iter()
        .filter_map(|r| r["projectId"].as_str())
        .collect();
    assert!(
        ids.contains(&pid.as_str()) && ids.contains(&s.keys.project_id.as_str()),
        "{list:?}"
    );

    let mut made = Vec::new();
    for (env, kind, prefix) in [
        ("test", "secret", "tg_sk_test_"),
        ("test", "publishable", "tg_pk_test_"),
        ("live", "secret", "tg_sk_live_"),
        ("live", "publishable", "tg_pk_live_"),
    ] {
        let k = admin
            .post(
                &format!("/admin/v1/projects/{pid}/keys"),
                json!({"environment": env, "kind": kind, "name": "ci"}),
            )
            .await
            .ok();
        let key = k["key"].as_str().expect("key").to_string();
        let key_prefix = k["prefix"].as_str().expect("prefix");
        assert!(
            key.starts_with(prefix),
            "{env}/{kind} key must start with {prefix}: {k}"
        );
        assert!(
            key.starts_with(key_prefix),
            "prefix {key_prefix:?} must be the start of the key"
        );
        assert!(
            key_prefix.len() < key.len(),
            "the prefix must not be the whole key"
        );
        assert!(
            k["keyId"].as_str().expect("keyId").starts_with("key_"),
            "{k}"
        );
        made.push((k["keyId"].as_str().unwrap().to_string(), key));
    }

    // The new project is its own world: its first plan version is 1.
    let second = s.client_with(&made[0].1);
    assert_eq!(
        int(
            &second.put_plans(images_doc(7, "second_only")).await.ok(),
            "version"
        ),
        1
    );
    assert!(!plan_ids(&s.client().get_plans().await.ok()).contains(&"second_only".to_string()));
    s.client()
        .put_plans(images_doc(10, "first_only"))
        .await
        .ok();
    assert_eq!(
        plan_ids(&second.get_plans().await.ok()),
        vec!["free", "second_only"]
    );

    // Listing keys never shows a secret.
    let listed = admin.get(&format!("/admin/v1/projects/{pid}/keys")).await;
    let text = listed.text.clone();
    let keys = rows(&listed.ok());
    for (key_id, key) in &made {
        assert!(
            keys.iter().any(|k| k["keyId"] == key_id.as_str()),
            "{key_id} missing from {keys:?}"
        );
        assert!(
            !text.contains(key.as_str()),
            "a key is shown once, never listed: {text}"
        );
    }

    // Revoke: the key answers 401 from then on.
    admin
        .delete(&format!("/admin/v1/keys/{}", made[0].0))
        .await
        .ok();
    second.get_plans().await.err(401, "invalid_key");
    s.client_with(&made[2].1).get_plans().await.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_routes_require_the_admin_token() {
    let s = TestServer::start().await;
    let c = s.client();
    c.request(Method::GET, "/admin/v1/projects", None, None)
        .await
        .err(401, "invalid_key");
    c.request(Method::GET, "/admin/v1/projects", Some("garbage"), None)
        .await
        .err(401, "invalid_key");
    c.request(
        Method::POST,
        "/admin/v1/projects",
        None,
        Some(json!({"name": "x"})),
    )
    .await
    .err(401, "invalid_key");
    c.request(
        Method::POST,
        &format!("/admin/v1/projects/{}/keys", s.keys.project_id),
        None,
        Some(json!({"environment": "test", "kind": "secret", "name": "x"})),
    )
    .await
    .err(401, "invalid_key");
    // A project key is not the admin token.
    let r = c
        .request(
            Method::GET,
            "/admin/v1/projects",
            Some(&s.keys.test_secret),
            None,
        )
        .await;
    assert!(
        matches!(r.status, 401 | 403),
        "a secret key on an admin route: {} {}",
        r.status,
        r.text
    );
    assert_error_shape(&r.what, &r.body);
    let list = rows(&s.admin().get("/admin/v1/projects").await.ok());
    assert_eq!(list.len(), 1, "nothing was created: {list:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_ready_metrics_openapi() {
    let s = TestServer::start().await;
    let anon = s.anonymous();
    assert_eq!(anon.get("/healthz").await.status, 200);
    assert_eq!(anon.get("/readyz").await.status, 200);

    // Some traffic, allowed and denied, so there is something to count.
    let c = s.client();
    c.put_plans(free_plan(
        json!([{"id": "one", "quota": 1, "window": daily(), "match": [{"event": "image.*"}]}]),
    ))
    .await
    .ok();
    Client::must_allow(&c.reserve_q("u1", "image.render", 1).await);
    assert_eq!(c.reserve_q("u1", "image.render", 1).await["allowed"], false);

    let m = anon.get("/metrics").await;
    assert_eq!(m.status, 200, "{}", m.text);
    let ct = m
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        ct.starts_with("text/plain") || ct.starts_with("application/openmetrics-text"),
        "content-type {ct:?}"
    );
    let names: Vec<&str> = m
        .text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or(""))
        .collect();
    assert!(
        names.iter().all(|n| !n.is_empty()),
        "not Prometheus text: {}",
        m.text
    );
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("tollgate_") && n.contains("request")),
        "no tollgate_*request* counter in {names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("tollgate_") && n.contains("decision")),
        "no tollgate_*decision* counter in {names:?}"
    );
    // STYLE.md 17: a counter for every rejection reason; the denial above must be on one.
    assert!(
        m.text.lines().any(|l| l.starts_with("tollgate_")
            && l.contains("decision")
            && l.contains("limit_reached")),
        "no decision sample labelled limit_reached:\n{}",
        m.text
    );

    let o = anon.get("/openapi.json").await.ok();
    assert!(
        o["openapi"].as_str().is_some_and(|v| v.starts_with('3')),
        "openapi version: {}",
        o["openapi"]
    );
    let paths = o["paths"].as_object().expect("paths object");
    for p in ["/v1/reserve", "/v1/track", "/v1/check", "/v1/plans"] {
        assert!(
            paths.contains_key(p),
            "{p} missing from /openapi.json paths"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_and_restart_keep_state() {
    let mut s = TestServer::start().await;
    let c = s.client();
    c.put_plans(free_plan(json!([{"id": "images_daily", "quota": 10, "window": daily(), "match": [{"event": "image.*"}]}])))
        .await
        .ok();
    c.track_q("u1", "image.render", 3).await;
    let r = Client::must_allow(&c.reserve_q("u1", "image.render", 2).await);

    let status = s.stop().await;
    assert!(
        status.success(),
        "SIGTERM should shut down cleanly, got {status}"
    );
    s.restart().await;
    let c = s.client();
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 3, 2);
    assert_eq!(c.get_reservation(&r).await.ok()["status"], "pending");
    c.advance_clock(61).await;
    assert_eq!(c.get_reservation(&r).await.ok()["status"], "expired");
    assert_counts(&c.limit_state("u1", "images_daily").await, 10, 3, 0);
    let v = c.put_plans(free_plan(json!([]))).await.ok();
    assert_eq!(int(&v, "version"), 2, "plan versions survive a restart");

    let status = s.interrupt().await;
    assert!(
        status.success(),
        "SIGINT should shut down cleanly, got {status}"
    );
    s.restart().await;
    s.client().usage("u1").await.ok();
}
