//! Secrets of an install: the admin token and API keys, made from the thread's CSPRNG, shown
//! once, and stored only as SHA-256 hashes.
//!
//! `tollgate init` (and `tollgate serve` on an empty data dir) calls [`initialize`]; the admin
//! routes call [`generate_key`].

use crate::ids::{new_id, random_string, KEY_ID_PREFIX, PROJECT_PREFIX};
use crate::key_format::key_prefix;
use jiff::Timestamp;
use sha2::{Digest, Sha256};
use tollgate_api::{InitKeys, InitOutput, KeyPair};
use tollgate_store::{KeyKind, Mode, NewKey, Project, Store, StoreError};

/// Random characters of a key or admin token after its prefix: 32 of 62 symbols, ~190 bits.
pub const SECRET_RANDOM_CHARS: usize = 32;
/// Characters of a key shown in listings: its kind-and-environment prefix and four random
/// characters (`tg_sk_test_ab12`). Keys minted before the `tg_` prefix keep the 12 they were
/// listed with (`sk_test_ab12`).
pub const KEY_PREFIX_CHARS: usize = 15;
/// The prefix of the admin token.
pub const ADMIN_TOKEN_PREFIX: &str = "tg_admin_";
/// The name of the first project of an install.
pub const FIRST_PROJECT_NAME: &str = "default";

/// SHA-256 of a key or token, as the store keeps it.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A new key (shown once) and its stored form.
pub fn generate_key(
    project_id: &str,
    mode: Mode,
    kind: KeyKind,
    name: &str,
    now: Timestamp,
) -> (String, NewKey) {
    let key = random_string(key_prefix(mode, kind), SECRET_RANDOM_CHARS);
    let stored = NewKey {
        key_id: new_id(KEY_ID_PREFIX),
        project_id: project_id.to_string(),
        mode,
        kind,
        name: name.to_string(),
        prefix: key.chars().take(KEY_PREFIX_CHARS).collect(),
        hash: hash_secret(&key),
        created_at: now,
    };
    (key, stored)
}

/// A new admin token (`tg_admin_…`), shown once.
pub fn generate_admin_token() -> String {
    random_string(ADMIN_TOKEN_PREFIX, SECRET_RANDOM_CHARS)
}

/// Everything a new install is made of: what to show once, and what to store.
pub struct Bootstrap {
    pub output: InitOutput,
    pub admin_token_hash: [u8; 32],
    pub project: Project,
    pub keys: Vec<NewKey>,
}

/// Generates the admin token, the first project, and a secret and a publishable key for each
/// of its environments.
pub fn bootstrap(now: Timestamp) -> Bootstrap {
    let admin_token = generate_admin_token();
    let project = Project {
        project_id: new_id(PROJECT_PREFIX),
        name: FIRST_PROJECT_NAME.to_string(),
        created_at: now,
    };
    let mut keys = Vec::with_capacity(4);
    let mut pair = |mode: Mode| {
        let (secret, secret_key) =
            generate_key(&project.project_id, mode, KeyKind::Secret, "default", now);
        let (publishable, publishable_key) = generate_key(
            &project.project_id,
            mode,
            KeyKind::Publishable,
            "default",
            now,
        );
        keys.push(secret_key);
        keys.push(publishable_key);
        KeyPair {
            secret,
            publishable,
        }
    };
    let test = pair(Mode::Test);
    let live = pair(Mode::Live);
    Bootstrap {
        output: InitOutput {
            admin_token: admin_token.clone(),
            project_id: project.project_id.clone(),
            keys: InitKeys { test, live },
        },
        admin_token_hash: hash_secret(&admin_token),
        project,
        keys,
    }
}

/// Creates a new install in `store`; `AlreadyExists` if it has one.
pub async fn initialize(store: &dyn Store, now: Timestamp) -> Result<InitOutput, StoreError> {
    let b = bootstrap(now);
    store
        .initialize(b.admin_token_hash, b.project, b.keys)
        .await?;
    Ok(b.output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_their_prefixes_and_only_hashes_are_kept() {
        let b = bootstrap(Timestamp::UNIX_EPOCH);
        let keys = &b.output.keys;
        assert!(keys.test.secret.starts_with("tg_sk_test_"));
        assert!(keys.test.publishable.starts_with("tg_pk_test_"));
        assert!(keys.live.secret.starts_with("tg_sk_live_"));
        assert!(keys.live.publishable.starts_with("tg_pk_live_"));
        assert_eq!(
            keys.live.secret.len(),
            "tg_sk_live_".len() + SECRET_RANDOM_CHARS
        );
        assert!(b.output.admin_token.starts_with("tg_admin_"));
        assert_eq!(b.keys.len(), 4);
        let stored = b
            .keys
            .iter()
            .find(|k| k.hash == hash_secret(&keys.test.secret))
            .expect("the test secret key is stored by hash");
        assert_eq!(stored.prefix, &keys.test.secret[..KEY_PREFIX_CHARS]);
        assert_eq!(stored.prefix.len(), "tg_sk_test_".len() + 4);
        assert_eq!(stored.mode, Mode::Test);
        assert_eq!(stored.kind, KeyKind::Secret);
    }
}
