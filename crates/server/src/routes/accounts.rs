//! Account routes (API.md §6): members in and out, and the account as a whole. An account's
//! subscription is written through the subscription routes with `accountId`.

use crate::auth::SecretKey;
use crate::error::{store_error, ApiError};
use crate::extract::ApiPath;
use crate::render;
use crate::routes::subscriptions::{current_period, read};
use crate::AppState;
use axum::extract::State;
use axum::Json;
use tollgate_api as wire;
use tollgate_api::Subject;

/// Adds a user to an account (moving them out of any other); adding a member again changes
/// nothing. The seat cap is the account's active subscription's `seats`, else its plan's.
#[utoipa::path(
    put, path = "/v1/accounts/{accountId}/members/{userId}", tag = "accounts",
    params(("accountId" = String, Path), ("userId" = String, Path)),
    responses(
        (status = 200, body = wire::MemberResponse),
        (status = 400, body = wire::ErrorBody),
        (status = 409, description = "seat_limit_reached: every seat of the account is taken (its subscription's `seats`, else its plan's)", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn add_member(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath((account, user)): ApiPath<(String, String)>,
) -> Result<Json<wire::MemberResponse>, ApiError> {
    let account = wire::parse_path_account_id(account)?;
    let user = wire::parse_path_user_id(user)?;
    let plans = state.plans.get(&*state.store, caller.auth.env).await?;
    let added_at = state
        .store
        .add_member(
            caller.auth.env,
            account.clone(),
            user.clone(),
            plans.document.clone(),
            caller.now,
        )
        .await?;
    Ok(Json(wire::MemberResponse {
        account_id: account.into_string(),
        user_id: user.into_string(),
        added_at: wire::format_timestamp(added_at),
    }))
}

/// Removes a user from an account, which frees their seat.
#[utoipa::path(
    delete, path = "/v1/accounts/{accountId}/members/{userId}", tag = "accounts",
    params(("accountId" = String, Path), ("userId" = String, Path)),
    responses(
        (status = 200, body = wire::MemberRemovedResponse),
        (status = 404, description = "not a member of this account", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn remove_member(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath((account, user)): ApiPath<(String, String)>,
) -> Result<Json<wire::MemberRemovedResponse>, ApiError> {
    let account = wire::parse_path_account_id(account)?;
    let user = wire::parse_path_user_id(user)?;
    state
        .store
        .remove_member(caller.auth.env, account.clone(), user.clone())
        .await
        .map_err(store_error("member of this account"))?;
    Ok(Json(wire::MemberRemovedResponse {
        account_id: account.into_string(),
        user_id: user.into_string(),
        removed: true,
    }))
}

/// An account: its members, seats, plan in force and subscription.
#[utoipa::path(
    get, path = "/v1/accounts/{accountId}", tag = "accounts",
    params(("accountId" = String, Path)),
    responses(
        (status = 200, body = wire::AccountResponse),
        (status = 404, description = "no members and no subscription", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_account(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath(account): ApiPath<String>,
) -> Result<Json<wire::AccountResponse>, ApiError> {
    let account = wire::parse_path_account_id(account)?;
    let plans = state.plans.get(&*state.store, caller.auth.env).await?;
    let view = state
        .store
        .account(
            caller.auth.env,
            account.clone(),
            plans.document.clone(),
            caller.now,
        )
        .await
        .map_err(store_error("account"))?;
    let subject = Subject::Account(account.clone());
    let subscription = view.subscription.as_ref().map(|sub| {
        let period = current_period(&plans.document, sub, caller.now);
        wire::SubscriptionResponse::new(&subject, sub, period, None)
    });
    Ok(Json(wire::AccountResponse {
        account_id: account.into_string(),
        seats: wire::Seats {
            used: view.members.len() as u64,
            max: view.seats_max,
        },
        members: view
            .members
            .into_iter()
            .map(|m| wire::AccountMember {
                user_id: m.user_id,
                added_at: wire::format_timestamp(m.added_at),
            })
            .collect(),
        plan_id: view.plan_id,
        subscription,
    }))
}

/// An account's subscription, ended or not.
#[utoipa::path(
    get, path = "/v1/accounts/{accountId}/subscription", tag = "accounts",
    params(("accountId" = String, Path)),
    responses(
        (status = 200, body = wire::SubscriptionResponse),
        (status = 404, description = "never subscribed", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_subscription(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath(account): ApiPath<String>,
) -> Result<Json<wire::SubscriptionResponse>, ApiError> {
    let account = wire::parse_path_account_id(account)?;
    read(&state, &caller, Subject::Account(account)).await
}

/// An account's usage: its pooled limits and each member's own, in one answer.
#[utoipa::path(
    get, path = "/v1/accounts/{accountId}/usage", tag = "accounts",
    params(("accountId" = String, Path)),
    responses(
        (status = 200, body = wire::AccountUsageResponse),
        (status = 400, description = "more than 1,000 members", body = wire::ErrorBody),
        (status = 404, description = "no members and no subscription", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn account_usage(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath(account): ApiPath<String>,
) -> Result<Json<wire::AccountUsageResponse>, ApiError> {
    let account = wire::parse_path_account_id(account)?;
    let plans = state.plans.get(&*state.store, caller.auth.env).await?;
    let outcome = state
        .store
        .account_usage(tollgate_store::AccountUsageQuery {
            env: caller.auth.env,
            now: caller.now,
            plans: plans.document.clone(),
            account_id: account.clone(),
        })
        .await
        .map_err(store_error("account"))?;
    let subject = Subject::Account(account.clone());
    let subscription = outcome.subscription.as_ref().map(|sub| {
        let period = current_period(&plans.document, sub, caller.now);
        wire::SubscriptionResponse::new(&subject, sub, period, None)
    });
    Ok(Json(wire::AccountUsageResponse {
        account_id: account.into_string(),
        plan_id: outcome.plan_id,
        subscription,
        limits: render::limit_states(&outcome.pooled),
        members: outcome
            .members
            .into_iter()
            .map(|(user_id, limits)| wire::AccountMemberUsage {
                user_id,
                limits: render::limit_states(&limits),
            })
            .collect(),
    }))
}
