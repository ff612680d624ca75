//! The bytes on disk: the segment header and the record frame, encoded and decoded in one place
//! so the writer, the recovery scan and the reader cannot disagree about them.

use crate::Lsn;

/// The first five bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 5] = *b"TGLOG";
/// The segment format this binary writes, stored in every segment header. A reader refuses a
/// segment with a newer format instead of guessing at it.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes of the segment header: magic (5), format version (1), reserved zeros (2), first lsn (8).
pub const SEGMENT_HEADER_BYTES: u64 = 16;
/// Bytes of a record's frame before its payload: len (4), crc (4), lsn (8), version (1). This is
/// the whole per-record overhead of the log.
pub const RECORD_HEADER_BYTES: u64 = 17;
/// Largest payload of one record. A bigger one is the caller's bug (see `LogWriter::append`);
/// the recovery scan also reads a larger length field as damage, never as an allocation size.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 16 << 20;

pub(crate) fn encode_segment_header(first_lsn: Lsn) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
    h[..5].copy_from_slice(&SEGMENT_MAGIC);
    h[5] = FORMAT_VERSION;
    h[8..16].copy_from_slice(&first_lsn.to_le_bytes());
    h
}

/// Reads a segment header; the error is the reason it is not one.
pub(crate) fn decode_segment_header(bytes: &[u8]) -> Result<Lsn, String> {
    let Some(h) = bytes.get(..SEGMENT_HEADER_BYTES as usize) else {
        return Err(format!(
            "segment header needs {SEGMENT_HEADER_BYTES} bytes, file has {}",
            bytes.len()
        ));
    };
    if h[..5] != SEGMENT_MAGIC {
        return Err("bad magic (not a TGLOG segment)".to_owned());
    }
    if h[5] == 0 || h[5] > FORMAT_VERSION {
        return Err(format!(
            "segment format {} (this binary reads 1..={FORMAT_VERSION})",
            h[5]
        ));
    }
    Ok(le_u64(&h[8..16]))
}

/// Appends one framed record to `buf`.
pub(crate) fn encode_record(buf: &mut Vec<u8>, lsn: Lsn, version: u8, payload: &[u8]) {
    let start = buf.len();
    let len = u32::try_from(payload.len()).expect("payload length checked against the max");
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.push(version);
    buf.extend_from_slice(payload);
    let crc = crc32c::crc32c(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The fixed part of a record, read before its payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameHeader {
    pub len: u32,
    pub crc: u32,
    pub lsn: Lsn,
    pub version: u8,
}

impl FrameHeader {
    pub fn parse(h: &[u8; RECORD_HEADER_BYTES as usize]) -> FrameHeader {
        FrameHeader {
            len: le_u32(&h[0..4]),
            crc: le_u32(&h[4..8]),
            lsn: le_u64(&h[8..16]),
            version: h[16],
        }
    }

    /// Bytes of preallocated (zeroed) space read as a header: the end of the written log.
    pub fn is_zero(&self) -> bool {
        self.len == 0 && self.crc == 0 && self.lsn == 0 && self.version == 0
    }

    /// Why this header cannot start the record numbered `expected`, judged before the payload
    /// is read (so a damaged length is never used as a size).
    pub fn check_before_payload(&self, expected: Lsn) -> Result<(), String> {
        if self.is_zero() {
            return Err("zeroed header (end of written data)".to_owned());
        }
        if self.len as usize > RECORD_PAYLOAD_BYTES_MAX {
            return Err(format!(
                "length {} exceeds the record max {RECORD_PAYLOAD_BYTES_MAX}",
                self.len
            ));
        }
        if self.lsn != expected {
            return Err(format!("lsn {} where {expected} was expected", self.lsn));
        }
        Ok(())
    }

    /// Whether the checksum covers this header's lsn and version and `payload`.
    pub fn checksum_ok(&self, payload: &[u8]) -> bool {
        let mut tail = [0u8; 9];
        tail[..8].copy_from_slice(&self.lsn.to_le_bytes());
        tail[8] = self.version;
        crc32c::crc32c_append(crc32c::crc32c(&tail), payload) == self.crc
    }
}

/// One record decoded from a slice: its header and where the next record starts.
pub(crate) struct Decoded {
    pub header: FrameHeader,
    pub next: usize,
}

/// Decodes the record numbered `expected` at `at` in `buf` (a whole segment in memory).
pub(crate) fn decode_at(buf: &[u8], at: usize, expected: Lsn) -> Result<Decoded, String> {
    let hb = RECORD_HEADER_BYTES as usize;
    let Some(h) = buf.get(at..at + hb) else {
        return Err(format!(
            "partial record header ({} of {hb} bytes)",
            buf.len().saturating_sub(at)
        ));
    };
    let header = FrameHeader::parse(h.try_into().expect("slice of RECORD_HEADER_BYTES"));
    header.check_before_payload(expected)?;
    let payload_start = at + hb;
    let next = payload_start + header.len as usize;
    let Some(payload) = buf.get(payload_start..next) else {
        return Err(format!(
            "partial record ({} of {} payload bytes)",
            buf.len() - payload_start,
            header.len
        ));
    };
    if !header.checksum_ok(payload) {
        return Err("checksum mismatch".to_owned());
    }
    Ok(Decoded { header, next })
}

/// The first offset from `from` on holding a whole, checksummed record numbered above `after`,
/// if any. Used after a damaged record to tell a torn tail (nothing valid follows, safe to cut)
/// from damage in the middle (acknowledged records follow, refuse to start).
pub(crate) fn find_valid_after(buf: &[u8], from: usize, after: Lsn) -> Option<(usize, Lsn)> {
    let hb = RECORD_HEADER_BYTES as usize;
    // Every record takes at least a header, so no lsn in this segment can be higher than this.
    let lsn_max = after.saturating_add((buf.len().saturating_sub(from) / hb) as u64 + 1);
    // A record starts with a non-zero length or lsn, so no later start needs trying than the
    // last non-zero byte.
    let last_nonzero = buf.iter().rposition(|&b| b != 0)?;
    let last_start = buf.len().checked_sub(hb)?.min(last_nonzero);
    // `from` itself too: a whole record there with a higher lsn means records are missing.
    for at in from..=last_start {
        let h: &[u8; RECORD_HEADER_BYTES as usize] = buf[at..at + hb]
            .try_into()
            .expect("slice of RECORD_HEADER_BYTES");
        let header = FrameHeader::parse(h);
        if header.lsn <= after || header.lsn > lsn_max {
            continue;
        }
        if header.len as usize > RECORD_PAYLOAD_BYTES_MAX {
            continue;
        }
        let Some(payload) = buf.get(at + hb..at + hb + header.len as usize) else {
            continue;
        };
        if header.checksum_ok(payload) {
            return Some((at, header.lsn));
        }
    }
    None
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_its_overhead_is_the_header() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 7, 3, b"hello");
        assert_eq!(buf.len() as u64, RECORD_HEADER_BYTES + 5);
        let d = decode_at(&buf, 0, 7).expect("valid record");
        assert_eq!(d.header.version, 3);
        assert_eq!(&buf[RECORD_HEADER_BYTES as usize..d.next], b"hello");
        assert!(decode_at(&buf, 0, 8).is_err(), "wrong lsn is refused");
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 1, 1, &[0xAB; 200]);
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(decode_at(&bad, 0, 1).is_err(), "flip at {byte}:{bit}");
            }
        }
    }

    #[test]
    fn segment_header_round_trips_and_refuses_a_newer_format() {
        let h = encode_segment_header(42);
        assert_eq!(decode_segment_header(&h), Ok(42));
        let mut newer = h;
        newer[5] = FORMAT_VERSION + 1;
        assert!(decode_segment_header(&newer).is_err());
        assert!(decode_segment_header(&h[..15]).is_err());
    }
}
