//! The single writer: opening (and recovering) the log, buffering appends, writing them to the
//! active segment in one `write(2)`, rolling segments, and handing the syncer what to sync.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::format::{
    decode_at, decode_segment_header, encode_record, find_valid_after, RECORD_HEADER_BYTES,
    RECORD_PAYLOAD_BYTES_MAX, SEGMENT_HEADER_BYTES,
};
use crate::segment::{self, Preallocation, SegmentFile};
use crate::{Cut, LogError, LogOptions, Lsn, Recovered};

/// What [`LogWriter::open`] preallocates new segments with: the faster of the measured choices
/// (see the crate doc, "Preallocation").
pub const PREALLOCATION_DEFAULT: Preallocation = Preallocation::ZeroFill;
/// Smallest accepted `segment_bytes`: a header and one empty record.
pub const SEGMENT_BYTES_MIN: u64 = SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES;
/// Largest accepted `segment_bytes`; a segment is read whole into memory by the recovery scan.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;
/// Capacity above which the append buffer is given back after a flush, so one large batch does
/// not pin its memory for the life of the process.
const BUFFER_KEEP_BYTES: usize = 4 << 20;

/// Appends records to the log. One owner: it is `Send`, not shared; syncing is handed off
/// through [`SyncPoint`].
///
/// After an I/O error in `flush` (a roll-over included) and after an oversized `append`, the
/// writer is failed: every later `flush` answers [`LogError::Failed`]. What it had
/// written may or may not be on disk ("fsyncgate": a failed write or sync proves nothing about
/// earlier pages), so the only way on is to reopen, which recovers from what is on disk.
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    segment_bytes: u64,
    prealloc: Preallocation,
    /// Segments before the active one, oldest first, with their file lengths.
    closed: VecDeque<(SegmentFile, u64)>,
    active: Active,
    /// Framed records appended since the last flush.
    buf: Vec<u8>,
    /// The lsn the next `append` hands out.
    next_lsn: Lsn,
    /// The last lsn written to the active segment by `flush`.
    flushed_lsn: Lsn,
    /// An oversized append not yet reported by `flush`: its lsn and size.
    too_large: Option<(Lsn, usize)>,
    /// Why the writer is failed, once it is.
    failed: Option<String>,
    /// The next segment, being prepared on a background thread.
    spare: Option<JoinHandle<io::Result<(File, u64)>>>,
    /// The directory, held open with an exclusive `flock` so a second writer (another process,
    /// or another `open` in this one) is refused instead of interleaving records.
    _lock: File,
}

#[derive(Debug)]
struct Active {
    seg: SegmentFile,
    file: Arc<File>,
    /// Where the next flush writes: the end of the valid records.
    write_at: u64,
    /// The file's length (beyond `write_at` when preallocated).
    len: u64,
}

/// What a syncer must `fdatasync` to make every record up to [`SyncPoint::lsn`] durable.
/// Records of earlier segments were synced when their segment was closed.
#[derive(Debug, Clone)]
pub struct SyncPoint {
    file: Arc<File>,
    lsn: Lsn,
}

impl SyncPoint {
    /// The last record this sync makes durable.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// `fdatasync` of the segment. An error means nothing about which records reached the disk:
    /// the caller answers every record not yet known durable as of unknown outcome and stops
    /// writing (no later sync could prove them).
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

impl LogWriter {
    /// Opens or creates the log in `dir`, scanning every segment. A torn or damaged tail of the
    /// last segment, with nothing valid after it, is cut (the file truncated and synced) and
    /// reported in [`Recovered::cut`]; damage anywhere else is [`LogError::Corrupt`], since
    /// records after it were acknowledged. New segments are preallocated with
    /// [`PREALLOCATION_DEFAULT`].
    pub fn open(dir: &Path, opts: LogOptions) -> Result<(LogWriter, Recovered), LogError> {
        Self::open_with(dir, opts, PREALLOCATION_DEFAULT)
    }

    /// [`LogWriter::open`] with an explicit preallocation of new segments (the benchmark
    /// compares them; a log written with one opens with any other).
    pub fn open_with(
        dir: &Path,
        opts: LogOptions,
        prealloc: Preallocation,
    ) -> Result<(LogWriter, Recovered), LogError> {
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&opts.segment_bytes) {
            return Err(LogError::InvalidOptions(format!(
                "segment_bytes {} outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
                opts.segment_bytes
            )));
        }
        fs::create_dir_all(dir)?;
        let lock = lock_dir(dir)?;
        let (segments, leftovers) = segment::list(dir)?;
        for tmp in leftovers {
            fs::remove_file(tmp)?;
        }
        let mut recovery = Recovery::new(prealloc, opts.segment_bytes);
        let count = segments.len();
        let mut closed = VecDeque::with_capacity(count);
        for (i, seg) in segments.into_iter().enumerate() {
            if i + 1 < count {
                let len = recovery.scan_closed(&seg)?;
                closed.push_back((seg, len));
            } else {
                recovery.scan_last(seg)?;
            }
        }
        let Recovery {
            last_lsn,
            cut,
            active,
            ..
        } = recovery;
        let active = match active {
            Some(active) => active,
            None => {
                let first_lsn = last_lsn + 1;
                let (file, len) = segment::create(dir, first_lsn, prealloc, opts.segment_bytes)?;
                Active {
                    seg: SegmentFile {
                        first_lsn,
                        path: segment::segment_path(dir, first_lsn),
                    },
                    file: Arc::new(file),
                    write_at: SEGMENT_HEADER_BYTES,
                    len: len.max(SEGMENT_HEADER_BYTES),
                }
            }
        };
        let writer = LogWriter {
            dir: dir.to_owned(),
            segment_bytes: opts.segment_bytes,
            prealloc,
            closed,
            active,
            buf: Vec::new(),
            next_lsn: last_lsn + 1,
            flushed_lsn: last_lsn,
            too_large: None,
            failed: None,
            spare: None,
            _lock: lock,
        };
        let mut writer = writer;
        writer.start_spare();
        Ok((writer, Recovered { last_lsn, cut }))
    }

    /// Buffers one record in memory and returns its lsn; no syscall. `version` is the caller's
    /// payload format, stored in the record so a newer binary can read older records.
    ///
    /// A payload over [`RECORD_PAYLOAD_BYTES_MAX`] is the caller's bug: the lsn is still handed
    /// out (the signature has no room for an error), nothing is buffered, and the writer is
    /// failed, so the next `flush` answers [`LogError::RecordTooLarge`] and every one after it
    /// [`LogError::Failed`]; none of the records appended since the last flush is written.
    /// [`LogWriter::try_append`] refuses such a payload instead and hands out no lsn.
    pub fn append(&mut self, version: u8, payload: &[u8]) -> Lsn {
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        if self.failed.is_some() || self.too_large.is_some() {
            return lsn;
        }
        if payload.len() > RECORD_PAYLOAD_BYTES_MAX {
            self.too_large = Some((lsn, payload.len()));
            self.buf.clear();
            return lsn;
        }
        encode_record(&mut self.buf, lsn, version, payload);
        lsn
    }

    /// [`LogWriter::append`] that refuses a payload over [`RECORD_PAYLOAD_BYTES_MAX`] with
    /// [`LogError::RecordTooLarge`], handing out no lsn and leaving the writer usable.
    pub fn try_append(&mut self, version: u8, payload: &[u8]) -> Result<Lsn, LogError> {
        if payload.len() > RECORD_PAYLOAD_BYTES_MAX {
            return Err(LogError::RecordTooLarge {
                lsn: None,
                bytes: payload.len(),
            });
        }
        if let Some(reason) = &self.failed {
            return Err(LogError::Failed(reason.clone()));
        }
        if self.too_large.is_some() {
            return Err(LogError::Failed(
                "an oversized append awaits its flush".to_owned(),
            ));
        }
        Ok(self.append(version, payload))
    }

    /// Writes the buffered records to the active segment in one `write(2)`, first rolling over
    /// to a new segment when they would take the active one past `segment_bytes` (the old one
    /// is `fdatasync`ed, the new one created and the directory synced). A batch larger than a
    /// whole segment goes alone into a segment of its own. Returns what a syncer must sync to
    /// make every record appended so far durable; with nothing buffered, a [`SyncPoint`] for
    /// the last lsn anyway.
    pub fn flush(&mut self) -> Result<SyncPoint, LogError> {
        if let Some((lsn, bytes)) = self.too_large.take() {
            self.failed = Some(format!(
                "record {lsn} of {bytes} bytes exceeded the max {RECORD_PAYLOAD_BYTES_MAX}"
            ));
            return Err(LogError::RecordTooLarge {
                lsn: Some(lsn),
                bytes,
            });
        }
        if let Some(reason) = &self.failed {
            return Err(LogError::Failed(reason.clone()));
        }
        if !self.buf.is_empty() {
            if let Err(e) = self.write_buffered() {
                self.failed = Some(format!("flush failed: {e}"));
                return Err(e);
            }
        }
        Ok(SyncPoint {
            file: Arc::clone(&self.active.file),
            lsn: self.flushed_lsn,
        })
    }

    fn write_buffered(&mut self) -> Result<(), LogError> {
        let bytes = self.buf.len() as u64;
        let has_records = self.active.write_at > SEGMENT_HEADER_BYTES;
        if has_records && self.active.write_at + bytes > self.segment_bytes {
            self.roll()?;
        }
        self.active
            .file
            .write_all_at(&self.buf, self.active.write_at)?;
        self.active.write_at += bytes;
        self.active.len = self.active.len.max(self.active.write_at);
        self.flushed_lsn = self.next_lsn - 1;
        self.buf.clear();
        if self.buf.capacity() > BUFFER_KEEP_BYTES {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Closes the active segment (synced, so every record in it is durable before a later
    /// segment exists) and makes a new one starting after the last flushed record.
    fn roll(&mut self) -> Result<(), LogError> {
        self.active.file.sync_data()?;
        let first_lsn = self.flushed_lsn + 1;
        let spare = self.spare.take().map(JoinHandle::join);
        let (file, len) = match spare {
            Some(Ok(Ok((file, len)))) => segment::install_spare(&self.dir, file, len, first_lsn)?,
            // No spare, or preparing it failed: make the segment here, which reports the
            // error if it persists.
            _ => segment::create(&self.dir, first_lsn, self.prealloc, self.segment_bytes)?,
        };
        let next = Active {
            seg: SegmentFile {
                first_lsn,
                path: segment::segment_path(&self.dir, first_lsn),
            },
            file: Arc::new(file),
            write_at: SEGMENT_HEADER_BYTES,
            len: len.max(SEGMENT_HEADER_BYTES),
        };
        let old = std::mem::replace(&mut self.active, next);
        self.closed.push_back((old.seg, old.len));
        self.start_spare();
        Ok(())
    }

    /// Starts preparing the segment after the active one, so a roll-over does not wait for
    /// its preallocation (zero-filling 64 MiB takes 50 to 150 ms here). Without a thread the
    /// roll-over creates the segment itself.
    fn start_spare(&mut self) {
        let (dir, prealloc, bytes) = (self.dir.clone(), self.prealloc, self.segment_bytes);
        self.spare = std::thread::Builder::new()
            .name("log-spare".to_owned())
            .spawn(move || segment::create_spare(&dir, prealloc, bytes))
            .ok();
    }

    /// Deletes the oldest segments all of whose records have an lsn `<= lsn`, never the active
    /// one, and syncs the directory. Returns how many files were deleted.
    pub fn delete_through(&mut self, lsn: Lsn) -> Result<usize, LogError> {
        let mut deleted = 0;
        while let Some((seg, _)) = self.closed.front() {
            let next_first = self
                .closed
                .get(1)
                .map_or(self.active.seg.first_lsn, |(s, _)| s.first_lsn);
            if next_first - 1 > lsn {
                break;
            }
            fs::remove_file(&seg.path)?;
            self.closed.pop_front();
            deleted += 1;
        }
        if deleted > 0 {
            segment::sync_dir(&self.dir)?;
        }
        Ok(deleted)
    }

    /// The last lsn handed out by `append`, flushed or not (after `open`, the last recovered).
    pub fn last_lsn(&self) -> Lsn {
        self.next_lsn - 1
    }

    /// The last lsn written to a segment by `flush` (durable once its [`SyncPoint`] is synced).
    pub fn flushed_lsn(&self) -> Lsn {
        self.flushed_lsn
    }

    /// Total bytes of segment files on disk, preallocated space included (the spare segment
    /// being prepared is not one yet).
    pub fn disk_bytes(&self) -> u64 {
        self.closed.iter().map(|(_, len)| len).sum::<u64>() + self.active.len
    }

    /// The directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for LogWriter {
    /// Waits for the spare segment's preparation, so a log reopened in the same process never
    /// races an earlier writer's thread over the spare file.
    fn drop(&mut self) {
        if let Some(spare) = self.spare.take() {
            let _ = spare.join();
        }
    }
}

/// Takes the exclusive lock on `dir` that a writer holds for its life. The kernel drops it when
/// the process dies, so a crash never leaves the log locked.
fn lock_dir(dir: &Path) -> Result<File, LogError> {
    let file = File::open(dir)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(LogError::Locked(dir.to_owned())),
        Err(e) => Err(LogError::Io(e.into())),
    }
}

/// The state of the scan `open` makes over every segment, oldest first.
struct Recovery {
    prealloc: Preallocation,
    segment_bytes: u64,
    /// One segment at a time, reused.
    buf: Vec<u8>,
    /// The last valid record seen so far (before any segment: the one before the first).
    last_lsn: Lsn,
    seen_any: bool,
    cut: Option<Cut>,
    active: Option<Active>,
}

/// Where the valid records of a segment end, and why.
struct Scanned {
    /// Offset just after the last valid record.
    end: usize,
    /// Why the record at `end` is not valid, when `end` is not the end of written data.
    damage: Option<String>,
}

impl Recovery {
    fn new(prealloc: Preallocation, segment_bytes: u64) -> Recovery {
        Recovery {
            prealloc,
            segment_bytes,
            buf: Vec::new(),
            last_lsn: 0,
            seen_any: false,
            cut: None,
            active: None,
        }
    }

    /// Reads `seg` whole, checks its header and its place after the previous segment, and
    /// walks its records.
    fn scan(&mut self, seg: &SegmentFile, file: &mut File) -> Result<Scanned, LogError> {
        self.buf.clear();
        file.read_to_end(&mut self.buf)?;
        let corrupt = |offset: u64, reason: String| LogError::Corrupt {
            segment: seg.path.clone(),
            offset,
            reason,
        };
        let first_lsn = decode_segment_header(&self.buf).map_err(|r| corrupt(0, r))?;
        if first_lsn != seg.first_lsn {
            return Err(corrupt(
                0,
                format!(
                    "header says first lsn {first_lsn}, name says {}",
                    seg.first_lsn
                ),
            ));
        }
        if self.seen_any && first_lsn != self.last_lsn + 1 {
            return Err(corrupt(
                0,
                format!(
                    "segment starts at lsn {first_lsn} but the previous one ends at {}",
                    self.last_lsn
                ),
            ));
        }
        if first_lsn == 0 {
            return Err(corrupt(0, "first lsn 0 (lsns start at 1)".to_owned()));
        }
        self.seen_any = true;
        self.last_lsn = first_lsn - 1;
        let mut at = SEGMENT_HEADER_BYTES as usize;
        loop {
            match decode_at(&self.buf, at, self.last_lsn + 1) {
                Ok(d) => {
                    self.last_lsn = d.header.lsn;
                    at = d.next;
                }
                Err(_) if self.buf[at..].iter().all(|&b| b == 0) => {
                    return Ok(Scanned {
                        end: at,
                        damage: None,
                    })
                }
                Err(reason) => {
                    return Ok(Scanned {
                        end: at,
                        damage: Some(reason),
                    })
                }
            }
        }
    }

    /// A segment before the last: any damage is in acknowledged data.
    fn scan_closed(&mut self, seg: &SegmentFile) -> Result<u64, LogError> {
        let mut file = File::open(&seg.path)?;
        let scanned = self.scan(seg, &mut file)?;
        if let Some(reason) = scanned.damage {
            return Err(LogError::Corrupt {
                segment: seg.path.clone(),
                offset: scanned.end as u64,
                reason: format!("{reason} in a segment that is not the last"),
            });
        }
        Ok(self.buf.len() as u64)
    }

    /// The last segment: a damaged tail with nothing valid after it was never acknowledged
    /// (its sync had not returned) and is cut; the segment becomes the active one.
    fn scan_last(&mut self, seg: SegmentFile) -> Result<(), LogError> {
        let mut file = OpenOptions::new().read(true).write(true).open(&seg.path)?;
        let scanned = self.scan(&seg, &mut file)?;
        let end = scanned.end;
        let mut len = self.buf.len() as u64;
        if let Some(reason) = scanned.damage {
            if let Some((at, lsn)) = find_valid_after(&self.buf, end, self.last_lsn) {
                return Err(LogError::Corrupt {
                    segment: seg.path.clone(),
                    offset: end as u64,
                    reason: format!("{reason}, with a valid record (lsn {lsn}) after it at {at}"),
                });
            }
            let written = self
                .buf
                .iter()
                .rposition(|&b| b != 0)
                .map_or(end, |p| p + 1);
            file.set_len(end as u64)?;
            len = segment::preallocate(&file, end as u64, self.segment_bytes, self.prealloc)?;
            file.sync_all()?;
            self.cut = Some(Cut {
                segment: seg.path.clone(),
                offset: end as u64,
                bytes: (written - end) as u64,
                reason,
            });
        }
        self.active = Some(Active {
            seg,
            file: Arc::new(file),
            write_at: end as u64,
            len,
        });
        Ok(())
    }
}
