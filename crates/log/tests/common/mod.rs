//! Helpers shared by the log's integration tests.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tollgate_log::{read_after, LogWriter, Preallocation, Record};

pub const MODES: [Preallocation; 3] = [
    Preallocation::None,
    Preallocation::Fallocate,
    Preallocation::ZeroFill,
];

/// The payload of record `lsn`: 10..60 bytes that name it, with no zero byte (so a zeroed tail
/// is never mistaken for data).
pub fn expected_payload(lsn: u64) -> Vec<u8> {
    let len = 10 + (lsn * 7 % 50) as usize;
    format!("record-{lsn}-").bytes().cycle().take(len).collect()
}

/// Appends records `first..first + count` (version `lsn % 3`) in groups of `group`, flushing
/// and syncing each group.
pub fn write_records(log: &mut LogWriter, first: u64, count: u64, group: u64) {
    let mut lsn = first;
    while lsn < first + count {
        let end = (lsn + group).min(first + count);
        while lsn < end {
            assert_eq!(log.append((lsn % 3) as u8, &expected_payload(lsn)), lsn);
            lsn += 1;
        }
        let sp = log.flush().expect("flush");
        assert_eq!(sp.lsn(), end - 1);
        sp.sync().expect("sync");
    }
}

pub fn all_records(dir: &Path) -> Vec<Record> {
    read_after(dir, 0)
        .expect("read_after")
        .collect::<Result<_, _>>()
        .expect("every record reads")
}

/// The segment files of `dir`, oldest first.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Rewrites `len` bytes of `path` at `at` through `f`.
pub fn damage(path: &Path, at: u64, len: usize, f: impl Fn(u8) -> u8) {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, at).unwrap();
    for b in &mut buf {
        *b = f(*b);
    }
    file.write_all_at(&buf, at).unwrap();
}
