//! Online backups of a data dir, and restores from them (`tollgate backup` / `restore`,
//! docs/operations.md).
//!
//! A backup is one SQLite file that holds everything the data dir held when the backup began,
//! taken while a server keeps writing:
//!
//! 1. the command log's records are read first (`serve --engine` keeps acknowledged writes
//!    there before the tables have them);
//! 2. then `VACUUM INTO` copies the tables in one read transaction: a consistent snapshot at
//!    the log position the tables had reached, which is at least where the log copy starts,
//!    since the engine deletes only records the tables already hold;
//! 3. the copied records past that position are applied to the copy, and the copy's log
//!    position reset to 0, so a restored data dir needs no log and any mode opens it.
//!
//! Every write acknowledged before the backup began is in it. Writes made during the backup
//! may or may not be. The server is never paused or locked out: the backup reads through its
//! own read-only connection, as the server's readers do.

use crate::engine::fold_records;
use crate::{internal, open_reader, schema, DATABASE_FILE, LOG_DIR};
use std::path::{Path, PathBuf};
use tollgate_store::{StoreError, StoreResult};

/// What a backup or restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// The size of the backup file, in bytes.
    pub bytes: u64,
    /// The schema version of the data in it.
    pub schema_version: usize,
    /// Command log records that were not in the tables yet and were applied to the copy.
    pub log_records: u64,
}

fn unavailable(what: String) -> impl Fn(std::io::Error) -> StoreError {
    move |e| StoreError::Unavailable(format!("{what}: {e}"))
}

/// Every record of the command log in `data_dir` (none without a log), read while a server may
/// be appending to it and deleting its oldest segments.
fn copy_log(data_dir: &Path) -> StoreResult<Vec<tollgate_log::Record>> {
    let dir = data_dir.join(LOG_DIR);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let log_error = |e: tollgate_log::LogError| {
        StoreError::Unavailable(format!(
            "cannot read the command log in {}: {e}",
            dir.display()
        ))
    };
    let mut after = 0;
    // The oldest segment may be deleted between listing and reading it: start again after it.
    for _ in 0..LOG_COPY_ATTEMPTS {
        let records = match tollgate_log::read_after(&dir, after) {
            Ok(records) => records,
            Err(tollgate_log::LogError::Gap { first_lsn, .. }) => {
                after = first_lsn - 1;
                continue;
            }
            Err(e) => return Err(log_error(e)),
        };
        match records.collect::<Result<Vec<_>, _>>() {
            Ok(records) => return Ok(records),
            Err(_) => continue,
        }
    }
    Err(StoreError::Unavailable(format!(
        "the command log in {} kept changing under the backup; try again",
        dir.display()
    )))
}

/// Times a backup retries reading a log whose segments are being deleted under it.
const LOG_COPY_ATTEMPTS: usize = 5;

/// Writes a consistent backup of the data dir to `to`, which must not exist. A server may be
/// running on the data dir.
pub async fn backup(data_dir: &Path, to: &Path) -> StoreResult<BackupReport> {
    let source = data_dir.join(DATABASE_FILE);
    if !source.exists() {
        return Err(StoreError::NotFound);
    }
    if to.exists() {
        return Err(StoreError::AlreadyExists);
    }
    // Work beside the target, so the finished file is renamed into place, never half-written.
    let work = partial_dir(to);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)
        .map_err(unavailable(format!("cannot create {}", work.display())))?;
    let result = backup_into(&source, data_dir, &work, to).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn backup_into(
    source: &Path,
    data_dir: &Path,
    work: &Path,
    to: &Path,
) -> StoreResult<BackupReport> {
    let (data_dir, source, copy, to) = (
        data_dir.to_path_buf(),
        source.to_path_buf(),
        work.join(DATABASE_FILE),
        to.to_path_buf(),
    );
    tokio::task::spawn_blocking(move || backup_blocking(&source, &data_dir, &copy, &to))
        .await
        .map_err(|e| StoreError::Internal(format!("backup thread: {e}")))?
}

fn backup_blocking(
    source: &Path,
    data_dir: &Path,
    copy: &Path,
    to: &Path,
) -> StoreResult<BackupReport> {
    let records = copy_log(data_dir)?;
    let conn = open_reader(source).map_err(internal)?;
    conn.execute("VACUUM INTO ?1", [copy.to_string_lossy()])
        .map_err(internal)?;
    drop(conn);
    let mut conn = rusqlite::Connection::open(copy).map_err(internal)?;
    crate::configure(&conn).map_err(internal)?;
    let log_records = fold_records(&mut conn, records)?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(internal)?;
    if check != "ok" {
        return Err(StoreError::Internal(format!(
            "the backup copy fails its check: {check}"
        )));
    }
    let schema_version = schema::status(&conn)?.current;
    drop(conn);
    std::fs::File::open(copy)
        .and_then(|f| f.sync_all())
        .map_err(unavailable(format!("cannot sync {}", copy.display())))?;
    std::fs::rename(copy, to).map_err(unavailable(format!("cannot write {}", to.display())))?;
    sync_dir(to)?;
    let bytes = std::fs::metadata(to)
        .map_err(unavailable(format!("cannot read {}", to.display())))?
        .len();
    Ok(BackupReport {
        bytes,
        schema_version,
        log_records,
    })
}

fn partial_dir(to: &Path) -> PathBuf {
    let mut name = to.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    to.with_file_name(name)
}

fn sync_dir(file: &Path) -> StoreResult<()> {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(unavailable(format!("cannot sync {}", dir.display())))
}

/// Makes `data_dir` (missing or empty) a data dir holding the backup `from`. The database is
/// checked before it is put in place; a backup from an older version is migrated by the next
/// `serve`, one from a newer version is refused.
pub fn restore(from: &Path, data_dir: &Path) -> StoreResult<BackupReport> {
    let occupied = std::fs::read_dir(data_dir).is_ok_and(|mut d| d.next().is_some());
    if occupied {
        return Err(StoreError::AlreadyExists);
    }
    let conn = rusqlite::Connection::open_with_flags(
        from,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(internal)?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| {
            StoreError::Unavailable(format!("{} is no Tollgate backup: {e}", from.display()))
        })?;
    if check != "ok" {
        return Err(StoreError::Unavailable(format!(
            "{} fails its check: {check}",
            from.display()
        )));
    }
    let status = schema::status(&conn)?;
    if status.current == 0 {
        return Err(StoreError::Unavailable(format!(
            "{} holds no Tollgate data",
            from.display()
        )));
    }
    drop(conn);
    std::fs::create_dir_all(data_dir)
        .map_err(unavailable(format!("cannot create {}", data_dir.display())))?;
    let target = data_dir.join(DATABASE_FILE);
    let partial = data_dir.join(format!("{DATABASE_FILE}.restoring"));
    std::fs::copy(from, &partial).map_err(unavailable(format!(
        "cannot copy {} to {}",
        from.display(),
        partial.display()
    )))?;
    std::fs::File::open(&partial)
        .and_then(|f| f.sync_all())
        .map_err(unavailable(format!("cannot sync {}", partial.display())))?;
    std::fs::rename(&partial, &target)
        .map_err(unavailable(format!("cannot write {}", target.display())))?;
    sync_dir(&target)?;
    let bytes = std::fs::metadata(&target)
        .map_err(unavailable(format!("cannot read {}", target.display())))?
        .len();
    Ok(BackupReport {
        bytes,
        schema_version: status.current,
        log_records: 0,
    })
}
