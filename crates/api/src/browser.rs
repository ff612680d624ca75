//! The browser surface (API.md §12): user tokens.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/user-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserTokenRequest {
    /// The user the token reads for; the browser holding it reads nobody else.
    #[schema(example = "u_42")]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub user_id: String,
    /// Seconds until the token expires, 1 to 86400 (default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 86400)]
    pub ttl_seconds: Option<u32>,
}

/// A user token and when it stops working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserTokenResponse {
    /// Send it as the `X-Tollgate-User-Token` header, with a publishable key.
    #[schema(example = "tg_ut_eyJ2IjoxLCJwcmoiOiJwcmpfMSJ9.c2lnbmF0dXJl")]
    pub token: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// One period of a recommendation and the peak of each limit in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecommendationPeriod {
    #[schema(format = DateTime)]
    pub start: String,
    #[schema(format = DateTime)]
    pub end: String,
    /// Each limit's peak in the period: the most units it counted in one of its own windows
    /// (the busiest day of a daily limit), by limit id.
    pub usage: std::collections::BTreeMap<String, u64>,
}

/// A limit that would have denied the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Exceeded {
    pub limit_id: String,
    pub quota: u64,
    pub peak: u64,
    /// The start of the period in which it peaked past the quota.
    #[schema(format = DateTime)]
    pub period_start: String,
}

/// A public plan, judged against the user's usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Candidate {
    pub plan_id: String,
    /// Whether no hard limit of the plan would have denied the user in any period.
    pub fits: bool,
    /// The plan's `price` as the document gives it (`null`: none, counted as free).
    #[schema(value_type = Option<Object>)]
    pub price: Option<serde_json::Value>,
    /// The price over a year, in minor units, for comparing plans billed by month and by year.
    pub yearly_amount: u64,
    pub exceeded: Vec<Exceeded>,
}

/// `GET /v1/plans/recommendation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecommendationResponse {
    pub user_id: String,
    /// The cheapest public plan that would have covered every period (`null`: none would).
    pub plan_id: Option<String>,
    /// Why, in a sentence, with the figures.
    pub reason: String,
    /// Oldest first; the last one runs to now.
    pub periods: Vec<RecommendationPeriod>,
    /// Every public plan, cheapest first.
    pub candidates: Vec<Candidate>,
    /// Usage events replayed (committed and tracked).
    pub events_read: u64,
    /// More events existed than one recommendation reads (200,000); the oldest were left out.
    pub truncated: bool,
}
