//! Making committed batches durable: the WAL sync, the syncer thread, and the fence a failed
//! sync raises.
//!
//! The writer commits with `synchronous=NORMAL`, so a committed batch sits in the WAL in the
//! page cache until [`Durability::make_durable`] calls `fdatasync` on the WAL; only then are its
//! callers answered. One sync covers every batch appended before it, in order.
//!
//! **The descriptor.** The WAL is opened once, when the writer starts, and that descriptor is
//! synced for the life of the store. Opening the WAL by path for each sync (as the first
//! version did) fails when the process is out of file descriptors (`EMFILE`), which turned
//! committed batches into `503`s that said "nothing was applied" (issue 10). A held
//! descriptor also sees every writeback error of the file since it was opened, where one
//! opened later may not (Linux reports a writeback error once to each open file description).
//! SQLite never replaces the WAL file while a connection holds it open, as the writer does.
//!
//! **The fence** ("fsyncgate"). After a failed `fdatasync` the kernel may have dropped the
//! dirty pages of the WAL, or marked them clean, so a later sync that succeeds proves nothing
//! about them: what is on disk is unknown. So the first failed sync fences the store for the
//! rest of the process: the batches waiting for that sync, and any committed after it, answer
//! `OutcomeUnknown`; every later write answers `Unavailable` without running (nothing
//! applied); no sync and no checkpoint runs again (a checkpoint would copy pages of unknown
//! content into the database file); `/readyz` answers `503` naming the cause; and the writer's
//! connection is never closed, so SQLite does not checkpoint on close either. A restart then
//! recovers from what is on disk: SQLite replays the WAL up to its last intact commit, whose
//! frames are checksummed. Reads keep being served meanwhile, from a state that may be ahead
//! of the disk, as during the fraction of a millisecond before any sync.

use crate::writer::Pending;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tollgate_store::{StoreError, StoreObserver};

/// How the WAL is made durable: `File::sync_data` (`fdatasync`) in production; unit tests
/// pass one that fails, to see what the writer does then.
pub(crate) type WalSync = Arc<dyn Fn(&File) -> std::io::Result<()> + Send + Sync>;

/// The production [`WalSync`].
pub(crate) fn fdatasync() -> WalSync {
    Arc::new(|wal: &File| wal.sync_data())
}

/// What a write hears when the store is fenced: nothing of it ran.
const FENCED: &str = "the store takes no writes after a failed sync; restart the server";
/// What the callers of a committed batch hear when its durability is unknown.
const NOT_DURABLE: &str = "the batch was committed but could not be made durable";

/// Set once, by the first failure after which nothing written can be trusted to be on disk;
/// cleared only by a restart.
#[derive(Default)]
pub(crate) struct Fence(OnceLock<String>);

impl Fence {
    /// Why the store is fenced: a sentence for an operator (`/readyz` shows it).
    pub(crate) fn reason(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }

    pub(crate) fn is_raised(&self) -> bool {
        self.0.get().is_some()
    }

    /// Raises the fence; the first call logs it, later ones keep the first reason.
    pub(crate) fn raise(&self, reason: String) {
        if self.0.set(reason).is_ok() {
            tracing::error!(
                reason = self.reason().unwrap_or_default(),
                "the store is fenced: it takes no more writes; restart the server to recover \
                 from what is on disk"
            );
        }
    }

    /// The error of a write refused because the store is fenced.
    pub(crate) fn refusal() -> StoreError {
        StoreError::Unavailable(FENCED.into())
    }
}

/// A committed batch's answers, waiting for the sync that makes the batch durable.
pub(crate) struct Committed {
    pub(crate) answers: Vec<Box<dyn Pending>>,
}

/// What the writer and the syncer share to make batches durable.
pub(crate) struct Durability {
    /// The WAL of the writer's connection, open since the writer started.
    wal: File,
    sync: WalSync,
    pub(crate) fence: Arc<Fence>,
    observer: Arc<dyn StoreObserver>,
    /// Batches handed to the syncer and not yet answered.
    pub(crate) queued: AtomicUsize,
}

impl Durability {
    /// Opens the WAL at `wal` (creating it if SQLite has not yet; it is the same file SQLite
    /// then opens).
    pub(crate) fn open(
        wal: &Path,
        sync: WalSync,
        fence: Arc<Fence>,
        observer: Arc<dyn StoreObserver>,
    ) -> std::io::Result<Durability> {
        let wal = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(wal)?;
        Ok(Durability {
            wal,
            sync,
            fence,
            observer,
            queued: AtomicUsize::new(0),
        })
    }

    /// Syncs the WAL once and answers every batch in `ready` (all committed before the call):
    /// `Ok` if the sync succeeded, `OutcomeUnknown` if it failed or the store is fenced.
    pub(crate) fn make_durable(&self, ready: &mut Vec<Committed>) {
        let durable = if self.fence.is_raised() {
            // A sync now could succeed and still prove nothing about the pages the failed one
            // lost, so none is attempted.
            Err(StoreError::OutcomeUnknown(NOT_DURABLE.into()))
        } else {
            (self.sync)(&self.wal).map_err(|e| {
                self.fence.raise(format!(
                    "a WAL sync failed ({e}); restart the server to recover from what is on disk"
                ));
                StoreError::OutcomeUnknown(NOT_DURABLE.into())
            })
        };
        for batch in ready.drain(..) {
            if durable.is_ok() {
                self.observer.batch_committed(batch.answers.len());
            }
            for p in batch.answers {
                p.complete(durable.clone());
            }
        }
    }

    /// Answers a committed batch that no sync will cover (the syncer is gone): its outcome is
    /// unknown, and so is every later batch's, so the store is fenced.
    pub(crate) fn abandon(&self, batch: Committed, why: &str) {
        self.fence.raise(format!("{why}; restart the server"));
        for p in batch.answers {
            p.complete(Err(StoreError::OutcomeUnknown(NOT_DURABLE.into())));
        }
    }
}

/// Makes committed batches durable in order and answers their callers: takes every batch
/// waiting, syncs the WAL once for all of them, answers them all. Ends when the writer does.
pub(crate) fn syncer(sync: &Durability, committed: &std::sync::mpsc::Receiver<Committed>) {
    let mut ready: Vec<Committed> = Vec::new();
    while let Ok(first) = committed.recv() {
        ready.push(first);
        ready.extend(committed.try_iter());
        let taken = ready.len();
        sync.make_durable(&mut ready);
        sync.queued.fetch_sub(taken, Ordering::AcqRel);
    }
}

/// Whether a failed checkpoint leaves the disk in doubt. A checkpoint syncs the WAL before it
/// copies it back and syncs the database file after, so an I/O error from it may be a failed
/// sync of either; a full disk (`SQLITE_FULL`, from `write`) or a busy lock loses no page.
pub(crate) fn checkpoint_fences(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::SystemIoFailure)
}
