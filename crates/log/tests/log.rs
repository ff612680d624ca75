//! The log through its public API on real files: round trips over segments, every torn tail,
//! damage in and before the tail, reading back, deletion, limits.

mod common;

use std::fs;
use std::path::Path;

use common::{all_records, damage, expected_payload, segment_files, write_records, MODES};
use tollgate_log::{
    read_after, LogError, LogOptions, LogWriter, Preallocation, RECORD_HEADER_BYTES,
    RECORD_PAYLOAD_BYTES_MAX, SEGMENT_HEADER_BYTES,
};

fn opts(segment_bytes: u64) -> LogOptions {
    LogOptions { segment_bytes }
}

fn open(
    dir: &Path,
    segment_bytes: u64,
    mode: Preallocation,
) -> (LogWriter, tollgate_log::Recovered) {
    LogWriter::open_with(dir, opts(segment_bytes), mode).expect("open")
}

fn assert_records(dir: &Path, last: u64) {
    let records = all_records(dir);
    assert_eq!(records.len() as u64, last, "record count");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.lsn, i as u64 + 1);
        assert_eq!(r.version, (r.lsn % 3) as u8);
        assert_eq!(r.payload, expected_payload(r.lsn), "payload of {}", r.lsn);
    }
}

#[test]
fn an_empty_log_opens_at_zero_and_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, rec) = LogWriter::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(rec.last_lsn, 0);
    assert_eq!(rec.cut, None);
    let sp = log.flush().unwrap();
    assert_eq!(sp.lsn(), 0);
    sp.sync().unwrap();
    assert_eq!(read_after(dir.path(), 0).unwrap().count(), 0);
    assert_eq!(segment_files(dir.path()).len(), 1);
}

#[test]
fn records_round_trip_over_segments_and_lsns_continue_after_reopen() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, rec) = open(dir.path(), 512, mode);
        assert_eq!(rec.last_lsn, 0);
        write_records(&mut log, 1, 100, 3);
        assert_eq!(log.last_lsn(), 100);
        drop(log);
        assert!(segment_files(dir.path()).len() > 3, "{mode:?}: rolled over");

        let (mut log, rec) = open(dir.path(), 512, mode);
        assert_eq!(
            rec,
            tollgate_log::Recovered {
                last_lsn: 100,
                cut: None
            },
            "{mode:?}"
        );
        assert_records(dir.path(), 100);
        write_records(&mut log, 101, 10, 4);
        drop(log);
        let (log, rec) = open(dir.path(), 512, mode);
        assert_eq!(rec.last_lsn, 110);
        assert_eq!(rec.cut, None);
        assert_records(dir.path(), 110);
        let on_disk: u64 = segment_files(dir.path())
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert_eq!(log.disk_bytes(), on_disk, "{mode:?}");
    }
}

#[test]
fn a_batch_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 256, Preallocation::None);
    write_records(&mut log, 1, 2, 2);
    write_records(&mut log, 3, 40, 40);
    write_records(&mut log, 43, 1, 1);
    drop(log);
    assert_eq!(segment_files(dir.path()).len(), 3);
    let (_, rec) = open(dir.path(), 256, Preallocation::None);
    assert_eq!(rec.last_lsn, 43);
    assert_records(dir.path(), 43);
}

/// The last record of a one-segment log of 5: where it starts and how long it is.
fn five_records(dir: &Path, mode: Preallocation) -> (u64, u64) {
    let (mut log, _) = open(dir, 4096, mode);
    write_records(&mut log, 1, 4, 2);
    let start = SEGMENT_HEADER_BYTES
        + (1..=4)
            .map(|l| RECORD_HEADER_BYTES + expected_payload(l).len() as u64)
            .sum::<u64>();
    write_records(&mut log, 5, 1, 1);
    (
        start,
        RECORD_HEADER_BYTES + expected_payload(5).len() as u64,
    )
}

#[test]
fn every_torn_tail_is_cut_and_the_log_goes_on() {
    for mode in MODES {
        let probe = tempfile::tempdir().unwrap();
        let (start, len) = five_records(probe.path(), mode);
        for lost in 1..=len {
            let dir = tempfile::tempdir().unwrap();
            five_records(dir.path(), mode);
            let seg = &segment_files(dir.path())[0];
            if mode == Preallocation::None {
                // The file ends inside the record: the rest never reached the disk.
                let f = fs::OpenOptions::new().write(true).open(seg).unwrap();
                f.set_len(start + len - lost).unwrap();
            } else {
                // Preallocated: the missing bytes read as zeros.
                damage(seg, start + len - lost, lost as usize, |_| 0);
            }
            let ctx = format!("{mode:?}, {lost} bytes lost");
            // A reader stops cleanly before the torn record, before any recovery ran.
            assert_eq!(all_records(dir.path()).len(), 4, "{ctx}");
            let (log, rec) = open(dir.path(), 4096, mode);
            assert_eq!(rec.last_lsn, 4, "{ctx}");
            if lost == len {
                assert_eq!(rec.cut, None, "{ctx}: a record never begun is no cut");
            } else {
                let cut = rec.cut.unwrap_or_else(|| panic!("{ctx}: cut reported"));
                assert_eq!(cut.segment, *seg);
                assert_eq!(cut.offset, start, "{ctx}");
                assert!(cut.bytes >= 1 && cut.bytes <= len - lost, "{ctx}: {cut:?}");
            }
            assert_records(dir.path(), 4);
            // The cut is on disk: opening again finds a clean log.
            drop(log);
            let (mut log, rec) = open(dir.path(), 4096, mode);
            assert_eq!(
                rec,
                tollgate_log::Recovered {
                    last_lsn: 4,
                    cut: None
                },
                "{ctx}"
            );
            write_records(&mut log, 5, 2, 2);
            drop(log);
            let (_, rec) = open(dir.path(), 4096, mode);
            assert_eq!(
                rec,
                tollgate_log::Recovered {
                    last_lsn: 6,
                    cut: None
                },
                "{ctx}"
            );
            assert_records(dir.path(), 6);
        }
    }
}

#[test]
fn a_flipped_byte_in_the_last_record_is_cut() {
    let probe = tempfile::tempdir().unwrap();
    let (start, len) = five_records(probe.path(), Preallocation::ZeroFill);
    for at in start..start + len {
        let dir = tempfile::tempdir().unwrap();
        five_records(dir.path(), Preallocation::ZeroFill);
        let seg = &segment_files(dir.path())[0];
        damage(seg, at, 1, |b| b ^ 0x40);
        let (_, rec) = open(dir.path(), 4096, Preallocation::ZeroFill);
        assert_eq!(rec.last_lsn, 4, "flip at {at}");
        let cut = rec
            .cut
            .unwrap_or_else(|| panic!("flip at {at}: cut reported"));
        assert_eq!(cut.offset, start);
        assert_records(dir.path(), 4);
    }
}

#[test]
fn a_flipped_byte_before_valid_records_refuses_to_open() {
    let probe = tempfile::tempdir().unwrap();
    five_records(probe.path(), Preallocation::None);
    let third = SEGMENT_HEADER_BYTES
        + (1..=2)
            .map(|l| RECORD_HEADER_BYTES + expected_payload(l).len() as u64)
            .sum::<u64>();
    let len = RECORD_HEADER_BYTES + expected_payload(3).len() as u64;
    for at in third..third + len {
        let dir = tempfile::tempdir().unwrap();
        five_records(dir.path(), Preallocation::None);
        let seg = &segment_files(dir.path())[0];
        damage(seg, at, 1, |b| b ^ 0x01);
        let before = fs::read(seg).unwrap();
        match LogWriter::open_with(dir.path(), opts(4096), Preallocation::None) {
            Err(LogError::Corrupt {
                segment, offset, ..
            }) => {
                assert_eq!(segment, *seg);
                assert_eq!(offset, third, "flip at {at}");
            }
            other => panic!("flip at {at}: {other:?}"),
        }
        assert_eq!(fs::read(seg).unwrap(), before, "nothing changed on disk");
    }
}

#[test]
fn damage_in_a_segment_before_the_last_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 512, Preallocation::ZeroFill);
    write_records(&mut log, 1, 40, 1);
    drop(log);
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 3);
    // The last record of the second segment: a tail there is not a tail of the log.
    let data = fs::read(&segs[1]).unwrap();
    let written = data.iter().rposition(|&b| b != 0).unwrap() as u64;
    damage(&segs[1], written, 1, |b| b ^ 0xFF);
    let err = LogWriter::open_with(dir.path(), opts(512), Preallocation::ZeroFill).unwrap_err();
    assert!(
        matches!(err, LogError::Corrupt { ref segment, .. } if *segment == segs[1]),
        "{err}"
    );
    // A reader hands out the records before the damage, then the error, then nothing.
    let mut reader = read_after(dir.path(), 0).unwrap();
    let good = reader.by_ref().take_while(|r| r.is_ok()).count() as u64;
    assert_eq!(
        good + 1,
        first_lsn(&segs[2]) - 1,
        "all but the damaged record"
    );
    assert!(reader.next().is_none());
}

#[test]
fn a_missing_segment_in_the_middle_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 512, Preallocation::None);
    write_records(&mut log, 1, 40, 1);
    drop(log);
    let segs = segment_files(dir.path());
    fs::remove_file(&segs[1]).unwrap();
    let err = LogWriter::open_with(dir.path(), opts(512), Preallocation::None).unwrap_err();
    assert!(
        matches!(err, LogError::Corrupt { ref segment, offset: 0, .. } if *segment == segs[2]),
        "{err}"
    );
}

#[test]
fn read_after_returns_exactly_the_records_after_any_position() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 600, Preallocation::ZeroFill);
    write_records(&mut log, 1, 60, 5);
    assert!(segment_files(dir.path()).len() > 3);
    for after in 0..=62 {
        let lsns: Vec<u64> = read_after(dir.path(), after)
            .unwrap()
            .map(|r| r.unwrap().lsn)
            .collect();
        let want: Vec<u64> = (after + 1..=60).collect();
        assert_eq!(lsns, want, "after {after}");
    }
    // Flushed and not yet synced records are visible too; appended ones are not.
    log.append(1, &expected_payload(61));
    assert_eq!(read_after(dir.path(), 60).unwrap().count(), 0);
    log.flush().unwrap();
    assert_eq!(read_after(dir.path(), 60).unwrap().count(), 1);
}

#[test]
fn delete_through_deletes_whole_segments_and_never_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 600, Preallocation::None);
    write_records(&mut log, 1, 60, 5);
    let segs = segment_files(dir.path());
    let firsts: Vec<u64> = segs.iter().map(|p| first_lsn(p)).collect();
    assert!(firsts.len() >= 4, "{firsts:?}");

    // Through the lsn just before the second segment: only the first goes.
    assert_eq!(log.delete_through(firsts[1] - 2).unwrap(), 0);
    assert_eq!(log.delete_through(firsts[1] - 1).unwrap(), 1);
    assert_eq!(segment_files(dir.path()).len(), firsts.len() - 1);
    assert!(matches!(
        read_after(dir.path(), 0),
        Err(LogError::Gap { after: 0, first_lsn }) if first_lsn == firsts[1]
    ));
    let from: Vec<u64> = read_after(dir.path(), firsts[1] - 1)
        .unwrap()
        .map(|r| r.unwrap().lsn)
        .collect();
    assert_eq!(from, (firsts[1]..=60).collect::<Vec<_>>());

    // Everything: all but the active segment.
    let deleted = log.delete_through(u64::MAX).unwrap();
    assert_eq!(deleted, firsts.len() - 2);
    let left = segment_files(dir.path());
    assert_eq!(left.len(), 1);
    assert_eq!(first_lsn(&left[0]), *firsts.last().unwrap());
    let on_disk: u64 = left.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    assert_eq!(log.disk_bytes(), on_disk);
    drop(log);

    // The numbering goes on after a reopen, even with the earlier records gone.
    let (mut log, rec) = open(dir.path(), 600, Preallocation::None);
    assert_eq!(rec.last_lsn, 60);
    assert_eq!(log.append(1, b"x"), 61);
}

#[test]
fn an_empty_active_segment_after_deletion_keeps_the_numbering() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 300, Preallocation::None);
    write_records(&mut log, 1, 20, 1);
    drop(log);
    // A log whose only segment is a fresh, empty one starting at 21.
    for p in segment_files(dir.path()) {
        fs::remove_file(p).unwrap();
    }
    let (log, _) = open(dir.path(), 300, Preallocation::None);
    drop(log);
    let fresh = segment_files(dir.path());
    assert_eq!(first_lsn(&fresh[0]), 1);
    fs::rename(&fresh[0], dir.path().join("log-00000000000000000021.seg")).unwrap();
    // The header still says 1: refused.
    assert!(matches!(
        LogWriter::open_with(dir.path(), opts(300), Preallocation::None),
        Err(LogError::Corrupt { .. })
    ));
}

#[test]
fn interrupted_segment_creations_are_removed_and_other_files_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 4096, Preallocation::None);
    write_records(&mut log, 1, 3, 3);
    drop(log);
    let tmp = dir.path().join("log-00000000000000000004.seg.tmp");
    fs::write(&tmp, b"TGL").unwrap();
    let other = dir.path().join("notes.txt");
    fs::write(&other, b"mine").unwrap();
    let (_, rec) = open(dir.path(), 4096, Preallocation::None);
    assert_eq!(rec.last_lsn, 3);
    assert!(!tmp.exists());
    assert_eq!(fs::read(&other).unwrap(), b"mine");
}

#[test]
fn record_size_limit_just_inside_and_just_outside() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 1 << 20, Preallocation::None);
    let big = vec![7u8; RECORD_PAYLOAD_BYTES_MAX + 1];
    assert!(matches!(
        log.try_append(1, &big),
        Err(LogError::RecordTooLarge { lsn: None, bytes }) if bytes == big.len()
    ));
    assert_eq!(
        log.try_append(2, &big[1..]).unwrap(),
        1,
        "the max itself fits"
    );
    log.flush().unwrap().sync().unwrap();

    // `append` of an oversized payload fails the writer at the next flush.
    assert_eq!(log.append(1, b"before"), 2);
    assert_eq!(log.append(1, &big), 3);
    assert_eq!(log.append(1, b"after"), 4);
    assert!(matches!(
        log.flush(),
        Err(LogError::RecordTooLarge { lsn: Some(3), .. })
    ));
    assert!(matches!(log.flush(), Err(LogError::Failed(_))));
    assert!(matches!(log.try_append(1, b"x"), Err(LogError::Failed(_))));
    drop(log);
    let (_, rec) = open(dir.path(), 1 << 20, Preallocation::None);
    assert_eq!(rec.last_lsn, 1, "nothing of the failed batch was written");
    let records = all_records(dir.path());
    assert_eq!(records[0].payload.len(), RECORD_PAYLOAD_BYTES_MAX);
    assert_eq!(records[0].version, 2);
}

#[test]
fn segment_size_limits_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    for (bytes, ok) in [
        (tollgate_log::SEGMENT_BYTES_MIN - 1, false),
        (tollgate_log::SEGMENT_BYTES_MIN, true),
        (tollgate_log::SEGMENT_BYTES_MAX, true),
        (tollgate_log::SEGMENT_BYTES_MAX + 1, false),
    ] {
        let sub = dir.path().join(bytes.to_string());
        let r = LogWriter::open_with(&sub, opts(bytes), Preallocation::None);
        assert_eq!(r.is_ok(), ok, "{bytes}");
        if !ok {
            assert!(matches!(r, Err(LogError::InvalidOptions(_))));
        }
    }
}

#[test]
fn a_newer_segment_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 4096, Preallocation::None);
    write_records(&mut log, 1, 2, 1);
    drop(log);
    let seg = &segment_files(dir.path())[0];
    damage(seg, 5, 1, |_| tollgate_log::FORMAT_VERSION + 1);
    let err = LogWriter::open_with(dir.path(), opts(4096), Preallocation::None).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { offset: 0, .. }), "{err}");
    assert!(read_after(dir.path(), 0).unwrap().next().unwrap().is_err());
}

fn first_lsn(p: &Path) -> u64 {
    let name = p.file_name().unwrap().to_str().unwrap();
    name["log-".len().."log-".len() + 20].parse().unwrap()
}

#[test]
fn a_second_writer_is_refused_while_the_first_lives() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 4096, Preallocation::None);
    assert!(matches!(
        LogWriter::open_with(dir.path(), opts(4096), Preallocation::None),
        Err(LogError::Locked(_))
    ));
    drop(log);
    open(dir.path(), 4096, Preallocation::None);
}

#[test]
fn a_whole_record_after_a_missing_one_refuses_to_open() {
    // Records 1..=5 written, then record 4 taken out: 5 follows 3 directly.
    let dir = tempfile::tempdir().unwrap();
    five_records(dir.path(), Preallocation::None);
    let seg = &segment_files(dir.path())[0];
    let data = fs::read(seg).unwrap();
    let at = |l: u64| {
        (SEGMENT_HEADER_BYTES
            + (1..l)
                .map(|l| RECORD_HEADER_BYTES + expected_payload(l).len() as u64)
                .sum::<u64>()) as usize
    };
    let mut gapped = data[..at(4)].to_vec();
    gapped.extend_from_slice(&data[at(5)..]);
    fs::write(seg, &gapped).unwrap();
    let err = LogWriter::open_with(dir.path(), opts(4096), Preallocation::None).unwrap_err();
    assert!(
        matches!(err, LogError::Corrupt { offset, .. } if offset == at(4) as u64),
        "{err}"
    );
}

#[test]
fn a_reader_beside_a_live_writer_sees_a_growing_prefix() {
    const RECORDS: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 2048, Preallocation::ZeroFill);
    let writer = std::thread::spawn(move || {
        let mut lsn = 1;
        while lsn <= RECORDS {
            let group = (lsn % 7 + 1).min(RECORDS - lsn + 1);
            write_records_unsynced(&mut log, lsn, group);
            lsn += group;
        }
        log
    });
    let mut seen = 0;
    let start = std::time::Instant::now();
    while seen < RECORDS {
        for r in read_after(dir.path(), seen).unwrap() {
            let r = r.unwrap_or_else(|e| panic!("after {seen}: {e}"));
            assert_eq!(r.lsn, seen + 1);
            assert_eq!(r.payload, expected_payload(r.lsn));
            seen = r.lsn;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(60));
    }
    let log = writer.join().unwrap();
    assert_eq!(log.last_lsn(), RECORDS);
}

fn write_records_unsynced(log: &mut LogWriter, first: u64, count: u64) {
    for lsn in first..first + count {
        log.append((lsn % 3) as u8, &expected_payload(lsn));
    }
    log.flush().unwrap();
}

#[test]
fn the_writer_moves_to_its_owner_thread_and_sync_points_to_the_syncer() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<LogWriter>();
    send_sync::<tollgate_log::SyncPoint>();
    send::<tollgate_log::ReadAfter>();

    // A flush with nothing new answers for the same last lsn.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 4096, Preallocation::None);
    write_records(&mut log, 1, 3, 3);
    let again = log.flush().unwrap();
    assert_eq!(again.lsn(), 3);
    again.sync().unwrap();
    assert_eq!(log.flushed_lsn(), 3);
    log.append(1, b"buffered");
    assert_eq!((log.last_lsn(), log.flushed_lsn()), (4, 3));
}
