//! Metering routes (API.md §4): reserve, commit, release, extend, read a reservation, track,
//! check and usage. Each parses its body into core types, adds `now`, fresh ids and the
//! environment's plans, runs one store command and renders the outcome.

use crate::auth::{Caller, SecretKey};
use crate::error::{store_error, ApiError};
use crate::extract::{ApiJson, ApiPath, ApiQuery, IdempotentJson, OptionalJson};
use crate::ids::{looks_like, new_id, EVENT_PREFIX, RESERVATION_PREFIX};
use crate::metrics::Operation;
use crate::render::{self, json_response};
use crate::routes::subscriptions::current_period;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use tollgate_api as wire;
use tollgate_api::Subject;
use tollgate_core::input::{StoredText, UserId};
use tollgate_store::{
    CheckCommand, CommitCommand, ExtendCommand, Idempotency, Idempotent, IdentifyCommand,
    IfExpired, ReleaseCommand, ReserveCommand, TrackCommand, Traits, UsageQuery,
};
use utoipa::IntoParams;

/// What the environment's settings (API.md §12) say about one metering call: whether its
/// prompt and response are logged, and whether a denial is recorded. Read through the node's
/// settings cache (`settings_cache`), so a call costs no store read of its own; the answer
/// travels in the store command, and the procedures decide with it.
struct Logging {
    prompts: bool,
    record_denials: bool,
}

impl Logging {
    async fn of(state: &AppState, caller: &Caller) -> Result<Self, ApiError> {
        let settings = state
            .settings
            .get(state.store.as_ref(), caller.auth.env)
            .await?;
        Ok(Self {
            prompts: settings.prompt_logging,
            record_denials: settings.record_denials,
        })
    }

    /// `text` as a commit or release logs it: the settings are read only when there is text
    /// (a commit or release without a response reads nothing).
    async fn of_text(
        state: &AppState,
        caller: &Caller,
        text: Option<StoredText>,
    ) -> Result<Option<StoredText>, ApiError> {
        match text {
            None => Ok(None),
            Some(text) => Ok(Self::of(state, caller).await?.logged(Some(text))),
        }
    }

    /// `text` if prompt logging is on, else nothing (it was checked for size and is dropped).
    fn logged(&self, text: Option<StoredText>) -> Option<StoredText> {
        text.filter(|_| self.prompts)
    }
}

const RESERVATION: &str = "reservation";

fn reservation_id(id: String) -> Result<String, ApiError> {
    if looks_like(RESERVATION_PREFIX, &id) {
        Ok(id)
    } else {
        Err(ApiError::not_found(format!("{RESERVATION} not found")))
    }
}

fn answer(body: String) -> Response {
    json_response(StatusCode::OK, body)
}

/// Holds `quantity` on every limit that matches the event, or on none.
#[utoipa::path(
    post, path = "/v1/reserve", tag = "metering",
    request_body = wire::ReserveRequest,
    responses(
        (status = 200, description = "Decided; `allowed: false` when over quota", body = wire::ReserveResponse),
        (status = 400, body = wire::ErrorBody), (status = 401, body = wire::ErrorBody),
        (status = 409, description = "idempotency_conflict", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn reserve(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    request: IdempotentJson<wire::ReserveRequest>,
) -> Result<Response, ApiError> {
    let input = request.body.parse()?;
    let plans = state.plans.get(&*state.store, caller.auth.env).await?;
    let logging = Logging::of(&state, &caller).await?;
    let idempotency = input.idempotency_key.map(|key| Idempotency {
        key,
        fingerprint: request.fingerprint.hex(),
        render: render::reserve_body,
    });
    let outcome = state
        .store
        .reserve(ReserveCommand {
            env: caller.auth.env,
            now: caller.now,
            plans: plans.document.clone(),
            reservation_id: new_id(RESERVATION_PREFIX),
            event_id: new_id(EVENT_PREFIX),
            user_id: input.user_id,
            event: input.event,
            quantity: input.quantity,
            metadata: input.metadata,
            ttl: input.ttl,
            prompt: logging.logged(input.prompt),
            record_denials: logging.record_denials,
            ids: crate::ids::new_seed(),
            idempotency,
        })
        .await?;
    Ok(match outcome {
        Idempotent::Fresh(o) => {
            state
                .metrics
                .observe_decision(Operation::Reserve, o.allowed, &o.reasons);
            answer(render::reserve_body(&o))
        }
        Idempotent::Replayed(body) => answer(body),
    })
}

/// Confirms a reservation with its final quantity.
#[utoipa::path(
    post, path = "/v1/reservations/{reservationId}/commit", tag = "metering",
    params(("reservationId" = String, Path, description = "rsv_…")),
    request_body(content = Option<wire::CommitRequest>, description = "All fields optional; the body may be omitted"),
    responses(
        (status = 200, body = wire::CommitResponse),
        (status = 404, body = wire::ErrorBody),
        (status = 409, description = "reservation_not_pending", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn commit(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<wire::CommitRequest>,
) -> Result<Json<wire::CommitResponse>, ApiError> {
    let id = reservation_id(id)?;
    let input = body.parse()?;
    let plans = state.plans.get(&*state.store, caller.auth.env).await?;
    let response = Logging::of_text(&state, &caller, input.response).await?;
    let outcome = state
        .store
        .commit(CommitCommand {
            env: caller.auth.env,
            now: caller.now,
            plans: plans.document.clone(),
            reservation_id: id,
            quantity: input.quantity,
            metadata: input.metadata,
            cost_micros: input.cost_micros,
            response,
            if_expired: match input.if_expired {
                wire::IfExpired::Reject => IfExpired::Reject,
                wire::IfExpired::Record => IfExpired::Record,
            },
            late_event_id: new_id(EVENT_PREFIX),
            ids: crate::ids::new_seed(),
        })
        .await
        .map_err(store_error(RESERVATION))?;
    Ok(Json(render::commit_response(&outcome)))
}

/// Returns a reservation's hold.
#[utoipa::path(
    post, path = "/v1/reservations/{reservationId}/release", tag = "metering",
    params(("reservationId" = String, Path, description = "rsv_…")),
    request_body(content = Option<wire::ReleaseRequest>, description = "All fields optional; the body may be omitted"),
    responses(
        (status = 200, body = wire::ReleaseResponse),
        (status = 404, body = wire::ErrorBody),
        (status = 409, description = "reservation_not_pending", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn release(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<wire::ReleaseRequest>,
) -> Result<Json<wire::ReleaseResponse>, ApiError> {
    let id = reservation_id(id)?;
    let input = body.parse()?;
    let plans = state.plans.get(&*state.store, caller.auth.env).await?;
    let response = Logging::of_text(&state, &caller, input.response).await?;
    let outcome = state
        .store
        .release(ReleaseCommand {
            env: caller.auth.env,
            now: caller.now,
            plans: plans.document.clone(),
            reservation_id: id,
            reason: input.reason,
            error_code: input.error_code,
            ids: crate::ids::new_seed(),
            response,
        })
        .await
        .map_err(store_error(RESERVATION))?;
    Ok(Json(render::release_response(&outcome)))
}

/// Moves a pending reservation's expiry to now + ttlSeconds.
#[utoipa::path(
    post, path = "/v1/reservations/{reservationId}/extend", tag = "metering",
    params(("reservationId" = String, Path, description = "rsv_…")),
    request_body(content = Option<wire::ExtendRequest>, description = "The body may be omitted (60 s)"),
    responses(
        (status = 200, body = wire::ExtendResponse),
        (status = 404, body = wire::ErrorBody),
        (status = 409, description = "reservation_not_pending", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn extend(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<wire::ExtendRequest>,
) -> Result<Json<wire::ExtendResponse>, ApiError> {
    let id = reservation_id(id)?;
    let ttl = body.parse()?;
    let outcome = state
        .store
        .extend(ExtendCommand {
            env: caller.auth.env,
            now: caller.now,
            reservation_id: id,
            ttl,
        })
        .await
        .map_err(store_error(RESERVATION))?;
    Ok(Json(render::extend_response(&outcome)))
}

/// A reservation and its state; an overdue pending one reads as expired.
#[utoipa::path(
    get, path = "/v1/reservations/{reservationId}", tag = "metering",
    params(("reservationId" = String, Path, description = "rsv_…")),
    responses(
        (status = 200, body = wire::ReservationResponse),
        (status = 404, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_reservation(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<wire::ReservationResponse>, ApiError> {
    let id = reservation_id(id)?;
    let view = state
        .store
        .get_reservation(caller.auth.env, &id, caller.now)
        .await
        .map_err(store_error(RESERVATION))?;
    Ok(Json(render::reservation_response(&view)))
}

/// Records usage in one step (with `enforce`, an atomic check-and-record).
#[utoipa::path(
    post, path = "/v1/track", tag = "metering",
    request_body = wire::TrackRequest,
    responses(
        (status = 200, body = wire::TrackResponse),
        (status = 400, body = wire::ErrorBody),
        (status = 409, description = "idempotency_conflict", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn track(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    request: IdempotentJson<wire::TrackRequest>,
) -> Result<Response, ApiError> {
    let input = request.body.parse(caller.now)?;
    let plans = state.plans.get(&*state.store, caller.auth.env).await?;
    let logging = Logging::of(&state, &caller).await?;
    let idempotency = input.idempotency_key.map(|key| Idempotency {
        key,
        fingerprint: request.fingerprint.hex(),
        render: render::track_body,
    });
    let outcome = state
        .store
        .track(TrackCommand {
            env: caller.auth.env,
            now: caller.now,
            plans: plans.document.clone(),
            event_id: new_id(EVENT_PREFIX),
            user_id: input.user_id,
            event: input.event,
            quantity: input.quantity,
            metadata: input.metadata,
            occurred_at: input.occurred_at,
            cost_micros: input.cost_micros,
            prompt: logging.logged(input.prompt),
            response: logging.logged(input.response),
            enforce: input.enforce,
            record_denials: logging.record_denials,
            ids: crate::ids::new_seed(),
            idempotency,
        })
        .await?;
    Ok(match outcome {
        Idempotent::Fresh(o) => {
            state
                .metrics
                .observe_decision(Operation::Track, o.allowed, &o.reasons);
            answer(render::track_body(&o))
        }
        Idempotent::Replayed(body) => answer(body),
    })
}

/// Would a reserve of this be allowed now? No side effect.
#[utoipa::path(
    post, path = "/v1/check", tag = "metering",
    request_body = wire::CheckRequest,
    responses(
        (status = 200, body = wire::CheckResponse),
        (status = 400, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn check(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiJson(body): ApiJson<wire::CheckRequest>,
) -> Result<Json<wire::CheckResponse>, ApiError> {
    let input = body.parse()?;
    let plans = state.plans.get(&*state.store, caller.auth.env).await?;
    let outcome = state
        .store
        .check(CheckCommand {
            env: caller.auth.env,
            now: caller.now,
            plans: plans.document.clone(),
            user_id: input.user_id,
            event: input.event,
            quantity: input.quantity,
            metadata: input.metadata,
        })
        .await?;
    state
        .metrics
        .observe_decision(Operation::Check, outcome.allowed, &outcome.reasons);
    Ok(Json(render::check_response(&outcome)))
}

/// An anonymous visitor became a user: their usage in the current windows counts for the
/// user from now on, their events move to the user, and later calls with the anonymous id
/// are the user's. Idempotent. `traits` are merged into the user's stored traits.
#[utoipa::path(
    post, path = "/v1/identify", tag = "metering",
    request_body = wire::IdentifyRequest,
    responses(
        (status = 200, body = wire::IdentifyResponse),
        (status = 400, body = wire::ErrorBody),
        (status = 409, description = "already_identified: the anonymous id stands for another user", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn identify(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiJson(body): ApiJson<wire::IdentifyRequest>,
) -> Result<Json<wire::IdentifyResponse>, ApiError> {
    let input = body.parse()?;
    let traits = input
        .traits
        .map(Traits::new)
        .transpose()
        .map_err(|e| ApiError::invalid("traits", e.to_string()))?;
    let plans = state.plans.get(&*state.store, caller.auth.env).await?;
    let outcome = state
        .store
        .identify(IdentifyCommand {
            env: caller.auth.env,
            now: caller.now,
            plans: plans.document.clone(),
            anonymous_id: input.anonymous_id,
            user_id: input.user_id,
            traits,
        })
        .await?;
    Ok(Json(wire::IdentifyResponse {
        user_id: outcome.user_id,
        merged: outcome.merged,
        events_merged: outcome.events_merged,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Only the limits that count this event.
    #[param(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:-]+$")]
    pub(crate) event: Option<String>,
}

/// Every limit of the user's plan, with its state now.
#[utoipa::path(
    get, path = "/v1/users/{userId}/usage", tag = "metering",
    params(("userId" = String, Path), UsageParams),
    responses(
        (status = 200, body = wire::UsageResponse),
        (status = 400, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn usage(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath(user_id): ApiPath<String>,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> Result<Json<wire::UsageResponse>, ApiError> {
    let user_id = wire::parse_path_user_id(user_id)?;
    usage_of(&state, &caller, user_id, params).await
}

/// The usage answer of one user: `GET /v1/users/{userId}/usage`, and `GET /v1/me/usage` for
/// the user of a user token.
pub(crate) async fn usage_of(
    state: &AppState,
    caller: &Caller,
    user_id: UserId,
    params: UsageParams,
) -> Result<Json<wire::UsageResponse>, ApiError> {
    let event = wire::parse_event_filter(params.event)?;
    let plans = state.plans.get(&*state.store, caller.auth.env).await?;
    let outcome = state
        .store
        .usage(UsageQuery {
            env: caller.auth.env,
            now: caller.now,
            plans: plans.document.clone(),
            user_id,
            event,
        })
        .await?;
    // Through an identified anonymous id the answer is the user's, and names them.
    let user_id = wire::parse_path_user_id(outcome.user_id)?;
    let subscription = outcome.subscription.as_ref().map(|sub| {
        let period = current_period(&plans.document, sub, caller.now);
        wire::SubscriptionResponse::new(&Subject::User(user_id.clone()), sub, period, None)
    });
    Ok(Json(wire::UsageResponse {
        user_id: user_id.into_string(),
        plan_id: outcome.plan_id,
        subscription,
        limits: render::limit_states(&outcome.limits),
        credits: render::pack_balances(&outcome.credits),
    }))
}
