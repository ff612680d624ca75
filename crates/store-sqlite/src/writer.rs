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

/// One queued command: its closure, whom to answer, and the answer of its latest run.
trait Job: Send {
    /// Runs the command in the open transaction, alone in a savepoint if `isolated`. Returns
    /// true if it failed in a way that must undo its writes (which, outside a savepoint, only
    /// rolling the whole transaction back can do).
    fn run(&mut self, conn: &Connection, isolated: bool) -> bool;
    /// The answer of the last run, to be sent once the batch is durable.
    fn into_reply(self: Box<Self>) -> Box<dyn Pending>;
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
    fn run(&mut self, conn: &Connection, isolated: bool) -> bool {
        self.reply.value = if isolated {
            in_savepoint(conn, &mut self.f)
        } else {
            (self.f)(conn)
        };
        matches!(&self.reply.value, Err(e) if must_roll_back(e))
    }

    fn into_reply(self: Box<Self>) -> Box<dyn Pending> {
        Box::new(self.reply)
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
    /// `f` runs a second time if its batch must be redone (see the module docs), so it must
    /// depend on nothing but its captures and the database.
    pub async fn execute<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Command {
            f,
            reply: Reply {
                tx,
                value: Err(StoreError::Unavailable("the command did not run".into())),
            },
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

/// Runs every command of the batch in the open transaction: all together first; if one must
/// be undone, the transaction is rolled back and begun again and every command runs once more
/// in its own savepoint. `Err` if the transaction could not be rolled back or begun again.
fn apply(conn: &Connection, batch: &mut [Box<dyn Job>]) -> StoreResult<()> {
    if !batch.iter_mut().any(|job| job.run(conn, false)) {
        return Ok(());
    }
    tracing::warn!(
        commands = batch.len(),
        "a command failed inside a batch; running the batch again, each command isolated"
    );
    statement(conn, "ROLLBACK")?;
    statement(conn, "BEGIN IMMEDIATE")?;
    for job in batch.iter_mut() {
        job.run(conn, true);
    }
    Ok(())
}

/// One transaction for the whole batch. A committed batch's answers are returned for the
/// syncer; a failed one's callers are answered here, with the error.
fn write_batch(conn: &Connection, batch: &mut Vec<Box<dyn Job>>) -> Option<Committed> {
    let begun = statement(conn, "BEGIN IMMEDIATE").and_then(|()| apply(conn, batch));
    if let Err(e) = begun {
        tracing::error!(error = %e, "writer could not run a batch; nothing of it applied");
        let _ = conn.execute_batch("ROLLBACK");
        // Dropping a job drops its reply: its caller sees `Unavailable`, nothing applied.
        batch.clear();
        return None;
    }
    let answers: Vec<Box<dyn Pending>> = batch.drain(..).map(|job| job.into_reply()).collect();
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
        let path = dir.join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
        conn.execute_batch("CREATE TABLE t (name TEXT PRIMARY KEY)")
            .unwrap();
        let batches = Arc::new(Batches(Mutex::new(Vec::new())));
        let wal = dir.join("w.db-wal");
        let restart = Arc::new(AtomicBool::new(false));
        let w = Writer::start(conn, wal, batches.clone(), restart).unwrap();
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
    async fn hold_writer(w: &Writer) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
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
            .unwrap();
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
        held.await.unwrap();
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
}
