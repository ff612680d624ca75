//! User tokens (API.md §12): what lets a browser holding only a publishable key read one user's
//! own usage and credits.
//!
//! A token is signed with its environment's token secret, so an app's backend (or an SDK,
//! offline) mints one without asking the server, and the server checks one without storing
//! anything. Version 1 (docs/browser.md gives the same with an example):
//!
//! ```text
//! token   = "tg_ut_" B64(payload) "." B64(HMAC-SHA256(secret, "tg_ut_" B64(payload)))
//! payload = {"v": 1, "prj": "<projectId>", "env": "test"|"live", "sub": "<userId>", "exp": <unix s>}
//! ```
//!
//! `B64` is base64url without padding; the HMAC key is the UTF-8 of the whole secret string
//! (`tg_ts_test_…`). The signature covers the characters received, so the payload's JSON may
//! be written in any order or spacing. `exp` is real time (the test clock moves metering, not
//! credentials).
//!
//! Checking order: the token must be well-formed (`401 invalid_key`); a token of another
//! project or environment is `403 forbidden` before its signature is looked at (it was signed
//! with a secret this environment does not hold, and saying which environment it names
//! reveals nothing); then the signature and the expiry (`401 invalid_key`).

use crate::error::ApiError;
use crate::ids::random_string;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tollgate_core::input::UserId;
use tollgate_store::{EnvId, Mode, Store};

/// The prefix of every user token.
pub const USER_TOKEN_PREFIX: &str = "tg_ut_";
/// The header a browser sends its user token in.
pub const USER_TOKEN_HEADER: &str = "x-tollgate-user-token";
/// Longest token accepted, in bytes: a 256-byte user id fits with room to spare.
pub const USER_TOKEN_BYTES_MAX: usize = 1024;
/// `ttlSeconds` of `POST /v1/user-tokens`: 1 to a day, an hour unless given.
pub const USER_TOKEN_TTL_MIN: u32 = 1;
pub const USER_TOKEN_TTL_MAX: u32 = 86_400;
pub const USER_TOKEN_TTL_DEFAULT: u32 = 3_600;
/// How far ahead of this server's clock a minting machine's may run, in seconds.
pub const CLOCK_SKEW_SECONDS: i64 = 300;
/// Random characters of a token secret after its prefix: 43 of 62 symbols, ~256 bits.
pub const TOKEN_SECRET_RANDOM_CHARS: usize = 43;
/// The version this server writes and reads.
const VERSION: u32 = 1;

/// The signed claims of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub v: u32,
    pub prj: String,
    pub env: String,
    pub sub: String,
    pub exp: i64,
}

/// The prefix of an environment's token secret.
pub fn secret_prefix(mode: Mode) -> &'static str {
    match mode {
        Mode::Test => "tg_ts_test_",
        Mode::Live => "tg_ts_live_",
    }
}

/// A new token secret for an environment of `mode`.
pub fn generate_secret(mode: Mode) -> String {
    random_string(secret_prefix(mode), TOKEN_SECRET_RANDOM_CHARS)
}

fn mac(secret: &str) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length")
}

/// Signs `claims` with `secret`.
pub fn mint(secret: &str, claims: &Claims) -> String {
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    let signed = format!("{USER_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(payload));
    let mut m = mac(secret);
    m.update(signed.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{signed}.{signature}")
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not a token at all, or one this server cannot read (`401`).
    Malformed(&'static str),
    /// Signed for another project or environment (`403`).
    OtherEnvironment,
    /// The signature does not match: altered, or signed with another secret (`401`).
    BadSignature,
    /// Past its `exp` (`401`).
    Expired,
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::OtherEnvironment => ApiError::Forbidden(
                "the user token was issued for another project or environment".into(),
            ),
            Refusal::Malformed(why) => ApiError::InvalidUserToken(why),
            Refusal::BadSignature => ApiError::InvalidUserToken("its signature does not match"),
            Refusal::Expired => ApiError::InvalidUserToken("it has expired"),
        }
    }
}

/// The claims a token proves, read without its signature checked (see [`verify`]).
fn read(token: &str) -> Result<(&str, Vec<u8>, Claims), Refusal> {
    if token.len() > USER_TOKEN_BYTES_MAX {
        return Err(Refusal::Malformed("it is longer than 1024 bytes"));
    }
    let (signed, signature) = token.rsplit_once('.').ok_or(Refusal::Malformed(
        "it is not a Tollgate user token (tg_ut_…)",
    ))?;
    let payload = signed
        .strip_prefix(USER_TOKEN_PREFIX)
        .ok_or(Refusal::Malformed(
            "it is not a Tollgate user token (tg_ut_…)",
        ))?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| Refusal::Malformed("its payload is not base64url"))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| Refusal::Malformed("its signature is not base64url"))?;
    let claims: Claims = serde_json::from_slice(&payload)
        .map_err(|_| Refusal::Malformed("its payload is not a version 1 token"))?;
    if claims.v != VERSION {
        return Err(Refusal::Malformed("its version is not 1"));
    }
    Ok((signed, signature, claims))
}

/// The user a token names, once it is proven for this project and environment, signed with
/// `secret` and unexpired at `now`.
pub fn verify(
    token: &str,
    project_id: &str,
    mode: Mode,
    secret: &str,
    now: Timestamp,
) -> Result<UserId, Refusal> {
    let (signed, signature, claims) = read(token)?;
    if claims.prj != project_id || claims.env != mode.as_str() {
        return Err(Refusal::OtherEnvironment);
    }
    let mut m = mac(secret);
    m.update(signed.as_bytes());
    m.verify_slice(&signature)
        .map_err(|_| Refusal::BadSignature)?;
    if claims.exp <= now.as_second() {
        return Err(Refusal::Expired);
    }
    // However it was minted, a token lives at most a day (a few minutes of clock skew allowed
    // between the minting machine and this one).
    if claims.exp > now.as_second() + i64::from(USER_TOKEN_TTL_MAX) + CLOCK_SKEW_SECONDS {
        return Err(Refusal::Malformed("it expires more than a day from now"));
    }
    UserId::parse(claims.sub).map_err(|_| Refusal::Malformed("its user id is not valid"))
}

/// Token secrets by environment, read from the store once: a secret never changes.
#[derive(Debug, Default)]
pub struct TokenSecrets {
    secrets: RwLock<HashMap<EnvId, Arc<str>>>,
}

impl TokenSecrets {
    /// The secret of the caller's environment, made (and stored) on first use.
    pub async fn of(
        &self,
        store: &dyn Store,
        caller: &crate::auth::Caller,
    ) -> Result<Arc<str>, ApiError> {
        let auth = &caller.auth;
        self.get(store, auth.env, auth.mode, caller.now).await
    }

    /// The environment's secret, made (and stored) on first use.
    pub async fn get(
        &self,
        store: &dyn Store,
        env: EnvId,
        mode: Mode,
        now: Timestamp,
    ) -> Result<Arc<str>, ApiError> {
        if let Some(s) = self
            .secrets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&env)
        {
            return Ok(s.clone());
        }
        let secret: Arc<str> = store
            .token_secret(env, generate_secret(mode), now)
            .await?
            .into();
        self.secrets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(env, secret.clone());
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "tg_ts_test_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";

    fn claims(exp: i64) -> Claims {
        Claims {
            v: 1,
            prj: "prj_1".into(),
            env: "test".into(),
            sub: "user_a".into(),
            exp,
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn a_minted_token_verifies_until_it_expires() {
        let token = mint(SECRET, &claims(1_000));
        assert!(token.starts_with("tg_ut_"));
        let user = verify(&token, "prj_1", Mode::Test, SECRET, at(999)).unwrap();
        assert_eq!(user.as_str(), "user_a");
        assert_eq!(
            verify(&token, "prj_1", Mode::Test, SECRET, at(1_000)),
            Err(Refusal::Expired)
        );
    }

    #[test]
    fn a_token_lives_at_most_a_day() {
        let latest = 86_400 + CLOCK_SKEW_SECONDS;
        let token = mint(SECRET, &claims(latest));
        assert!(verify(&token, "prj_1", Mode::Test, SECRET, at(0)).is_ok());
        let token = mint(SECRET, &claims(latest + 1));
        assert!(matches!(
            verify(&token, "prj_1", Mode::Test, SECRET, at(0)),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn another_environment_or_project_is_forbidden_before_the_signature() {
        let token = mint(SECRET, &claims(1_000));
        let other = "tg_ts_live_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz";
        assert_eq!(
            verify(&token, "prj_1", Mode::Live, other, at(0)),
            Err(Refusal::OtherEnvironment)
        );
        assert_eq!(
            verify(&token, "prj_2", Mode::Test, SECRET, at(0)),
            Err(Refusal::OtherEnvironment)
        );
    }

    #[test]
    fn any_altered_character_or_other_secret_is_refused() {
        let token = mint(SECRET, &claims(1_000));
        let other = SECRET.replace('0', "1");
        assert_eq!(
            verify(&token, "prj_1", Mode::Test, &other, at(0)),
            Err(Refusal::BadSignature)
        );
        // Each position, changed to another base64url character: never the same user back.
        for i in USER_TOKEN_PREFIX.len()..token.len() {
            let mut bytes = token.clone().into_bytes();
            if bytes[i] == b'.' {
                continue;
            }
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(bytes).unwrap();
            assert!(
                verify(&altered, "prj_1", Mode::Test, SECRET, at(0)).is_err(),
                "altered at {i}: {altered}"
            );
        }
    }

    #[test]
    fn a_payload_written_by_another_implementation_verifies() {
        // Keys in another order and with spaces: the signature covers what was sent.
        let payload = r#"{ "exp": 1000, "sub": "user_a", "env": "test", "prj": "prj_1", "v": 1 }"#;
        let signed = format!("tg_ut_{}", URL_SAFE_NO_PAD.encode(payload));
        let mut m = mac(SECRET);
        m.update(signed.as_bytes());
        let token = format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
        );
        let user = verify(&token, "prj_1", Mode::Test, SECRET, at(0)).unwrap();
        assert_eq!(user.as_str(), "user_a");
    }

    #[test]
    fn malformed_tokens_are_named() {
        for token in ["", "tg_ut_", "tg_ut_.", "sk_test_abc.def", "tg_ut_!!!.abc"] {
            assert!(matches!(
                verify(token, "prj_1", Mode::Test, SECRET, at(0)),
                Err(Refusal::Malformed(_))
            ));
        }
        let long = format!("tg_ut_{}.x", "A".repeat(USER_TOKEN_BYTES_MAX));
        assert!(matches!(
            verify(&long, "prj_1", Mode::Test, SECRET, at(0)),
            Err(Refusal::Malformed(_))
        ));
        let v2 = mint(
            SECRET,
            &Claims {
                v: 2,
                ..claims(1_000)
            },
        );
        assert!(matches!(
            verify(&v2, "prj_1", Mode::Test, SECRET, at(0)),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn secrets_carry_their_environment() {
        assert!(generate_secret(Mode::Test).starts_with("tg_ts_test_"));
        let live = generate_secret(Mode::Live);
        assert!(live.starts_with("tg_ts_live_"));
        assert_eq!(live.len(), "tg_ts_live_".len() + TOKEN_SECRET_RANDOM_CHARS);
    }
}
