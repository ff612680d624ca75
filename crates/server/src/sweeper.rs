//! The background task that expires reservations nobody committed or released, and, on a
//! coarser interval, clears logged prompts and responses past their retention
//! ([`crate::retention`]).
//!
//! Reads already treat an overdue reservation as expired; the sweeper is what returns its hold
//! to the counters and records the `expired` event. Each tick it sweeps in batches of
//! [`SWEEP_BATCH_MAX`] until a batch comes back short, so a backlog drains at once.

use crate::retention::{self, PROMPT_PURGE_INTERVAL_MS};
use crate::settings_cache::SettingsCache;
use jiff::Timestamp;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tollgate_store::{Store, SWEEP_BATCH_MAX};

/// Runs until `stop` turns true (or its sender is dropped).
pub async fn run(
    store: Arc<dyn Store>,
    settings: Arc<SettingsCache>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    tracing::info!(
        task = "sweeper",
        interval_ms = interval.as_millis() as u64,
        purge_interval_ms = PROMPT_PURGE_INTERVAL_MS,
        "sweeper started"
    );
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut purge_ticker = tokio::time::interval(Duration::from_millis(PROMPT_PURGE_INTERVAL_MS));
    purge_ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                sweep(store.as_ref()).await;
            }
            _ = purge_ticker.tick() => {
                retention::purge_all(store.as_ref(), &settings).await;
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    tracing::info!(task = "sweeper", "sweeper stopped");
}

/// Expires everything overdue now; returns how many reservations expired.
pub async fn sweep(store: &dyn Store) -> usize {
    let mut total = 0;
    loop {
        match store
            .expire_due(Timestamp::now(), crate::ids::new_seed())
            .await
        {
            Ok(expired) => {
                total += expired;
                if expired < SWEEP_BATCH_MAX {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(task = "sweeper", error = %e, "sweep failed; retrying next tick");
                break;
            }
        }
    }
    if total > 0 {
        tracing::debug!(task = "sweeper", expired = total, "reservations expired");
    }
    total
}
