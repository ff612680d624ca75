//! Time: RFC 3339 `...Z` <-> unix seconds, civil calendar (no date crate among the dev-deps),
//! and assertions on the timestamps of answers.

use serde_json::Value;

pub const MINUTE: i64 = 60;
pub const HOUR: i64 = 3600;
pub const DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of days since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn days_in_month(y: i64, m: i64) -> i64 {
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    days_from_civil(ny, nm, 1) - days_from_civil(y, m, 1)
}

pub fn unix(y: i64, m: i64, d: i64, hh: i64, mm: i64, ss: i64) -> i64 {
    days_from_civil(y, m, d) * DAY + hh * HOUR + mm * MINUTE + ss
}

/// `t` plus `n` calendar months, the day clamped to the target month's end (Jan 31 + 1 = Feb 28).
pub fn add_months(t: i64, n: i64) -> i64 {
    let (y, m, d) = civil_from_days(t.div_euclid(DAY));
    let secs = t.rem_euclid(DAY);
    let total = y * 12 + (m - 1) + n;
    let (ny, nm) = (total.div_euclid(12), total.rem_euclid(12) + 1);
    let nd = d.min(days_in_month(ny, nm));
    days_from_civil(ny, nm, nd) * DAY + secs
}

/// RFC 3339 in UTC with `Z`, second precision.
pub fn fmt_ts(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(DAY));
    let s = t.rem_euclid(DAY);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / HOUR,
        s % HOUR / MINUTE,
        s % MINUTE
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` into unix milliseconds; panics on anything else (API.md
/// §1: UTC with `Z`, millisecond precision at most).
#[track_caller]
pub fn parse_ts_ms(s: &str) -> i64 {
    let bad = || -> ! { panic!("not an RFC 3339 UTC timestamp with Z: {s:?}") };
    let b = s.as_bytes();
    if b.len() < 20
        || !s.ends_with('Z')
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        bad();
    }
    let num = |r: std::ops::Range<usize>| -> i64 {
        s.get(r)
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| bad())
    };
    let (y, mo, d, h, mi, se) = (
        num(0..4),
        num(5..7),
        num(8..10),
        num(11..13),
        num(14..16),
        num(17..19),
    );
    let frac = &s[19..s.len() - 1];
    let ms = if frac.is_empty() {
        0
    } else {
        let digits = frac.strip_prefix('.').unwrap_or_else(|| bad());
        if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|c| c.is_ascii_digit()) {
            bad();
        }
        format!("{digits:0<3}").parse::<i64>().unwrap()
    };
    unix(y, mo, d, h, mi, se) * 1000 + ms
}

/// A JSON timestamp in unix seconds (milliseconds dropped).
#[track_caller]
pub fn ts_secs(v: &Value) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("expected a timestamp string, got {v}"));
    parse_ts_ms(s).div_euclid(1000)
}

/// A JSON timestamp in unix milliseconds.
#[track_caller]
pub fn ts_ms(v: &Value) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("expected a timestamp string, got {v}"));
    parse_ts_ms(s)
}

/// Asserts a JSON timestamp is exactly `t` (unix seconds).
#[track_caller]
pub fn assert_ts(v: &Value, t: i64, what: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected timestamp {}, got {v}", fmt_ts(t)));
    assert_eq!(
        parse_ts_ms(s),
        t * 1000,
        "{what}: expected {}, got {s}",
        fmt_ts(t)
    );
}

/// Asserts a JSON timestamp is within `tolerance` seconds of `t`.
#[track_caller]
pub fn assert_ts_near(v: &Value, t: i64, tolerance: i64, what: &str) {
    let got = ts_secs(v);
    assert!(
        (got - t).abs() <= tolerance,
        "{what}: expected about {} (±{tolerance}s), got {v}",
        fmt_ts(t)
    );
}
