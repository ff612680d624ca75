//! Subscription bodies (API.md §6): upsert, read, history and cancel.
//!
//! A subscription's subject is a user or an account; the request names exactly one of them.

use crate::convert;
use crate::field::{field_path, FieldError};
use crate::time::{format_timestamp, parse_timestamp};
use jiff::tz::TimeZone;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use tollgate_core::input::{AccountId, InputError, UserId, QUANTITY_MAX};
use tollgate_core::plan::check_id;
use tollgate_core::subscription::{
    CancelAt, HistoryEntry, Subscription, SubscriptionStatus as CoreStatus, UpsertRequest,
};
use tollgate_core::window::WindowBounds;
use utoipa::ToSchema;

/// Longest cancel reason, in bytes.
pub const CANCEL_REASON_BYTES_MAX: usize = 500;
/// Most `customLimits` entries on one subscription.
pub const CUSTOM_LIMITS_MAX: usize = tollgate_core::plan::LIMITS_PER_PLAN_MAX;
/// Longest `timezone` name, in bytes (the longest IANA name is about 30).
pub const TIMEZONE_NAME_BYTES_MAX: usize = 64;
/// Fewest `seats` an account's subscription can have (0 would let no member in).
pub const SEATS_MIN: u32 = 1;
/// Most `seats` an account's subscription can have.
pub const SEATS_MAX: u32 = u32::MAX;
/// The `source` of changes made through this API (webhooks use their biller's name).
pub const SOURCE_API: &str = "api";

/// Who a subscription belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    User(UserId),
    Account(AccountId),
}

fn subject(user_id: Option<String>, account_id: Option<String>) -> Result<Subject, FieldError> {
    match (user_id, account_id) {
        (Some(_), Some(_)) => Err(FieldError::new(
            "accountId",
            "give either userId or accountId, not both",
        )),
        (Some(user), None) => Ok(Subject::User(convert::user_id("userId", user)?)),
        (None, Some(account)) => Ok(Subject::Account(parse_path_account_id(account)?)),
        (None, None) => Err(FieldError::new(
            "userId",
            "missing field `userId` (or `accountId`)",
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Active,
    Trialing,
    PastDue,
}

impl From<SubscriptionStatus> for CoreStatus {
    fn from(s: SubscriptionStatus) -> Self {
        match s {
            SubscriptionStatus::Active => CoreStatus::Active,
            SubscriptionStatus::Trialing => CoreStatus::Trialing,
            SubscriptionStatus::PastDue => CoreStatus::PastDue,
        }
    }
}

impl From<CoreStatus> for SubscriptionStatus {
    fn from(s: CoreStatus) -> Self {
        match s {
            CoreStatus::Active => SubscriptionStatus::Active,
            CoreStatus::Trialing => SubscriptionStatus::Trialing,
            CoreStatus::PastDue => SubscriptionStatus::PastDue,
        }
    }
}

/// `Some(None)` for an explicit `null`, `None` for an absent field (serde's
/// `deserialize_with` for a field where `null` means something).
pub(crate) fn explicit_null<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionUpsertRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub account_id: Option<String>,
    #[schema(example = "pro")]
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.:-]+$")]
    pub plan_id: String,
    /// The billing anchor (default: the creation time; a later one renews).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub cycle_start: Option<String>,
    /// When the subscription ends; `null` clears a scheduled end.
    #[serde(
        default,
        deserialize_with = "explicit_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ends_at: Option<Option<String>>,
    /// Per-subscriber quotas by limit id, replacing the plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_limits: Option<BTreeMap<String, u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SubscriptionStatus>,
    /// The subscriber's own time zone (IANA name): their calendar windows (a "day", a
    /// "month") follow it instead of each limit's zone; `null` clears it.
    #[serde(
        default,
        deserialize_with = "explicit_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "Asia/Tokyo")]
    pub timezone: Option<Option<String>>,
    /// Accounts only: the account's seat cap for this subscription (per-seat pricing),
    /// overriding the plan's `seats`; `null` clears it (the plan's cap applies again).
    /// Lowering it below the current members removes nobody; new members are refused until
    /// there is room.
    #[serde(
        default,
        deserialize_with = "explicit_null",
        skip_serializing_if = "Option::is_none"
    )]
    // int64: a u32 goes past OpenAPI's (signed) int32.
    #[schema(value_type = Option<u32>, format = Int64, minimum = 1, maximum = 4294967295.0, example = 10)]
    pub seats: Option<Option<u64>>,
}

#[derive(Debug, Clone)]
pub struct UpsertInput {
    pub subject: Subject,
    pub request: UpsertRequest,
}

impl SubscriptionUpsertRequest {
    pub fn parse(self) -> Result<UpsertInput, FieldError> {
        let subject = subject(self.user_id, self.account_id)?;
        check_id("planId", &self.plan_id).map_err(|e| FieldError::new(e.path, e.message))?;
        let cycle_start = self
            .cycle_start
            .map(|t| parse_timestamp("cycleStart", &t))
            .transpose()?;
        let ends_at = match self.ends_at {
            None => None,
            Some(None) => Some(None),
            Some(Some(t)) => Some(Some(parse_timestamp("endsAt", &t)?)),
        };
        let custom_limits = self.custom_limits.map(custom_limits).transpose()?;
        let timezone = match self.timezone {
            None => None,
            Some(None) => Some(None),
            Some(Some(name)) => Some(Some(zone(&name)?)),
        };
        let seats = seats(&subject, self.seats)?;
        Ok(UpsertInput {
            subject,
            request: UpsertRequest {
                plan_id: self.plan_id,
                cycle_start,
                ends_at,
                custom_limits,
                status: self.status.map(CoreStatus::from),
                timezone,
                seats,
                source: SOURCE_API.to_string(),
            },
        })
    }
}

fn zone(name: &str) -> Result<TimeZone, FieldError> {
    if name.len() > TIMEZONE_NAME_BYTES_MAX {
        return Err(convert::refuse(
            "timezone",
            InputError::TooLong {
                max: TIMEZONE_NAME_BYTES_MAX,
            },
        ));
    }
    TimeZone::get(name).map_err(|_| {
        FieldError::new(
            "timezone",
            format!("unknown time zone {name:?}; use an IANA name such as Asia/Tokyo"),
        )
    })
}

/// `seats` as asked: accounts only (a user's subscription has no members to cap), and
/// `SEATS_MIN ..= SEATS_MAX` when not `null`. Taken as a u64 so a value past u32 is refused
/// with the range, not a type error.
fn seats(subject: &Subject, seats: Option<Option<u64>>) -> Result<Option<Option<u32>>, FieldError> {
    let Some(seats) = seats else { return Ok(None) };
    if let Subject::User(_) = subject {
        return Err(FieldError::new(
            "seats",
            "seats cap the members of an account; give accountId, not userId",
        ));
    }
    let Some(n) = seats else {
        return Ok(Some(None));
    };
    u32::try_from(n)
        .ok()
        .filter(|n| (SEATS_MIN..=SEATS_MAX).contains(n))
        .map(|n| Some(Some(n)))
        .ok_or_else(|| {
            convert::refuse(
                "seats",
                InputError::OutOfRange {
                    min: SEATS_MIN.into(),
                    max: SEATS_MAX.into(),
                },
            )
        })
}

fn custom_limits(map: BTreeMap<String, u64>) -> Result<BTreeMap<String, u64>, FieldError> {
    if map.len() > CUSTOM_LIMITS_MAX {
        return Err(convert::refuse(
            "customLimits",
            InputError::TooMany {
                max: CUSTOM_LIMITS_MAX,
            },
        ));
    }
    for (id, quota) in &map {
        let path = field_path("customLimits", id);
        check_id(&path, id).map_err(|e| FieldError::new(e.path, e.message))?;
        if *quota > QUANTITY_MAX {
            return Err(convert::refuse(
                &path,
                InputError::OutOfRange {
                    min: 0,
                    max: QUANTITY_MAX,
                },
            ));
        }
    }
    Ok(map)
}

/// A half-open span of time `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Period {
    #[schema(format = DateTime)]
    pub start: String,
    #[schema(format = DateTime)]
    pub end: Option<String>,
}

impl From<WindowBounds> for Period {
    fn from(w: WindowBounds) -> Self {
        Self {
            start: format_timestamp(w.start),
            end: w.end.map(format_timestamp),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionResponse {
    #[schema(example = "sub_8dj2")]
    pub subscription_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    pub plan_id: String,
    pub status: SubscriptionStatus,
    #[schema(format = DateTime)]
    pub cycle_start: String,
    /// The billing cycle containing now.
    pub current_period: Period,
    #[schema(format = DateTime)]
    pub ends_at: Option<String>,
    /// Per-subscriber quotas by limit id.
    pub custom_limits: BTreeMap<String, u64>,
    /// The subscriber's own time zone for calendar windows, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "Asia/Tokyo")]
    pub timezone: Option<String>,
    /// The account's seat cap bought with this subscription, overriding the plan's `seats`
    /// while it is in force; `null` when the plan's cap applies (and always for a user).
    #[serde(default)]
    #[schema(required = true, format = Int64, minimum = 1, maximum = 4294967295.0, example = 10)]
    pub seats: Option<u32>,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Whether the upsert changed anything (upsert answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
}

impl SubscriptionResponse {
    pub fn new(
        subject: &Subject,
        sub: &Subscription,
        current_period: WindowBounds,
        changed: Option<bool>,
    ) -> Self {
        let (user_id, account_id) = match subject {
            Subject::User(u) => (Some(u.to_string()), None),
            Subject::Account(a) => (None, Some(a.to_string())),
        };
        Self {
            subscription_id: sub.id.clone(),
            user_id,
            account_id,
            plan_id: sub.plan_id.clone(),
            status: sub.status.into(),
            cycle_start: format_timestamp(sub.cycle_start),
            current_period: current_period.into(),
            ends_at: sub.ends_at.map(format_timestamp),
            custom_limits: sub.custom_limits.clone(),
            timezone: sub
                .timezone
                .as_ref()
                .and_then(|tz| tz.iana_name())
                .map(str::to_string),
            seats: sub.seats,
            created_at: format_timestamp(sub.created_at),
            changed,
        }
    }
}

/// One change of a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRow {
    /// `created`, `plan_changed`, `renewed`, `cancel_scheduled`, `canceled`, `reactivated`
    /// or `ended`.
    #[serde(rename = "type")]
    #[schema(example = "plan_changed")]
    pub kind: String,
    #[schema(format = DateTime)]
    pub at: String,
    pub from_plan_id: Option<String>,
    pub to_plan_id: Option<String>,
    /// `api`, `stripe`, `polar`, ...
    pub source: String,
    pub reason: Option<String>,
}

impl From<&HistoryEntry> for HistoryRow {
    fn from(e: &HistoryEntry) -> Self {
        Self {
            kind: e.kind.as_str().to_string(),
            at: format_timestamp(e.at),
            from_plan_id: e.from_plan_id.clone(),
            to_plan_id: e.to_plan_id.clone(),
            source: e.source.clone(),
            reason: e.reason.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryResponse {
    pub user_id: String,
    /// Oldest first.
    pub history: Vec<HistoryRow>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CancelRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub account_id: Option<String>,
    /// `now` (the default), `period_end`, or an RFC 3339 timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "period_end")]
    pub at: Option<String>,
    /// At most 500 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 500,
        pattern = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$"
    )]
    pub reason: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CancelInput {
    pub subject: Subject,
    pub at: CancelAt,
    pub reason: Option<String>,
}

impl CancelRequest {
    pub fn parse(self) -> Result<CancelInput, FieldError> {
        let subject = subject(self.user_id, self.account_id)?;
        let at = match self.at.as_deref() {
            None | Some("now") => CancelAt::Now,
            Some("period_end") => CancelAt::PeriodEnd,
            Some(text) => CancelAt::At(parse_timestamp("at", text).map_err(|_| {
                FieldError::new(
                    "at",
                    "must be \"now\", \"period_end\" or an RFC 3339 timestamp",
                )
            })?),
        };
        if let Some(reason) = &self.reason {
            convert::bounded_text("reason", reason, CANCEL_REASON_BYTES_MAX)?;
        }
        Ok(CancelInput {
            subject,
            at,
            reason: self.reason,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelResponse {
    pub subscription_id: String,
    pub plan_id: String,
    #[schema(format = DateTime)]
    pub ends_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::from_json_str;

    #[test]
    fn ends_at_null_clears_and_absent_keeps() {
        let r: SubscriptionUpsertRequest =
            from_json_str(r#"{"userId":"u","planId":"pro","endsAt":null}"#).unwrap();
        assert_eq!(r.parse().unwrap().request.ends_at, Some(None));
        let r: SubscriptionUpsertRequest =
            from_json_str(r#"{"userId":"u","planId":"pro"}"#).unwrap();
        assert_eq!(r.parse().unwrap().request.ends_at, None);
    }

    #[test]
    fn exactly_one_subject() {
        let r: SubscriptionUpsertRequest = from_json_str(r#"{"planId":"pro"}"#).unwrap();
        assert_eq!(r.parse().unwrap_err().field, "userId");
        let r: SubscriptionUpsertRequest =
            from_json_str(r#"{"userId":"u","accountId":"a","planId":"pro"}"#).unwrap();
        assert_eq!(r.parse().unwrap_err().field, "accountId");
    }

    #[test]
    fn custom_limits_are_checked() {
        let r: SubscriptionUpsertRequest = from_json_str(
            r#"{"userId":"u","planId":"pro","customLimits":{"images":9007199254740992}}"#,
        )
        .unwrap();
        assert_eq!(r.parse().unwrap_err().field, "customLimits.images");
    }

    #[test]
    fn seats_are_for_accounts_in_range_and_null_clears() {
        let parse = |body: &str| {
            from_json_str::<SubscriptionUpsertRequest>(body)
                .and_then(SubscriptionUpsertRequest::parse)
                .map(|i| i.request.seats)
        };
        let acct = |seats: &str| {
            parse(&format!(
                r#"{{"accountId":"a","planId":"t","seats":{seats}}}"#
            ))
        };
        assert_eq!(acct("10").unwrap(), Some(Some(10)));
        assert_eq!(acct("1").unwrap(), Some(Some(1)));
        assert_eq!(acct("4294967295").unwrap(), Some(Some(u32::MAX)));
        assert_eq!(acct("null").unwrap(), Some(None));
        assert_eq!(parse(r#"{"accountId":"a","planId":"t"}"#).unwrap(), None);
        for bad in ["0", "4294967296", "-1", "1.5", "\"3\""] {
            assert_eq!(acct(bad).unwrap_err().field, "seats", "seats: {bad}");
        }
        for with_user in ["3", "null"] {
            let body = format!(r#"{{"userId":"u","planId":"t","seats":{with_user}}}"#);
            assert_eq!(parse(&body).unwrap_err().field, "seats", "{body}");
        }
    }

    #[test]
    fn cancel_at_forms() {
        let at = |s: &str| {
            CancelRequest {
                user_id: Some("u".into()),
                at: Some(s.into()),
                ..Default::default()
            }
            .parse()
            .map(|c| c.at)
        };
        assert_eq!(at("now").unwrap(), CancelAt::Now);
        assert_eq!(at("period_end").unwrap(), CancelAt::PeriodEnd);
        assert!(matches!(
            at("2026-01-01T00:00:00Z").unwrap(),
            CancelAt::At(_)
        ));
        assert_eq!(at("tomorrow").unwrap_err().field, "at");
    }
}

/// An account id, in a path segment or a body's `accountId`.
pub fn parse_path_account_id(s: String) -> Result<AccountId, FieldError> {
    AccountId::parse(s).map_err(|e| convert::refuse("accountId", e))
}

/// `PUT /v1/accounts/{accountId}/members/{userId}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberResponse {
    pub account_id: String,
    pub user_id: String,
    /// When the user joined this account.
    #[schema(format = DateTime)]
    pub added_at: String,
}

/// `DELETE /v1/accounts/{accountId}/members/{userId}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberRemovedResponse {
    pub account_id: String,
    pub user_id: String,
    pub removed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountMember {
    pub user_id: String,
    #[schema(format = DateTime)]
    pub added_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Seats {
    pub used: u64,
    /// The seat cap in force: the account's active subscription's `seats`, else its plan's;
    /// `null` when there is none. It can be below `used` after the seats were lowered.
    pub max: Option<u32>,
}

/// `GET /v1/accounts/{accountId}/usage`: the whole account in one answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountUsageResponse {
    pub account_id: String,
    /// The plan in force for the account: its active subscription's, else the default plan.
    pub plan_id: Option<String>,
    pub subscription: Option<SubscriptionResponse>,
    /// The plan's pooled (`scope: account`) limits, counted for the whole account.
    pub limits: Vec<crate::LimitState>,
    /// Each member, sorted by user id, with their own (`scope: user`) limits as their usage
    /// answer shows them.
    pub members: Vec<AccountMemberUsage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountMemberUsage {
    pub user_id: String,
    pub limits: Vec<crate::LimitState>,
}

/// `GET /v1/accounts/{accountId}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountResponse {
    pub account_id: String,
    /// Sorted by user id.
    pub members: Vec<AccountMember>,
    pub seats: Seats,
    /// The plan in force for members without their own subscription: the account's active
    /// subscription's, else the default plan.
    pub plan_id: Option<String>,
    pub subscription: Option<SubscriptionResponse>,
}
