//! The outermost layer of every request: a request id, one tracing span (filled in with project
//! and environment once the key is known), a deadline, and the request metrics.

use crate::error::ApiError;
use crate::ids::{new_id, REQUEST_PREFIX};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Instant;
use tollgate_api::ErrorCode;
use tracing::Instrument;

/// The response header that carries the request id, for support requests and log searches.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The log target of the access lines, to filter them (`RUST_LOG=info,tollgate::access=off`).
pub const ACCESS_LOG_TARGET: &str = "tollgate::access";
/// The route label of a request that matched no route.
const UNMATCHED_ROUTE: &str = "unmatched";

pub async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = new_id(REQUEST_PREFIX);
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %method,
        route = %route,
        project = tracing::field::Empty,
        environment = tracing::field::Empty,
    );
    let deadline = state.config.request_timeout;
    // A read past its deadline applied nothing; a write may still complete after the answer.
    let read_only = req.method().is_safe();
    let mut response = async move {
        match tokio::time::timeout(deadline, next.run(req)).await {
            Ok(response) => response,
            Err(_) if read_only => {
                ApiError::Unavailable("request deadline passed".into()).into_response()
            }
            Err(_) => ApiError::DeadlinePassed.into_response(),
        }
    }
    .instrument(span.clone())
    .await;
    let status = response.status().as_u16();
    if let Some(code) = response.extensions().get::<ErrorCode>() {
        state.metrics.observe_error(*code);
    }
    let elapsed = started.elapsed();
    state
        .metrics
        .observe_request(method.as_str(), route, status, elapsed);
    // The access line: one per request, never a key, a token or a body (docs/operations.md).
    span.in_scope(|| {
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            status,
            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
            "request answered"
        )
    });
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(request_id)) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}
