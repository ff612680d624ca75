//! The retention purge: a logged prompt or response (API.md §12, `promptLogging`) is kept
//! `promptRetentionDays` on its environment's clock, then cleared; its usage event stays with
//! every count and field but the text.
//!
//! It runs by itself from the sweeper task every [`PROMPT_PURGE_INTERVAL_MS`] over every
//! environment, and right after `POST /v1/test/clock/advance` over the environment whose clock
//! moved, so that a test sees a purge as soon as its clock passes a retention. Each environment
//! is purged in steps of [`LOGGED_TEXT_BATCH_MAX`] rows, each its own transaction, until a step
//! comes back short: a day of events past retention never holds the writer for long. With
//! several nodes every node purges; a row is cleared once whichever node gets to it.

use crate::settings_cache::SettingsCache;
use jiff::{SignedDuration, Timestamp};
use tollgate_store::{EnvId, Store, StoreError, LOGGED_TEXT_BATCH_MAX};

/// How often the sweeper purges logged text past retention, in milliseconds.
pub const PROMPT_PURGE_INTERVAL_MS: u64 = 60_000;

const SECONDS_PER_DAY: i64 = 24 * 3600;

/// Purges one environment's logged text past its retention at `real_now` (plus its clock's
/// offset); returns how many usage events and reservations were cleared.
pub async fn purge_environment(
    store: &dyn Store,
    settings: &SettingsCache,
    env: EnvId,
    real_now: Timestamp,
) -> Result<usize, StoreError> {
    let days = match settings.get(store, env).await {
        Ok(s) => s.prompt_retention_days,
        Err(e) => return Err(StoreError::Internal(format!("settings: {e}"))),
    };
    let retention = SignedDuration::from_secs(i64::from(days) * SECONDS_PER_DAY);
    let mut total = 0;
    loop {
        let cleared = store
            .purge_logged_text(env, retention, real_now, LOGGED_TEXT_BATCH_MAX)
            .await?;
        total += cleared;
        if cleared < LOGGED_TEXT_BATCH_MAX {
            return Ok(total);
        }
    }
}

/// Purges every environment; a failure is logged and the next run tries again.
pub async fn purge_all(store: &dyn Store, settings: &SettingsCache) -> usize {
    let envs = match store.environments().await {
        Ok(envs) => envs,
        Err(e) => {
            tracing::warn!(task = "sweeper", error = %e, "listing environments for the prompt purge failed");
            return 0;
        }
    };
    let mut total = 0;
    for env in envs {
        match purge_environment(store, settings, env, Timestamp::now()).await {
            Ok(n) => total += n,
            Err(e) => {
                tracing::warn!(task = "sweeper", env = env.0, error = %e, "prompt purge failed; retrying next run")
            }
        }
    }
    if total > 0 {
        tracing::debug!(
            task = "sweeper",
            cleared = total,
            "logged prompts and responses past retention cleared"
        );
    }
    total
}
