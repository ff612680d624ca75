//! The typed HTTP client of the tests: [`Client`] and its helpers, one per call of
//! `shared/API.md`, and [`Resp`], an answer with its checks. A 5xx answer fails the test at once
//! (API.md §2), and `Resp::err` checks the error body `{"error": {"code", "message"}}`.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};

use super::answers::limit;
use super::calendar::{ts_secs, DAY, HOUR};
use super::secrets::Secrets;

/// One answer: status, headers, raw text and the parsed JSON (`Null` if not JSON).
#[derive(Debug, Clone)]
pub struct Resp {
    pub what: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Resp {
    /// Asserts a 2xx answer and returns its JSON body.
    #[track_caller]
    pub fn ok(self) -> Value {
        assert!(
            (200..300).contains(&self.status),
            "{} answered {} (expected 2xx): {}",
            self.what,
            self.status,
            self.text
        );
        self.body
    }

    /// Asserts status, the §2 error shape and the code; returns the `error` object.
    #[track_caller]
    pub fn err(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status, status,
            "{} answered {} (expected {status} {code}): {}",
            self.what, self.status, self.text
        );
        let error = assert_error_shape(&self.what, &self.body);
        assert_eq!(
            error["code"], code,
            "{} answered code {} (expected {code}): {}",
            self.what, error["code"], self.text
        );
        error
    }

    /// Asserts `400 invalid_request` whose `field` names `field` exactly.
    #[track_caller]
    pub fn invalid(&self, field: &str) -> Value {
        let error = self.err(400, "invalid_request");
        assert_eq!(
            error["field"], field,
            "{}: `field` should name {field:?}: {}",
            self.what, self.text
        );
        error
    }

    /// Asserts `400 invalid_request` whose `field` is a path containing `part`.
    #[track_caller]
    pub fn invalid_path_containing(&self, part: &str) -> Value {
        let error = self.err(400, "invalid_request");
        let field = error["field"].as_str().unwrap_or_else(|| {
            panic!("{}: 400 without a `field` string: {}", self.what, self.text)
        });
        assert!(
            field.contains(part),
            "{}: `field` {field:?} should name a path containing {part:?}: {}",
            self.what,
            self.text
        );
        error
    }
}

/// `{"error": {"code": "...", "message": "...", ...}}`; returns the `error` object.
#[track_caller]
pub fn assert_error_shape(what: &str, body: &Value) -> Value {
    let error = body
        .get("error")
        .filter(|e| e.is_object())
        .unwrap_or_else(|| panic!("{what}: error body must be {{\"error\": {{...}}}}, got {body}"));
    assert!(
        error["code"].as_str().is_some_and(|c| !c.is_empty()),
        "{what}: error.code must be a non-empty string: {body}"
    );
    assert!(
        error["message"].is_string(),
        "{what}: error.message must be a string: {body}"
    );
    error.clone()
}

#[derive(Clone)]
pub struct Client {
    pub(super) http: reqwest::Client,
    pub base: String,
    pub key: Option<String>,
    /// Load tests set this: a `503`/`429` is then returned instead of failing the test.
    pub tolerate_overload: bool,
    /// Outage tests set this: every status is returned, a `500` too, for the test to judge.
    pub any_status: bool,
    /// What this client sent and got that no server may log ([`Secrets`]).
    pub(super) secrets: Secrets,
}

impl Client {
    pub fn with_key(&self, key: &str) -> Client {
        Client {
            key: Some(key.to_string()),
            ..self.clone()
        }
    }

    pub fn tolerating_overload(&self) -> Client {
        Client {
            tolerate_overload: true,
            ..self.clone()
        }
    }

    /// A client that returns every answer, a 5xx too, instead of failing the test.
    pub fn accepting_any_status(&self) -> Client {
        Client {
            any_status: true,
            ..self.clone()
        }
    }

    /// The lowest-level call: any method, path, key, content type and raw body. Errors are
    /// transport errors only (e.g. the server was killed).
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Resp, reqwest::Error> {
        let what = format!("{method} {path}");
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(key) = key {
            self.secrets.note(key);
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        if let Some(body) = body {
            self.secrets.note_body(&body);
            req = req.body(body);
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await?;
        self.secrets.note_body(&bytes);
        let text = String::from_utf8_lossy(&bytes).to_string();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let overload = matches!(status, 429 | 503);
        assert!(
            status < 500 || self.any_status || (self.tolerate_overload && overload),
            "{what} answered {status}: a 5xx must never appear: {text}"
        );
        Ok(Resp {
            what,
            status,
            headers,
            text,
            body,
        })
    }

    /// POST a JSON body with extra headers (e.g. `Idempotency-Key`).
    pub async fn post_with_headers(
        &self,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> Resp {
        self.request_with_headers(Method::POST, path, headers, Some(body))
            .await
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Resp {
        let what = format!("{method} {path}");
        self.try_send(method, path, key, content_type, body)
            .await
            .unwrap_or_else(|e| panic!("{what}: transport error: {e}"))
    }

    /// Raw request with an explicit key (`None`: no `Authorization` header) and a JSON body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let (ct, bytes) = match body {
            Some(b) => (
                Some("application/json"),
                Some(serde_json::to_vec(&b).expect("json")),
            ),
            None => (None, None),
        };
        self.send(method, path, key, ct, bytes).await
    }

    /// A request with this client's key (if any), extra headers and an optional JSON body.
    pub async fn request_with_headers(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Resp {
        let what = format!("{method} {path}");
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(key) = &self.key {
            self.secrets.note(key);
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        if let Some(body) = body {
            self.secrets.note_json(&body);
            req = req
                .header("Content-Type", "application/json")
                .body(serde_json::to_vec(&body).expect("json"));
        }
        for (name, value) in headers {
            if value.starts_with("tg_") {
                self.secrets.note(value);
            }
            req = req.header(*name, *value);
        }
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: transport error: {e}"));
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.expect("body");
        self.secrets.note_body(&bytes);
        let text = String::from_utf8_lossy(&bytes).to_string();
        assert!(status < 500, "{what} answered {status}: {text}");
        Resp {
            what,
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text,
        }
    }

    /// A request with a verbatim `Authorization` header value (malformed-header tests).
    pub async fn request_with_authorization(
        &self,
        method: Method,
        path: &str,
        authorization: &str,
        body: Value,
    ) -> Resp {
        let what = format!("{method} {path}");
        self.secrets.note_json(&body);
        let res = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header("Authorization", authorization)
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(&body).expect("json"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: transport error: {e}"));
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap_or_default();
        assert!(
            status < 500,
            "{what} answered {status}: a 5xx must never appear: {text}"
        );
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        self.secrets.note_json(&body);
        Resp {
            what,
            status,
            headers,
            text,
            body,
        }
    }

    pub async fn try_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Resp, reqwest::Error> {
        let (ct, bytes) = match body {
            Some(b) => (
                Some("application/json"),
                Some(serde_json::to_vec(&b).expect("json")),
            ),
            None => (None, None),
        };
        self.try_send(method, path, self.key.as_deref(), ct, bytes)
            .await
    }

    /// A request with this client's key.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        self.request(method, path, self.key.as_deref(), body).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.call(Method::DELETE, path, None).await
    }

    // --- §5 plans
    pub async fn put_plans(&self, doc: Value) -> Resp {
        self.put("/v1/plans", doc).await
    }
    pub async fn get_plans(&self) -> Resp {
        self.get("/v1/plans").await
    }
    pub async fn get_plan(&self, id: &str) -> Resp {
        self.get(&format!("/v1/plans/{id}")).await
    }

    // --- §4 metering
    pub async fn reserve(&self, body: Value) -> Resp {
        self.post("/v1/reserve", body).await
    }
    pub async fn commit(&self, id: &str, body: Value) -> Resp {
        self.post(&format!("/v1/reservations/{id}/commit"), body)
            .await
    }
    pub async fn release(&self, id: &str, body: Value) -> Resp {
        self.post(&format!("/v1/reservations/{id}/release"), body)
            .await
    }
    pub async fn extend(&self, id: &str, ttl_seconds: u64) -> Resp {
        self.post(
            &format!("/v1/reservations/{id}/extend"),
            json!({ "ttlSeconds": ttl_seconds }),
        )
        .await
    }
    pub async fn get_reservation(&self, id: &str) -> Resp {
        self.get(&format!("/v1/reservations/{id}")).await
    }
    pub async fn track(&self, body: Value) -> Resp {
        self.post("/v1/track", body).await
    }
    pub async fn check(&self, body: Value) -> Resp {
        self.post("/v1/check", body).await
    }
    pub async fn usage(&self, user: &str) -> Resp {
        self.get(&format!("/v1/users/{user}/usage")).await
    }
    pub async fn usage_for_event(&self, user: &str, event: &str) -> Resp {
        self.get(&format!("/v1/users/{user}/usage?event={event}"))
            .await
    }

    /// Reserve `quantity` of `event` for `user`; returns the 200 answer (allowed or not).
    pub async fn reserve_q(&self, user: &str, event: &str, quantity: u64) -> Value {
        self.reserve(json!({"userId": user, "event": event, "quantity": quantity}))
            .await
            .ok()
    }
    /// Reserve that must be allowed; returns the reservation id.
    #[track_caller]
    pub fn must_allow(answer: &Value) -> String {
        assert_eq!(
            answer["allowed"], true,
            "reserve should be allowed: {answer}"
        );
        answer["reservationId"]
            .as_str()
            .expect("reservationId")
            .to_string()
    }
    /// Track `quantity` of `event` for `user` (not enforced); returns the answer.
    pub async fn track_q(&self, user: &str, event: &str, quantity: u64) -> Value {
        self.track(json!({"userId": user, "event": event, "quantity": quantity}))
            .await
            .ok()
    }
    /// The user's limit state `limit_id` from the usage endpoint.
    pub async fn limit_state(&self, user: &str, limit_id: &str) -> Value {
        let usage = self.usage(user).await.ok();
        limit(&usage, limit_id).clone()
    }

    // --- §6 subscriptions
    pub async fn subscribe(&self, body: Value) -> Resp {
        self.post("/v1/subscriptions", body).await
    }
    pub async fn get_subscription(&self, user: &str) -> Resp {
        self.get(&format!("/v1/subscriptions/{user}")).await
    }
    pub async fn history(&self, user: &str) -> Resp {
        self.get(&format!("/v1/subscriptions/{user}/history")).await
    }
    pub async fn cancel(&self, body: Value) -> Resp {
        self.post("/v1/subscriptions/cancel", body).await
    }

    // --- §7 test clock
    pub async fn clock(&self) -> Resp {
        self.get("/v1/test/clock").await
    }
    /// The test environment's `now`, in unix seconds (milliseconds dropped).
    pub async fn now(&self) -> i64 {
        let clock = self.clock().await.ok();
        ts_secs(&clock["now"])
    }
    pub async fn advance_clock(&self, seconds: i64) -> Value {
        assert!(seconds >= 0, "the test clock only moves forward");
        self.post("/v1/test/clock/advance", json!({ "seconds": seconds }))
            .await
            .ok()
    }
    /// Moves the test clock to `target` (unix seconds; must be in the future).
    pub async fn advance_to(&self, target: i64) {
        let now = self.now().await;
        assert!(
            target >= now,
            "cannot move the test clock back ({target} < {now})"
        );
        self.advance_clock(target - now).await;
    }
    /// Moves the test clock to the next `hour:00:00Z` at least a minute away and returns it.
    /// Calendar assertions then cannot be upset by a real midnight passing mid-test.
    pub async fn advance_to_next_utc_hour(&self, hour: i64) -> i64 {
        let now = self.now().await;
        let mut target = now.div_euclid(DAY) * DAY + hour * HOUR;
        while target < now + 60 {
            target += DAY;
        }
        self.advance_to(target).await;
        target
    }
}

/// POST that retries the API's own overload answers (`429`/`503`, "nothing was applied").
pub async fn post_retrying(c: &Client, path: &str, body: Value) -> Value {
    for _ in 0..500 {
        let r = c.post(path, body.clone()).await;
        if matches!(r.status, 429 | 503) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        return r.ok();
    }
    panic!("{path}: overloaded for 500 attempts");
}
