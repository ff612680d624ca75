//! How many records per second the log makes durable, for each way of preallocating segments,
//! with one `fdatasync` per record and per group of 32, and what creating a segment costs.
//!
//! Each round opens a fresh log in a temporary directory on the filesystem of `TMPDIR` (so
//! point it at the disk Tollgate's data dir will live on), then loops: append `group` records of
//! `--record-bytes` (200), flush, sync; for `--seconds` (1) per round. This is the owner thread and the
//! syncer in one thread, so the figure is the disk's sync rate times the group size, the upper
//! bound a pipelined syncer approaches.
//!
//! `cargo bench -p tollgate-log --bench append [-- --seconds S --record-bytes B]`.
//! Under `cargo test --benches` (no `--bench` flag) it runs a tiny smoke round instead: it is a
//! benchmark, never a timed test, and nothing here asserts a speed.

use std::time::{Duration, Instant};

use tollgate_log::{LogOptions, LogWriter, Preallocation, SEGMENT_BYTES_DEFAULT};

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
            seconds: 1.0,
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

/// Durable appends per second and the mean time of one append+flush+sync group.
fn round(o: &Options, prealloc: Preallocation, group: usize) -> (f64, Duration) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let opts = LogOptions {
        segment_bytes: o.segment_bytes,
    };
    let (mut log, _) = LogWriter::open_with(dir.path(), opts, prealloc).expect("open");
    let payload = vec![0x5Au8; o.record_bytes];
    let deadline = Duration::from_secs_f64(o.seconds);
    let start = Instant::now();
    let mut records = 0u64;
    let mut groups = 0u64;
    while start.elapsed() < deadline {
        for _ in 0..group {
            log.append(1, &payload);
        }
        log.flush().expect("flush").sync().expect("sync");
        records += group as u64;
        groups += 1;
    }
    let elapsed = start.elapsed();
    (
        records as f64 / elapsed.as_secs_f64(),
        elapsed / groups.max(1) as u32,
    )
}

/// Time to create one segment (what a roll-over adds to the flush that causes it).
fn creation(o: &Options, prealloc: Preallocation) -> Duration {
    let dir = tempfile::tempdir().expect("temporary directory");
    let opts = LogOptions {
        segment_bytes: o.segment_bytes,
    };
    let start = Instant::now();
    let _log = LogWriter::open_with(dir.path(), opts, prealloc).expect("open");
    start.elapsed()
}

/// Rounds of each (preallocation, group) pair, interleaved so that other load on the machine
/// falls on every pair alike; the table shows the median round.
const ROUNDS: usize = 5;

fn main() {
    let o = parse();
    println!(
        "record {} B payload (+{} B frame), segment {} B, {ROUNDS} interleaved rounds of {} s",
        o.record_bytes,
        tollgate_log::RECORD_HEADER_BYTES,
        o.segment_bytes,
        o.seconds
    );
    let modes = [
        Preallocation::None,
        Preallocation::Fallocate,
        Preallocation::ZeroFill,
    ];
    let pairs: Vec<(Preallocation, usize)> =
        modes.iter().flat_map(|&m| [(m, 1), (m, 32)]).collect();
    let mut rates = vec![Vec::new(); pairs.len()];
    let mut creates = vec![Vec::new(); modes.len()];
    for _ in 0..ROUNDS {
        for (i, &m) in modes.iter().enumerate() {
            creates[i].push(creation(&o, m));
        }
        for (i, &(m, group)) in pairs.iter().enumerate() {
            rates[i].push(round(&o, m, group));
        }
    }
    println!(
        "{:<10} {:>6} {:>12} {:>12} {:>12} {:>16}",
        "prealloc", "group", "appends/s", "(min", "max)", "segment create"
    );
    for (i, &(m, group)) in pairs.iter().enumerate() {
        let r = &mut rates[i];
        r.sort_by(|a, b| a.0.total_cmp(&b.0));
        let c = &mut creates[i / 2];
        c.sort();
        println!(
            "{:<10} {:>6} {:>12.0} {:>12.0} {:>12.0} {:>13.1} ms",
            format!("{m:?}"),
            group,
            r[r.len() / 2].0,
            r[0].0,
            r[r.len() - 1].0,
            c[c.len() / 2].as_secs_f64() * 1e3
        );
    }
}
