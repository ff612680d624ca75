//! The background task that forwards committed usage to Stripe Billing Meters.
//!
//! A commit or track of a forwarded event name queues a row in the meter outbox in the same
//! transaction (`procedure::billers::forward_usage`), so usage that happened is never missed.
//! This task leases due rows, posts each to `POST {apiBase}/v1/billing/meter_events`
//! (form-encoded, as Stripe takes it) with `identifier` = the usage event id, so a retry after a
//! lost answer is one meter event at Stripe, and records the outcome: delivered on 2xx; retried
//! with backoff on 429, 5xx, a network failure or a customer not mapped yet; failed on any other
//! 4xx (shown in `GET /v1/integrations/stripe/meter-events`, sent again by its retry route).

use crate::metrics::Metrics;
use jiff::{SignedDuration, Timestamp};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tollgate_api::IntegrationConfig;
use tollgate_core::biller::Biller;
use tollgate_store::{EnvId, MeterAttempt, MeterEventRow, Store};

/// How often the outbox is polled.
pub const FORWARD_POLL: Duration = Duration::from_millis(500);
/// Rows leased per poll.
pub const FORWARD_BATCH_MAX: usize = 100;
/// How long a lease keeps other nodes off a row: longer than one attempt can take.
pub const LEASE_SECONDS: i64 = 60;
/// One attempt's deadline.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff: the first retry after this many seconds, doubling up to the cap.
pub const BACKOFF_FIRST_SECONDS: i64 = 1;
pub const BACKOFF_MAX_SECONDS: i64 = 3600;
/// Received biller events are forgotten after this many days (purged once an hour).
pub const BILLER_EVENT_RETENTION_DAYS: i64 = 30;
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// Characters of a Stripe error answer kept in `lastError`.
const ERROR_CHARS_MAX: usize = 300;

/// Runs until `stop` turns true (or its sender is dropped).
pub async fn run(store: Arc<dyn Store>, metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) {
    let client = match reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(task = "forwarder", error = %e, "no HTTP client; meter forwarding is off");
            return;
        }
    };
    let mut ticker = tokio::time::interval(FORWARD_POLL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_purge: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
        if last_purge.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
            purge(store.as_ref()).await;
            last_purge = Some(tokio::time::Instant::now());
        }
        forward_due(store.as_ref(), &client, &metrics).await;
    }
}

async fn purge(store: &dyn Store) {
    let before = Timestamp::now() - SignedDuration::from_hours(24 * BILLER_EVENT_RETENTION_DAYS);
    match store.purge_biller_events(before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            task = "forwarder",
            purged = n,
            "old biller events forgotten"
        ),
        Err(e) => tracing::warn!(task = "forwarder", error = %e, "purging biller events failed"),
    }
}

/// Sends every due outbox row once; returns how many were delivered.
pub async fn forward_due(store: &dyn Store, client: &reqwest::Client, metrics: &Metrics) -> usize {
    let now = Timestamp::now();
    let lease = now + SignedDuration::from_secs(LEASE_SECONDS);
    let rows = match store
        .claim_meter_events(now, lease, FORWARD_BATCH_MAX)
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(task = "forwarder", error = %e, "reading the meter outbox failed");
            return 0;
        }
    };
    let mut configs: HashMap<EnvId, Option<IntegrationConfig>> = HashMap::new();
    let mut delivered = 0;
    for (row, offset) in rows {
        let config = match configs.get(&row.env) {
            Some(c) => c.clone(),
            None => {
                let c = load_config(store, row.env).await;
                configs.insert(row.env, c.clone());
                c
            }
        };
        let env_now = now + SignedDuration::from_secs(offset);
        let attempt = attempt(store, client, config.as_ref(), &row, env_now).await;
        let outcome = match attempt {
            MeterAttempt::Delivered { .. } => {
                delivered += 1;
                "delivered"
            }
            MeterAttempt::Retry { .. } => "retry",
            MeterAttempt::Failed { .. } => "failed",
        };
        metrics.observe_meter_attempt(outcome);
        if let Err(e) = store
            .finish_meter_event(row.env, &row.event_id, attempt, env_now)
            .await
        {
            // The lease runs out and the row is sent again: same identifier, one meter event.
            tracing::warn!(task = "forwarder", event_id = %row.event_id, error = %e,
                "recording a meter event attempt failed; it is sent again after its lease");
        }
    }
    delivered
}

async fn load_config(store: &dyn Store, env: EnvId) -> Option<IntegrationConfig> {
    match store.integration(env, Biller::Stripe).await {
        Ok(Some(i)) => IntegrationConfig::from_stored(&i.config).ok(),
        _ => None,
    }
}

fn backoff(attempts: u32, env_now: Timestamp, retry_after: Option<i64>) -> Timestamp {
    let doubled = BACKOFF_FIRST_SECONDS.saturating_mul(1_i64 << attempts.min(20));
    let wait = retry_after
        .unwrap_or(0)
        .max(doubled)
        .min(BACKOFF_MAX_SECONDS);
    env_now + SignedDuration::from_secs(wait)
}

/// One attempt to send `row`.
async fn attempt(
    store: &dyn Store,
    client: &reqwest::Client,
    config: Option<&IntegrationConfig>,
    row: &MeterEventRow,
    env_now: Timestamp,
) -> MeterAttempt {
    let retry = |status: Option<u16>, error: String, after: Option<i64>| MeterAttempt::Retry {
        status,
        error,
        next_attempt_at: backoff(row.attempts, env_now, after),
    };
    let forwarding = config.and_then(|c| c.meter_forwarding.as_ref());
    let (Some(m), Some(key)) = (
        forwarding.filter(|m| m.enabled),
        forwarding.and_then(|m| m.api_key.as_deref()),
    ) else {
        return MeterAttempt::Failed {
            status: None,
            error: "meter forwarding is off for this environment; retry it once it is on".into(),
        };
    };
    let subject = tollgate_store::procedure::user_subject(&row.user_id);
    let customer = match store
        .biller_customer_of(row.env, Biller::Stripe, &subject)
        .await
    {
        Ok(Some(c)) => c,
        Ok(None) => {
            let why = format!(
                "no Stripe customer is mapped to user {}; it is sent once one is",
                row.user_id
            );
            return retry(None, why, None);
        }
        Err(e) => return retry(None, format!("storage: {e}"), None),
    };
    // Stripe takes timestamps up to 5 minutes ahead; a test clock may run further.
    let at = row.occurred_at.min(Timestamp::now()).as_second();
    let form = [
        ("event_name", row.meter_event_name.clone()),
        ("payload[stripe_customer_id]", customer),
        ("payload[value]", row.value.to_string()),
        ("identifier", row.event_id.clone()),
        ("timestamp", at.to_string()),
    ];
    let sent = client
        .post(format!("{}/v1/billing/meter_events", m.api_base))
        .bearer_auth(key)
        .form(&form)
        .send()
        .await;
    let answer = match sent {
        Ok(a) => a,
        // Without the URL: it may carry credentials in its userinfo.
        Err(e) => return retry(None, format!("network: {}", e.without_url()), None),
    };
    let status = answer.status();
    let code = status.as_u16();
    if status.is_success() {
        return MeterAttempt::Delivered { status: code };
    }
    let retry_after = answer
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let text = answer.text().await.unwrap_or_default();
    let error: String = stripe_message(&text)
        .chars()
        .take(ERROR_CHARS_MAX)
        .collect();
    if code == 429 || status.is_server_error() {
        retry(Some(code), error, retry_after)
    } else {
        MeterAttempt::Failed {
            status: Some(code),
            error,
        }
    }
}

/// Stripe's `error.message`, else the body as sent.
fn stripe_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_and_honours_retry_after_up_to_an_hour() {
        let t = Timestamp::UNIX_EPOCH;
        let secs = |at: Timestamp| (at - t).get_seconds();
        assert_eq!(secs(backoff(0, t, None)), 1);
        assert_eq!(secs(backoff(3, t, None)), 8);
        assert_eq!(secs(backoff(1, t, Some(30))), 30);
        assert_eq!(secs(backoff(30, t, None)), 3600);
        assert_eq!(secs(backoff(0, t, Some(100_000))), 3600);
    }

    #[test]
    fn stripe_errors_show_their_message() {
        let body = r#"{"error": {"message": "No such customer: 'cus_x'", "type": "invalid_request_error"}}"#;
        assert_eq!(stripe_message(body), "No such customer: 'cus_x'");
        assert_eq!(stripe_message("bad gateway"), "bad gateway");
    }
}
