//! The router against a real SQLite store on a temp dir: how malformed requests are refused
//! (415, 413, 400 naming the field, 401, 403) and that a panicking handler answers 500 and
//! leaks nothing.

use super::{router, routes, with_layers};
use crate::bootstrap::initialize;
use crate::{AppState, Metrics, ServerConfig, REQUEST_BODY_BYTES_MAX};
use axum::body::{to_bytes, Body};
use axum::http::{header, Method, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use jiff::Timestamp;
use serde_json::{json, Value};
use std::sync::Arc;
use tempfile::TempDir;
use tollgate_api::InitOutput;
use tollgate_store_sqlite::SqliteStore;
use tower::ServiceExt;

/// Largest answer body a test reads.
const ANSWER_BYTES_MAX: usize = 1024 * 1024;

struct App {
    state: AppState,
    secrets: InitOutput,
    _dir: TempDir,
}

async fn app() -> App {
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics = Arc::new(Metrics::new());
    let store = SqliteStore::open(dir.path(), metrics.clone()).expect("store opens");
    let secrets = initialize(&store, Timestamp::now())
        .await
        .expect("install is created");
    let state = AppState::new(Arc::new(store), metrics, ServerConfig::default());
    App {
        state,
        secrets,
        _dir: dir,
    }
}

struct Answer {
    status: StatusCode,
    body: Value,
}

async fn send(
    router: Router,
    method: Method,
    uri: &str,
    key: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(key) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    let response = router
        .oneshot(request.body(Body::from(body)).expect("request builds"))
        .await
        .expect("the router is infallible");
    let status = response.status();
    let bytes = to_bytes(response.into_body(), ANSWER_BYTES_MAX)
        .await
        .expect("answer body");
    Answer {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

impl App {
    fn router(&self) -> Router {
        router(self.state.clone())
    }

    fn secret(&self) -> &str {
        &self.secrets.keys.test.secret
    }

    async fn post_json(&self, uri: &str, body: &[u8]) -> Answer {
        send(
            self.router(),
            Method::POST,
            uri,
            Some(self.secret()),
            Some("application/json"),
            body.to_vec(),
        )
        .await
    }
}

fn code(answer: &Answer) -> &str {
    answer.body["error"]["code"].as_str().unwrap_or("<none>")
}

/// A reserve body of exactly `len` bytes, padded in the prompt.
fn reserve_of_len(len: usize) -> Vec<u8> {
    let head = br#"{"userId":"u1","event":"image.render","prompt":""#;
    let tail = br#""}"#;
    let mut body = head.to_vec();
    body.resize(len - tail.len(), b'x');
    body.extend_from_slice(tail);
    body
}

#[tokio::test]
async fn not_json_is_415() {
    let app = app().await;
    let body = br#"{"userId":"u1","event":"image.render"}"#.to_vec();
    for content_type in [Some("text/plain"), None] {
        let a = send(
            app.router(),
            Method::POST,
            "/v1/reserve",
            Some(app.secret()),
            content_type,
            body.clone(),
        )
        .await;
        assert_eq!(
            a.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
        assert_eq!(code(&a), "unsupported_media_type");
    }
}

#[tokio::test]
async fn bodies_up_to_1_mib_pass_and_larger_ones_are_413() {
    let app = app().await;
    let a = app
        .post_json("/v1/reserve", &reserve_of_len(REQUEST_BODY_BYTES_MAX))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["reasons"], json!(["no_subscription"]));
    let a = app
        .post_json("/v1/reserve", &reserve_of_len(REQUEST_BODY_BYTES_MAX + 1))
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code(&a), "payload_too_large");
}

#[tokio::test]
async fn unknown_fields_and_bad_json_are_400() {
    let app = app().await;
    let a = app
        .post_json("/v1/reserve", br#"{"userId":"u1","event":"e","quantiy":2}"#)
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&a), "invalid_request");
    assert_eq!(a.body["error"]["field"], "quantiy");
    let a = app
        .post_json(
            "/v1/reserve",
            br#"{"userId":"u1","event":"e","quantity":1.5}"#,
        )
        .await;
    assert_eq!(a.body["error"]["field"], "quantity");
    let a = app.post_json("/v1/reserve", b"{\"userId\":").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body["error"].get("field").is_none(), "{}", a.body);
    let a = app
        .post_json(
            "/v1/check",
            br#"{"userId":"u1","event":"e","ttlSeconds":5}"#,
        )
        .await;
    assert_eq!(a.body["error"]["field"], "ttlSeconds");
}

#[tokio::test]
async fn keys_are_checked_before_bodies() {
    let app = app().await;
    let body = br#"{"userId":"u1","event":"e"}"#.to_vec();
    let a = send(
        app.router(),
        Method::POST,
        "/v1/reserve",
        None,
        Some("application/json"),
        body.clone(),
    )
    .await;
    assert_eq!(
        (a.status, code(&a)),
        (StatusCode::UNAUTHORIZED, "invalid_key")
    );
    let a = send(
        app.router(),
        Method::POST,
        "/v1/reserve",
        Some(&app.secrets.keys.test.publishable),
        Some("application/json"),
        body,
    )
    .await;
    assert_eq!(
        (a.status, code(&a)),
        (StatusCode::FORBIDDEN, "requires_secret_key")
    );
}

#[tokio::test]
async fn commit_needs_no_body() {
    let app = app().await;
    let doc = json!({"defaultPlan": "free", "plans": [{"id": "free", "limits": [
        {"id": "all", "quota": 5, "window": {"type": "lifetime"}, "match": [{"event": "*"}]}]}]});
    let a = send(
        app.router(),
        Method::PUT,
        "/v1/plans",
        Some(app.secret()),
        Some("application/json"),
        doc.to_string().into_bytes(),
    )
    .await;
    assert_eq!(a.body["version"], 1, "{}", a.body);
    let a = app
        .post_json(
            "/v1/reserve",
            br#"{"userId":"u1","event":"e","quantity":2}"#,
        )
        .await;
    let id = a.body["reservationId"]
        .as_str()
        .expect("allowed")
        .to_string();
    let a = send(
        app.router(),
        Method::POST,
        &format!("/v1/reservations/{id}/commit"),
        Some(app.secret()),
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["quantity"], 2);
    assert_eq!(a.body["limits"][0]["used"], 2);
}

async fn panics() -> &'static str {
    panic!("secret detail from a bug")
}

#[tokio::test]
async fn a_panicking_handler_answers_500_and_leaks_nothing() {
    let app = app().await;
    let router = with_layers(routes().route("/boom", get(panics)), app.state.clone());
    let a = send(router, Method::GET, "/boom", None, None, Vec::new()).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(code(&a), "internal_error");
    assert!(!a.body.to_string().contains("secret detail"), "{}", a.body);
    // The server lives on.
    let a = send(
        app.router(),
        Method::GET,
        "/healthz",
        None,
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
}
