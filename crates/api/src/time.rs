//! Timestamps on the wire: RFC 3339, written in UTC with `Z` and at most millisecond precision
//! (API.md §1).
//!
//! Every instant that enters through the API is cut to the millisecond on the way in, so what a
//! client sends, what is stored and what is shown back are the same instant.

use crate::field::FieldError;
use jiff::Timestamp;

/// `ts` cut to the millisecond (towards the past).
pub fn truncate_to_millis(ts: Timestamp) -> Timestamp {
    // Every millisecond of a valid timestamp is itself a valid timestamp.
    Timestamp::from_millisecond(ts.as_millisecond()).unwrap_or(ts)
}

/// `2026-11-28T21:00:00Z`, or `2026-11-28T21:00:00.25Z` with a fraction of a second.
pub fn format_timestamp(ts: Timestamp) -> String {
    truncate_to_millis(ts).to_string()
}

/// An RFC 3339 timestamp with an offset (`Z` or `+02:00`), cut to the millisecond.
pub fn parse_timestamp(field: &str, text: &str) -> Result<Timestamp, FieldError> {
    text.parse::<Timestamp>()
        .map(truncate_to_millis)
        .map_err(|_| {
            FieldError::new(
                field,
                "must be an RFC 3339 timestamp with an offset, e.g. 2026-11-28T21:00:00Z",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_utc_with_at_most_milliseconds() {
        let ts = parse_timestamp("t", "2026-11-28T22:00:00.123456+01:00").unwrap();
        assert_eq!(format_timestamp(ts), "2026-11-28T21:00:00.123Z");
        let ts = parse_timestamp("t", "2026-11-28T21:00:00Z").unwrap();
        assert_eq!(format_timestamp(ts), "2026-11-28T21:00:00Z");
    }

    #[test]
    fn timestamps_need_an_offset() {
        assert!(parse_timestamp("at", "2026-11-28T21:00:00").is_err());
        assert!(parse_timestamp("at", "yesterday").is_err());
        assert_eq!(parse_timestamp("at", "x").unwrap_err().field, "at");
    }
}
