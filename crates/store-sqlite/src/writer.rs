//! The single writer: one thread owns the only writing connection and applies commands in
//! batches, one transaction per batch (group commit).
//!
//! A caller's command waits in a bounded queue; the writer drains everything queued (up to
//! `WRITER_BATCH_MAX`), runs each command inside its own savepoint, commits once with
//! `synchronous=FULL`, and only then answers every caller of the batch. Under no load a lone
//! command commits at once; under load the batch grows by itself. A full queue answers
//! `Unavailable` at once instead of growing.

use rusqlite::Connection;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    pub fn start(conn: Connection, observer: Arc<dyn StoreObserver>) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel::<Msg>(WRITER_QUEUE_MAX);
        let depth = Arc::new(AtomicUsize::new(0));
        let thread_depth = depth.clone();
        std::thread::Builder::new()
            .name("tollgate-sqlite-writer".into())
            .spawn(move || run(conn, rx, thread_depth, observer))?;
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
    conn.execute_batch("SAVEPOINT job")
        .map_err(crate::internal)?;
    let result = f(conn);
    let end = match &result {
        Err(e) if must_roll_back(e) => "ROLLBACK TO job; RELEASE job",
        _ => "RELEASE job",
    };
    conn.execute_batch(end).map_err(crate::internal)?;
    result
}

fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<Msg>,
    depth: Arc<AtomicUsize>,
    observer: Arc<dyn StoreObserver>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(WRITER_BATCH_MAX);
    let mut pending: Vec<Box<dyn Pending>> = Vec::with_capacity(WRITER_BATCH_MAX);
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
            write_batch(&conn, &mut batch, &mut pending, observer.as_ref());
        }
        if let Some(done) = stop.take() {
            rx.close();
            let _ = done.send(());
            break;
        }
    }
    tracing::info!("sqlite writer stopped");
}

/// One transaction for the whole batch; every caller is answered after COMMIT returns.
fn write_batch(
    conn: &Connection,
    batch: &mut Vec<Job>,
    pending: &mut Vec<Box<dyn Pending>>,
    observer: &dyn StoreObserver,
) {
    let size = batch.len();
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        tracing::error!(error = %e, "writer could not begin a transaction");
        // Dropping a job drops its reply: its caller sees `Unavailable`, nothing applied.
        batch.clear();
        return;
    }
    for job in batch.drain(..) {
        pending.push(job(conn));
    }
    let durable = conn.execute_batch("COMMIT").map_err(|e| {
        tracing::error!(error = %e, "writer commit failed; the batch is rolled back");
        let _ = conn.execute_batch("ROLLBACK");
        StoreError::Unavailable("database commit failed".into())
    });
    if durable.is_ok() {
        observer.batch_committed(size);
    }
    for p in pending.drain(..) {
        p.complete(durable.clone());
    }
}
