//! Who is calling: API keys (secret or publishable, one environment each) and the admin token.
//!
//! A key is never stored: its SHA-256 hash is looked up. The key alone decides project and
//! environment; nothing in a body or path can reach another. Each extractor also computes the
//! request's `now`: real time plus the environment's test-clock offset, cut to the millisecond.
//!
//! A valid key's context is cached in memory for [`AUTH_CACHE_MS`], so the hot path reads no
//! table to authenticate. The cache is keyed by the presented token itself, so a cached key
//! costs one hash-map lookup: the SHA-256 that the store looks keys up by is computed only on a
//! miss. The cache holds only tokens that authenticated, in this process's memory, where every
//! request's token passes anyway. Revoking a key or moving the test clock through this node clears the
//! cache at once; a revocation through another node (several nodes on one PostgreSQL database)
//! is in force here within that time. A test-environment key is not cached when other nodes
//! share the database: its context carries the test clock's offset, and every node must decide
//! with the same `now` from the moment an advance is answered, wherever it was made. Unknown
//! keys are never cached, so a key created anywhere works at once.
//!
//! A token that authenticates as nothing is `401 invalid_key`. When it starts like a Stripe
//! secret (`sk_test_…`, `whsec_…`), the message says so: Tollgate's keys sit beside Stripe's in
//! an app's environment and get pasted for them. A valid Tollgate key minted before the `tg_`
//! prefix has the same shape; it authenticated, so it never reaches the hint.

use crate::bootstrap::hash_secret;
use crate::error::{ApiError, Wanted};
use crate::key_format::stripe_prefix;
use crate::user_token::{self, USER_TOKEN_HEADER};
use crate::AppState;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use jiff::{SignedDuration, Timestamp};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tollgate_api::time::truncate_to_millis;
use tollgate_core::input::UserId;
use tollgate_store::{AuthContext, KeyKind, Mode, Store};

/// How long a valid key's context is used before the store is asked again, in milliseconds.
pub const AUTH_CACHE_MS: u64 = 1_000;
/// Most keys cached at once; past it the cache starts over.
pub const AUTH_CACHE_KEYS_MAX: usize = 10_000;

/// A valid key's context and when it was read from the store.
type Cached = (Arc<AuthContext>, Instant);

/// Valid keys by their token, with the time each was read from the store.
#[derive(Debug, Default)]
pub struct AuthCache {
    entries: RwLock<HashMap<Box<str>, Cached>>,
}

impl AuthCache {
    /// The context of the key `token`, or `None` for no valid key.
    pub async fn authenticate(
        &self,
        store: &dyn Store,
        token: &str,
    ) -> Result<Option<Arc<AuthContext>>, ApiError> {
        let fresh = Duration::from_millis(AUTH_CACHE_MS);
        if let Some((auth, read)) = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
        {
            if read.elapsed() < fresh {
                return Ok(Some(auth.clone()));
            }
        }
        let shared = store.shared_by_nodes();
        let read = Instant::now();
        let found = store.authenticate(hash_secret(token)).await?.map(Arc::new);
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        match &found {
            Some(auth) if shared && auth.mode == Mode::Test => {
                entries.remove(token);
            }
            Some(auth) => {
                if entries.len() >= AUTH_CACHE_KEYS_MAX {
                    entries.clear();
                }
                entries.insert(token.into(), (auth.clone(), read));
            }
            None => {
                entries.remove(token);
            }
        }
        Ok(found)
    }

    /// Forgets every key, after a revocation or a test-clock change.
    pub fn clear(&self) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Longest bearer token the server will hash, in bytes; anything longer is no key of ours.
pub const BEARER_BYTES_MAX: usize = 256;

/// An authenticated API key and the request's clock.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Shared with the key cache: an authenticated request copies no part of it.
    pub auth: Arc<AuthContext>,
    /// Real now plus the environment's test-clock offset.
    pub now: Timestamp,
}

/// Any valid key, secret or publishable.
pub struct AnyKey(pub Caller);

/// A valid secret key; a publishable one answers `403 requires_secret_key`.
pub struct SecretKey(pub Caller);

/// A valid secret key of a test environment; a live one answers `403 forbidden`.
pub struct TestSecretKey(pub Caller);

/// Any valid key with a valid `X-Tollgate-User-Token` for its environment: the browser's
/// caller (API.md §12), which reads only the token's user.
pub struct UserToken {
    pub caller: Caller,
    pub user_id: UserId,
}

/// A secret key, or a publishable key with a valid user token (`POST /v1/capture`).
pub enum SecretOrUserToken {
    Secret(Caller),
    User(UserToken),
}

/// The install's admin token.
pub struct Admin;

/// The `401` for `token`, which authenticated as nothing: with a hint if it looks like a Stripe
/// secret (naming only its prefix, never the token).
fn rejected(token: &str, wanted: Wanted) -> ApiError {
    match stripe_prefix(token) {
        Some(stripe_prefix) => ApiError::StripeKey {
            stripe_prefix,
            wanted,
        },
        None => ApiError::InvalidKey,
    }
}

/// The token of `Authorization: Bearer <token>`, if well-formed.
fn bearer(parts: &Parts) -> Option<&str> {
    bearer_of(&parts.headers)
}

/// The token of `Authorization: Bearer <token>` in `headers`, if well-formed.
pub fn bearer_of(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    let well_formed = scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && token.len() <= BEARER_BYTES_MAX
        && token.bytes().all(|b| b.is_ascii_graphic());
    well_formed.then_some(token)
}

/// Real now shifted by a test-clock offset (0 in live), at millisecond precision.
pub fn environment_now(offset_seconds: i64) -> Timestamp {
    let real = Timestamp::now();
    let shifted = real
        .checked_add(SignedDuration::from_secs(offset_seconds))
        .unwrap_or(real);
    truncate_to_millis(shifted)
}

impl FromRequestParts<AppState> for AnyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or(ApiError::InvalidKey)?;
        let auth = state
            .keys
            .authenticate(state.store.as_ref(), token)
            .await?
            .ok_or_else(|| rejected(token, Wanted::ApiKey))?;
        let span = tracing::Span::current();
        span.record("project", auth.project_id.as_str());
        span.record("environment", auth.mode.as_str());
        let now = environment_now(auth.clock_offset_seconds);
        Ok(AnyKey(Caller { auth, now }))
    }
}

impl FromRequestParts<AppState> for SecretKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let AnyKey(caller) = AnyKey::from_request_parts(parts, state).await?;
        if caller.auth.kind != KeyKind::Secret {
            return Err(ApiError::RequiresSecretKey);
        }
        Ok(SecretKey(caller))
    }
}

impl FromRequestParts<AppState> for UserToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let AnyKey(caller) = AnyKey::from_request_parts(parts, state).await?;
        let token = match parts.headers.get(USER_TOKEN_HEADER) {
            None => {
                return Err(ApiError::InvalidUserToken(
                    "the X-Tollgate-User-Token header is missing",
                ))
            }
            Some(v) => v
                .to_str()
                .map_err(|_| ApiError::InvalidUserToken("it is not ASCII"))?
                .trim(),
        };
        let secret = state
            .token_secrets
            .of(state.store.as_ref(), &caller)
            .await?;
        let user_id = user_token::verify(
            token,
            &caller.auth.project_id,
            caller.auth.mode,
            &secret,
            Timestamp::now(),
        )?;
        Ok(UserToken { caller, user_id })
    }
}

impl FromRequestParts<AppState> for SecretOrUserToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let AnyKey(caller) = AnyKey::from_request_parts(parts, state).await?;
        if caller.auth.kind == KeyKind::Secret {
            return Ok(SecretOrUserToken::Secret(caller));
        }
        UserToken::from_request_parts(parts, state)
            .await
            .map(SecretOrUserToken::User)
    }
}

impl FromRequestParts<AppState> for TestSecretKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let SecretKey(caller) = SecretKey::from_request_parts(parts, state).await?;
        if caller.auth.mode != Mode::Test {
            return Err(ApiError::Forbidden(
                "the test clock exists only in the test environment; use a test key".into(),
            ));
        }
        Ok(TestSecretKey(caller))
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or(ApiError::InvalidKey)?;
        if state.store.verify_admin(hash_secret(token)).await? {
            return Ok(Admin);
        }
        // An API key minted before the `tg_` prefix is shaped like a Stripe key; it is the
        // wrong credential here, not a Stripe key, so it gets the plain answer.
        if stripe_prefix(token).is_some()
            && state
                .keys
                .authenticate(state.store.as_ref(), token)
                .await?
                .is_some()
        {
            return Err(ApiError::InvalidKey);
        }
        Err(rejected(token, Wanted::AdminToken))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(authorization: Option<&str>) -> Parts {
        let mut builder = Request::builder();
        if let Some(value) = authorization {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(
            bearer(&parts(Some("Bearer tg_sk_test_x"))),
            Some("tg_sk_test_x")
        );
        assert_eq!(bearer(&parts(Some("bearer sk_test_x"))), Some("sk_test_x"));
        assert_eq!(bearer(&parts(Some("Basic abc"))), None);
        assert_eq!(bearer(&parts(Some("Bearer "))), None);
        assert_eq!(bearer(&parts(None)), None);
        let long = format!("Bearer {}", "k".repeat(BEARER_BYTES_MAX + 1));
        assert_eq!(bearer(&parts(Some(&long))), None);
    }

    #[test]
    fn only_stripe_shaped_tokens_get_the_hint() {
        for (token, stripe_prefix) in [
            ("sk_live_51HxYz", "sk_live_"),
            ("sk_test_51HxYz", "sk_test_"),
            ("pk_live_51HxYz", "pk_live_"),
            ("pk_test_51HxYz", "pk_test_"),
            ("rk_live_51HxYz", "rk_live_"),
            ("rk_test_51HxYz", "rk_test_"),
            ("whsec_51HxYz", "whsec_"),
        ] {
            for wanted in [Wanted::ApiKey, Wanted::AdminToken] {
                assert_eq!(
                    rejected(token, wanted),
                    ApiError::StripeKey {
                        stripe_prefix,
                        wanted
                    },
                    "{token}"
                );
            }
        }
        for token in [
            "tg_sk_test_x",
            "tg_pk_live_x",
            "tg_admin_x",
            "garbage",
            "sk_x",
        ] {
            assert_eq!(
                rejected(token, Wanted::ApiKey),
                ApiError::InvalidKey,
                "{token}"
            );
        }
    }
}
