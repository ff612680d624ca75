//! Operating an install (issue 17, docs/operations.md): the keys file and file modes, secrets
//! kept out of the logs, admin token rotation, JSON logs with one access line per request,
//! online backups under load and restores, `migrate --dry-run`, and a data dir made by an
//! earlier release.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn run(args: &[&str]) -> (bool, String, String) {
    run_tollgate(args)
}

/// The token of `admin rotate-token --json`'s answer.
fn admin_token_of(out: &str) -> String {
    serde_json::from_str::<Value>(out.trim()).expect("one JSON object")["adminToken"]
        .as_str()
        .expect("adminToken")
        .to_string()
}

fn is_sqlite(s: &TestServer) -> bool {
    s.database().is_none()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_start_writes_the_keys_file_for_its_owner_and_logs_only_the_test_keys() {
    let s = TestServer::builder().first_start().start().await;
    let file = s.data_dir().join(KEYS_FILE);
    assert_eq!(mode(&file), 0o600, "the keys file is its owner's only");
    let keys: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(keys["adminToken"], s.keys.admin_token);
    assert_eq!(keys["keys"]["live"]["secret"], s.keys.live_secret);
    let log = s.log_all();
    if is_sqlite(&s) {
        assert_eq!(mode(&s.data_dir().join("tollgate.db")), 0o600);
        // The test's data dir existed, open to others: it is left as it is, with a warning
        // (`init` on a missing one makes it 0700, below).
        if mode(s.data_dir()) & 0o077 != 0 {
            assert!(log.contains("chmod 700"), "{log}");
        }
    }
    assert!(log.contains(&file.display().to_string()), "{log}");
    assert!(!log.contains(&s.keys.admin_token), "{log}");
    assert!(!log.contains(&s.keys.live_secret), "{log}");
    assert!(!log.contains(&s.keys.live_publishable), "{log}");
    // The grep every test server gets when it is dropped sees the log: without the first
    // start's allowance for the test keys, it finds them.
    let lines: Vec<String> = log.lines().map(str::to_string).collect();
    let strict = s.secrets().found_in(lines.iter(), |_, _| false);
    assert!(
        strict.iter().any(|f| f.starts_with(&s.keys.test_secret)),
        "the grep must see the logged test key: {strict:?}"
    );
    assert!(s.leaked_secrets().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn init_json_prints_the_secrets_it_writes_to_the_keys_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, out, err) = run(&["init", "--data-dir", data.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let printed: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    let file = data.join(KEYS_FILE);
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(printed, written);
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&data), 0o700);

    // Without --json, the admin token and the live keys stay in the file.
    let other = dir.path().join("other");
    let (ok, out, err) = run(&["init", "--data-dir", other.to_str().unwrap()]);
    assert!(ok, "{err}");
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(other.join(KEYS_FILE)).unwrap()).unwrap();
    assert!(out.contains(written["keys"]["test"]["secret"].as_str().unwrap()));
    assert!(out.contains(KEYS_FILE), "{out}");
    for secret in [
        &written["adminToken"],
        &written["keys"]["live"]["secret"],
        &written["keys"]["live"]["publishable"],
    ] {
        assert!(!out.contains(secret.as_str().unwrap()), "{out}");
        assert!(!err.contains(secret.as_str().unwrap()), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_token_rotates_through_the_api_the_cli_and_the_store() {
    let mut s = TestServer::start().await;
    let old = s.admin();
    let rotated = old.post("/admin/v1/token/rotate", json!({})).await.ok();
    let token = rotated["adminToken"].as_str().unwrap().to_string();
    assert!(token.starts_with("tg_admin_"), "{rotated}");
    old.get("/admin/v1/projects").await.err(401, "invalid_key");
    let new = s.client_with(&token);
    new.get("/admin/v1/projects").await.ok();

    // The CLI, through the server.
    let (ok, out, err) = run(&[
        "admin",
        "rotate-token",
        "--url",
        &s.base_url,
        "--admin-token",
        &token,
        "--json",
    ]);
    assert!(ok, "{err}");
    let cli_token = admin_token_of(&out);
    s.secrets().note(&cli_token);
    new.get("/admin/v1/projects").await.err(401, "invalid_key");
    s.client_with(&cli_token)
        .get("/admin/v1/projects")
        .await
        .ok();

    // A lost token: written into the store itself (the embedded store has one writer, so the
    // server stops first; PostgreSQL takes it while the server runs). The keys file follows
    // when there is one.
    let data_dir = s.data_dir().to_str().unwrap().to_string();
    let mut args = vec!["admin", "rotate-token", "--local", "--json"];
    args.extend(["--data-dir", &data_dir]);
    let url = s.database_url().map(str::to_string);
    if let Some(url) = &url {
        args.extend(["--database-url", url]);
    } else {
        s.stop().await;
    }
    let (ok, out, err) = run(&args);
    assert!(ok, "{err}");
    let local_token = admin_token_of(&out);
    s.secrets().note(&local_token);
    if url.is_none() {
        s.restart().await;
    }
    s.client_with(&cli_token)
        .get("/admin/v1/projects")
        .await
        .err(401, "invalid_key");
    s.client_with(&local_token)
        .get("/admin/v1/projects")
        .await
        .ok();
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(s.data_dir().join(KEYS_FILE)).unwrap())
            .unwrap();
    assert_eq!(file["adminToken"], local_token.as_str());
    assert_eq!(mode(&s.data_dir().join(KEYS_FILE)), 0o600);
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_one_access_line_per_request_and_no_secret() {
    let s = TestServer::builder()
        .serve_arg("--log-format")
        .serve_arg("json")
        .start()
        .await;
    let c = s.client();
    c.put_plans(free_plan(json!([{
        "id": "daily", "label": "Daily", "quota": 10,
        "window": daily(), "match": [{"event": "image.*"}]
    }])))
    .await
    .ok();
    let answer = c
        .reserve(json!({"userId": "u1", "event": "image.render"}))
        .await;
    let request_id = answer.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(answer.status, 200);
    c.get("/v1/users/u1/usage").await.ok();
    s.anonymous().get("/v1/plans").await.err(401, "invalid_key");
    // The access line is written after the answer: give the drain a moment.
    let mut access = None;
    for _ in 0..100 {
        let log = s.log_all();
        access = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["target"] == "tollgate::access" && log_request_id(v) == Some(&request_id));
        if access.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let access = access.unwrap_or_else(|| panic!("no access line for {request_id}"));
    assert_eq!(access["level"], "INFO");
    assert_eq!(access["fields"]["status"], 200);
    assert!(access["fields"]["elapsed_ms"].as_f64().unwrap() >= 0.0);
    let span = &access["spans"][0];
    assert_eq!(span["method"], "POST");
    assert_eq!(span["route"], "/v1/reserve");
    let log = s.log_all();
    for line in log.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is no JSON object ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
    }
    let accesses: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "tollgate::access")
        .collect();
    // PUT plans, reserve, usage and the refused anonymous read (the last may still be on its
    // way): one line each.
    assert!(accesses.len() >= 3, "{accesses:?}");
    assert!(accesses.iter().all(|a| a["spans"][0]["route"].is_string()));
    assert!(!log.contains("Bearer"), "no Authorization header is logged");
    assert!(s.leaked_secrets().is_empty());
}

fn log_request_id(line: &Value) -> Option<&String> {
    match &line["spans"][0]["request_id"] {
        Value::String(s) => Some(s),
        _ => None,
    }
}

/// One writer: reserve and commit as fast as the server answers, noting each commit's
/// reservation id once the commit is acknowledged.
async fn commit_loop(
    c: Client,
    user: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let r = c
            .reserve(json!({"userId": user, "event": "job.run"}))
            .await
            .ok();
        let id = Client::must_allow(&r);
        c.commit(&id, json!({})).await.ok();
        acked.lock().unwrap().push(id);
    }
}

async fn backup_under_load_and_restore(engine: bool) {
    if !matches!(Backend::from_env(), Backend::Sqlite) {
        eprintln!("skipped: `tollgate backup` is for the embedded store (PostgreSQL: pg_dump)");
        return;
    }
    let mut builder = TestServer::builder();
    if engine {
        builder = builder.serve_arg("--engine");
    }
    let s = builder.start().await;
    let c = s.client();
    c.put_plans(free_plan(json!([{
        "id": "jobs", "label": "Jobs", "quota": 1_000_000_000u64,
        "window": lifetime(), "match": [{"event": "job.*"}]
    }])))
    .await
    .ok();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..8)
        .map(|i| {
            tokio::spawn(commit_loop(
                c.clone(),
                format!("u{}", i % 3),
                stop.clone(),
                acked.clone(),
            ))
        })
        .collect();
    // Load first, so the backup starts under it.
    while acked.lock().unwrap().len() < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before: Vec<String> = acked.lock().unwrap().clone();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("tollgate.backup");
    let (data_dir, to) = (
        s.data_dir().to_str().unwrap().to_string(),
        file.to_str().unwrap().to_string(),
    );
    let backup =
        tokio::task::spawn_blocking(move || run(&["backup", "--data-dir", &data_dir, "--to", &to]));
    let (ok, out, err) = backup.await.unwrap();
    let during = acked.lock().unwrap().len() - before.len();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(ok, "backup failed: {err}");
    assert!(out.contains("backed up"), "{out}");
    assert_eq!(mode(&file), 0o600);
    let total = acked.lock().unwrap().len();
    eprintln!(
        "{} commits before the backup, {during} while it ran, {total} in all: {out}",
        before.len()
    );

    // A second backup to the same file is refused; nothing is overwritten.
    let (ok, _, err) = run(&[
        "backup",
        "--data-dir",
        s.data_dir().to_str().unwrap(),
        "--to",
        file.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("exists"), "{err}");

    let restored = tempfile::tempdir().unwrap();
    let target = restored.path().to_path_buf();
    let (ok, out, err) = run(&[
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--data-dir",
        target.to_str().unwrap(),
    ]);
    assert!(ok, "restore failed: {err}");
    assert!(out.contains("restored"), "{out}");
    // Into a data dir that holds something: refused.
    let (ok, _, err) = run(&[
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--data-dir",
        s.data_dir().to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("not empty"), "{err}");

    // The restored install serves with the same keys, in either mode, and holds every commit
    // acknowledged before the backup began.
    let copy = TestServer::builder()
        .keys(s.keys.clone())
        .data_dir(restored)
        .start()
        .await;
    let rc = copy.client();
    let mut found = 0;
    for id in &before {
        let r = rc.get_reservation(id).await.ok();
        assert_eq!(r["status"], "committed", "{id} after the restore: {r}");
        found += 1;
    }
    assert_eq!(found, before.len());
    // Nothing the backup holds was invented: the restored counts are at most what was
    // acknowledged in all, and at least what came before.
    let mut used = 0;
    for u in ["u0", "u1", "u2"] {
        used += rc.limit_state(u, "jobs").await["used"].as_u64().unwrap();
    }
    assert!(
        (before.len() as u64..=total as u64).contains(&used),
        "restored used {used}, acknowledged {} before and {total} in all",
        before.len()
    );
    // The restored install takes new writes.
    let id = Client::must_allow(&rc.reserve_q("u9", "job.run", 1).await);
    rc.commit(&id, json!({})).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_restores_every_commit_acknowledged_before_it() {
    backup_under_load_and_restore(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_of_the_engine_under_load_carries_its_command_log() {
    if std::env::var_os("TOLLGATE_ENGINE").is_some() {
        eprintln!("skipped: the default pass runs this one (every server there is the engine)");
        return;
    }
    backup_under_load_and_restore(true).await;
}

/// The data dir an earlier release made (scripts/make-upgrade-fixture.sh): its schema version,
/// then where it lives in the repository.
const UPGRADE_FIXTURES: &[(usize, &str)] = &[(12, "tests/fixtures/upgrade/schema-12")];

fn user_version(db: &Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_of_an_earlier_release_opens_and_migrates() {
    if !matches!(Backend::from_env(), Backend::Sqlite) {
        eprintln!("skipped: the fixtures are embedded data dirs (PostgreSQL: the test below)");
        return;
    }
    for (version, fixture) in UPGRADE_FIXTURES {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(fixture);
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(fixture.join("tollgate.db"), dir.path().join("tollgate.db")).unwrap();
        let db = dir.path().join("tollgate.db");
        assert_eq!(user_version(&db), *version as i64);

        // The dry run names every migration past the fixture's version and changes nothing.
        let data_dir = dir.path().to_str().unwrap().to_string();
        let (ok, out, err) = run(&["migrate", "--dry-run", "--data-dir", &data_dir]);
        assert!(ok, "{err}");
        assert!(out.contains(&format!("schema version {version};")), "{out}");
        assert!(out.contains(&format!("  {}:", version + 1)), "{out}");
        assert!(out.contains("CREATE TABLE"), "{out}");
        assert_eq!(
            user_version(&db),
            *version as i64,
            "a dry run migrates nothing"
        );

        // `serve` migrates it and answers with what the earlier release recorded.
        let keys: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture.join("keys.json")).unwrap())
                .unwrap();
        let s = TestServer::builder()
            .keys(Keys::from_json(&keys))
            .data_dir(dir)
            .start()
            .await;
        // Only what no clock can change: the fixture's windows reset and its reservation
        // expires as time passes.
        let expect: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture.join("expect.json")).unwrap())
                .unwrap();
        let c = s.client();
        for id in expect["committed"].as_array().unwrap() {
            let r = c.get_reservation(id.as_str().unwrap()).await.ok();
            assert_eq!(r["status"], "committed", "{r}");
            assert_eq!(r["quantity"], 2, "{r}");
        }
        let pending = c
            .get_reservation(expect["pending"].as_str().unwrap())
            .await
            .ok();
        assert!(
            pending["status"] == "pending" || pending["status"] == "expired",
            "{pending}"
        );
        let events = c.get("/v1/events?userId=u_pro&status=committed").await.ok();
        let quantity: u64 = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["quantity"].as_u64().unwrap())
            .sum();
        assert_eq!(quantity, 6, "{events}");
        let tracked = c.get("/v1/events?userId=u_free").await.ok();
        assert_eq!(tracked["events"][0]["quantity"], 4, "{tracked}");
        let sub = c.get_subscription("u_pro").await.ok();
        assert_eq!(sub["planId"], "pro", "{sub}");
        let ledger = c.get("/v1/users/u_free/credits/ledger").await.ok();
        assert!(ledger.to_string().contains("pack50"), "{ledger}");
        // The rollup a later migration added was filled from the old events: whole days of
        // the fixture's month come from it.
        let top = c
            .get("/v1/analytics/top-users?by=quantity&from=2026-12-01T00:00:00Z&to=2026-12-31T00:00:00Z")
            .await
            .ok();
        assert!(top.to_string().contains("u_pro"), "{top}");
        // It takes new writes.
        let id = Client::must_allow(&c.reserve_q("u_new", "image.render", 1).await);
        c.commit(&id, json!({})).await.ok();
        let (ok, out, err) = run(&[
            "migrate",
            "--dry-run",
            "--data-dir",
            s.data_dir().to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        assert!(out.contains("current; nothing would run"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_newer_than_the_binary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_string();
    let (ok, _, err) = run(&["init", "--data-dir", &data_dir, "--json"]);
    assert!(ok, "{err}");
    let db = dir.path().join("tollgate.db");
    let current = user_version(&db);
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "user_version", current + 1)
            .unwrap();
    }
    for args in [
        vec!["migrate", "--data-dir", &data_dir],
        vec!["migrate", "--dry-run", "--data-dir", &data_dir],
    ] {
        let (ok, _, err) = run(&args);
        assert!(!ok, "{args:?} must refuse");
        assert!(
            err.contains(&format!(
                "schema version {}, newer than this binary's {current}",
                current + 1
            )),
            "{err}"
        );
    }
    assert_eq!(user_version(&db), current + 1, "nothing was written");
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_dry_run_on_postgresql_lists_what_migrate_applies() {
    let Backend::Postgres { admin_url } = Backend::from_env() else {
        eprintln!("skipped: TOLLGATE_TEST_BACKEND=postgres runs this one");
        return;
    };
    let db = PgDatabase::create(&admin_url).await;
    let url = db.url();
    let (ok, out, err) = run(&["migrate", "--dry-run", "--database-url", &url]);
    assert!(ok, "{err}");
    assert!(out.contains("schema version 0;"), "{out}");
    assert!(
        out.contains("  1:") && out.contains("CREATE TABLE meta"),
        "{out}"
    );
    let (ok, out, err) = run(&["migrate", "--database-url", &url]);
    assert!(ok, "{err}");
    assert!(out.contains("migration(s) applied"), "{out}");
    let (ok, out, err) = run(&["migrate", "--dry-run", "--database-url", &url]);
    assert!(ok, "{err}");
    assert!(out.contains("current; nothing would run"), "{out}");
}
