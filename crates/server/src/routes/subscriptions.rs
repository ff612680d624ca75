//! Subscription routes for users and accounts (API.md §6): upsert, read, history, cancel.

use crate::auth::SecretKey;
use crate::error::{store_error, ApiError};
use crate::extract::{ApiJson, ApiPath};
use crate::ids::{new_id, SUBSCRIPTION_PREFIX};
use crate::AppState;
use axum::extract::State;
use axum::Json;
use jiff::{SignedDuration, Timestamp};
use tollgate_api as wire;
use tollgate_api::Subject;
use tollgate_core::plan::PlanDocument;
use tollgate_core::subscription::{history_view, Subscription};
use tollgate_core::window::{self, BillingInterval, IntervalUnit, WindowBounds};
use tollgate_store::Owner;

const SUBSCRIPTION: &str = "subscription";

/// The billing interval of a subscription whose plan left the document.
const FALLBACK_BILLING: BillingInterval = BillingInterval {
    unit: IntervalUnit::Month,
    count: 1,
};

/// The billing cycle of `sub` that contains `now`; for a subscription that has ended, its last
/// cycle.
pub fn current_period(doc: &PlanDocument, sub: &Subscription, now: Timestamp) -> WindowBounds {
    let billing = doc
        .plan(&sub.plan_id)
        .map_or(FALLBACK_BILLING, |p| p.billing);
    let at = match sub.ends_at {
        Some(end) if end <= now => end
            .checked_sub(SignedDuration::from_millis(1))
            .unwrap_or(end),
        _ => now,
    };
    window::subscription_window(sub.cycle_start, billing, at).unwrap_or(WindowBounds {
        start: sub.cycle_start,
        end: None,
    })
}

/// The store's name for a subscription's owner.
pub fn owner(subject: &Subject) -> Owner {
    match subject {
        Subject::User(u) => Owner::User(u.clone()),
        Subject::Account(a) => Owner::Account(a.clone()),
    }
}

/// Creates or changes a user's or an account's subscription; the same call twice changes
/// nothing. `seats` (an account's own seat cap) is applied by the store, where a biller's
/// webhook applies it too.
#[utoipa::path(
    post, path = "/v1/subscriptions", tag = "subscriptions",
    request_body = wire::SubscriptionUpsertRequest,
    responses(
        (status = 200, body = wire::SubscriptionResponse),
        (status = 400, description = "invalid_request (`seats` with `userId` names `field: \"seats\"`)", body = wire::ErrorBody),
        (status = 404, description = "unknown plan", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn upsert(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiJson(body): ApiJson<wire::SubscriptionUpsertRequest>,
) -> Result<Json<wire::SubscriptionResponse>, ApiError> {
    let input = body.parse()?;
    let subject = input.subject;
    let plans = state.plans.get(&*state.store, caller.auth.env).await?;
    let request = input.request;
    let Some(plan) = plans.document.plan(&request.plan_id) else {
        return Err(ApiError::not_found(format!(
            "no plan has id {:?}",
            request.plan_id
        )));
    };
    if let Some(custom) = &request.custom_limits {
        if let Some(unknown) = custom
            .keys()
            .find(|id| !plan.limits.iter().any(|l| &l.id == *id))
        {
            return Err(ApiError::invalid(
                format!("customLimits.{unknown}"),
                format!("plan {:?} has no limit {unknown:?}", plan.id),
            ));
        }
    }
    let outcome = state
        .store
        .upsert_subscription(
            caller.auth.env,
            owner(&subject),
            plans.document.clone(),
            request,
            new_id(SUBSCRIPTION_PREFIX),
            caller.now,
        )
        .await?;
    let period = current_period(&plans.document, &outcome.subscription, caller.now);
    Ok(Json(wire::SubscriptionResponse::new(
        &subject,
        &outcome.subscription,
        period,
        Some(outcome.changed),
    )))
}

/// A user's subscription, ended or not.
#[utoipa::path(
    get, path = "/v1/subscriptions/{userId}", tag = "subscriptions",
    params(("userId" = String, Path)),
    responses(
        (status = 200, body = wire::SubscriptionResponse),
        (status = 404, description = "never subscribed", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Json<wire::SubscriptionResponse>, ApiError> {
    let user_id = wire::parse_path_user_id(user_id)?;
    read(&state, &caller, Subject::User(user_id)).await
}

/// Reads a user's or an account's subscription.
pub async fn read(
    state: &AppState,
    caller: &crate::auth::Caller,
    subject: Subject,
) -> Result<Json<wire::SubscriptionResponse>, ApiError> {
    let sub = state
        .store
        .get_subscription(caller.auth.env, &owner(&subject))
        .await?
        .ok_or_else(|| ApiError::not_found("no subscription here"))?;
    let plans = state.plans.get(&*state.store, caller.auth.env).await?;
    let period = current_period(&plans.document, &sub, caller.now);
    Ok(Json(wire::SubscriptionResponse::new(
        &subject, &sub, period, None,
    )))
}

/// Every change of a user's subscription, oldest first.
#[utoipa::path(
    get, path = "/v1/subscriptions/{userId}/history", tag = "subscriptions",
    params(("userId" = String, Path)),
    responses(
        (status = 200, body = wire::HistoryResponse),
        (status = 404, description = "never subscribed", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn history(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Json<wire::HistoryResponse>, ApiError> {
    let user_id = wire::parse_path_user_id(user_id)?;
    let who = Owner::User(user_id.clone());
    let current = state
        .store
        .get_subscription(caller.auth.env, &who)
        .await?
        .ok_or_else(|| ApiError::not_found("this user has no subscription"))?;
    let rows = state
        .store
        .subscription_history(caller.auth.env, &who)
        .await?;
    let rows = history_view(rows, Some(&current), caller.now);
    Ok(Json(wire::HistoryResponse {
        user_id: user_id.into_string(),
        history: rows.iter().map(wire::HistoryRow::from).collect(),
    }))
}

/// Ends a user's subscription now, at the end of its period, or at a given time.
#[utoipa::path(
    post, path = "/v1/subscriptions/cancel", tag = "subscriptions",
    request_body = wire::CancelRequest,
    responses(
        (status = 200, body = wire::CancelResponse),
        (status = 404, body = wire::ErrorBody),
        (status = 409, description = "already_canceled", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiJson(body): ApiJson<wire::CancelRequest>,
) -> Result<Json<wire::CancelResponse>, ApiError> {
    let input = body.parse()?;
    let plans = state.plans.get(&*state.store, caller.auth.env).await?;
    let (sub, _entry) = state
        .store
        .cancel_subscription(
            caller.auth.env,
            owner(&input.subject),
            plans.document.clone(),
            input.at,
            input.reason,
            caller.now,
        )
        .await
        .map_err(store_error(SUBSCRIPTION))?;
    Ok(Json(wire::CancelResponse {
        subscription_id: sub.id,
        plan_id: sub.plan_id,
        ends_at: wire::format_timestamp(sub.ends_at.unwrap_or(caller.now)),
    }))
}
