//! Credit routes (API.md §8): grant a pack, revoke grants, and read a user's or an account's
//! balances and ledger. A grant turns the pack of the plan document in force into one grant
//! per item, with its ids, units and expiry decided here; the store keeps the ledger.

use crate::auth::{Caller, SecretKey};
use crate::error::{store_error, ApiError};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::ids::{looks_like, new_id, new_seed, GRANT_PREFIX};
use crate::render;
use crate::routes::subscriptions::owner;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use tollgate_api as wire;
use tollgate_api::Subject;
use tollgate_core::input::QUANTITY_MAX;
use tollgate_core::plan::CreditPack;
use tollgate_store::{
    CreditsQuery, Grant, GrantCommand, GrantSource, LedgerEntry, LedgerKind, LedgerQuery, NewGrant,
    Owner, RevokeCommand, RevokeTarget,
};
use utoipa::IntoParams;

const GRANT: &str = "credit grant";
const SECONDS_PER_DAY: i64 = 86_400;

/// The wire's name of a grant's owner: `userId` for a `u:` subject, `accountId` for `w:`.
fn owner_ids(subject: &str) -> (Option<String>, Option<String>) {
    if let Some(user) = subject.strip_prefix("u:") {
        (Some(user.to_string()), None)
    } else if let Some(account) = subject.strip_prefix("w:") {
        (None, Some(account.to_string()))
    } else {
        (None, None)
    }
}

fn source(s: GrantSource) -> wire::CreditSource {
    match s {
        GrantSource::Purchase => wire::CreditSource::Purchase,
        GrantSource::Grant => wire::CreditSource::Grant,
        GrantSource::Refund => wire::CreditSource::Refund,
        GrantSource::Manual => wire::CreditSource::Manual,
        GrantSource::Rollover => wire::CreditSource::Rollover,
    }
}

fn store_source(s: wire::CreditSource) -> GrantSource {
    match s {
        wire::CreditSource::Purchase => GrantSource::Purchase,
        wire::CreditSource::Grant => GrantSource::Grant,
        wire::CreditSource::Refund => GrantSource::Refund,
        wire::CreditSource::Manual => GrantSource::Manual,
        wire::CreditSource::Rollover => GrantSource::Rollover,
    }
}

/// A grant and its balance at `now`: an expired grant has nothing available.
pub fn grant_body(g: &Grant, now: Timestamp) -> wire::CreditGrant {
    let row = &g.row;
    let (user_id, account_id) = owner_ids(&row.subject);
    let expired = row.expires_at.is_some_and(|at| at <= now);
    let available = if expired {
        0
    } else {
        g.balance.remaining.saturating_sub(g.balance.held)
    };
    wire::CreditGrant {
        grant_id: row.grant_id.clone(),
        user_id,
        account_id,
        pack_id: row.pack_id.clone(),
        item_id: row.item_id.clone(),
        unit: row.unit.clone(),
        quantity: row.quantity,
        remaining: g.balance.remaining,
        held: g.balance.held,
        available,
        priority: row.priority,
        expires_at: row.expires_at.map(wire::format_timestamp),
        source: source(row.source),
        external_ref: row.external_ref.clone(),
        note: row.note.clone(),
        created_at: wire::format_timestamp(row.created_at),
    }
}

fn entry_type(k: LedgerKind) -> wire::LedgerEntryType {
    match k {
        LedgerKind::Grant => wire::LedgerEntryType::Grant,
        LedgerKind::Hold => wire::LedgerEntryType::Hold,
        LedgerKind::Release => wire::LedgerEntryType::Release,
        LedgerKind::Burn => wire::LedgerEntryType::Burn,
        LedgerKind::Refund => wire::LedgerEntryType::Refund,
        LedgerKind::Expire => wire::LedgerEntryType::Expire,
        LedgerKind::Revoke => wire::LedgerEntryType::Revoke,
        LedgerKind::Rollover => wire::LedgerEntryType::Rollover,
    }
}

fn entry_body(e: LedgerEntry) -> wire::LedgerEntry {
    wire::LedgerEntry {
        entry_id: e.entry_id,
        at: wire::format_timestamp(e.at),
        kind: entry_type(e.kind),
        grant_id: e.grant_id,
        quantity: e.quantity,
        remaining_after: e.after.remaining,
        held_after: e.after.held,
        reservation_id: e.reservation_id,
        event_id: e.event_id,
        external_ref: e.external_ref,
        reason: e.reason,
        user_id: e.user_id,
    }
}

/// One grant per item of `pack`, each of `item.quantity × packs` units.
fn new_grants(pack: &CreditPack, packs: u64) -> Result<Vec<NewGrant>, ApiError> {
    pack.items
        .iter()
        .map(|item| {
            let quantity = item
                .quantity
                .checked_mul(packs)
                .filter(|&q| q <= QUANTITY_MAX)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "quantity",
                        format!(
                            "{packs} packs of {:?} would grant more than {QUANTITY_MAX} (2^53-1) \
                             units of item {:?}",
                            pack.id, item.id
                        ),
                    )
                })?;
            Ok(NewGrant {
                grant_id: new_id(GRANT_PREFIX),
                item_id: item.id.clone(),
                unit: item.unit.clone(),
                quantity,
                rules: item.rules.clone(),
            })
        })
        .collect()
}

/// When the grants expire: as asked, or the pack's `expiresAfterDays` (days of 24 hours) from
/// now by the environment's clock.
fn expiry(
    asked: wire::GrantExpiry,
    pack: &CreditPack,
    now: Timestamp,
) -> Result<Option<Timestamp>, ApiError> {
    match asked {
        wire::GrantExpiry::Never => Ok(None),
        wire::GrantExpiry::At(at) => Ok(Some(at)),
        wire::GrantExpiry::PackDefault => pack
            .expires_after_days
            .map(|days| {
                now.checked_add(SignedDuration::from_secs(i64::from(days) * SECONDS_PER_DAY))
                    .map_err(|_| {
                        ApiError::invalid(
                            "expiresAt",
                            "the pack's expiresAfterDays reaches past the last time Tollgate \
                         can write; give expiresAt",
                        )
                    })
            })
            .transpose(),
    }
}

/// Grants packs of credits to a user or an account, once per `externalRef`.
#[utoipa::path(
    post, path = "/v1/credits/grants", tag = "credits",
    request_body = wire::GrantRequest,
    responses(
        (status = 200, description = "Granted, or `created: false` with the first grants of this externalRef", body = wire::GrantResponse),
        (status = 400, body = wire::ErrorBody),
        (status = 404, description = "no credit pack has this id", body = wire::ErrorBody),
        (status = 409, description = "idempotency_conflict: the externalRef granted another pack or owner", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn grant(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiJson(body): ApiJson<wire::GrantRequest>,
) -> Result<Json<wire::GrantResponse>, ApiError> {
    let input = body.parse(caller.now)?;
    let plans = state.plans.get(&*state.store, caller.auth.env).await?;
    let Some(pack) = plans.document.credit_pack(&input.pack_id) else {
        return Err(ApiError::not_found(format!(
            "no credit pack has id {:?}",
            input.pack_id
        )));
    };
    let items = new_grants(pack, input.packs)?;
    let expires_at = expiry(input.expiry, pack, caller.now)?;
    let outcome = state
        .store
        .grant_credits(GrantCommand {
            env: caller.auth.env,
            now: caller.now,
            owner: owner(&input.subject),
            pack_id: pack.id.clone(),
            priority: pack.priority,
            packs: input.packs,
            items,
            expires_at,
            source: store_source(input.source),
            external_ref: input.external_ref,
            note: input.note,
            ids: new_seed(),
        })
        .await
        .map_err(|e| match e {
            tollgate_store::StoreError::IdempotencyConflict => ApiError::ExternalRefConflict,
            other => store_error("credit pack")(other),
        })?;
    Ok(Json(wire::GrantResponse {
        created: outcome.created,
        grants: outcome
            .grants
            .iter()
            .map(|g| grant_body(g, caller.now))
            .collect(),
    }))
}

/// Removes what is left (and not held) of a grant, or of every grant of an `externalRef`.
#[utoipa::path(
    post, path = "/v1/credits/revoke", tag = "credits",
    request_body = wire::RevokeRequest,
    responses(
        (status = 200, body = wire::RevokeResponse),
        (status = 400, body = wire::ErrorBody),
        (status = 404, description = "no such grant, or no grant with this externalRef", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn revoke(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiJson(body): ApiJson<wire::RevokeRequest>,
) -> Result<Json<wire::RevokeResponse>, ApiError> {
    let input = body.parse()?;
    let target = match input.target {
        wire::RevokeBy::Grant(id) if looks_like(GRANT_PREFIX, &id) => RevokeTarget::Grant(id),
        wire::RevokeBy::Grant(_) => return Err(ApiError::not_found(format!("{GRANT} not found"))),
        wire::RevokeBy::ExternalRef(r) => RevokeTarget::ExternalRef(r),
    };
    let outcome = state
        .store
        .revoke_credits(RevokeCommand {
            env: caller.auth.env,
            now: caller.now,
            target,
            reason: input.reason,
            ids: new_seed(),
        })
        .await
        .map_err(store_error(GRANT))?;
    Ok(Json(wire::RevokeResponse {
        revoked: outcome
            .revoked
            .into_iter()
            .map(|(grant_id, quantity)| wire::RevokedGrant { grant_id, quantity })
            .collect(),
    }))
}

async fn balances(
    state: &AppState,
    caller: &Caller,
    subject: Subject,
) -> Result<Json<wire::CreditsResponse>, ApiError> {
    let outcome = state
        .store
        .credits(CreditsQuery {
            env: caller.auth.env,
            now: caller.now,
            owner: owner(&subject),
        })
        .await?;
    let (user_id, account_id) = match subject {
        Subject::User(u) => (Some(u.into_string()), None),
        Subject::Account(a) => (None, Some(a.into_string())),
    };
    Ok(Json(wire::CreditsResponse {
        user_id,
        account_id,
        grants: outcome
            .grants
            .iter()
            .map(|g| grant_body(g, caller.now))
            .collect(),
        packs: render::pack_balances(&outcome.packs),
    }))
}

/// A user's unexpired grants (their own and their account's) and balances per pack item.
#[utoipa::path(
    get, path = "/v1/users/{userId}/credits", tag = "credits",
    params(("userId" = String, Path)),
    responses(
        (status = 200, body = wire::CreditsResponse),
        (status = 400, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn user_credits(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Json<wire::CreditsResponse>, ApiError> {
    let user_id = wire::parse_path_user_id(user_id)?;
    balances(&state, &caller, Subject::User(user_id)).await
}

/// An account's unexpired grants and balances per pack item.
#[utoipa::path(
    get, path = "/v1/accounts/{accountId}/credits", tag = "credits",
    params(("accountId" = String, Path)),
    responses(
        (status = 200, body = wire::CreditsResponse),
        (status = 400, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn account_credits(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath(account_id): ApiPath<String>,
) -> Result<Json<wire::CreditsResponse>, ApiError> {
    let account_id = wire::parse_path_account_id(account_id)?;
    balances(&state, &caller, Subject::Account(account_id)).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LedgerParams {
    /// Entries per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `nextCursor` of the previous page.
    #[param(pattern = "^0*[1-9][0-9]{0,17}$")]
    cursor: Option<String>,
}

/// The balances of the user of a user token (`GET /v1/me/credits`).
pub(crate) async fn user_balances(
    state: &AppState,
    caller: &Caller,
    user_id: tollgate_core::input::UserId,
) -> Result<Json<wire::CreditsResponse>, ApiError> {
    balances(state, caller, Subject::User(user_id)).await
}

async fn ledger(
    state: &AppState,
    caller: &Caller,
    owner: Owner,
    params: LedgerParams,
) -> Result<Json<wire::LedgerResponse>, ApiError> {
    let limit = wire::parse_ledger_limit(params.limit)?;
    let before = params
        .cursor
        .as_deref()
        .map(wire::parse_ledger_cursor)
        .transpose()?;
    let mut rows = state
        .store
        .credit_ledger(LedgerQuery {
            env: caller.auth.env,
            owner,
            limit: limit + 1,
            before,
        })
        .await?;
    let next_cursor = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        wire::ledger_cursor(rows[limit - 1].seq)
    });
    Ok(Json(wire::LedgerResponse {
        entries: rows.into_iter().map(entry_body).collect(),
        next_cursor,
    }))
}

/// A user's ledger, newest first: entries of their own grants, and the entries their requests
/// made on their account's grants.
#[utoipa::path(
    get, path = "/v1/users/{userId}/credits/ledger", tag = "credits",
    params(("userId" = String, Path), LedgerParams),
    responses(
        (status = 200, body = wire::LedgerResponse),
        (status = 400, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn user_ledger(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath(user_id): ApiPath<String>,
    ApiQuery(params): ApiQuery<LedgerParams>,
) -> Result<Json<wire::LedgerResponse>, ApiError> {
    let user_id = wire::parse_path_user_id(user_id)?;
    ledger(&state, &caller, Owner::User(user_id), params).await
}

/// An account's ledger, newest first: every entry of its grants, whichever member spent them.
#[utoipa::path(
    get, path = "/v1/accounts/{accountId}/credits/ledger", tag = "credits",
    params(("accountId" = String, Path), LedgerParams),
    responses(
        (status = 200, body = wire::LedgerResponse),
        (status = 400, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn account_ledger(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath(account_id): ApiPath<String>,
    ApiQuery(params): ApiQuery<LedgerParams>,
) -> Result<Json<wire::LedgerResponse>, ApiError> {
    let account_id = wire::parse_path_account_id(account_id)?;
    ledger(&state, &caller, Owner::Account(account_id), params).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::plan::CreditItem;

    fn pack(quantity: u64, days: Option<u32>) -> CreditPack {
        CreditPack {
            id: "pack50".into(),
            priority: 2,
            expires_after_days: days,
            items: vec![CreditItem {
                id: "imgs".into(),
                unit: "count".into(),
                quantity,
                rules: Vec::new(),
            }],
        }
    }

    #[test]
    fn packs_multiply_items_up_to_the_largest_quantity() {
        let grants = new_grants(&pack(50, None), 3).unwrap();
        assert_eq!(grants.len(), 1);
        assert_eq!(
            (grants[0].quantity, grants[0].item_id.as_str()),
            (150, "imgs")
        );
        assert!(grants[0].grant_id.starts_with(GRANT_PREFIX));
        assert_eq!(
            new_grants(&pack(QUANTITY_MAX, None), 1).unwrap()[0].quantity,
            QUANTITY_MAX
        );
        let e = new_grants(&pack(QUANTITY_MAX, None), 2).unwrap_err();
        assert!(
            matches!(&e, ApiError::InvalidRequest { field: Some(f), .. } if f == "quantity"),
            "{e:?}"
        );
        let e = new_grants(&pack(u64::MAX / 2, None), 3).unwrap_err();
        assert!(matches!(e, ApiError::InvalidRequest { .. }));
    }

    #[test]
    fn expiry_defaults_to_the_packs_days_by_the_environments_clock() {
        let now: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let at = |asked, days| expiry(asked, &pack(1, days), now).unwrap();
        assert_eq!(
            at(wire::GrantExpiry::PackDefault, Some(90)),
            Some("2027-03-01T10:00:00Z".parse().unwrap())
        );
        assert_eq!(at(wire::GrantExpiry::PackDefault, None), None);
        assert_eq!(at(wire::GrantExpiry::Never, Some(90)), None);
        let later: Timestamp = "2026-12-02T00:00:00Z".parse().unwrap();
        assert_eq!(at(wire::GrantExpiry::At(later), Some(90)), Some(later));
    }

    #[test]
    fn owners_and_balances_render() {
        assert_eq!(owner_ids("u:u_42"), (Some("u_42".into()), None));
        assert_eq!(owner_ids("w:acme"), (None, Some("acme".into())));
        let now: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let mut g = Grant {
            row: tollgate_store::GrantRow {
                grant_id: "grt_1".into(),
                subject: "w:acme".into(),
                pack_id: None,
                item_id: "images_daily".into(),
                unit: "count".into(),
                quantity: 3,
                priority: 0,
                rules: Vec::new(),
                expires_at: Some("2026-12-02T00:00:00Z".parse().unwrap()),
                source: GrantSource::Rollover,
                external_ref: None,
                note: None,
                created_at: now,
            },
            balance: tollgate_store::Balance {
                remaining: 3,
                held: 1,
            },
        };
        let body = serde_json::to_value(grant_body(&g, now)).unwrap();
        assert_eq!(body["accountId"], "acme");
        assert!(body.get("userId").is_none());
        assert_eq!(body["packId"], serde_json::Value::Null);
        assert_eq!(body["source"], "rollover");
        assert_eq!(body["available"], 2);
        g.row.expires_at = Some(now);
        assert_eq!(
            grant_body(&g, now).available,
            0,
            "expired: nothing available"
        );
    }
}
