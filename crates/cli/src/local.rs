//! The commands that own the data dir: `init` creates an install, `serve` runs the server on it.
//!
//! Both open the store themselves; a server must not be running on the same data dir during
//! `init` (the SQLite store has one writer).

use crate::settings::{Database, FileSettings, Overrides, Settings};
use crate::{InitArgs, MigrateArgs, SeedEventsArgs, ServeArgs, StorageArgs};
use anyhow::{bail, Context, Result};
use jiff::Timestamp;
use std::io::IsTerminal;
use std::sync::Arc;
use tollgate_api::InitOutput;
use tollgate_server::{AppState, Metrics, ServerConfig};
use tollgate_store::{Store, StoreError, StoreObserver};
use tollgate_store_postgres::PgStore;
use tollgate_store_sqlite::{catch_up_log, EngineStore, SqliteStore};

fn settings(storage: &StorageArgs, over: Overrides) -> Result<Settings> {
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

async fn open_store(
    settings: &Settings,
    observer: Arc<dyn StoreObserver>,
) -> Result<Arc<dyn Store>> {
    let database = &settings.database;
    match database {
        Database::Sqlite { data_dir } => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
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

/// `tollgate migrate`: applies the PostgreSQL schema migrations (SQLite migrates on open).
pub async fn migrate(args: MigrateArgs) -> Result<()> {
    let settings = settings(&args.storage, Overrides::default())?;
    match &settings.database {
        Database::Postgres { url } => {
            let url = url.clone();
            let applied =
                tokio::task::spawn_blocking(move || tollgate_store_postgres::migrate(&url))
                    .await?
                    .with_context(|| format!("cannot migrate {}", settings.database.describe()))?;
            println!(
                "{}: {applied} migration(s) applied; the schema is current",
                settings.database.describe()
            );
        }
        Database::Sqlite { .. } => {
            let store = open_store(&settings, Arc::new(Metrics::new())).await?;
            store.shutdown().await;
            println!("{}: the schema is current", settings.database.describe());
        }
    }
    Ok(())
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

/// `tollgate init`: creates the install and prints its secrets once.
pub async fn init(args: InitArgs) -> Result<()> {
    let settings = settings(&args.storage, Overrides::default())?;
    let store = open_store(&settings, Arc::new(Metrics::new())).await?;
    let created = create_install(&store, &settings.database).await;
    store.shutdown().await;
    let output = created?;
    if args.json {
        println!("{}", serde_json::to_string(&output)?);
    } else {
        print_secrets(&output, &settings.database);
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

fn print_secrets(output: &InitOutput, database: &Database) {
    println!("Tollgate is initialized in {}.", database.describe());
    println!("These secrets are shown once, now: store them somewhere safe.\n");
    let rows = [
        ("Admin token", &output.admin_token),
        ("Project", &output.project_id),
        ("Test secret key", &output.keys.test.secret),
        ("Test publishable key", &output.keys.test.publishable),
        ("Live secret key", &output.keys.live.secret),
        ("Live publishable key", &output.keys.live.publishable),
    ];
    for (label, value) in rows {
        println!("  {label:<22}{value}");
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
}

/// `tollgate serve`: runs until SIGTERM or SIGINT, then drains and exits cleanly.
pub async fn serve(args: ServeArgs) -> Result<()> {
    init_tracing();
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
        eprintln!(
            "tollgate: created a new install in {}. These secrets are shown this once; store \
             them somewhere safe:",
            settings.database.describe()
        );
        eprintln!("{}", serde_json::to_string(&output)?);
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
