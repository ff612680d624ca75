//! Copies the WAL back into the database file on a thread of its own.
//!
//! SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold, so one
//! writer batch in a thousand would also write and fsync the database file while every caller
//! of that batch waits. The writer turns it off (`wal_autocheckpoint=0`) and this thread runs a
//! PASSIVE checkpoint every [`CHECKPOINT_INTERVAL_MS`] on its own connection instead: it never
//! takes the write lock, so the writer keeps appending to the WAL meanwhile.
//!
//! SQLite starts the WAL over from its beginning only when a write transaction begins while
//! every frame has been copied back, which never happens under steady load: the writer has
//! always appended more by the time this thread is done. So once the WAL holds more than
//! [`WAL_RESTART_FRAMES`] and this thread has just copied all of it, it raises a flag; the
//! writer, after answering its current batch, checkpoints the few frames written since (its
//! own PASSIVE checkpoint, a fraction of a millisecond) and its next transaction restarts the
//! WAL. The file then stays the same size, so a commit's fdatasync writes no inode.
//!
//! Once the store is fenced after a failed sync (see [`crate::sync`]) no checkpoint runs: it
//! would copy WAL pages of unknown content into the database file. A checkpoint that fails
//! with an I/O error fences the store itself, since it syncs the WAL and the database file.

use crate::priority::Background;
use crate::sync::Fence;
use rusqlite::Connection;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tollgate_store::{StoreError, StoreResult};

/// Time between two checkpoints, in milliseconds.
pub const CHECKPOINT_INTERVAL_MS: u64 = 100;
/// WAL frames (pages) past which the writer is asked to let the WAL start over.
pub const WAL_RESTART_FRAMES: i64 = 2_048;

/// The checkpoint thread; it stops when told to or when the store is dropped.
pub(crate) struct Checkpointer {
    stopped: Arc<(Mutex<bool>, Condvar)>,
}

impl Checkpointer {
    /// Starts the thread; it raises `restart` when the writer should finish a checkpoint, and
    /// stops checkpointing once `fence` is raised.
    pub(crate) fn start(
        path: &Path,
        restart: Arc<AtomicBool>,
        fence: Arc<Fence>,
        background: Arc<Background>,
    ) -> StoreResult<Self> {
        let conn = Connection::open(path).map_err(crate::internal)?;
        crate::configure(&conn).map_err(crate::internal)?;
        let stopped = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stopped.clone();
        std::thread::Builder::new()
            .name("tollgate-sqlite-checkpoint".into())
            .spawn(move || {
                background.enter();
                run(&conn, &flag, &restart, &fence)
            })
            .map_err(|e| {
                StoreError::Internal(format!("cannot start the checkpoint thread: {e}"))
            })?;
        Ok(Self { stopped })
    }

    /// Asks the thread to stop after the checkpoint in progress, if any.
    pub(crate) fn stop(&self) {
        let (lock, wake) = &*self.stopped;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(conn: &Connection, stopped: &(Mutex<bool>, Condvar), restart: &AtomicBool, fence: &Fence) {
    let (lock, wake) = stopped;
    loop {
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = wake
            .wait_timeout_while(
                guard,
                Duration::from_millis(CHECKPOINT_INTERVAL_MS),
                |stop| !*stop,
            )
            .unwrap_or_else(|e| e.into_inner());
        if *guard {
            break;
        }
        drop(guard);
        if fence.is_raised() {
            continue;
        }
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match done {
            Ok((wal_frames, copied)) => {
                tracing::trace!(wal_frames, copied, "checkpoint");
                if wal_frames > WAL_RESTART_FRAMES && copied == wal_frames {
                    restart.store(true, Ordering::Relaxed);
                }
            }
            Err(e) if crate::sync::checkpoint_fences(&e) => fence.raise(format!(
                "a WAL checkpoint failed ({e}); restart the server to recover from what is on \
                 disk"
            )),
            Err(e) => tracing::warn!(error = %e, "checkpoint failed; the next one retries"),
        }
    }
}
