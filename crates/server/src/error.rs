//! The one error type of every handler, and the one table from error code to HTTP status.
//!
//! `ApiError` writes the body of API.md §2 (`{"error": {"code", "message", ...extra}}`). A 5xx
//! never carries internals: the detail goes to the log, the client gets a fixed sentence.
//! Client mistakes are logged at `debug`, server faults at `warn` or `error`.

use crate::render::json_response;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tollgate_api::{ErrorBody, ErrorCode, ErrorDetail, FieldError};
use tollgate_store::{ReservationStatus, StoreError};

/// Seconds a client should wait before retrying a `503` or `429`.
pub const RETRY_AFTER_SECONDS: u32 = 1;
/// How to settle a write whose outcome is unknown (API.md §2, `outcome_unknown`).
const RETRY_SAME: &str = "retry it with the same idempotencyKey (or the same reservation id) \
                          and it counts exactly once";

/// The HTTP status of each public error code: the only place they are paired.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorCode::InvalidKey => StatusCode::UNAUTHORIZED,
        ErrorCode::RequiresSecretKey => StatusCode::FORBIDDEN,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::ReservationNotPending => StatusCode::CONFLICT,
        ErrorCode::IdempotencyConflict => StatusCode::CONFLICT,
        ErrorCode::AlreadyCanceled => StatusCode::CONFLICT,
        ErrorCode::AlreadyIdentified => StatusCode::CONFLICT,
        ErrorCode::SeatLimitReached => StatusCode::CONFLICT,
        ErrorCode::VersionConflict => StatusCode::CONFLICT,
        ErrorCode::InvalidSignature => StatusCode::BAD_REQUEST,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::OutcomeUnknown => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// `field` is the JSON path at fault, when there is one.
    #[error("invalid request: {message}")]
    InvalidRequest {
        field: Option<String>,
        message: String,
    },
    #[error("invalid key")]
    InvalidKey,
    /// The `X-Tollgate-User-Token` is missing, malformed, altered or expired (`invalid_key`);
    /// the reason is shown (it never holds the token).
    #[error("invalid user token: {0}")]
    InvalidUserToken(&'static str),
    /// A bearer token that authenticated as nothing and starts like a Stripe secret: a Stripe
    /// key pasted for a Tollgate one. Only the Stripe prefix is kept, never the token.
    #[error("invalid key shaped like a Stripe secret ({stripe_prefix}…)")]
    StripeKey {
        stripe_prefix: &'static str,
        wanted: Wanted,
    },
    #[error("requires a secret key")]
    RequiresSecretKey,
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("reservation is {}", .0.as_str())]
    ReservationNotPending(ReservationStatus),
    #[error("idempotency key reused with a different request")]
    IdempotencyConflict,
    /// A credit grant's `externalRef` already granted another pack or another owner
    /// (`idempotency_conflict`).
    #[error("externalRef reused for another pack or owner")]
    ExternalRefConflict,
    #[error("subscription has already ended")]
    AlreadyCanceled,
    /// The user the anonymous id already stands for.
    #[error("the anonymous id already stands for user {0}")]
    AlreadyIdentified(String),
    /// A version the caller expected has moved on; the message says which, and what it is now.
    #[error("version conflict: {0}")]
    VersionConflict(String),
    /// The seat cap of the account's plan.
    #[error("every seat of the account is taken")]
    SeatLimitReached(u32),
    /// A biller webhook whose signature, secret or timestamp does not verify; the reason is
    /// shown (it never holds the body or a secret).
    #[error("invalid signature: {0}")]
    InvalidSignature(String),
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// Nothing was applied. The detail is for the log only.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Storage is not ready (`/readyz`); the reason is a sentence for an operator, without
    /// internals, and is shown.
    #[error("not ready: {0}")]
    NotReady(String),
    /// Storage failed after the write began: it may or may not have been applied. The detail
    /// is for the log only.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The request ran past its deadline; unlike `Unavailable`, it may have been applied.
    #[error("request deadline passed")]
    DeadlinePassed,
    /// The detail is for the log only.
    #[error("internal: {0}")]
    Internal(String),
}

/// What a route takes as its bearer, for the hint of [`ApiError::StripeKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    ApiKey,
    AdminToken,
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        ApiError::InvalidRequest {
            field: (!field.is_empty()).then_some(field),
            message: message.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::NotFound(what.into())
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::InvalidRequest { .. } => ErrorCode::InvalidRequest,
            ApiError::InvalidKey | ApiError::StripeKey { .. } | ApiError::InvalidUserToken(_) => {
                ErrorCode::InvalidKey
            }
            ApiError::RequiresSecretKey => ErrorCode::RequiresSecretKey,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            ApiError::ReservationNotPending(_) => ErrorCode::ReservationNotPending,
            ApiError::IdempotencyConflict | ApiError::ExternalRefConflict => {
                ErrorCode::IdempotencyConflict
            }
            ApiError::AlreadyCanceled => ErrorCode::AlreadyCanceled,
            ApiError::AlreadyIdentified(_) => ErrorCode::AlreadyIdentified,
            ApiError::SeatLimitReached(_) => ErrorCode::SeatLimitReached,
            ApiError::VersionConflict(_) => ErrorCode::VersionConflict,
            ApiError::InvalidSignature(_) => ErrorCode::InvalidSignature,
            ApiError::PayloadTooLarge => ErrorCode::PayloadTooLarge,
            ApiError::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            ApiError::Unavailable(_) | ApiError::NotReady(_) => ErrorCode::Unavailable,
            ApiError::OutcomeUnknown(_) | ApiError::DeadlinePassed => ErrorCode::OutcomeUnknown,
            ApiError::Internal(_) => ErrorCode::InternalError,
        }
    }

    fn body(&self) -> ErrorBody {
        let mut detail = ErrorDetail {
            code: self.code().as_str().to_string(),
            message: self.public_message(),
            field: None,
            status: None,
        };
        match self {
            ApiError::InvalidRequest { field, .. } => detail.field = field.clone(),
            ApiError::ReservationNotPending(status) => {
                detail.status = Some(status.as_str().to_string())
            }
            _ => {}
        }
        ErrorBody { error: detail }
    }

    fn public_message(&self) -> String {
        match self {
            ApiError::InvalidRequest { message, .. } => message.clone(),
            ApiError::InvalidKey => {
                "the API key is missing, malformed, unknown or revoked; send it as \
                 `Authorization: Bearer <key>`"
                    .to_string()
            }
            ApiError::StripeKey {
                stripe_prefix,
                wanted,
            } => {
                let what = match *stripe_prefix {
                    "whsec_" => "a Stripe webhook signing secret",
                    _ => "a Stripe key",
                };
                match wanted {
                    Wanted::ApiKey => format!(
                        "the key is unknown or revoked, and it looks like {what} \
                         ({stripe_prefix}…); Tollgate keys start with tg_sk_ or tg_pk_"
                    ),
                    Wanted::AdminToken => format!(
                        "this is not the admin token, and it looks like {what} \
                         ({stripe_prefix}…); the admin token starts with tg_admin_"
                    ),
                }
            }
            ApiError::InvalidUserToken(why) => format!(
                "the user token is refused: {why}; send a token from POST /v1/user-tokens (or \
                 minted with the environment's token secret) as `X-Tollgate-User-Token`"
            ),
            ApiError::RequiresSecretKey => "this route needs a secret key".to_string(),
            ApiError::VersionConflict(why) => why.clone(),
            ApiError::Forbidden(why) => why.clone(),
            ApiError::NotFound(what) => what.clone(),
            ApiError::MethodNotAllowed => "this route does not take that method".to_string(),
            ApiError::ReservationNotPending(ReservationStatus::Expired) => {
                "the reservation is expired and no longer pending; to record work that outran \
                 its TTL, commit with \"ifExpired\": \"record\""
                    .to_string()
            }
            ApiError::ReservationNotPending(status) => {
                format!(
                    "the reservation is {} and no longer pending",
                    status.as_str()
                )
            }
            ApiError::IdempotencyConflict => {
                "this idempotencyKey was already used with a different request".to_string()
            }
            ApiError::ExternalRefConflict => {
                "this externalRef already granted another pack or to another owner; a \
                 reference grants once"
                    .to_string()
            }
            ApiError::AlreadyCanceled => "the subscription has already ended".to_string(),
            ApiError::AlreadyIdentified(user) => format!(
                "this anonymous id was already identified as user {user:?}; an anonymous id \
                 stands for one user"
            ),
            ApiError::SeatLimitReached(max) => format!(
                "the account has {max} seat(s) and every one is taken; remove a member, raise the \
                 subscription's seats, or move the account to a plan with more seats"
            ),
            ApiError::InvalidSignature(why) => format!(
                "the webhook signature does not verify ({why}); check the signing secret set \
                 with PUT /v1/integrations and that the body reaches Tollgate unchanged"
            ),
            ApiError::PayloadTooLarge => format!(
                "the request body is over {} bytes",
                crate::REQUEST_BODY_BYTES_MAX
            ),
            ApiError::UnsupportedMediaType => {
                "the request body must be JSON with `Content-Type: application/json`".to_string()
            }
            ApiError::Unavailable(_) => {
                "storage is unavailable or overloaded; nothing was applied, retry later".to_string()
            }
            ApiError::NotReady(reason) => reason.clone(),
            ApiError::OutcomeUnknown(_) => format!(
                "storage failed after the write began, so it may or may not have been applied; \
                 {RETRY_SAME}"
            ),
            ApiError::DeadlinePassed => format!(
                "the request took too long and may or may not have been applied; {RETRY_SAME}"
            ),
            ApiError::Internal(_) => "internal error".to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(detail) => tracing::error!(detail, "internal error"),
            ApiError::Unavailable(detail) => tracing::warn!(detail, "unavailable"),
            ApiError::NotReady(reason) => tracing::warn!(reason, "not ready"),
            ApiError::OutcomeUnknown(detail) => tracing::warn!(detail, "outcome unknown"),
            ApiError::DeadlinePassed => tracing::warn!("request deadline passed"),
            other => tracing::debug!(code = other.code().as_str(), error = %other, "client error"),
        }
        let status = status_of(self.code());
        // Plain data of strings: encoding cannot fail.
        let body = serde_json::to_string(&self.body()).unwrap_or_default();
        let mut response = json_response(status, body);
        // The metrics layer counts error answers by code (`tollgate_errors`).
        response.extensions_mut().insert(self.code());
        if matches!(status.as_u16(), 429 | 503) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        response
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::invalid(e.field, e.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found("not found"),
            StoreError::NotPending { status } => ApiError::ReservationNotPending(status),
            StoreError::IdempotencyConflict => ApiError::IdempotencyConflict,
            StoreError::AlreadyCanceled => ApiError::AlreadyCanceled,
            StoreError::AlreadyIdentified { user_id } => ApiError::AlreadyIdentified(user_id),
            StoreError::SeatLimitReached { max } => ApiError::SeatLimitReached(max),
            StoreError::Invalid { field, message } => ApiError::invalid(field, message),
            StoreError::Unavailable(detail) => ApiError::Unavailable(detail),
            StoreError::OutcomeUnknown(detail) => ApiError::OutcomeUnknown(detail),
            // Every id the server creates is fresh, so a clash is a bug.
            StoreError::AlreadyExists => ApiError::Internal("unexpected AlreadyExists".into()),
            StoreError::Internal(detail) => ApiError::Internal(detail),
        }
    }
}

/// Maps a store error, naming what was not found.
pub fn store_error(what: &str) -> impl Fn(StoreError) -> ApiError + '_ {
    move |e| match e {
        StoreError::NotFound => ApiError::not_found(format!("{what} not found")),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_status_and_a_4xx_or_5xx() {
        for code in ErrorCode::ALL {
            let status = status_of(code);
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{code:?}"
            );
        }
        assert_eq!(status_of(ErrorCode::PayloadTooLarge).as_u16(), 413);
        assert_eq!(status_of(ErrorCode::UnsupportedMediaType).as_u16(), 415);
    }

    #[test]
    fn internal_errors_leak_nothing() {
        let body = ApiError::Internal("sqlite: disk I/O error at /secret/path".into()).body();
        assert_eq!(body.error.code, "internal_error");
        assert!(!body.error.message.contains("sqlite"));
        let body = ApiError::Unavailable("writer queue full".into()).body();
        assert!(!body.error.message.contains("writer"));
    }

    #[test]
    fn a_stripe_shaped_key_is_invalid_key_with_a_hint() {
        let body = ApiError::StripeKey {
            stripe_prefix: "sk_test_",
            wanted: Wanted::ApiKey,
        }
        .body();
        assert_eq!(body.error.code, "invalid_key");
        assert_eq!(
            body.error.message,
            "the key is unknown or revoked, and it looks like a Stripe key (sk_test_…); \
             Tollgate keys start with tg_sk_ or tg_pk_"
        );
        let body = ApiError::StripeKey {
            stripe_prefix: "whsec_",
            wanted: Wanted::AdminToken,
        }
        .body();
        assert_eq!(body.error.code, "invalid_key");
        assert_eq!(
            body.error.message,
            "this is not the admin token, and it looks like a Stripe webhook signing secret \
             (whsec_…); the admin token starts with tg_admin_"
        );
    }

    #[tokio::test]
    async fn a_write_of_unknown_outcome_answers_503_outcome_unknown_with_retry_after() {
        for e in [
            ApiError::from(StoreError::OutcomeUnknown("sqlite: fdatasync: EIO".into())),
            ApiError::DeadlinePassed,
        ] {
            assert_eq!(e.code(), ErrorCode::OutcomeUnknown);
            let body = e.body();
            assert_eq!(body.error.code, "outcome_unknown");
            assert!(!body.error.message.contains("sqlite"), "{body:?}");
            assert!(
                body.error
                    .message
                    .contains("may or may not have been applied")
                    && body.error.message.contains("same idempotencyKey")
                    && body.error.message.contains("reservation id"),
                "{body:?}"
            );
            let response = e.into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        }
        // `unavailable` keeps its promise that nothing was applied.
        let body = ApiError::from(StoreError::Unavailable("queue full".into())).body();
        assert_eq!(body.error.code, "unavailable");
        assert!(
            body.error.message.contains("nothing was applied"),
            "{body:?}"
        );
    }

    #[test]
    fn not_ready_names_its_cause() {
        let reason = "a WAL sync failed; restart the server to recover from what is on disk";
        let body = ApiError::NotReady(reason.into()).body();
        assert_eq!(body.error.code, "unavailable");
        assert_eq!(body.error.message, reason);
    }

    #[tokio::test]
    async fn unavailable_sets_retry_after() {
        let response = ApiError::Unavailable("x".into()).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
