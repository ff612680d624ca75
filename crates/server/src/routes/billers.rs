//! Biller routes (API.md §10): an environment's Stripe and Polar integrations, the webhook
//! endpoints the billers post to, the events received (listed, shown, replayed), customer
//! mappings, and the Stripe meter outbox; and the environment's settings (§12).
//!
//! A delivery is verified against the integration's secrets and the real clock, read into a
//! `BillerEvent` (`tollgate-billers`), and applied by the store in one transaction
//! (`procedure::billers`). An event that waited for its customer's user is applied again as
//! soon as a mapping for that customer is learnt or set.

use crate::auth::{environment_now, Caller, SecretKey};
use crate::error::{store_error, ApiError};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::ids::{looks_like, new_id, new_seed, random_string, SUBSCRIPTION_PREFIX};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use jiff::Timestamp;
use serde::Deserialize;
use tollgate_api as wire;
use tollgate_api::{BillerKind, IntegrationConfig, Settings};
use tollgate_billers::{parse_polar, parse_stripe, verify_standard, verify_stripe, Sources};
use tollgate_core::biller::{Biller, BillerEvent, PastDuePolicy};
use tollgate_core::input::{AccountId, UserId};
use tollgate_store::procedure::billers::customer_of;
use tollgate_store::{
    BillerEventCommand, BillerEventOutcome, BillerEventStatus, BillerEventsQuery, EnvId,
    MeterEventRow, MeterEventsQuery, MeterStatus, Owner, StoredBillerEvent,
};
use utoipa::IntoParams;

/// Prefix of a webhook endpoint id.
pub const ENDPOINT_PREFIX: &str = "we_";
/// Random characters of an endpoint id after its prefix: it is the webhook URL's only secret
/// besides the signature, so it is long.
const ENDPOINT_RANDOM_CHARS: usize = 32;
/// Longest biller customer or event id accepted in a path, in bytes.
pub const BILLER_ID_BYTES_MAX: usize = 255;
/// Events applied again at once after a customer is mapped.
const WAITING_REPLAY_MAX: usize = 100;
/// Rows a list answers by default and at most.
const LIST_LIMIT_DEFAULT: usize = 50;
const LIST_LIMIT_MAX: usize = 500;

/// The biller a path names.
fn biller(name: &str) -> Result<(Biller, BillerKind), ApiError> {
    match name {
        "stripe" => Ok((Biller::Stripe, BillerKind::Stripe)),
        "polar" => Ok((Biller::Polar, BillerKind::Polar)),
        _ => Err(ApiError::not_found(format!(
            "no biller {name:?}; Tollgate integrates stripe and polar"
        ))),
    }
}

fn biller_id(field: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > BILLER_ID_BYTES_MAX || id.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            format!("must be 1-{BILLER_ID_BYTES_MAX} bytes without control characters"),
        ));
    }
    Ok(())
}

fn stored_config(text: &str) -> Result<IntegrationConfig, ApiError> {
    IntegrationConfig::from_stored(text)
        .map_err(|e| ApiError::Internal(format!("stored integration does not load: {e}")))
}

fn sources(config: &IntegrationConfig) -> Sources {
    Sources {
        user_id_from: config.user_id_from.clone(),
        account_id_from: config.account_id_from.clone(),
    }
}

/// The environment's settings as stored (defaults until one is stored), never cached.
pub async fn settings_of(state: &AppState, env: EnvId) -> Result<Settings, ApiError> {
    crate::settings_cache::load(state.store.as_ref(), env).await
}

/// Sets an environment's integration with Stripe or Polar; see API.md §10.
#[utoipa::path(
    put, path = "/v1/integrations/{biller}", tag = "billers",
    params(("biller" = String, Path, description = "stripe or polar")),
    request_body = wire::IntegrationRequest,
    responses(
        (status = 200, body = wire::IntegrationResponse),
        (status = 400, body = wire::ErrorBody),
        (status = 401, body = wire::ErrorBody),
        (status = 404, description = "not a biller", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn put_integration(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<wire::IntegrationRequest>,
) -> Result<Json<wire::IntegrationResponse>, ApiError> {
    let (biller, kind) = biller(&name)?;
    let config = body.parse(kind)?;
    let stored = state
        .store
        .put_integration(
            caller.auth.env,
            biller,
            config.to_stored(),
            config.forwarded(),
            random_string(ENDPOINT_PREFIX, ENDPOINT_RANDOM_CHARS),
            caller.now,
        )
        .await?;
    Ok(Json(wire::IntegrationResponse::new(
        &config,
        (biller.as_str(), &stored.endpoint_id),
        wire::format_timestamp(stored.updated_at),
    )))
}

/// Shows an environment's integration, secrets masked.
#[utoipa::path(
    get, path = "/v1/integrations/{biller}", tag = "billers",
    params(("biller" = String, Path, description = "stripe or polar")),
    responses(
        (status = 200, body = wire::IntegrationResponse),
        (status = 401, body = wire::ErrorBody),
        (status = 404, description = "not a biller, or not set up", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_integration(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<wire::IntegrationResponse>, ApiError> {
    let (biller, _) = biller(&name)?;
    let stored = state
        .store
        .integration(caller.auth.env, biller)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no {name} integration in this environment; set one with PUT /v1/integrations/{name}"
            ))
        })?;
    let config = stored_config(&stored.config)?;
    Ok(Json(wire::IntegrationResponse::new(
        &config,
        (biller.as_str(), &stored.endpoint_id),
        wire::format_timestamp(stored.updated_at),
    )))
}

/// Maps a biller customer to a user or an account by hand; events that waited on that
/// customer are applied at once.
#[utoipa::path(
    put, path = "/v1/integrations/{biller}/customers/{customerId}", tag = "billers",
    params(
        ("biller" = String, Path, description = "stripe or polar"),
        ("customerId" = String, Path, description = "the biller's customer id (cus_…)"),
    ),
    request_body = wire::CustomerMappingRequest,
    responses(
        (status = 200, body = wire::CustomerMappingResponse),
        (status = 400, body = wire::ErrorBody),
        (status = 401, body = wire::ErrorBody),
        (status = 404, description = "not a biller", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn put_customer(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath((name, customer_id)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<wire::CustomerMappingRequest>,
) -> Result<Json<wire::CustomerMappingResponse>, ApiError> {
    let (biller, _) = biller(&name)?;
    biller_id("customerId", &customer_id)?;
    let owner = match (&body.user_id, &body.account_id) {
        (Some(u), None) => Owner::User(
            UserId::parse(u.clone()).map_err(|e| ApiError::invalid("userId", e.to_string()))?,
        ),
        (None, Some(a)) => Owner::Account(
            AccountId::parse(a.clone())
                .map_err(|e| ApiError::invalid("accountId", e.to_string()))?,
        ),
        _ => {
            return Err(ApiError::invalid(
                "",
                "give exactly one of userId and accountId",
            ))
        }
    };
    let env = caller.auth.env;
    state
        .store
        .put_biller_customer(env, biller, customer_id.clone(), owner, caller.now)
        .await?;
    let replayed = match state.store.integration(env, biller).await? {
        Some(stored) => {
            let config = stored_config(&stored.config)?;
            let target = Target {
                env,
                biller,
                config: &config,
                offset: caller.auth.clock_offset_seconds,
            };
            replay_waiting(&state, &target, &customer_id).await?
        }
        None => Vec::new(),
    };
    Ok(Json(wire::CustomerMappingResponse {
        customer_id,
        user_id: body.user_id,
        account_id: body.account_id,
        replayed,
    }))
}

/// Where an event is applied: the environment, its biller settings and its clock.
struct Target<'a> {
    env: EnvId,
    biller: Biller,
    config: &'a IntegrationConfig,
    offset: i64,
}

/// Reads a verified body into an event.
fn parse(target: &Target<'_>, body: &[u8], webhook_id: &str) -> Result<BillerEvent, ApiError> {
    let sources = sources(target.config);
    let parsed = match target.biller {
        Biller::Stripe => parse_stripe(body, &sources),
        Biller::Polar => parse_polar(body, webhook_id, &sources),
    };
    parsed.map_err(|e| ApiError::invalid("", format!("the event does not read: {e}")))
}

/// Applies one event through the store; a store failure is recorded with the raw body (so it
/// can be inspected and replayed) and answered 5xx, so the biller retries.
async fn apply(
    state: &AppState,
    target: &Target<'_>,
    event: BillerEvent,
    (body, replay): (String, bool),
) -> Result<BillerEventOutcome, ApiError> {
    let env = target.env;
    let plans = state.plans.get(&*state.store, env).await?.document.clone();
    let past_due = match settings_of(state, env).await?.past_due {
        wire::PastDue::Keep => PastDuePolicy::Keep,
        wire::PastDue::End => PastDuePolicy::End,
    };
    let now = environment_now(target.offset);
    let failed = StoredBillerEvent {
        biller: target.biller,
        event_id: event.event_id.clone(),
        event_type: event.event_type.clone(),
        received_at: now,
        customer_id: None,
        status: BillerEventStatus::Failed,
        note: String::new(),
        body: body.clone(),
        deliveries: 1,
    };
    let outcome = state
        .store
        .apply_biller_event(BillerEventCommand {
            env,
            now,
            plans,
            past_due,
            event,
            body,
            replay,
            new_subscription_id: new_id(SUBSCRIPTION_PREFIX),
            ids: new_seed(),
        })
        .await;
    match outcome {
        Ok(outcome) => Ok(outcome),
        Err(e) => {
            tracing::error!(biller = target.biller.as_str(), event_id = %failed.event_id, error = %e,
                "applying a biller event failed; the biller is answered 5xx and retries");
            let note = "processing failed; the biller retries, or replay it".to_string();
            let record = StoredBillerEvent { note, ..failed };
            if let Err(again) = state.store.record_biller_failure(env, record).await {
                tracing::error!(error = %again, "recording the failed biller event failed too");
            }
            let api: ApiError = e.into();
            Err(match api {
                ApiError::Unavailable(_) | ApiError::OutcomeUnknown(_) => api,
                other => ApiError::Internal(other.to_string()),
            })
        }
    }
}

fn answer(event_id: String, outcome: &BillerEventOutcome) -> wire::WebhookAnswer {
    wire::WebhookAnswer {
        received: true,
        applied: outcome.status == BillerEventStatus::Applied && !outcome.duplicate,
        status: outcome.status.as_str().to_string(),
        duplicate: outcome.duplicate,
        event_id,
        note: outcome.note.clone(),
    }
}

/// Applies again the events that waited for `customer_id` to be mapped, oldest first.
async fn replay_waiting(
    state: &AppState,
    target: &Target<'_>,
    customer_id: &str,
) -> Result<Vec<wire::WebhookAnswer>, ApiError> {
    let mut waiting = state
        .store
        .biller_events(BillerEventsQuery {
            env: target.env,
            biller: target.biller,
            status: Some(BillerEventStatus::Unresolved),
            customer_id: Some(customer_id.to_string()),
            limit: WAITING_REPLAY_MAX,
            before: None,
        })
        .await?;
    waiting.reverse();
    let mut answers = Vec::with_capacity(waiting.len());
    for stored in waiting {
        let event = parse(target, stored.body.as_bytes(), &stored.event_id)?;
        let outcome = apply(state, target, event, (stored.body, true)).await?;
        answers.push(answer(stored.event_id, &outcome));
    }
    Ok(answers)
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks a delivery's signature against the integration's secrets and the real clock.
fn verify(
    biller: Biller,
    config: &IntegrationConfig,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, ApiError> {
    let now = Timestamp::now().as_second();
    let tolerance = i64::from(config.tolerance_seconds);
    let secrets = &config.webhook_secrets;
    let refused = |why: String| ApiError::InvalidSignature(why);
    match biller {
        Biller::Stripe => {
            let sig = header(headers, "stripe-signature")
                .ok_or_else(|| refused("no Stripe-Signature header".into()))?;
            verify_stripe(body, sig, secrets, now, tolerance)
                .map_err(|e| refused(e.to_string()))?;
            Ok(String::new())
        }
        Biller::Polar => {
            let (Some(id), Some(ts), Some(sig)) = (
                header(headers, "webhook-id"),
                header(headers, "webhook-timestamp"),
                header(headers, "webhook-signature"),
            ) else {
                return Err(refused(
                    "the webhook-id, webhook-timestamp and webhook-signature headers are needed"
                        .into(),
                ));
            };
            verify_standard(body, id, ts, sig, secrets, now, tolerance)
                .map_err(|e| refused(e.to_string()))?;
            Ok(id.to_string())
        }
    }
}

/// A biller's delivery: verified, recorded and applied. `200` for every verified event (an
/// unused type too), `400 invalid_signature` for one that does not verify, `5xx` only when it
/// must be retried.
#[utoipa::path(
    post, path = "/webhooks/{biller}/{endpointId}", tag = "billers",
    params(
        ("biller" = String, Path, description = "stripe or polar"),
        ("endpointId" = String, Path, description = "from the integration's webhookPath"),
    ),
    request_body(content = String, content_type = "application/json",
        description = "the biller's event, as signed"),
    responses(
        (status = 200, body = wire::WebhookAnswer),
        (status = 400, description = "invalid_signature, or a body that is not an event", body = wire::ErrorBody),
        (status = 404, description = "unknown endpoint", body = wire::ErrorBody),
        (status = 500, body = wire::ErrorBody),
        (status = 503, body = wire::ErrorBody),
    )
)]
pub async fn receive(
    State(state): State<AppState>,
    ApiPath((name, endpoint_id)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<wire::WebhookAnswer>, ApiError> {
    let (biller, _) = biller(&name)?;
    let unknown = || ApiError::not_found(format!("no {name} webhook endpoint {endpoint_id:?}"));
    if endpoint_id.len() > BILLER_ID_BYTES_MAX {
        return Err(unknown());
    }
    let found = state
        .store
        .endpoint(biller, &endpoint_id)
        .await?
        .ok_or_else(unknown)?;
    let config = stored_config(&found.integration.config)?;
    let webhook_id = verify(biller, &config, &headers, &body).inspect_err(|e| {
        tracing::warn!(biller = biller.as_str(), endpoint_id = %endpoint_id, reason = %e,
            bytes = body.len(), "biller webhook refused: signature does not verify");
    })?;
    let target = Target {
        env: found.integration.env,
        biller,
        config: &config,
        offset: found.clock_offset_seconds,
    };
    let event = parse(&target, &body, &webhook_id)?;
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::invalid("", "the body is not UTF-8"))?;
    let event_id = event.event_id.clone();
    let customer = customer_of(&event.fact);
    let outcome = apply(&state, &target, event, (text, false)).await?;
    tracing::info!(biller = biller.as_str(), event_id = %event_id, status = outcome.status.as_str(),
        duplicate = outcome.duplicate, "biller event received");
    let counted = if outcome.duplicate {
        "duplicate"
    } else {
        outcome.status.as_str()
    };
    state.metrics.observe_biller_event(biller.as_str(), counted);
    if outcome.status == BillerEventStatus::Applied && !outcome.duplicate {
        if let Some(customer) = customer {
            replay_waiting(&state, &target, &customer).await?;
        }
    }
    Ok(Json(answer(event_id, &outcome)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// applied, ignored, stale, unresolved, failed
    #[param(pattern = "^(applied|ignored|stale|unresolved|failed)$")]
    pub status: Option<String>,
    pub customer_id: Option<String>,
    /// 1-500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    #[param(pattern = "^-?[0-9]{1,14}\\.[\\s\\S]*$")]
    pub cursor: Option<String>,
}

fn limit(given: Option<usize>) -> Result<usize, ApiError> {
    match given.unwrap_or(LIST_LIMIT_DEFAULT) {
        n @ 1..=LIST_LIMIT_MAX => Ok(n),
        _ => Err(ApiError::invalid(
            "limit",
            format!("must be 1-{LIST_LIMIT_MAX}"),
        )),
    }
}

/// A list cursor: the last row's time in milliseconds and its id.
fn cursor(given: Option<&str>) -> Result<Option<(Timestamp, String)>, ApiError> {
    let Some(c) = given else { return Ok(None) };
    let bad = || ApiError::invalid("cursor", "not a cursor this list answered");
    let (ms, id) = c.split_once('.').ok_or_else(bad)?;
    let at = wire::parse_cursor_millis(ms)
        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
        .ok_or_else(bad)?;
    Ok(Some((at, id.to_string())))
}

fn next_cursor(at: Timestamp, id: &str) -> String {
    format!("{}.{id}", at.as_millisecond())
}

/// Cuts `rows` (read with one extra) to a page of `limit`; the next page's cursor if there is
/// one.
fn page<T>(rows: &mut Vec<T>, limit: usize, cursor_of: impl Fn(&T) -> String) -> Option<String> {
    let more = rows.len() > limit;
    rows.truncate(limit);
    more.then(|| rows.last().map(cursor_of)).flatten()
}

fn event_view(e: StoredBillerEvent, with_body: bool) -> wire::BillerEventView {
    wire::BillerEventView {
        event_id: e.event_id,
        event_type: e.event_type,
        received_at: wire::format_timestamp(e.received_at),
        customer_id: e.customer_id,
        status: e.status.as_str().to_string(),
        note: e.note,
        deliveries: e.deliveries,
        body: with_body
            .then(|| serde_json::from_str(&e.body).unwrap_or(serde_json::Value::String(e.body))),
    }
}

/// The events a biller sent, newest first.
#[utoipa::path(
    get, path = "/v1/integrations/{biller}/events", tag = "billers",
    params(("biller" = String, Path, description = "stripe or polar"), EventsParams),
    responses(
        (status = 200, body = wire::BillerEventsResponse),
        (status = 400, body = wire::ErrorBody),
        (status = 401, body = wire::ErrorBody),
        (status = 404, description = "not a biller", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_events(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath(name): ApiPath<String>,
    ApiQuery(params): ApiQuery<EventsParams>,
) -> Result<Json<wire::BillerEventsResponse>, ApiError> {
    let (biller, _) = biller(&name)?;
    let status = match params.status.as_deref() {
        None => None,
        Some(s) => Some(BillerEventStatus::parse(s).ok_or_else(|| {
            ApiError::invalid(
                "status",
                "must be applied, ignored, stale, unresolved or failed",
            )
        })?),
    };
    let limit = limit(params.limit)?;
    let mut rows = state
        .store
        .biller_events(BillerEventsQuery {
            env: caller.auth.env,
            biller,
            status,
            customer_id: params.customer_id,
            limit: limit + 1,
            before: cursor(params.cursor.as_deref())?,
        })
        .await?;
    let next = page(&mut rows, limit, |r| {
        next_cursor(r.received_at, &r.event_id)
    });
    Ok(Json(wire::BillerEventsResponse {
        events: rows.into_iter().map(|e| event_view(e, false)).collect(),
        next_cursor: next,
    }))
}

/// A received event; `404` if there is none with this id.
async fn received(
    state: &AppState,
    env: EnvId,
    (biller, name): (Biller, &str),
    event_id: &str,
) -> Result<StoredBillerEvent, ApiError> {
    biller_id("eventId", event_id)?;
    state
        .store
        .biller_event(env, biller, event_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no {name} event {event_id:?} was received")))
}

/// One received event, with its raw body.
#[utoipa::path(
    get, path = "/v1/integrations/{biller}/events/{eventId}", tag = "billers",
    params(("biller" = String, Path, description = "stripe or polar"), ("eventId" = String, Path)),
    responses(
        (status = 200, body = wire::BillerEventView),
        (status = 401, body = wire::ErrorBody),
        (status = 404, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_event(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath((name, event_id)): ApiPath<(String, String)>,
) -> Result<Json<wire::BillerEventView>, ApiError> {
    let (biller, _) = biller(&name)?;
    let stored = received(&state, caller.auth.env, (biller, &name), &event_id).await?;
    Ok(Json(event_view(stored, true)))
}

/// Applies a received event again, as if it arrived now (signature not checked again: it was
/// when it arrived). An older snapshot than one applied since is still `stale`.
#[utoipa::path(
    post, path = "/v1/integrations/{biller}/events/{eventId}/replay", tag = "billers",
    params(("biller" = String, Path, description = "stripe or polar"), ("eventId" = String, Path)),
    responses(
        (status = 200, body = wire::WebhookAnswer),
        (status = 401, body = wire::ErrorBody),
        (status = 404, body = wire::ErrorBody),
        (status = 503, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn replay_event(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath((name, event_id)): ApiPath<(String, String)>,
) -> Result<Json<wire::WebhookAnswer>, ApiError> {
    let (biller, _) = biller(&name)?;
    let env = caller.auth.env;
    let stored = received(&state, env, (biller, &name), &event_id).await?;
    let integration =
        state.store.integration(env, biller).await?.ok_or_else(|| {
            ApiError::not_found(format!("no {name} integration in this environment"))
        })?;
    let config = stored_config(&integration.config)?;
    let target = Target {
        env,
        biller,
        config: &config,
        offset: caller.auth.clock_offset_seconds,
    };
    let event = parse(&target, stored.body.as_bytes(), &stored.event_id)?;
    let customer = customer_of(&event.fact);
    let outcome = apply(&state, &target, event, (stored.body, true)).await?;
    if outcome.status == BillerEventStatus::Applied {
        if let Some(customer) = customer {
            replay_waiting(&state, &target, &customer).await?;
        }
    }
    Ok(Json(answer(event_id, &outcome)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MeterEventsParams {
    /// pending, delivered, failed
    #[param(pattern = "^(pending|delivered|failed)$")]
    pub status: Option<String>,
    /// 1-500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    #[param(pattern = "^-?[0-9]{1,14}\\.[\\s\\S]*$")]
    pub cursor: Option<String>,
}

fn meter_view(m: MeterEventRow) -> wire::MeterEventView {
    wire::MeterEventView {
        next_attempt_at: (m.status == MeterStatus::Pending)
            .then(|| wire::format_timestamp(m.next_attempt_at)),
        event_id: m.event_id,
        meter_event_name: m.meter_event_name,
        user_id: m.user_id,
        value: m.value,
        occurred_at: wire::format_timestamp(m.occurred_at),
        status: m.status.as_str().to_string(),
        attempts: m.attempts,
        last_status: m.last_status,
        last_error: m.last_error,
        created_at: wire::format_timestamp(m.created_at),
    }
}

fn stripe_only(name: &str) -> Result<(), ApiError> {
    match biller(name)? {
        (Biller::Stripe, _) => Ok(()),
        _ => Err(ApiError::not_found("meter forwarding goes to Stripe only")),
    }
}

/// The usage forwarded (or waiting to be) to Stripe meters, newest first.
#[utoipa::path(
    get, path = "/v1/integrations/{biller}/meter-events", tag = "billers",
    params(("biller" = String, Path, description = "stripe"), MeterEventsParams),
    responses(
        (status = 200, body = wire::MeterEventsResponse),
        (status = 400, body = wire::ErrorBody),
        (status = 401, body = wire::ErrorBody),
        (status = 404, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_meter_events(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath(name): ApiPath<String>,
    ApiQuery(params): ApiQuery<MeterEventsParams>,
) -> Result<Json<wire::MeterEventsResponse>, ApiError> {
    stripe_only(&name)?;
    let status =
        match params.status.as_deref() {
            None => None,
            Some(s) => Some(MeterStatus::parse(s).ok_or_else(|| {
                ApiError::invalid("status", "must be pending, delivered or failed")
            })?),
        };
    let limit = limit(params.limit)?;
    let mut rows = state
        .store
        .meter_events(MeterEventsQuery {
            env: caller.auth.env,
            status,
            limit: limit + 1,
            before: cursor(params.cursor.as_deref())?,
        })
        .await?;
    let next = page(&mut rows, limit, |r| next_cursor(r.created_at, &r.event_id));
    Ok(Json(wire::MeterEventsResponse {
        meter_events: rows.into_iter().map(meter_view).collect(),
        next_cursor: next,
    }))
}

/// Sends a meter event again now (after a `failed`, or to hurry a pending one).
#[utoipa::path(
    post, path = "/v1/integrations/{biller}/meter-events/{eventId}/retry", tag = "billers",
    params(("biller" = String, Path, description = "stripe"), ("eventId" = String, Path)),
    responses(
        (status = 204, description = "queued"),
        (status = 401, body = wire::ErrorBody),
        (status = 404, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn retry_meter_event(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiPath((name, event_id)): ApiPath<(String, String)>,
) -> Result<axum::http::StatusCode, ApiError> {
    stripe_only(&name)?;
    if !looks_like(&event_id, crate::ids::EVENT_PREFIX) {
        return Err(ApiError::not_found("no such meter event"));
    }
    state
        .store
        .retry_meter_event(caller.auth.env, &event_id, caller.now)
        .await
        .map_err(store_error("meter event"))?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// The environment's settings, with what an SDK needs to mint user tokens offline.
#[utoipa::path(
    get, path = "/v1/settings", tag = "settings",
    responses(
        (status = 200, body = wire::SettingsResponse),
        (status = 401, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_settings(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
) -> Result<Json<wire::SettingsResponse>, ApiError> {
    let settings = settings_of(&state, caller.auth.env).await?;
    settings_response(&state, &caller, settings).await
}

/// Changes the fields given; answers the settings in force.
#[utoipa::path(
    patch, path = "/v1/settings", tag = "settings",
    request_body = wire::SettingsPatch,
    responses(
        (status = 200, body = wire::SettingsResponse),
        (status = 400, body = wire::ErrorBody),
        (status = 401, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn patch_settings(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiJson(patch): ApiJson<wire::SettingsPatch>,
) -> Result<Json<wire::SettingsResponse>, ApiError> {
    let mut settings = settings_of(&state, caller.auth.env).await?;
    settings.apply(patch)?;
    state
        .store
        .put_settings(caller.auth.env, settings.to_stored(), caller.now)
        .await?;
    state.settings.forget(caller.auth.env);
    settings_response(&state, &caller, settings).await
}

async fn settings_response(
    state: &AppState,
    caller: &Caller,
    settings: Settings,
) -> Result<Json<wire::SettingsResponse>, ApiError> {
    let token_secret = state.token_secrets.of(state.store.as_ref(), caller).await?;
    Ok(Json(wire::SettingsResponse {
        past_due: settings.past_due,
        cors_origins: settings.cors_origins,
        prompt_logging: settings.prompt_logging,
        prompt_retention_days: settings.prompt_retention_days,
        record_denials: settings.record_denials,
        token_secret: token_secret.to_string(),
        project_id: caller.auth.project_id.clone(),
        environment: caller.auth.mode.as_str().to_string(),
    }))
}
