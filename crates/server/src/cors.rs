//! Cross-origin calls from browsers (API.md §12): each environment lists the origins its
//! publishable key may be used from (`corsOrigins` in `PATCH /v1/settings`).
//!
//! A preflight (`OPTIONS` with `Access-Control-Request-Method`) carries no key, so it cannot
//! name an environment: it is answered `204` for any origin, which only lets the browser send
//! the real request. The real request carries the key. With a publishable key (the one key
//! that belongs in a browser) and an `Origin`:
//! - from an origin the environment lists, the answer, errors included, carries
//!   `Access-Control-Allow-Origin: <origin>` so the page can read it;
//! - from any other, it is `403 forbidden` and nothing runs, so a page on another site learns
//!   nothing and changes nothing, even where a browser does not enforce CORS.
//!
//! A missing or unknown key gets its `401` with CORS headers, so a page can tell a wrong key
//! from an unreachable server. Secret keys never get CORS headers: a browser cannot read their answers, which is right,
//! since a secret key in a page is a leak. Requests without `Origin` (servers, SDKs, curl)
//! pass untouched.
//!
//! The origins come from the environment's settings through the node's
//! [`SettingsCache`](crate::settings_cache::SettingsCache).

use crate::auth::bearer_of;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tollgate_store::KeyKind;

/// How long a browser may keep a preflight's answer, in seconds.
pub const PREFLIGHT_MAX_AGE_SECONDS: u32 = 600;
/// The headers a browser may send on a cross-origin call.
const ALLOWED_HEADERS: &str = "authorization, content-type, x-tollgate-user-token, idempotency-key";
const ALLOWED_METHODS: &str = "GET, POST, OPTIONS";

fn allow(response: &mut Response, origin: &HeaderValue) {
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// The CORS layer: see the module's documentation.
pub async fn cors(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(origin) = request.headers().get(header::ORIGIN).cloned() else {
        return next.run(request).await;
    };
    if request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let mut response = StatusCode::NO_CONTENT.into_response();
        allow(&mut response, &origin);
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOWED_METHODS),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(PREFLIGHT_MAX_AGE_SECONDS),
        );
        return response;
    }
    let auth = match bearer_of(request.headers()) {
        Some(token) => state.keys.authenticate(state.store.as_ref(), token).await,
        None => Ok(None),
    };
    let env = match auth {
        Ok(Some(auth)) if auth.kind == KeyKind::Publishable => auth.env,
        // A secret key: the route answers as it would, and the page cannot read it.
        Ok(Some(_)) => return next.run(request).await,
        // No key or an unknown one: the route answers `401`, which the page may read (it
        // says nothing a page could not learn by trying), so a widget can tell a wrong key
        // from an unreachable server.
        Ok(None) => {
            let mut response = next.run(request).await;
            allow(&mut response, &origin);
            return response;
        }
        Err(e) => return e.into_response(),
    };
    let settings = match state.settings.get(state.store.as_ref(), env).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let allowed = origin.to_str().is_ok_and(|o| settings.allows_origin(o));
    if !allowed {
        return ApiError::Forbidden(format!(
            "the origin {} may not use this publishable key; add it to corsOrigins with \
             PATCH /v1/settings",
            String::from_utf8_lossy(origin.as_bytes())
        ))
        .into_response();
    }
    let mut response = next.run(request).await;
    allow(&mut response, &origin);
    response
}
