//! A fixed pool of worker threads, each owning one PostgreSQL connection, that run store work
//! as transactions.
//!
//! The `postgres` client is synchronous; its calls run here, never on the async runtime. A
//! worker reconnects lazily after its connection is lost, so a node recovers by itself when the
//! database returns; while it is away, work answers `Unavailable` (HTTP 503) at once instead
//! of piling up. The queue in front of the workers is bounded.
//!
//! `Unavailable` promises that nothing was applied, so it answers only failures known to come
//! before the commit: no connection, BEGIN failed, a statement failed (the transaction is then
//! rolled back, or dies with its connection), or the server refused the COMMIT itself
//! (a serialization failure, a deferred constraint: SQLSTATE classes 40 and 23). Any other
//! failure of a COMMIT that carries writes (the connection closed or reset, an I/O error, no
//! SQLSTATE, `57P01` admin shutdown, ...) may have come after the server committed, so it
//! answers `OutcomeUnknown`, and is never retried here: only the client's retry, with the same
//! idempotency key or reservation id, settles it exactly once.

use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tollgate_store::{StoreError, StoreObserver, StoreResult, WRITER_QUEUE_MAX};

/// How many times a transaction that lost a serialization race or a deadlock is retried.
pub const TRANSACTION_RETRIES_MAX: usize = 8;
/// After a failed connection attempt, how long a worker answers `Unavailable` before trying
/// again, in milliseconds.
pub const RECONNECT_BACKOFF_MS: u64 = 250;
/// How long one connection attempt may take, in seconds.
pub const CONNECT_TIMEOUT_SECONDS: u64 = 3;
/// How long one statement may run before PostgreSQL cancels it, in milliseconds.
pub const STATEMENT_TIMEOUT_MS: u64 = 10_000;

/// The one place a PostgreSQL error becomes a store error.
pub(crate) fn pg_error(e: &postgres::Error) -> StoreError {
    if e.is_closed() {
        return StoreError::Unavailable("the database connection is closed".into());
    }
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => StoreError::AlreadyExists,
        Some(c)
            if c.code().starts_with("08")
                || c.code().starts_with("57P")
                || *c == SqlState::TOO_MANY_CONNECTIONS
                || *c == SqlState::QUERY_CANCELED =>
        {
            StoreError::Unavailable(format!("database: {e}"))
        }
        Some(_) => StoreError::Internal(format!("database: {e}")),
        // No SQLSTATE: an I/O or protocol failure on the way to the server.
        None => StoreError::Unavailable(format!("database: {e}")),
    }
}

/// What a failed COMMIT means. The server answers a refused commit with the reason it rolled
/// the transaction back (classes 40 and 23); any other failure can come after the commit is
/// durable on the server, while its answer is on the way.
fn commit_error(e: &postgres::Error, wrote: bool) -> StoreError {
    let refused = e
        .code()
        .is_some_and(|c| c.code().starts_with("40") || c.code().starts_with("23"));
    if refused || !wrote {
        return pg_error(e);
    }
    StoreError::OutcomeUnknown(format!("database commit: {e}"))
}

fn retryable(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// One worker's connection and its prepared statements.
pub(crate) struct Conn {
    url: String,
    client: Option<Client>,
    pub(crate) statements: HashMap<&'static str, Statement>,
    retry_after: Option<Instant>,
}

impl Conn {
    fn new(url: String) -> Self {
        Self {
            url,
            client: None,
            statements: HashMap::new(),
            retry_after: None,
        }
    }

    /// Forgets the connection (a new one is made for the next job).
    fn reset(&mut self) {
        self.client = None;
        self.statements.clear();
    }

    fn connect(&mut self) -> StoreResult<()> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        self.reset();
        if self.retry_after.is_some_and(|t| Instant::now() < t) {
            return Err(StoreError::Unavailable(
                "the database is unreachable".into(),
            ));
        }
        let mut config: postgres::Config = self
            .url
            .parse()
            .map_err(|e| StoreError::Internal(format!("database url: {e}")))?;
        config.connect_timeout(Duration::from_secs(CONNECT_TIMEOUT_SECONDS));
        config.options(&format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"));
        config.application_name("tollgate");
        // The client builds a runtime per connection, and `unwrap`s that: out of file
        // descriptors it panics instead of failing, which is a failed attempt like any other.
        let connected = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            config.connect(NoTls).map_err(|e| e.to_string())
        }))
        .unwrap_or_else(|_| Err("the database client panicked while connecting".into()));
        match connected {
            Ok(client) => {
                self.client = Some(client);
                self.retry_after = None;
                Ok(())
            }
            Err(e) => {
                self.retry_after =
                    Some(Instant::now() + Duration::from_millis(RECONNECT_BACKOFF_MS));
                tracing::warn!(error = %e, "cannot connect to the database");
                Err(StoreError::Unavailable(
                    "the database is unreachable".into(),
                ))
            }
        }
    }

    /// Runs `f` in one transaction, retrying lost serialization races and deadlocks.
    pub(crate) fn transaction<T>(
        &mut self,
        f: &dyn Fn(&mut crate::sql::PgTx<'_, '_>) -> StoreResult<T>,
    ) -> StoreResult<T> {
        self.connect()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Conn {
                client, statements, ..
            } = self;
            let client = client
                .as_mut()
                .ok_or_else(|| StoreError::Unavailable("no database connection".into()))?;
            let tx = client.transaction().map_err(|e| pg_error(&e))?;
            let mut pg = crate::sql::PgTx::new(tx, statements);
            let result = f(&mut pg);
            let (tx, failure, wrote) = pg.into_parts();
            match (result, failure) {
                (Ok(value), None) => match tx.commit() {
                    Ok(()) => return Ok(value),
                    // A lost race is refused before anything commits: safe to run again.
                    Err(e) if retryable(&e) && attempt < TRANSACTION_RETRIES_MAX => continue,
                    Err(e) => return Err(commit_error(&e, wrote)),
                },
                (_, Some(e)) if retryable(&e) && attempt < TRANSACTION_RETRIES_MAX => {
                    drop(tx);
                    continue;
                }
                (Err(e), _) => {
                    // A domain refusal may keep what it wrote on purpose (a lazy expiry).
                    if matches!(
                        e,
                        StoreError::Internal(_)
                            | StoreError::Unavailable(_)
                            | StoreError::OutcomeUnknown(_)
                    ) {
                        drop(tx);
                    } else if let Err(c) = tx.commit() {
                        return Err(commit_error(&c, wrote));
                    }
                    return Err(e);
                }
                (Ok(_), Some(e)) => return Err(pg_error(&e)),
            }
        }
    }
}

type Job = Box<dyn FnOnce(&mut Conn) + Send>;

/// The worker threads and the bounded queue in front of them.
#[derive(Clone)]
pub(crate) struct Pool {
    tx: mpsc::Sender<Job>,
    depth: Arc<AtomicUsize>,
    observer: Arc<dyn StoreObserver>,
}

impl Pool {
    pub(crate) fn start(
        url: &str,
        workers: usize,
        observer: Arc<dyn StoreObserver>,
    ) -> std::io::Result<Pool> {
        let (tx, rx) = mpsc::channel::<Job>(WRITER_QUEUE_MAX);
        let rx = Arc::new(Mutex::new(rx));
        let depth = Arc::new(AtomicUsize::new(0));
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            let depth = depth.clone();
            let mut conn = Conn::new(url.to_string());
            std::thread::Builder::new()
                .name(format!("tollgate-pg-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(mut rx) => rx.blocking_recv(),
                        Err(_) => None,
                    };
                    let Some(job) = job else { break };
                    depth.fetch_sub(1, Ordering::Relaxed);
                    // A job that panics is a bug; its caller hears `OutcomeUnknown` (its reply
                    // is dropped), and the worker lives on with a new connection, so the pool
                    // never shrinks.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conn)))
                        .is_err()
                    {
                        tracing::error!(worker = i, "a database job panicked");
                        conn.reset();
                    }
                })?;
        }
        Ok(Pool {
            tx,
            depth,
            observer,
        })
    }

    /// Runs `f` as one transaction on a worker and answers once it has committed.
    pub(crate) async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&mut crate::sql::PgTx<'_, '_>) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let observer = self.observer.clone();
        let job: Job = Box::new(move |conn: &mut Conn| {
            let result = conn.transaction(&f);
            if result.is_ok() {
                observer.batch_committed(1);
            }
            let _ = reply.send(result);
        });
        self.depth.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.tx.try_send(job) {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::Unavailable(match e {
                mpsc::error::TrySendError::Full(_) => "the database queue is full".into(),
                mpsc::error::TrySendError::Closed(_) => "the store has stopped".into(),
            }));
        }
        // The worker dropped the reply without answering only by panicking, possibly after
        // its COMMIT: "unknown" is the answer that cannot be wrong.
        answer.await.map_err(|_| {
            StoreError::OutcomeUnknown("the database worker stopped before answering".into())
        })?
    }

    pub(crate) fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }
}
