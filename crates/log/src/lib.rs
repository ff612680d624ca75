//! Tollgate's command log: the durable truth of the embedded engine (issue 14). Each write of
//! the engine is one compact record appended here; the engine answers a caller only once the
//! record is synced; SQLite is filled behind from the log, and startup replays the log after
//! the position SQLite applied.
//!
//! # Who calls what
//!
//! One owner thread holds the [`LogWriter`]: it [`append`](LogWriter::append)s records (memory
//! only), [`flush`](LogWriter::flush)es a group of them to the active segment in one `write(2)`,
//! and hands the returned [`SyncPoint`] to a syncer thread, which calls
//! [`SyncPoint::sync`] (`fdatasync`) and only then answers the callers of every record up to
//! [`SyncPoint::lsn`]. The owner meanwhile appends the next group (pipelined group commit).
//! A projection thread reads records back with [`read_after`], and deletes nothing itself: the
//! owner calls [`LogWriter::delete_through`] with the position the projection made durable.
//!
//! # Format (version 1)
//!
//! The log is a directory of segment files `log-{first_lsn:020}.seg`, named after the lsn of
//! their first record so they sort in log order. An lsn (log sequence number) numbers records
//! from 1, with no gap, across segments.
//!
//! A segment starts with a 16-byte header: the magic `TGLOG` (5 bytes), the format version
//! (1 byte, [`FORMAT_VERSION`]), two zero bytes, and the first lsn (`u64`). Records follow
//! back to back, each framed as (little endian)
//!
//! ```text
//! [u32 len][u32 crc][u64 lsn][u8 version][payload: len bytes]
//! ```
//!
//! `len` is the payload's length, at most [`RECORD_PAYLOAD_BYTES_MAX`] (16 MiB); `version` is
//! the caller's payload format, so a newer binary can tell an older record from a new one;
//! `crc` is CRC-32C (Castagnoli) over `lsn`, `version` and the payload. The frame costs
//! [`RECORD_HEADER_BYTES`] = 17 bytes per record. CRC-32C, through the `crc32c` crate, because
//! the SSE4.2 and ARMv8 CPUs Tollgate runs on compute it in hardware (the crate falls back to
//! software elsewhere), and because it is the checksum storage logs settled on (ext4 and
//! Btrfs metadata, iSCSI, LevelDB and RocksDB logs) for its better error detection than the
//! IEEE polynomial at these lengths. `len` and `lsn` are checked before the checksum, so a
//! damaged length is never used as a size and a stale record (a different lsn) never passes.
//!
//! After the last record comes either the end of the file or zeros (preallocated space): a
//! record header of 17 zero bytes is the end of the written log, since a real record's `lsn`
//! is never 0.
//!
//! # Recovery
//!
//! [`LogWriter::open`] reads every segment. A record that is not whole, checksummed and
//! numbered one past the previous one ends the valid log. If what follows is all zeros, that
//! is the clean end. Otherwise, in the last segment, and when no whole checksummed record with
//! a higher lsn can be found anywhere after it (every offset is tried), it is a torn or damaged
//! tail that was never acknowledged: the segment is truncated there (and preallocated again),
//! synced, and the cut reported in [`Recovered::cut`]. Damage with a valid record after it, or
//! in any segment but the last, or a gap in lsns between segments, is [`LogError::Corrupt`]:
//! the log refuses to open rather than drop acknowledged records.
//!
//! A new segment is written (header, preallocated space) and synced under a temporary name
//! (`*.seg.tmp`), then renamed and the directory synced, so a segment under its real name always
//! has a whole header; `open` deletes temporary leftovers. Before a segment is created, the one
//! it follows is `fdatasync`ed, so every record of a closed segment is durable and a sync of the
//! active segment makes the whole log durable.
//!
//! # Preallocation
//!
//! A segment is zero-filled ([`Preallocation::ZeroFill`]) before it is used, so an `fdatasync`
//! of appended records writes data blocks only: no new file size, no unwritten extent to
//! convert, so on ext4 no journal commit beside the data. Zero-filling 64 MiB takes 50 to 150 ms
//! here, so the next segment (the spare, `log-spare.seg.tmp`) is prepared on a background
//! thread as soon as one becomes active, and a roll-over only writes its header, syncs it and
//! renames it. The cost is disk: every segment is written twice (zeros, then records), and
//! one spare segment more sits beside the log.
//!
//! `benches/append.rs`, 200-byte payloads, the three choices taking turns on one ext4 virtual
//! disk shared with other work (2026-12-01; two runs, 10 s and 5 s per cell, minutes apart,
//! the disk's flush latency varying between them):
//!
//! | preallocation | sync per record    | sync per 32 records  |
//! |---------------|--------------------|----------------------|
//! | none          | 365 / 392 appends/s | 8,393 / 15,110 appends/s  |
//! | fallocate     | 369 / 402 appends/s | 10,299 / 19,199 appends/s |
//! | zero-fill     | 358 / 396 appends/s | 11,054 / 20,607 appends/s |
//!
//! With one record per sync all three wait on the device's flush (~3 ms p50 here); with 32 per
//! sync zero-fill is 1.3× to 1.4× no preallocation, and its p99 sync was the lowest in both
//! runs. `fallocate` leaves unwritten extents whose conversion still goes through the journal.
//! In the engine's shape (owner and syncer threads, callers waiting for their answers, the
//! bench's second table) the second run made 9,997 durable records/s for 1 caller, 276,970/s
//! for 50 (50 records per sync) and 150,835/s for 256.
//!
//! # Limits
//!
//! [`RECORD_PAYLOAD_BYTES_MAX`] per record; `segment_bytes` in
//! [`SEGMENT_BYTES_MIN`]`..=`[`SEGMENT_BYTES_MAX`]; the recovery scan holds one segment in memory
//! at a time, a reader one record.

mod format;
mod reader;
mod segment;
mod writer;

use std::path::PathBuf;

pub use format::{
    FORMAT_VERSION, RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX, SEGMENT_HEADER_BYTES,
    SEGMENT_MAGIC,
};
pub use reader::{read_after, ReadAfter};
pub use segment::Preallocation;
pub use writer::{
    LogWriter, SyncPoint, PREALLOCATION_DEFAULT, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN,
};

/// Log sequence number: the position of a record in the log. The first record ever is 1; 0
/// means "before any record".
pub type Lsn = u64;

/// Default size of a segment file.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;

/// How the log is laid out on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// Size past which a flush starts a new segment (a segment holds at least one flush, so a
    /// larger batch makes one larger segment). Whole segments are the unit of deletion.
    pub segment_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
        }
    }
}

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    /// The caller's payload format version, as given to `append`.
    pub version: u8,
    pub payload: Vec<u8>,
}

/// What [`LogWriter::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The last valid record's lsn; 0 if the log has none (after deletions, the last record
    /// that ever existed: the next append continues the numbering).
    pub last_lsn: Lsn,
    /// The torn or damaged tail that was cut, if any.
    pub cut: Option<Cut>,
}

/// A tail of the last segment that `open` truncated: bytes that were written but never made
/// durable as whole records, so never acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub segment: PathBuf,
    /// Where the segment now ends (the end of its last valid record).
    pub offset: u64,
    /// How many bytes were dropped, up to the last non-zero byte (zeros after it were
    /// preallocated space, not data).
    pub bytes: u64,
    /// Why the record at `offset` was not valid.
    pub reason: String,
}

/// Why a log operation failed.
#[derive(thiserror::Error, Debug)]
pub enum LogError {
    #[error("log i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Damage the log cannot cut without losing acknowledged records. Nothing was changed on
    /// disk; an operator decides (restore, or truncate by hand knowing what is lost).
    #[error("corrupt log segment {}: at offset {offset}: {reason}", segment.display())]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A payload over [`RECORD_PAYLOAD_BYTES_MAX`]: from `try_append` (`lsn` None, nothing
    /// appended) or from the `flush` after such an `append` (`lsn` the one it was handed).
    #[error("record{} of {bytes} bytes exceeds the max of {} bytes", lsn.map(|l| format!(" {l}")).unwrap_or_default(), RECORD_PAYLOAD_BYTES_MAX)]
    RecordTooLarge { lsn: Option<Lsn>, bytes: usize },
    /// The writer failed earlier (an I/O error or an oversized append) and writes nothing more;
    /// reopen the log to go on from what is on disk.
    #[error("log writer failed earlier: {0}")]
    Failed(String),
    /// `read_after` was asked for records that were deleted.
    #[error("records after lsn {after} were deleted: the oldest segment starts at {first_lsn}")]
    Gap { after: Lsn, first_lsn: Lsn },
    /// Another writer holds the log (this process or another one).
    #[error("log {} is open in another writer", .0.display())]
    Locked(PathBuf),
    #[error("invalid log options: {0}")]
    InvalidOptions(String),
}
