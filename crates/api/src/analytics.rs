//! Analytics and product events (API.md §9): the bodies of `POST /v1/analytics/usage`,
//! `GET /v1/analytics/top-users`, `GET /v1/analytics/margin`, `POST /v1/capture` and
//! `POST /v1/analytics/funnel`.

use crate::plans::MatchValues;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Most entries of `groupBy`.
pub const ANALYTICS_GROUP_BY_MAX: usize = 8;
/// Most metadata keys in `filters.metadata`.
pub const ANALYTICS_METADATA_FILTERS_MAX: usize = 32;
/// Most values one filter accepts (`status`, or one metadata key).
pub const ANALYTICS_FILTER_VALUES_MAX: usize = 100;
/// Longest time zone name, in bytes.
pub const TIMEZONE_BYTES_MAX: usize = 64;
/// Rows of `top-users` by default, and at most.
pub const TOP_USERS_DEFAULT: usize = 10;
pub const TOP_USERS_MAX: usize = 1_000;
/// Rows of `margin` at most (users or plans).
pub const MARGIN_ROWS_MAX: usize = 10_000;
/// Most steps of a funnel.
pub const FUNNEL_STEPS_MAX: usize = 10;
/// Longest conversion window of a funnel, in seconds (90 days).
pub const FUNNEL_WITHIN_SECONDS_MAX: u64 = 90 * 24 * 3600;
/// Longest `properties` of a captured event, serialized, in bytes.
pub const CAPTURE_PROPERTIES_BYTES_MAX: usize = 16 * 1024;

/// `POST /v1/analytics/usage`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnalyticsUsageRequest {
    /// Events at or after this instant (RFC 3339).
    #[schema(format = DateTime, example = "2026-11-01T00:00:00Z")]
    pub from: String,
    /// Events before this instant (RFC 3339).
    #[schema(format = DateTime, example = "2026-12-01T00:00:00Z")]
    pub to: String,
    /// The IANA time zone `hour`, `day`, `week` and `month` buckets follow (default `UTC`).
    #[serde(default)]
    #[schema(example = "Europe/Paris", min_length = 1, max_length = 64)]
    pub timezone: Option<String>,
    #[serde(default, deserialize_with = "object_or_null")]
    pub filters: Option<AnalyticsFilters>,
    /// Any of `userId`, `accountId`, `event`, `planId`, `status`, `metadata.KEY`, and one of
    /// `hour`, `day`, `week`, `month`; at most 8.
    #[serde(default)]
    #[schema(max_items = 8, example = json!(["day", "metadata.model"]))]
    pub group_by: Vec<String>,
    /// Any of `events`, `quantity`, `costMicros`, `users` (distinct users); default the first
    /// three.
    #[serde(default)]
    #[schema(max_items = 4, example = json!(["events", "quantity", "costMicros"]))]
    pub metrics: Vec<String>,
}

/// A nested object, or `null`: serde would also read a struct from an array of its fields,
/// which the schema does not allow.
fn object_or_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::Error;
    match Option::<serde_json::Value>::deserialize(d)? {
        None => Ok(None),
        Some(v @ serde_json::Value::Object(_)) => serde_json::from_value(v)
            .map(Some)
            .map_err(D::Error::custom),
        Some(_) => Err(D::Error::custom("must be an object")),
    }
}

/// Which usage events an analytics query counts; all given must hold.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnalyticsFilters {
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    pub user_id: Option<String>,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    pub account_id: Option<String>,
    /// An event name or a glob (`image.*`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:*-]+$")]
    pub event: Option<String>,
    /// A status or a list of them (default committed and tracked).
    #[serde(default)]
    pub status: Option<MatchValues>,
    /// Each key must have the value, or one of the values, given.
    #[serde(default)]
    /// At most 32 keys.
    pub metadata: BTreeMap<String, MatchValues>,
}

/// The answer of `POST /v1/analytics/usage`: one row per group, each with its `groupBy`
/// values (buckets named by their start, RFC 3339 in UTC) and the metrics asked for.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsUsageResponse {
    #[schema(value_type = Vec<Object>, example = json!([{"day": "2026-11-30T23:00:00Z",
        "metadata.model": "flux-pro", "events": 3, "quantity": 3, "costMicros": 120000}]))]
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// `GET /v1/analytics/top-users`: the users who used most over a range.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUsersResponse {
    pub users: Vec<TopUser>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopUser {
    pub user_id: String,
    pub events: u64,
    pub quantity: u64,
    pub cost_micros: u64,
}

/// `GET /v1/analytics/margin`: revenue against cost per user or per plan.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarginResponse {
    pub rows: Vec<MarginRow>,
}

/// One user's or plan's revenue and cost over the range. `marginMicros` is revenue minus cost
/// and is negative for a user who costs more than they pay.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MarginRow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    pub revenue_micros: u64,
    pub cost_micros: u64,
    pub margin_micros: i64,
}

/// `POST /v1/capture`: a product event (viewed a paywall, signed up), never metered.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaptureRequest {
    /// The user (with a user token: the token's user, or omitted).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    pub user_id: Option<String>,
    /// An anonymous visitor (`anon_…`); an identify later counts it as its user.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    pub anonymous_id: Option<String>,
    #[schema(
        example = "viewed_paywall",
        min_length = 1,
        max_length = 128,
        pattern = "^[A-Za-z0-9_.:-]+$"
    )]
    pub event: String,
    /// Any JSON object, at most 16 KiB serialized (`null`: none).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub properties: Option<serde_json::Value>,
    /// When it happened (RFC 3339; default now, at most 35 days back, not in the future).
    #[serde(default)]
    #[schema(format = DateTime)]
    pub occurred_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureResponse {
    pub captured: bool,
}

/// `POST /v1/analytics/funnel`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunnelRequest {
    /// Event names, in order: captured product events or usage events (committed, tracked).
    #[schema(min_items = 1, max_items = 10,
        example = json!(["signed_up", "image.render", "viewed_paywall", "upgraded"]))]
    pub steps: Vec<String>,
    /// First steps at or after this instant (RFC 3339).
    #[schema(format = DateTime)]
    pub from: String,
    /// First steps before this instant (RFC 3339).
    #[schema(format = DateTime)]
    pub to: String,
    /// Each later step must happen within this many seconds of the first (1 to 7,776,000).
    #[schema(minimum = 1, maximum = 7_776_000)]
    pub within_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunnelResponse {
    pub steps: Vec<FunnelStep>,
}

/// How many users did this step, and every step before it, in order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunnelStep {
    pub event: String,
    pub users: u64,
}

/// A capture as recorded: whose, what, when.
#[derive(Debug, Clone)]
pub struct CaptureInput {
    /// The user id, or the anonymous id.
    pub subject: tollgate_core::input::UserId,
    pub event: tollgate_core::input::EventName,
    /// The properties as one JSON object (`{}` when none were given).
    pub properties: String,
    pub occurred_at: jiff::Timestamp,
}

impl CaptureRequest {
    /// Checks the request; `now` is the environment's clock.
    pub fn parse(self, now: jiff::Timestamp) -> Result<CaptureInput, crate::FieldError> {
        use crate::convert;
        use crate::FieldError;
        let subject = match (self.user_id, self.anonymous_id) {
            (Some(user), None) => convert::user_id("userId", user)?,
            (None, Some(anon)) => convert::user_id("anonymousId", anon)?,
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "anonymousId",
                    "give userId or anonymousId, not both",
                ))
            }
            (None, None) => {
                return Err(FieldError::new(
                    "userId",
                    "userId or anonymousId is required",
                ))
            }
        };
        let event = convert::event_name("event", self.event)?;
        let properties = match self.properties {
            None => "{}".to_string(),
            Some(serde_json::Value::Object(map)) => {
                let text = serde_json::Value::Object(map).to_string();
                if text.len() > CAPTURE_PROPERTIES_BYTES_MAX {
                    return Err(FieldError::new(
                        "properties",
                        format!(
                            "at most {CAPTURE_PROPERTIES_BYTES_MAX} bytes serialized, got {}",
                            text.len()
                        ),
                    ));
                }
                text
            }
            Some(_) => return Err(FieldError::new("properties", "must be a JSON object")),
        };
        let occurred_at = match &self.occurred_at {
            None => now,
            Some(text) => {
                crate::metering::occurred_at(crate::parse_timestamp("occurredAt", text)?, now)?
            }
        };
        Ok(CaptureInput {
            subject,
            event,
            properties,
            occurred_at,
        })
    }
}
