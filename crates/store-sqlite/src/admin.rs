//! [`SqliteStore`]: the `Store` trait on SQLite, plus the install, key, plan and subscription
//! operations (metering lives in `metering`).

use crate::checkpointer::Checkpointer;
use crate::priority::Background;
use crate::sql::SqliteTx;
use crate::sync::Fence;
use crate::writer::Writer;
use crate::{internal, ms, open_writer, ts, Readers, DATABASE_FILE, LOCK_FILE};
use async_trait::async_trait;
use jiff::Timestamp;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tollgate_core::biller::Biller;
use tollgate_core::input::{AccountId, UserId};
use tollgate_core::plan::PlanDocument;
use tollgate_core::subscription::{
    CancelAt, HistoryEntry, HistoryKind, Subscription, UpsertOutcome, UpsertRequest,
};
use tollgate_store::procedure::{self, MeteringTx};
use tollgate_store::*;

/// The embedded store. Cheap to clone; all clones share one writer and one reader pool.
#[derive(Clone)]
pub struct SqliteStore {
    pub(crate) writer: Writer,
    pub(crate) readers: Arc<Readers>,
    checkpointer: Arc<Checkpointer>,
    /// The writer's, its syncer's and the checkpointer's threads (see [`crate::priority`]).
    pub(crate) background: Arc<Background>,
    /// An exclusive lock on `DIR/tollgate.lock` for as long as the store lives: one process
    /// per data dir. The OS drops it when the process dies, even by `kill -9`.
    _lock: Arc<std::fs::File>,
}

impl SqliteStore {
    /// Opens (creating if needed) `DIR/tollgate.db`, migrates it and starts the writer.
    pub fn open(data_dir: &Path, observer: Arc<dyn StoreObserver>) -> StoreResult<SqliteStore> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let lock = lock_data_dir(data_dir)?;
        let path = data_dir.join(DATABASE_FILE);
        let conn = open_writer(&path)?;
        let restart = Arc::new(AtomicBool::new(false));
        let fence = Arc::new(Fence::default());
        let wal = data_dir.join(format!("{DATABASE_FILE}-wal"));
        let background = Arc::new(Background::default());
        let writer = Writer::start(
            conn,
            &wal,
            observer,
            restart.clone(),
            fence.clone(),
            background.clone(),
        )
        .map_err(|e| StoreError::Internal(format!("cannot start the writer: {e}")))?;
        let checkpointer = Checkpointer::start(&path, restart, fence, background.clone())?;
        Ok(SqliteStore {
            writer,
            background,
            checkpointer: Arc::new(checkpointer),
            readers: Arc::new(Readers::new(path)),
            _lock: Arc::new(lock),
        })
    }
}

pub(crate) fn lock_data_dir(data_dir: &Path) -> StoreResult<std::fs::File> {
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Unavailable(format!(
            "another Tollgate process is using {}; the embedded store has one writer",
            data_dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Unavailable(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

fn env_of(conn: &Connection, project_id: &str, mode: Mode) -> StoreResult<EnvId> {
    conn.prepare_cached("SELECT env_id FROM environments WHERE project_id = ?1 AND mode = ?2")
        .and_then(|mut s| {
            s.query_row(params![project_id, mode.as_str()], |r| r.get(0))
                .optional()
        })
        .map_err(internal)?
        .map(EnvId)
        .ok_or(StoreError::NotFound)
}

fn insert_project(conn: &Connection, p: &Project) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO projects (project_id, name, created_at_ms) VALUES (?1, ?2, ?3)",
        params![p.project_id, p.name, ms(p.created_at)],
    )
    .map_err(internal)?;
    for mode in [Mode::Live, Mode::Test] {
        conn.execute(
            "INSERT INTO environments (project_id, mode) VALUES (?1, ?2)",
            params![p.project_id, mode.as_str()],
        )
        .map_err(internal)?;
    }
    Ok(())
}

fn insert_key(conn: &Connection, k: &NewKey) -> StoreResult<()> {
    let env = env_of(conn, &k.project_id, k.mode)?;
    conn.execute(
        "INSERT INTO api_keys (key_id, env_id, kind, name, prefix, hash, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            k.key_id,
            env.0,
            k.kind.as_str(),
            k.name,
            k.prefix,
            &k.hash[..],
            ms(k.created_at)
        ],
    )
    .map(|_| ())
    .map_err(internal)
}

#[async_trait]
impl Store for SqliteStore {
    async fn is_initialized(&self) -> StoreResult<bool> {
        self.readers
            .read(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM meta WHERE key = 'admin_token'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n > 0)
                .map_err(internal)
            })
            .await
    }

    async fn initialize(
        &self,
        admin_token_hash: [u8; 32],
        project: Project,
        keys: Vec<NewKey>,
    ) -> StoreResult<()> {
        self.writer
            .execute(move |c| {
                c.execute(
                    "INSERT INTO meta (key, value) VALUES ('admin_token', ?1)",
                    params![&admin_token_hash[..]],
                )
                .map_err(internal)?;
                insert_project(c, &project)?;
                keys.iter().try_for_each(|k| insert_key(c, k))
            })
            .await
    }

    async fn verify_admin(&self, token_hash: [u8; 32]) -> StoreResult<bool> {
        let stored: Option<Vec<u8>> = self
            .readers
            .read(|c| {
                c.query_row(
                    "SELECT value FROM meta WHERE key = 'admin_token'",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(internal)
            })
            .await?;
        // Both sides are hashes of secrets, so a plain comparison leaks nothing useful.
        Ok(stored.as_deref() == Some(&token_hash[..]))
    }

    async fn rotate_admin_token(&self, token_hash: [u8; 32]) -> StoreResult<()> {
        self.writer
            .execute(move |c| {
                let changed = c
                    .execute(
                        "UPDATE meta SET value = ?1 WHERE key = 'admin_token'",
                        params![&token_hash[..]],
                    )
                    .map_err(internal)?;
                if changed == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            })
            .await
    }

    async fn create_project(&self, project: Project) -> StoreResult<()> {
        self.writer
            .execute(move |c| insert_project(c, &project))
            .await
    }

    async fn list_projects(&self) -> StoreResult<Vec<Project>> {
        self.readers
            .read(|c| {
                let mut st = c
                    .prepare_cached(
                        "SELECT project_id, name, created_at_ms FROM projects ORDER BY created_at_ms, project_id",
                    )
                    .map_err(internal)?;
                let rows = st
                    .query_map([], |r| {
                        Ok(Project {
                            project_id: r.get(0)?,
                            name: r.get(1)?,
                            created_at: ts(r.get(2)?),
                        })
                    })
                    .map_err(internal)?;
                rows.collect::<Result<_, _>>().map_err(internal)
            })
            .await
    }

    async fn create_key(&self, key: NewKey) -> StoreResult<()> {
        self.writer.execute(move |c| insert_key(c, &key)).await
    }

    async fn list_keys(&self, project_id: &str) -> StoreResult<Vec<KeyInfo>> {
        let project_id = project_id.to_string();
        self.readers
            .read(move |c| {
                let exists: i64 = c
                    .query_row(
                        "SELECT COUNT(*) FROM projects WHERE project_id = ?1",
                        params![project_id],
                        |r| r.get(0),
                    )
                    .map_err(internal)?;
                if exists == 0 {
                    return Err(StoreError::NotFound);
                }
                let mut st = c
                    .prepare_cached(
                        "SELECT k.key_id, e.project_id, e.mode, k.kind, k.name, k.prefix,
                                k.created_at_ms, k.revoked_at_ms
                         FROM api_keys k JOIN environments e ON e.env_id = k.env_id
                         WHERE e.project_id = ?1 ORDER BY k.created_at_ms, k.key_id",
                    )
                    .map_err(internal)?;
                let rows = st
                    .query_map(params![project_id], |r| {
                        let mode: String = r.get(2)?;
                        let kind: String = r.get(3)?;
                        Ok(KeyInfo {
                            key_id: r.get(0)?,
                            project_id: r.get(1)?,
                            mode: Mode::parse(&mode).unwrap_or(Mode::Test),
                            kind: KeyKind::parse(&kind).unwrap_or(KeyKind::Publishable),
                            name: r.get(4)?,
                            prefix: r.get(5)?,
                            created_at: ts(r.get(6)?),
                            revoked_at: r.get::<_, Option<i64>>(7)?.map(ts),
                        })
                    })
                    .map_err(internal)?;
                rows.collect::<Result<_, _>>().map_err(internal)
            })
            .await
    }

    async fn revoke_key(&self, key_id: &str, now: Timestamp) -> StoreResult<()> {
        let key_id = key_id.to_string();
        self.writer
            .execute(move |c| {
                let n = c
                    .execute(
                        "UPDATE api_keys SET revoked_at_ms = COALESCE(revoked_at_ms, ?2)
                         WHERE key_id = ?1",
                        params![key_id, ms(now)],
                    )
                    .map_err(internal)?;
                if n == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            })
            .await
    }

    async fn authenticate(&self, key_hash: [u8; 32]) -> StoreResult<Option<AuthContext>> {
        self.readers
            .read(move |c| {
                c.prepare_cached(
                    "SELECT e.env_id, e.project_id, e.mode, k.kind, k.key_id, e.clock_offset_s
                     FROM api_keys k JOIN environments e ON e.env_id = k.env_id
                     WHERE k.hash = ?1 AND k.revoked_at_ms IS NULL",
                )
                .and_then(|mut st| {
                    st.query_row(params![&key_hash[..]], |r| {
                        let mode: String = r.get(2)?;
                        let kind: String = r.get(3)?;
                        Ok((r.get(0)?, r.get(1)?, mode, kind, r.get(4)?, r.get(5)?))
                    })
                    .optional()
                })
                .map_err(internal)?
                .map(|(env, project_id, mode, kind, key_id, offset)| {
                    Ok(AuthContext {
                        env: EnvId(env),
                        project_id,
                        mode: Mode::parse(&mode)
                            .ok_or_else(|| StoreError::Internal(format!("bad mode {mode}")))?,
                        kind: KeyKind::parse(&kind)
                            .ok_or_else(|| StoreError::Internal(format!("bad kind {kind}")))?,
                        key_id,
                        clock_offset_seconds: offset,
                    })
                })
                .transpose()
            })
            .await
    }

    async fn advance_clock(&self, env: EnvId, seconds: i64) -> StoreResult<i64> {
        self.writer
            .execute(move |c| {
                c.query_row(
                    "UPDATE environments SET clock_offset_s = clock_offset_s + ?2
                     WHERE env_id = ?1 RETURNING clock_offset_s",
                    params![env.0, seconds],
                    |r| r.get(0),
                )
                .optional()
                .map_err(internal)?
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
        // The single writer makes the comparison with the newest version and the insert one
        // atomic step.
        self.writer
            .execute(move |c| {
                let newest: Option<(i64, bool)> = c
                    .query_row(
                        "SELECT version, document = ?2 FROM plan_documents WHERE env_id = ?1
                         ORDER BY version DESC LIMIT 1",
                        params![env.0, document],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()
                    .map_err(internal)?;
                if let Some((version, true)) = newest {
                    return Ok(PutPlansOutcome {
                        version,
                        changed: false,
                    });
                }
                let version = newest.map_or(0, |(v, _)| v) + 1;
                c.execute(
                    "INSERT INTO plan_documents (env_id, version, document, created_at_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![env.0, version, document, ms(now)],
                )
                .map_err(internal)?;
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
        self.readers
            .read(move |c| {
                c.query_row(
                    "SELECT env_id FROM environments WHERE project_id = ?1 AND mode = ?2",
                    params![project_id, mode.as_str()],
                    |r| r.get(0).map(EnvId),
                )
                .optional()
                .map_err(internal)
            })
            .await
    }

    async fn get_plans_before(&self, env: EnvId, version: i64) -> StoreResult<Option<StoredPlans>> {
        self.readers
            .read(move |c| {
                c.query_row(
                    "SELECT p.version, p.document, e.project_id, e.mode
                     FROM plan_documents p JOIN environments e ON e.env_id = p.env_id
                     WHERE p.env_id = ?1 AND p.version < ?2
                     ORDER BY p.version DESC LIMIT 1",
                    params![env.0, version],
                    |r| {
                        let mode: String = r.get(3)?;
                        Ok(StoredPlans {
                            version: r.get(0)?,
                            document: r.get(1)?,
                            project_id: r.get(2)?,
                            mode: Mode::parse(&mode).unwrap_or(Mode::Test),
                        })
                    },
                )
                .optional()
                .map_err(internal)
            })
            .await
    }

    async fn plans_version(&self, env: EnvId) -> StoreResult<i64> {
        self.readers
            .read(move |c| {
                c.prepare_cached(
                    "SELECT COALESCE(MAX(version), 0) FROM plan_documents WHERE env_id = ?1",
                )
                .and_then(|mut s| s.query_row(params![env.0], |r| r.get(0)))
                .map_err(internal)
            })
            .await
    }

    async fn reserve(&self, cmd: ReserveCommand) -> StoreResult<Idempotent<ReserveOutcome>> {
        self.writer
            .execute(move |c| procedure::reserve(&mut SqliteTx(c), &cmd))
            .await
    }

    async fn commit(&self, cmd: CommitCommand) -> StoreResult<CommitOutcome> {
        self.writer
            .execute(move |c| procedure::commit(&mut SqliteTx(c), &cmd))
            .await
    }

    async fn release(&self, cmd: ReleaseCommand) -> StoreResult<ReleaseOutcome> {
        self.writer
            .execute(move |c| procedure::release(&mut SqliteTx(c), &cmd))
            .await
    }

    async fn extend(&self, cmd: ExtendCommand) -> StoreResult<ExtendOutcome> {
        self.writer
            .execute(move |c| procedure::extend(&mut SqliteTx(c), &cmd))
            .await
    }

    async fn get_reservation(
        &self,
        env: EnvId,
        reservation_id: &str,
        now: Timestamp,
    ) -> StoreResult<ReservationView> {
        let id = reservation_id.to_string();
        self.readers
            .read(move |c| procedure::get_reservation(&mut SqliteTx(c), env, &id, now))
            .await
    }

    async fn track(&self, cmd: TrackCommand) -> StoreResult<Idempotent<TrackOutcome>> {
        self.writer
            .execute(move |c| procedure::track(&mut SqliteTx(c), &cmd))
            .await
    }

    async fn events(&self, query: EventsQuery) -> StoreResult<Vec<StoredEvent>> {
        self.readers
            .read(move |c| crate::sql::list_events(c, &query))
            .await
    }

    async fn event(&self, env: EnvId, event_id: String) -> StoreResult<Option<StoredEventDetail>> {
        self.readers
            .read(move |c| crate::sql::get_event(c, env, &event_id))
            .await
    }

    async fn analytics(&self, query: AnalyticsQuery) -> StoreResult<Vec<AnalyticsRow>> {
        self.readers
            .read(move |c| crate::analytics::analytics(c, &query))
            .await
    }

    async fn capture(&self, cmd: CaptureCommand) -> StoreResult<()> {
        self.writer
            .execute(move |c| crate::analytics::insert_capture(c, &cmd))
            .await
    }

    async fn revenue_sources(&self, env: EnvId, limit: usize) -> StoreResult<Vec<RevenueSource>> {
        self.readers
            .read(move |c| crate::analytics::revenue_sources(c, env, limit))
            .await
    }

    async fn funnel_occurrences(&self, query: FunnelQuery) -> StoreResult<Vec<Occurrence>> {
        self.readers
            .read(move |c| crate::analytics::funnel_occurrences(c, &query))
            .await
    }

    async fn identify(&self, cmd: IdentifyCommand) -> StoreResult<IdentifyOutcome> {
        self.writer
            .execute(move |c| procedure::identify(&mut SqliteTx(c), &cmd))
            .await
    }

    async fn check(&self, cmd: CheckCommand) -> StoreResult<CheckOutcome> {
        self.readers
            .read(move |c| procedure::check(&mut SqliteTx(c), &cmd))
            .await
    }

    async fn account_usage(&self, query: AccountUsageQuery) -> StoreResult<AccountUsageOutcome> {
        self.readers
            .read(move |c| procedure::account_usage(&mut SqliteTx(c), &query))
            .await
    }

    async fn usage(&self, query: UsageQuery) -> StoreResult<UsageOutcome> {
        self.readers
            .read(move |c| procedure::usage(&mut SqliteTx(c), &query))
            .await
    }

    async fn erase_user(&self, cmd: EraseCommand) -> StoreResult<Erased> {
        self.writer
            .execute(move |c| procedure::erase_user(&mut SqliteTx(c), &cmd))
            .await
    }

    async fn purge_logged_text(
        &self,
        env: EnvId,
        retention: jiff::SignedDuration,
        real_now: Timestamp,
        limit: usize,
    ) -> StoreResult<usize> {
        self.writer
            .execute(move |c| crate::persons::purge_logged_text(c, env, retention, real_now, limit))
            .await
    }

    async fn environments(&self) -> StoreResult<Vec<EnvId>> {
        self.readers.read(crate::persons::environments).await
    }

    async fn expire_due(&self, real_now: Timestamp, ids: IdSeed) -> StoreResult<usize> {
        self.writer
            .execute(move |c| procedure::expire_due(&mut SqliteTx(c), real_now, &ids))
            .await
    }

    async fn grant_credits(&self, cmd: GrantCommand) -> StoreResult<GrantOutcome> {
        self.writer
            .execute(move |c| procedure::credits::grant(&mut SqliteTx(c), &cmd))
            .await
    }

    async fn revoke_credits(&self, cmd: RevokeCommand) -> StoreResult<RevokeOutcome> {
        self.writer
            .execute(move |c| procedure::credits::revoke(&mut SqliteTx(c), &cmd))
            .await
    }

    async fn credits(&self, query: CreditsQuery) -> StoreResult<CreditsOutcome> {
        self.readers
            .read(move |c| procedure::credits::credits(&mut SqliteTx(c), &query))
            .await
    }

    async fn credit_ledger(&self, query: LedgerQuery) -> StoreResult<Vec<LedgerEntry>> {
        self.readers
            .read(move |c| procedure::credits::ledger(&mut SqliteTx(c), &query))
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
        self.writer
            .execute(move |c| {
                procedure::upsert_subscription(
                    &mut SqliteTx(c),
                    env,
                    (&owner, &plans),
                    &request,
                    &new_id,
                    now,
                )
            })
            .await
    }

    async fn get_subscription(
        &self,
        env: EnvId,
        owner: &Owner,
    ) -> StoreResult<Option<Subscription>> {
        let subject = owner.subject();
        self.readers
            .read(move |c| SqliteTx(c).subscription(env, &subject))
            .await
    }

    async fn subscription_history(
        &self,
        env: EnvId,
        owner: &Owner,
    ) -> StoreResult<Vec<HistoryEntry>> {
        let subject = owner.subject();
        self.readers
            .read(move |c| {
                let mut st = c
                    .prepare_cached(
                        "SELECT kind, at_ms, from_plan_id, to_plan_id, source, reason
                         FROM subscription_history WHERE env_id = ?1 AND subject = ?2
                         ORDER BY seq",
                    )
                    .map_err(internal)?;
                let rows = st
                    .query_map(params![env.0, subject], |r| {
                        let kind: String = r.get(0)?;
                        Ok(HistoryEntry {
                            kind: HistoryKind::parse(&kind).unwrap_or(HistoryKind::PlanChanged),
                            at: ts(r.get(1)?),
                            from_plan_id: r.get(2)?,
                            to_plan_id: r.get(3)?,
                            source: r.get(4)?,
                            reason: r.get(5)?,
                        })
                    })
                    .map_err(internal)?;
                rows.collect::<Result<_, _>>().map_err(internal)
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
        self.writer
            .execute(move |c| {
                procedure::cancel_subscription(
                    &mut SqliteTx(c),
                    env,
                    &owner,
                    &plans,
                    at,
                    reason.clone(),
                    now,
                )
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
        self.writer
            .execute(move |c| {
                procedure::add_member(&mut SqliteTx(c), env, (&account, &user), &plans, now)
            })
            .await
    }

    async fn remove_member(&self, env: EnvId, account: AccountId, user: UserId) -> StoreResult<()> {
        self.writer
            .execute(move |c| procedure::remove_member(&mut SqliteTx(c), env, (&account, &user)))
            .await
    }

    async fn account(
        &self,
        env: EnvId,
        account: AccountId,
        plans: Arc<PlanDocument>,
        now: Timestamp,
    ) -> StoreResult<AccountView> {
        self.readers
            .read(move |c| procedure::account_view(&mut SqliteTx(c), env, &account, &plans, now))
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
        self.writer
            .execute(move |c| {
                procedure::billers::put_integration(&mut SqliteTx(c), &integration, &forwarding)
            })
            .await
    }

    async fn integration(&self, env: EnvId, biller: Biller) -> StoreResult<Option<Integration>> {
        self.readers
            .read(move |c| SqliteTx(c).integration(env, biller))
            .await
    }

    async fn endpoint(
        &self,
        biller: Biller,
        endpoint_id: &str,
    ) -> StoreResult<Option<EndpointTarget>> {
        let id = endpoint_id.to_string();
        self.readers
            .read(move |c| SqliteTx(c).endpoint(biller, &id))
            .await
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
        self.writer
            .execute(move |c| {
                SqliteTx(c).put_biller_customer(env, biller, &customer_id, &subject, now)
            })
            .await
    }

    async fn biller_customer_of(
        &self,
        env: EnvId,
        biller: Biller,
        subject: &str,
    ) -> StoreResult<Option<String>> {
        let subject = subject.to_string();
        self.readers
            .read(move |c| SqliteTx(c).biller_customer_of(env, biller, &subject))
            .await
    }

    async fn apply_biller_event(&self, cmd: BillerEventCommand) -> StoreResult<BillerEventOutcome> {
        self.writer
            .execute(move |c| procedure::billers::apply_event(&mut SqliteTx(c), &cmd))
            .await
    }

    async fn record_biller_failure(&self, env: EnvId, event: StoredBillerEvent) -> StoreResult<()> {
        self.writer
            .execute(move |c| SqliteTx(c).put_biller_event(env, &event))
            .await
    }

    async fn biller_events(&self, query: BillerEventsQuery) -> StoreResult<Vec<StoredBillerEvent>> {
        self.readers
            .read(move |c| SqliteTx(c).biller_events(&query))
            .await
    }

    async fn biller_event(
        &self,
        env: EnvId,
        biller: Biller,
        event_id: &str,
    ) -> StoreResult<Option<StoredBillerEvent>> {
        let id = event_id.to_string();
        self.readers
            .read(move |c| SqliteTx(c).biller_event(env, biller, &id))
            .await
    }

    async fn purge_biller_events(&self, before: Timestamp) -> StoreResult<usize> {
        self.writer
            .execute(move |c| SqliteTx(c).purge_biller_events(before))
            .await
    }

    async fn claim_meter_events(
        &self,
        real_now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(MeterEventRow, i64)>> {
        self.writer
            .execute(move |c| SqliteTx(c).claim_meter_events(real_now, lease_until, limit))
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
        self.writer
            .execute(move |c| SqliteTx(c).finish_meter_event(env, &id, &attempt, now))
            .await
    }

    async fn meter_events(&self, query: MeterEventsQuery) -> StoreResult<Vec<MeterEventRow>> {
        self.readers
            .read(move |c| SqliteTx(c).meter_events(&query))
            .await
    }

    async fn retry_meter_event(
        &self,
        env: EnvId,
        event_id: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        let id = event_id.to_string();
        let found = self
            .writer
            .execute(move |c| SqliteTx(c).retry_meter_event(env, &id, now))
            .await?;
        if found {
            Ok(())
        } else {
            Err(StoreError::NotFound)
        }
    }

    async fn settings(&self, env: EnvId) -> StoreResult<Option<StoredSettings>> {
        self.readers.read(move |c| SqliteTx(c).settings(env)).await
    }

    async fn put_settings(&self, env: EnvId, document: String, now: Timestamp) -> StoreResult<()> {
        self.writer
            .execute(move |c| SqliteTx(c).put_settings(env, &document, now))
            .await
    }

    async fn token_secret(
        &self,
        env: EnvId,
        candidate: String,
        now: Timestamp,
    ) -> StoreResult<String> {
        self.writer
            .execute(move |c| SqliteTx(c).token_secret(env, &candidate, now))
            .await
    }

    async fn ready(&self) -> Result<(), String> {
        if let Some(reason) = self.writer.fenced() {
            return Err(reason);
        }
        self.readers
            .read(|c| {
                c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                    .map_err(internal)
            })
            .await
            .map_err(|_| "the database cannot be read".to_string())?;
        self.writer.execute(|_| Ok(())).await.map_err(|_| {
            self.writer
                .fenced()
                .unwrap_or_else(|| "the database writer does not answer".to_string())
        })
    }

    fn queue_depth(&self) -> usize {
        self.writer.queue_depth()
    }

    async fn shutdown(&self) {
        self.writer.stop().await;
        self.checkpointer.stop();
    }
}
