//! Plan routes (API.md §5): replace the environment's whole plan document, read it, read one
//! plan. Publishable keys see public plans only and never biller ids.

use crate::auth::{AnyKey, Caller, SecretKey};
use crate::error::ApiError;
use crate::extract::{ApiPath, JsonText};
use crate::plan_cache::CachedPlans;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use serde_json::Value;
use std::sync::Arc;
use tollgate_api as wire;
use tollgate_store::KeyKind;

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
