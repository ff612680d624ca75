//! The hot-path engine (`serve --engine`) through the real binary: a command log torn inside
//! its last record, and a restart without the engine after a crash with it.

mod common;

use common::*;

/// These tests start the engine themselves (`--engine`), on the embedded store, so they run in
/// the suite's default pass only. The pass on PostgreSQL skips them, and so does the pass on the
/// engine (`TOLLGATE_ENGINE` on), which would start the same servers again, and in which a
/// restart "without the engine" would still have it, from the environment.
fn on_sqlite() -> bool {
    if !matches!(Backend::from_env(), Backend::Sqlite) {
        eprintln!("skipped: the engine is for the embedded store");
        return false;
    }
    let engine_pass = std::env::var("TOLLGATE_ENGINE")
        .is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "no" | "off"));
    if engine_pass {
        eprintln!("skipped: TOLLGATE_ENGINE is on; these tests ran in the default pass");
    }
    !engine_pass
}

async fn twenty_commits() -> TestServer {
    let server = TestServer::builder().serve_arg("--engine").start().await;
    let c = server.client();
    c.put_plans(free_plan(json!([
        {"id": "jobs", "quota": 1000, "window": lifetime(), "match": [{"event": "job.*"}]}
    ])))
    .await
    .ok();
    for _ in 0..20 {
        let id = Client::must_allow(&c.reserve_q("u1", "job.run", 1).await);
        c.commit(&id, json!({})).await.ok();
    }
    server
}

/// The newest segment of the command log (`log-{first lsn}.seg`).
fn newest_segment(server: &TestServer) -> std::path::PathBuf {
    let dir = server.data_dir().join("log");
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .expect("the log dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    segments.pop().expect("a segment")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_torn_inside_its_last_record_restarts_cleanly() {
    if !on_sqlite() {
        return;
    }
    let mut server = twenty_commits().await;
    server.kill9().await;
    // A torn write: the process died while writing a record after the last one, so only its
    // frame and part of its payload reached the file. (Records are answered only once synced,
    // so a torn record was never answered.) Frames: len u32, crc u32, lsn u64, version u8,
    // payload, after a 16-byte segment header; zeros after the last one.
    let path = newest_segment(&server);
    let mut bytes = std::fs::read(&path).expect("the segment");
    let (mut at, mut last_lsn) = (16usize, 0u64);
    while bytes[at..at + 17].iter().any(|&b| b != 0) {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        last_lsn = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap());
        at += 17 + len;
    }
    assert!(last_lsn >= 40, "20 reserves and 20 commits were logged");
    bytes[at..at + 4].copy_from_slice(&200u32.to_le_bytes());
    bytes[at + 4..at + 8].copy_from_slice(&[1, 2, 3, 4]);
    bytes[at + 8..at + 16].copy_from_slice(&(last_lsn + 1).to_le_bytes());
    bytes[at + 16] = 1;
    bytes[at + 17..at + 47].fill(0xab);
    std::fs::write(&path, &bytes).expect("write the segment");

    server.restart().await;
    let c = server.client();
    let l = c.limit_state("u1", "jobs").await;
    assert_counts(&l, 1000, 20, 0);
    let used = 20;
    assert!(
        server.log_all().contains("torn tail"),
        "the cut is logged: {}",
        server.log_tail(50)
    );
    let id = Client::must_allow(&c.reserve_q("u1", "job.run", 1).await);
    c.commit(&id, json!({})).await.ok();
    let l = c.limit_state("u1", "jobs").await;
    assert_eq!(int(&l, "used"), used + 1, "{l}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_without_the_engine_applies_its_log_first() {
    if !on_sqlite() {
        return;
    }
    let mut server = twenty_commits().await;
    server.kill9().await;
    server.set_serve_args(&[]);
    server.restart().await;
    let c = server.client();
    let l = c.limit_state("u1", "jobs").await;
    assert_counts(&l, 1000, 20, 0);
    let events = c.get("/v1/events?userId=u1&limit=100").await.ok();
    let committed = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["status"] == "committed")
        .count();
    assert_eq!(committed, 20, "{events}");
}

/// Records the projection must be behind when the server is killed.
const BEHIND: u64 = 100_000;
/// Callers tracking at once, each for a user of its own.
const CALLERS: usize = 32;

/// `tollgate_engine_projection_lag_records` from `/metrics`.
async fn projection_lag(server: &TestServer) -> u64 {
    let text = server.anonymous().get("/metrics").await.text;
    text.lines()
        .find_map(|l| l.strip_prefix("tollgate_engine_projection_lag_records "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no projection lag in /metrics:\n{text}"))
}

/// A kill -9 while the projection is 100,000 records behind loses nothing. The test holds
/// SQLite's write lock from a connection of its own, so the projection cannot apply anything
/// while the engine keeps answering from memory and its log; it kills the server once the gauge
/// on `/metrics` says 100,000 records are unapplied, then restarts it. Every acknowledged track
/// is in the engine's state (the usage answers) and in the tables (read with SQLite directly).
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_while_the_projection_is_100000_records_behind_loses_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;
    if !on_sqlite() {
        return;
    }
    let mut server = TestServer::builder().serve_arg("--engine").start().await;
    server
        .client()
        .put_plans(free_plan(json!([
            {"id": "jobs", "quota": 1_000_000_000, "window": lifetime(), "match": [{"event": "job.*"}]}
        ])))
        .await
        .ok();
    let db_path = server.data_dir().join("tollgate.db");
    let lock = rusqlite::Connection::open(&db_path).expect("open the database");
    lock.busy_timeout(std::time::Duration::from_secs(30))
        .expect("busy timeout");
    lock.execute_batch("BEGIN IMMEDIATE")
        .expect("take SQLite's write lock");

    let c = server.client().tolerating_overload();
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..CALLERS)
        .map(|t| {
            let (c, stop, total) = (c.clone(), stop.clone(), total.clone());
            tokio::spawn(async move {
                // (acknowledged, sent) by this caller, for user `b{t}`.
                let (mut acked, mut sent) = (0u64, 0u64);
                let body = json!({"userId": format!("b{t}"), "event": "job.run", "quantity": 1});
                while !stop.load(SeqCst) {
                    sent += 1;
                    let Ok(r) = c
                        .try_call(Method::POST, "/v1/track", Some(body.clone()))
                        .await
                    else {
                        break;
                    };
                    assert_eq!(r.status, 200, "{}", r.text);
                    acked += 1;
                    total.fetch_add(1, SeqCst);
                }
                (acked, sent)
            })
        })
        .collect();

    // Waits until the tables are 100,000 records behind the log.
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if total.load(SeqCst) >= BEHIND && projection_lag(&server).await >= BEHIND {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(600),
            "only {} tracks acknowledged in 10 minutes",
            total.load(SeqCst)
        );
    }
    server.kill9().await;
    stop.store(true, SeqCst);
    let mut counts = Vec::new();
    for caller in callers {
        counts.push(caller.await.expect("caller panicked"));
    }
    lock.execute_batch("ROLLBACK").expect("release the lock");
    drop(lock);
    let acked: u64 = counts.iter().map(|(a, _)| a).sum();
    eprintln!(
        "killed with {acked} tracks acknowledged after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The restart applies the whole unapplied tail to the tables before it serves.
    server.restart().await;
    let c = server.client();
    let db = rusqlite::Connection::open(&db_path).expect("open the database");
    for (t, (acked, sent)) in counts.iter().enumerate() {
        let user = format!("b{t}");
        // Each caller had at most one call in flight at the kill, which may or may not have
        // been logged before it.
        let used = int(&c.limit_state(&user, "jobs").await, "used") as u64;
        assert!(
            (*acked..=*sent).contains(&used),
            "{user}: used {used}, acknowledged {acked}, sent {sent}"
        );
        // The tables key a user's counters by subject `u:{userId}`.
        let (in_counter, events): (u64, u64) = db
            .query_row(
                "SELECT (SELECT used FROM counters WHERE limit_id = 'jobs' AND subject = 'u:' || ?1),
                        (SELECT count(*) FROM events WHERE user_id = ?1 AND status = 'tracked')",
                [&user],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("read the tables");
        assert_eq!(in_counter, used, "{user}: the counter in the tables");
        assert_eq!(events, used, "{user}: tracked events in the tables");
    }
}
