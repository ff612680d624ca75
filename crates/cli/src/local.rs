//! The commands that own the data dir: `init` creates an install, `serve` runs the server on it.
//!
//! Both open the store themselves; a server must not be running on the same data dir during
//! `init` (the SQLite store has one writer).
//!
//! The secrets of a new install (the admin token and every key) go to one file in the data
//! dir, readable only by its owner ([`KEYS_FILE_NAME`]). `serve` logs the file's path and the
//! test keys a newcomer needs, never the admin token or a live key: logs travel to shippers
//! and dashboards that secrets must not reach.

use crate::settings::{Database, FileSettings, Overrides, Settings};
use crate::{InitArgs, LogFormat, MigrateArgs, SeedEventsArgs, ServeArgs, StorageArgs};
use anyhow::{bail, Context, Result};
use jiff::Timestamp;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tollgate_api::InitOutput;
use tollgate_server::{AppState, Metrics, ServerConfig};
use tollgate_store::{Store, StoreError, StoreObserver};
use tollgate_store_postgres::PgStore;
use tollgate_store_sqlite::{catch_up_log, EngineStore, SqliteStore};

/// The file in the data dir that holds a new install's secrets (mode 0600).
pub const KEYS_FILE_NAME: &str = "tollgate-keys.json";
/// The data dir's mode when Tollgate creates it: its owner only.
const DATA_DIR_MODE: u32 = 0o700;
/// The keys file's mode: its owner only.
const KEYS_FILE_MODE: u32 = 0o600;

/// Files and directories this process creates are its owner's only (database files 0600,
/// directories 0700), whatever the caller's umask: they hold usage, prompts and key hashes.
pub fn private_files() {
    // SAFETY: umask(2) only sets the calling process's file mode creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

pub(crate) fn settings(storage: &StorageArgs, over: Overrides) -> Result<Settings> {
    let file = FileSettings::load(storage.config.as_deref())?;
    Settings::resolve(
        file,
        Overrides {
            data_dir: storage.data_dir.clone(),
            database_url: storage.database_url.clone(),
            engine: storage.engine,
            ..over
        },
    )
}

/// Creates the data dir (0700) if it is missing; warns when an existing one is open to others.
pub(crate) fn data_dir_ready(data_dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::metadata(data_dir) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "data dir {} has mode {mode:o}: other users may read it; `chmod 700 {}`",
                    data_dir.display(),
                    data_dir.display()
                );
            }
            Ok(())
        }
        Err(_) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DATA_DIR_MODE)
            .create(data_dir)
            .with_context(|| format!("cannot create data dir {}", data_dir.display())),
    }
}

/// Writes the secrets of a new install to `DIR/tollgate-keys.json`, readable only by its
/// owner, and returns its path.
pub(crate) fn write_keys_file(data_dir: &Path, output: &InitOutput) -> Result<PathBuf> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    data_dir_ready(data_dir)?;
    let path = data_dir.join(KEYS_FILE_NAME);
    let cannot = || format!("cannot write the keys file {}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(KEYS_FILE_MODE)
        .open(&path)
        .with_context(cannot)?;
    // A file left with another mode keeps it through `open`: set it.
    file.set_permissions(std::fs::Permissions::from_mode(KEYS_FILE_MODE))
        .with_context(cannot)?;
    let mut text = serde_json::to_string_pretty(output)?;
    text.push('\n');
    file.write_all(text.as_bytes()).with_context(cannot)?;
    file.sync_all().with_context(cannot)?;
    Ok(path)
}

async fn open_store(
    settings: &Settings,
    observer: Arc<dyn StoreObserver>,
) -> Result<Arc<dyn Store>> {
    let database = &settings.database;
    match database {
        Database::Sqlite { data_dir } => {
            data_dir_ready(data_dir)?;
            let cannot = || format!("cannot open the database in {}", data_dir.display());
            if settings.engine {
                let store = EngineStore::open(data_dir, observer)
                    .await
                    .with_context(cannot)?;
                return Ok(Arc::new(store));
            }
            let store = SqliteStore::open(data_dir, observer).with_context(cannot)?;
            // A command log left by the engine is applied to the tables before anything else.
            catch_up_log(&store, data_dir).await.with_context(cannot)?;
            Ok(Arc::new(store))
        }
        Database::Postgres { url } => {
            let url = url.clone();
            let store = tokio::task::spawn_blocking(move || {
                PgStore::connect(&url, tollgate_store_postgres::POOL_SIZE_DEFAULT, observer)
            })
            .await?
            .with_context(|| format!("cannot open the database {}", database.describe()))?;
            Ok(Arc::new(store))
        }
    }
}

/// `tollgate migrate`: applies the schema migrations (`serve` applies them too when it
/// starts); `--dry-run` prints what would run and runs nothing.
pub async fn migrate(args: MigrateArgs) -> Result<()> {
    let settings = settings(&args.storage, Overrides::default())?;
    let database = settings.database.describe();
    if args.dry_run {
        let status = match settings.database.clone() {
            Database::Postgres { url } => {
                tokio::task::spawn_blocking(move || tollgate_store_postgres::schema_status(&url))
                    .await?
            }
            Database::Sqlite { data_dir } => {
                tokio::task::spawn_blocking(move || tollgate_store_sqlite::schema_status(&data_dir))
                    .await?
            }
        }
        .with_context(|| format!("cannot read the schema of {database}"))?;
        print_schema_status(&database, &status);
        return Ok(());
    }
    match &settings.database {
        Database::Postgres { url } => {
            let url = url.clone();
            let applied =
                tokio::task::spawn_blocking(move || tollgate_store_postgres::migrate(&url))
                    .await?
                    .with_context(|| format!("cannot migrate {database}"))?;
            println!("{database}: {applied} migration(s) applied; the schema is current");
        }
        Database::Sqlite { .. } => {
            private_files();
            let store = open_store(&settings, Arc::new(Metrics::new())).await?;
            store.shutdown().await;
            println!("{database}: the schema is current");
        }
    }
    Ok(())
}

fn print_schema_status(database: &str, status: &tollgate_store::schema::SchemaStatus) {
    if status.pending.is_empty() {
        println!(
            "{database}: schema version {}, current; nothing would run",
            status.current
        );
        return;
    }
    println!(
        "{database}: schema version {}; `tollgate migrate` (or `serve`) would bring it to {} with:",
        status.current, status.newest
    );
    for migration in &status.pending {
        println!("  {}:", migration.version);
        for statement in &migration.statements {
            println!("    {statement}");
        }
    }
}

/// Most users `seed-events` spreads events over.
pub const SEED_USERS_MAX: u64 = 10_000_000;

/// `tollgate seed-events`: synthetic usage events appended to the install's test environment.
pub async fn seed_events(args: SeedEventsArgs) -> Result<()> {
    let (events, users) = (args.events, args.users);
    if !(1..=crate::bench::BENCH_SEED_EVENTS_MAX).contains(&events) {
        bail!(
            "--events must be 1 to {}",
            crate::bench::BENCH_SEED_EVENTS_MAX
        );
    }
    if !(1..=SEED_USERS_MAX).contains(&users) {
        bail!("--users must be 1 to {SEED_USERS_MAX}");
    }
    let settings = settings(&args.storage, Overrides::default())?;
    let database = settings.database.describe();
    let started = std::time::Instant::now();
    let progress = move |n: u64| eprint!("\rseeding events: {n} of {events}");
    match settings.database {
        Database::Postgres { url } => {
            tokio::task::spawn_blocking(move || {
                tollgate_store_postgres::migrate(&url)?;
                tollgate_store_postgres::seed_events(&url, events, users, progress)
            })
            .await?
        }
        Database::Sqlite { data_dir } => {
            tokio::task::spawn_blocking(move || {
                tollgate_store_sqlite::seed_events(&data_dir, events, users, progress)
            })
            .await?
        }
    }
    .with_context(|| format!("cannot seed {database}"))?;
    eprintln!(
        "\n{events} events over {users} users loaded into {database} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn already_initialized(database: &Database) -> anyhow::Error {
    anyhow::anyhow!(
        "{} already holds a Tollgate install; its secrets were shown when it was created \
         (make new keys with `tollgate keys create`)",
        database.describe()
    )
}

/// `tollgate init`: creates the install and writes its secrets to the keys file; `--json`
/// prints them too, for scripts.
pub async fn init(args: InitArgs) -> Result<()> {
    private_files();
    let settings = settings(&args.storage, Overrides::default())?;
    let store = open_store(&settings, Arc::new(Metrics::new())).await?;
    let created = create_install(&store, &settings.database).await;
    store.shutdown().await;
    let output = created?;
    let keys_file = write_keys_file(&settings.data_dir, &output)?;
    if args.json {
        println!("{}", serde_json::to_string(&output)?);
    } else {
        print_secrets(&output, &settings.database, &keys_file);
    }
    Ok(())
}

async fn create_install(store: &Arc<dyn Store>, database: &Database) -> Result<InitOutput> {
    if store.is_initialized().await? {
        return Err(already_initialized(database));
    }
    match tollgate_server::bootstrap::initialize(store.as_ref(), Timestamp::now()).await {
        Ok(output) => Ok(output),
        Err(StoreError::AlreadyExists) => Err(already_initialized(database)),
        Err(e) => Err(e.into()),
    }
}

fn print_secrets(output: &InitOutput, database: &Database, keys_file: &Path) {
    println!("Tollgate is initialized in {}.", database.describe());
    println!(
        "The admin token and every key are in {} (readable only by you);",
        keys_file.display()
    );
    println!("keep a copy somewhere safe. To try it, the test keys:\n");
    let rows = [
        ("Project", &output.project_id),
        ("Test secret key", &output.keys.test.secret),
        ("Test publishable key", &output.keys.test.publishable),
    ];
    for (label, value) in rows {
        println!("  {label:<22}{value}");
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
}

/// `tollgate serve`: runs until SIGTERM or SIGINT, then drains and exits cleanly.
pub async fn serve(args: ServeArgs) -> Result<()> {
    private_files();
    init_tracing(args.log_format);
    let settings = settings(
        &args.storage,
        Overrides {
            listen: args.listen.clone(),
            sweep_interval_ms: args.sweep_interval_ms,
            request_timeout_ms: args.request_timeout_ms,
            ..Overrides::default()
        },
    )?;
    tracing::debug!(?settings, "settings resolved");
    let metrics = Arc::new(Metrics::new());
    let store = open_store(&settings, metrics.clone()).await?;
    if !store.is_initialized().await? {
        let output = create_install(&store, &settings.database).await?;
        let keys_file = write_keys_file(&settings.data_dir, &output)?;
        tracing::info!(
            keys_file = %keys_file.display(),
            "created a new install in {}; its admin token and every key are in the keys file, \
             readable only by its owner",
            settings.database.describe()
        );
        tracing::info!(
            test_secret_key = %output.keys.test.secret,
            test_publishable_key = %output.keys.test.publishable,
            "the test environment's keys, to try it (`export TOLLGATE_KEY=<test_secret_key>`)"
        );
    }
    let listener = match tokio::net::TcpListener::bind(&settings.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            store.shutdown().await;
            bail!("cannot listen on {}: {e}", settings.listen);
        }
    };
    let addr = listener.local_addr()?;
    let state = AppState::new(
        store,
        metrics,
        ServerConfig {
            sweep_interval: settings.sweep_interval,
            request_timeout: settings.request_timeout,
        },
    );
    tracing::info!("listening on http://{addr}");
    tollgate_server::run(listener, state, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received; draining in-flight requests");
}
