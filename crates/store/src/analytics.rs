//! The analytics reads (API.md §9): usage events summed by any grouping over a range, product
//! events captured beside them, and the step occurrences a funnel is computed from.
//!
//! The stores only filter, group and sum; calendar buckets in a time zone are computed by the
//! server with jiff and handed in as boundaries, so both backends bucket the same way.

use crate::EnvId;
use jiff::Timestamp;
use tollgate_core::plan::EventPattern;

/// Most rows one analytics answer holds; a grouping with more is refused (narrow it).
pub const ANALYTICS_ROWS_MAX: usize = 10_000;
/// Most time buckets one analytics query spans (a year of hours is 8,784).
pub const ANALYTICS_BUCKETS_MAX: usize = 10_000;
/// Most step occurrences one funnel reads; a range with more is refused (narrow it).
pub const FUNNEL_OCCURRENCES_MAX: usize = 2_000_000;

/// What a row of an analytics answer is grouped by, besides its time bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dimension {
    UserId,
    AccountId,
    Event,
    PlanId,
    Status,
    /// The value of one metadata key (`null` where the event has none).
    Metadata(String),
}

/// What is summed per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Events,
    Quantity,
    CostMicros,
    Users,
}

/// `POST /v1/analytics/usage` and `GET /v1/analytics/top-users`, as the stores run them.
#[derive(Debug, Clone)]
pub struct AnalyticsQuery {
    pub env: EnvId,
    /// Events at or after this instant.
    pub from: Timestamp,
    /// Events before this instant.
    pub to: Timestamp,
    /// The environment's clock: no event is later (see [`AnalyticsQuery::rollup_plan`]).
    pub now: Timestamp,
    pub user_id: Option<String>,
    pub account_id: Option<String>,
    pub event: Option<EventPattern>,
    /// Any of these statuses (never empty).
    pub statuses: Vec<String>,
    /// Each key must have one of its values.
    pub metadata: Vec<(String, Vec<String>)>,
    pub group_by: Vec<Dimension>,
    /// Whether to count distinct users (a row's `users` is 0 otherwise): the one metric that
    /// costs more than a pass over the rows.
    pub count_users: bool,
    /// Time buckets: ascending instants in ms, each the start of a bucket and the last one the
    /// end of the final bucket. Rows are then grouped by bucket index too.
    pub buckets: Option<Vec<i64>>,
    /// Sort by this metric, largest first (else by bucket, then the dimensions).
    pub order_by: Option<Metric>,
    /// Rows wanted: a store answers at most this many.
    pub limit: usize,
}

/// One group of an analytics answer: its dimension values in `group_by` order, its bucket
/// index, and every metric (a store computes all four; the server shows those asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalyticsRow {
    pub keys: Vec<Option<String>>,
    pub bucket: Option<usize>,
    pub events: u64,
    pub quantity: u64,
    pub cost_micros: u64,
    pub users: u64,
}

/// `POST /v1/capture`: a product event, never metered.
#[derive(Debug, Clone)]
pub struct CaptureCommand {
    pub env: EnvId,
    pub capture_id: String,
    /// The user id, or the anonymous id an identify may later map to a user.
    pub subject: String,
    pub event: String,
    /// A JSON object.
    pub properties: String,
    pub occurred_at: Timestamp,
    pub received_at: Timestamp,
}

/// `POST /v1/analytics/funnel`: every occurrence of the steps' events in a range, across
/// captured product events and usage events (committed and tracked), by user.
#[derive(Debug, Clone)]
pub struct FunnelQuery {
    pub env: EnvId,
    pub from: Timestamp,
    pub to: Timestamp,
    /// Event names, exactly (a step may repeat an earlier one).
    pub events: Vec<String>,
    /// Occurrences wanted: a store answers at most this many.
    pub limit: usize,
}

/// One occurrence of a funnel step's event: who (identified anonymous ids resolved to their
/// user), which event, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    pub user_id: String,
    pub event: String,
    pub at_ms: i64,
}

/// Most subscriptions one margin answer reads; an environment with more is refused.
pub const REVENUE_SUBSCRIPTIONS_MAX: usize = 100_000;

/// A subscription as revenue is spread from it: its current row and the history entries that
/// start or end a plan (created, plan_changed, reactivated, ended), oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevenueSource {
    pub subject: String,
    pub plan_id: String,
    pub cycle_start: Timestamp,
    pub ends_at: Option<Timestamp>,
    pub created_at: Timestamp,
    /// (kind, when, the plan it moved to).
    pub history: Vec<(String, Timestamp, Option<String>)>,
}

/// One UTC day in ms, the key of the daily usage rollup.
pub const DAY_MS: i64 = 86_400_000;

/// Whether a usage event of this status counts as usage in analytics by default, and in the
/// daily rollup (`usage_daily`): what happened, not what was held, given back or refused.
pub fn counted(status: &str) -> bool {
    matches!(status, "committed" | "tracked")
}

/// The start of the UTC day holding `ms`.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS
}

/// How the daily rollup answers a query: its whole days `[days.0, days.1)`, plus the events of
/// the `add` ranges, minus the events of the `subtract` ranges (each `[start, end)` in ms, an
/// empty one `(0, 0)`). An edge of the range inside a day is read whichever way reads fewer
/// events: the events from the edge to the day's end are added, or the day is taken whole from
/// the rollup and the events from its start to the edge subtracted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollupPlan {
    pub days: (i64, i64),
    pub add: [(i64, i64); 2],
    pub subtract: [(i64, i64); 2],
}

impl AnalyticsQuery {
    /// The rollup's plan for this query, when the rollup can answer it: counted usage only, no
    /// filter but the range, grouped by nothing, user or plan, no buckets, no distinct users.
    /// `now` tells which events cannot exist yet: a range that ends now subtracts the rest of
    /// today, which holds none.
    pub fn rollup_plan(&self, now: Timestamp) -> Option<RollupPlan> {
        let mut statuses: Vec<&str> = self.statuses.iter().map(String::as_str).collect();
        statuses.sort_unstable();
        let plain = self.user_id.is_none()
            && self.account_id.is_none()
            && self.event.is_none()
            && self.metadata.is_empty()
            && self.buckets.is_none()
            && !self.count_users
            && self.order_by != Some(Metric::Users)
            && statuses == ["committed", "tracked"]
            && (self.group_by.iter()).all(|d| matches!(d, Dimension::UserId | Dimension::PlanId));
        if !plain {
            return None;
        }
        let (from, to) = (self.from.as_millisecond(), self.to.as_millisecond());
        let none = (0, 0);
        let mut plan = RollupPlan {
            days: (0, 0),
            add: [none; 2],
            subtract: [none; 2],
        };
        let d0 = day_of(from);
        plan.days.0 = if from == d0 {
            d0
        } else if from - d0 < d0 + DAY_MS - from {
            plan.subtract[0] = (d0, from);
            d0
        } else {
            plan.add[0] = (from, d0 + DAY_MS);
            d0 + DAY_MS
        };
        let d1 = day_of(to);
        plan.days.1 = if to == d1 {
            d1
        } else if to >= now.as_millisecond() || d1 + DAY_MS - to < to - d1 {
            plan.subtract[1] = (to, d1 + DAY_MS);
            d1 + DAY_MS
        } else {
            plan.add[1] = (d1, to);
            d1
        };
        // A range inside one day read from its edges (`days` empty or reversed): the events
        // alone answer.
        (plan.days.0 < plan.days.1).then_some(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(from: &str, to: &str) -> AnalyticsQuery {
        AnalyticsQuery {
            env: EnvId(1),
            from: from.parse().unwrap(),
            to: to.parse().unwrap(),
            now: "2027-01-01T00:00:00Z".parse().unwrap(),
            user_id: None,
            account_id: None,
            event: None,
            statuses: vec!["tracked".into(), "committed".into()],
            metadata: Vec::new(),
            group_by: vec![Dimension::UserId],
            count_users: false,
            buckets: None,
            order_by: Some(Metric::CostMicros),
            limit: 10,
        }
    }

    fn ms(t: &str) -> i64 {
        t.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn each_edge_reads_the_smaller_part_of_its_day() {
        let later: Timestamp = "2027-01-01T00:00:00Z".parse().unwrap();
        let q = query("2026-11-01T20:00:00Z", "2026-11-30T02:00:00Z");
        assert_eq!(
            q.rollup_plan(later),
            Some(RollupPlan {
                days: (ms("2026-11-02T00:00:00Z"), ms("2026-11-30T00:00:00Z")),
                add: [
                    (ms("2026-11-01T20:00:00Z"), ms("2026-11-02T00:00:00Z")),
                    (ms("2026-11-30T00:00:00Z"), ms("2026-11-30T02:00:00Z")),
                ],
                subtract: [(0, 0), (0, 0)],
            })
        );
        let q = query("2026-11-01T02:00:00Z", "2026-11-30T20:00:00Z");
        assert_eq!(
            q.rollup_plan(later),
            Some(RollupPlan {
                days: (ms("2026-11-01T00:00:00Z"), ms("2026-12-01T00:00:00Z")),
                add: [(0, 0), (0, 0)],
                subtract: [
                    (ms("2026-11-01T00:00:00Z"), ms("2026-11-01T02:00:00Z")),
                    (ms("2026-11-30T20:00:00Z"), ms("2026-12-01T00:00:00Z")),
                ],
            })
        );
        // Ending now: the rest of today holds no event yet, so today comes from the rollup.
        let q = query("2026-11-01T00:00:00Z", "2026-11-30T02:00:00Z");
        let now: Timestamp = "2026-11-30T02:00:00Z".parse().unwrap();
        let plan = q.rollup_plan(now).unwrap();
        assert_eq!(plan.days.1, ms("2026-12-01T00:00:00Z"));
        assert_eq!(plan.add, [(0, 0), (0, 0)]);
        // Within one day, read from both edges: the events answer.
        let q = query("2026-11-01T02:00:00Z", "2026-11-01T05:00:00Z");
        assert_eq!(q.rollup_plan(later), None);
        // Any filter keeps the query on the events.
        let mut q = query("2026-11-01T00:00:00Z", "2026-11-30T00:00:00Z");
        q.event = Some(EventPattern::parse("image.*").unwrap());
        assert_eq!(q.rollup_plan(later), None);
    }
}
