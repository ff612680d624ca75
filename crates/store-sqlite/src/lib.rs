//! The embedded SQLite store: one database file, one writer thread, many readers.
//!
//! This backend is for one node: a single process owns the writer. Writes go through the
//! group-committing [`writer`]; reads run on a small pool of read-only connections that WAL mode
//! lets proceed while the writer commits; a [`checkpointer`] thread copies the WAL back into the
//! database file without holding up the writer. Every SQLite call runs off the async runtime.
//! A failed sync of the WAL fences the store until a restart ([`sync`]).
//!
//! [`EngineStore`] (`serve --engine`) puts the hot-path engine in front of the same tables:
//! metering decided from memory, each write made durable by one command log append, the tables
//! filled behind by the writer ([`engine`]).

mod admin;
mod analytics;
mod backup;
mod checkpointer;
mod engine;
mod persons;
mod priority;
mod schema;
mod seed;
mod sql;
mod sync;
mod writer;

use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tollgate_store::schema::SchemaStatus;
use tollgate_store::{StoreError, StoreResult};

pub use admin::SqliteStore;
pub use backup::{backup, restore, BackupReport};
pub use engine::{catch_up_log, EngineStore, LOG_DIR};
pub use seed::seed_events;

/// The database file inside a data directory.
pub const DATABASE_FILE: &str = "tollgate.db";
/// The lock file that keeps a second process off a data dir.
pub const LOCK_FILE: &str = "tollgate.lock";
/// Read connections open at once; further reads wait for one.
pub const READERS_MAX: usize = 8;
/// How long a connection waits on a lock before giving up, in milliseconds.
pub const BUSY_TIMEOUT_MS: u64 = 5_000;
/// The writer's page cache, in KiB: the counters and index pages a reserve touches stay in
/// memory instead of being read back from the file for each batch.
pub const WRITER_CACHE_KIB: i64 = 64 * 1024;
/// How much of the database file each connection maps into memory, in bytes: reads of pages
/// not in a connection's own cache become memory reads instead of `pread` calls.
pub const MMAP_BYTES: i64 = 1 << 30;

pub(crate) fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

pub(crate) fn ts(ms: i64) -> Timestamp {
    // Every stored time came from a valid Timestamp, so this clamp never bites in practice.
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The one place a rusqlite error becomes a store error.
pub(crate) fn internal(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::CannotOpen
                    | rusqlite::ErrorCode::SystemIoFailure
            ) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::AlreadyExists
        }
        e => StoreError::Internal(e.to_string()),
    }
}

pub(crate) fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "mmap_size", MMAP_BYTES)?;
    Ok(())
}

/// Opens the writing connection: WAL, fsync on every commit, schema migrated.
fn open_writer(path: &Path) -> StoreResult<Connection> {
    let mut conn = writer_connection(path).map_err(internal)?;
    schema::migrate(&mut conn)?;
    Ok(conn)
}

fn writer_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    configure(&conn)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL: COMMIT appends to the WAL without waiting for the disk; the writer's syncer
    // thread fsyncs the WAL before any caller hears of the batch (see `writer`), so an answered
    // write survives kill -9 and power loss. Checkpoints still sync before and after copying.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // The checkpointer thread copies the WAL back, off the commit path.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    // Each command's savepoint keeps its undo pages in memory, not in a temp file.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

/// What `tollgate migrate` would apply to the database in `data_dir` (`--dry-run`), read
/// without writing; a data dir without a database is at version 0.
pub fn schema_status(data_dir: &Path) -> StoreResult<SchemaStatus> {
    let path = data_dir.join(DATABASE_FILE);
    if !path.exists() {
        return schema::status_at(0);
    }
    let conn = open_reader(&path).map_err(internal)?;
    schema::status(&conn)
}

pub(crate) fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// A pool of read-only connections; each read borrows one on a blocking thread.
pub(crate) struct Readers {
    pub(crate) path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: tokio::sync::Semaphore,
}

impl Readers {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(READERS_MAX),
        }
    }

    /// Runs `f` in a read transaction (one consistent snapshot) off the async runtime.
    pub(crate) async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Unavailable("store is shutting down".into()))?;
        let this = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let conn = this.idle.lock().ok().and_then(|mut v| v.pop());
            let conn = match conn {
                Some(c) => c,
                None => open_reader(&this.path).map_err(internal)?,
            };
            let result = (|| {
                conn.execute_batch("BEGIN").map_err(internal)?;
                let out = f(&conn);
                conn.execute_batch("COMMIT").map_err(internal)?;
                out
            })();
            if result.is_ok() || conn.is_autocommit() {
                if let Ok(mut idle) = this.idle.lock() {
                    idle.push(conn);
                }
            }
            result
        })
        .await
        .map_err(|e| StoreError::Internal(format!("read task failed: {e}")))?;
        drop(permit);
        result
    }
}
