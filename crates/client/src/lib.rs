//! A Rust client for Tollgate's HTTP API (`API.md`), with the wire types the server itself
//! uses (`tollgate-api`), so a request that compiles has the fields the server reads.
//!
//! ```no_run
//! # async fn run() -> Result<(), tollgate_client::Error> {
//! use tollgate_client::{ReserveRequest, Tollgate};
//!
//! let tollgate = Tollgate::new("http://127.0.0.1:7070", "tg_sk_test_…")?;
//! let request = ReserveRequest {
//!     user_id: "u_42".into(),
//!     event: "image.render".into(),
//!     ..ReserveRequest::default()
//! };
//! let image = tollgate
//!     .with_reservation(request, |_reservation| async move {
//!         let image = "…render the image…".to_string();
//!         Ok::<_, std::io::Error>((image, None)) // None: commit the reserved quantity
//!     })
//!     .await;
//! # Ok(()) }
//! ```
//!
//! Retries: calls that are safe to repeat (reads; reserve and track, which always carry an
//! `Idempotency-Key` header reused on every retry; commit, release and extend, idempotent per
//! reservation id) are sent again after a network error, a timeout, `429` or `503`, with
//! exponential backoff and jitter, never sooner than `Retry-After`, up to `max_retries` times.

use rand::distr::{Alphanumeric, SampleString};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::time::Duration;

pub use tollgate_api::{
    CancelRequest, CancelResponse, CheckRequest, CheckResponse, CommitRequest, CommitResponse,
    CreditsResponse, ErrorBody, EventsResponse, ExtendRequest, ExtendResponse, GrantRequest,
    GrantResponse, IdentifyRequest, IdentifyResponse, IfExpired, LedgerResponse, LimitState,
    ReleaseRequest, ReleaseResponse, ReservationResponse, ReserveRequest, ReserveResponse,
    RevokeRequest, RevokeResponse, SubscriptionResponse, SubscriptionUpsertRequest, TrackRequest,
    TrackResponse, UsageResponse,
};

/// Per attempt, unless the builder says otherwise.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Extra attempts of a call that is safe to repeat.
pub const MAX_RETRIES_DEFAULT: u32 = 2;
/// The first backoff; it doubles per attempt, with jitter, up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Characters of a generated idempotency key.
const IDEMPOTENCY_KEY_CHARS: usize = 32;

/// What a call can fail with. An end user over quota is not an error: `allowed: false`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered an error (API.md §2).
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        /// The JSON path of the refused field (`invalid_request`).
        field: Option<String>,
    },
    /// No answer: the server could not be reached, or the attempt timed out.
    #[error("tollgate unreachable: {0}")]
    Network(String),
    /// An answer this client could not read.
    #[error("unreadable answer: {0}")]
    Decode(String),
}

impl Error {
    /// The API error code (`invalid_request`, `not_found`, …), if the server answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// What [`Tollgate::with_reservation`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ReservationError<E> {
    /// The reserve was denied; the answer says which limits refused.
    #[error("over quota: {}", .0.denied_by.join(", "))]
    Denied(Box<ReserveResponse>),
    /// The work failed; its reservation was released.
    #[error("the work failed and its reservation was released: {0}")]
    Work(E),
    #[error(transparent)]
    Tollgate(#[from] Error),
}

/// A Tollgate server and a key.
#[derive(Debug, Clone)]
pub struct Tollgate {
    http: reqwest::Client,
    base: String,
    key: String,
    max_retries: u32,
}

/// Options of a [`Tollgate`] client.
#[derive(Debug)]
pub struct Builder {
    base: String,
    key: String,
    timeout: Duration,
    max_retries: u32,
}

impl Builder {
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }
    pub fn build(self) -> Result<Tollgate, Error> {
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .user_agent(concat!("tollgate-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Network(e.to_string()))?;
        Ok(Tollgate {
            http,
            base: self.base.trim_end_matches('/').to_string(),
            key: self.key,
            max_retries: self.max_retries,
        })
    }
}

/// Whether a call may be sent again after a failure without counting twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    Safe,
    Never,
}

fn idempotency_key() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), IDEMPOTENCY_KEY_CHARS)
}

/// One path segment, percent-encoded.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let doubled = BACKOFF_FIRST
        .saturating_mul(1 << attempt.min(10))
        .min(BACKOFF_MAX);
    let jitter = Duration::from_millis(rand::random_range(0..=doubled.as_millis() as u64 / 2));
    retry_after.unwrap_or_default().max(doubled / 2 + jitter)
}

impl Tollgate {
    pub fn new(base_url: impl Into<String>, secret_key: impl Into<String>) -> Result<Self, Error> {
        Self::builder(base_url, secret_key).build()
    }

    pub fn builder(base_url: impl Into<String>, secret_key: impl Into<String>) -> Builder {
        Builder {
            base: base_url.into(),
            key: secret_key.into(),
            timeout: TIMEOUT_DEFAULT,
            max_retries: MAX_RETRIES_DEFAULT,
        }
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        (repeat, idempotency): (Repeat, Option<&str>),
    ) -> Result<T, Error> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0;
        loop {
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.key);
            if let Some(key) = idempotency {
                request = request.header("Idempotency-Key", key);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let retryable = repeat == Repeat::Safe && attempt < self.max_retries;
            let answer = match request.send().await {
                Ok(answer) => answer,
                Err(_) if retryable => {
                    tokio::time::sleep(backoff(attempt, None)).await;
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(Error::Network(e.without_url().to_string())),
            };
            let status = answer.status();
            let again = status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE;
            if again && retryable {
                let after = answer
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs);
                tokio::time::sleep(backoff(attempt, after)).await;
                attempt += 1;
                continue;
            }
            let bytes = answer
                .bytes()
                .await
                .map_err(|e| Error::Network(e.without_url().to_string()))?;
            if status.is_success() {
                return serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()));
            }
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => Error::Api {
                    status: status.as_u16(),
                    code: b.error.code,
                    message: b.error.message,
                    field: b.error.field,
                },
                Err(_) => Error::Decode(format!("{status} without an error body")),
            });
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.call::<(), T>(Method::GET, path, None, (Repeat::Safe, None))
            .await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        repeat: Repeat,
    ) -> Result<T, Error> {
        self.call(Method::POST, path, Some(body), (repeat, None))
            .await
    }

    /// `POST /v1/reserve`, with an `Idempotency-Key` (the request's, else a fresh one) reused on
    /// every retry.
    pub async fn reserve(&self, mut request: ReserveRequest) -> Result<ReserveResponse, Error> {
        let key = request
            .idempotency_key
            .take()
            .unwrap_or_else(idempotency_key);
        self.call(
            Method::POST,
            "/v1/reserve",
            Some(&request),
            (Repeat::Safe, Some(&key)),
        )
        .await
    }

    pub async fn commit(
        &self,
        reservation_id: &str,
        request: CommitRequest,
    ) -> Result<CommitResponse, Error> {
        let path = format!("/v1/reservations/{}/commit", segment(reservation_id));
        self.post(&path, &request, Repeat::Safe).await
    }

    pub async fn release(
        &self,
        reservation_id: &str,
        request: ReleaseRequest,
    ) -> Result<ReleaseResponse, Error> {
        let path = format!("/v1/reservations/{}/release", segment(reservation_id));
        self.post(&path, &request, Repeat::Safe).await
    }

    pub async fn extend(
        &self,
        reservation_id: &str,
        request: ExtendRequest,
    ) -> Result<ExtendResponse, Error> {
        let path = format!("/v1/reservations/{}/extend", segment(reservation_id));
        self.post(&path, &request, Repeat::Safe).await
    }

    pub async fn get_reservation(
        &self,
        reservation_id: &str,
    ) -> Result<ReservationResponse, Error> {
        self.get(&format!("/v1/reservations/{}", segment(reservation_id)))
            .await
    }

    /// `POST /v1/track`, with an `Idempotency-Key` reused on every retry.
    pub async fn track(&self, mut request: TrackRequest) -> Result<TrackResponse, Error> {
        let key = request
            .idempotency_key
            .take()
            .unwrap_or_else(idempotency_key);
        self.call(
            Method::POST,
            "/v1/track",
            Some(&request),
            (Repeat::Safe, Some(&key)),
        )
        .await
    }

    pub async fn check(&self, request: CheckRequest) -> Result<CheckResponse, Error> {
        self.post("/v1/check", &request, Repeat::Safe).await
    }

    pub async fn usage(&self, user_id: &str) -> Result<UsageResponse, Error> {
        self.get(&format!("/v1/users/{}/usage", segment(user_id)))
            .await
    }

    /// `GET /v1/events` with its query (e.g. `userId=u_42&limit=10`), newest first.
    pub async fn events(&self, query: &str) -> Result<EventsResponse, Error> {
        self.get(&format!("/v1/events?{query}")).await
    }

    pub async fn identify(&self, request: IdentifyRequest) -> Result<IdentifyResponse, Error> {
        self.post("/v1/identify", &request, Repeat::Safe).await
    }

    pub async fn upsert_subscription(
        &self,
        request: SubscriptionUpsertRequest,
    ) -> Result<SubscriptionResponse, Error> {
        self.post("/v1/subscriptions", &request, Repeat::Safe).await
    }

    /// Not retried: a second cancel after the end answers `409 already_canceled`.
    pub async fn cancel_subscription(
        &self,
        request: CancelRequest,
    ) -> Result<CancelResponse, Error> {
        self.post("/v1/subscriptions/cancel", &request, Repeat::Never)
            .await
    }

    pub async fn get_subscription(&self, user_id: &str) -> Result<SubscriptionResponse, Error> {
        self.get(&format!("/v1/subscriptions/{}", segment(user_id)))
            .await
    }

    /// Retried only with an `externalRef` (which grants once).
    pub async fn grant_credits(&self, request: GrantRequest) -> Result<GrantResponse, Error> {
        let repeat = if request.external_ref.is_some() {
            Repeat::Safe
        } else {
            Repeat::Never
        };
        self.post("/v1/credits/grants", &request, repeat).await
    }

    pub async fn revoke_credits(&self, request: RevokeRequest) -> Result<RevokeResponse, Error> {
        self.post("/v1/credits/revoke", &request, Repeat::Safe)
            .await
    }

    pub async fn credits(&self, user_id: &str) -> Result<CreditsResponse, Error> {
        self.get(&format!("/v1/users/{}/credits", segment(user_id)))
            .await
    }

    pub async fn credit_ledger(&self, user_id: &str) -> Result<LedgerResponse, Error> {
        self.get(&format!("/v1/users/{}/credits/ledger", segment(user_id)))
            .await
    }

    /// Reserves, runs `work`, and settles: a denied reserve is [`ReservationError::Denied`] and
    /// `work` never runs; `work`'s `Ok((value, final_quantity))` commits `final_quantity` (the
    /// reserved quantity when `None`) with `ifExpired: record`, so work that outran the TTL
    /// still counts; its `Err` releases the reservation and is returned as
    /// [`ReservationError::Work`]. While `work` runs, the reservation is extended every half
    /// TTL.
    pub async fn with_reservation<F, Fut, T, E>(
        &self,
        request: ReserveRequest,
        work: F,
    ) -> Result<T, ReservationError<E>>
    where
        F: FnOnce(ReserveResponse) -> Fut,
        Fut: Future<Output = Result<(T, Option<u64>), E>>,
        E: std::fmt::Display,
    {
        let ttl = request.ttl_seconds.unwrap_or(60);
        let answer = self.reserve(request).await?;
        let Some(id) = answer.reservation_id.clone().filter(|_| answer.allowed) else {
            return Err(ReservationError::Denied(Box::new(answer)));
        };
        let keeper = {
            let (client, id) = (self.clone(), id.clone());
            tokio::spawn(async move {
                let every = Duration::from_millis(ttl.saturating_mul(500).max(500));
                loop {
                    tokio::time::sleep(every).await;
                    let extend = ExtendRequest {
                        ttl_seconds: Some(ttl),
                    };
                    if client.extend(&id, extend).await.is_err() {
                        return;
                    }
                }
            })
        };
        let outcome = work(answer).await;
        keeper.abort();
        match outcome {
            Ok((value, quantity)) => {
                let commit = CommitRequest {
                    quantity,
                    if_expired: Some(IfExpired::Record),
                    ..CommitRequest::default()
                };
                self.commit(&id, commit).await?;
                Ok(value)
            }
            Err(e) => {
                let release = ReleaseRequest {
                    reason: Some(e.to_string().chars().take(500).collect()),
                    ..ReleaseRequest::default()
                };
                self.release(&id, release).await?;
                Err(ReservationError::Work(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(segment("u_42"), "u_42");
        assert_eq!(segment("a b/c?"), "a%20b%2Fc%3F");
    }

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        assert!(backoff(0, None) <= BACKOFF_FIRST);
        assert!(backoff(3, None) >= BACKOFF_FIRST * 4);
        assert!(backoff(20, None) <= BACKOFF_MAX);
        assert!(backoff(0, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
    }
}
