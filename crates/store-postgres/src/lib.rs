//! The PostgreSQL store: several Tollgate nodes on one database.
//!
//! Every node runs the same procedures as the embedded store (`tollgate_store::procedure`);
//! exactness across nodes comes from the database, never from state cached in a node: each
//! procedure takes advisory locks on the subjects it touches, in one global order, inside its
//! transaction. Each node runs a fixed pool of connections on worker threads (`pool`).

mod analytics;
mod persons;
mod pool;
mod schema;
mod seed;
mod sql;

use async_trait::async_trait;
use jiff::Timestamp;
use pool::Pool;
use sql::{ms, ts, PgTx};
use std::sync::Arc;
use tollgate_core::biller::Biller;
use tollgate_core::input::{AccountId, UserId};
use tollgate_core::plan::PlanDocument;
use tollgate_core::subscription::{
    CancelAt, HistoryEntry, HistoryKind, Subscription, UpsertOutcome, UpsertRequest,
};
use tollgate_store::procedure::{self, MeteringTx};
use tollgate_store::*;

pub use pool::{RECONNECT_BACKOFF_MS, STATEMENT_TIMEOUT_MS, TRANSACTION_RETRIES_MAX};
pub use seed::seed_events;
/// The sweep's statement, for the test of its plan (`tests/contract.rs`).
#[doc(hidden)]
pub use sql::DUE_RESERVATIONS;

/// Connections one node opens by default.
pub const POOL_SIZE_DEFAULT: usize = 8;

/// Applies the schema migrations to the database at `url`; returns how many were applied.
/// Safe to run from several nodes at once.
pub fn migrate(url: &str) -> StoreResult<usize> {
    let mut client = postgres::Client::connect(url, postgres::NoTls)
        .map_err(|e| StoreError::Unavailable(format!("cannot connect to the database: {e}")))?;
    schema::migrate(&mut client)
}

/// What [`migrate`] would apply to the database at `url` (`tollgate migrate --dry-run`).
pub fn schema_status(url: &str) -> StoreResult<tollgate_store::schema::SchemaStatus> {
    let mut client = postgres::Client::connect(url, postgres::NoTls)
        .map_err(|e| StoreError::Unavailable(format!("cannot connect to the database: {e}")))?;
    schema::status(&mut client)
}

/// The PostgreSQL store of one node. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
}

impl PgStore {
    /// Migrates the database at `url` and starts `pool_size` connections.
    pub fn connect(
        url: &str,
        pool_size: usize,
        observer: Arc<dyn StoreObserver>,
    ) -> StoreResult<PgStore> {
        migrate(url)?;
        let pool = Pool::start(url, pool_size, observer)
            .map_err(|e| StoreError::Internal(format!("cannot start database workers: {e}")))?;
        Ok(PgStore { pool })
    }
}

fn env_of(tx: &mut PgTx<'_, '_>, project_id: &str, mode: Mode) -> StoreResult<EnvId> {
    tx.query_opt(
        "SELECT env_id FROM environments WHERE project_id = $1 AND mode = $2",
        &[&project_id, &mode.as_str()],
    )?
    .map(|r| EnvId(r.get(0)))
    .ok_or(StoreError::NotFound)
}

fn insert_project(tx: &mut PgTx<'_, '_>, p: &Project) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO projects (project_id, name, created_at_ms) VALUES ($1, $2, $3)",
        &[&p.project_id, &p.name, &ms(p.created_at)],
    )?;
    for mode in [Mode::Live, Mode::Test] {
        tx.execute(
            "INSERT INTO environments (project_id, mode) VALUES ($1, $2)",
            &[&p.project_id, &mode.as_str()],
        )?;
    }
    Ok(())
}

fn insert_key(tx: &mut PgTx<'_, '_>, k: &NewKey) -> StoreResult<()> {
    let env = env_of(tx, &k.project_id, k.mode)?;
    tx.execute(
        "INSERT INTO api_keys (key_id, env_id, kind, name, prefix, hash, created_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &k.key_id,
            &env.0,
            &k.kind.as_str(),
            &k.name,
            &k.prefix,
            &&k.hash[..],
            &ms(k.created_at),
        ],
    )
    .map(|_| ())
}

#[async_trait]
impl Store for PgStore {
    async fn is_initialized(&self) -> StoreResult<bool> {
        self.pool
            .run(|tx| {
                let r = tx.query_one("SELECT COUNT(*) FROM meta WHERE key = 'admin_token'", &[])?;
                Ok(r.get::<_, i64>(0) > 0)
            })
            .await
    }

    async fn initialize(
        &self,
        admin_token_hash: [u8; 32],
        project: Project,
        keys: Vec<NewKey>,
    ) -> StoreResult<()> {
        self.pool
            .run(move |tx| {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('admin_token', $1)",
                    &[&&admin_token_hash[..]],
                )?;
                insert_project(tx, &project)?;
                keys.iter().try_for_each(|k| insert_key(tx, k))
            })
            .await
    }

    async fn verify_admin(&self, token_hash: [u8; 32]) -> StoreResult<bool> {
        let stored: Option<Vec<u8>> = self
            .pool
            .run(|tx| {
                Ok(tx
                    .query_opt("SELECT value FROM meta WHERE key = 'admin_token'", &[])?
                    .map(|r| r.get(0)))
            })
            .await?;
        // Both sides are hashes of secrets, so a plain comparison leaks nothing useful.
        Ok(stored.as_deref() == Some(&token_hash[..]))
    }

    async fn rotate_admin_token(&self, token_hash: [u8; 32]) -> StoreResult<()> {
        self.pool
            .run(move |tx| {
                let changed = tx.execute(
                    "UPDATE meta SET value = $1 WHERE key = 'admin_token'",
                    &[&&token_hash[..]],
                )?;
                if changed == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            })
            .await
    }

    async fn create_project(&self, project: Project) -> StoreResult<()> {
        self.pool.run(move |tx| insert_project(tx, &project)).await
    }

    async fn list_projects(&self) -> StoreResult<Vec<Project>> {
        self.pool
            .run(|tx| {
                let rows = tx.query(
                    "SELECT project_id, name, created_at_ms FROM projects
                     ORDER BY created_at_ms, project_id",
                    &[],
                )?;
                Ok(rows
                    .iter()
                    .map(|r| Project {
                        project_id: r.get(0),
                        name: r.get(1),
                        created_at: ts(r.get(2)),
                    })
                    .collect())
            })
            .await
    }

    async fn create_key(&self, key: NewKey) -> StoreResult<()> {
        self.pool.run(move |tx| insert_key(tx, &key)).await
    }

    async fn list_keys(&self, project_id: &str) -> StoreResult<Vec<KeyInfo>> {
        let project_id = project_id.to_string();
        self.pool
            .run(move |tx| {
                let exists = tx.query_opt(
                    "SELECT 1 FROM projects WHERE project_id = $1",
                    &[&project_id],
                )?;
                if exists.is_none() {
                    return Err(StoreError::NotFound);
                }
                let rows = tx.query(
                    "SELECT k.key_id, e.project_id, e.mode, k.kind, k.name, k.prefix,
                            k.created_at_ms, k.revoked_at_ms
                     FROM api_keys k JOIN environments e ON e.env_id = k.env_id
                     WHERE e.project_id = $1 ORDER BY k.created_at_ms, k.key_id",
                    &[&project_id],
                )?;
                Ok(rows
                    .iter()
                    .map(|r| KeyInfo {
                        key_id: r.get(0),
                        project_id: r.get(1),
                        mode: Mode::parse(r.get(2)).unwrap_or(Mode::Test),
                        kind: KeyKind::parse(r.get(3)).unwrap_or(KeyKind::Publishable),
                        name: r.get(4),
                        prefix: r.get(5),
                        created_at: ts(r.get(6)),
                        revoked_at: r.get::<_, Option<i64>>(7).map(ts),
                    })
                    .collect())
            })
            .await
    }

    async fn revoke_key(&self, key_id: &str, now: Timestamp) -> StoreResult<()> {
        let key_id = key_id.to_string();
        self.pool
            .run(move |tx| {
                let n = tx.execute(
                    "UPDATE api_keys SET revoked_at_ms = COALESCE(revoked_at_ms, $2)
                     WHERE key_id = $1",
                    &[&key_id, &ms(now)],
                )?;
                if n == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            })
            .await
    }

    async fn authenticate(&self, key_hash: [u8; 32]) -> StoreResult<Option<AuthContext>> {
        self.pool
            .run(move |tx| {
                let Some(r) = tx.query_opt(
                    "SELECT e.env_id, e.project_id, e.mode, k.kind, k.key_id, e.clock_offset_s
                     FROM api_keys k JOIN environments e ON e.env_id = k.env_id
                     WHERE k.hash = $1 AND k.revoked_at_ms IS NULL",
                    &[&&key_hash[..]],
                )?
                else {
                    return Ok(None);
                };
                let mode: String = r.get(2);
                let kind: String = r.get(3);
                Ok(Some(AuthContext {
                    env: EnvId(r.get(0)),
                    project_id: r.get(1),
                    mode: Mode::parse(&mode)
                        .ok_or_else(|| StoreError::Internal(format!("bad mode {mode}")))?,
                    kind: KeyKind::parse(&kind)
                        .ok_or_else(|| StoreError::Internal(format!("bad kind {kind}")))?,
                    key_id: r.get(4),
                    clock_offset_seconds: r.get(5),
                }))
            })
            .await
    }

    async fn advance_clock(&self, env: EnvId, seconds: i64) -> StoreResult<i64> {
        self.pool
            .run(move |tx| {
                tx.query_opt(
                    "UPDATE environments SET clock_offset_s = clock_offset_s + $2
                     WHERE env_id = $1 RETURNING clock_offset_s",
                    &[&env.0, &seconds],
                )?
                .map(|r| r.get(0))
                .ok_or(StoreError::NotFound)
            })
            .await
    }

    async fn put_plans(
        &self,
        env: EnvId,
        document: String,
        now: Timestamp,
    ) -> StoreResult<PutPlansOutcome> {
        self.pool
            .run(move |tx| {
                // One writer of an environment's plan versions at a time, across nodes: the
                // newest version read below is still the newest when the next is inserted.
                tx.lock_subjects(env, &["plans"])?;
                let newest = tx.query_opt(
                    "SELECT version, document = $2 FROM plan_documents WHERE env_id = $1
                     ORDER BY version DESC LIMIT 1",
                    &[&env.0, &document],
                )?;
                let newest: Option<(i64, bool)> = newest.map(|r| (r.get(0), r.get(1)));
                if let Some((version, true)) = newest {
                    return Ok(PutPlansOutcome {
                        version,
                        changed: false,
                    });
                }
                let version = newest.map_or(0, |(v, _)| v) + 1;
                tx.execute(
                    "INSERT INTO plan_documents (env_id, version, document, created_at_ms)
                     VALUES ($1, $2, $3, $4)",
                    &[&env.0, &version, &document, &ms(now)],
                )?;
                Ok(PutPlansOutcome {
                    version,
                    changed: true,
                })
            })
            .await
    }

    async fn get_plans(&self, env: EnvId) -> StoreResult<Option<StoredPlans>> {
        self.get_plans_before(env, i64::MAX).await
    }

    async fn environment_of(&self, project_id: &str, mode: Mode) -> StoreResult<Option<EnvId>> {
        let project_id = project_id.to_string();
        self.pool
            .run(move |tx| {
                Ok(tx
                    .query_opt(
                        "SELECT env_id FROM environments WHERE project_id = $1 AND mode = $2",
                        &[&project_id, &mode.as_str()],
                    )?
                    .map(|r| EnvId(r.get(0))))
            })
            .await
    }

    async fn get_plans_before(&self, env: EnvId, version: i64) -> StoreResult<Option<StoredPlans>> {
        self.pool
            .run(move |tx| {
                let Some(r) = tx.query_opt(
                    "SELECT p.version, p.document, e.project_id, e.mode
                     FROM plan_documents p JOIN environments e ON e.env_id = p.env_id
                     WHERE p.env_id = $1 AND p.version < $2
                     ORDER BY p.version DESC LIMIT 1",
                    &[&env.0, &version],
                )?
                else {
                    return Ok(None);
                };
                Ok(Some(StoredPlans {
                    version: r.get(0),
                    document: r.get(1),
                    project_id: r.get(2),
                    mode: Mode::parse(r.get(3)).unwrap_or(Mode::Test),
                }))
            })
            .await
    }

    async fn plans_version(&self, env: EnvId) -> StoreResult<i64> {
        self.pool
            .run(move |tx| {
                let r = tx.query_one(
                    "SELECT COALESCE(MAX(version), 0)::BIGINT FROM plan_documents
                     WHERE env_id = $1",
                    &[&env.0],
                )?;
                Ok(r.get(0))
            })
            .await
    }

    async fn reserve(&self, cmd: ReserveCommand) -> StoreResult<Idempotent<ReserveOutcome>> {
        self.pool.run(move |tx| procedure::reserve(tx, &cmd)).await
    }

    async fn commit(&self, cmd: CommitCommand) -> StoreResult<CommitOutcome> {
        self.pool.run(move |tx| procedure::commit(tx, &cmd)).await
    }

    async fn release(&self, cmd: ReleaseCommand) -> StoreResult<ReleaseOutcome> {
        self.pool.run(move |tx| procedure::release(tx, &cmd)).await
    }

    async fn extend(&self, cmd: ExtendCommand) -> StoreResult<ExtendOutcome> {
        self.pool.run(move |tx| procedure::extend(tx, &cmd)).await
    }

    async fn get_reservation(
        &self,
        env: EnvId,
        reservation_id: &str,
        now: Timestamp,
    ) -> StoreResult<ReservationView> {
        let id = reservation_id.to_string();
        self.pool
            .run(move |tx| procedure::get_reservation(tx, env, &id, now))
            .await
    }

    async fn track(&self, cmd: TrackCommand) -> StoreResult<Idempotent<TrackOutcome>> {
        self.pool.run(move |tx| procedure::track(tx, &cmd)).await
    }

    async fn identify(&self, cmd: IdentifyCommand) -> StoreResult<IdentifyOutcome> {
        self.pool.run(move |tx| procedure::identify(tx, &cmd)).await
    }

    async fn events(&self, query: EventsQuery) -> StoreResult<Vec<StoredEvent>> {
        self.pool.run(move |tx| sql::list_events(tx, &query)).await
    }

    async fn event(&self, env: EnvId, event_id: String) -> StoreResult<Option<StoredEventDetail>> {
        self.pool
            .run(move |tx| sql::get_event(tx, env, &event_id))
            .await
    }

    async fn analytics(&self, query: AnalyticsQuery) -> StoreResult<Vec<AnalyticsRow>> {
        self.pool
            .run(move |tx| crate::analytics::analytics(tx, &query))
            .await
    }

    async fn capture(&self, cmd: CaptureCommand) -> StoreResult<()> {
        self.pool
            .run(move |tx| crate::analytics::insert_capture(tx, &cmd))
            .await
    }

    async fn revenue_sources(&self, env: EnvId, limit: usize) -> StoreResult<Vec<RevenueSource>> {
        self.pool
            .run(move |tx| crate::analytics::revenue_sources(tx, env, limit))
            .await
    }

    async fn funnel_occurrences(&self, query: FunnelQuery) -> StoreResult<Vec<Occurrence>> {
        self.pool
            .run(move |tx| crate::analytics::funnel_occurrences(tx, &query))
            .await
    }

    async fn check(&self, cmd: CheckCommand) -> StoreResult<CheckOutcome> {
        self.pool.run(move |tx| procedure::check(tx, &cmd)).await
    }

    async fn account_usage(&self, query: AccountUsageQuery) -> StoreResult<AccountUsageOutcome> {
        self.pool
            .run(move |tx| procedure::account_usage(tx, &query))
            .await
    }

    async fn usage(&self, query: UsageQuery) -> StoreResult<UsageOutcome> {
        self.pool.run(move |tx| procedure::usage(tx, &query)).await
    }

    async fn erase_user(&self, cmd: EraseCommand) -> StoreResult<Erased> {
        self.pool
            .run(move |tx| procedure::erase_user(tx, &cmd))
            .await
    }

    async fn purge_logged_text(
        &self,
        env: EnvId,
        retention: jiff::SignedDuration,
        real_now: Timestamp,
        limit: usize,
    ) -> StoreResult<usize> {
        self.pool
            .run(move |tx| persons::purge_logged_text(tx, env, retention, real_now, limit))
            .await
    }

    async fn environments(&self) -> StoreResult<Vec<EnvId>> {
        self.pool.run(persons::environments).await
    }

    async fn expire_due(&self, real_now: Timestamp, ids: IdSeed) -> StoreResult<usize> {
        self.pool
            .run(move |tx| procedure::expire_due(tx, real_now, &ids))
            .await
    }

    async fn grant_credits(&self, cmd: GrantCommand) -> StoreResult<GrantOutcome> {
        self.pool
            .run(move |tx| procedure::credits::grant(tx, &cmd))
            .await
    }

    async fn revoke_credits(&self, cmd: RevokeCommand) -> StoreResult<RevokeOutcome> {
        self.pool
            .run(move |tx| procedure::credits::revoke(tx, &cmd))
            .await
    }

    async fn credits(&self, query: CreditsQuery) -> StoreResult<CreditsOutcome> {
        self.pool
            .run(move |tx| procedure::credits::credits(tx, &query))
            .await
    }

    async fn credit_ledger(&self, query: LedgerQuery) -> StoreResult<Vec<LedgerEntry>> {
        self.pool
            .run(move |tx| procedure::credits::ledger(tx, &query))
            .await
    }

    async fn upsert_subscription(
        &self,
        env: EnvId,
        owner: Owner,
        plans: Arc<PlanDocument>,
        request: UpsertRequest,
        new_id: String,
        now: Timestamp,
    ) -> StoreResult<UpsertOutcome> {
        self.pool
            .run(move |tx| {
                let who = (&owner, &*plans);
                procedure::upsert_subscription(tx, env, who, &request, &new_id, now)
            })
            .await
    }

    async fn get_subscription(
        &self,
        env: EnvId,
        owner: &Owner,
    ) -> StoreResult<Option<Subscription>> {
        let subject = owner.subject();
        self.pool
            .run(move |tx| tx.subscription(env, &subject))
            .await
    }

    async fn subscription_history(
        &self,
        env: EnvId,
        owner: &Owner,
    ) -> StoreResult<Vec<HistoryEntry>> {
        let subject = owner.subject();
        self.pool
            .run(move |tx| {
                let rows = tx.query(
                    "SELECT kind, at_ms, from_plan_id, to_plan_id, source, reason
                     FROM subscription_history WHERE env_id = $1 AND subject = $2
                     ORDER BY seq",
                    &[&env.0, &subject],
                )?;
                Ok(rows
                    .iter()
                    .map(|r| HistoryEntry {
                        kind: HistoryKind::parse(r.get(0)).unwrap_or(HistoryKind::PlanChanged),
                        at: ts(r.get(1)),
                        from_plan_id: r.get(2),
                        to_plan_id: r.get(3),
                        source: r.get(4),
                        reason: r.get(5),
                    })
                    .collect())
            })
            .await
    }

    async fn cancel_subscription(
        &self,
        env: EnvId,
        owner: Owner,
        plans: Arc<PlanDocument>,
        at: CancelAt,
        reason: Option<String>,
        now: Timestamp,
    ) -> StoreResult<(Subscription, HistoryEntry)> {
        self.pool
            .run(move |tx| {
                procedure::cancel_subscription(tx, env, &owner, &plans, at, reason.clone(), now)
            })
            .await
    }

    async fn add_member(
        &self,
        env: EnvId,
        account: AccountId,
        user: UserId,
        plans: Arc<PlanDocument>,
        now: Timestamp,
    ) -> StoreResult<Timestamp> {
        self.pool
            .run(move |tx| procedure::add_member(tx, env, (&account, &user), &plans, now))
            .await
    }

    async fn remove_member(&self, env: EnvId, account: AccountId, user: UserId) -> StoreResult<()> {
        self.pool
            .run(move |tx| procedure::remove_member(tx, env, (&account, &user)))
            .await
    }

    async fn account(
        &self,
        env: EnvId,
        account: AccountId,
        plans: Arc<PlanDocument>,
        now: Timestamp,
    ) -> StoreResult<AccountView> {
        self.pool
            .run(move |tx| procedure::account_view(tx, env, &account, &plans, now))
            .await
    }

    async fn put_integration(
        &self,
        env: EnvId,
        biller: Biller,
        config: String,
        forwarding: Vec<(String, String)>,
        endpoint_id: String,
        now: Timestamp,
    ) -> StoreResult<Integration> {
        let integration = Integration {
            env,
            biller,
            endpoint_id,
            config,
            updated_at: now,
        };
        self.pool
            .run(move |tx| procedure::billers::put_integration(tx, &integration, &forwarding))
            .await
    }

    async fn integration(&self, env: EnvId, biller: Biller) -> StoreResult<Option<Integration>> {
        self.pool.run(move |tx| tx.integration(env, biller)).await
    }

    async fn endpoint(
        &self,
        biller: Biller,
        endpoint_id: &str,
    ) -> StoreResult<Option<EndpointTarget>> {
        let id = endpoint_id.to_string();
        self.pool.run(move |tx| tx.endpoint(biller, &id)).await
    }

    async fn put_biller_customer(
        &self,
        env: EnvId,
        biller: Biller,
        customer_id: String,
        owner: Owner,
        now: Timestamp,
    ) -> StoreResult<()> {
        let subject = owner.subject();
        self.pool
            .run(move |tx| tx.put_biller_customer(env, biller, &customer_id, &subject, now))
            .await
    }

    async fn biller_customer_of(
        &self,
        env: EnvId,
        biller: Biller,
        subject: &str,
    ) -> StoreResult<Option<String>> {
        let subject = subject.to_string();
        self.pool
            .run(move |tx| tx.biller_customer_of(env, biller, &subject))
            .await
    }

    async fn apply_biller_event(&self, cmd: BillerEventCommand) -> StoreResult<BillerEventOutcome> {
        self.pool
            .run(move |tx| procedure::billers::apply_event(tx, &cmd))
            .await
    }

    async fn record_biller_failure(&self, env: EnvId, event: StoredBillerEvent) -> StoreResult<()> {
        self.pool
            .run(move |tx| tx.put_biller_event(env, &event))
            .await
    }

    async fn biller_events(&self, query: BillerEventsQuery) -> StoreResult<Vec<StoredBillerEvent>> {
        self.pool.run(move |tx| tx.biller_events(&query)).await
    }

    async fn biller_event(
        &self,
        env: EnvId,
        biller: Biller,
        event_id: &str,
    ) -> StoreResult<Option<StoredBillerEvent>> {
        let id = event_id.to_string();
        self.pool
            .run(move |tx| tx.biller_event(env, biller, &id))
            .await
    }

    async fn purge_biller_events(&self, before: Timestamp) -> StoreResult<usize> {
        self.pool
            .run(move |tx| tx.purge_biller_events(before))
            .await
    }

    async fn claim_meter_events(
        &self,
        real_now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(MeterEventRow, i64)>> {
        self.pool
            .run(move |tx| tx.claim_meter_events(real_now, lease_until, limit))
            .await
    }

    async fn finish_meter_event(
        &self,
        env: EnvId,
        event_id: &str,
        attempt: MeterAttempt,
        now: Timestamp,
    ) -> StoreResult<()> {
        let id = event_id.to_string();
        self.pool
            .run(move |tx| tx.finish_meter_event(env, &id, &attempt, now))
            .await
    }

    async fn meter_events(&self, query: MeterEventsQuery) -> StoreResult<Vec<MeterEventRow>> {
        self.pool.run(move |tx| tx.meter_events(&query)).await
    }

    async fn retry_meter_event(
        &self,
        env: EnvId,
        event_id: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        let id = event_id.to_string();
        let found = self
            .pool
            .run(move |tx| tx.retry_meter_event(env, &id, now))
            .await?;
        if found {
            Ok(())
        } else {
            Err(StoreError::NotFound)
        }
    }

    async fn settings(&self, env: EnvId) -> StoreResult<Option<StoredSettings>> {
        self.pool.run(move |tx| tx.settings(env)).await
    }

    async fn put_settings(&self, env: EnvId, document: String, now: Timestamp) -> StoreResult<()> {
        self.pool
            .run(move |tx| tx.put_settings(env, &document, now))
            .await
    }

    async fn token_secret(
        &self,
        env: EnvId,
        candidate: String,
        now: Timestamp,
    ) -> StoreResult<String> {
        self.pool
            .run(move |tx| tx.token_secret(env, &candidate, now))
            .await
    }

    async fn ready(&self) -> Result<(), String> {
        self.pool
            .run(|tx| tx.query_one("SELECT 1", &[]).map(|_| ()))
            .await
            .map_err(|_| "the database is unreachable".to_string())
    }

    fn queue_depth(&self) -> usize {
        self.pool.queue_depth()
    }

    fn shared_by_nodes(&self) -> bool {
        true
    }

    async fn shutdown(&self) {}
}
