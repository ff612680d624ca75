//! Reading records back after a position: startup replay and a projection that fell behind.
//! A reader streams segment by segment and never holds more than one record's payload.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use crate::format::{
    decode_segment_header, FrameHeader, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::segment::{self, SegmentFile};
use crate::{LogError, Lsn, Record};

/// Read buffer of a [`ReadAfter`] per open segment.
const READ_BUFFER_BYTES: usize = 256 << 10;

/// Every record with an lsn above `after`, in order, across segments, ending cleanly at the end
/// of the valid log (the first record of the last segment that is not whole and checksummed).
///
/// The segments are listed when this is called; one created later is read by a later call.
/// Records are read as they are on disk, flushed but perhaps not yet synced: a projection stops
/// at the lsn its syncer last made durable (`take_while`), or it could apply a record that a
/// crash then takes out of the log.
///
/// [`LogError::Gap`] when the oldest segment starts after `after + 1` (the records wanted were
/// deleted); damage in a segment before the last is an `Err` item ([`LogError::Corrupt`]), after
/// which the iterator ends.
pub fn read_after(dir: &Path, after: Lsn) -> Result<ReadAfter, LogError> {
    let (mut segments, _) = segment::list(dir)?;
    let Some(oldest) = segments.first() else {
        return Ok(ReadAfter::done());
    };
    let wanted = after.saturating_add(1);
    if oldest.first_lsn > wanted {
        return Err(LogError::Gap {
            after,
            first_lsn: oldest.first_lsn,
        });
    }
    // The segment holding `wanted` is the last one starting at or before it.
    let start = segments.partition_point(|s| s.first_lsn <= wanted) - 1;
    segments.drain(..start);
    Ok(ReadAfter {
        segments,
        next_segment: 0,
        current: None,
        expected: 0,
        offset: 0,
        after,
        done: false,
    })
}

/// The iterator of [`read_after`].
#[derive(Debug)]
pub struct ReadAfter {
    segments: Vec<SegmentFile>,
    next_segment: usize,
    current: Option<(usize, BufReader<File>)>,
    /// The lsn the next record must carry.
    expected: Lsn,
    /// Offset of the next record in the current segment.
    offset: u64,
    after: Lsn,
    done: bool,
}

/// What reading one record found.
enum Step {
    Record(Record),
    /// The end of the written data: the end of the file or preallocated zeros.
    EndOfData,
    /// Not a whole, checksummed record with the expected lsn: why.
    Damage(String),
}

impl ReadAfter {
    fn done() -> ReadAfter {
        ReadAfter {
            segments: Vec::new(),
            next_segment: 0,
            current: None,
            expected: 0,
            offset: 0,
            after: 0,
            done: true,
        }
    }

    fn open_next(&mut self) -> Result<bool, LogError> {
        let Some(seg) = self.segments.get(self.next_segment) else {
            return Ok(false);
        };
        let index = self.next_segment;
        self.next_segment += 1;
        let corrupt = |offset, reason| LogError::Corrupt {
            segment: seg.path.clone(),
            offset,
            reason,
        };
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, File::open(&seg.path)?);
        let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
        let n = read_full(&mut reader, &mut header)?;
        let first_lsn = decode_segment_header(&header[..n]).map_err(|r| corrupt(0, r))?;
        if first_lsn != seg.first_lsn {
            return Err(corrupt(
                0,
                format!(
                    "header says first lsn {first_lsn}, name says {}",
                    seg.first_lsn
                ),
            ));
        }
        if index > 0 && first_lsn != self.expected {
            return Err(corrupt(
                0,
                format!(
                    "segment starts at lsn {first_lsn} but the previous one ends at {}",
                    self.expected - 1
                ),
            ));
        }
        self.expected = first_lsn;
        self.offset = SEGMENT_HEADER_BYTES;
        self.current = Some((index, reader));
        Ok(true)
    }

    fn step(reader: &mut BufReader<File>, expected: Lsn) -> io::Result<Step> {
        let mut h = [0u8; RECORD_HEADER_BYTES as usize];
        let n = read_full(reader, &mut h)?;
        if n == 0 {
            return Ok(Step::EndOfData);
        }
        if n < h.len() && h[..n].iter().all(|&b| b == 0) {
            return Ok(Step::EndOfData);
        }
        if n < h.len() {
            return Ok(Step::Damage(format!("partial record header ({n} bytes)")));
        }
        let header = FrameHeader::parse(&h);
        if header.is_zero() {
            return Ok(Step::EndOfData);
        }
        if let Err(reason) = header.check_before_payload(expected) {
            return Ok(Step::Damage(reason));
        }
        let mut payload = vec![0u8; header.len as usize];
        let n = read_full(reader, &mut payload)?;
        if n < payload.len() {
            return Ok(Step::Damage(format!(
                "partial record ({n} of {} payload bytes)",
                header.len
            )));
        }
        if !header.checksum_ok(&payload) {
            return Ok(Step::Damage("checksum mismatch".to_owned()));
        }
        Ok(Step::Record(Record {
            lsn: header.lsn,
            version: header.version,
            payload,
        }))
    }

    fn next_record(&mut self) -> Result<Option<Record>, LogError> {
        loop {
            if self.current.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let (index, reader) = self.current.as_mut().expect("opened above");
            let index = *index;
            match Self::step(reader, self.expected)? {
                Step::Record(record) => {
                    self.expected += 1;
                    self.offset += RECORD_HEADER_BYTES + record.payload.len() as u64;
                    if record.lsn > self.after {
                        return Ok(Some(record));
                    }
                }
                // A closed segment ends at its end of file or in preallocated zeros; the next
                // segment's first lsn then proves nothing is missing (`open_next`).
                Step::EndOfData => {
                    self.current = None;
                    if index + 1 == self.segments.len() {
                        return Ok(None);
                    }
                }
                Step::Damage(reason) => {
                    self.current = None;
                    if index + 1 == self.segments.len() {
                        return Ok(None);
                    }
                    return Err(LogError::Corrupt {
                        segment: self.segments[index].path.clone(),
                        offset: self.offset,
                        reason: format!("{reason} in a segment that is not the last"),
                    });
                }
            }
        }
    }
}

impl Iterator for ReadAfter {
    type Item = Result<Record, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_record() {
            Ok(Some(record)) => Some(Ok(record)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Reads until `buf` is full or the file ends; returns how many bytes were read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
