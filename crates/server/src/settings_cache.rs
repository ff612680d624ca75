//! Each environment's settings (API.md §12) as this node last read them, so that the routes
//! that consult them on every call (the origin check of `cors`, and reserve, track, commit and
//! release, which need `promptLogging` and `recordDenials`) cost one store read per
//! environment per [`SETTINGS_CACHE_MS`], not one per request.
//!
//! A `PATCH /v1/settings` forgets the environment's entry on the node that answered it, so the
//! change is in force there at once; other nodes sharing the database read it again within
//! [`SETTINGS_CACHE_MS`] (a call they answer in that second may still log a prompt, or record a
//! denial, under the settings before the change).

use crate::error::ApiError;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tollgate_api::Settings;
use tollgate_store::{EnvId, Store};

/// How long an environment's settings are used before the store is asked again, in ms.
pub const SETTINGS_CACHE_MS: u64 = 1_000;

/// The environment's settings as stored (defaults until a document is stored).
pub async fn load(store: &dyn Store, env: EnvId) -> Result<Settings, ApiError> {
    match store.settings(env).await? {
        None => Ok(Settings::default()),
        Some(stored) => Settings::from_stored(&stored.document)
            .map_err(|e| ApiError::Internal(format!("stored settings do not load: {e}"))),
    }
}

/// Each environment's settings as last read, with when.
#[derive(Debug, Default)]
pub struct SettingsCache {
    entries: RwLock<HashMap<EnvId, (Arc<Settings>, Instant)>>,
}

impl SettingsCache {
    /// The environment's settings, read at most [`SETTINGS_CACHE_MS`] ago.
    pub async fn get(&self, store: &dyn Store, env: EnvId) -> Result<Arc<Settings>, ApiError> {
        if let Some((s, read)) = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&env)
        {
            if read.elapsed() < Duration::from_millis(SETTINGS_CACHE_MS) {
                return Ok(s.clone());
            }
        }
        let read = Instant::now();
        let settings = Arc::new(load(store, env).await?);
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(env, (settings.clone(), read));
        Ok(settings)
    }

    /// Drops an environment's entry (after `PATCH /v1/settings` on this node).
    pub fn forget(&self, env: EnvId) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&env);
    }
}
