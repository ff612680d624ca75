//! The hot-path engine (`serve --engine`) through the real binary: a command log torn inside
//! its last record, and a restart without the engine after a crash with it.

mod common;

use common::*;

fn on_sqlite() -> bool {
    let sqlite = matches!(Backend::from_env(), Backend::Sqlite);
    if !sqlite {
        eprintln!("skipped: the engine is for the embedded store");
    }
    sqlite
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
        server.log_tail(500).contains("torn tail"),
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
