//! The browser surface (API.md §12): user tokens, the routes a page reads with a publishable
//! key and a user token, and the usage-bar and pricing web components (`/widget.js`).

use crate::auth::{SecretKey, UserToken};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::routes::{credits, metering};
use crate::user_token::{
    self, Claims, USER_TOKEN_TTL_DEFAULT, USER_TOKEN_TTL_MAX, USER_TOKEN_TTL_MIN,
};
use crate::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use jiff::{SignedDuration, Timestamp};
use tollgate_api as wire;

/// The usage bar and the pricing table: one dependency-free script.
pub const WIDGET_JS: &str = include_str!("../../assets/widget.js");

/// Mints a user token: what a page sends, with a publishable key, to read this user's usage.
#[utoipa::path(
    post, path = "/v1/user-tokens", tag = "browser",
    request_body = wire::UserTokenRequest,
    responses(
        (status = 200, body = wire::UserTokenResponse),
        (status = 400, body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_user_token(
    State(state): State<AppState>,
    SecretKey(caller): SecretKey,
    ApiJson(request): ApiJson<wire::UserTokenRequest>,
) -> Result<Json<wire::UserTokenResponse>, ApiError> {
    let user_id = wire::parse_path_user_id(request.user_id)?;
    let ttl = request.ttl_seconds.unwrap_or(USER_TOKEN_TTL_DEFAULT);
    if !(USER_TOKEN_TTL_MIN..=USER_TOKEN_TTL_MAX).contains(&ttl) {
        return Err(ApiError::invalid(
            "ttlSeconds",
            format!("must be between {USER_TOKEN_TTL_MIN} and {USER_TOKEN_TTL_MAX}, got {ttl}"),
        ));
    }
    let secret = state
        .token_secrets
        .of(state.store.as_ref(), &caller)
        .await?;
    // Real time, as the check reads it: the test clock moves metering, not credentials.
    let expires = Timestamp::now()
        .checked_add(SignedDuration::from_secs(i64::from(ttl)))
        .map_err(|e| ApiError::Internal(format!("token expiry: {e}")))?;
    let expires = Timestamp::from_second(expires.as_second())
        .map_err(|e| ApiError::Internal(format!("token expiry: {e}")))?;
    let token = user_token::mint(
        &secret,
        &Claims {
            v: 1,
            prj: caller.auth.project_id.clone(),
            env: caller.auth.mode.as_str().to_string(),
            sub: user_id.into_string(),
            exp: expires.as_second(),
        },
    );
    Ok(Json(wire::UserTokenResponse {
        token,
        expires_at: wire::format_timestamp(expires),
    }))
}

/// The usage of the user-token's user: the answer of `GET /v1/users/{userId}/usage`.
#[utoipa::path(
    get, path = "/v1/me/usage", tag = "browser",
    params(
        ("X-Tollgate-User-Token" = String, Header,
            description = "A user token from POST /v1/user-tokens or minted with the token secret"),
        metering::UsageParams,
    ),
    responses(
        (status = 200, body = wire::UsageResponse),
        (status = 400, body = wire::ErrorBody),
        (status = 401, description = "invalid_key: the key, or the user token, is missing, malformed, altered or expired", body = wire::ErrorBody),
        (status = 403, description = "forbidden: the user token is of another project or environment, or the Origin is not in corsOrigins", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn me_usage(
    State(state): State<AppState>,
    user: UserToken,
    ApiQuery(params): ApiQuery<metering::UsageParams>,
) -> Result<Json<wire::UsageResponse>, ApiError> {
    metering::usage_of(&state, &user.caller, user.user_id, params).await
}

/// The credits of the user-token's user: the answer of `GET /v1/users/{userId}/credits`.
#[utoipa::path(
    get, path = "/v1/me/credits", tag = "browser",
    params(
        ("X-Tollgate-User-Token" = String, Header,
            description = "A user token from POST /v1/user-tokens or minted with the token secret"),
    ),
    responses(
        (status = 200, body = wire::CreditsResponse),
        (status = 401, description = "invalid_key: the key, or the user token, is missing, malformed, altered or expired", body = wire::ErrorBody),
        (status = 403, description = "forbidden: the user token is of another project or environment, or the Origin is not in corsOrigins", body = wire::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn me_credits(
    State(state): State<AppState>,
    user: UserToken,
) -> Result<Json<wire::CreditsResponse>, ApiError> {
    credits::user_balances(&state, &user.caller, user.user_id).await
}

/// The web components: `<tollgate-usage>` and `<tollgate-pricing>` (docs/browser.md).
#[utoipa::path(
    get, path = "/widget.js", tag = "browser",
    responses((status = 200, description = "JavaScript", content_type = "application/javascript")),
)]
pub async fn widget_js() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=300"),
            // As a module script from another origin too.
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        WIDGET_JS,
    )
}
