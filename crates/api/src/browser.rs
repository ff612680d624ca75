//! The browser surface (API.md §12): user tokens.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/user-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserTokenRequest {
    /// The user the token reads for; the browser holding it reads nobody else.
    #[schema(example = "u_42")]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub user_id: String,
    /// Seconds until the token expires, 1 to 86400 (default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 86400)]
    pub ttl_seconds: Option<u32>,
}

/// A user token and when it stops working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserTokenResponse {
    /// Send it as the `X-Tollgate-User-Token` header, with a publishable key.
    #[schema(example = "tg_ut_eyJ2IjoxLCJwcmoiOiJwcmpfMSJ9.c2lnbmF0dXJl")]
    pub token: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
}
