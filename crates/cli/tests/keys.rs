//! The text of keys (PRODUCT.md "Keys"): every key and admin token minted today starts with
//! `tg_` (`tg_sk_test_…`, `tg_admin_…`), keys minted before as `sk_…`/`pk_…` keep working, and
//! a bearer that authenticates as nothing but is shaped like a Stripe secret answers a `401`
//! that says so.

mod common;

use common::*;
use jiff::Timestamp;
use std::sync::Arc;
use tollgate_server::bootstrap::{hash_secret, SECRET_RANDOM_CHARS};
use tollgate_server::ids::{new_id, random_string, KEY_ID_PREFIX};
use tollgate_server::Metrics;
use tollgate_store::{KeyKind, Mode, NewKey, Store};
use tollgate_store_postgres::PgStore;
use tollgate_store_sqlite::SqliteStore;

/// Characters of the key a listing showed before the `tg_` prefix (`sk_test_ab12`).
const UNPREFIXED_LISTED_CHARS: usize = 12;
/// Characters of the key a listing shows today (`tg_sk_test_ab12`).
const LISTED_CHARS: usize = 15;

/// The four kinds of API key, as (environment, kind) on the wire.
const FORMS: [(&str, &str); 4] = [
    ("test", "secret"),
    ("test", "publishable"),
    ("live", "secret"),
    ("live", "publishable"),
];

/// The prefix a key of this environment and kind is minted with today.
fn tg_prefix(env: &str, kind: &str) -> String {
    let kind = if kind == "secret" { "sk" } else { "pk" };
    format!("tg_{kind}_{env}_")
}

fn store_form(env: &str, kind: &str) -> (Mode, KeyKind) {
    let mode = if env == "live" {
        Mode::Live
    } else {
        Mode::Test
    };
    let kind = if kind == "secret" {
        KeyKind::Secret
    } else {
        KeyKind::Publishable
    };
    (mode, kind)
}

fn keys_by_form(keys: &Keys) -> [(&'static str, &'static str, String); 4] {
    [
        ("test", "secret", keys.test_secret.clone()),
        ("test", "publishable", keys.test_publishable.clone()),
        ("live", "secret", keys.live_secret.clone()),
        ("live", "publishable", keys.live_publishable.clone()),
    ]
}

fn assert_minted_with_tg_prefixes(keys: &Keys) {
    for (env, kind, key) in keys_by_form(keys) {
        let prefix = tg_prefix(env, kind);
        assert!(
            key.starts_with(&prefix),
            "{env}/{kind} key must start with {prefix}: {key}"
        );
        assert_eq!(key.len(), prefix.len() + SECRET_RANDOM_CHARS, "{key}");
    }
    assert!(
        keys.admin_token.starts_with("tg_admin_"),
        "{}",
        keys.admin_token
    );
}

/// Gives each environment a plan document with one plan named after it, so a key's answers
/// show which environment it reaches.
async fn mark_environments(s: &TestServer) {
    for (client, plan) in [(s.client(), "in_test"), (s.live(), "in_live")] {
        client
            .put_plans(json!({"plans": [{"id": plan, "limits": []}]}))
            .await
            .ok();
    }
}

/// `key` reaches the environment `env` (its plans) with the rights of `kind` (a publishable
/// key may read plans, not usage).
async fn assert_acts_as(s: &TestServer, key: &str, env: &str, kind: &str) {
    let c = s.client_with(key);
    let plans = c.get_plans().await.ok();
    assert_eq!(
        plans["plans"][0]["id"],
        format!("in_{env}"),
        "{key} must reach the {env} environment: {plans}"
    );
    let usage = c.usage("u1").await;
    match kind {
        "secret" => {
            usage.ok();
        }
        _ => {
            usage.err(403, "requires_secret_key");
        }
    }
}

async fn assert_all_keys_work(s: &TestServer) {
    mark_environments(s).await;
    for (env, kind, key) in keys_by_form(&s.keys) {
        assert_acts_as(s, &key, env, kind).await;
    }
    s.admin().get("/admin/v1/projects").await.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn init_mints_tg_keys_and_admin_token() {
    let s = TestServer::start().await;
    assert_minted_with_tg_prefixes(&s.keys);
    assert_all_keys_work(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_serve_on_an_empty_store_mints_tg_keys_and_admin_token() {
    let s = TestServer::builder().first_start().start().await;
    assert_minted_with_tg_prefixes(&s.keys);
    assert_all_keys_work(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_created_keys_start_with_tg_and_are_listed_by_it() {
    let s = TestServer::start().await;
    mark_environments(&s).await;
    let admin = s.admin();
    let keys_path = format!("/admin/v1/projects/{}/keys", s.keys.project_id);
    for (env, kind) in FORMS {
        let created = admin
            .post(
                &keys_path,
                json!({"environment": env, "kind": kind, "name": "ci"}),
            )
            .await
            .ok();
        let key = created["key"].as_str().expect("key");
        let prefix = tg_prefix(env, kind);
        assert!(key.starts_with(&prefix), "{env}/{kind}: {created}");
        assert_eq!(created["prefix"], key[..LISTED_CHARS], "{created}");
        let listed = rows(&admin.get(&keys_path).await.ok());
        let row = listed
            .iter()
            .find(|k| k["keyId"] == created["keyId"])
            .expect("the new key is listed");
        assert_eq!(row["prefix"], key[..LISTED_CHARS], "{row}");
        assert_acts_as(&s, key, env, kind).await;
    }
}

/// The prefix keys were minted with before the `tg_` one.
fn unprefixed(mode: Mode, kind: KeyKind) -> &'static str {
    match (kind, mode) {
        (KeyKind::Secret, Mode::Live) => "sk_live_",
        (KeyKind::Secret, Mode::Test) => "sk_test_",
        (KeyKind::Publishable, Mode::Live) => "pk_live_",
        (KeyKind::Publishable, Mode::Test) => "pk_test_",
    }
}

/// Stores one key of each of `forms` as Tollgate minted and stored keys before the `tg_`
/// prefix (`sk_test_` and 32 random characters; its SHA-256 hash and its first 12
/// characters), through the store of the server's own backend while the server is stopped,
/// then starts the server again. Returns the keys. Take new clients afterwards.
async fn mint_unprefixed_keys(s: &mut TestServer, forms: &[(&str, &str)]) -> Vec<String> {
    let minted: Vec<(String, NewKey)> = forms
        .iter()
        .map(|&(env, kind)| {
            let (mode, kind) = store_form(env, kind);
            let key = random_string(unprefixed(mode, kind), SECRET_RANDOM_CHARS);
            let stored = NewKey {
                key_id: new_id(KEY_ID_PREFIX),
                project_id: s.keys.project_id.clone(),
                mode,
                kind,
                name: "before tg_".into(),
                prefix: key[..UNPREFIXED_LISTED_CHARS].to_string(),
                hash: hash_secret(&key),
                created_at: Timestamp::now(),
            };
            (key, stored)
        })
        .collect();
    s.stop().await;
    let store: Arc<dyn Store> = match s.database_url() {
        None => Arc::new(
            SqliteStore::open(s.data_dir(), Arc::new(Metrics::new()))
                .expect("open the stopped server's SQLite store"),
        ),
        Some(url) => {
            let url = url.to_string();
            let store = tokio::task::spawn_blocking(move || {
                PgStore::connect(&url, 1, Arc::new(Metrics::new()))
            })
            .await
            .expect("connect task")
            .expect("connect to the server's PostgreSQL database");
            Arc::new(store)
        }
    };
    for (_, stored) in &minted {
        store.create_key(stored.clone()).await.expect("store a key");
    }
    store.shutdown().await;
    drop(store);
    s.restart().await;
    minted.into_iter().map(|(key, _)| key).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_minted_before_the_tg_prefix_keep_working() {
    let mut s = TestServer::start().await;
    let old = mint_unprefixed_keys(&mut s, &FORMS).await;
    mark_environments(&s).await;
    for ((env, kind), key) in FORMS.iter().zip(&old) {
        assert!(!key.starts_with("tg_"), "{key}");
        assert_acts_as(&s, key, env, kind).await;
    }
    let (old_test_secret, admin) = (&old[0], s.admin());
    let keys_path = format!("/admin/v1/projects/{}/keys", s.keys.project_id);
    let listed = rows(&admin.get(&keys_path).await.ok());
    for key in &old {
        assert!(
            listed
                .iter()
                .any(|k| k["prefix"] == key[..UNPREFIXED_LISTED_CHARS]),
            "{key} is listed by its first 12 characters: {listed:?}"
        );
    }

    // A working key of the old form is the wrong credential on an admin route, not a Stripe key.
    let e = s
        .anonymous()
        .request(
            Method::GET,
            "/admin/v1/projects",
            Some(old_test_secret),
            None,
        )
        .await
        .err(401, "invalid_key");
    let message = e["message"].as_str().expect("message");
    assert!(!message.contains("Stripe"), "{message}");

    // The same key through the CLI, which reads no shape into it.
    let out = std::process::Command::new(BIN)
        .args([
            "usage",
            "u1",
            "--url",
            &s.base_url,
            "--key",
            old_test_secret,
        ])
        .env_remove("TOLLGATE_URL")
        .env_remove("TOLLGATE_KEY")
        .output()
        .expect("run tollgate usage");
    assert!(
        out.status.success(),
        "`tollgate usage` with an old-form key: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Revoked, it is refused like any key; the answer never shows it.
    let row = listed
        .iter()
        .find(|k| k["prefix"] == old_test_secret[..UNPREFIXED_LISTED_CHARS])
        .expect("listed");
    admin
        .delete(&format!(
            "/admin/v1/keys/{}",
            row["keyId"].as_str().unwrap()
        ))
        .await
        .ok();
    let refused = s.client_with(old_test_secret).usage("u1").await;
    assert!(!refused.text.contains(old_test_secret.as_str()));
    refused.err(401, "invalid_key");
}

/// A token shaped like a Stripe secret of `prefix`, as long as Stripe's.
fn stripe_shaped(prefix: &str) -> String {
    random_string(&format!("{prefix}51Hq"), 95)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stripe_shaped_key_gets_a_401_that_says_so() {
    let s = TestServer::start().await;
    let c = s.anonymous();
    for prefix in [
        "sk_live_", "sk_test_", "pk_live_", "pk_test_", "rk_live_", "rk_test_", "whsec_",
    ] {
        let token = stripe_shaped(prefix);
        let secret_part = &token[prefix.len()..];
        for (method, path, body, wants) in [
            (Method::GET, "/v1/users/u1/usage", None, "tg_sk_ or tg_pk_"),
            (
                Method::POST,
                "/v1/reserve",
                Some(json!({"userId": "u1", "event": "image.render"})),
                "tg_sk_ or tg_pk_",
            ),
            (Method::GET, "/v1/plans", None, "tg_sk_ or tg_pk_"),
            (Method::GET, "/admin/v1/projects", None, "tg_admin_"),
        ] {
            let answer = c.request(method.clone(), path, Some(&token), body).await;
            assert!(
                !answer.text.contains(secret_part),
                "{path}: the answer must show at most the Stripe prefix: {}",
                answer.text
            );
            let e = answer.err(401, "invalid_key");
            let message = e["message"].as_str().expect("message");
            assert!(
                message.contains("Stripe") && message.contains(&format!("({prefix}…)")),
                "{path} with {prefix}…: {message}"
            );
            assert!(message.contains(wants), "{path}: {message}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_tg_key_gets_the_plain_401() {
    let s = TestServer::start().await;
    let c = s.anonymous();
    let unknown_key = random_string("tg_sk_test_", SECRET_RANDOM_CHARS);
    let unknown_admin = random_string("tg_admin_", SECRET_RANDOM_CHARS);
    for (path, token) in [
        ("/v1/users/u1/usage", unknown_key.as_str()),
        ("/v1/users/u1/usage", "tg_pk_live_x"),
        ("/v1/users/u1/usage", "garbage"),
        ("/admin/v1/projects", unknown_admin.as_str()),
        ("/admin/v1/projects", s.keys.test_secret.as_str()),
    ] {
        let e = c
            .request(Method::GET, path, Some(token), None)
            .await
            .err(401, "invalid_key");
        let message = e["message"].as_str().expect("message");
        assert!(
            !message.contains("Stripe") && !message.contains(token),
            "{path} with {token}: {message}"
        );
    }
}
