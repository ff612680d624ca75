//! The single writer: one thread owns the only writing connection and applies commands in
//! batches, one transaction per batch (group commit).
//!
//! A caller's command waits in a bounded queue; the writer drains everything queued (up to
//! `WRITER_BATCH_MAX`), runs each command inside its own savepoint and commits once. Under no
//! load a lone command commits at once; under load the batch grows by itself. A full queue
//! answers `Unavailable` at once instead of growing.
//!
//! Durability is pipelined: the connection runs with `synchronous=NORMAL`, so COMMIT appends
//! the batch to the WAL without waiting for the disk, and the batch's answers go to the
//! [`syncer`] thread, which calls `fdatasync` on the WAL and only then answers them. While the
//! disk syncs one batch the writer already runs the next; one `fdatasync` covers every batch
//! appended before it, so under load the syncs group batches as batches group commands.
//! When nothing else waits (no queued command, no batch at the syncer) the writer syncs the
//! batch itself, which spares a lone caller one thread hop. No caller hears "done" before its
//! write is on disk, and a later batch is never durable
//! without the earlier ones (the WAL is one file, synced in order). Other requests can read a
//! committed batch during the fraction of a millisecond before its sync ends, as Redis clients
//! can read a script's writes before `appendfsync always` syncs them; a power cut in that
//! window loses the batch and every later one, none of which was answered.

use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tollgate_store::{StoreError, StoreObserver, StoreResult, WRITER_BATCH_MAX, WRITER_QUEUE_MAX};

/// An answer waiting for its batch to become durable.
trait Pending: Send {
    fn complete(self: Box<Self>, durable: Result<(), StoreError>);
}

struct Reply<T> {
    tx: oneshot::Sender<StoreResult<T>>,
    value: StoreResult<T>,
}

impl<T: Send> Pending for Reply<T> {
    fn complete(self: Box<Self>, durable: Result<(), StoreError>) {
        let value = match durable {
            Ok(()) => self.value,
            Err(e) => Err(e),
        };
        // The caller may have gone away (request cancelled); the write stands regardless.
        let _ = self.tx.send(value);
    }
}

type Job = Box<dyn FnOnce(&Connection) -> Box<dyn Pending> + Send>;

enum Msg {
    Job(Job),
    /// Finish what came before, then stop and say so.
    Stop(oneshot::Sender<()>),
}

/// Errors that mean the savepoint's writes must be undone. Domain refusals (not found, not
/// pending, conflicts) keep the writes made on purpose before them, such as a lazy expiry.
fn must_roll_back(e: &StoreError) -> bool {
    matches!(e, StoreError::Internal(_) | StoreError::Unavailable(_))
}

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Msg>,
    depth: Arc<AtomicUsize>,
}

impl Writer {
    /// Starts the writer thread on `conn`.
    /// `restart` is raised by the checkpointer when the writer should finish a checkpoint so
    /// that its next transaction starts the WAL over (see `checkpointer`).
    /// `wal` is the path of the connection's WAL file, which the syncer makes durable.
    pub fn start(
        conn: Connection,
        wal: PathBuf,
        observer: Arc<dyn StoreObserver>,
        restart: Arc<AtomicBool>,
    ) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel::<Msg>(WRITER_QUEUE_MAX);
        let depth = Arc::new(AtomicUsize::new(0));
        let thread_depth = depth.clone();
        let (to_sync, synced) = std::sync::mpsc::channel::<Committed>();
        let sync = Arc::new(Durability {
            wal,
            observer,
            queued: AtomicUsize::new(0),
        });
        let syncer_sync = sync.clone();
        let syncer = std::thread::Builder::new()
            .name("tollgate-sqlite-sync".into())
            .spawn(move || syncer(&syncer_sync, &synced))?;
        std::thread::Builder::new()
            .name("tollgate-sqlite-writer".into())
            .spawn(move || {
                let stopped = run(conn, rx, thread_depth, (&sync, to_sync), &restart);
                // Every committed batch is answered before the store reports it stopped.
                let _ = syncer.join();
                if let Some(done) = stopped {
                    let _ = done.send(());
                }
            })?;
        Ok(Writer { tx, depth })
    }

    /// Runs `f` in the writer's next transaction and answers once that transaction is durable.
    pub async fn execute<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn: &Connection| {
            let value = in_savepoint(conn, f);
            Box::new(Reply { tx, value }) as Box<dyn Pending>
        });
        self.depth.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.tx.try_send(Msg::Job(job)) {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            return Err(match e {
                mpsc::error::TrySendError::Full(_) => {
                    StoreError::Unavailable("writer queue is full".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    StoreError::Unavailable("writer has stopped".into())
                }
            });
        }
        rx.await
            .map_err(|_| StoreError::Unavailable("writer stopped before answering".into()))?
    }

    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Lets the writer finish everything queued before this call, then stops it.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> StoreResult<T>,
) -> StoreResult<T> {
    statement(conn, "SAVEPOINT job")?;
    let result = f(conn);
    if matches!(&result, Err(e) if must_roll_back(e)) {
        statement(conn, "ROLLBACK TO job")?;
    }
    statement(conn, "RELEASE job")?;
    result
}

/// Runs one of the writer's fixed statements, parsed once per connection.
fn statement(conn: &Connection, sql: &str) -> StoreResult<()> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(drop)
        .map_err(crate::internal)
}

/// A committed batch's answers, waiting for the sync that makes the batch durable.
struct Committed {
    answers: Vec<Box<dyn Pending>>,
}

/// What the writer and the syncer share to make batches durable.
struct Durability {
    /// The WAL file of the writer's connection.
    wal: PathBuf,
    observer: Arc<dyn StoreObserver>,
    /// Batches handed to the syncer and not yet answered.
    queued: AtomicUsize,
}

impl Durability {
    /// Syncs the WAL once and answers every batch in `ready` (all committed before the call).
    fn make_durable(&self, ready: &mut Vec<Committed>) {
        // fdatasync flushes the file, whichever descriptor names it; opening it by path each
        // time follows the WAL if SQLite ever replaces the file.
        let durable = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.wal)
            .and_then(|f| f.sync_data())
            .map_err(|e| {
                tracing::error!(error = %e, "cannot sync the WAL; its batches are not durable");
                StoreError::Unavailable("the database could not be synced to disk".into())
            });
        for batch in ready.drain(..) {
            if durable.is_ok() {
                self.observer.batch_committed(batch.answers.len());
            }
            for p in batch.answers {
                p.complete(durable.clone());
            }
        }
    }
}

/// Applies batches until told to stop (returning whom to tell once all is durable) or until
/// every sender is gone. Dropping `to_sync` on return lets the syncer finish and end.
fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<Msg>,
    depth: Arc<AtomicUsize>,
    (sync, to_sync): (&Durability, std::sync::mpsc::Sender<Committed>),
    restart: &AtomicBool,
) -> Option<oneshot::Sender<()>> {
    let mut batch: Vec<Job> = Vec::with_capacity(WRITER_BATCH_MAX);
    let mut stop: Option<oneshot::Sender<()>> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Job(job) => batch.push(job),
                Msg::Stop(done) => {
                    stop = Some(done);
                    break;
                }
            }
            if batch.len() < WRITER_BATCH_MAX {
                next = rx.try_recv().ok();
            }
        }
        depth.fetch_sub(batch.len(), Ordering::Relaxed);
        if !batch.is_empty() {
            if let Some(committed) = write_batch(&conn, &mut batch) {
                if rx.is_empty() && sync.queued.load(Ordering::Acquire) == 0 {
                    // Nothing else to do meanwhile: sync here, and spare the caller the hop to
                    // the syncer thread.
                    sync.make_durable(&mut vec![committed]);
                } else {
                    sync.queued.fetch_add(1, Ordering::AcqRel);
                    if let Err(lost) = to_sync.send(committed) {
                        // The syncer is gone (it cannot be, short of a panic): nothing is
                        // known to be durable, so nobody hears success.
                        for p in lost.0.answers {
                            p.complete(Err(StoreError::Unavailable(
                                "the WAL syncer stopped".into(),
                            )));
                        }
                    }
                }
            }
        }
        if restart.swap(false, Ordering::Relaxed) {
            // Every caller of the batch has its answer; the checkpointer copied all but the
            // last few frames, so this is short, and the next BEGIN starts the WAL over.
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!(error = %e, "writer checkpoint failed");
            }
        }
        if stop.is_some() {
            rx.close();
            break;
        }
    }
    tracing::info!("sqlite writer stopped");
    stop
}

/// One transaction for the whole batch. A committed batch's answers are returned for the
/// syncer; a failed one's callers are answered here, with the error.
fn write_batch(conn: &Connection, batch: &mut Vec<Job>) -> Option<Committed> {
    if let Err(e) = statement(conn, "BEGIN IMMEDIATE") {
        tracing::error!(error = %e, "writer could not begin a transaction");
        // Dropping a job drops its reply: its caller sees `Unavailable`, nothing applied.
        batch.clear();
        return None;
    }
    let answers: Vec<Box<dyn Pending>> = batch.drain(..).map(|job| job(conn)).collect();
    match statement(conn, "COMMIT") {
        Ok(()) => Some(Committed { answers }),
        Err(e) => {
            tracing::error!(error = %e, "writer commit failed; the batch is rolled back");
            let _ = conn.execute_batch("ROLLBACK");
            for p in answers {
                p.complete(Err(StoreError::Unavailable(
                    "database commit failed".into(),
                )));
            }
            None
        }
    }
}

/// Makes committed batches durable in order and answers their callers: takes every batch
/// waiting, syncs the WAL once for all of them, answers them all. Ends when the writer does.
fn syncer(sync: &Durability, committed: &std::sync::mpsc::Receiver<Committed>) {
    let mut ready: Vec<Committed> = Vec::new();
    while let Ok(first) = committed.recv() {
        ready.push(first);
        ready.extend(committed.try_iter());
        let taken = ready.len();
        sync.make_durable(&mut ready);
        sync.queued.fetch_sub(taken, Ordering::AcqRel);
    }
}
