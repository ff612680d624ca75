//! The arithmetic behind analytics answers (API.md §9): calendar buckets in a time zone, how
//! far each user went through a funnel, and a subscription's revenue spread over a range.
//! Pure: the stores read rows, this decides what they mean.

use crate::window::{subscription_window, BillingInterval, WindowError};
use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, ToSpan, Unit, Zoned, ZonedRound};
use std::collections::HashMap;

/// A bucket size of `POST /v1/analytics/usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketUnit {
    Hour,
    Day,
    /// ISO weeks: Monday to Monday.
    Week,
    Month,
}

named_enum!(BucketUnit {
    Hour => "hour",
    Day => "day",
    Week => "week",
    Month => "month",
});

/// Why a range cannot be bucketed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketError {
    /// More buckets than the caller allows.
    TooMany { max: usize },
    /// The range reaches past what calendar arithmetic can represent.
    OutOfRange,
}

/// The start of the bucket of `unit` in `tz` that holds `at`.
fn bucket_start(at: Timestamp, unit: BucketUnit, tz: &TimeZone) -> Result<Zoned, BucketError> {
    let zoned = at.to_zoned(tz.clone());
    let start = match unit {
        BucketUnit::Hour => zoned.round(
            ZonedRound::new()
                .smallest(Unit::Hour)
                .mode(jiff::RoundMode::Trunc),
        ),
        BucketUnit::Day => zoned.start_of_day(),
        BucketUnit::Week => {
            let back = zoned.weekday().since(Weekday::Monday);
            zoned
                .start_of_day()
                .and_then(|d| d.checked_sub(i64::from(back).days()))
        }
        BucketUnit::Month => zoned.first_of_month().and_then(|d| d.start_of_day()),
    };
    start.map_err(|_| BucketError::OutOfRange)
}

fn step(unit: BucketUnit) -> Span {
    match unit {
        BucketUnit::Hour => 1.hour(),
        BucketUnit::Day => 1.day(),
        BucketUnit::Week => 1.week(),
        BucketUnit::Month => 1.month(),
    }
}

/// The bounds of the buckets of `unit` in `tz` that cover `[from, to)`: each bucket's start,
/// then the end of the last one. The first starts at or before `from` (a bucket is named by
/// its start even when the range begins inside it); days, weeks and months follow the zone's
/// calendar, so a day across a daylight-saving change is 23 or 25 hours long.
pub fn bucket_bounds(
    from: Timestamp,
    to: Timestamp,
    unit: BucketUnit,
    tz: &TimeZone,
    max: usize,
) -> Result<Vec<Timestamp>, BucketError> {
    let mut at = bucket_start(from, unit, tz)?;
    let mut bounds = vec![at.timestamp()];
    while at.timestamp() < to {
        if bounds.len() > max {
            return Err(BucketError::TooMany { max });
        }
        // Days and later start at the start of a day: where a zone skips its midnight, that
        // is the first instant of the day, not the same wall time as the day before.
        let next = at
            .checked_add(step(unit))
            .and_then(|n| match unit {
                BucketUnit::Hour => Ok(n),
                _ => n.start_of_day(),
            })
            .map_err(|_| BucketError::OutOfRange)?;
        at = next;
        bounds.push(at.timestamp());
    }
    Ok(bounds)
}

/// How many users reached each step of a funnel: `counts[k]` users did steps `0..=k` in
/// order, each step after the one before it, all within `within_ms` of their step 0, which
/// happened before `first_before_ms`. A user counts once, by the start that took them furthest.
///
/// `occurrences` is every (user, event, time in ms) of the steps' events; a step that repeats
/// an earlier step's event needs a later occurrence of it.
pub fn funnel<'a>(
    steps: &[String],
    within_ms: i64,
    first_before_ms: i64,
    occurrences: impl IntoIterator<Item = (&'a str, &'a str, i64)>,
) -> Vec<u64> {
    let mut counts = vec![0u64; steps.len()];
    let Some(first) = steps.first() else {
        return counts;
    };
    // user → event → its times, ascending.
    let mut by_user: HashMap<&str, HashMap<&str, Vec<i64>>> = HashMap::new();
    for (user, event, at) in occurrences {
        if steps.iter().any(|s| s == event) {
            by_user
                .entry(user)
                .or_default()
                .entry(event)
                .or_default()
                .push(at);
        }
    }
    for events in by_user.values_mut() {
        for times in events.values_mut() {
            times.sort_unstable();
        }
    }
    for events in by_user.values() {
        let Some(starts) = events.get(first.as_str()) else {
            continue;
        };
        let mut best = 0;
        for (i, &start) in starts.iter().enumerate() {
            if start >= first_before_ms || best == steps.len() {
                break;
            }
            best = best.max(depth(
                steps,
                events,
                (i, start),
                start.saturating_add(within_ms),
            ));
        }
        for count in counts.iter_mut().take(best) {
            *count += 1;
        }
    }
    counts
}

/// How many steps a user completes from the step-0 occurrence `(index, time)`, taking for each
/// next step its earliest occurrence that qualifies (which leaves the most room for the rest).
fn depth(
    steps: &[String],
    events: &HashMap<&str, Vec<i64>>,
    (index, start): (usize, i64),
    deadline: i64,
) -> usize {
    let mut used: HashMap<&str, usize> = HashMap::from([(steps[0].as_str(), index)]);
    let mut prev = start;
    for (k, name) in steps.iter().enumerate().skip(1) {
        let Some(times) = events.get(name.as_str()) else {
            return k;
        };
        let mut at = times.partition_point(|&t| t < prev);
        if let Some(&u) = used.get(name.as_str()) {
            at = at.max(u + 1);
        }
        match times.get(at) {
            Some(&t) if t <= deadline => {
                used.insert(name.as_str(), at);
                prev = t;
            }
            _ => return k,
        }
    }
    steps.len()
}

/// One stretch of a subscription on one plan: `[start, end)`, `end` `None` while it lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spell {
    pub plan_id: String,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
}

/// The plans a subscription was on, and when, from its history (`created`, `plan_changed` and
/// `reactivated` start a plan, `ended` ends it) and its row (the plan now, its `endsAt`).
/// Without history, the current plan from `created_at` on.
pub fn plan_spells(
    plan_id: &str,
    created_at: Timestamp,
    ends_at: Option<Timestamp>,
    history: &[(&str, Timestamp, Option<&str>)],
) -> Vec<Spell> {
    let mut out: Vec<Spell> = Vec::new();
    let mut open: Option<(String, Timestamp)> = None;
    let mut last_plan = plan_id.to_string();
    let close = |out: &mut Vec<Spell>, open: &mut Option<(String, Timestamp)>, at| {
        if let Some((plan_id, start)) = open.take() {
            if at > start {
                out.push(Spell {
                    plan_id,
                    start,
                    end: Some(at),
                });
            }
        }
    };
    for &(kind, at, to_plan) in history {
        match kind {
            "created" | "plan_changed" | "reactivated" => {
                close(&mut out, &mut open, at);
                let plan = to_plan.map_or_else(|| last_plan.clone(), str::to_string);
                last_plan = plan.clone();
                open = Some((plan, at));
            }
            "ended" => close(&mut out, &mut open, at),
            _ => {}
        }
    }
    if history.is_empty() {
        open = Some((plan_id.to_string(), created_at));
    }
    if let Some((plan_id, start)) = open {
        if ends_at.is_none_or(|end| end > start) {
            out.push(Spell {
                plan_id,
                start,
                end: ends_at,
            });
        }
    }
    out
}

/// The share of a price paid per billing period (periods counted from `anchor`, the
/// subscription's `cycleStart`) that falls in `[lo, hi)`: each period that overlaps it adds
/// `price × overlap / period`, rounded down, in the price's micros.
pub fn spread_revenue(
    price_micros: u64,
    anchor: Timestamp,
    interval: BillingInterval,
    (lo, hi): (Timestamp, Timestamp),
) -> Result<u128, WindowError> {
    let mut total = 0u128;
    let mut at = lo;
    while at < hi {
        let period = subscription_window(anchor, interval, at)?;
        let Some(end) = period.end else { break };
        let length = end.duration_since(period.start).as_millis();
        let overlap = end.min(hi).duration_since(at).as_millis();
        if length > 0 && overlap > 0 {
            total += u128::from(price_micros) * overlap as u128 / length as u128;
        }
        at = end;
    }
    Ok(total)
}

/// Millionths of a currency's unit in one of its minor units (the unit of a plan's
/// `price.amount`): 10,000 for two-decimal currencies, 1,000,000 for zero-decimal ones (as
/// Stripe lists them), 1,000 for three-decimal ones.
pub fn micros_per_minor_unit(currency: &str) -> u64 {
    const ZERO_DECIMAL: &[&str] = &[
        "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
        "xaf", "xof", "xpf",
    ];
    const THREE_DECIMAL: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];
    let c = currency.to_ascii_lowercase();
    if ZERO_DECIMAL.contains(&c.as_str()) {
        1_000_000
    } else if THREE_DECIMAL.contains(&c.as_str()) {
        1_000
    } else {
        10_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn shown(bounds: &[Timestamp]) -> Vec<String> {
        bounds.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn days_follow_the_zone_across_a_daylight_saving_change() {
        let tz = TimeZone::get("America/New_York").unwrap();
        // 2026-03-08 is 23 hours long in New York.
        let b = bucket_bounds(
            ts("2026-03-07T12:00:00Z"),
            ts("2026-03-09T12:00:00Z"),
            BucketUnit::Day,
            &tz,
            100,
        )
        .unwrap();
        assert_eq!(
            shown(&b),
            [
                "2026-03-07T05:00:00Z",
                "2026-03-08T05:00:00Z",
                "2026-03-09T04:00:00Z",
                "2026-03-10T04:00:00Z"
            ]
        );
    }

    #[test]
    fn hours_in_a_half_hour_zone_start_on_its_half_hours() {
        let tz = TimeZone::get("Asia/Kolkata").unwrap();
        let b = bucket_bounds(
            ts("2026-01-01T00:10:00Z"),
            ts("2026-01-01T01:00:00Z"),
            BucketUnit::Hour,
            &tz,
            100,
        )
        .unwrap();
        assert_eq!(
            shown(&b),
            [
                "2025-12-31T23:30:00Z",
                "2026-01-01T00:30:00Z",
                "2026-01-01T01:30:00Z"
            ]
        );
    }

    #[test]
    fn weeks_start_on_monday_and_months_on_the_first() {
        let utc = TimeZone::UTC;
        let w = bucket_bounds(
            ts("2026-12-02T00:00:00Z"),
            ts("2026-12-08T00:00:00Z"),
            BucketUnit::Week,
            &utc,
            100,
        )
        .unwrap();
        assert_eq!(
            shown(&w),
            [
                "2026-11-30T00:00:00Z",
                "2026-12-07T00:00:00Z",
                "2026-12-14T00:00:00Z"
            ]
        );
        let m = bucket_bounds(
            ts("2026-01-31T00:00:00Z"),
            ts("2026-03-02T00:00:00Z"),
            BucketUnit::Month,
            &utc,
            100,
        )
        .unwrap();
        assert_eq!(
            shown(&m),
            [
                "2026-01-01T00:00:00Z",
                "2026-02-01T00:00:00Z",
                "2026-03-01T00:00:00Z",
                "2026-04-01T00:00:00Z"
            ]
        );
    }

    #[test]
    fn bucket_count_is_capped_just_past_the_limit() {
        let utc = TimeZone::UTC;
        let (from, to) = (ts("2026-01-01T00:00:00Z"), ts("2026-01-01T10:00:00Z"));
        assert_eq!(
            bucket_bounds(from, to, BucketUnit::Hour, &utc, 10).map(|b| b.len()),
            Ok(11)
        );
        assert_eq!(
            bucket_bounds(from, to, BucketUnit::Hour, &utc, 9),
            Err(BucketError::TooMany { max: 9 })
        );
    }

    fn steps(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_funnel_counts_users_step_by_step_in_order_and_in_the_window() {
        let s = steps(&["signed_up", "render", "paywall", "upgraded"]);
        let occ = [
            // u1 goes all the way.
            ("u1", "signed_up", 0),
            ("u1", "render", 10),
            ("u1", "paywall", 20),
            ("u1", "upgraded", 30),
            // u2 upgrades before the paywall: stops after render.
            ("u2", "signed_up", 0),
            ("u2", "upgraded", 5),
            ("u2", "render", 10),
            // u3 reaches the paywall after the window.
            ("u3", "signed_up", 0),
            ("u3", "render", 10),
            ("u3", "paywall", 101),
            // u4 never signed up.
            ("u4", "render", 10),
        ];
        assert_eq!(funnel(&s, 100, 1_000, occ), [3, 3, 1, 1]);
    }

    #[test]
    fn a_later_start_can_take_a_user_further() {
        let s = steps(&["a", "b"]);
        let occ = [("u", "a", 0), ("u", "a", 500), ("u", "b", 550)];
        assert_eq!(funnel(&s, 100, 1_000, occ), [1, 1]);
        // A start at or after the range's end does not count.
        assert_eq!(funnel(&s, 100, 500, occ), [1, 0]);
    }

    #[test]
    fn a_repeated_step_needs_another_occurrence() {
        let s = steps(&["a", "a"]);
        assert_eq!(funnel(&s, 100, 1_000, [("u", "a", 0)]), [1, 0]);
        assert_eq!(
            funnel(&s, 100, 1_000, [("u", "a", 0), ("u", "a", 0)]),
            [1, 1]
        );
    }

    #[test]
    fn spells_follow_plan_changes_and_ends() {
        let h = [
            ("created", ts("2026-01-01T00:00:00Z"), Some("pro")),
            ("plan_changed", ts("2026-02-01T00:00:00Z"), Some("max")),
            ("ended", ts("2026-03-01T00:00:00Z"), None),
        ];
        let spells = plan_spells("max", ts("2026-01-01T00:00:00Z"), None, &h);
        assert_eq!(
            spells,
            [
                Spell {
                    plan_id: "pro".into(),
                    start: ts("2026-01-01T00:00:00Z"),
                    end: Some(ts("2026-02-01T00:00:00Z"))
                },
                Spell {
                    plan_id: "max".into(),
                    start: ts("2026-02-01T00:00:00Z"),
                    end: Some(ts("2026-03-01T00:00:00Z"))
                }
            ]
        );
        let plain = plan_spells("pro", ts("2026-01-01T00:00:00Z"), None, &[]);
        assert_eq!(plain.len(), 1);
        assert_eq!(plain[0].end, None);
    }

    #[test]
    fn revenue_is_spread_evenly_over_each_period() {
        let monthly = BillingInterval {
            unit: crate::window::IntervalUnit::Month,
            count: 1,
        };
        let anchor = ts("2026-01-01T00:00:00Z");
        // A whole month, then half of a 30-day month (April).
        let whole = spread_revenue(
            20_000_000,
            anchor,
            monthly,
            (ts("2026-03-01T00:00:00Z"), ts("2026-04-01T00:00:00Z")),
        );
        assert_eq!(whole, Ok(20_000_000));
        let half = spread_revenue(
            20_000_000,
            anchor,
            monthly,
            (ts("2026-04-01T00:00:00Z"), ts("2026-04-16T00:00:00Z")),
        );
        assert_eq!(half, Ok(10_000_000));
        assert_eq!(micros_per_minor_unit("USD"), 10_000);
        assert_eq!(micros_per_minor_unit("jpy"), 1_000_000);
    }
}
