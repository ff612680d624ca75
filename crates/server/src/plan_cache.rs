//! The parsed plan document of each environment, kept in memory.
//!
//! Every metering request needs its environment's plans; parsing the stored JSON (time zones,
//! globs) on each request would be waste. An entry is loaded lazily from the store on first use
//! and replaced when `PUT /v1/plans` stores a new version. Only a newer version ever replaces an
//! entry, so a slow lazy load cannot overwrite a fresh PUT.

use crate::error::ApiError;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
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

#[derive(Debug, Default)]
pub struct PlanCache {
    entries: RwLock<HashMap<EnvId, Arc<CachedPlans>>>,
}

impl PlanCache {
    /// The plans of `env`, loaded from the store on first use.
    pub async fn get(&self, store: &dyn Store, env: EnvId) -> Result<Arc<CachedPlans>, ApiError> {
        if let Some(hit) = self.lookup(env) {
            return Ok(hit);
        }
        let loaded = match store.get_plans(env).await? {
            None => CachedPlans::empty(),
            Some(stored) => CachedPlans::parse(stored.version, &stored.document)?,
        };
        Ok(self.install(env, loaded))
    }

    fn lookup(&self, env: EnvId) -> Option<Arc<CachedPlans>> {
        // A poisoned lock only means a panic elsewhere; the map itself is always whole.
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.get(&env).cloned()
    }

    /// Keeps `plans` unless the cache already holds a version at least as new; returns the
    /// entry now in force.
    pub fn install(&self, env: EnvId, plans: CachedPlans) -> Arc<CachedPlans> {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        match entries.get(&env) {
            Some(current) if current.version >= plans.version => current.clone(),
            _ => {
                let plans = Arc::new(plans);
                entries.insert(env, plans.clone());
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
        assert_eq!(cache.lookup(env).unwrap().document.plans[0].id, "b");
    }
}
