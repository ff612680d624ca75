//! Which plan would have covered a user's past usage (API.md §12, `GET
//! /v1/plans/recommendation`): a user's usage events replayed against a plan's limits, period
//! by period.
//!
//! For each limit the figure is its **peak**: the most units it counted in any one of its own
//! windows within the period (the busiest day for a daily limit, the busiest hour for an
//! hourly one, the busiest span of `seconds` for a rolling one). A plan **fits** when no hard,
//! consumable, user-scoped limit's peak passes its quota in any period. What the replay leaves
//! out, and why:
//! - concurrency limits (events do not say how many were in flight at once);
//! - account-scoped limits (one member's events are not the account's);
//! - soft limits (they never deny);
//! - a `subscription` window is taken as the period itself, and a `first_use` window as a
//!   rolling one of the same length, which can only overstate its peak.
//!
//! A `lifetime` limit's peak is everything the user used up to the period's end.

use crate::input::{EventName, Metadata};
use crate::plan::{Enforcement, Limit, LimitKind, Scope, WindowSpec};
use crate::window::{calendar_window, WindowError};
use jiff::Timestamp;
use std::collections::BTreeMap;

/// One usage event that counted (committed or tracked).
#[derive(Debug, Clone)]
pub struct Used {
    pub at: Timestamp,
    pub event: EventName,
    pub metadata: Metadata,
    pub quantity: u64,
}

/// A half-open span of time [start, end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub start: Timestamp,
    pub end: Timestamp,
}

/// Whether the replay judges `limit` (see the module's documentation).
pub fn judged(limit: &Limit) -> bool {
    limit.kind == LimitKind::Consumable
        && limit.scope == Scope::User
        && limit.enforcement == Enforcement::Hard
}

/// The most units `limit` counted in one of its windows within `period`. `used` must be sorted
/// by time, oldest first.
pub fn peak(limit: &Limit, used: &[Used], period: &Period) -> Result<u64, WindowError> {
    let units = |u: &Used| limit.units(u.quantity).unwrap_or(u64::MAX);
    let counted = |u: &&Used| limit.matches(&u.event, &u.metadata);
    let within = |u: &&Used| u.at >= period.start && u.at < period.end;
    match &limit.window {
        WindowSpec::Lifetime => Ok(used
            .iter()
            .filter(|u| u.at < period.end)
            .filter(counted)
            .fold(0u64, |sum, u| sum.saturating_add(units(u)))),
        WindowSpec::Subscription => Ok(used
            .iter()
            .filter(within)
            .filter(counted)
            .fold(0u64, |sum, u| sum.saturating_add(units(u)))),
        WindowSpec::Calendar {
            period: p,
            timezone,
        } => {
            let mut windows: BTreeMap<Timestamp, u64> = BTreeMap::new();
            for u in used.iter().filter(within).filter(counted) {
                let start = calendar_window(*p, timezone, u.at)?.start;
                let sum = windows.entry(start).or_default();
                *sum = sum.saturating_add(units(u));
            }
            Ok(windows.into_values().max().unwrap_or(0))
        }
        WindowSpec::Rolling { seconds } | WindowSpec::FirstUse { seconds } => {
            let span = i64::from(*seconds) * 1_000;
            let events: Vec<(i64, u64)> = used
                .iter()
                .filter(within)
                .filter(counted)
                .map(|u| (u.at.as_millisecond(), units(u)))
                .collect();
            // The busiest span of `seconds` ending at an event: a sliding sum.
            let (mut best, mut sum, mut first) = (0u64, 0u64, 0usize);
            for (i, &(at, n)) in events.iter().enumerate() {
                sum = sum.saturating_add(n);
                while events[first].0 <= at - span {
                    sum = sum.saturating_sub(events[first].1);
                    first += 1;
                }
                best = best.max(sum);
                debug_assert!(first <= i);
            }
            Ok(best)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{EventPattern, MatchRule};
    use crate::window::CalendarPeriod;
    use jiff::tz::TimeZone;

    fn limit(window: WindowSpec, quota: u64) -> Limit {
        Limit {
            id: "images".into(),
            label: "images".into(),
            unit: "count".into(),
            quota,
            kind: LimitKind::Consumable,
            scope: Scope::User,
            enforcement: Enforcement::Hard,
            multiplier: 1,
            window,
            rules: vec![MatchRule {
                event: EventPattern::parse("image.*").unwrap(),
                metadata: Vec::new(),
            }],
            rollover: None,
        }
    }

    fn used(at: &str, event: &str, quantity: u64) -> Used {
        Used {
            at: at.parse().unwrap(),
            event: EventName::parse(event.to_string()).unwrap(),
            metadata: Metadata::default(),
            quantity,
        }
    }

    fn november() -> Period {
        Period {
            start: "2026-11-01T00:00:00Z".parse().unwrap(),
            end: "2026-12-01T00:00:00Z".parse().unwrap(),
        }
    }

    fn history() -> Vec<Used> {
        vec![
            used("2026-10-31T23:00:00Z", "image.render", 50),
            used("2026-11-02T10:00:00Z", "image.render", 3),
            used("2026-11-02T10:30:00Z", "image.render", 4),
            used("2026-11-02T23:59:59Z", "chat.message", 100),
            used("2026-11-03T00:10:00Z", "image.render", 5),
            used("2026-11-20T12:00:00Z", "image.upscale", 6),
        ]
    }

    #[test]
    fn a_daily_limit_peaks_on_the_busiest_day_of_the_period() {
        let daily = WindowSpec::Calendar {
            period: CalendarPeriod::Day,
            timezone: TimeZone::UTC,
        };
        assert_eq!(peak(&limit(daily, 10), &history(), &november()).unwrap(), 7);
        // In New York the 00:10 UTC event of the 3rd falls on the 2nd: 3 + 4 + 5.
        let ny = WindowSpec::Calendar {
            period: CalendarPeriod::Day,
            timezone: TimeZone::get("America/New_York").unwrap(),
        };
        assert_eq!(peak(&limit(ny, 10), &history(), &november()).unwrap(), 12);
    }

    #[test]
    fn rolling_subscription_and_lifetime_windows() {
        let hour = WindowSpec::Rolling { seconds: 3_600 };
        assert_eq!(peak(&limit(hour, 0), &history(), &november()).unwrap(), 7);
        let fifteen_hours = WindowSpec::Rolling {
            seconds: 15 * 3_600,
        };
        assert_eq!(
            peak(&limit(fifteen_hours, 0), &history(), &november()).unwrap(),
            12
        );
        let month = WindowSpec::Subscription;
        assert_eq!(peak(&limit(month, 0), &history(), &november()).unwrap(), 18);
        // Lifetime counts October too.
        assert_eq!(
            peak(&limit(WindowSpec::Lifetime, 0), &history(), &november()).unwrap(),
            68
        );
    }

    #[test]
    fn what_the_replay_judges() {
        let mut l = limit(WindowSpec::Lifetime, 1);
        assert!(judged(&l));
        l.enforcement = Enforcement::Soft;
        assert!(!judged(&l));
        l.enforcement = Enforcement::Hard;
        l.kind = LimitKind::Concurrency;
        assert!(!judged(&l));
        l.kind = LimitKind::Consumable;
        l.scope = Scope::Account;
        assert!(!judged(&l));
    }
}
