//! Issue 10, items 1 and 10: a plan document is judged once, on its way in, in the form it is
//! stored; a stored version that does not load never takes an environment down (the node
//! serves the newest version that loads and `/readyz` names the problem, also after a restart
//! and on a second node); and the same document applied again makes no new version.
//!
//! Stored versions "left by another build" are written into the database directly, as an
//! older or newer Tollgate might have left them.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Longest wait for a node to notice a version stored behind its back (its plan cache checks
/// the store every second).
const NOTICE_TIMEOUT: Duration = Duration::from_secs(15);
/// The plan document size limit of API.md §1, in bytes.
const PLAN_DOCUMENT_BYTES_MAX: usize = MIB;
/// What a node logs, once per version, when a stored plan document does not load.
const NOT_LOADED_LOG: &str = "stored plan document does not load on this node";

/// One limit of the repro: 25 of them a plan, 200 plans, is 729 KB sent and 1.29 MB
/// once every default is filled in.
fn repro_limit(n: usize) -> Value {
    json!({"id": format!("limit_{n}"), "label": format!("Limit number {n}"), "quota": 100,
           "window": {"type": "calendar", "period": "day"},
           "match": [{"event": format!("event.{n}")}]})
}

fn repro_document(plans: usize) -> Value {
    let plans: Vec<Value> = (0..plans)
        .map(|i| json!({"id": format!("plan_{i}"), "limits": (0..25).map(repro_limit).collect::<Vec<_>>()}))
        .collect();
    json!({ "plans": plans })
}

/// A free plan whose `images` limit has `quota` a day in `timezone`.
fn images_doc(quota: u64, timezone: &str) -> Value {
    free_plan(json!([{"id": "images", "quota": quota,
        "window": {"type": "calendar", "period": "day", "timezone": timezone},
        "match": [{"event": "image.*"}]}]))
}

/// The stored form of a `PUT /v1/plans` answer: the document without `version` and `changed`.
fn stored_text(answer: &Value) -> String {
    let mut doc = answer.clone();
    let obj = doc.as_object_mut().expect("an object");
    obj.remove("version");
    obj.remove("changed");
    doc.to_string()
}

/// Writes `document` as version `version` of the test environment's plans straight into the
/// server's database, as another build of Tollgate might have stored it.
async fn store_directly(s: &TestServer, version: i64, document: String) {
    const INSERT: &str = "INSERT INTO plan_documents (env_id, version, document, created_at_ms)
         SELECT env_id, $1, $2, 0 FROM environments WHERE mode = 'test'";
    if let Some(db) = s.database() {
        let inserted = db
            .connect()
            .await
            .execute(INSERT, &[&version, &document])
            .await
            .expect("insert a plan document row");
        assert_eq!(inserted, 1);
        return;
    }
    let path = s.data_dir().join("tollgate.db");
    let inserted = tokio::task::spawn_blocking(move || {
        let c = rusqlite::Connection::open(path)?;
        c.busy_timeout(Duration::from_secs(10))?;
        c.execute(
            &INSERT.replace('$', "?"),
            rusqlite::params![version, document],
        )
    })
    .await
    .expect("task")
    .expect("insert a plan document row");
    assert_eq!(inserted, 1);
}

/// `/readyz` of `s`, once it names a problem (or panics after [`NOTICE_TIMEOUT`]). A node
/// looks at the stored versions when a request needs the environment's plans, so each round
/// sends one.
async fn readyz_once_degraded(s: &TestServer) -> Value {
    let started = Instant::now();
    loop {
        s.client().get_plans().await.ok();
        let r = s.anonymous().get("/readyz").await.ok();
        if r["status"] == "degraded" {
            return r;
        }
        assert!(
            started.elapsed() < NOTICE_TIMEOUT,
            "/readyz never named a problem: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn not_loaded_logs(s: &TestServer) -> usize {
    s.log_all()
        .lines()
        .filter(|l| l.contains(NOT_LOADED_LOG))
        .count()
}

/// What a node serving version 1 (quota 5) while version 2 does not load answers: reserve,
/// usage and plan reads all work (the client fails the test on any 5xx).
async fn assert_serves_version_1(s: &TestServer, user: &str) {
    let c = s.client();
    let ready = readyz_once_degraded(s).await;
    let problems = ready["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 1, "{ready}");
    let p = &problems[0];
    assert_eq!(p["code"], "plan_document_not_loaded", "{ready}");
    assert_eq!(p["projectId"], s.keys.project_id.as_str(), "{ready}");
    assert_eq!(p["environment"], "test", "{ready}");
    assert_eq!(p["storedVersion"], 2, "{ready}");
    assert_eq!(p["servedVersion"], 1, "{ready}");
    let message = p["message"].as_str().expect("message");
    assert!(message.contains("Mars/Olympus"), "{message}");

    assert_eq!(int(&c.get_plans().await.ok(), "version"), 1);
    let plan = c.get_plan("free").await.ok();
    assert_eq!(plan["limits"][0]["quota"], 5, "{plan}");
    let r = c.reserve_q(user, "image.render", 1).await;
    let rid = Client::must_allow(&r);
    assert_eq!(limit(&r, "images")["quota"], 5, "{r}");
    c.release(&rid, json!({})).await.ok();
    let u = c.usage(user).await.ok();
    assert_eq!(limit(&u, "images")["quota"], 5, "{u}");
    c.track(json!({"userId": user, "event": "image.render"}))
        .await
        .ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_document_is_judged_by_its_stored_size() {
    let mut s = TestServer::start().await;
    let c = s.client();
    // The repro: the body fits, the stored form does not.
    let repro = repro_document(200);
    assert!(repro.to_string().len() < PLAN_DOCUMENT_BYTES_MAX);
    let r = c.put_plans(repro).await;
    // The answer of an accepted document is over a megabyte: show its start only.
    assert_eq!(r.status, 400, "{}", &r.text[..r.text.len().min(300)]);
    let e = r.err(400, "invalid_request");
    let message = e["message"].as_str().expect("message");
    assert!(message.contains("as stored"), "{e}");
    assert_eq!(
        int(&c.get_plans().await.ok(), "version"),
        0,
        "nothing stored"
    );

    // A document whose stored form is exactly the limit, and one byte more.
    let mut doc = images_doc(5, "UTC");
    doc["plans"][0]["description"] = json!("");
    let base = stored_text(&c.put_plans(doc.clone()).await.ok()).len();
    doc["plans"][0]["description"] = json!("d".repeat(PLAN_DOCUMENT_BYTES_MAX - base + 1));
    c.put_plans(doc.clone()).await.err(400, "invalid_request");
    doc["plans"][0]["description"] = json!("d".repeat(PLAN_DOCUMENT_BYTES_MAX - base));
    let at_limit = c.put_plans(doc).await.ok();
    assert_eq!(stored_text(&at_limit).len(), PLAN_DOCUMENT_BYTES_MAX);
    assert_eq!(int(&at_limit, "version"), 2, "the refusal stored nothing");

    // It loads again: after a restart, and on a second node of the same database.
    let reads = |c: Client| async move {
        assert_eq!(int(&c.get_plans().await.ok(), "version"), 2);
        let r = c.reserve_q("u1", "image.render", 1).await;
        assert_eq!(limit(&r, "images")["quota"], 5, "{r}");
        c.usage("u1").await.ok();
    };
    s.restart().await;
    reads(s.client()).await;
    if let Some(db) = s.database() {
        let second = TestServer::builder()
            .database(db.clone())
            .keys(s.keys.clone())
            .start()
            .await;
        reads(second.client()).await;
    }
    assert_eq!(s.anonymous().get("/readyz").await.ok()["status"], "ready");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_version_that_does_not_load_leaves_the_last_one_in_force() {
    let mut s = TestServer::start().await;
    let c = s.client();
    assert_eq!(
        int(&c.put_plans(images_doc(5, "UTC")).await.ok(), "version"),
        1
    );
    c.track_q("u1", "image.render", 2).await;
    // Version 2, as a build with a newer time zone database might have stored it.
    let unknown_zone = images_doc(50, "Mars/Olympus");
    store_directly(&s, 2, unknown_zone.to_string()).await;

    assert_serves_version_1(&s, "u1").await;
    // Logged and counted once, however many requests come over several cache checks.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_serves_version_1(&s, "u1").await;
    assert_eq!(not_loaded_logs(&s), 1, "{}", s.log_tail(40));
    let metrics = s.anonymous().get("/metrics").await.text;
    assert!(
        metrics.contains("tollgate_plan_load_failures_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_plan_documents_not_loaded 1"),
        "{metrics}"
    );

    // After a restart nothing is in memory: the newest version that loads is found.
    s.restart().await;
    assert_serves_version_1(&s, "u1").await;
    assert_eq!(not_loaded_logs(&s), 2, "once more, by the new process");
    if let Some(db) = s.database() {
        let second = TestServer::builder()
            .database(db.clone())
            .keys(s.keys.clone())
            .start()
            .await;
        assert_serves_version_1(&second, "u2").await;
    }
    let u = c_usage(&s, "u1").await;
    // Two tracked at first, one by each round of reads on this node.
    assert_eq!(limit(&u, "images")["used"], 5, "{u}");

    // Applying a good document ends the problem.
    let fixed = s.client().put_plans(images_doc(7, "UTC")).await.ok();
    assert_eq!(int(&fixed, "version"), 3);
    let ready = s.anonymous().get("/readyz").await.ok();
    assert_eq!(ready, json!({"status": "ready"}));
    let u = c_usage(&s, "u1").await;
    assert_eq!(limit(&u, "images")["quota"], 7, "{u}");
}

async fn c_usage(s: &TestServer, user: &str) -> Value {
    s.client().usage(user).await.ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_loadable_version_requests_answer_503_until_a_document_is_applied() {
    let s = TestServer::start().await;
    store_directly(&s, 1, images_doc(5, "Mars/Olympus").to_string()).await;
    let c = s.client().tolerating_overload();
    for r in [
        c.reserve(json!({"userId": "u1", "event": "image.render"}))
            .await,
        c.usage("u1").await,
        c.get_plans().await,
    ] {
        r.err(503, "unavailable");
        assert!(r.headers.contains_key("retry-after"), "{}", r.text);
    }
    let ready = s.anonymous().get("/readyz").await.ok();
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["problems"][0]["storedVersion"], 1, "{ready}");
    assert_eq!(ready["problems"][0]["servedVersion"], 0, "{ready}");

    let fixed = c.put_plans(images_doc(5, "UTC")).await.ok();
    assert_eq!(int(&fixed, "version"), 2);
    let r = c.reserve_q("u1", "image.render", 1).await;
    assert_eq!(limit(&r, "images")["quota"], 5, "{r}");
    assert_eq!(
        s.anonymous().get("/readyz").await.ok(),
        json!({"status": "ready"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_version_over_todays_limits_still_loads() {
    let mut s = TestServer::start().await;
    let c = s.client();
    c.put_plans(images_doc(5, "UTC")).await.ok();
    // As a build with looser limits might have accepted it: more plans than allowed, and over
    // the size limit once stored.
    let mut loose = repro_document(201);
    loose["defaultPlan"] = json!("plan_0");
    loose["plans"][0]["limits"][0]["match"] = json!([{"event": "image.*"}]);
    for plan in loose["plans"].as_array_mut().expect("plans") {
        plan["description"] = json!("d".repeat(2_000));
    }
    let text = loose.to_string();
    assert!(text.len() > PLAN_DOCUMENT_BYTES_MAX);
    store_directly(&s, 2, text).await;

    let check = |s: &TestServer| {
        let c = s.client();
        async move {
            let started = Instant::now();
            while int(&c.get_plans().await.ok(), "version") != 2 {
                assert!(
                    started.elapsed() < NOTICE_TIMEOUT,
                    "version 2 never in force"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let r = c.reserve_q("u1", "image.render", 1).await;
            assert_eq!(r["planId"], "plan_0", "{r}");
            assert_eq!(limit(&r, "limit_0")["quota"], 100, "{r}");
        }
    };
    check(&s).await;
    s.restart().await;
    check(&s).await;
    assert_eq!(
        s.anonymous().get("/readyz").await.ok(),
        json!({"status": "ready"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_document_twice_is_one_version() {
    let s = TestServer::start().await;
    let c = s.client();
    let a = c.put_plans(images_doc(5, "UTC")).await.ok();
    assert_eq!((int(&a, "version"), &a["changed"]), (1, &json!(true)));
    // Again, and again in its stored form (every default written out): nothing new.
    let again = c.put_plans(images_doc(5, "UTC")).await.ok();
    assert_eq!(
        (int(&again, "version"), &again["changed"]),
        (1, &json!(false))
    );
    assert_eq!(stored_text(&again), stored_text(&a));
    let stored: Value = serde_json::from_str(&stored_text(&a)).unwrap();
    let same = c.put_plans(stored).await.ok();
    assert_eq!(
        (int(&same, "version"), &same["changed"]),
        (1, &json!(false))
    );
    let b = c.put_plans(images_doc(6, "UTC")).await.ok();
    assert_eq!((int(&b, "version"), &b["changed"]), (2, &json!(true)));
    // The first document again is a change: it is not the one in force.
    let back = c.put_plans(images_doc(5, "UTC")).await.ok();
    assert_eq!((int(&back, "version"), &back["changed"]), (3, &json!(true)));
    let r = c.reserve_q("u1", "image.render", 1).await;
    assert_eq!(limit(&r, "images")["quota"], 5, "{r}");

    // At once from several clients (and, on PostgreSQL, through two nodes): one version.
    let second = match s.database() {
        Some(db) => Some(
            TestServer::builder()
                .database(db.clone())
                .keys(s.keys.clone())
                .start()
                .await,
        ),
        None => None,
    };
    let clients: Vec<Client> = (0..8)
        .map(|i| match (&second, i % 2) {
            (Some(node), 1) => node.client(),
            _ => s.client(),
        })
        .collect();
    let puts = clients
        .into_iter()
        .map(|c| tokio::spawn(async move { c.put_plans(images_doc(9, "UTC")).await.ok() }));
    let mut changed = 0;
    for put in puts {
        let a = put.await.expect("task");
        assert_eq!(int(&a, "version"), 4, "{a}");
        changed += usize::from(a["changed"] == json!(true));
    }
    assert_eq!(changed, 1, "exactly one apply made the version");
    assert_eq!(int(&c.get_plans().await.ok(), "version"), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn plans_apply_says_unchanged() {
    let s = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("plans.json");
    std::fs::write(&file, images_doc(5, "UTC").to_string()).expect("write the plan file");
    let apply = || {
        let out = std::process::Command::new(BIN)
            .args(["plans", "apply"])
            .arg(&file)
            .args(["--url", &s.base_url, "--key", &s.keys.test_secret])
            .env_remove("TOLLGATE_URL")
            .env_remove("TOLLGATE_KEY")
            .output()
            .expect("run tollgate plans apply");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let first = apply();
    assert!(first.starts_with("Applied "), "{first}");
    assert!(first.contains("version 1 (1 plan)"), "{first}");
    let second = apply();
    assert!(second.starts_with("Unchanged: "), "{second}");
    assert!(second.contains("version 1 already"), "{second}");
    assert_eq!(int(&s.client().get_plans().await.ok(), "version"), 1);
}
