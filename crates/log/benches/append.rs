//! How many records per second the log makes durable, for each way of preallocating segments,
//! with one `fdatasync` per record and per group of 32, and what creating a segment costs.
//!
//! For each group size, three fresh logs (one per preallocation) in temporary directories on
//! the filesystem of `TMPDIR` (point it at the disk Tollgate's data dir will live on) take
//! turns: append `group` records of `--record-bytes` (200), flush, sync; for `--seconds` (10).
//! Taking turns group by group puts whatever else loads the machine on the three alike, which
//! separate runs on a shared machine do not. This is the owner thread and the syncer in one
//! thread, so the figure is the disk's sync rate times the group size, the bound a pipelined
//! syncer approaches.
//!
//! A second table runs the engine's shape: an owner thread appending for N callers that each
//! wait for their answer, and a syncer thread syncing the newest flush whenever it is idle.
//!
//! `cargo bench -p tollgate-log --bench append [-- --seconds S --record-bytes B]`.
//! Under `cargo test --benches` (no `--bench` flag) it runs a tiny smoke round instead: it is a
//! benchmark, never a timed test, and nothing here asserts a speed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tollgate_log::{LogOptions, LogWriter, Preallocation, SyncPoint, SEGMENT_BYTES_DEFAULT};

struct Options {
    seconds: f64,
    record_bytes: usize,
    segment_bytes: u64,
}

fn parse() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let mut o = if benching {
        Options {
            seconds: 10.0,
            record_bytes: 200,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
        }
    } else {
        Options {
            seconds: 0.05,
            record_bytes: 200,
            segment_bytes: 1 << 20,
        }
    };
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let value = |it: &mut std::slice::Iter<String>| -> String {
            it.next()
                .cloned()
                .unwrap_or_else(|| panic!("{a} needs a value"))
        };
        match a.as_str() {
            "--seconds" => o.seconds = value(&mut it).parse().expect("--seconds: a number"),
            "--record-bytes" => {
                o.record_bytes = value(&mut it).parse().expect("--record-bytes: an integer")
            }
            "--segment-bytes" => {
                o.segment_bytes = value(&mut it).parse().expect("--segment-bytes: an integer")
            }
            _ => {}
        }
    }
    o
}

/// Appends `group` records, flushes and syncs: one acknowledged group. Returns its duration.
fn group_commit(log: &mut LogWriter, payload: &[u8], group: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..group {
        log.append(1, payload);
    }
    log.flush().expect("flush").sync().expect("sync");
    start.elapsed()
}

/// Time to create one segment (what a roll-over would add to the flush that causes it without
/// the spare segment prepared in the background).
fn creation(o: &Options, prealloc: Preallocation) -> Duration {
    let dir = tempfile::tempdir().expect("temporary directory");
    let opts = LogOptions {
        segment_bytes: o.segment_bytes,
    };
    let start = Instant::now();
    let _log = LogWriter::open_with(dir.path(), opts, prealloc).expect("open");
    start.elapsed()
}

/// Time given to the spare segments' preparation before the logs are measured.
const SPARE_SETTLE: Duration = Duration::from_millis(1500);

const MODES: [Preallocation; 3] = [
    Preallocation::None,
    Preallocation::Fallocate,
    Preallocation::ZeroFill,
];

fn main() {
    let o = parse();
    println!(
        "record {} B payload (+{} B frame), segment {} B, {} s per group size, the three \
         logs taking turns group by group",
        o.record_bytes,
        tollgate_log::RECORD_HEADER_BYTES,
        o.segment_bytes,
        o.seconds
    );
    println!(
        "{:<10} {:>6} {:>12} {:>14} {:>14} {:>16}",
        "prealloc", "group", "appends/s", "p50 sync µs", "p99 sync µs", "segment create"
    );
    let payload = vec![0x5Au8; o.record_bytes];
    let creates: Vec<Duration> = MODES.iter().map(|&m| creation(&o, m)).collect();
    for group in [1usize, 32] {
        // One log per preallocation, all on the same disk, committing in turn: whatever else
        // loads the machine falls on the three alike.
        let dirs: Vec<_> = MODES
            .iter()
            .map(|_| tempfile::tempdir().expect("temporary directory"))
            .collect();
        let mut logs: Vec<LogWriter> = MODES
            .iter()
            .zip(&dirs)
            .map(|(&m, d)| {
                let opts = LogOptions {
                    segment_bytes: o.segment_bytes,
                };
                LogWriter::open_with(d.path(), opts, m).expect("open").0
            })
            .collect();
        // `open` prepares the next segment on a background thread; let it finish so its
        // writes do not fall into the measured syncs (in steady state it runs once per segment).
        std::thread::sleep(SPARE_SETTLE);
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); MODES.len()];
        let deadline = Duration::from_secs_f64(o.seconds);
        let start = Instant::now();
        let mut turn = 0;
        while start.elapsed() < deadline {
            // Rotate who goes first, so no log always follows the same one.
            for k in 0..MODES.len() {
                let i = (turn + k) % MODES.len();
                times[i].push(group_commit(&mut logs[i], &payload, group));
            }
            turn += 1;
        }
        for (i, m) in MODES.iter().enumerate() {
            let t = &mut times[i];
            let total: Duration = t.iter().sum();
            t.sort();
            let rate = (t.len() * group) as f64 / total.as_secs_f64();
            println!(
                "{:<10} {:>6} {:>12.0} {:>14.0} {:>14.0} {:>13.1} ms",
                format!("{m:?}"),
                group,
                rate,
                t[t.len() / 2].as_secs_f64() * 1e6,
                t[t.len() * 99 / 100].as_secs_f64() * 1e6,
                creates[i].as_secs_f64() * 1e3
            );
        }
    }
    pipelined_table(&o, &payload);
}

/// The engine's shape: an owner thread appends for `clients` callers that each wait for their
/// answer, flushes, and hands the newest [`SyncPoint`] to a syncer thread whenever it is idle;
/// groups form by themselves. Durable records per second and the mean group per sync.
fn pipelined(o: &Options, payload: &[u8], clients: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let opts = LogOptions {
        segment_bytes: o.segment_bytes,
    };
    let (mut log, _) = LogWriter::open(dir.path(), opts).expect("open");
    std::thread::sleep(SPARE_SETTLE);
    let durable = Arc::new(AtomicU64::new(0));
    let syncs = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::sync_channel::<SyncPoint>(1);
    let syncer = {
        let (durable, syncs) = (Arc::clone(&durable), Arc::clone(&syncs));
        std::thread::spawn(move || {
            for sp in rx {
                sp.sync().expect("sync");
                durable.store(sp.lsn(), Ordering::Release);
                syncs.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let deadline = Duration::from_secs_f64(o.seconds);
    let start = Instant::now();
    let mut waiting: Option<SyncPoint> = None;
    while start.elapsed() < deadline {
        // Every caller whose answer arrived sends its next request.
        let outstanding = log.last_lsn() - durable.load(Ordering::Acquire);
        for _ in outstanding..clients {
            log.append(1, payload);
        }
        if log.last_lsn() > log.flushed_lsn() {
            waiting = Some(log.flush().expect("flush"));
        }
        match waiting.take().map(|sp| tx.try_send(sp)) {
            Some(Err(mpsc::TrySendError::Full(sp))) => {
                waiting = Some(sp);
                std::thread::yield_now();
            }
            Some(Err(mpsc::TrySendError::Disconnected(_))) => panic!("syncer died"),
            Some(Ok(())) | None => std::thread::yield_now(),
        }
    }
    let elapsed = start.elapsed();
    let acked = durable.load(Ordering::Acquire);
    drop(tx);
    syncer.join().expect("syncer");
    let syncs = syncs.load(Ordering::Relaxed).max(1);
    (
        acked as f64 / elapsed.as_secs_f64(),
        acked as f64 / syncs as f64,
    )
}

fn pipelined_table(o: &Options, payload: &[u8]) {
    println!();
    println!(
        "pipelined (owner + syncer threads, {:?}), {} s each",
        tollgate_log::PREALLOCATION_DEFAULT,
        o.seconds
    );
    println!(
        "{:>8} {:>14} {:>16}",
        "clients", "durable/s", "records/sync"
    );
    for clients in [1, 50, 256] {
        let (rate, group) = pipelined(o, payload, clients);
        println!("{clients:>8} {rate:>14.0} {group:>16.1}");
    }
}
