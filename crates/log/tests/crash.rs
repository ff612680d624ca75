//! kill -9 of a real process writing the log: every record it acknowledged (synced and printed)
//! is there after a reopen, whole, and the log goes on.
//!
//! The writer is this test binary itself, started again as a child with `CRASH_CHILD_DIR` set
//! and told to run only `crash_child`; without that variable `crash_child` returns at once.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{all_records, expected_payload};
use tollgate_log::{LogOptions, LogWriter};

const CHILD_DIR_ENV: &str = "CRASH_CHILD_DIR";
/// Small segments, so kills land around roll-overs too.
const SEGMENT_BYTES: u64 = 16 << 10;
const KILLS: usize = 4;

/// The child: appends groups of 1..=8 records, flushes, syncs on another thread (as the engine's
/// syncer does), and prints `acked <lsn>` once a group's sync returned; until killed.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let (mut log, rec) = LogWriter::open(
        Path::new(&dir),
        LogOptions {
            segment_bytes: SEGMENT_BYTES,
        },
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel::<tollgate_log::SyncPoint>(4);
    let syncer = std::thread::spawn(move || {
        let mut out = std::io::stdout().lock();
        for sp in rx {
            sp.sync().unwrap();
            writeln!(out, "acked {}", sp.lsn()).unwrap();
            out.flush().unwrap();
        }
    });
    let mut lsn = rec.last_lsn;
    loop {
        for _ in 0..=(lsn % 8) {
            lsn += 1;
            assert_eq!(log.append((lsn % 3) as u8, &expected_payload(lsn)), lsn);
        }
        if tx.send(log.flush().unwrap()).is_err() {
            break;
        }
    }
    drop(syncer);
}

#[test]
fn every_acknowledged_record_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked_max = 0;
    for kill in 0..KILLS {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let start = Instant::now();
        let mut acked_this_run = 0;
        // Let it write for a while (at least 50 acknowledged groups), then kill it mid-stride.
        while acked_this_run < 50 || start.elapsed() < Duration::from_millis(300) {
            let Some(line) = lines.next() else {
                panic!("child {kill} exited early: {:?}", child.wait());
            };
            if let Some(n) = line.unwrap().strip_prefix("acked ") {
                acked_max = n.parse().unwrap();
                acked_this_run += 1;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "child too slow");
        }
        child.kill().unwrap(); // SIGKILL
                               // Acks printed before the kill still count.
        for line in lines {
            if let Some(n) = line.unwrap().strip_prefix("acked ") {
                acked_max = n.parse().unwrap();
            }
        }
        child.wait().unwrap();

        let (log, rec) = LogWriter::open(
            dir.path(),
            LogOptions {
                segment_bytes: SEGMENT_BYTES,
            },
        )
        .unwrap();
        assert!(
            rec.last_lsn >= acked_max,
            "kill {kill}: {} < acked {acked_max}",
            rec.last_lsn
        );
        drop(log);
        let records = all_records(dir.path());
        assert_eq!(records.len() as u64, rec.last_lsn);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.lsn, i as u64 + 1);
            assert_eq!(
                r.payload,
                expected_payload(r.lsn),
                "kill {kill}, lsn {}",
                r.lsn
            );
        }
    }
    assert!(
        acked_max > 200,
        "the children wrote enough to mean something: {acked_max}"
    );
    let segments = common::segment_files(dir.path()).len();
    assert!(
        segments > KILLS,
        "the kills fell among roll-overs: {segments} segments"
    );
}
