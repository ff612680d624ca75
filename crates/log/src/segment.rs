//! Segment files: their names, listing them in lsn order, and creating one so that a crash at
//! any moment leaves either no segment or a whole, synced header under the final name.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::format::{encode_segment_header, SEGMENT_HEADER_BYTES};
use crate::Lsn;

const NAME_PREFIX: &str = "log-";
const NAME_SUFFIX: &str = ".seg";
const TMP_SUFFIX: &str = ".seg.tmp";
/// The next segment, prepared before it is needed (a `*.seg.tmp` until it is given a name).
const SPARE_NAME: &str = "log-spare.seg.tmp";
/// Bytes of zeros written per `write(2)` when zero-filling a segment.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

/// How a new segment's space is reserved before records are written into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preallocation {
    /// The file grows with each write, so every `fdatasync` also writes the inode's new size.
    None,
    /// `fallocate(2)`: blocks reserved as unwritten extents. On ext4 and XFS the first write to
    /// an unwritten extent still converts it in the journal at `fdatasync`.
    Fallocate,
    /// The whole segment written with zeros and synced when it is created, so an `fdatasync`
    /// of a record writes only data blocks, no metadata.
    ZeroFill,
}

/// A segment file found in the log directory.
#[derive(Debug, Clone)]
pub(crate) struct SegmentFile {
    pub first_lsn: Lsn,
    pub path: PathBuf,
}

pub(crate) fn segment_path(dir: &Path, first_lsn: Lsn) -> PathBuf {
    dir.join(format!("{NAME_PREFIX}{first_lsn:020}{NAME_SUFFIX}"))
}

fn parse_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_prefix(NAME_PREFIX)?.strip_suffix(NAME_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments of `dir` in lsn order, and the leftovers of segment creations a crash
/// interrupted (`*.seg.tmp`). Other files are not the log's and are left alone.
pub(crate) fn list(dir: &Path) -> io::Result<(Vec<SegmentFile>, Vec<PathBuf>)> {
    let mut segments = Vec::new();
    let mut leftovers = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(first_lsn) = parse_name(name) {
            segments.push(SegmentFile {
                first_lsn,
                path: entry.path(),
            });
        } else if name.starts_with(NAME_PREFIX) && name.ends_with(TMP_SUFFIX) {
            leftovers.push(entry.path());
        }
    }
    segments.sort_by_key(|s| s.first_lsn);
    Ok((segments, leftovers))
}

/// Creates the segment whose first record is `first_lsn`: header and preallocated space are
/// written and synced under a temporary name, then renamed and the directory synced. Returns
/// the open file and its length.
pub(crate) fn create(
    dir: &Path,
    first_lsn: Lsn,
    prealloc: Preallocation,
    segment_bytes: u64,
) -> io::Result<(File, u64)> {
    let path = segment_path(dir, first_lsn);
    let tmp = path.with_extension("seg.tmp");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all_at(&encode_segment_header(first_lsn), 0)?;
    let len = preallocate(&file, SEGMENT_HEADER_BYTES, segment_bytes, prealloc)?;
    file.sync_all()?;
    fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok((file, len))
}

/// Prepares the next segment ahead of need (on a background thread): a temporary file with its
/// space reserved as `prealloc` says and synced, so the roll-over that takes it writes only the
/// header. Returns the file and its length.
pub(crate) fn create_spare(
    dir: &Path,
    prealloc: Preallocation,
    segment_bytes: u64,
) -> io::Result<(File, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join(SPARE_NAME))?;
    let len = preallocate(&file, 0, segment_bytes, prealloc)?;
    file.sync_all()?;
    Ok((file, len))
}

/// Turns a spare from [`create_spare`] into the segment starting at `first_lsn`: header written
/// and synced, then the file renamed and the directory synced (as [`create`] does).
pub(crate) fn install_spare(
    dir: &Path,
    file: File,
    len: u64,
    first_lsn: Lsn,
) -> io::Result<(File, u64)> {
    file.write_all_at(&encode_segment_header(first_lsn), 0)?;
    if len >= SEGMENT_HEADER_BYTES {
        // The header went into preallocated space: the file's size did not change.
        file.sync_data()?;
    } else {
        file.sync_all()?;
    }
    fs::rename(dir.join(SPARE_NAME), segment_path(dir, first_lsn))?;
    sync_dir(dir)?;
    Ok((file, len.max(SEGMENT_HEADER_BYTES)))
}

/// Reserves `[from, to)` of `file` as `prealloc` says and returns the file's length after.
/// A filesystem without `fallocate` gets no preallocation rather than an error.
pub(crate) fn preallocate(
    file: &File,
    from: u64,
    to: u64,
    prealloc: Preallocation,
) -> io::Result<u64> {
    if to <= from {
        return Ok(from);
    }
    match prealloc {
        Preallocation::None => Ok(from),
        Preallocation::Fallocate => {
            match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), from, to - from)
            {
                Ok(()) => Ok(to),
                Err(rustix::io::Errno::OPNOTSUPP) => Ok(from),
                Err(e) => Err(e.into()),
            }
        }
        Preallocation::ZeroFill => {
            let zeros = vec![0u8; ZERO_CHUNK_BYTES];
            let mut at = from;
            while at < to {
                let n = (to - at).min(ZERO_CHUNK_BYTES as u64) as usize;
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            Ok(to)
        }
    }
}

/// Makes the directory's entries (a created, renamed or deleted segment) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_lsn_and_only_segment_names_parse() {
        let p = segment_path(Path::new("/x"), 12);
        assert_eq!(p, Path::new("/x/log-00000000000000000012.seg"));
        assert_eq!(parse_name("log-00000000000000000012.seg"), Some(12));
        assert_eq!(parse_name("log-18446744073709551615.seg"), Some(u64::MAX));
        assert_eq!(parse_name("log-18446744073709551616.seg"), None);
        assert_eq!(parse_name("log-12.seg"), None);
        assert_eq!(parse_name("log-00000000000000000012.seg.tmp"), None);
        assert_eq!(parse_name("other"), None);
    }
}
