//! A fixed pool of worker threads, each owning one PostgreSQL connection, that run store work
//! as transactions.
//!
//! The `postgres` client is synchronous; its calls run here, never on the async runtime. A
//! worker reconnects lazily after its connection is lost, so a node recovers by itself when the
//! database returns; while it is away, work answers `Unavailable` (HTTP 503) at once instead
//! of piling up. The queue in front of the workers is bounded.

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

    fn connect(&mut self) -> StoreResult<()> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        self.client = None;
        self.statements.clear();
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
        match config.connect(NoTls) {
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
            let (tx, failure) = pg.into_parts();
            match (result, failure) {
                (Ok(value), None) => match tx.commit() {
                    Ok(()) => return Ok(value),
                    Err(e) if retryable(&e) && attempt < TRANSACTION_RETRIES_MAX => continue,
                    Err(e) => return Err(pg_error(&e)),
                },
                (_, Some(e)) if retryable(&e) && attempt < TRANSACTION_RETRIES_MAX => {
                    drop(tx);
                    continue;
                }
                (Err(e), _) => {
                    // A domain refusal may keep what it wrote on purpose (a lazy expiry).
                    if matches!(e, StoreError::Internal(_) | StoreError::Unavailable(_)) {
                        drop(tx);
                    } else if let Err(c) = tx.commit() {
                        return Err(pg_error(&c));
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
                    job(&mut conn);
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
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the database worker stopped".into()))?
    }

    pub(crate) fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }
}
