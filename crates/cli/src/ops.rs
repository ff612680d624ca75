//! Operating an install: online backups and restores of the embedded store, and rotating the
//! admin token (docs/operations.md).

use crate::local::{data_dir_ready, private_files, settings, write_keys_file, KEYS_FILE_NAME};
use crate::settings::{Database, Overrides, DATA_DIR_DEFAULT};
use crate::{BackupArgs, RestoreArgs, RotateTokenArgs};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use tollgate_api::InitOutput;
use tollgate_server::bootstrap::{generate_admin_token, hash_secret};
use tollgate_store::StoreError;

/// `tollgate backup`: a consistent copy of a data dir in one file, while a server runs on it.
pub async fn backup(args: BackupArgs) -> Result<()> {
    private_files();
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from(DATA_DIR_DEFAULT));
    let started = std::time::Instant::now();
    let report = match tollgate_store_sqlite::backup(&data_dir, &args.to).await {
        Err(StoreError::NotFound) => bail!(
            "{} holds no Tollgate database; on PostgreSQL, back up with pg_dump \
             (docs/operations.md)",
            data_dir.display()
        ),
        Err(StoreError::AlreadyExists) => {
            bail!("{} exists; give a new file", args.to.display())
        }
        other => other.with_context(|| format!("cannot back up {}", data_dir.display()))?,
    };
    println!(
        "backed up {} to {}: {} bytes, schema version {}, {} command log record(s) folded in, \
         in {:.1} s",
        data_dir.display(),
        args.to.display(),
        report.bytes,
        report.schema_version,
        report.log_records,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `tollgate restore`: a new data dir from a backup file.
pub async fn restore(args: RestoreArgs) -> Result<()> {
    private_files();
    let (from, data_dir) = (args.from.clone(), args.data_dir.clone());
    let report =
        tokio::task::spawn_blocking(move || tollgate_store_sqlite::restore(&from, &data_dir))
            .await?;
    let report = match report {
        Err(StoreError::AlreadyExists) => bail!(
            "{} is not empty: restore into a new data dir, then point `serve` at it",
            args.data_dir.display()
        ),
        other => other.with_context(|| {
            format!(
                "cannot restore {} into {}",
                args.from.display(),
                args.data_dir.display()
            )
        })?,
    };
    println!(
        "restored {} into {}: {} bytes, schema version {}; start it with \
         `tollgate serve --data-dir {}`",
        args.from.display(),
        args.data_dir.display(),
        report.bytes,
        report.schema_version,
        args.data_dir.display()
    );
    Ok(())
}

/// `tollgate admin rotate-token`: through a running server with the admin token, or with
/// `--local` straight into the store (a lost token).
pub async fn rotate_token(args: RotateTokenArgs) -> Result<()> {
    let token = if args.local {
        rotate_locally(&args).await?
    } else {
        crate::remote::rotate_admin_token(&args.admin).await?
    };
    if args.json {
        println!("{}", serde_json::json!({ "adminToken": token }));
    } else {
        println!("The new admin token, shown once (the old one no longer works):\n\n  {token}");
    }
    Ok(())
}

async fn rotate_locally(args: &RotateTokenArgs) -> Result<String> {
    private_files();
    let settings = settings(&args.storage, Overrides::default())?;
    let token = generate_admin_token();
    let hash = hash_secret(&token);
    let database = settings.database.describe();
    match settings.database.clone() {
        Database::Postgres { url } => {
            let store = tokio::task::spawn_blocking(move || {
                tollgate_store_postgres::PgStore::connect(
                    &url,
                    1,
                    std::sync::Arc::new(tollgate_server::Metrics::new()),
                )
            })
            .await?
            .with_context(|| format!("cannot open {database}"))?;
            let rotated = tollgate_store::Store::rotate_admin_token(&store, hash).await;
            tollgate_store::Store::shutdown(&store).await;
            rotated
        }
        Database::Sqlite { data_dir } => {
            data_dir_ready(&data_dir)?;
            let store = tollgate_store_sqlite::SqliteStore::open(
                &data_dir,
                std::sync::Arc::new(tollgate_server::Metrics::new()),
            )
            .with_context(|| {
                format!(
                    "cannot open {database} (stop the server on it first: the embedded store \
                     has one writer)"
                )
            })?;
            let rotated = tollgate_store::Store::rotate_admin_token(&store, hash).await;
            tollgate_store::Store::shutdown(&store).await;
            rotated
        }
    }
    .map_err(|e| match e {
        StoreError::NotFound => anyhow::anyhow!("{database} holds no install yet"),
        e => anyhow::anyhow!("cannot rotate the admin token in {database}: {e}"),
    })?;
    update_keys_file(&settings.data_dir, &token)?;
    Ok(token)
}

/// The keys file keeps the install's current admin token, when there is one.
fn update_keys_file(data_dir: &std::path::Path, token: &str) -> Result<()> {
    let path = data_dir.join(KEYS_FILE_NAME);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let mut keys: InitOutput = serde_json::from_str(&text)
        .with_context(|| format!("cannot read the keys file {}", path.display()))?;
    keys.admin_token = token.to_string();
    write_keys_file(data_dir, &keys)?;
    Ok(())
}
