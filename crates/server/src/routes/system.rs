//! System routes (API.md §7): liveness, readiness, metrics and the OpenAPI document. None takes
//! a key: they describe the process, not a project.

use crate::error::ApiError;
use crate::openapi::openapi_json;
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tollgate_api as wire;

/// The content type of the OpenMetrics text format that `prometheus-client` writes.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "system",
    responses((status = 200, body = wire::HealthResponse)))]
pub async fn healthz() -> Json<wire::HealthResponse> {
    Json(wire::HealthResponse {
        status: "ok".to_string(),
        problems: Vec::new(),
    })
}

/// Storage is reachable and takes writes (a `503` names why not). A plan document that does not load on this node is
/// named in `problems` but leaves the node ready: it serves an older version, and every node
/// of an environment going unready over one stored row would take the environment down.
#[utoipa::path(get, path = "/readyz", tag = "system",
    responses((status = 200, body = wire::HealthResponse), (status = 503, body = wire::ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<wire::HealthResponse>, ApiError> {
    state.store.ready().await.map_err(ApiError::NotReady)?;
    let problems: Vec<wire::ReadyProblem> = state
        .plans
        .problems()
        .into_iter()
        .map(|p| wire::ReadyProblem {
            code: wire::PLAN_DOCUMENT_NOT_LOADED.to_string(),
            message: match p.served_version {
                0 => format!(
                    "plan document version {} does not load on this node ({}) and no older \
                     version does; requests that need plans answer 503 until a document is \
                     applied",
                    p.stored_version, p.reason
                ),
                served => format!(
                    "plan document version {} does not load on this node ({}); version \
                     {served} is in force instead until a newer version loads",
                    p.stored_version, p.reason
                ),
            },
            project_id: p.project_id,
            environment: p.mode.as_str().to_string(),
            stored_version: p.stored_version,
            served_version: p.served_version,
        })
        .collect();
    let status = if problems.is_empty() {
        "ready"
    } else {
        "degraded"
    };
    Ok(Json(wire::HealthResponse {
        status: status.to_string(),
        problems,
    }))
}

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let text = state
        .metrics
        .encode(state.store.queue_depth(), state.store.engine_stats());
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
    );
    response
}

/// This API, as OpenAPI 3.1.
#[utoipa::path(get, path = "/openapi.json", tag = "system",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub async fn openapi() -> Response {
    crate::render::json_response(StatusCode::OK, openapi_json().to_string())
}
