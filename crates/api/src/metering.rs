//! Metering bodies (API.md §3–§4): reserve, commit, release, extend, reservation, track, check
//! and usage, with the conversion of each request into core newtypes.
//!
//! Requests reject unknown fields so a typo never silently defaults. Responses are plain data:
//! the server fills them from store outcomes.

use crate::convert;
use crate::field::FieldError;
use crate::subscriptions::SubscriptionResponse;
use crate::time::parse_timestamp;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tollgate_core::decision;
use tollgate_core::input::{
    EventName, IdempotencyKey, InputError, Metadata, Quantity, StoredText, TtlSeconds, UserId,
    OCCURRED_AT_PAST_SECONDS_MAX, RELEASE_ERROR_CODE_BYTES_MAX, RELEASE_REASON_BYTES_MAX,
};
use tollgate_core::plan;
use utoipa::ToSchema;

/// How far in the future a tracked `occurredAt` may lie and still count as now, in seconds:
/// room for clock skew between the app's servers and Tollgate.
pub const OCCURRED_AT_FUTURE_SKEW_SECONDS_MAX: i64 = 300;

/// A metadata map on the wire: string keys to string values.
pub type WireMetadata = BTreeMap<String, String>;

// ---------------------------------------------------------------- shared response parts

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    #[default]
    Consumable,
    Concurrency,
}

impl From<plan::LimitKind> for LimitKind {
    fn from(k: plan::LimitKind) -> Self {
        match k {
            plan::LimitKind::Consumable => Self::Consumable,
            plan::LimitKind::Concurrency => Self::Concurrency,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    #[default]
    User,
    Account,
}

impl From<plan::Scope> for LimitScope {
    fn from(s: plan::Scope) -> Self {
        match s {
            plan::Scope::User => Self::User,
            plan::Scope::Account => Self::Account,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    #[default]
    Hard,
    Soft,
}

impl From<plan::Enforcement> for Enforcement {
    fn from(e: plan::Enforcement) -> Self {
        match e {
            plan::Enforcement::Hard => Self::Hard,
            plan::Enforcement::Soft => Self::Soft,
        }
    }
}

/// Why a request was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    LimitReached,
    ConcurrencyLimitReached,
    UnmatchedEvent,
    NoSubscription,
}

impl From<decision::DenyReason> for DenyReason {
    fn from(r: decision::DenyReason) -> Self {
        match r {
            decision::DenyReason::LimitReached => Self::LimitReached,
            decision::DenyReason::ConcurrencyLimitReached => Self::ConcurrencyLimitReached,
            decision::DenyReason::UnmatchedEvent => Self::UnmatchedEvent,
            decision::DenyReason::NoSubscription => Self::NoSubscription,
        }
    }
}

/// The state of one limit for one subject (API.md §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitState {
    #[schema(example = "images_daily")]
    pub limit_id: String,
    pub label: String,
    #[schema(example = "count")]
    pub unit: String,
    pub kind: LimitKind,
    pub scope: LimitScope,
    pub enforcement: Enforcement,
    pub quota: u64,
    pub used: u64,
    pub reserved: u64,
    /// `max(0, quota - used - reserved)`.
    pub remaining: u64,
    /// Null for a first_use window that has not opened.
    #[schema(format = DateTime)]
    pub window_start: Option<String>,
    /// Null for lifetime windows; for rolling windows, when the oldest counted usage leaves.
    #[schema(format = DateTime)]
    pub resets_at: Option<String>,
}

/// Credits a reserve holds (or a check would hold now) for the part of the request no plan
/// quota covers (API.md §8).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreditsHeld {
    pub held: u64,
    /// Each grant's part of `held`, in spend order; `[]` when nothing is held.
    #[serde(default)]
    pub grants: Vec<CreditDraw>,
}

/// Units held on one credit grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreditDraw {
    #[schema(example = "grt_0VcKUIUad8dj2x")]
    pub grant_id: String,
    pub quantity: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    Pending,
    Committed,
    Released,
    Expired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MatchStatus {
    Matched,
    Unmatched,
    NoSubscription,
}

// ---------------------------------------------------------------- reserve

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReserveRequest {
    #[schema(example = "u_42")]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub user_id: String,
    #[schema(example = "image.render")]
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:-]+$")]
    pub event: String,
    /// At least 1; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 9_007_199_254_740_991_u64)]
    pub quantity: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::schema::metadata_or_null)]
    pub metadata: Option<WireMetadata>,
    /// 1–3600; default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 3600)]
    pub ttl_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 128)]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

/// A reserve in domain types.
#[derive(Debug, Clone)]
pub struct ReserveInput {
    pub user_id: UserId,
    pub event: EventName,
    pub quantity: Quantity,
    pub metadata: Metadata,
    pub ttl: TtlSeconds,
    pub idempotency_key: Option<IdempotencyKey>,
    pub prompt: Option<StoredText>,
}

impl ReserveRequest {
    pub fn parse(self) -> Result<ReserveInput, FieldError> {
        let quantity = match self.quantity {
            None => Quantity::ONE,
            Some(n) => Quantity::positive(n).map_err(|e| convert::refuse("quantity", e))?,
        };
        let ttl = match self.ttl_seconds {
            None => TtlSeconds::DEFAULT,
            Some(n) => TtlSeconds::new(n).map_err(|e| convert::refuse("ttlSeconds", e))?,
        };
        Ok(ReserveInput {
            user_id: convert::user_id("userId", self.user_id)?,
            event: convert::event_name("event", self.event)?,
            quantity,
            metadata: convert::metadata("metadata", self.metadata)?,
            ttl,
            idempotency_key: convert::idempotency_key("idempotencyKey", self.idempotency_key)?,
            prompt: convert::stored_text(self.prompt),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReserveResponse {
    pub allowed: bool,
    /// Null when denied.
    #[schema(example = "rsv_3kq7")]
    pub reservation_id: Option<String>,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    pub plan_id: Option<String>,
    pub reasons: Vec<DenyReason>,
    /// The ids of the limits that refused.
    pub denied_by: Vec<String>,
    /// Every matching limit, after the hold.
    pub limits: Vec<LimitState>,
    pub credits: CreditsHeld,
}

// ---------------------------------------------------------------- commit, release, extend

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommitRequest {
    /// The final quantity (default: the reserved one); may be 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 9_007_199_254_740_991_u64)]
    pub quantity: Option<u64>,
    /// Merged over the reserve's metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::schema::metadata_or_null)]
    pub metadata: Option<WireMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 9_007_199_254_740_991_u64)]
    pub cost_micros: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// What to do if the reservation expired before this commit: `reject` (the default,
    /// `409 reservation_not_pending`) or `record` (record the work anyway, charged like a
    /// commit of more than was held; the answer says `late: true`). A released reservation is
    /// always refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_expired: Option<IfExpired>,
}

/// What a commit does with a reservation that expired before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum IfExpired {
    #[default]
    Reject,
    Record,
}

#[derive(Debug, Clone)]
pub struct CommitInput {
    pub quantity: Option<Quantity>,
    pub metadata: Option<Metadata>,
    pub cost_micros: Option<u64>,
    pub response: Option<StoredText>,
    pub if_expired: IfExpired,
}

impl CommitRequest {
    pub fn parse(self) -> Result<CommitInput, FieldError> {
        let quantity = self
            .quantity
            .map(|n| Quantity::new(n).map_err(|e| convert::refuse("quantity", e)))
            .transpose()?;
        let metadata = match self.metadata {
            None => None,
            some => Some(convert::metadata("metadata", some)?),
        };
        Ok(CommitInput {
            quantity,
            metadata,
            cost_micros: convert::micros("costMicros", self.cost_micros)?,
            response: convert::stored_text(self.response),
            if_expired: self.if_expired.unwrap_or_default(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommitResponse {
    pub reservation_id: String,
    /// Always `committed`.
    pub status: ReservationStatus,
    #[schema(example = "evt_9xk2")]
    pub event_id: String,
    pub quantity: u64,
    /// The part of the quantity that did not fit within a hard limit (recorded all the same).
    pub overage: u64,
    /// Committed after the reservation had expired (`"ifExpired": "record"`).
    pub late: bool,
    pub limits: Vec<LimitState>,
    /// Units of the final quantity paid for with credits.
    #[serde(default)]
    pub credits_used: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseRequest {
    /// At most 500 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 500,
        pattern = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$"
    )]
    pub reason: Option<String>,
    /// At most 100 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 100,
        pattern = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$"
    )]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ReleaseInput {
    pub reason: Option<String>,
    pub error_code: Option<String>,
    pub response: Option<StoredText>,
}

impl ReleaseRequest {
    pub fn parse(self) -> Result<ReleaseInput, FieldError> {
        if let Some(reason) = &self.reason {
            convert::bounded_text("reason", reason, RELEASE_REASON_BYTES_MAX)?;
        }
        if let Some(code) = &self.error_code {
            convert::bounded_text("errorCode", code, RELEASE_ERROR_CODE_BYTES_MAX)?;
        }
        Ok(ReleaseInput {
            reason: self.reason,
            error_code: self.error_code,
            response: convert::stored_text(self.response),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseResponse {
    pub reservation_id: String,
    /// Always `released`.
    pub status: ReservationStatus,
    pub limits: Vec<LimitState>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtendRequest {
    /// 1–3600; the new expiry is now + ttlSeconds. Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 3600)]
    pub ttl_seconds: Option<u64>,
}

impl ExtendRequest {
    pub fn parse(self) -> Result<TtlSeconds, FieldError> {
        match self.ttl_seconds {
            None => Ok(TtlSeconds::DEFAULT),
            Some(n) => TtlSeconds::new(n).map_err(|e| convert::refuse("ttlSeconds", e)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtendResponse {
    pub reservation_id: String,
    /// Always `pending`.
    pub status: ReservationStatus,
    #[schema(format = DateTime)]
    pub expires_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReservationResponse {
    pub reservation_id: String,
    pub status: ReservationStatus,
    pub user_id: String,
    pub event: String,
    pub quantity: u64,
    pub metadata: WireMetadata,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// The usage event a committed reservation became.
    pub event_id: Option<String>,
}

// ---------------------------------------------------------------- track

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrackRequest {
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub user_id: String,
    #[schema(example = "llm.tokens")]
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:-]+$")]
    pub event: String,
    /// Default 1; may be 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 9_007_199_254_740_991_u64)]
    pub quantity: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::schema::metadata_or_null)]
    pub metadata: Option<WireMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 128)]
    pub idempotency_key: Option<String>,
    /// Default now; at most 35 days back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub occurred_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 9_007_199_254_740_991_u64)]
    pub cost_micros: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// An atomic check-and-record that records nothing when it would not fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforce: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct TrackInput {
    pub user_id: UserId,
    pub event: EventName,
    pub quantity: Quantity,
    pub metadata: Metadata,
    pub idempotency_key: Option<IdempotencyKey>,
    pub occurred_at: Timestamp,
    pub cost_micros: Option<u64>,
    pub prompt: Option<StoredText>,
    pub response: Option<StoredText>,
    pub enforce: bool,
}

impl TrackRequest {
    /// `now` is the environment's clock: `occurredAt` must lie within 35 days before it (a
    /// few minutes after it count as now, for clock skew).
    pub fn parse(self, now: Timestamp) -> Result<TrackInput, FieldError> {
        let occurred_at = match &self.occurred_at {
            None => now,
            Some(text) => occurred_at(parse_timestamp("occurredAt", text)?, now)?,
        };
        Ok(TrackInput {
            user_id: convert::user_id("userId", self.user_id)?,
            event: convert::event_name("event", self.event)?,
            quantity: convert::quantity("quantity", self.quantity, Quantity::ONE)?,
            metadata: convert::metadata("metadata", self.metadata)?,
            idempotency_key: convert::idempotency_key("idempotencyKey", self.idempotency_key)?,
            occurred_at,
            cost_micros: convert::micros("costMicros", self.cost_micros)?,
            prompt: convert::stored_text(self.prompt),
            response: convert::stored_text(self.response),
            enforce: self.enforce.unwrap_or(false),
        })
    }
}

pub(crate) fn occurred_at(at: Timestamp, now: Timestamp) -> Result<Timestamp, FieldError> {
    // A bound past the representable range is no bound at all.
    let oldest = now
        .checked_sub(SignedDuration::from_secs(OCCURRED_AT_PAST_SECONDS_MAX))
        .ok();
    let latest = now
        .checked_add(SignedDuration::from_secs(
            OCCURRED_AT_FUTURE_SKEW_SECONDS_MAX,
        ))
        .ok();
    if oldest.is_some_and(|oldest| at < oldest) {
        return Err(FieldError::new(
            "occurredAt",
            format!(
                "must be at most {} days in the past",
                OCCURRED_AT_PAST_SECONDS_MAX / 86_400
            ),
        ));
    }
    if latest.is_some_and(|latest| at > latest) {
        return Err(FieldError::new("occurredAt", "must not be in the future"));
    }
    Ok(at.min(now))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackResponse {
    /// Null if nothing was recorded.
    pub event_id: Option<String>,
    pub recorded: bool,
    pub allowed: bool,
    pub reasons: Vec<DenyReason>,
    pub match_status: MatchStatus,
    pub overage: u64,
    pub plan_id: Option<String>,
    pub limits: Vec<LimitState>,
    /// Units paid for with credits.
    #[serde(default)]
    pub credits_used: u64,
}

// ---------------------------------------------------------------- check

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckRequest {
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub user_id: String,
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:-]+$")]
    pub event: String,
    /// At least 1; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 9_007_199_254_740_991_u64)]
    pub quantity: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::schema::metadata_or_null)]
    pub metadata: Option<WireMetadata>,
}

#[derive(Debug, Clone)]
pub struct CheckInput {
    pub user_id: UserId,
    pub event: EventName,
    pub quantity: Quantity,
    pub metadata: Metadata,
}

impl CheckRequest {
    pub fn parse(self) -> Result<CheckInput, FieldError> {
        let quantity = match self.quantity {
            None => Quantity::ONE,
            Some(n) => Quantity::positive(n).map_err(|e| convert::refuse("quantity", e))?,
        };
        Ok(CheckInput {
            user_id: convert::user_id("userId", self.user_id)?,
            event: convert::event_name("event", self.event)?,
            quantity,
            metadata: convert::metadata("metadata", self.metadata)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckResponse {
    pub allowed: bool,
    pub plan_id: Option<String>,
    pub reasons: Vec<DenyReason>,
    pub denied_by: Vec<String>,
    pub limits: Vec<LimitState>,
    pub credits: CreditsHeld,
}

// ---------------------------------------------------------------- usage

/// Parses the `userId` of a path such as `/v1/users/{userId}/usage`.
pub fn parse_path_user_id(s: String) -> Result<UserId, FieldError> {
    convert::user_id("userId", s)
}

/// The `?event=` filter of a usage query.
pub fn parse_event_filter(s: Option<String>) -> Result<Option<EventName>, FieldError> {
    s.map(|s| convert::event_name("event", s)).transpose()
}

/// A subject's credits of one pack item (or one limit's rollovers), over unexpired grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreditBalance {
    /// Null for rollover grants (`itemId` is then the limit id).
    pub pack_id: Option<String>,
    pub item_id: String,
    pub unit: String,
    /// `remaining − held`.
    pub available: u64,
    /// Held by pending reservations.
    pub held: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageResponse {
    pub user_id: String,
    pub plan_id: Option<String>,
    pub subscription: Option<SubscriptionResponse>,
    pub limits: Vec<LimitState>,
    pub credits: Vec<CreditBalance>,
}

/// Refuses a value the domain accepted in general but not here.
pub fn input_error(field: &str, error: InputError) -> FieldError {
    convert::refuse(field, error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::from_json_str;

    fn reserve(json: &str) -> Result<ReserveInput, FieldError> {
        from_json_str::<ReserveRequest>(json)?.parse()
    }

    #[test]
    fn reserve_defaults_and_limits() {
        let r = reserve(r#"{"userId":"u","event":"image.render"}"#).unwrap();
        assert_eq!(r.quantity, Quantity::ONE);
        assert_eq!(r.ttl, TtlSeconds::DEFAULT);
        assert_eq!(
            reserve(r#"{"userId":"u","event":"e","quantity":0}"#)
                .unwrap_err()
                .field,
            "quantity"
        );
        assert_eq!(
            reserve(r#"{"userId":"u","event":"e","ttlSeconds":3601}"#)
                .unwrap_err()
                .field,
            "ttlSeconds"
        );
        assert!(reserve(r#"{"userId":"u","event":"e","quantity":9007199254740991}"#).is_ok());
        assert_eq!(
            reserve(r#"{"userId":"u","event":"e","quantity":9007199254740992}"#)
                .unwrap_err()
                .field,
            "quantity"
        );
        let e = reserve(r#"{"userId":"u","event":"e","metadata":{"bad key":"v"}}"#).unwrap_err();
        assert_eq!(e.field, "metadata.bad key");
        let e = reserve(r#"{"userId":"u","event":"e","metadata":{"model":1}}"#).unwrap_err();
        assert_eq!(e.field, "metadata.model");
        let e = reserve(r#"{"userId":"u","event":"e","quantiy":2}"#).unwrap_err();
        assert_eq!(e.field, "quantiy");
    }

    #[test]
    fn occurred_at_window() {
        let now: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        let track = |at: &str| {
            TrackRequest {
                user_id: "u".into(),
                event: "e".into(),
                occurred_at: Some(at.into()),
                ..Default::default()
            }
            .parse(now)
        };
        assert!(track("2026-01-25T00:00:00Z").is_ok());
        assert_eq!(
            track("2026-01-24T23:59:59Z").unwrap_err().field,
            "occurredAt"
        );
        assert_eq!(
            track("2026-03-01T00:01:00Z").unwrap().occurred_at,
            now,
            "a little skew counts as now"
        );
        assert!(track("2026-03-01T01:00:00Z").is_err());
    }

    #[test]
    fn release_text_limits() {
        let ok = ReleaseRequest {
            reason: Some("r".repeat(RELEASE_REASON_BYTES_MAX)),
            ..Default::default()
        };
        assert!(ok.parse().is_ok());
        let long = ReleaseRequest {
            error_code: Some("c".repeat(RELEASE_ERROR_CODE_BYTES_MAX + 1)),
            ..Default::default()
        };
        assert_eq!(long.parse().unwrap_err().field, "errorCode");
    }

    #[test]
    fn cursors_are_taken_only_in_the_shape_they_are_given() {
        let cursor = events_cursor(1_764_417_600_000, "evt_0VcWs0aA1N0sJO8Z");
        assert_eq!(
            parse_events_cursor(&cursor).unwrap(),
            (1_764_417_600_000, "evt_0VcWs0aA1N0sJO8Z".to_string())
        );
        assert_eq!(parse_events_cursor("-0:e").unwrap(), (0, "e".to_string()));
        let long_id = format!("1:{}", "e".repeat(65));
        let wide_id = format!("1:{}", "é".repeat(40));
        for bad in [
            "",
            "1",
            "1:",
            "+1:e",
            " 1:e",
            "x:e",
            "1:e-f",
            "123456789012345:e",
            long_id.as_str(),
            wide_id.as_str(),
        ] {
            assert_eq!(
                parse_events_cursor(bad).unwrap_err().field,
                "cursor",
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_cursor_millis("99999999999999"),
            Some(99_999_999_999_999)
        );
        assert_eq!(
            parse_cursor_millis("-99999999999999"),
            Some(-99_999_999_999_999)
        );
        assert_eq!(parse_cursor_millis("--1"), None);
    }
}

/// `POST /v1/identify`: an anonymous visitor signed up (or logged in) as a user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentifyRequest {
    /// The id the visitor was metered under, e.g. `anon_…`.
    #[schema(example = "anon_7f3a")]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub anonymous_id: String,
    #[schema(example = "u_42")]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub user_id: String,
    /// Merged into the user's stored traits (a key given again takes its new value): a JSON
    /// object of at most 64 keys and 16 KiB, also once merged. `DELETE /v1/users/{userId}`
    /// deletes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub traits: Option<serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct IdentifyInput {
    pub anonymous_id: UserId,
    pub user_id: UserId,
    /// A JSON object (the store checks its limits, alone and once merged).
    pub traits: Option<serde_json::Map<String, serde_json::Value>>,
}

impl IdentifyRequest {
    pub fn parse(self) -> Result<IdentifyInput, FieldError> {
        let traits = match self.traits {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Object(map)) => Some(map),
            Some(_) => return Err(FieldError::new("traits", "must be a JSON object")),
        };
        let anonymous_id = convert::user_id("anonymousId", self.anonymous_id)?;
        let user_id = convert::user_id("userId", self.user_id)?;
        if anonymous_id == user_id {
            return Err(FieldError::new("userId", "must differ from anonymousId"));
        }
        Ok(IdentifyInput {
            anonymous_id,
            user_id,
            traits,
        })
    }
}

/// `DELETE /v1/users/{userId}`: what was erased.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EraseResponse {
    pub erased: ErasedCounts,
}

/// How many of each were erased (all 0 for a user with nothing stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErasedCounts {
    /// Logged prompts cleared (their usage events stay, with their counts).
    pub prompts: u64,
    /// Logged responses cleared.
    pub responses: u64,
    /// Keys of the user's traits deleted.
    pub traits: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentifyResponse {
    /// The user the anonymous id now stands for: `userId`, or the user that id was itself
    /// merged into.
    pub user_id: String,
    /// False when the anonymous id already stood for this user: nothing changed.
    pub merged: bool,
    /// Usage events moved from the anonymous id to the user by this call.
    pub events_merged: u64,
}

/// Most events one `GET /v1/events` page holds, and the default.
pub const EVENTS_PAGE_MAX: usize = 1000;
pub const EVENTS_PAGE_DEFAULT: usize = 100;
/// The statuses a usage event can have.
pub const EVENT_STATUSES: [&str; 5] = ["committed", "released", "expired", "tracked", "denied"];

/// One usage event (API.md §9).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageEvent {
    #[schema(example = "evt_0VcKUIUad8dj2")]
    pub event_id: String,
    #[schema(format = DateTime)]
    pub occurred_at: String,
    pub user_id: String,
    /// Always `null` in this build (events are recorded per user).
    pub account_id: Option<String>,
    /// The anonymous id the event was recorded under, when `POST /v1/identify` moved it to
    /// `userId` (added to the contract's event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<String>,
    pub event: String,
    pub quantity: u64,
    pub metadata: WireMetadata,
    pub cost_micros: Option<u64>,
    /// `committed`, `released`, `expired`, `tracked` or `denied`.
    pub status: String,
    pub plan_id: Option<String>,
    pub reservation_id: Option<String>,
    pub reasons: Vec<String>,
    pub overage: u64,
    /// Units paid for with credits.
    pub credits_used: u64,
}

/// `GET /v1/events/{eventId}`: the event, and its prompt and response when they were logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageEventDetail {
    #[serde(flatten)]
    pub event: UsageEvent,
    /// The logged prompt (`null`: none was logged).
    pub prompt: Option<String>,
    /// The logged response (`null`: none was logged).
    pub response: Option<String>,
    /// The prompt or the response was cut to 32 KiB when it was logged.
    pub truncated: bool,
}

/// Most `metadata.KEY=VALUE` filters of one events query: as many as an event's metadata
/// may have entries.
pub const EVENT_METADATA_FILTERS_MAX: usize = 32;

/// The columns of `GET /v1/events/export?format=csv`, in order.
pub const EVENT_CSV_COLUMNS: [&str; 15] = [
    "eventId",
    "occurredAt",
    "userId",
    "accountId",
    "anonymousId",
    "event",
    "quantity",
    "metadata",
    "costMicros",
    "status",
    "planId",
    "reservationId",
    "reasons",
    "overage",
    "creditsUsed",
];

impl UsageEvent {
    /// One CSV record (RFC 4180: a field with a comma, quote, CR or LF is quoted, quotes
    /// doubled), without its line end. `metadata` is its JSON object; `reasons` are joined
    /// by `;`; an absent value is an empty field.
    pub fn csv_record(&self) -> String {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let fields = [
            self.event_id.clone(),
            self.occurred_at.clone(),
            self.user_id.clone(),
            opt(&self.account_id),
            opt(&self.anonymous_id),
            self.event.clone(),
            self.quantity.to_string(),
            serde_json::to_string(&self.metadata).unwrap_or_default(),
            self.cost_micros.map(|c| c.to_string()).unwrap_or_default(),
            self.status.clone(),
            opt(&self.plan_id),
            opt(&self.reservation_id),
            self.reasons.join(";"),
            self.overage.to_string(),
            self.credits_used.to_string(),
        ];
        fields
            .iter()
            .map(|f| csv_field(f))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// One CSV field, quoted when it must be.
pub fn csv_field(field: &str) -> std::borrow::Cow<'_, str> {
    if field.contains([',', '"', '\r', '\n']) {
        std::borrow::Cow::Owned(format!("\"{}\"", field.replace('"', "\"\"")))
    } else {
        std::borrow::Cow::Borrowed(field)
    }
}

/// `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventsResponse {
    /// Newest first.
    pub events: Vec<UsageEvent>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The position after an event in the newest-first order, as a `cursor`.
pub fn events_cursor(occurred_at_ms: i64, event_id: &str) -> String {
    format!("{occurred_at_ms}:{event_id}")
}

/// Most digits of the time in a cursor: every such millisecond count is a valid timestamp
/// (year -1199 to 5138), so the OpenAPI pattern `-?[0-9]{1,14}` says exactly what is taken.
pub const CURSOR_MILLIS_DIGITS_MAX: usize = 14;

/// The time part of a list cursor: an optional `-` and 1 to 14 digits (no `+`, no spaces).
pub fn parse_cursor_millis(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let plain = (1..=CURSOR_MILLIS_DIGITS_MAX).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit());
    plain.then(|| s.parse::<i64>().ok()).flatten()
}

/// A `cursor` back as (time in ms, event id): `-?[0-9]{1,14}:[A-Za-z0-9_]{1,64}`, the shape
/// [`events_cursor`] writes, and nothing else.
pub fn parse_events_cursor(s: &str) -> Result<(i64, String), FieldError> {
    s.split_once(':')
        .and_then(|(ms, id)| Some((parse_cursor_millis(ms)?, id.to_string())))
        .filter(|(_, id)| {
            (1..=64).contains(&id.len())
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .ok_or_else(|| FieldError::new("cursor", "not a cursor this API gave"))
}
