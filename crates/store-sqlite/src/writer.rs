//! The single writer: one thread owns the only writing connection and applies commands in
//! batches, one transaction per batch (group commit).
//!
//! A caller's command waits in a bounded queue; the writer drains everything queued (up to
//! `WRITER_BATCH_MAX`), runs the commands one after another in one transaction and commits
//! once. Under no load a lone command commits at once; under load the batch grows by itself. A
//! full queue answers `Unavailable` at once instead of growing.
//!
//! A command whose error means its writes must be undone (an internal or storage error) must
//! not take its batch-mates down with it, yet a savepoint around every command costs a copy of
//! each page it first touches. So a batch runs without savepoints, and in the rare batch where
//! a command fails that way, the writer rolls the whole transaction back and runs the batch
//! again with each command in its own savepoint; the answers are the second run's. A command
//! is a closure over its input (`FnMut`), so running it again runs the same command.
//!
//! Durability is pipelined: the connection runs with `synchronous=NORMAL`, so COMMIT appends
//! the batch to the WAL without waiting for the disk, and the batch's answers go to the
//! syncer thread ([`crate::sync`]), which calls `fdatasync` on the WAL and only then answers
//! them. While the disk syncs one batch the writer already runs the next; one `fdatasync`
//! covers every batch appended before it, so under load the syncs group batches as batches
//! group commands. When nothing else waits (no queued command, no batch at the syncer) the
//! writer syncs the batch itself, which spares a lone caller one thread hop. No caller hears
//! "done" before its write is on disk, and a later batch is never durable without the earlier
//! ones (the WAL is one file, synced in order). Other requests can read a committed batch
//! during the fraction of a millisecond before its sync ends, as Redis clients can read a
//! script's writes before `appendfsync always` syncs them; a power cut in that window loses the
//! batch and every later one, none of which was answered.
//!
//! **What a failure answers.** `Unavailable` promises that nothing was applied, so it is
//! answered only where the batch is known not to be: the queue is full or the writer is gone
//! (the command never ran); BEGIN, a command's savepoint or the redo's ROLLBACK failed, or
//! SQLite rolled the transaction back by itself mid-batch (the batch is rolled back, nothing
//! of it committed); COMMIT failed while the transaction is still open (SQLite refuses a
//! commit that way only before writing anything: a busy lock, a deferred constraint), which is
//! then rolled back. Where the batch may have reached the WAL, the answer is `OutcomeUnknown`:
//! COMMIT failed after SQLite began writing the WAL (it then ends the transaction itself, and
//! a commit frame may already be in the file, which a restart would replay); or the batch
//! committed and its WAL sync failed, or never ran because the syncer is gone. A failed sync
//! also fences the store for the rest of the process (see [`crate::sync`]): every later write
//! answers `Unavailable` without running, and a restart recovers from what is on disk.

use crate::priority::Background;
use crate::sync::{fdatasync, syncer, Committed, Durability, Fence, WalSync};
use rusqlite::Connection;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tollgate_store::{StoreError, StoreObserver, StoreResult, WRITER_BATCH_MAX, WRITER_QUEUE_MAX};

/// An answer waiting for its batch to become durable.
pub(crate) trait Pending: Send {
    /// Answers the caller: the command's own answer if the batch is durable, else `durable`'s
    /// error.
    fn complete(self: Box<Self>, durable: Result<(), StoreError>);
}

struct Reply<T> {
    /// `None` once answered.
    tx: Option<oneshot::Sender<StoreResult<T>>>,
    /// The answer of the command's latest run.
    value: Option<StoreResult<T>>,
    /// Whether the batch holding the command has committed: from then on, an answer lost on
    /// the way (a thread gone) means the outcome is unknown, not that nothing was applied.
    committed: bool,
}

impl<T> Reply<T> {
    fn new(tx: oneshot::Sender<StoreResult<T>>) -> Self {
        Self {
            tx: Some(tx),
            value: None,
            committed: false,
        }
    }

    fn send(&mut self, value: StoreResult<T>) {
        if let Some(tx) = self.tx.take() {
            // The caller may have gone away (request cancelled); the write stands regardless.
            let _ = tx.send(value);
        }
    }
}

impl<T: Send> Pending for Reply<T> {
    fn complete(mut self: Box<Self>, durable: Result<(), StoreError>) {
        let value = match durable {
            Ok(()) => self.value.take().unwrap_or_else(|| {
                Err(StoreError::Internal(
                    "a committed command has no answer".into(),
                ))
            }),
            Err(e) => Err(e),
        };
        self.send(value);
    }
}

/// Whoever drops an unanswered reply (a batch abandoned, a thread unwinding, the queue
/// dropped at shutdown) answers it with what is known at that point.
impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        let lost = if self.committed {
            StoreError::OutcomeUnknown("the writer stopped before its batch was durable".into())
        } else {
            StoreError::Unavailable("the writer stopped before running the command".into())
        };
        self.send(Err(lost));
    }
}

/// One queued command: its closure, whom to answer, and the answer of its latest run.
trait Job: Send {
    /// Runs the command in the open transaction, alone in a savepoint if `isolated`. `Ok(true)`
    /// if it failed in a way that must undo its writes (which, outside a savepoint, only
    /// rolling the whole transaction back can do); `Err` if the transaction can no longer be
    /// trusted to hold exactly the batch's writes (SQLite ended it, or the savepoint failed),
    /// so the whole batch must be rolled back.
    fn run(&mut self, conn: &Connection, isolated: bool) -> StoreResult<bool>;
    /// Answers the caller at once, with an error: the command will not be committed.
    fn refuse(self: Box<Self>, e: StoreError);
    /// The answer of the last run, to be sent once the batch is durable.
    fn into_reply(self: Box<Self>) -> Box<dyn Pending>;
    /// Marks the command's batch committed.
    fn committed(&mut self);
}

struct Command<T, F> {
    f: F,
    reply: Reply<T>,
}

impl<T, F> Job for Command<T, F>
where
    T: Send + 'static,
    F: FnMut(&Connection) -> StoreResult<T> + Send,
{
    fn run(&mut self, conn: &Connection, isolated: bool) -> StoreResult<bool> {
        let value = if isolated {
            in_savepoint(conn, &mut self.f)?
        } else {
            (self.f)(conn)
        };
        let undo = matches!(&value, Err(e) if must_roll_back(e));
        self.reply.value = Some(value);
        if conn.is_autocommit() {
            // SQLite rolls a transaction back by itself after some errors (I/O, a full disk);
            // the batch's later commands would then each commit on their own.
            return Err(StoreError::Unavailable(
                "SQLite rolled the batch's transaction back".into(),
            ));
        }
        Ok(undo)
    }

    fn refuse(mut self: Box<Self>, e: StoreError) {
        self.reply.send(Err(e));
    }

    fn into_reply(self: Box<Self>) -> Box<dyn Pending> {
        let Command { reply, .. } = *self;
        Box::new(reply)
    }

    fn committed(&mut self) {
        self.reply.committed = true;
    }
}

enum Msg {
    Job(Box<dyn Job>),
    /// Finish what came before, then stop and say so.
    Stop(oneshot::Sender<()>),
}

/// Errors that mean the savepoint's writes must be undone. Domain refusals (not found, not
/// pending, conflicts) keep the writes made on purpose before them, such as a lazy expiry.
fn must_roll_back(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Internal(_) | StoreError::Unavailable(_) | StoreError::OutcomeUnknown(_)
    )
}

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Msg>,
    depth: Arc<AtomicUsize>,
    fence: Arc<Fence>,
}

impl Writer {
    /// Starts the writer thread on `conn`, and the syncer thread that `fdatasync`s `wal`, the
    /// connection's WAL file.
    /// `restart` is raised by the checkpointer when the writer should finish a checkpoint so
    /// that its next transaction starts the WAL over (see `checkpointer`).
    /// `fence` is shared with the checkpointer: a failed sync raises it (see [`crate::sync`]).
    /// Both threads register with `background` (see [`crate::priority`]).
    pub(crate) fn start(
        conn: Connection,
        wal: &Path,
        observer: Arc<dyn StoreObserver>,
        restart: Arc<AtomicBool>,
        fence: Arc<Fence>,
        background: Arc<Background>,
    ) -> std::io::Result<Writer> {
        Writer::start_syncing_with(conn, wal, observer, restart, fence, background, fdatasync())
    }

    /// [`Writer::start`] with the function that syncs the WAL given.
    pub(crate) fn start_syncing_with(
        conn: Connection,
        wal: &Path,
        observer: Arc<dyn StoreObserver>,
        restart: Arc<AtomicBool>,
        fence: Arc<Fence>,
        background: Arc<Background>,
        sync: WalSync,
    ) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel::<Msg>(WRITER_QUEUE_MAX);
        let depth = Arc::new(AtomicUsize::new(0));
        let thread_depth = depth.clone();
        let (to_sync, synced) = std::sync::mpsc::channel::<Committed>();
        let sync = Arc::new(Durability::open(wal, sync, fence.clone(), observer)?);
        let syncer_sync = sync.clone();
        let syncer_background = background.clone();
        let syncer = std::thread::Builder::new()
            .name("tollgate-sqlite-sync".into())
            .spawn(move || {
                syncer_background.enter();
                syncer(&syncer_sync, &synced)
            })?;
        std::thread::Builder::new()
            .name("tollgate-sqlite-writer".into())
            .spawn(move || {
                background.enter();
                let stopped = run(&conn, rx, thread_depth, (&sync, to_sync), &restart);
                // Every committed batch is answered before the store reports it stopped.
                let _ = syncer.join();
                if sync.fence.is_raised() {
                    // Closing the last connection checkpoints the WAL into the database file,
                    // copying pages whose content is unknown after the failed sync. Keeping
                    // this connection (and its shared lock) open until the process ends means
                    // no connection of this process is ever the last: the restart recovers
                    // from the disk instead.
                    std::mem::forget(conn);
                }
                if let Some(done) = stopped {
                    let _ = done.send(());
                }
            })?;
        Ok(Writer { tx, depth, fence })
    }

    /// Runs `f` in the writer's next transaction and answers once that transaction is durable.
    /// `f` runs a second time if its batch must be redone (see the module docs), so it must
    /// depend on nothing but its captures and the database.
    pub async fn execute<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
    {
        if self.fence.is_raised() {
            return Err(Fence::refusal());
        }
        let (tx, rx) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Command {
            f,
            reply: Reply::new(tx),
        });
        self.depth.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.tx.try_send(Msg::Job(job)) {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::Unavailable(match e {
                mpsc::error::TrySendError::Full(_) => "writer queue is full".into(),
                mpsc::error::TrySendError::Closed(_) => "writer has stopped".into(),
            }));
        }
        // Every reply answers, if need be from its `Drop`; a reply lost anyway is a bug, and
        // "unknown" is the only answer that cannot be wrong then.
        rx.await.map_err(|_| {
            StoreError::OutcomeUnknown("the writer dropped a command's answer".into())
        })?
    }

    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Why the store takes no writes, if a failed sync fenced it (see [`crate::sync`]).
    pub fn fenced(&self) -> Option<String> {
        self.fence.reason().map(str::to_string)
    }

    /// Lets the writer finish everything queued before this call, then stops it.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Runs `f` in its own savepoint. The outer `Err`: the savepoint itself failed, so what the
/// transaction holds of `f` is unknown and the batch must be rolled back.
fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> StoreResult<T>,
) -> StoreResult<StoreResult<T>> {
    statement(conn, "SAVEPOINT job")?;
    let result = f(conn);
    if matches!(&result, Err(e) if must_roll_back(e)) {
        statement(conn, "ROLLBACK TO job")?;
    }
    statement(conn, "RELEASE job")?;
    Ok(result)
}

/// Runs one of the writer's fixed statements, parsed once per connection.
fn statement(conn: &Connection, sql: &str) -> StoreResult<()> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(drop)
        .map_err(crate::internal)
}

/// Applies batches until told to stop (returning whom to tell once all is durable) or until
/// every sender is gone. Dropping `to_sync` on return lets the syncer finish and end.
fn run(
    conn: &Connection,
    mut rx: mpsc::Receiver<Msg>,
    depth: Arc<AtomicUsize>,
    (sync, to_sync): (&Durability, std::sync::mpsc::Sender<Committed>),
    restart: &AtomicBool,
) -> Option<oneshot::Sender<()>> {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(WRITER_BATCH_MAX);
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
        if sync.fence.is_raised() {
            // Commands queued before the fence went up: none runs.
            for job in batch.drain(..) {
                job.refuse(Fence::refusal());
            }
        } else if !batch.is_empty() {
            if let Some(committed) = write_batch(conn, &mut batch) {
                if rx.is_empty() && sync.queued.load(Ordering::Acquire) == 0 {
                    // Nothing else to do meanwhile: sync here, and spare the caller the hop to
                    // the syncer thread.
                    sync.make_durable(&mut vec![committed]);
                } else {
                    sync.queued.fetch_add(1, Ordering::AcqRel);
                    if let Err(lost) = to_sync.send(committed) {
                        // The syncer is gone (it cannot be, short of a panic): this batch and
                        // every later one would never be synced.
                        sync.queued.fetch_sub(1, Ordering::AcqRel);
                        sync.abandon(lost.0, "the WAL syncer stopped");
                    }
                }
            }
        }
        if restart.swap(false, Ordering::Relaxed) && !sync.fence.is_raised() {
            // Every caller of the batch has its answer; the checkpointer copied all but the
            // last few frames, so this is short, and the next BEGIN starts the WAL over.
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                if crate::sync::checkpoint_fences(&e) {
                    sync.fence.raise(format!(
                        "a WAL checkpoint failed ({e}); restart the server to recover from \
                         what is on disk"
                    ));
                } else {
                    tracing::warn!(error = %e, "writer checkpoint failed");
                }
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

/// Runs every command of the batch in the open transaction: all together first; if one must
/// be undone, the transaction is rolled back and begun again and every command runs once more
/// in its own savepoint. `Err` if the transaction cannot be trusted to hold exactly the
/// batch's writes (it could not be rolled back or begun again, a savepoint failed, or SQLite
/// ended it); the caller then rolls it back.
fn apply(conn: &Connection, batch: &mut [Box<dyn Job>]) -> StoreResult<()> {
    let mut undo = false;
    for job in batch.iter_mut() {
        if job.run(conn, false)? {
            undo = true;
            break;
        }
    }
    if !undo {
        return Ok(());
    }
    tracing::warn!(
        commands = batch.len(),
        "a command failed inside a batch; running the batch again, each command isolated"
    );
    statement(conn, "ROLLBACK")?;
    statement(conn, "BEGIN IMMEDIATE")?;
    for job in batch.iter_mut() {
        job.run(conn, true)?;
    }
    Ok(())
}

/// One transaction for the whole batch. A committed batch's answers are returned for the
/// syncer; a failed one's callers are answered here, with the error.
fn write_batch(conn: &Connection, batch: &mut Vec<Box<dyn Job>>) -> Option<Committed> {
    let applied = statement(conn, "BEGIN IMMEDIATE").and_then(|()| apply(conn, batch));
    if let Err(e) = applied {
        tracing::error!(error = %e, "writer could not run a batch; nothing of it applied");
        if !conn.is_autocommit() {
            // Should this fail too, the transaction stays open and the next BEGIN fails in
            // turn: nothing reaches COMMIT until a ROLLBACK succeeds.
            let _ = conn.execute_batch("ROLLBACK");
        }
        for job in batch.drain(..) {
            job.refuse(StoreError::Unavailable(
                "the batch could not be applied".into(),
            ));
        }
        return None;
    }
    match statement(conn, "COMMIT") {
        Ok(()) => {
            let answers = batch
                .drain(..)
                .map(|mut job| {
                    job.committed();
                    job.into_reply()
                })
                .collect();
            Some(Committed { answers })
        }
        Err(e) if !conn.is_autocommit() => {
            // SQLite keeps the transaction open after a failed COMMIT only when it refused
            // before writing anything (a busy lock, a deferred constraint).
            tracing::error!(error = %e, "writer commit refused; the batch is rolled back");
            let _ = conn.execute_batch("ROLLBACK");
            for job in batch.drain(..) {
                job.refuse(StoreError::Unavailable("database commit failed".into()));
            }
            None
        }
        Err(e) => {
            // SQLite began writing the batch to the WAL and rolled back in memory; a commit
            // frame may already be in the file, and a restart would replay it.
            tracing::error!(
                error = %e,
                "writer commit failed after it began writing; the batch may or may not be applied"
            );
            for job in batch.drain(..) {
                job.refuse(StoreError::OutcomeUnknown(
                    "database commit failed after it began".into(),
                ));
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Batches(Mutex<Vec<usize>>);

    impl StoreObserver for Batches {
        fn batch_committed(&self, commands: usize) {
            self.0.lock().unwrap().push(commands);
        }
    }

    fn start(dir: &std::path::Path) -> (Writer, Arc<Batches>) {
        start_syncing_with(dir, fdatasync())
    }

    fn start_syncing_with(dir: &std::path::Path, sync: WalSync) -> (Writer, Arc<Batches>) {
        let path = dir.join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (name TEXT PRIMARY KEY)")
            .unwrap();
        let batches = Arc::new(Batches(Mutex::new(Vec::new())));
        let wal = dir.join("w.db-wal");
        let restart = Arc::new(AtomicBool::new(false));
        let fence = Arc::new(Fence::default());
        let w = Writer::start_syncing_with(
            conn,
            &wal,
            batches.clone(),
            restart,
            fence,
            Default::default(),
            sync,
        )
        .unwrap();
        (w, batches)
    }

    fn insert(c: &Connection, name: &str) -> StoreResult<()> {
        c.execute("INSERT INTO t (name) VALUES (?1)", [name])
            .map(drop)
            .map_err(crate::internal)
    }

    fn names_in(dir: &std::path::Path) -> Vec<String> {
        let c = Connection::open(dir.join("w.db")).unwrap();
        let mut st = c.prepare("SELECT name FROM t ORDER BY name").unwrap();
        let rows = st.query_map([], |r| r.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    /// Holds the writer inside a command until the returned sender is dropped, so that the
    /// commands sent meanwhile queue up and form the next batch together.
    async fn hold_writer(
        w: &Writer,
    ) -> (
        std::sync::mpsc::Sender<()>,
        tokio::task::JoinHandle<StoreResult<()>>,
    ) {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (entered, inside) = oneshot::channel::<()>();
        let wait = Mutex::new(wait);
        let mut entered = Some(entered);
        let w2 = w.clone();
        let held = tokio::spawn(async move {
            w2.execute(move |_| {
                if let Some(e) = entered.take() {
                    let _ = e.send(());
                }
                let _ = wait.lock().unwrap().recv();
                Ok(())
            })
            .await
        });
        inside.await.unwrap();
        (release, held)
    }

    /// What one batch did: the answers, the names stored afterwards, how many times the
    /// commands ran and the sizes of the batches committed (the first is `hold_writer`'s).
    struct Outcome {
        answers: Vec<StoreResult<&'static str>>,
        stored: Vec<String>,
        runs: usize,
        batches: Vec<usize>,
    }

    /// Sends one command per name while the writer is held, so that they form one batch. Each
    /// inserts its name; the one named `failing` then returns `error`.
    async fn one_batch(names: &[&'static str], failing: &str, error: StoreError) -> Outcome {
        let dir = tempfile::tempdir().unwrap();
        let (w, batches) = start(dir.path());
        let (release, held) = hold_writer(&w).await;
        let runs = Arc::new(AtomicUsize::new(0));
        let mut sent = Vec::new();
        for &name in names {
            let (w, runs, fails) = (
                w.clone(),
                runs.clone(),
                (name == failing).then(|| error.clone()),
            );
            sent.push(tokio::spawn(async move {
                w.execute(move |c| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    insert(c, name)?;
                    match &fails {
                        Some(e) => Err(e.clone()),
                        None => Ok(name),
                    }
                })
                .await
            }));
        }
        // Let every command reach the queue while the writer is held.
        while w.queue_depth() < names.len() {
            tokio::task::yield_now().await;
        }
        drop(release);
        held.await.unwrap().unwrap();
        let mut answers = Vec::new();
        for s in sent {
            answers.push(s.await.unwrap());
        }
        w.stop().await;
        let batches = batches.0.lock().unwrap().clone();
        Outcome {
            answers,
            stored: names_in(dir.path()),
            runs: runs.load(Ordering::SeqCst),
            batches,
        }
    }

    #[tokio::test]
    async fn a_command_that_fails_inside_a_batch_takes_none_of_its_batch_mates_with_it() {
        // b's insert happens, then an internal error must undo it, and only it.
        let boom = StoreError::Internal("boom".into());
        let o = one_batch(&["a", "b", "c"], "b", boom.clone()).await;
        assert_eq!(o.answers, [Ok("a"), Err(boom), Ok("c")]);
        assert_eq!(o.stored, ["a", "c"]);
        // The batch ran once together (a, then b failed) and once isolated (a, b, c).
        assert_eq!(o.runs, 5);
        assert_eq!(o.batches, [1, 3]);
    }

    #[tokio::test]
    async fn a_refusal_keeps_the_writes_made_before_it_and_the_batch_runs_once() {
        // A domain refusal, like a lazy expiry followed by "not pending", keeps its writes.
        let o = one_batch(&["a", "b"], "b", StoreError::NotFound).await;
        assert_eq!(o.answers, [Ok("a"), Err(StoreError::NotFound)]);
        assert_eq!(o.stored, ["a", "b"]);
        assert_eq!(o.runs, 2);
        assert_eq!(o.batches, [1, 2]);
    }

    /// `EIO`, as `fdatasync` answers when the disk failed to write back the file's pages.
    fn eio() -> std::io::Error {
        std::io::Error::from_raw_os_error(5)
    }

    async fn insert_via(w: &Writer, name: &'static str) -> StoreResult<&'static str> {
        w.execute(move |c| insert(c, name).map(|()| name)).await
    }

    #[tokio::test]
    async fn a_failed_sync_answers_outcome_unknown_and_fences_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        // The first sync succeeds, the second fails as fdatasync does on a disk error, and any
        // later one would succeed: which proves nothing about the pages the failed one lost.
        let sync: WalSync =
            Arc::new(
                move |wal: &std::fs::File| match counted.fetch_add(1, Ordering::SeqCst) {
                    1 => Err(eio()),
                    _ => wal.sync_data(),
                },
            );
        let (w, batches) = start_syncing_with(dir.path(), sync);
        assert_eq!(insert_via(&w, "a").await, Ok("a"));
        assert!(w.fenced().is_none());

        // b committed, and its sync failed: applied in the database, durability unknown.
        let b = insert_via(&w, "b").await;
        assert!(matches!(b, Err(StoreError::OutcomeUnknown(_))), "{b:?}");
        let reason = w.fenced().expect("a failed sync fences the store");
        assert!(reason.contains("a WAL sync failed"), "{reason}");
        assert!(reason.contains("restart the server"), "{reason}");

        // From then on every write is refused before it runs, and no sync is tried again.
        for name in ["c", "d"] {
            let r = insert_via(&w, name).await;
            assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        w.stop().await;
        assert_eq!(names_in(dir.path()), ["a", "b"]);
        assert_eq!(
            *batches.0.lock().unwrap(),
            [1],
            "only a's batch was durable"
        );

        // A restart takes writes again, on what the database holds.
        let (w, _) = start(dir.path());
        assert_eq!(insert_via(&w, "e").await, Ok("e"));
        w.stop().await;
        assert_eq!(names_in(dir.path()), ["a", "b", "e"]);
    }

    #[tokio::test]
    async fn batches_committed_while_a_failing_sync_runs_answer_outcome_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
        let (fail, failing) = std::sync::mpsc::channel::<()>();
        let (entered_tx, failing) = (Mutex::new(entered_tx), Mutex::new(failing));
        let counted = calls.clone();
        // Every sync waits until the test lets it fail.
        let sync: WalSync = Arc::new(move |_: &std::fs::File| {
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = entered_tx.lock().unwrap().send(());
            let _ = failing.lock().unwrap().recv();
            Err(eio())
        });
        let (w, batches) = start_syncing_with(dir.path(), sync);

        // The held command's batch commits with b1 and b2 queued behind it, so it goes to the
        // syncer thread, whose sync then waits; meanwhile the writer commits b1 and b2.
        let (release, held) = hold_writer(&w).await;
        let sent: Vec<_> = ["b1", "b2"]
            .into_iter()
            .map(|name| {
                let w = w.clone();
                tokio::spawn(async move { insert_via(&w, name).await })
            })
            .collect();
        while w.queue_depth() < 2 {
            tokio::task::yield_now().await;
        }
        drop(release);
        tokio::task::spawn_blocking(move || entered.recv().unwrap())
            .await
            .unwrap();
        while names_in(dir.path()) != ["b1", "b2"] {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        drop(fail);

        let held = held.await.unwrap();
        assert!(
            matches!(held, Err(StoreError::OutcomeUnknown(_))),
            "{held:?}"
        );
        for s in sent {
            let r = s.await.unwrap();
            assert!(matches!(r, Err(StoreError::OutcomeUnknown(_))), "{r:?}");
        }
        let c = insert_via(&w, "c").await;
        assert!(matches!(c, Err(StoreError::Unavailable(_))), "{c:?}");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "no sync after the failed one"
        );
        w.stop().await;
        assert_eq!(names_in(dir.path()), ["b1", "b2"]);
        assert!(batches.0.lock().unwrap().is_empty(), "no batch was durable");
    }

    #[tokio::test]
    async fn a_transaction_sqlite_ends_mid_batch_applies_nothing_of_the_batch() {
        // SQLite rolls the transaction back by itself after an I/O error or a full disk; the
        // command's own ROLLBACK leaves the connection in the same state. The commands after
        // it would otherwise commit one statement at a time, outside any batch.
        let dir = tempfile::tempdir().unwrap();
        let (w, _) = start(dir.path());
        let (release, held) = hold_writer(&w).await;
        let mut sent = Vec::new();
        for name in ["a", "b", "c"] {
            let w = w.clone();
            sent.push(tokio::spawn(async move {
                w.execute(move |c| {
                    insert(c, name)?;
                    if name == "b" {
                        c.execute_batch("ROLLBACK").map_err(crate::internal)?;
                    }
                    Ok(name)
                })
                .await
            }));
        }
        while w.queue_depth() < 3 {
            tokio::task::yield_now().await;
        }
        drop(release);
        held.await.unwrap().unwrap();
        for s in sent {
            let r = s.await.unwrap();
            assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        }
        assert_eq!(insert_via(&w, "d").await, Ok("d"));
        w.stop().await;
        assert_eq!(names_in(dir.path()), ["d"]);
    }
}
