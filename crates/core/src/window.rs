//! Window arithmetic: which span of time a usage counter belongs to.
//!
//! Counters open lazily per window and are never zeroed, so "which window is `at` in?" must have
//! exactly one answer for every instant: windows of one kind tile time with no gap and no overlap,
//! across month ends, leap years and daylight-saving changes. This module is that answer, as pure
//! functions of their inputs. It performs no I/O and never reads the clock: the instant is always
//! a parameter.
//!
//! Calendar windows follow the local boundaries of an IANA time zone, in two ways. Minutes and
//! hours are lengths of real time: they follow the local clock in the UTC offset in force, so an
//! hour window is never longer than an hour and the hour a fall-back change repeats is a window of
//! its own. Days, weeks, months and years are civil: they run from one local midnight to another,
//! so a DST day lasts 23 or 25 hours. A civil boundary that falls in a DST gap starts at the first
//! instant after the gap; one that falls in a fold starts at its first occurrence.
//!
//! Subscription windows are billing cycles computed in UTC civil time from the anchor each time,
//! so a cycle anchored on the 31st clamps to a short month's end and returns to the 31st
//! afterwards.

use jiff::civil::{DateTime, Time};
use jiff::tz::{AmbiguousOffset, TimeZone, TimeZoneTransition};
use jiff::{SignedDuration, Span, Timestamp};

const SECONDS_PER_MINUTE: i64 = 60;
const SECONDS_PER_HOUR: i64 = 3_600;
const SECONDS_PER_DAY: i64 = 86_400;
const SECONDS_PER_WEEK: i64 = 7 * SECONDS_PER_DAY;
const MONTHS_PER_YEAR: i64 = 12;
const ONE_NANOSECOND: SignedDuration = SignedDuration::from_nanos(1);

/// The boundaries a calendar window can follow. Weeks start on Monday.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CalendarPeriod {
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl CalendarPeriod {
    /// Parses the wire name (`"minute"`, `"hour"`, `"day"`, `"week"`, `"month"`, `"year"`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "minute" => Some(Self::Minute),
            "hour" => Some(Self::Hour),
            "day" => Some(Self::Day),
            "week" => Some(Self::Week),
            "month" => Some(Self::Month),
            "year" => Some(Self::Year),
            _ => None,
        }
    }

    /// The wire name, the inverse of [`CalendarPeriod::parse`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Year => "year",
        }
    }
}

/// The unit of a billing interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntervalUnit {
    Day,
    Week,
    Month,
    Year,
}

impl IntervalUnit {
    /// Parses the wire name (`"day"`, `"week"`, `"month"`, `"year"`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "day" => Some(Self::Day),
            "week" => Some(Self::Week),
            "month" => Some(Self::Month),
            "year" => Some(Self::Year),
            _ => None,
        }
    }

    /// The wire name, the inverse of [`IntervalUnit::parse`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Year => "year",
        }
    }
}

/// A billing interval: `count` × `unit` (e.g. month × 1). count >= 1.
///
/// A count of 0 describes no cycle at all; the functions taking it answer
/// [`WindowError::OutOfRange`] rather than loop or divide by zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BillingInterval {
    pub unit: IntervalUnit,
    pub count: u32,
}

/// A half-open interval [start, end) of time. `end` is None only for lifetime windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowBounds {
    pub start: Timestamp,
    pub end: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("time out of range")]
    OutOfRange,
}

/// Every jiff failure here is an instant or span past what jiff can represent.
fn out_of_range(_: jiff::Error) -> WindowError {
    WindowError::OutOfRange
}

/// The calendar window of `period` in time zone `tz` containing `at`. Windows of one period tile
/// time: the end of one is the start of the next, with no gap and no overlap.
///
/// Minute and hour windows are real lengths of time (`clock_window`): at most one minute or one
/// hour long, cut where the zone's UTC offset changes, so the hour repeated by a fall-back change
/// is its own window. Day, Monday-week, month and year windows are civil (`civil_window`): from
/// one local boundary to the next, so a day across a DST change lasts 23 or 25 hours.
pub fn calendar_window(
    period: CalendarPeriod,
    tz: &TimeZone,
    at: Timestamp,
) -> Result<WindowBounds, WindowError> {
    match period {
        CalendarPeriod::Minute => clock_window(SECONDS_PER_MINUTE, tz, at),
        CalendarPeriod::Hour => clock_window(SECONDS_PER_HOUR, tz, at),
        CalendarPeriod::Day => civil_window(CivilPeriod::Day, tz, at),
        CalendarPeriod::Week => civil_window(CivilPeriod::Week, tz, at),
        CalendarPeriod::Month => civil_window(CivilPeriod::Month, tz, at),
        CalendarPeriod::Year => civil_window(CivilPeriod::Year, tz, at),
    }
}

/// The minute or hour window (`length_seconds` of 60 or 3,600) containing `at`.
///
/// The window is the local minute or hour of `at` read in the UTC offset in force at `at`, cut
/// to the stretch of time in which that offset holds:
///
/// - start = max(the local boundary of `at` in `at`'s offset, the latest offset change ≤ `at`),
/// - end = min(that boundary + `length_seconds`, the first offset change > `at`).
///
/// Between two offset changes the offset is fixed, so there the windows are the fixed offset's
/// grid of minutes or hours; cut at the changes, they tile time and none is longer than its
/// length. In Europe/Berlin on the fall-back night the first 02:00–03:00 (+02:00) is one window
/// and the repeated 02:00–03:00 (+01:00) the next. Where a zone shifts by a part of an hour the
/// hour around the change is shortened rather than lengthened: Australia/Lord_Howe's repeated
/// half hour (+10:30) and its half hour after the spring jump (+11:00) are 30-minute windows, as
/// is Pacific/Chatham's 02:00–02:45 before its jump. A transition that changes only a zone's
/// abbreviation or DST flag, not its offset, cuts nothing.
fn clock_window(
    length_seconds: i64,
    tz: &TimeZone,
    at: Timestamp,
) -> Result<WindowBounds, WindowError> {
    let local = tz.to_datetime(at);
    let seconds_into_hour =
        i64::from(local.minute()) * SECONDS_PER_MINUTE + i64::from(local.second());
    let since_boundary = SignedDuration::new(
        seconds_into_hour % length_seconds,
        local.subsec_nanosecond(),
    );
    let boundary = at.checked_sub(since_boundary).map_err(out_of_range)?;
    let boundary_end = boundary
        .checked_add(SignedDuration::from_secs(length_seconds))
        .map_err(out_of_range)?;

    // `preceding` yields transitions strictly before its argument, so ask from just after `at`
    // for the latest one at or before it. Only transitions inside the window can cut it, which
    // also bounds both searches to the handful of transitions within one hour.
    let just_after = at.checked_add(ONE_NANOSECOND).map_err(out_of_range)?;
    let mut start = boundary;
    for transition in tz
        .preceding(just_after)
        .take_while(|t| t.timestamp() > boundary)
    {
        if changes_offset(tz, &transition)? {
            start = transition.timestamp();
            break;
        }
    }
    let mut end = boundary_end;
    for transition in tz
        .following(at)
        .take_while(|t| t.timestamp() < boundary_end)
    {
        if changes_offset(tz, &transition)? {
            end = transition.timestamp();
            break;
        }
    }
    debug_assert!(start <= at && at < end, "clock window must contain `at`");
    Ok(WindowBounds {
        start,
        end: Some(end),
    })
}

/// Whether the UTC offset after `transition` differs from the one just before it. The time zone
/// database also records transitions that change only an abbreviation or the DST flag.
fn changes_offset(tz: &TimeZone, transition: &TimeZoneTransition<'_>) -> Result<bool, WindowError> {
    let just_before = transition
        .timestamp()
        .checked_sub(ONE_NANOSECOND)
        .map_err(out_of_range)?;
    Ok(tz.to_offset(just_before) != transition.offset())
}

/// The day, Monday-week, month or year window containing `at`: from the local boundary of `at`
/// in `tz` (start of day, Monday, month or year) to the next one. Across DST changes the window
/// keeps its local boundaries, so a day lasts 23 or 25 hours; a boundary in a gap starts at the
/// first instant after the gap, one in a fold at its first occurrence ([`boundary_instant`]).
fn civil_window(
    period: CivilPeriod,
    tz: &TimeZone,
    at: Timestamp,
) -> Result<WindowBounds, WindowError> {
    // Windows are [instant(b), instant(next b)) over the local boundaries b. The instant of a
    // boundary never decreases as b grows, so the window of `at` is the one of the last boundary
    // whose instant is <= `at`. Start from the boundary of `at`'s local time and correct by a
    // step when a transition moved it: a fold that crosses a boundary can make `at`'s local time
    // read as the earlier window although its instant is already past the next boundary.
    let mut boundary = period_floor(period, tz.to_datetime(at))?;
    let mut start = boundary_instant(tz, boundary)?;
    while start > at {
        boundary = period_step(period, boundary, -1)?;
        start = boundary_instant(tz, boundary)?;
    }
    let mut next = period_step(period, boundary, 1)?;
    let mut end = boundary_instant(tz, next)?;
    while end <= at {
        start = end;
        next = period_step(period, next, 1)?;
        end = boundary_instant(tz, next)?;
    }
    debug_assert!(start <= at && at < end, "calendar window must contain `at`");
    Ok(WindowBounds {
        start,
        end: Some(end),
    })
}

/// The periods whose windows run from one local boundary to the next, whatever their length in
/// real time.
#[derive(Debug, Clone, Copy)]
enum CivilPeriod {
    Day,
    Week,
    Month,
    Year,
}

/// The local boundary of `period` at or before `local`.
fn period_floor(period: CivilPeriod, local: DateTime) -> Result<DateTime, WindowError> {
    let date = local.date();
    let midnight = Time::midnight();
    let floor = match period {
        CivilPeriod::Day => Ok(local.start_of_day()),
        CivilPeriod::Week => {
            let since_monday = date.weekday().to_monday_zero_offset();
            Span::new()
                .try_days(since_monday)
                .and_then(|span| date.checked_sub(span))
                .map(|monday| monday.to_datetime(midnight))
        }
        CivilPeriod::Month => Ok(date.first_of_month().to_datetime(midnight)),
        CivilPeriod::Year => Ok(date.first_of_year().to_datetime(midnight)),
    };
    floor.map_err(out_of_range)
}

/// The local boundary `n` periods after `boundary` (before it when `n` is negative).
fn period_step(period: CivilPeriod, boundary: DateTime, n: i64) -> Result<DateTime, WindowError> {
    let span = match period {
        CivilPeriod::Day => Span::new().try_days(n),
        CivilPeriod::Week => Span::new().try_weeks(n),
        CivilPeriod::Month => Span::new().try_months(n),
        CivilPeriod::Year => Span::new().try_years(n),
    };
    span.and_then(|span| boundary.checked_add(span))
        .map_err(out_of_range)
}

/// The first instant whose local time in `tz` is at or after the local `boundary`.
///
/// That is the boundary's only instant when it is unambiguous, its first occurrence in a fold,
/// and the transition that ends the gap when it was skipped. jiff's "compatible" rule would shift
/// a skipped boundary by the gap's length instead, which for a gap starting between two
/// boundaries (a jump from 23:30 to 00:30 skips midnight) would put the boundary after instants
/// that belong to its window.
fn boundary_instant(tz: &TimeZone, boundary: DateTime) -> Result<Timestamp, WindowError> {
    let ambiguous = tz.to_ambiguous_timestamp(boundary);
    match ambiguous.offset() {
        AmbiguousOffset::Unambiguous { .. } | AmbiguousOffset::Fold { .. } => {
            ambiguous.earlier().map_err(out_of_range)
        }
        AmbiguousOffset::Gap { .. } => {
            // Read with the offset after the gap, the boundary is an instant before the
            // transition; read with the offset before it, an instant at or after. The
            // transition is the first one following the former.
            let before_transition = ambiguous.earlier().map_err(out_of_range)?;
            let after_transition = ambiguous.later().map_err(out_of_range)?;
            match tz.following(before_transition).next() {
                Some(transition) if transition.timestamp() <= after_transition => {
                    Ok(transition.timestamp())
                }
                _ => Ok(after_transition),
            }
        }
    }
}

/// The billing-cycle window containing `at` for a subscription anchored at `anchor`, with
/// cycles of `interval`. Cycle k starts at anchor + k×interval computed FROM THE ANCHOR each time
/// (never by iterating from the previous cycle) in UTC civil time, so a day-of-month past the end
/// of a short month clamps to its last day and returns afterwards:
/// anchor Jan 31 → Feb 28 (Feb 29 in a leap year) → Mar 31 → Apr 30 → May 31.
/// k may be negative when at < anchor (the cycles tile time in both directions).
/// Must be efficient for at far from anchor (compute k by arithmetic estimate then adjust, not by
/// looping thousands of times).
pub fn subscription_window(
    anchor: Timestamp,
    interval: BillingInterval,
    at: Timestamp,
) -> Result<WindowBounds, WindowError> {
    let mut k = estimate_cycle(anchor, interval, at)?;
    // The estimate is off by at most one cycle (clamping, time of day, sub-second parts), and
    // cycle starts strictly increase with k, so a step or two either way settles it.
    let mut start = cycle_start(anchor, interval, k)?;
    while start > at {
        k = k.checked_sub(1).ok_or(WindowError::OutOfRange)?;
        start = cycle_start(anchor, interval, k)?;
    }
    let mut end = cycle_start(anchor, interval, next_cycle(k)?)?;
    while end <= at {
        k = next_cycle(k)?;
        start = end;
        end = cycle_start(anchor, interval, next_cycle(k)?)?;
    }
    debug_assert!(start <= at && at < end, "billing cycle must contain `at`");
    Ok(WindowBounds {
        start,
        end: Some(end),
    })
}

fn next_cycle(k: i64) -> Result<i64, WindowError> {
    k.checked_add(1).ok_or(WindowError::OutOfRange)
}

/// A cycle number close to the one containing `at`, by arithmetic on the calendar fields.
fn estimate_cycle(
    anchor: Timestamp,
    interval: BillingInterval,
    at: Timestamp,
) -> Result<i64, WindowError> {
    let count = interval_count(interval)?;
    let estimate = match interval.unit {
        IntervalUnit::Day | IntervalUnit::Week => {
            let unit_seconds = fixed_unit_seconds(interval.unit);
            let elapsed = at.as_second() - anchor.as_second();
            elapsed.div_euclid(unit_seconds * count)
        }
        IntervalUnit::Month | IntervalUnit::Year => {
            let months_per_unit = if interval.unit == IntervalUnit::Year {
                MONTHS_PER_YEAR
            } else {
                1
            };
            let from = TimeZone::UTC.to_datetime(anchor);
            let to = TimeZone::UTC.to_datetime(at);
            let elapsed_months = (i64::from(to.year()) - i64::from(from.year())) * MONTHS_PER_YEAR
                + (i64::from(to.month()) - i64::from(from.month()));
            elapsed_months.div_euclid(months_per_unit * count)
        }
    };
    Ok(estimate)
}

/// The start of the billing cycle number `k` (0 = anchor) — exposed for renewal logic/tests.
pub fn cycle_start(
    anchor: Timestamp,
    interval: BillingInterval,
    k: i64,
) -> Result<Timestamp, WindowError> {
    let units = k
        .checked_mul(interval_count(interval)?)
        .ok_or(WindowError::OutOfRange)?;
    match interval.unit {
        IntervalUnit::Day | IntervalUnit::Week => {
            let seconds = units
                .checked_mul(fixed_unit_seconds(interval.unit))
                .ok_or(WindowError::OutOfRange)?;
            anchor
                .checked_add(SignedDuration::from_secs(seconds))
                .map_err(out_of_range)
        }
        IntervalUnit::Month => add_utc_months(anchor, units),
        IntervalUnit::Year => {
            let months = units
                .checked_mul(MONTHS_PER_YEAR)
                .ok_or(WindowError::OutOfRange)?;
            add_utc_months(anchor, months)
        }
    }
}

fn interval_count(interval: BillingInterval) -> Result<i64, WindowError> {
    if interval.count == 0 {
        return Err(WindowError::OutOfRange);
    }
    Ok(i64::from(interval.count))
}

/// Days and weeks are fixed lengths in UTC, which has no DST and (in jiff) no leap seconds.
fn fixed_unit_seconds(unit: IntervalUnit) -> i64 {
    match unit {
        IntervalUnit::Week => SECONDS_PER_WEEK,
        IntervalUnit::Day | IntervalUnit::Month | IntervalUnit::Year => SECONDS_PER_DAY,
    }
}

/// `anchor` plus `months` in UTC civil time; jiff clamps the day to the target month's length.
fn add_utc_months(anchor: Timestamp, months: i64) -> Result<Timestamp, WindowError> {
    let span = Span::new().try_months(months).map_err(out_of_range)?;
    let civil = TimeZone::UTC
        .to_datetime(anchor)
        .checked_add(span)
        .map_err(out_of_range)?;
    TimeZone::UTC.to_timestamp(civil).map_err(out_of_range)
}

/// A rolling window of `seconds` ending at `at`: counts usage with time in (at - seconds, at].
/// Returns bounds { start: at - seconds, end: Some(at) }.
pub fn rolling_window(seconds: u32, at: Timestamp) -> Result<WindowBounds, WindowError> {
    let start = at
        .checked_sub(SignedDuration::from_secs(i64::from(seconds)))
        .map_err(out_of_range)?;
    Ok(WindowBounds {
        start,
        end: Some(at),
    })
}

/// first_use windows: a fixed span of `seconds` that starts at the first use after the previous
/// one ended. `current` is the start of the most recently opened window for this counter (None if
/// never opened). If `at` < current + seconds, that window is still open and returned; otherwise a
/// new window starts at `at`.
///
/// A use stamped before `current` (a late or skewed timestamp) also counts in the open window:
/// a window once closed never reopens.
pub fn first_use_window(
    current: Option<Timestamp>,
    seconds: u32,
    at: Timestamp,
) -> Result<WindowBounds, WindowError> {
    let length = SignedDuration::from_secs(i64::from(seconds));
    if let Some(start) = current {
        let end = start.checked_add(length).map_err(out_of_range)?;
        if at < end {
            return Ok(WindowBounds {
                start,
                end: Some(end),
            });
        }
    }
    let end = at.checked_add(length).map_err(out_of_range)?;
    Ok(WindowBounds {
        start: at,
        end: Some(end),
    })
}

/// The lifetime window: { start: Timestamp::UNIX_EPOCH, end: None }.
pub fn lifetime_window() -> WindowBounds {
    WindowBounds {
        start: Timestamp::UNIX_EPOCH,
        end: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::Date;
    use jiff::Zoned;
    use proptest::prelude::*;

    const ONE_SECOND: SignedDuration = SignedDuration::from_secs(1);

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("valid timestamp literal")
    }

    /// An instant written as local time with offset and zone, e.g. `2025-03-09T03:00-04[...]`.
    fn local(s: &str) -> Timestamp {
        s.parse::<Zoned>().expect("valid zoned literal").timestamp()
    }

    fn zone(name: &str) -> TimeZone {
        TimeZone::get(name).expect("zone in the time zone database")
    }

    fn bounds(start: &str, end: &str) -> WindowBounds {
        WindowBounds {
            start: ts(start),
            end: Some(ts(end)),
        }
    }

    fn hours(window: WindowBounds) -> i64 {
        let end = window.end.expect("bounded window");
        end.duration_since(window.start).as_secs() / 3600
    }

    fn calendar(period: CalendarPeriod, tz: &str, at: &str) -> WindowBounds {
        calendar_window(period, &zone(tz), ts(at)).expect("in range")
    }

    fn monthly(count: u32) -> BillingInterval {
        BillingInterval {
            unit: IntervalUnit::Month,
            count,
        }
    }

    fn starts(anchor: &str, interval: BillingInterval, ks: std::ops::Range<i64>) -> Vec<String> {
        ks.map(|k| {
            cycle_start(ts(anchor), interval, k)
                .expect("in range")
                .to_string()
        })
        .collect()
    }

    #[test]
    fn period_and_unit_names_round_trip() {
        use CalendarPeriod as P;
        for period in [P::Minute, P::Hour, P::Day, P::Week, P::Month, P::Year] {
            assert_eq!(CalendarPeriod::parse(period.as_str()), Some(period));
        }
        use IntervalUnit as U;
        for unit in [U::Day, U::Week, U::Month, U::Year] {
            assert_eq!(IntervalUnit::parse(unit.as_str()), Some(unit));
        }
        assert_eq!(CalendarPeriod::parse("Day"), None);
        assert_eq!(CalendarPeriod::parse("fortnight"), None);
        assert_eq!(IntervalUnit::parse("hour"), None);
    }

    #[test]
    fn day_window_in_utc() {
        let window = calendar(CalendarPeriod::Day, "UTC", "2025-06-15T13:45:10Z");
        assert_eq!(
            window,
            bounds("2025-06-15T00:00:00Z", "2025-06-16T00:00:00Z")
        );
        // The boundary itself opens the next day; the last nanosecond is still the old one.
        let at_midnight = calendar(CalendarPeriod::Day, "UTC", "2025-06-16T00:00:00Z");
        assert_eq!(at_midnight.start, ts("2025-06-16T00:00:00Z"));
        let last_ns = calendar(CalendarPeriod::Day, "UTC", "2025-06-15T23:59:59.999999999Z");
        assert_eq!(last_ns.start, ts("2025-06-15T00:00:00Z"));
    }

    #[test]
    fn new_york_spring_forward_day_is_23_hours() {
        let window = calendar(
            CalendarPeriod::Day,
            "America/New_York",
            "2025-03-09T12:00:00Z",
        );
        assert_eq!(
            window,
            bounds("2025-03-09T05:00:00Z", "2025-03-10T04:00:00Z")
        );
        assert_eq!(hours(window), 23);
    }

    #[test]
    fn new_york_fall_back_day_is_25_hours() {
        let window = calendar(
            CalendarPeriod::Day,
            "America/New_York",
            "2025-11-02T06:30:00Z",
        );
        assert_eq!(
            window,
            bounds("2025-11-02T04:00:00Z", "2025-11-03T05:00:00Z")
        );
        assert_eq!(hours(window), 25);
    }

    #[test]
    fn berlin_dst_days_are_23_and_25_hours() {
        let spring = calendar(CalendarPeriod::Day, "Europe/Berlin", "2025-03-30T10:00:00Z");
        assert_eq!(
            spring,
            bounds("2025-03-29T23:00:00Z", "2025-03-30T22:00:00Z")
        );
        assert_eq!(hours(spring), 23);

        let autumn = calendar(CalendarPeriod::Day, "Europe/Berlin", "2025-10-26T10:00:00Z");
        assert_eq!(
            autumn,
            bounds("2025-10-25T22:00:00Z", "2025-10-26T23:00:00Z")
        );
        assert_eq!(hours(autumn), 25);
    }

    #[test]
    fn tokyo_day_starts_at_local_midnight() {
        // 2025-06-02T00:00+09:00 is 2025-06-01T15:00Z.
        let window = calendar(CalendarPeriod::Day, "Asia/Tokyo", "2025-06-01T15:00:00Z");
        assert_eq!(
            window,
            bounds("2025-06-01T15:00:00Z", "2025-06-02T15:00:00Z")
        );
        let before = calendar(
            CalendarPeriod::Day,
            "Asia/Tokyo",
            "2025-06-01T14:59:59.999999999Z",
        );
        assert_eq!(before.end, Some(ts("2025-06-01T15:00:00Z")));
    }

    #[test]
    fn day_starting_in_a_gap_starts_when_the_gap_ends() {
        // Sao Paulo sprang forward at midnight on 2018-11-04: 00:00-03 became 01:00-02.
        let window = calendar(
            CalendarPeriod::Day,
            "America/Sao_Paulo",
            "2018-11-04T12:00:00Z",
        );
        assert_eq!(
            window.start,
            local("2018-11-04T01:00-02[America/Sao_Paulo]")
        );
        assert_eq!(
            window.end,
            Some(local("2018-11-05T00:00-02[America/Sao_Paulo]"))
        );
        assert_eq!(hours(window), 23);
        let day_before = calendar(
            CalendarPeriod::Day,
            "America/Sao_Paulo",
            "2018-11-04T02:59:59Z",
        );
        assert_eq!(day_before.end, Some(window.start));
    }

    #[test]
    fn day_ending_in_a_midnight_fold_is_25_hours() {
        // Sao Paulo fell back at midnight on 2019-02-17: 00:00-02 became 23:00-03 of the 16th.
        let window = calendar(
            CalendarPeriod::Day,
            "America/Sao_Paulo",
            "2019-02-17T02:30:00Z",
        );
        assert_eq!(
            window.start,
            local("2019-02-16T00:00-02[America/Sao_Paulo]")
        );
        assert_eq!(
            window.end,
            Some(local("2019-02-17T00:00-03[America/Sao_Paulo]"))
        );
        assert_eq!(hours(window), 25);
    }

    #[test]
    fn hour_split_by_a_quarter_hour_gap() {
        // Chatham jumps from 02:45+12:45 to 03:45+13:45: local 03:00 never happens, so the
        // hour starting at 02:00 ends at the jump and the next window starts there.
        let tz = "Pacific/Chatham";
        let jump = local("2024-09-29T03:45+13:45[Pacific/Chatham]");
        let before = calendar(CalendarPeriod::Hour, tz, "2024-09-28T13:30:00Z");
        assert_eq!(
            before.start,
            local("2024-09-29T02:00+12:45[Pacific/Chatham]")
        );
        assert_eq!(before.end, Some(jump));
        let after = calendar_window(CalendarPeriod::Hour, &zone(tz), jump).expect("in range");
        assert_eq!(after.start, jump);
        assert_eq!(
            after.end,
            Some(local("2024-09-29T04:00+13:45[Pacific/Chatham]"))
        );
    }

    /// Checks the hour window of each instant in `table`: one `instant start end` line each,
    /// in UTC, with `#` comments.
    fn assert_hours(tz: &str, table: &str) {
        let rows = table
            .lines()
            .map(|line| line.split('#').next().unwrap_or_default().trim())
            .filter(|row| !row.is_empty());
        for row in rows {
            let fields: Vec<&str> = row.split_whitespace().collect();
            let [at, start, end] = fields[..] else {
                panic!("`{row}` is not `instant start end`");
            };
            assert_eq!(
                calendar(CalendarPeriod::Hour, tz, at),
                bounds(start, end),
                "hour window of {at} in {tz}"
            );
        }
    }

    #[test]
    fn berlin_hours_across_both_changes_of_2027() {
        assert_hours(
            "Europe/Berlin",
            "
            # Spring, 2027-03-28: 02:00 CET jumps to 03:00 CEST at 01:00Z.
            2027-03-28T00:30Z               2027-03-28T00:00Z  2027-03-28T01:00Z  # 01:30 CET
            2027-03-28T00:59:59.999999999Z  2027-03-28T00:00Z  2027-03-28T01:00Z
            2027-03-28T01:00Z               2027-03-28T01:00Z  2027-03-28T02:00Z  # 03:00 CEST
            2027-03-28T01:30Z               2027-03-28T01:00Z  2027-03-28T02:00Z
            # Autumn, 2027-10-31: 03:00 CEST falls back to 02:00 CET at 01:00Z.
            2027-10-30T23:30Z               2027-10-30T23:00Z  2027-10-31T00:00Z  # 01:30 CEST
            2027-10-31T00:30Z               2027-10-31T00:00Z  2027-10-31T01:00Z  # 02:30 CEST
            2027-10-31T00:59:59.999999999Z  2027-10-31T00:00Z  2027-10-31T01:00Z
            2027-10-31T01:00Z               2027-10-31T01:00Z  2027-10-31T02:00Z  # 02:00 CET
            2027-10-31T01:30Z               2027-10-31T01:00Z  2027-10-31T02:00Z  # 02:30 CET
            2027-10-31T02:30Z               2027-10-31T02:00Z  2027-10-31T03:00Z  # 03:30 CET
            ",
        );
        // The day of the change is still a civil day of 25 hours.
        let day = calendar(CalendarPeriod::Day, "Europe/Berlin", "2027-10-31T01:30Z");
        assert_eq!(day, bounds("2027-10-30T22:00Z", "2027-10-31T23:00Z"));
    }

    #[test]
    fn new_york_hours_across_both_changes_of_2027() {
        assert_hours(
            "America/New_York",
            "
            # Spring, 2027-03-14: 02:00 EST jumps to 03:00 EDT at 07:00Z.
            2027-03-14T06:30Z  2027-03-14T06:00Z  2027-03-14T07:00Z  # 01:30 EST
            2027-03-14T07:00Z  2027-03-14T07:00Z  2027-03-14T08:00Z  # 03:00 EDT
            2027-03-14T07:45Z  2027-03-14T07:00Z  2027-03-14T08:00Z  # 03:45 EDT
            # Autumn, 2027-11-07: 02:00 EDT falls back to 01:00 EST at 06:00Z.
            2027-11-07T04:30Z  2027-11-07T04:00Z  2027-11-07T05:00Z  # 00:30 EDT
            2027-11-07T05:30Z  2027-11-07T05:00Z  2027-11-07T06:00Z  # 01:30 EDT
            2027-11-07T06:00Z  2027-11-07T06:00Z  2027-11-07T07:00Z  # 01:00 EST
            2027-11-07T06:30Z  2027-11-07T06:00Z  2027-11-07T07:00Z  # 01:30 EST
            2027-11-07T07:30Z  2027-11-07T07:00Z  2027-11-07T08:00Z  # 02:30 EST
            ",
        );
        let day = calendar(CalendarPeriod::Day, "America/New_York", "2027-11-07T06:30Z");
        assert_eq!(hours(day), 25);
    }

    #[test]
    fn lord_howe_half_hour_changes_cut_the_hour_around_them() {
        assert_hours(
            "Australia/Lord_Howe",
            "
            # Autumn, 2027-04-04: 02:00+11:00 falls back to 01:30+10:30 at 15:00Z. The repeated
            # half hour is a 30-minute window of its own.
            2027-04-03T14:15Z  2027-04-03T14:00Z  2027-04-03T15:00Z  # 01:15+11
            2027-04-03T14:45Z  2027-04-03T14:00Z  2027-04-03T15:00Z  # 01:45+11
            2027-04-03T15:00Z  2027-04-03T15:00Z  2027-04-03T15:30Z  # 01:30+10:30
            2027-04-03T15:15Z  2027-04-03T15:00Z  2027-04-03T15:30Z  # 01:45+10:30
            2027-04-03T15:45Z  2027-04-03T15:30Z  2027-04-03T16:30Z  # 02:15+10:30
            # Spring, 2027-10-03: 02:00+10:30 jumps to 02:30+11:00 at 15:30Z. What is left of
            # the hour 02:00-03:00+11 is a 30-minute window.
            2027-10-02T15:15Z  2027-10-02T14:30Z  2027-10-02T15:30Z  # 01:45+10:30
            2027-10-02T15:30Z  2027-10-02T15:30Z  2027-10-02T16:00Z  # 02:30+11
            2027-10-02T15:45Z  2027-10-02T15:30Z  2027-10-02T16:00Z  # 02:45+11
            2027-10-02T16:15Z  2027-10-02T16:00Z  2027-10-02T17:00Z  # 03:15+11
            ",
        );
        // Days stay civil: 24.5 hours at the fall-back, 23.5 at the jump.
        let autumn = calendar(
            CalendarPeriod::Day,
            "Australia/Lord_Howe",
            "2027-04-03T15:00Z",
        );
        assert_eq!(
            autumn.end.expect("bounded").duration_since(autumn.start),
            SignedDuration::from_mins(24 * 60 + 30)
        );
        let spring = calendar(
            CalendarPeriod::Day,
            "Australia/Lord_Howe",
            "2027-10-02T15:30Z",
        );
        assert_eq!(
            spring.end.expect("bounded").duration_since(spring.start),
            SignedDuration::from_mins(23 * 60 + 30)
        );
    }

    #[test]
    fn a_transition_that_keeps_the_offset_cuts_no_hour() {
        // The time zone database ends its 32-bit transition table with a transition at
        // 2038-01-19T03:14:07Z that keeps Kathmandu at +05:45 (local 08:59:07). The clock does
        // not move there, so the hour 08:00–09:00 stays whole.
        let tz = zone("Asia/Kathmandu");
        let record = ts("2038-01-19T03:14:07Z");
        let transition = tz
            .following(record - ONE_SECOND)
            .next()
            .expect("a recorded transition");
        assert_eq!(transition.timestamp(), record);
        assert_eq!(tz.to_offset(record - ONE_SECOND), transition.offset());
        for at in ["2038-01-19T02:30:00Z", "2038-01-19T03:14:30Z"] {
            let window = calendar(CalendarPeriod::Hour, "Asia/Kathmandu", at);
            assert_eq!(
                window,
                bounds("2038-01-19T02:15:00Z", "2038-01-19T03:15:00Z")
            );
        }
        let minute = calendar(
            CalendarPeriod::Minute,
            "Asia/Kathmandu",
            "2038-01-19T03:14:30Z",
        );
        assert_eq!(
            minute,
            bounds("2038-01-19T03:14:00Z", "2038-01-19T03:15:00Z")
        );
    }

    #[test]
    fn minute_and_hour_windows() {
        let minute = calendar(CalendarPeriod::Minute, "UTC", "2025-06-15T13:45:10.5Z");
        assert_eq!(
            minute,
            bounds("2025-06-15T13:45:00Z", "2025-06-15T13:46:00Z")
        );
        // Kolkata is +05:30, so its hours start at half past in UTC.
        let hour = calendar(CalendarPeriod::Hour, "Asia/Kolkata", "2025-06-15T13:45:00Z");
        assert_eq!(hour, bounds("2025-06-15T13:30:00Z", "2025-06-15T14:30:00Z"));
    }

    #[test]
    fn week_starts_on_monday() {
        // Sunday evening still belongs to the week that started the Monday before.
        let sunday = calendar(CalendarPeriod::Week, "UTC", "2025-06-08T23:00:00Z");
        assert_eq!(
            sunday,
            bounds("2025-06-02T00:00:00Z", "2025-06-09T00:00:00Z")
        );
        let monday = calendar(CalendarPeriod::Week, "UTC", "2025-06-09T00:00:00Z");
        assert_eq!(monday.start, ts("2025-06-09T00:00:00Z"));
        // A week across New Year.
        let new_year = calendar(CalendarPeriod::Week, "UTC", "2025-01-01T12:00:00Z");
        assert_eq!(
            new_year,
            bounds("2024-12-30T00:00:00Z", "2025-01-06T00:00:00Z")
        );
        // Local Monday in Berlin is Sunday 22:00 UTC in summer.
        let berlin = calendar(
            CalendarPeriod::Week,
            "Europe/Berlin",
            "2025-06-08T22:30:00Z",
        );
        assert_eq!(
            berlin,
            bounds("2025-06-08T22:00:00Z", "2025-06-15T22:00:00Z")
        );
    }

    #[test]
    fn month_windows_end_at_month_ends() {
        let january = calendar(
            CalendarPeriod::Month,
            "UTC",
            "2025-01-31T23:59:59.999999999Z",
        );
        assert_eq!(
            january,
            bounds("2025-01-01T00:00:00Z", "2025-02-01T00:00:00Z")
        );
        let february = calendar(CalendarPeriod::Month, "UTC", "2025-02-28T12:00:00Z");
        assert_eq!(
            february,
            bounds("2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z")
        );
        let december = calendar(CalendarPeriod::Month, "UTC", "2025-12-31T00:00:00Z");
        assert_eq!(
            december,
            bounds("2025-12-01T00:00:00Z", "2026-01-01T00:00:00Z")
        );
        // The March window in New York spans the spring-forward change.
        let march = calendar(
            CalendarPeriod::Month,
            "America/New_York",
            "2025-03-15T00:00:00Z",
        );
        assert_eq!(
            march,
            bounds("2025-03-01T05:00:00Z", "2025-04-01T04:00:00Z")
        );
    }

    #[test]
    fn leap_day_belongs_to_a_29_day_february() {
        let february = calendar(CalendarPeriod::Month, "UTC", "2024-02-29T12:00:00Z");
        assert_eq!(
            february,
            bounds("2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z")
        );
        assert_eq!(hours(february), 29 * 24);
        let leap_day = calendar(CalendarPeriod::Day, "UTC", "2024-02-29T12:00:00Z");
        assert_eq!(
            leap_day,
            bounds("2024-02-29T00:00:00Z", "2024-03-01T00:00:00Z")
        );
    }

    #[test]
    fn year_windows() {
        let utc = calendar(CalendarPeriod::Year, "UTC", "2024-07-01T00:00:00Z");
        assert_eq!(utc, bounds("2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z"));
        assert_eq!(hours(utc), 366 * 24);
        // New Year's Eve at 23:30 UTC is already next year in Berlin.
        let berlin = calendar(
            CalendarPeriod::Year,
            "Europe/Berlin",
            "2024-12-31T23:30:00Z",
        );
        assert_eq!(
            berlin,
            bounds("2024-12-31T23:00:00Z", "2025-12-31T23:00:00Z")
        );
    }

    #[test]
    fn calendar_window_out_of_range() {
        assert_eq!(
            calendar_window(CalendarPeriod::Year, &TimeZone::UTC, Timestamp::MAX),
            Err(WindowError::OutOfRange)
        );
    }

    #[test]
    fn monthly_cycles_from_the_31st_clamp_and_return() {
        let cycles = starts("2025-01-31T10:00:00Z", monthly(1), 0..5);
        assert_eq!(
            cycles,
            [
                "2025-01-31T10:00:00Z",
                "2025-02-28T10:00:00Z",
                "2025-03-31T10:00:00Z",
                "2025-04-30T10:00:00Z",
                "2025-05-31T10:00:00Z",
            ]
        );
        let window = subscription_window(
            ts("2025-01-31T10:00:00Z"),
            monthly(1),
            ts("2025-03-01T00:00:00Z"),
        )
        .expect("in range");
        assert_eq!(
            window,
            bounds("2025-02-28T10:00:00Z", "2025-03-31T10:00:00Z")
        );
    }

    #[test]
    fn monthly_cycles_from_the_31st_in_a_leap_year() {
        let cycles = starts("2024-01-31T00:00:00Z", monthly(1), 0..3);
        assert_eq!(
            cycles,
            [
                "2024-01-31T00:00:00Z",
                "2024-02-29T00:00:00Z",
                "2024-03-31T00:00:00Z",
            ]
        );
    }

    #[test]
    fn monthly_cycles_from_the_30th() {
        let cycles = starts("2025-01-30T08:00:00Z", monthly(1), 0..3);
        assert_eq!(
            cycles,
            [
                "2025-01-30T08:00:00Z",
                "2025-02-28T08:00:00Z",
                "2025-03-30T08:00:00Z",
            ]
        );
        let leap = starts("2024-01-30T08:00:00Z", monthly(1), 1..2);
        assert_eq!(leap, ["2024-02-29T08:00:00Z"]);
    }

    #[test]
    fn cycle_at_its_start_instant_is_the_new_cycle() {
        let anchor = ts("2025-01-31T10:00:00Z");
        let renewal = ts("2025-02-28T10:00:00Z");
        let window = subscription_window(anchor, monthly(1), renewal).expect("in range");
        assert_eq!(window.start, renewal);
        let just_before =
            subscription_window(anchor, monthly(1), renewal - ONE_NANOSECOND).expect("in range");
        assert_eq!(just_before.start, anchor);
        assert_eq!(just_before.end, Some(renewal));
    }

    #[test]
    fn weekly_and_daily_cycles() {
        // 2025-01-01 is a Wednesday; weekly cycles keep that weekday and time.
        let anchor = ts("2025-01-01T09:00:00Z");
        let weekly = BillingInterval {
            unit: IntervalUnit::Week,
            count: 1,
        };
        let window =
            subscription_window(anchor, weekly, ts("2025-01-20T12:00:00Z")).expect("in range");
        assert_eq!(
            window,
            bounds("2025-01-15T09:00:00Z", "2025-01-22T09:00:00Z")
        );
        let fortnightly = BillingInterval {
            unit: IntervalUnit::Week,
            count: 2,
        };
        let window =
            subscription_window(anchor, fortnightly, ts("2025-01-20T12:00:00Z")).expect("in range");
        assert_eq!(
            window,
            bounds("2025-01-15T09:00:00Z", "2025-01-29T09:00:00Z")
        );
        let daily = BillingInterval {
            unit: IntervalUnit::Day,
            count: 1,
        };
        let window =
            subscription_window(anchor, daily, ts("2025-03-10T08:59:59Z")).expect("in range");
        assert_eq!(
            window,
            bounds("2025-03-09T09:00:00Z", "2025-03-10T09:00:00Z")
        );
    }

    #[test]
    fn yearly_cycles_from_a_leap_day() {
        let yearly = BillingInterval {
            unit: IntervalUnit::Year,
            count: 1,
        };
        let cycles = starts("2024-02-29T12:00:00Z", yearly, -1..5);
        assert_eq!(
            cycles,
            [
                "2023-02-28T12:00:00Z",
                "2024-02-29T12:00:00Z",
                "2025-02-28T12:00:00Z",
                "2026-02-28T12:00:00Z",
                "2027-02-28T12:00:00Z",
                "2028-02-29T12:00:00Z",
            ]
        );
        let window = subscription_window(
            ts("2024-02-29T12:00:00Z"),
            yearly,
            ts("2025-06-01T00:00:00Z"),
        )
        .expect("in range");
        assert_eq!(
            window,
            bounds("2025-02-28T12:00:00Z", "2026-02-28T12:00:00Z")
        );
    }

    #[test]
    fn quarterly_cycles() {
        let window = subscription_window(
            ts("2025-01-15T00:00:00Z"),
            monthly(3),
            ts("2025-05-20T00:00:00Z"),
        )
        .expect("in range");
        assert_eq!(
            window,
            bounds("2025-04-15T00:00:00Z", "2025-07-15T00:00:00Z")
        );
        let cycles = starts("2024-11-30T00:00:00Z", monthly(3), 0..3);
        assert_eq!(
            cycles,
            [
                "2024-11-30T00:00:00Z",
                "2025-02-28T00:00:00Z",
                "2025-05-30T00:00:00Z",
            ]
        );
    }

    #[test]
    fn cycles_before_the_anchor() {
        // Counted back from Mar 31: Feb 28, Jan 31, Dec 31.
        let window = subscription_window(
            ts("2025-03-31T00:00:00Z"),
            monthly(1),
            ts("2025-01-15T00:00:00Z"),
        )
        .expect("in range");
        assert_eq!(
            window,
            bounds("2024-12-31T00:00:00Z", "2025-01-31T00:00:00Z")
        );
        let cycles = starts("2025-03-31T00:00:00Z", monthly(1), -2..0);
        assert_eq!(cycles, ["2025-01-31T00:00:00Z", "2025-02-28T00:00:00Z"]);
    }

    #[test]
    fn cycles_far_from_the_anchor() {
        // About 47,000 daily cycles away: found by estimate, not by walking.
        let daily = BillingInterval {
            unit: IntervalUnit::Day,
            count: 1,
        };
        let window = subscription_window(
            ts("1971-01-01T06:00:00Z"),
            daily,
            ts("2099-12-31T05:00:00Z"),
        )
        .expect("in range");
        assert_eq!(
            window,
            bounds("2099-12-30T06:00:00Z", "2099-12-31T06:00:00Z")
        );
        let window = subscription_window(
            ts("2099-01-31T00:00:00Z"),
            monthly(1),
            ts("1971-03-01T00:00:00Z"),
        )
        .expect("in range");
        assert_eq!(
            window,
            bounds("1971-02-28T00:00:00Z", "1971-03-31T00:00:00Z")
        );
    }

    #[test]
    fn subscription_errors() {
        let anchor = ts("2025-01-31T00:00:00Z");
        assert_eq!(
            cycle_start(anchor, monthly(0), 1),
            Err(WindowError::OutOfRange)
        );
        assert_eq!(
            subscription_window(anchor, monthly(0), anchor),
            Err(WindowError::OutOfRange)
        );
        assert_eq!(
            cycle_start(anchor, monthly(1), i64::MAX),
            Err(WindowError::OutOfRange)
        );
        assert_eq!(
            cycle_start(anchor, monthly(u32::MAX), 1_000),
            Err(WindowError::OutOfRange)
        );
        assert_eq!(
            subscription_window(anchor, monthly(1), Timestamp::MAX),
            Err(WindowError::OutOfRange)
        );
    }

    #[test]
    fn rolling_window_ends_at_the_instant() {
        let at = ts("2025-06-15T13:00:00Z");
        assert_eq!(
            rolling_window(3_600, at),
            Ok(bounds("2025-06-15T12:00:00Z", "2025-06-15T13:00:00Z"))
        );
        assert_eq!(
            rolling_window(1, Timestamp::MIN),
            Err(WindowError::OutOfRange)
        );
    }

    #[test]
    fn first_use_window_opens_on_first_use() {
        let at = ts("2025-06-15T13:00:00Z");
        assert_eq!(
            first_use_window(None, 5 * 3_600, at),
            Ok(bounds("2025-06-15T13:00:00Z", "2025-06-15T18:00:00Z"))
        );
    }

    #[test]
    fn first_use_window_stays_open_until_its_end() {
        let opened = ts("2025-06-15T13:00:00Z");
        let open = first_use_window(
            Some(opened),
            5 * 3_600,
            ts("2025-06-15T17:59:59.999999999Z"),
        );
        assert_eq!(
            open,
            Ok(bounds("2025-06-15T13:00:00Z", "2025-06-15T18:00:00Z"))
        );
        // Exactly at the end the old window is closed and the use opens a new one.
        let at_end = first_use_window(Some(opened), 5 * 3_600, ts("2025-06-15T18:00:00Z"));
        assert_eq!(
            at_end,
            Ok(bounds("2025-06-15T18:00:00Z", "2025-06-15T23:00:00Z"))
        );
        // Long after, the new window starts at the use, not at the old window's end.
        let later = first_use_window(Some(opened), 5 * 3_600, ts("2025-06-16T09:30:00Z"));
        assert_eq!(
            later,
            Ok(bounds("2025-06-16T09:30:00Z", "2025-06-16T14:30:00Z"))
        );
    }

    #[test]
    fn first_use_window_out_of_range() {
        assert_eq!(
            first_use_window(None, 60, Timestamp::MAX),
            Err(WindowError::OutOfRange)
        );
    }

    #[test]
    fn lifetime_window_is_unbounded() {
        assert_eq!(
            lifetime_window(),
            WindowBounds {
                start: Timestamp::UNIX_EPOCH,
                end: None,
            }
        );
    }

    /// Zones with DST in either hemisphere, offsets of a half and three quarters of an hour,
    /// half-hour DST (Lord Howe), quarter-hour gaps (Chatham), DST abolished (Sao Paulo) and
    /// none at all.
    const ZONES: [&str; 10] = [
        "America/New_York",
        "Europe/Berlin",
        "Australia/Sydney",
        "Australia/Lord_Howe",
        "Asia/Tokyo",
        "America/Sao_Paulo",
        "Pacific/Chatham",
        "Asia/Kolkata",
        "Asia/Kathmandu",
        "UTC",
    ];

    /// 1971-01-01T00:00:00Z and 2100-01-01T00:00:00Z.
    const SECOND_1971: i64 = 31_536_000;
    const SECOND_2100: i64 = 4_102_444_800;

    fn arb_instant() -> impl Strategy<Value = Timestamp> {
        (SECOND_1971..SECOND_2100, 0..1_000_000_000i32).prop_map(|(second, nanosecond)| {
            Timestamp::new(second, nanosecond).expect("1971..2100 is in range")
        })
    }

    fn arb_period() -> impl Strategy<Value = CalendarPeriod> {
        use CalendarPeriod as P;
        prop::sample::select(vec![P::Minute, P::Hour, P::Day, P::Week, P::Month, P::Year])
    }

    fn arb_zone() -> impl Strategy<Value = TimeZone> {
        prop::sample::select(ZONES.to_vec()).prop_map(zone)
    }

    /// Anchors in 1971..2100, half of them on days 28–31 (clamped to the month's length).
    fn arb_anchor() -> impl Strategy<Value = Timestamp> {
        let day = prop_oneof![28..=31i8, 1..=31i8];
        (
            1971..2100i16,
            1..=12i8,
            day,
            0..86_400i64,
            0..1_000_000_000i32,
        )
            .prop_map(|(year, month, day, second_of_day, nanosecond)| {
                let first = Date::new(year, month, 1).expect("valid month");
                let date = Date::new(year, month, day.min(first.days_in_month()))
                    .expect("day clamped to the month");
                let midnight = date
                    .to_datetime(Time::midnight())
                    .to_zoned(TimeZone::UTC)
                    .expect("in range")
                    .timestamp();
                midnight
                    .checked_add(SignedDuration::new(second_of_day, nanosecond))
                    .expect("in range")
            })
    }

    fn arb_interval() -> impl Strategy<Value = BillingInterval> {
        use IntervalUnit as U;
        (
            prop::sample::select(vec![U::Day, U::Week, U::Month, U::Year]),
            1..=24u32,
        )
            .prop_map(|(unit, count)| BillingInterval { unit, count })
    }

    /// The window of `at` contains it and meets its neighbours exactly; a minute or hour window
    /// is at most a minute or an hour long, and shorter only where the UTC offset changes.
    fn check_calendar_tiling(
        period: CalendarPeriod,
        tz: &TimeZone,
        at: Timestamp,
    ) -> Result<(), TestCaseError> {
        let window = calendar_window(period, tz, at).expect("in range");
        let end = window.end.expect("calendar windows are bounded");
        prop_assert!(
            window.start <= at && at < end,
            "{window:?} must contain {at}"
        );

        let length = match period {
            CalendarPeriod::Minute => Some(SignedDuration::from_mins(1)),
            CalendarPeriod::Hour => Some(SignedDuration::from_hours(1)),
            _ => None,
        };
        if let Some(length) = length {
            let real = end.duration_since(window.start);
            prop_assert!(real <= length, "{window:?} is longer than {length}");
            let offset_changes_at = |instant: Timestamp| {
                tz.to_offset(instant - ONE_NANOSECOND) != tz.to_offset(instant)
            };
            prop_assert!(
                real == length || offset_changes_at(window.start) || offset_changes_at(end),
                "{window:?} is cut short where the offset does not change"
            );
        }

        let next = calendar_window(period, tz, end).expect("in range");
        prop_assert_eq!(next.start, end);
        for step in [ONE_NANOSECOND, ONE_SECOND] {
            let previous = calendar_window(period, tz, window.start - step).expect("in range");
            prop_assert_eq!(previous.end, Some(window.start));
        }
        Ok(())
    }

    fn utc_day_of_month(at: Timestamp) -> (i8, i8) {
        let date = TimeZone::UTC.to_datetime(at).date();
        (date.day(), date.days_in_month())
    }

    proptest! {
        #[test]
        fn calendar_windows_tile_time(at in arb_instant(), period in arb_period(), tz in arb_zone()) {
            check_calendar_tiling(period, &tz, at)?;
        }

        /// Random instants rarely land on a DST change, so also probe around the next one.
        #[test]
        fn calendar_windows_tile_across_transitions(
            at in arb_instant(),
            period in arb_period(),
            tz in arb_zone(),
            offset_minutes in -90..=90i64,
        ) {
            if let Some(transition) = tz.following(at).next() {
                let near = transition.timestamp() + SignedDuration::from_mins(offset_minutes);
                for probe in [near, transition.timestamp(), transition.timestamp() - ONE_NANOSECOND] {
                    check_calendar_tiling(period, &tz, probe)?;
                }
            }
        }

        #[test]
        fn subscription_windows_tile_time(
            anchor in arb_anchor(),
            interval in arb_interval(),
            at in arb_instant(),
        ) {
            let window = subscription_window(anchor, interval, at).expect("in range");
            let end = window.end.expect("billing cycles are bounded");
            prop_assert!(window.start <= at && at < end, "{window:?} must contain {at}");

            let next = subscription_window(anchor, interval, end).expect("in range");
            prop_assert_eq!(next.start, end);
            for step in [ONE_NANOSECOND, ONE_SECOND] {
                let previous = subscription_window(anchor, interval, window.start - step)
                    .expect("in range");
                prop_assert_eq!(previous.end, Some(window.start));
            }
        }

        #[test]
        fn cycle_starts_increase_and_keep_the_anchor_day(
            anchor in arb_anchor(),
            interval in arb_interval(),
            k in -200..200i64,
        ) {
            let start = cycle_start(anchor, interval, k).expect("in range");
            let following = cycle_start(anchor, interval, k + 1).expect("in range");
            prop_assert!(start < following, "cycle {k} {start} must precede {following}");
            prop_assert_eq!(cycle_start(anchor, interval, 0), Ok(anchor));

            // Every cycle starts at the anchor's time of day (UTC has no DST).
            let anchor_time = TimeZone::UTC.to_datetime(anchor).time();
            prop_assert_eq!(TimeZone::UTC.to_datetime(start).time(), anchor_time);

            if matches!(interval.unit, IntervalUnit::Month | IntervalUnit::Year) {
                let (anchor_day, _) = utc_day_of_month(anchor);
                let (day, days_in_month) = utc_day_of_month(start);
                prop_assert_eq!(day, anchor_day.min(days_in_month));
            }
        }
    }
}
