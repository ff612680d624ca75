//! Plan routes (API.md §5): replace the environment's whole plan document, read it, read one
//! plan. Publishable keys see public plans only and never biller ids.

use crate::auth::{AnyKey, Caller, SecretKey};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery, JsonText};
use crate::plan_cache::CachedPlans;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;
use tollgate_api as wire;
use tollgate_store::{EnvId, KeyKind, Mode};
use utoipa::IntoParams;

/// `{"version": N, ...document}`.
fn versioned(plans: &CachedPlans, document: Value) -> Value {
    let mut document = document;
    if let Some(obj) = document.as_object_mut() {
        obj.insert("version".to_string(), Value::from(plans.version));
    }
    document
}

fn visible_document(caller: &Caller, plans: &CachedPlans) -> Value {
    match caller.auth.kind {
        KeyKind::Secret => plans.json.clone(),
        KeyKind::Publishable => wire::public_plan_document(&plans.json),
    }
}

/// Replaces the environment's plan document, checked as a whole in the form it is stored. The
/// newest version's document again stores nothing and answers `changed: false`.
#[utoipa::path(
    put, path = "/v1/plans", tag = "plans",
    request_body = wire::PlanDocument,
    responses(
        (status = 200, description = "The stored document with its defaults filled in, its version, and whether this call made that version", body = wire::AppliedPlanDocument),
        (status = 400, description = "`field` names the first bad field; none when the document as stored is over the size limit", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn put_plans(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    JsonText(text): JsonText,
) -> Result<Json<Value>, ApiError> {
    let normalized = wire::plan_document_from_json(&text)?;
    let outcome = state
        .store
        .put_plans(caller.auth.env, normalized.text, caller.now)
        .await?;
    tracing::info!(
        version = outcome.version,
        changed = outcome.changed,
        plans = normalized.document.plans.len(),
        "plan document applied"
    );
    let applied = CachedPlans {
        version: outcome.version,
        document: Arc::new(normalized.document),
        json: normalized.json,
    };
    let mut body = versioned(&applied, applied.json.clone());
    if let Some(obj) = body.as_object_mut() {
        obj.insert("changed".to_string(), Value::Bool(outcome.changed));
    }
    state.plans.install(caller.auth.env, applied);
    Ok(Json(body))
}

/// The environment's plan document (version 0 before any was applied).
#[utoipa::path(
    get, path = "/v1/plans", tag = "plans",
    responses(
        (status = 200, description = "Publishable keys see public plans only, without biller ids or costs", body = wire::VersionedPlanDocument),
        (status = 401, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_plans(
    State(state): State<AppState>,
    AnyKey(caller): AnyKey,
) -> Result<Json<Value>, ApiError> {
    let plans = state.plans.get(&*state.store, caller.auth.env).await?;
    Ok(Json(versioned(&plans, visible_document(&caller, &plans))))
}

/// One plan of the environment's document.
#[utoipa::path(
    get, path = "/v1/plans/{planId}", tag = "plans",
    params(("planId" = String, Path)),
    responses(
        (status = 200, body = wire::Plan),
        (status = 404, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_plan(
    State(state): State<AppState>,
    AnyKey(caller): AnyKey,
    ApiPath(plan_id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let plans = state.plans.get(&*state.store, caller.auth.env).await?;
    let document = visible_document(&caller, &plans);
    document
        .get("plans")
        .and_then(Value::as_array)
        .and_then(|plans| {
            plans
                .iter()
                .find(|p| p.get("id").and_then(Value::as_str) == Some(plan_id.as_str()))
        })
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no plan has id {plan_id:?}")))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DiffParams {
    /// The environment promoted from: `test` or `live`.
    #[param(pattern = "^(test|live)$")]
    from: String,
    /// The environment promoted to: `test` or `live` (the same as `from`: no changes).
    #[param(pattern = "^(test|live)$")]
    to: String,
}

fn mode(field: &str, s: &str) -> Result<Mode, ApiError> {
    Mode::parse(s).ok_or_else(|| ApiError::invalid(field, format!("test or live, got {s:?}")))
}

/// The two environments of the caller's project, with their plans now.
async fn both(
    state: &AppState,
    caller: &Caller,
    from: Mode,
    to: Mode,
) -> Result<((EnvId, Arc<CachedPlans>), (EnvId, Arc<CachedPlans>)), ApiError> {
    let mut envs = Vec::with_capacity(2);
    for m in [from, to] {
        let env = state
            .store
            .environment_of(&caller.auth.project_id, m)
            .await?
            .ok_or_else(|| {
                ApiError::Internal(format!("the project has no {} environment", m.as_str()))
            })?;
        envs.push((env, state.plans.get(&*state.store, env).await?));
    }
    let to = envs.pop().expect("two environments");
    let from = envs.pop().expect("two environments");
    Ok((from, to))
}

fn at(m: Mode, plans: &CachedPlans) -> wire::EnvironmentVersion {
    wire::EnvironmentVersion {
        environment: m.as_str().to_string(),
        version: plans.version,
    }
}

/// What promoting `from`'s plans changes in `to`: the document `to` would store, and the
/// changes from what it holds (nothing is compared before it has a document).
fn promotion(from: &CachedPlans, to: &CachedPlans) -> (Value, Vec<wire::PlanChange>) {
    let target = (to.version > 0).then_some(&to.json);
    let promoted = wire::promoted_document(&from.json, target);
    let changes = wire::plan_changes(target, &promoted);
    (promoted, changes)
}

/// What `POST /v1/plans/promote` would change: one environment's plans against the other's.
#[utoipa::path(
    get, path = "/v1/plans/diff", tag = "plans",
    params(DiffParams),
    responses(
        (status = 200, body = wire::PlanDiff),
        (status = 400, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn diff_plans(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiQuery(params): ApiQuery<DiffParams>,
) -> Result<Json<wire::PlanDiff>, ApiError> {
    let (from_mode, to_mode) = (mode("from", &params.from)?, mode("to", &params.to)?);
    let ((_, from), (_, to)) = both(&state, &caller, from_mode, to_mode).await?;
    let (_, changes) = promotion(&from, &to);
    Ok(Json(wire::PlanDiff {
        from: at(from_mode, &from),
        to: at(to_mode, &to),
        changes,
    }))
}

/// Copies one environment's plans to the other, keeping the target's biller ids; the target's
/// counters, subscriptions and usage are untouched (limits keep their ids).
#[utoipa::path(
    post, path = "/v1/plans/promote", tag = "plans",
    request_body = wire::PromoteRequest,
    responses(
        (status = 200, body = wire::PromoteResponse),
        (status = 400, description = "`field` names the bad field: an environment, or the promoted document", body = wire::ErrorBody),
        (status = 409, description = "version_conflict: `expectedFromVersion` or `expectedToVersion` is not the environment's version now (the plans changed since the diff)", body = wire::ErrorBody),
        (status = 404, description = "the environment promoted from has no plan document", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn promote_plans(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiJson(request): ApiJson<wire::PromoteRequest>,
) -> Result<Json<wire::PromoteResponse>, ApiError> {
    let mode_of = |name: wire::EnvironmentName| match name {
        wire::EnvironmentName::Test => Mode::Test,
        wire::EnvironmentName::Live => Mode::Live,
    };
    let (from_mode, to_mode) = (mode_of(request.from), mode_of(request.to));
    let ((_, from), (to_env, to)) = both(&state, &caller, from_mode, to_mode).await?;
    if from.version == 0 {
        return Err(ApiError::not_found(format!(
            "the {} environment has no plan document to promote",
            from_mode.as_str()
        )));
    }
    for (field, expected, now) in [
        (
            "expectedFromVersion",
            request.expected_from_version,
            from.version,
        ),
        ("expectedToVersion", request.expected_to_version, to.version),
    ] {
        if expected.is_some_and(|v| v != now) {
            return Err(ApiError::VersionConflict(format!(
                "{field} is {}, but the plans changed since: version {now} now; look at the \
                 diff again",
                expected.unwrap_or_default()
            )));
        }
    }
    let (promoted, changes) = promotion(&from, &to);
    let text = serde_json::to_string(&promoted)
        .map_err(|e| ApiError::Internal(format!("promoted document: {e}")))?;
    let normalized = wire::plan_document_from_json(&text)?;
    let outcome = state
        .store
        .put_plans(to_env, normalized.text, caller.now)
        .await?;
    tracing::info!(
        from = from_mode.as_str(),
        to = to_mode.as_str(),
        version = outcome.version,
        changes = changes.len(),
        "plans promoted"
    );
    let applied = CachedPlans {
        version: outcome.version,
        document: Arc::new(normalized.document),
        json: normalized.json,
    };
    let to_after = at(to_mode, &applied);
    state.plans.install(to_env, applied);
    Ok(Json(wire::PromoteResponse {
        from: at(from_mode, &from),
        to: to_after,
        changed: outcome.changed,
        changes,
    }))
}
