//! The hot-path engine (`TOLLGATE_ENGINE=1`): metering decided from memory, each write made
//! durable by one append to a command log, the SQL tables filled behind from that log.
//!
//! Four threads share the work:
//! - the **engine** owns the decision state ([`state::State`]) and runs the metering
//!   procedures on it through [`state::MemTx`], the same procedures SQLite runs; each command's
//!   writes become [`op::Op`]s, encoded as one log record and appended (buffered) to the log;
//!   after a batch of commands it writes the batch to the log file and hands it to
//! - the **syncer**, which `fdatasync`s the log and only then answers the batch's callers and
//!   passes its records on to
//! - the **projection** (the SQLite store's writer thread), which applies the records to the
//!   tables in large transactions, each writing the log position it reached (`engine_log`);
//! - the SQLite store's syncer and checkpointer do for the tables what they always did.
//!
//! **Commands the engine does not carry yet** (see `state`) run on SQLite, as before the
//! engine: the engine stops, waits until the projection has applied every record written,
//! the command runs on the SQLite store, and the engine starts again with its state emptied
//! (to be loaded again from the tables on use). Writes that are not metering (plans, keys,
//! subscriptions, accounts, credits, billers) run that way too; reads that are not the
//! engine's (events, ledger, subscriptions, accounts) wait until the projection has applied
//! every record written before they arrived, so a caller always sees its own answered writes.
//!
//! **Startup** applies the log after the tables' position, then starts with an empty state.
//! A torn or corrupt tail of the log is cut (nothing before it is lost: records are answered
//! only once synced, in order).

mod op;
mod project;
mod state;

use crate::admin::SqliteStore;
use crate::priority::BACKGROUND_NICE;
use crate::sql::SqliteTx;
use crate::{internal, open_reader};
use async_trait::async_trait;
use jiff::Timestamp;
use project::Projector;
use rusqlite::Connection;
use state::{MemTx, State};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as smpsc, Arc};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tollgate_core::biller::Biller;
use tollgate_core::input::{AccountId, UserId};
use tollgate_core::plan::PlanDocument;
use tollgate_core::subscription::{
    CancelAt, HistoryEntry, Subscription, UpsertOutcome, UpsertRequest,
};
use tollgate_log::{LogOptions, LogWriter, SyncPoint};
use tollgate_store::procedure;
use tollgate_store::*;

pub(crate) use op::{decode, Op};

/// The command log's directory inside a data dir.
pub const LOG_DIR: &str = "log";
/// Most commands the engine runs before writing their records to the log.
pub const ENGINE_BATCH_MAX: usize = 1024;
/// Most records the projection applies in one SQLite transaction.
pub const PROJECTION_BATCH_MAX: usize = 8192;
/// How long the projection gathers records before applying them, in milliseconds.
pub const PROJECTION_GATHER_MS: u64 = 5;
/// How long a read waits for the projection to reach the writes answered before it arrived.
pub const PROJECTION_WAIT_MS: u64 = 10_000;

/// Applies every record of the log in `data_dir` that the tables do not hold yet. Runs at every
/// open of the data dir, with or without the engine, so a log left by an engine is never lost.
pub async fn catch_up_log(store: &SqliteStore, data_dir: &Path) -> StoreResult<u64> {
    let dir = data_dir.join(LOG_DIR);
    let applied = store.writer.execute(applied_lsn).await?;
    if !dir.exists() {
        return Ok(applied);
    }
    let records = tollgate_log::read_after(&dir, applied).map_err(log_error)?;
    let mut batch: Vec<(u64, Vec<Op>)> = Vec::new();
    let mut last = applied;
    for record in records {
        let record = record.map_err(log_error)?;
        last = record.lsn;
        batch.push((record.lsn, decode(record.version, &record.payload)?));
        if batch.len() >= PROJECTION_BATCH_MAX {
            project(store, Arc::new(std::mem::take(&mut batch))).await?;
        }
    }
    if !batch.is_empty() {
        project(store, Arc::new(batch)).await?;
    }
    Ok(last)
}

/// Applies records copied out of a command log (by a backup) to the tables of `conn` after the
/// position they hold, in one transaction, and sets that position to 0: the tables then hold
/// every record, and the data dir they go to starts a new log at record 1. Returns how many
/// records were applied; `Unavailable` if the copy misses records the tables do not hold.
pub(crate) fn fold_records(
    conn: &mut Connection,
    records: Vec<tollgate_log::Record>,
) -> StoreResult<u64> {
    let applied = applied_lsn(conn)?;
    let mut last = applied;
    let mut ops = Vec::new();
    for record in records.into_iter().filter(|r| r.lsn > applied) {
        if record.lsn != last + 1 {
            return Err(StoreError::Unavailable(format!(
                "the command log copy jumps from record {last} to {}",
                record.lsn
            )));
        }
        last = record.lsn;
        ops.extend(decode(record.version, &record.payload)?);
    }
    let tx = conn.transaction().map_err(internal)?;
    let mut projector = Projector::new(SqliteTx(&tx));
    for op in &ops {
        projector.op(op)?;
    }
    projector.finish()?;
    tx.execute("UPDATE engine_log SET applied_lsn = 0 WHERE id = 1", [])
        .map_err(internal)?;
    tx.commit().map_err(internal)?;
    Ok(last - applied)
}

fn log_error(e: tollgate_log::LogError) -> StoreError {
    StoreError::Unavailable(format!("command log: {e}"))
}

fn applied_lsn(c: &Connection) -> StoreResult<u64> {
    c.query_row("SELECT applied_lsn FROM engine_log WHERE id = 1", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|v| v.max(0) as u64)
    .map_err(internal)
}

/// Applies records to the tables in one transaction, with the position they reach.
async fn project(store: &SqliteStore, batch: Arc<Vec<(u64, Vec<Op>)>>) -> StoreResult<()> {
    let Some(last) = batch.last().map(|(lsn, _)| *lsn) else {
        return Ok(());
    };
    store
        .writer
        .execute(move |c| {
            let mut projector = Projector::new(SqliteTx(c));
            for (_, ops) in batch.iter() {
                for op in ops {
                    projector.op(op)?;
                }
            }
            projector.finish()?;
            c.prepare_cached("UPDATE engine_log SET applied_lsn = ?1 WHERE id = 1")
                .and_then(|mut s| s.execute([last as i64]))
                .map_err(internal)?;
            Ok(())
        })
        .await
}

/// What the async side and the engine threads share.
struct Shared {
    /// The newest record written to the log (not necessarily synced yet).
    written: AtomicU64,
    /// The newest record the tables hold.
    applied: watch::Sender<u64>,
    /// A sync of the log failed: nothing more is written until a restart.
    fenced: AtomicBool,
    /// Commands waiting for the engine.
    depth: AtomicU64,
    /// Metering commands the engine answered from memory, and those it ran on SQLite.
    carried: AtomicU64,
    on_sql: AtomicU64,
}

/// The engine, stopped: where the log stands, and how to start it again.
struct Paused {
    lsn: u64,
    resume: Option<smpsc::Sender<()>>,
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Some(r) = self.resume.take() {
            let _ = r.send(());
        }
    }
}

enum Answer<T> {
    Done(StoreResult<T>),
    /// Run it on SQLite once the projection has reached `Paused::lsn`; a write also holds the
    /// engine stopped until then.
    OnSql(Paused),
}

trait Job: Send {
    /// Runs the command on the engine's state.
    fn run(&mut self, tx: &mut MemTx<'_>);
    /// Answers with the run's result (once its records are durable, for a write).
    fn answer(self: Box<Self>, durable: Result<(), StoreError>);
    fn on_sql(self: Box<Self>, paused: Paused);
    /// The run's error means its writes must be undone.
    fn failed(&self) -> bool;
}

struct Command<T, F> {
    f: F,
    value: Option<StoreResult<T>>,
    reply: oneshot::Sender<Answer<T>>,
}

impl<T, F> Job for Command<T, F>
where
    T: Send + 'static,
    F: FnMut(&mut MemTx<'_>) -> StoreResult<T> + Send,
{
    fn run(&mut self, tx: &mut MemTx<'_>) {
        self.value = Some((self.f)(tx));
    }

    fn answer(self: Box<Self>, durable: Result<(), StoreError>) {
        let value = match durable {
            Ok(()) => self.value.unwrap_or_else(|| {
                Err(StoreError::Internal(
                    "a command ran without an answer".into(),
                ))
            }),
            Err(e) => Err(e),
        };
        let _ = self.reply.send(Answer::Done(value));
    }

    fn on_sql(self: Box<Self>, paused: Paused) {
        let _ = self.reply.send(Answer::OnSql(paused));
    }

    fn failed(&self) -> bool {
        matches!(
            &self.value,
            Some(Err(StoreError::Internal(_)
                | StoreError::Unavailable(_)
                | StoreError::OutcomeUnknown(_)))
        )
    }
}

enum Msg {
    Write(Box<dyn Job>),
    Read(Box<dyn Job>),
    /// Stop the engine until the `Paused` is dropped, then empty the state.
    Pause(oneshot::Sender<Paused>),
    Stop(oneshot::Sender<()>),
}

/// A batch on its way to the syncer.
struct Batch {
    sync: Option<SyncPoint>,
    jobs: Vec<Box<dyn Job>>,
    records: Vec<(u64, Vec<Op>)>,
    done: Option<oneshot::Sender<()>>,
}

/// The embedded store with the hot-path engine in front of its tables.
#[derive(Clone)]
pub struct EngineStore {
    sql: SqliteStore,
    tx: smpsc::SyncSender<Msg>,
    shared: Arc<Shared>,
}

impl EngineStore {
    /// Opens the data dir like [`SqliteStore::open`], applies the log's unapplied tail, and starts
    /// the engine. Must run inside a Tokio runtime.
    pub async fn open(data_dir: &Path, observer: Arc<dyn StoreObserver>) -> StoreResult<Self> {
        let sql = SqliteStore::open(data_dir, observer)?;
        let dir = data_dir.join(LOG_DIR);
        let applied = catch_up_log(&sql, data_dir).await?;
        let (log, recovered) = LogWriter::open(&dir, LogOptions::default()).map_err(log_error)?;
        if let Some(cut) = &recovered.cut {
            tracing::warn!(
                segment = %cut.segment.display(),
                offset = cut.offset,
                bytes = cut.bytes,
                reason = %cut.reason,
                "cut the command log's torn tail (no answered write is lost: answers leave after their record is synced)"
            );
        }
        if recovered.last_lsn < applied {
            return Err(StoreError::Unavailable(format!(
                "the command log in {} ends at record {} but the tables hold records up to {applied}; \
                 the log was truncated or replaced",
                dir.display(),
                recovered.last_lsn
            )));
        }
        let (applied_tx, _) = watch::channel(applied);
        let shared = Arc::new(Shared {
            written: AtomicU64::new(recovered.last_lsn),
            applied: applied_tx,
            fenced: AtomicBool::new(false),
            depth: AtomicU64::new(0),
            carried: AtomicU64::new(0),
            on_sql: AtomicU64::new(0),
        });
        let db = open_reader(&sql.readers.path).map_err(internal)?;
        let (tx, rx) = smpsc::sync_channel(WRITER_QUEUE_MAX);
        let (sync_tx, sync_rx) = smpsc::channel::<Batch>();
        let (proj_tx, proj_rx) = smpsc::channel::<Vec<(u64, Vec<Op>)>>();
        let engine = Engine {
            state: State::default(),
            db,
            log,
            rx,
            sync_tx,
            shared: shared.clone(),
            buf: Vec::new(),
        };
        spawn("tollgate-engine", move || engine.run())?;
        let s = shared.clone();
        spawn("tollgate-engine-sync", move || syncer(sync_rx, proj_tx, s))?;
        // Nothing a caller waits for runs on the tables' threads now: they yield the CPU to
        // the hot path (see `crate::priority`).
        sql.background.lower(BACKGROUND_NICE);
        let (s, store) = (shared.clone(), sql.clone());
        let rt = tokio::runtime::Handle::current();
        spawn("tollgate-projection", move || {
            store.background.enter();
            projection(rt, store, proj_rx, s)
        })?;
        Ok(Self { sql, tx, shared })
    }

    async fn send<T, F>(&self, write: bool, f: F) -> StoreResult<Answer<T>>
    where
        T: Send + 'static,
        F: FnMut(&mut MemTx<'_>) -> StoreResult<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Command {
            f,
            value: None,
            reply,
        });
        let msg = match write {
            true => Msg::Write(job),
            false => Msg::Read(job),
        };
        self.shared.depth.fetch_add(1, Ordering::Relaxed);
        let sent = self.tx.try_send(msg);
        if sent.is_err() {
            self.shared.depth.fetch_sub(1, Ordering::Relaxed);
        }
        match sent {
            Ok(()) => {}
            Err(smpsc::TrySendError::Full(_)) => {
                return Err(StoreError::Unavailable("the engine's queue is full".into()))
            }
            Err(smpsc::TrySendError::Disconnected(_)) => {
                return Err(StoreError::Unavailable("the engine has stopped".into()))
            }
        }
        rx.await.map_err(|_| match write {
            true => StoreError::OutcomeUnknown("the engine stopped before answering".into()),
            false => StoreError::Unavailable("the engine stopped before answering".into()),
        })
    }

    /// Runs a metering command on the engine, or on SQLite if the engine does not carry it.
    async fn engine<T, F, S, Fut>(&self, write: bool, f: F, on_sql: S) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&mut MemTx<'_>) -> StoreResult<T> + Send + 'static,
        S: FnOnce(SqliteStore) -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        match self.send(write, f).await? {
            Answer::Done(v) => {
                self.shared.carried.fetch_add(1, Ordering::Relaxed);
                v
            }
            Answer::OnSql(paused) => {
                self.shared.on_sql.fetch_add(1, Ordering::Relaxed);
                self.wait_applied(paused.lsn).await?;
                let v = on_sql(self.sql.clone()).await;
                drop(paused);
                v
            }
        }
    }

    /// Stops the engine, waits for the projection to apply everything, and runs `f` on SQLite;
    /// the engine starts again with its state emptied.
    async fn exclusive<T, S, Fut>(&self, f: S) -> StoreResult<T>
    where
        S: FnOnce(SqliteStore) -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Msg::Pause(reply)).map_err(|e| match e {
            smpsc::TrySendError::Full(_) => {
                StoreError::Unavailable("the engine's queue is full".into())
            }
            smpsc::TrySendError::Disconnected(_) => {
                StoreError::Unavailable("the engine has stopped".into())
            }
        })?;
        let paused = rx
            .await
            .map_err(|_| StoreError::Unavailable("the engine has stopped".into()))?;
        self.wait_applied(paused.lsn).await?;
        let v = f(self.sql.clone()).await;
        drop(paused);
        v
    }

    /// Waits until the tables hold every record written before now, and gives them to read.
    async fn caught_up(&self) -> StoreResult<SqliteStore> {
        self.wait_applied(self.shared.written.load(Ordering::Acquire))
            .await?;
        Ok(self.sql.clone())
    }

    async fn wait_applied(&self, lsn: u64) -> StoreResult<()> {
        let mut rx = self.shared.applied.subscribe();
        let wait = async move { rx.wait_for(|applied| *applied >= lsn).await.is_ok() };
        match tokio::time::timeout(Duration::from_millis(PROJECTION_WAIT_MS), wait).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(StoreError::Unavailable("the projection has stopped".into())),
            Err(_) => Err(StoreError::Unavailable(format!(
                "the tables are more than {PROJECTION_WAIT_MS} ms behind the command log"
            ))),
        }
    }

    /// Metering commands answered from memory, and those run on SQLite because the engine does
    /// not carry something they needed.
    pub fn carried(&self) -> (u64, u64) {
        (
            self.shared.carried.load(Ordering::Relaxed),
            self.shared.on_sql.load(Ordering::Relaxed),
        )
    }

    /// Records written to the log and not yet in the tables.
    pub fn projection_lag(&self) -> u64 {
        let applied = *self.shared.applied.borrow();
        self.shared
            .written
            .load(Ordering::Acquire)
            .saturating_sub(applied)
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> StoreResult<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
        .map_err(|e| StoreError::Internal(format!("cannot start {name}: {e}")))
}

struct Engine {
    state: State,
    db: Connection,
    log: LogWriter,
    rx: smpsc::Receiver<Msg>,
    sync_tx: smpsc::Sender<Batch>,
    shared: Arc<Shared>,
    buf: Vec<u8>,
}

impl Engine {
    fn run(mut self) {
        let mut jobs: Vec<Box<dyn Job>> = Vec::new();
        let mut records: Vec<(u64, Vec<Op>)> = Vec::new();
        let mut deleted_through = 0u64;
        while let Ok(first) = self.rx.recv() {
            let mut next = Some(first);
            let mut n = 0;
            while let Some(msg) = next.take() {
                n += 1;
                match msg {
                    Msg::Write(job) => self.write(job, &mut jobs, &mut records),
                    Msg::Read(job) => self.read(job),
                    Msg::Pause(reply) => {
                        self.flush(&mut jobs, &mut records, None);
                        let (resume, wait) = smpsc::channel();
                        let paused = Paused {
                            lsn: self.log.last_lsn(),
                            resume: Some(resume),
                        };
                        let lsn = paused.lsn;
                        if reply.send(paused).is_ok() {
                            let _ = wait.recv();
                        }
                        self.restart_from_tables(lsn);
                    }
                    Msg::Stop(done) => {
                        self.flush(&mut jobs, &mut records, Some(done));
                        return;
                    }
                }
                if n < ENGINE_BATCH_MAX {
                    next = self.rx.try_recv().ok();
                }
            }
            self.flush(&mut jobs, &mut records, None);
            let applied = *self.shared.applied.borrow();
            self.state.evict(applied);
            if applied > deleted_through {
                if let Err(e) = self.log.delete_through(applied) {
                    tracing::warn!(error = %e, "cannot delete applied log segments");
                }
                deleted_through = applied;
            }
        }
    }

    /// Empties the state once the tables hold every record up to `lsn`, so that what is loaded
    /// again from them is the truth. (The caller that paused the engine normally waited for
    /// that already; one that went away did not.)
    fn restart_from_tables(&mut self, lsn: u64) {
        let started = std::time::Instant::now();
        let mut warned = 0;
        // After a failed sync of the log nothing more reaches the tables; what memory holds
        // beyond them was never answered, so the tables are the truth to start from.
        while *self.shared.applied.borrow() < lsn && !self.shared.fenced.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
            let waited = started.elapsed().as_secs() / 10;
            if waited > warned {
                warned = waited;
                tracing::error!(lsn, "the engine waits for the projection to reach the log");
            }
        }
        self.state = State::default();
    }

    fn read(&mut self, mut job: Box<dyn Job>) {
        self.shared.depth.fetch_sub(1, Ordering::Relaxed);
        let mut tx = MemTx::new(&mut self.state, &self.db);
        job.run(&mut tx);
        match tx.unsupported.is_some() || job.failed() {
            true => job.on_sql(Paused {
                lsn: self.log.last_lsn(),
                resume: None,
            }),
            false => job.answer(Ok(())),
        }
    }

    fn write(
        &mut self,
        mut job: Box<dyn Job>,
        jobs: &mut Vec<Box<dyn Job>>,
        records: &mut Vec<(u64, Vec<Op>)>,
    ) {
        self.shared.depth.fetch_sub(1, Ordering::Relaxed);
        if self.shared.fenced.load(Ordering::Acquire) {
            job.answer(Err(StoreError::Unavailable(
                "a sync of the command log failed; restart to recover".into(),
            )));
            return;
        }
        let mut tx = MemTx::new(&mut self.state, &self.db);
        job.run(&mut tx);
        if tx.unsupported.is_some() || job.failed() {
            // Its writes to memory cannot be undone one by one: run it on SQLite once the
            // tables hold everything before it, and start again from the tables.
            self.flush(jobs, records, None);
            let (resume, wait) = smpsc::channel();
            let lsn = self.log.last_lsn();
            job.on_sql(Paused {
                lsn,
                resume: Some(resume),
            });
            let _ = wait.recv();
            self.restart_from_tables(lsn);
            return;
        }
        let MemTx { ops, touched, .. } = tx;
        if !ops.is_empty() {
            self.buf.clear();
            op::encode(&ops, &mut self.buf);
            let lsn = self.log.append(op::RECORD_VERSION, &self.buf);
            self.state.written(touched, lsn);
            records.push((lsn, ops));
        }
        jobs.push(job);
    }

    /// Writes the batch to the log file and hands it to the syncer.
    fn flush(
        &mut self,
        jobs: &mut Vec<Box<dyn Job>>,
        records: &mut Vec<(u64, Vec<Op>)>,
        done: Option<oneshot::Sender<()>>,
    ) {
        if jobs.is_empty() && records.is_empty() && done.is_none() {
            return;
        }
        let sync = match self.log.flush() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, dir = %self.log.dir().display(), "cannot write the command log");
                self.shared.fenced.store(true, Ordering::Release);
                None
            }
        };
        self.shared
            .written
            .store(self.log.last_lsn(), Ordering::Release);
        let batch = Batch {
            sync,
            jobs: std::mem::take(jobs),
            records: std::mem::take(records),
            done,
        };
        if let Err(smpsc::SendError(batch)) = self.sync_tx.send(batch) {
            for job in batch.jobs {
                job.answer(Err(StoreError::OutcomeUnknown(
                    "the log syncer stopped".into(),
                )));
            }
        }
    }
}

/// Syncs each batch's log writes, answers its callers, and passes its records to the projection.
fn syncer(
    rx: smpsc::Receiver<Batch>,
    projection: smpsc::Sender<Vec<(u64, Vec<Op>)>>,
    shared: Arc<Shared>,
) {
    while let Ok(first) = rx.recv() {
        // Every batch the engine wrote while the last sync ran is waiting here. One
        // `fdatasync` of the newest sync point makes all of them durable (a sync covers every
        // record written before it; earlier segments were synced when they were closed), so
        // the log pays one sync per round, not one per waiting batch.
        let mut batches = vec![first];
        while let Ok(more) = rx.try_recv() {
            batches.push(more);
        }
        let newest = batches.iter().rev().find_map(|b| b.sync.clone());
        let durable = match newest {
            None => Ok(()),
            Some(_) if shared.fenced.load(Ordering::Acquire) => Err(StoreError::OutcomeUnknown(
                "an earlier sync of the command log failed".into(),
            )),
            Some(s) => s.sync().map_err(|e| {
                tracing::error!(error = %e, "fdatasync of the command log failed; writes stop until a restart");
                shared.fenced.store(true, Ordering::Release);
                StoreError::OutcomeUnknown(format!("the command log could not be synced: {e}"))
            }),
        };
        for batch in batches {
            let answer = match &batch.sync {
                None => Err(StoreError::OutcomeUnknown(
                    "the command log could not be written".into(),
                )),
                Some(_) => durable.clone(),
            };
            let ok = answer.is_ok();
            for job in batch.jobs {
                job.answer(answer.clone());
            }
            if ok && !batch.records.is_empty() && projection.send(batch.records).is_err() {
                tracing::error!("the projection has stopped");
            }
            if let Some(done) = batch.done {
                let _ = done.send(());
            }
        }
    }
}

/// Applies synced records to the tables, as many as are waiting in each transaction.
fn projection(
    rt: tokio::runtime::Handle,
    store: SqliteStore,
    rx: smpsc::Receiver<Vec<(u64, Vec<Op>)>>,
    shared: Arc<Shared>,
) {
    while let Ok(first) = rx.recv() {
        // Gathers what arrives within PROJECTION_GATHER_MS into one transaction: each SQLite
        // transaction has a fixed cost (its commit, the WAL sync, the page cache's upkeep) that
        // small batches would pay again and again.
        let mut batch = first;
        let until = std::time::Instant::now() + Duration::from_millis(PROJECTION_GATHER_MS);
        while batch.len() < PROJECTION_BATCH_MAX {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        let Some(last) = batch.last().map(|(lsn, _)| *lsn) else {
            continue;
        };
        let batch = Arc::new(batch);
        let mut delay = Duration::from_millis(10);
        loop {
            match rt.block_on(project(&store, batch.clone())) {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, "the projection failed to apply records; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        shared.applied.send_replace(last);
    }
}

#[async_trait]
impl Store for EngineStore {
    async fn is_initialized(&self) -> StoreResult<bool> {
        self.sql.is_initialized().await
    }
    async fn initialize(
        &self,
        admin_token_hash: [u8; 32],
        project: Project,
        keys: Vec<NewKey>,
    ) -> StoreResult<()> {
        self.sql.initialize(admin_token_hash, project, keys).await
    }
    async fn verify_admin(&self, token_hash: [u8; 32]) -> StoreResult<bool> {
        self.sql.verify_admin(token_hash).await
    }
    async fn rotate_admin_token(&self, token_hash: [u8; 32]) -> StoreResult<()> {
        self.sql.rotate_admin_token(token_hash).await
    }
    async fn create_project(&self, project: Project) -> StoreResult<()> {
        self.sql.create_project(project).await
    }
    async fn list_projects(&self) -> StoreResult<Vec<Project>> {
        self.sql.list_projects().await
    }
    async fn create_key(&self, key: NewKey) -> StoreResult<()> {
        self.sql.create_key(key).await
    }
    async fn list_keys(&self, project_id: &str) -> StoreResult<Vec<KeyInfo>> {
        self.sql.list_keys(project_id).await
    }
    async fn revoke_key(&self, key_id: &str, now: Timestamp) -> StoreResult<()> {
        self.sql.revoke_key(key_id, now).await
    }
    async fn authenticate(&self, key_hash: [u8; 32]) -> StoreResult<Option<AuthContext>> {
        self.sql.authenticate(key_hash).await
    }
    async fn advance_clock(&self, env: EnvId, seconds: i64) -> StoreResult<i64> {
        self.sql.advance_clock(env, seconds).await
    }
    async fn put_plans(
        &self,
        env: EnvId,
        document: String,
        now: Timestamp,
    ) -> StoreResult<PutPlansOutcome> {
        self.sql.put_plans(env, document, now).await
    }
    async fn get_plans(&self, env: EnvId) -> StoreResult<Option<StoredPlans>> {
        self.sql.get_plans(env).await
    }
    async fn environment_of(&self, project_id: &str, mode: Mode) -> StoreResult<Option<EnvId>> {
        self.sql.environment_of(project_id, mode).await
    }
    async fn get_plans_before(&self, env: EnvId, version: i64) -> StoreResult<Option<StoredPlans>> {
        self.sql.get_plans_before(env, version).await
    }
    async fn plans_version(&self, env: EnvId) -> StoreResult<i64> {
        self.sql.plans_version(env).await
    }

    async fn reserve(&self, cmd: ReserveCommand) -> StoreResult<Idempotent<ReserveOutcome>> {
        let cmd = Arc::new(cmd);
        let c = cmd.clone();
        self.engine(
            true,
            move |tx| procedure::reserve(tx, &c),
            |s| async move { s.reserve(Arc::unwrap_or_clone(cmd)).await },
        )
        .await
    }
    async fn commit(&self, cmd: CommitCommand) -> StoreResult<CommitOutcome> {
        let cmd = Arc::new(cmd);
        let c = cmd.clone();
        self.engine(
            true,
            move |tx| procedure::commit(tx, &c),
            |s| async move { s.commit(Arc::unwrap_or_clone(cmd)).await },
        )
        .await
    }
    async fn release(&self, cmd: ReleaseCommand) -> StoreResult<ReleaseOutcome> {
        let cmd = Arc::new(cmd);
        let c = cmd.clone();
        self.engine(
            true,
            move |tx| procedure::release(tx, &c),
            |s| async move { s.release(Arc::unwrap_or_clone(cmd)).await },
        )
        .await
    }
    async fn extend(&self, cmd: ExtendCommand) -> StoreResult<ExtendOutcome> {
        let cmd = Arc::new(cmd);
        let c = cmd.clone();
        self.engine(
            true,
            move |tx| procedure::extend(tx, &c),
            |s| async move { s.extend(Arc::unwrap_or_clone(cmd)).await },
        )
        .await
    }
    async fn get_reservation(
        &self,
        env: EnvId,
        reservation_id: &str,
        now: Timestamp,
    ) -> StoreResult<ReservationView> {
        let id = reservation_id.to_string();
        let id2 = id.clone();
        self.engine(
            false,
            move |tx| procedure::get_reservation(tx, env, &id, now),
            |s| async move { s.get_reservation(env, &id2, now).await },
        )
        .await
    }
    async fn track(&self, cmd: TrackCommand) -> StoreResult<Idempotent<TrackOutcome>> {
        let cmd = Arc::new(cmd);
        let c = cmd.clone();
        self.engine(
            true,
            move |tx| procedure::track(tx, &c),
            |s| async move { s.track(Arc::unwrap_or_clone(cmd)).await },
        )
        .await
    }
    async fn check(&self, cmd: CheckCommand) -> StoreResult<CheckOutcome> {
        let cmd = Arc::new(cmd);
        let c = cmd.clone();
        self.engine(
            false,
            move |tx| procedure::check(tx, &c),
            |s| async move { s.check(Arc::unwrap_or_clone(cmd)).await },
        )
        .await
    }
    async fn events(&self, query: EventsQuery) -> StoreResult<Vec<StoredEvent>> {
        self.caught_up().await?.events(query).await
    }
    async fn event(&self, env: EnvId, event_id: String) -> StoreResult<Option<StoredEventDetail>> {
        self.caught_up().await?.event(env, event_id).await
    }
    async fn analytics(&self, query: AnalyticsQuery) -> StoreResult<Vec<AnalyticsRow>> {
        self.caught_up().await?.analytics(query).await
    }
    async fn capture(&self, cmd: CaptureCommand) -> StoreResult<()> {
        // No metering command reads captures: the tables take them, with the engine running.
        self.sql.capture(cmd).await
    }
    async fn revenue_sources(&self, env: EnvId, limit: usize) -> StoreResult<Vec<RevenueSource>> {
        self.caught_up().await?.revenue_sources(env, limit).await
    }
    async fn funnel_occurrences(&self, query: FunnelQuery) -> StoreResult<Vec<Occurrence>> {
        self.caught_up().await?.funnel_occurrences(query).await
    }
    async fn identify(&self, cmd: IdentifyCommand) -> StoreResult<IdentifyOutcome> {
        self.exclusive(|s| async move { s.identify(cmd).await })
            .await
    }
    async fn account_usage(&self, query: AccountUsageQuery) -> StoreResult<AccountUsageOutcome> {
        let query = Arc::new(query);
        let q = query.clone();
        self.engine(
            false,
            move |tx| procedure::account_usage(tx, &q),
            |s| async move { s.account_usage(Arc::unwrap_or_clone(query)).await },
        )
        .await
    }
    async fn usage(&self, query: UsageQuery) -> StoreResult<UsageOutcome> {
        let query = Arc::new(query);
        let q = query.clone();
        self.engine(
            false,
            move |tx| procedure::usage(tx, &q),
            |s| async move { s.usage(Arc::unwrap_or_clone(query)).await },
        )
        .await
    }
    async fn erase_user(&self, cmd: EraseCommand) -> StoreResult<Erased> {
        // Memory holds pending reservations with their prompts, which a commit would copy
        // onto its event: erasing runs on the tables with the engine paused, and the engine
        // starts again with its state emptied, reloading those reservations without them.
        self.exclusive(|s| async move { s.erase_user(cmd).await })
            .await
    }
    async fn purge_logged_text(
        &self,
        env: EnvId,
        retention: jiff::SignedDuration,
        real_now: Timestamp,
        limit: usize,
    ) -> StoreResult<usize> {
        // On the tables once they hold every write answered before (events live only
        // there), without pausing the engine, which would empty its state once a minute.
        // Memory may still hold a reservation's copy
        // of a purged prompt (a reservation is due only once expired: a TTL is at most an
        // hour, a retention at least a day); only a late commit reads it, onto an event dated
        // at the reservation and so due at once, which the next purge clears.
        self.caught_up()
            .await?
            .purge_logged_text(env, retention, real_now, limit)
            .await
    }
    async fn environments(&self) -> StoreResult<Vec<EnvId>> {
        self.sql.environments().await
    }
    async fn expire_due(&self, real_now: Timestamp, ids: IdSeed) -> StoreResult<usize> {
        let i = ids.clone();
        self.engine(
            true,
            move |tx| procedure::expire_due(tx, real_now, &i),
            |s| async move { s.expire_due(real_now, ids).await },
        )
        .await
    }

    async fn grant_credits(&self, cmd: GrantCommand) -> StoreResult<GrantOutcome> {
        self.exclusive(|s| async move { s.grant_credits(cmd).await })
            .await
    }
    async fn revoke_credits(&self, cmd: RevokeCommand) -> StoreResult<RevokeOutcome> {
        self.exclusive(|s| async move { s.revoke_credits(cmd).await })
            .await
    }
    async fn credits(&self, query: CreditsQuery) -> StoreResult<CreditsOutcome> {
        self.caught_up().await?.credits(query).await
    }
    async fn credit_ledger(&self, query: LedgerQuery) -> StoreResult<Vec<LedgerEntry>> {
        self.caught_up().await?.credit_ledger(query).await
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
        self.exclusive(|s| async move {
            s.upsert_subscription(env, owner, plans, request, new_id, now)
                .await
        })
        .await
    }
    async fn get_subscription(
        &self,
        env: EnvId,
        owner: &Owner,
    ) -> StoreResult<Option<Subscription>> {
        self.caught_up().await?.get_subscription(env, owner).await
    }
    async fn subscription_history(
        &self,
        env: EnvId,
        owner: &Owner,
    ) -> StoreResult<Vec<HistoryEntry>> {
        self.caught_up()
            .await?
            .subscription_history(env, owner)
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
        self.exclusive(|s| async move {
            s.cancel_subscription(env, owner, plans, at, reason, now)
                .await
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
        self.exclusive(|s| async move { s.add_member(env, account, user, plans, now).await })
            .await
    }
    async fn remove_member(&self, env: EnvId, account: AccountId, user: UserId) -> StoreResult<()> {
        self.exclusive(|s| async move { s.remove_member(env, account, user).await })
            .await
    }
    async fn account(
        &self,
        env: EnvId,
        account: AccountId,
        plans: Arc<PlanDocument>,
        now: Timestamp,
    ) -> StoreResult<AccountView> {
        self.caught_up()
            .await?
            .account(env, account, plans, now)
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
        self.exclusive(|s| async move {
            s.put_integration(env, biller, config, forwarding, endpoint_id, now)
                .await
        })
        .await
    }
    async fn integration(&self, env: EnvId, biller: Biller) -> StoreResult<Option<Integration>> {
        self.sql.integration(env, biller).await
    }
    async fn endpoint(
        &self,
        biller: Biller,
        endpoint_id: &str,
    ) -> StoreResult<Option<EndpointTarget>> {
        self.sql.endpoint(biller, endpoint_id).await
    }
    async fn put_biller_customer(
        &self,
        env: EnvId,
        biller: Biller,
        customer_id: String,
        owner: Owner,
        now: Timestamp,
    ) -> StoreResult<()> {
        self.exclusive(|s| async move {
            s.put_biller_customer(env, biller, customer_id, owner, now)
                .await
        })
        .await
    }
    async fn biller_customer_of(
        &self,
        env: EnvId,
        biller: Biller,
        subject: &str,
    ) -> StoreResult<Option<String>> {
        self.sql.biller_customer_of(env, biller, subject).await
    }
    async fn apply_biller_event(&self, cmd: BillerEventCommand) -> StoreResult<BillerEventOutcome> {
        self.exclusive(|s| async move { s.apply_biller_event(cmd).await })
            .await
    }
    async fn record_biller_failure(&self, env: EnvId, event: StoredBillerEvent) -> StoreResult<()> {
        self.sql.record_biller_failure(env, event).await
    }
    async fn biller_events(&self, query: BillerEventsQuery) -> StoreResult<Vec<StoredBillerEvent>> {
        self.sql.biller_events(query).await
    }
    async fn biller_event(
        &self,
        env: EnvId,
        biller: Biller,
        event_id: &str,
    ) -> StoreResult<Option<StoredBillerEvent>> {
        self.sql.biller_event(env, biller, event_id).await
    }
    async fn purge_biller_events(&self, before: Timestamp) -> StoreResult<usize> {
        self.sql.purge_biller_events(before).await
    }
    async fn claim_meter_events(
        &self,
        real_now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(MeterEventRow, i64)>> {
        self.sql
            .claim_meter_events(real_now, lease_until, limit)
            .await
    }
    async fn finish_meter_event(
        &self,
        env: EnvId,
        event_id: &str,
        attempt: MeterAttempt,
        now: Timestamp,
    ) -> StoreResult<()> {
        self.sql
            .finish_meter_event(env, event_id, attempt, now)
            .await
    }
    async fn meter_events(&self, query: MeterEventsQuery) -> StoreResult<Vec<MeterEventRow>> {
        self.sql.meter_events(query).await
    }
    async fn retry_meter_event(
        &self,
        env: EnvId,
        event_id: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        self.sql.retry_meter_event(env, event_id, now).await
    }
    async fn settings(&self, env: EnvId) -> StoreResult<Option<StoredSettings>> {
        self.sql.settings(env).await
    }
    async fn put_settings(&self, env: EnvId, document: String, now: Timestamp) -> StoreResult<()> {
        self.sql.put_settings(env, document, now).await
    }
    async fn token_secret(
        &self,
        env: EnvId,
        candidate: String,
        now: Timestamp,
    ) -> StoreResult<String> {
        // No metering command reads it: the tables answer, with the engine running.
        self.sql.token_secret(env, candidate, now).await
    }

    async fn ready(&self) -> Result<(), String> {
        if self.shared.fenced.load(Ordering::Acquire) {
            return Err("a sync of the command log failed; restart to recover".into());
        }
        self.sql.ready().await
    }
    fn engine_stats(&self) -> Option<EngineStats> {
        let (carried, on_tables) = self.carried();
        Some(EngineStats {
            projection_lag: self.projection_lag(),
            carried,
            on_tables,
        })
    }
    fn queue_depth(&self) -> usize {
        self.shared.depth.load(Ordering::Relaxed) as usize + self.sql.queue_depth()
    }
    async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        // Off the runtime's threads: a full queue makes `send` wait for room.
        let tx = self.tx.clone();
        let sent = tokio::task::spawn_blocking(move || tx.send(Msg::Stop(done)).is_ok()).await;
        if sent.unwrap_or(false) {
            let _ = rx.await;
        }
        let written = self.shared.written.load(Ordering::Acquire);
        let _ = self.wait_applied(written).await;
        self.sql.shutdown().await;
    }
}
