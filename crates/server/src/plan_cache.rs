//! The parsed plan document of each environment, kept in memory.
//!
//! Every metering request needs its environment's plans; parsing the stored JSON (time zones,
//! globs) on each request would be waste. An entry is loaded lazily from the store on first use
//! and replaced when `PUT /v1/plans` stores a new version. Only a newer version ever replaces an
//! entry, so a slow lazy load cannot overwrite a fresh PUT. An entry older than
//! [`PLAN_CACHE_CHECK_MS`] is checked against the store's newest version (one cheap query), so
//! a document applied through another node is in force here within that time.

use crate::error::ApiError;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tollgate_core::plan::PlanDocument;
use tollgate_store::{EnvId, Store};

/// One environment's plans: the core form for decisions, the normalized JSON for readers.
#[derive(Debug)]
pub struct CachedPlans {
    /// 0 while the environment has no document.
    pub version: i64,
    pub document: Arc<PlanDocument>,
    pub json: serde_json::Value,
}

impl CachedPlans {
    /// An environment that never stored a document.
    pub fn empty() -> Self {
        Self {
            version: 0,
            document: Arc::new(PlanDocument::empty()),
            json: tollgate_api::empty_plan_document(),
        }
    }

    /// Parses a stored document; the store only holds documents that passed this check.
    pub fn parse(version: i64, text: &str) -> Result<Self, ApiError> {
        let (json, document) = tollgate_api::plan_document_from_json(text).map_err(|e| {
            ApiError::Internal(format!("stored plan document v{version} is invalid: {e}"))
        })?;
        Ok(Self {
            version,
            document: Arc::new(document),
            json,
        })
    }
}

/// How long a cached plan document is used before its version is checked again, in
/// milliseconds.
pub const PLAN_CACHE_CHECK_MS: u64 = 1_000;

#[derive(Debug, Default)]
pub struct PlanCache {
    entries: RwLock<HashMap<EnvId, (Arc<CachedPlans>, Instant)>>,
}

impl PlanCache {
    /// The plans of `env`, loaded from the store on first use.
    pub async fn get(&self, store: &dyn Store, env: EnvId) -> Result<Arc<CachedPlans>, ApiError> {
        let stale = match self.lookup(env) {
            Some((hit, checked))
                if checked.elapsed() < Duration::from_millis(PLAN_CACHE_CHECK_MS) =>
            {
                return Ok(hit);
            }
            Some((hit, _)) => Some(hit),
            None => None,
        };
        if let Some(hit) = stale {
            if store.plans_version(env).await? == hit.version {
                self.touch(env, hit.version);
                return Ok(hit);
            }
        }
        let loaded = match store.get_plans(env).await? {
            None => CachedPlans::empty(),
            Some(stored) => CachedPlans::parse(stored.version, &stored.document)?,
        };
        Ok(self.install(env, loaded))
    }

    fn lookup(&self, env: EnvId) -> Option<(Arc<CachedPlans>, Instant)> {
        // A poisoned lock only means a panic elsewhere; the map itself is always whole.
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.get(&env).cloned()
    }

    /// Marks the entry of `env` as checked now, if it is still `version`.
    fn touch(&self, env: EnvId, version: i64) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if let Some((plans, checked)) = entries.get_mut(&env) {
            if plans.version == version {
                *checked = Instant::now();
            }
        }
    }

    /// Keeps `plans` unless the cache already holds a version at least as new; returns the
    /// entry now in force.
    pub fn install(&self, env: EnvId, plans: CachedPlans) -> Arc<CachedPlans> {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        match entries.get_mut(&env) {
            Some((current, checked)) if current.version >= plans.version => {
                *checked = Instant::now();
                current.clone()
            }
            _ => {
                let plans = Arc::new(plans);
                entries.insert(env, (plans.clone(), Instant::now()));
                plans
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_newer_versions_replace_an_entry() {
        let cache = PlanCache::default();
        let env = EnvId(1);
        let v2 = CachedPlans::parse(2, r#"{"plans":[{"id":"b"}]}"#).unwrap();
        cache.install(env, v2);
        let v1 = CachedPlans::parse(1, r#"{"plans":[{"id":"a"}]}"#).unwrap();
        let kept = cache.install(env, v1);
        assert_eq!(kept.version, 2);
        assert_eq!(cache.lookup(env).unwrap().0.document.plans[0].id, "b");
    }
}
