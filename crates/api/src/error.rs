//! The error body every non-2xx answer carries (API.md §2), and the closed set of its codes.
//!
//! Which HTTP status goes with which code is the server's business; clients (the CLI, the SDKs)
//! branch on the code.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `{"error": {"code", "message", ...extra}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// One of the codes of [`ErrorCode`].
    #[schema(example = "invalid_request")]
    pub code: String,
    /// A sentence for a person; never internals.
    pub message: String,
    /// The JSON path of the refused field (`invalid_request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The reservation's state (`reservation_not_pending`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// The public error codes of API.md §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidKey,
    RequiresSecretKey,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    ReservationNotPending,
    IdempotencyConflict,
    AlreadyCanceled,
    AlreadyIdentified,
    SeatLimitReached,
    /// The state a request expected has moved on (a promotion's plan versions).
    VersionConflict,
    InvalidSignature,
    PayloadTooLarge,
    UnsupportedMediaType,
    RateLimited,
    InternalError,
    Unavailable,
    OutcomeUnknown,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 19] = [
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidKey,
        ErrorCode::RequiresSecretKey,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::ReservationNotPending,
        ErrorCode::IdempotencyConflict,
        ErrorCode::AlreadyCanceled,
        ErrorCode::AlreadyIdentified,
        ErrorCode::SeatLimitReached,
        ErrorCode::VersionConflict,
        ErrorCode::InvalidSignature,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::RateLimited,
        ErrorCode::InternalError,
        ErrorCode::Unavailable,
        ErrorCode::OutcomeUnknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidKey => "invalid_key",
            ErrorCode::RequiresSecretKey => "requires_secret_key",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::ReservationNotPending => "reservation_not_pending",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::AlreadyCanceled => "already_canceled",
            ErrorCode::AlreadyIdentified => "already_identified",
            ErrorCode::SeatLimitReached => "seat_limit_reached",
            ErrorCode::VersionConflict => "version_conflict",
            ErrorCode::InvalidSignature => "invalid_signature",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::OutcomeUnknown => "outcome_unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}
