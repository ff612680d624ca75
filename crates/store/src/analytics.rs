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

impl AnalyticsQuery {
    /// Where the daily rollup can answer: the whole UTC days `[lo, hi)` inside the range, when
    /// the query reads only what the rollup keeps (counted usage, no filter but the range,
    /// grouped by nothing, user or plan, no buckets, no distinct users) and the range holds at
    /// least one whole day. The rest of the range is read from the events.
    pub fn rollup_days(&self) -> Option<(i64, i64)> {
        let from = self.from.as_millisecond();
        let to = self.to.as_millisecond();
        let lo = day_of(from.saturating_add(DAY_MS - 1));
        let hi = day_of(to);
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
        (plain && lo < hi).then_some((lo, hi))
    }
}
