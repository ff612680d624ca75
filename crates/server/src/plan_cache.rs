//! The parsed plan document of each environment, kept in memory.
//!
//! Every metering request needs its environment's plans; parsing the stored JSON (time zones,
//! globs) on each request would be waste. An entry is loaded lazily from the store on first use
//! and replaced when `PUT /v1/plans` stores a new version. Only a newer version ever replaces an
//! entry, so a slow lazy load cannot overwrite a fresh PUT. An entry older than
//! [`PLAN_CACHE_CHECK_MS`] is checked against the store's newest version (one cheap query), so
//! a document applied through another node is in force here within that time.
//!
//! One bad row never takes an environment down. A stored version this node cannot load (a
//! time zone its database does not know, a field from a newer build) leaves the node serving
//! the newest version it could load; a node that has none in memory (after a restart, or a
//! second node) looks back through the stored versions, which are all kept, for the newest one
//! that loads. The problem is logged once per version, counted in `/metrics` and named by
//! `/readyz` until a newer version loads. Only when no stored version loads at all do the
//! environment's requests that need plans answer `503`.

use crate::error::ApiError;
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tollgate_api::FieldError;
use tollgate_core::plan::PlanDocument;
use tollgate_store::{EnvId, Mode, Store, StoredPlans};

/// How long a cached plan document is used before its version is checked again, in
/// milliseconds.
pub const PLAN_CACHE_CHECK_MS: u64 = 1_000;

/// Most stored versions a node reads, newest first, looking for one it can load when the
/// newest does not: each read parses up to a whole document, so the search is bounded.
pub const PLAN_VERSIONS_TRIED_MAX: usize = 20;

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

    /// Reads a stored document back. It was judged when it was accepted and no input limit
    /// applies again; the error says what this build cannot represent.
    pub fn load(version: i64, text: &str) -> Result<Self, FieldError> {
        let loaded = tollgate_api::plan_document_from_stored(text)?;
        Ok(Self {
            version,
            document: Arc::new(loaded.document),
            json: loaded.json,
        })
    }
}

/// The newest stored plan document of an environment, which this node cannot load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadProblem {
    pub project_id: String,
    pub mode: Mode,
    /// The version that did not load.
    pub stored_version: i64,
    /// The version served instead; 0 when no stored version loads here.
    pub served_version: i64,
    /// Why it did not load: the field at fault and what is wrong with it.
    pub reason: String,
}

#[derive(Debug, Clone)]
struct Entry {
    /// The version in force on this node; `None` when no stored version loads.
    plans: Option<Arc<CachedPlans>>,
    /// A newer stored version than `plans` that does not load.
    problem: Option<LoadProblem>,
    checked: Instant,
}

impl Entry {
    fn loaded(plans: Arc<CachedPlans>) -> Self {
        Self {
            plans: Some(plans),
            problem: None,
            checked: Instant::now(),
        }
    }

    fn served_version(&self) -> i64 {
        self.plans.as_ref().map_or(0, |p| p.version)
    }

    /// The newest stored version this node has read, whether or not it loaded.
    fn seen_version(&self) -> i64 {
        let failed = self.problem.as_ref().map_or(0, |p| p.stored_version);
        self.served_version().max(failed)
    }

    fn served(&self) -> Result<Arc<CachedPlans>, ApiError> {
        if let Some(plans) = &self.plans {
            return Ok(plans.clone());
        }
        // The reason was logged when the version failed; the client gets what to do.
        Err(ApiError::NotReady(
            "no stored plan document of this environment loads on this server (GET /readyz \
             names the problem); nothing was applied: apply the plan document again"
                .into(),
        ))
    }
}

#[derive(Debug)]
pub struct PlanCache {
    entries: RwLock<HashMap<EnvId, Entry>>,
    metrics: Arc<Metrics>,
}

impl Default for PlanCache {
    fn default() -> Self {
        Self::new(Arc::new(Metrics::new()))
    }
}

impl PlanCache {
    /// A cache that reports plan documents that do not load to `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            entries: RwLock::default(),
            metrics,
        }
    }

    /// The plans in force for `env`, loaded from the store on first use.
    pub async fn get(&self, store: &dyn Store, env: EnvId) -> Result<Arc<CachedPlans>, ApiError> {
        let known = self.lookup(env);
        if let Some(entry) = &known {
            if entry.checked.elapsed() < Duration::from_millis(PLAN_CACHE_CHECK_MS) {
                return entry.served();
            }
            if store.plans_version(env).await? == entry.seen_version() {
                self.touch(env, entry.seen_version());
                return entry.served();
            }
        }
        let in_memory = known.and_then(|e| e.plans);
        let loaded = self.load(store, env, in_memory).await?;
        self.install_entry(env, loaded).served()
    }

    /// The newest stored versions that do not load here, one per environment, for `/readyz`.
    pub fn problems(&self) -> Vec<LoadProblem> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let mut problems: Vec<LoadProblem> =
            entries.values().filter_map(|e| e.problem.clone()).collect();
        problems.sort_by(|a, b| {
            (&a.project_id, a.mode.as_str()).cmp(&(&b.project_id, b.mode.as_str()))
        });
        problems
    }

    /// Reads the newest stored version of `env` and, if it does not load, the newest one
    /// that does (never older than `in_memory`, which it keeps serving otherwise).
    async fn load(
        &self,
        store: &dyn Store,
        env: EnvId,
        in_memory: Option<Arc<CachedPlans>>,
    ) -> Result<Entry, ApiError> {
        let Some(newest) = store.get_plans(env).await? else {
            return Ok(Entry::loaded(Arc::new(CachedPlans::empty())));
        };
        let error = match CachedPlans::load(newest.version, &newest.document) {
            Ok(plans) => return Ok(Entry::loaded(Arc::new(plans))),
            Err(error) => error,
        };
        let plans = self
            .fall_back(store, env, newest.version, in_memory)
            .await?;
        let problem = LoadProblem {
            project_id: newest.project_id,
            mode: newest.mode,
            stored_version: newest.version,
            served_version: plans.as_ref().map_or(0, |p| p.version),
            reason: error.to_string(),
        };
        Ok(Entry {
            plans,
            problem: Some(problem),
            checked: Instant::now(),
        })
    }

    /// The newest version below `below` that loads, looking no further back than
    /// `in_memory`'s version (then `in_memory` is the answer).
    async fn fall_back(
        &self,
        store: &dyn Store,
        env: EnvId,
        below: i64,
        in_memory: Option<Arc<CachedPlans>>,
    ) -> Result<Option<Arc<CachedPlans>>, ApiError> {
        let floor = in_memory.as_ref().map_or(0, |p| p.version);
        let mut below = below;
        // The newest version was the first one tried.
        for _ in 1..PLAN_VERSIONS_TRIED_MAX {
            let Some(StoredPlans {
                version, document, ..
            }) = store.get_plans_before(env, below).await?
            else {
                break;
            };
            if version <= floor {
                break;
            }
            match CachedPlans::load(version, &document) {
                Ok(plans) => return Ok(Some(Arc::new(plans))),
                Err(error) => {
                    tracing::debug!(version, %error, "older plan document does not load either");
                    below = version;
                }
            }
        }
        Ok(in_memory)
    }

    fn lookup(&self, env: EnvId) -> Option<Entry> {
        // A poisoned lock only means a panic elsewhere; the map itself is always whole.
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.get(&env).cloned()
    }

    /// Marks the entry of `env` as checked now, if it has still seen `version`.
    fn touch(&self, env: EnvId, version: i64) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.get_mut(&env) {
            if entry.seen_version() == version {
                entry.checked = Instant::now();
            }
        }
    }

    /// Keeps `plans`, just stored through this node, unless the cache already holds a
    /// version at least as new; returns the plans now in force.
    pub fn install(&self, env: EnvId, plans: CachedPlans) -> Arc<CachedPlans> {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let entry = entries
            .entry(env)
            .or_insert_with(|| Entry::loaded(Arc::new(CachedPlans::empty())));
        entry.checked = Instant::now();
        match &entry.plans {
            Some(current) if current.version >= plans.version => return current.clone(),
            _ => {}
        }
        let plans = Arc::new(plans);
        entry.plans = Some(plans.clone());
        if entry
            .problem
            .as_ref()
            .is_some_and(|p| p.stored_version <= plans.version)
        {
            entry.problem = None;
        }
        self.gauge_problems(&entries);
        plans
    }

    /// Keeps `loaded` unless the cache has seen a newer version meanwhile (or as new, and
    /// serves one at least as new); logs and counts a problem the first time it is seen.
    /// Returns the entry now in force.
    fn install_entry(&self, env: EnvId, loaded: Entry) -> Entry {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let current = entries.get(&env);
        let keep_current = current.is_some_and(|c| {
            (c.seen_version(), c.served_version())
                >= (loaded.seen_version(), loaded.served_version())
        });
        if let Some(current) = current.filter(|_| keep_current) {
            return current.clone();
        }
        let known_before = current.and_then(|c| c.problem.as_ref());
        if let Some(problem) = &loaded.problem {
            if known_before.map(|p| p.stored_version) != Some(problem.stored_version) {
                tracing::warn!(
                    project = %problem.project_id,
                    environment = problem.mode.as_str(),
                    stored_version = problem.stored_version,
                    served_version = problem.served_version,
                    reason = %problem.reason,
                    "stored plan document does not load on this node; serving the newest \
                     version that does (see /readyz)"
                );
                self.metrics.plan_load_failed();
            }
        }
        entries.insert(env, loaded.clone());
        self.gauge_problems(&entries);
        loaded
    }

    fn gauge_problems(&self, entries: &HashMap<EnvId, Entry>) {
        let problems = entries.values().filter(|e| e.problem.is_some()).count();
        self.metrics.set_plan_documents_not_loaded(problems);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_newer_versions_replace_an_entry() {
        let cache = PlanCache::default();
        let env = EnvId(1);
        let v2 = CachedPlans::load(2, r#"{"plans":[{"id":"b"}]}"#).unwrap();
        cache.install(env, v2);
        let v1 = CachedPlans::load(1, r#"{"plans":[{"id":"a"}]}"#).unwrap();
        let kept = cache.install(env, v1);
        assert_eq!(kept.version, 2);
        let entry = cache.lookup(env).unwrap();
        assert_eq!(entry.plans.unwrap().document.plans[0].id, "b");
    }

    fn problem(stored_version: i64, served_version: i64) -> LoadProblem {
        LoadProblem {
            project_id: "prj_1".into(),
            mode: Mode::Test,
            stored_version,
            served_version,
            reason: "plans[0].limits[0].window.timezone: unknown time zone".into(),
        }
    }

    #[test]
    fn a_problem_lasts_until_a_newer_version_is_in_force() {
        let cache = PlanCache::default();
        let env = EnvId(1);
        let v1 = Arc::new(CachedPlans::load(1, r#"{"plans":[{"id":"a"}]}"#).unwrap());
        let degraded = Entry {
            plans: Some(v1),
            problem: Some(problem(2, 1)),
            checked: Instant::now(),
        };
        let in_force = cache.install_entry(env, degraded);
        assert_eq!((in_force.served_version(), in_force.seen_version()), (1, 2));
        assert_eq!(cache.problems(), vec![problem(2, 1)]);
        // A slower load that saw only version 1 does not hide the problem.
        let stale = Entry::loaded(Arc::new(
            CachedPlans::load(1, r#"{"plans":[{"id":"a"}]}"#).unwrap(),
        ));
        assert_eq!(cache.install_entry(env, stale).seen_version(), 2);
        assert_eq!(cache.problems().len(), 1);
        // Version 3, applied through this node, is in force and ends the problem.
        let v3 = CachedPlans::load(3, r#"{"plans":[{"id":"c"}]}"#).unwrap();
        assert_eq!(cache.install(env, v3).version, 3);
        assert!(cache.problems().is_empty());
    }

    #[test]
    fn no_loadable_version_answers_unavailable() {
        let entry = Entry {
            plans: None,
            problem: Some(problem(1, 0)),
            checked: Instant::now(),
        };
        assert!(matches!(entry.served(), Err(ApiError::NotReady(_))));
    }
}
