//! Credit bodies (API.md §8): grants, revokes, balances and the ledger, with the conversion of
//! each request into checked values.
//!
//! A grant names its owner (a user or an account), a pack of the plan document and how many
//! packs; which items and how many units that makes is the server's business, since it needs
//! the plan document in force. Answers are plain data the server fills from store outcomes.

use crate::convert;
use crate::field::FieldError;
use crate::metering::CreditBalance;
use crate::subscriptions::{parse_path_account_id, Subject};
use crate::time::parse_timestamp;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tollgate_core::input::InputError;
use tollgate_core::plan::check_id;
use utoipa::ToSchema;

/// Longest `externalRef` (a biller's payment or invoice id), in bytes.
pub const EXTERNAL_REF_BYTES_MAX: usize = 256;
/// Longest grant `note`, in bytes.
pub const GRANT_NOTE_BYTES_MAX: usize = 500;
/// Most packs one grant request may give (`quantity`).
pub const GRANT_PACKS_MAX: u64 = 10_000;
/// Longest revoke `reason`, in bytes.
pub const REVOKE_REASON_BYTES_MAX: usize = 500;
/// Most ledger entries one page holds, and the default.
pub const LEDGER_PAGE_MAX: usize = 1000;
pub const LEDGER_PAGE_DEFAULT: usize = 100;

/// Why credits were granted. `rollover` grants are made by a limit's rollover, never through
/// the API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CreditSource {
    #[default]
    Purchase,
    Grant,
    Refund,
    Manual,
    Rollover,
}

// ---------------------------------------------------------------- grant

/// `POST /v1/credits/grants`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantRequest {
    /// The user the credits are for (give this or `accountId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "u_42")]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub user_id: Option<String>,
    /// The account the credits are for; its members spend them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub account_id: Option<String>,
    /// A pack of the plan document's `creditPacks`.
    #[schema(example = "pack50")]
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.:-]+$")]
    pub pack_id: String,
    /// How many packs, 1 to 10000 (default 1); each item grants `item.quantity × quantity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 10000)]
    pub quantity: Option<u64>,
    /// 1–256 bytes. The same reference again grants nothing and answers the first grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "pi_3Qx7")]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub external_ref: Option<String>,
    /// When the grants expire, after now; `null`: never. Absent: the pack's
    /// `expiresAfterDays` from now.
    #[serde(
        default,
        deserialize_with = "crate::subscriptions::explicit_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Option<String>>,
    /// `purchase` (the default), `grant`, `refund` or `manual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<CreditSource>,
    /// At most 500 bytes, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 500,
        pattern = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$"
    )]
    pub note: Option<String>,
}

/// When a grant expires, as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantExpiry {
    /// The pack's `expiresAfterDays` from now (or never, when the pack has none).
    PackDefault,
    Never,
    At(Timestamp),
}

/// A grant request, checked.
#[derive(Debug, Clone)]
pub struct GrantInput {
    pub subject: Subject,
    pub pack_id: String,
    /// Packs, `1 ..= GRANT_PACKS_MAX`.
    pub packs: u64,
    pub expiry: GrantExpiry,
    /// Never `Rollover`.
    pub source: CreditSource,
    pub external_ref: Option<String>,
    pub note: Option<String>,
}

/// Who credits belong to: exactly one of a user and an account.
fn owner(user_id: Option<String>, account_id: Option<String>) -> Result<Subject, FieldError> {
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

/// A reference of 1–256 bytes without control characters.
pub fn parse_external_ref(field: &str, s: &str) -> Result<(), FieldError> {
    convert::bounded_name(field, s, EXTERNAL_REF_BYTES_MAX)
}

impl GrantRequest {
    /// `now` is the environment's clock: an explicit `expiresAt` must lie after it.
    pub fn parse(self, now: Timestamp) -> Result<GrantInput, FieldError> {
        let subject = owner(self.user_id, self.account_id)?;
        check_id("packId", &self.pack_id).map_err(|e| FieldError::new(e.path, e.message))?;
        let packs = self.quantity.unwrap_or(1);
        if !(1..=GRANT_PACKS_MAX).contains(&packs) {
            return Err(convert::refuse(
                "quantity",
                InputError::OutOfRange {
                    min: 1,
                    max: GRANT_PACKS_MAX,
                },
            ));
        }
        if let Some(r) = &self.external_ref {
            parse_external_ref("externalRef", r)?;
        }
        if let Some(note) = &self.note {
            convert::bounded_text("note", note, GRANT_NOTE_BYTES_MAX)?;
        }
        let source = self.source.unwrap_or_default();
        if source == CreditSource::Rollover {
            return Err(FieldError::new(
                "source",
                "rollover grants are made by a limit's rollover; use purchase, grant, refund \
                 or manual",
            ));
        }
        let expiry = match self.expires_at {
            None => GrantExpiry::PackDefault,
            Some(None) => GrantExpiry::Never,
            Some(Some(text)) => {
                let at = parse_timestamp("expiresAt", &text)?;
                if at <= now {
                    return Err(FieldError::new(
                        "expiresAt",
                        "must be in the future (or null: never)",
                    ));
                }
                GrantExpiry::At(at)
            }
        };
        Ok(GrantInput {
            subject,
            pack_id: self.pack_id,
            packs,
            expiry,
            source,
            external_ref: self.external_ref,
            note: self.note,
        })
    }
}

/// A grant: one item of one pack for one owner, with its balance now (API.md §8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreditGrant {
    #[schema(example = "grt_0VcKUIUad8dj2x")]
    pub grant_id: String,
    /// The owner, when a user (added to the contract's grant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The owner, when an account (added to the contract's grant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Null for a rollover grant.
    pub pack_id: Option<String>,
    /// The pack item, or the limit id of a rollover grant.
    pub item_id: String,
    pub unit: String,
    /// Units granted.
    pub quantity: u64,
    /// Units left, held ones included.
    pub remaining: u64,
    /// Units held by pending reservations.
    pub held: u64,
    /// `remaining − held` (0 once expired).
    pub available: u64,
    /// Higher is spent first.
    pub priority: i32,
    /// Null: never.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    pub source: CreditSource,
    pub external_ref: Option<String>,
    pub note: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantResponse {
    /// False when the `externalRef` had been granted already: nothing was granted, and
    /// `grants` are the first ones.
    pub created: bool,
    /// One per item of the pack.
    pub grants: Vec<CreditGrant>,
}

// ---------------------------------------------------------------- revoke

/// `POST /v1/credits/revoke`: a grant, or every grant made with a reference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub external_ref: Option<String>,
    /// At most 500 bytes; shown in the ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 500,
        pattern = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$"
    )]
    pub reason: Option<String>,
}

/// What a revoke names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeBy {
    Grant(String),
    ExternalRef(String),
}

#[derive(Debug, Clone)]
pub struct RevokeInput {
    pub target: RevokeBy,
    pub reason: Option<String>,
}

impl RevokeRequest {
    pub fn parse(self) -> Result<RevokeInput, FieldError> {
        let target = match (self.grant_id, self.external_ref) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "externalRef",
                    "give either grantId or externalRef, not both",
                ))
            }
            (Some(id), None) => RevokeBy::Grant(id),
            (None, Some(r)) => {
                parse_external_ref("externalRef", &r)?;
                RevokeBy::ExternalRef(r)
            }
            (None, None) => {
                return Err(FieldError::new(
                    "grantId",
                    "missing field `grantId` (or `externalRef`)",
                ))
            }
        };
        if let Some(reason) = &self.reason {
            convert::bounded_text("reason", reason, REVOKE_REASON_BYTES_MAX)?;
        }
        Ok(RevokeInput {
            target,
            reason: self.reason,
        })
    }
}

/// Units removed from one grant (0 when nothing was left to remove).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevokedGrant {
    pub grant_id: String,
    pub quantity: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevokeResponse {
    pub revoked: Vec<RevokedGrant>,
}

// ---------------------------------------------------------------- balances and ledger

/// `GET /v1/users/{userId}/credits`, `GET /v1/accounts/{accountId}/credits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreditsResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Unexpired grants with something left, soonest expiry first (never-expiring last); a
    /// user's own and their account's.
    pub grants: Vec<CreditGrant>,
    /// The same, summed per pack item.
    pub packs: Vec<CreditBalance>,
}

/// The kinds of ledger entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LedgerEntryType {
    /// +remaining.
    Grant,
    /// +held.
    Hold,
    /// −held.
    Release,
    /// −remaining, and −held for the part that was held.
    Burn,
    /// +remaining.
    Refund,
    /// −remaining.
    Expire,
    /// −remaining.
    Revoke,
    /// +remaining (a rollover grant's first entry).
    Rollover,
}

/// One change to one grant, with the grant's balance after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    #[schema(example = "led_0VcKUIUad8dj2x0001")]
    pub entry_id: String,
    #[schema(format = DateTime)]
    pub at: String,
    #[serde(rename = "type")]
    pub kind: LedgerEntryType,
    pub grant_id: String,
    /// Always > 0.
    pub quantity: u64,
    pub remaining_after: u64,
    pub held_after: u64,
    pub reservation_id: Option<String>,
    pub event_id: Option<String>,
    pub external_ref: Option<String>,
    /// A sentence for a person.
    pub reason: String,
    /// The user whose request made the entry (hold, release, burn, refund), else null (added
    /// to the contract's entry).
    pub user_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LedgerResponse {
    /// Newest first.
    pub entries: Vec<LedgerEntry>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The position after a ledger entry in the newest-first order, as a `cursor`.
pub fn ledger_cursor(seq: i64) -> String {
    seq.to_string()
}

/// A `cursor` back as the position it names.
pub fn parse_ledger_cursor(s: &str) -> Result<i64, FieldError> {
    // At most 18 significant digits, as the OpenAPI pattern says: a sequence never gets there.
    let significant = s.trim_start_matches('0').len();
    s.parse::<i64>()
        .ok()
        .filter(|&seq| seq > 0 && significant <= 18 && s.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| FieldError::new("cursor", "not a cursor this API gave"))
}

/// A page size: `1 ..= LEDGER_PAGE_MAX`, default [`LEDGER_PAGE_DEFAULT`].
pub fn parse_ledger_limit(limit: Option<usize>) -> Result<usize, FieldError> {
    let limit = limit.unwrap_or(LEDGER_PAGE_DEFAULT);
    if (1..=LEDGER_PAGE_MAX).contains(&limit) {
        Ok(limit)
    } else {
        Err(convert::refuse(
            "limit",
            InputError::OutOfRange {
                min: 1,
                max: LEDGER_PAGE_MAX as u64,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::from_json_str;

    fn now() -> Timestamp {
        "2026-12-01T00:00:00Z".parse().unwrap()
    }

    fn grant(json: &str) -> Result<GrantInput, FieldError> {
        from_json_str::<GrantRequest>(json)?.parse(now())
    }

    #[test]
    fn a_grant_names_one_owner_and_a_pack() {
        let g = grant(r#"{"userId":"u","packId":"pack50"}"#).unwrap();
        assert_eq!(
            g.subject,
            Subject::User(convert::user_id("", "u".into()).unwrap())
        );
        assert_eq!((g.packs, g.source), (1, CreditSource::Purchase));
        assert_eq!(g.expiry, GrantExpiry::PackDefault);
        let g = grant(r#"{"accountId":"acme","packId":"p"}"#).unwrap();
        assert!(matches!(g.subject, Subject::Account(_)));
        let e = grant(r#"{"userId":"u","accountId":"a","packId":"p"}"#).unwrap_err();
        assert_eq!(e.field, "accountId");
        assert_eq!(grant(r#"{"packId":"p"}"#).unwrap_err().field, "userId");
        assert_eq!(grant(r#"{"userId":"u"}"#).unwrap_err().field, "packId");
        assert_eq!(
            grant(r#"{"userId":"u","packId":"no spaces"}"#)
                .unwrap_err()
                .field,
            "packId"
        );
        let e = grant(r#"{"userId":"u","packId":"p","quantiy":2}"#).unwrap_err();
        assert_eq!(e.field, "quantiy");
    }

    #[test]
    fn packs_per_grant_are_capped() {
        let q = |n: u64| grant(&format!(r#"{{"userId":"u","packId":"p","quantity":{n}}}"#));
        assert_eq!(q(GRANT_PACKS_MAX).unwrap().packs, GRANT_PACKS_MAX);
        assert_eq!(q(GRANT_PACKS_MAX + 1).unwrap_err().field, "quantity");
        assert_eq!(q(0).unwrap_err().field, "quantity");
        assert_eq!(q(1).unwrap().packs, 1);
    }

    #[test]
    fn expiry_is_absent_null_or_a_future_time() {
        let at = |s: &str| grant(&format!(r#"{{"userId":"u","packId":"p","expiresAt":{s}}}"#));
        assert_eq!(at("null").unwrap().expiry, GrantExpiry::Never);
        let later: Timestamp = "2026-12-01T00:00:00.001Z".parse().unwrap();
        assert_eq!(
            at(r#""2026-12-01T00:00:00.001Z""#).unwrap().expiry,
            GrantExpiry::At(later)
        );
        assert_eq!(
            at(r#""2026-12-01T00:00:00Z""#).unwrap_err().field,
            "expiresAt"
        );
        assert_eq!(at(r#""tomorrow""#).unwrap_err().field, "expiresAt");
    }

    #[test]
    fn rollover_is_not_a_source_the_api_takes() {
        let s = |s: &str| grant(&format!(r#"{{"userId":"u","packId":"p","source":"{s}"}}"#));
        assert_eq!(s("refund").unwrap().source, CreditSource::Refund);
        assert_eq!(s("rollover").unwrap_err().field, "source");
        assert_eq!(s("gift").unwrap_err().field, "source");
    }

    #[test]
    fn external_ref_and_note_limits() {
        let with = |field: &str, value: &str| {
            grant(&format!(
                r#"{{"userId":"u","packId":"p","{field}":{}}}"#,
                serde_json::Value::String(value.into())
            ))
        };
        assert!(with("externalRef", &"r".repeat(EXTERNAL_REF_BYTES_MAX)).is_ok());
        let e = with("externalRef", &"r".repeat(EXTERNAL_REF_BYTES_MAX + 1)).unwrap_err();
        assert_eq!(e.field, "externalRef");
        assert_eq!(with("externalRef", "").unwrap_err().field, "externalRef");
        assert_eq!(
            with("externalRef", "a\nb").unwrap_err().field,
            "externalRef"
        );
        assert!(with("note", &"n".repeat(GRANT_NOTE_BYTES_MAX)).is_ok());
        let e = with("note", &"n".repeat(GRANT_NOTE_BYTES_MAX + 1)).unwrap_err();
        assert_eq!(e.field, "note");
    }

    #[test]
    fn a_revoke_names_a_grant_or_a_reference() {
        let revoke = |json: &str| from_json_str::<RevokeRequest>(json)?.parse();
        let r = revoke(r#"{"grantId":"grt_1","reason":"chargeback"}"#).unwrap();
        assert_eq!(r.target, RevokeBy::Grant("grt_1".into()));
        let r = revoke(r#"{"externalRef":"pi_1"}"#).unwrap();
        assert_eq!(r.target, RevokeBy::ExternalRef("pi_1".into()));
        assert_eq!(revoke("{}").unwrap_err().field, "grantId");
        let e = revoke(r#"{"grantId":"g","externalRef":"r"}"#).unwrap_err();
        assert_eq!(e.field, "externalRef");
        let reason = |n: usize| {
            RevokeRequest {
                grant_id: Some("grt_1".into()),
                reason: Some("r".repeat(n)),
                ..Default::default()
            }
            .parse()
        };
        assert!(reason(REVOKE_REASON_BYTES_MAX).is_ok());
        assert_eq!(
            reason(REVOKE_REASON_BYTES_MAX + 1).unwrap_err().field,
            "reason"
        );
    }

    #[test]
    fn ledger_pages_and_cursors() {
        assert_eq!(parse_ledger_limit(None).unwrap(), LEDGER_PAGE_DEFAULT);
        assert_eq!(
            parse_ledger_limit(Some(LEDGER_PAGE_MAX)).unwrap(),
            LEDGER_PAGE_MAX
        );
        assert_eq!(
            parse_ledger_limit(Some(LEDGER_PAGE_MAX + 1))
                .unwrap_err()
                .field,
            "limit"
        );
        assert_eq!(parse_ledger_limit(Some(0)).unwrap_err().field, "limit");
        assert_eq!(parse_ledger_cursor(&ledger_cursor(42)).unwrap(), 42);
        assert_eq!(parse_ledger_cursor("007").unwrap(), 7);
        for bad in [
            "",
            "x",
            "-3",
            "0",
            "+7",
            "1.5",
            "99999999999999999999",
            "1000000000000000000",
        ] {
            assert_eq!(
                parse_ledger_cursor(bad).unwrap_err().field,
                "cursor",
                "{bad}"
            );
        }
    }
}
