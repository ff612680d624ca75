//! The HTTP server of Tollgate: axum routes for the API of `API.md`, key authentication, the
//! plan cache, the settings cache, metrics, the reservation sweeper (and the retention purge of
//! logged prompts it runs) and the OpenAPI document.
//!
//! A request goes: observe (request id, span, metrics, timeout) → authenticate the key → parse
//! the body into core newtypes (`tollgate-api`) → one [`Store`] command with `now` and fresh ids
//! → render the outcome. Only this crate knows HTTP status codes ([`error`]).
//!
//! Entry points: [`AppState`], [`router`], [`run`], and [`bootstrap`] for `tollgate init`.

pub mod auth;
pub mod bootstrap;
pub mod config;
pub mod cors;
pub mod error;
pub mod extract;
pub mod forwarder;
pub mod ids;
pub mod key_format;
pub mod metrics;
mod observe;
pub mod openapi;
pub mod plan_cache;
mod render;
pub mod retention;
mod routes;
pub mod settings_cache;
pub mod sweeper;
pub mod user_token;

use std::future::Future;
use std::sync::Arc;
use tollgate_store::Store;

pub use config::ServerConfig;
pub use error::ApiError;
pub use metrics::Metrics;
pub use plan_cache::PlanCache;
pub use routes::router;

/// Largest request body, in bytes (1 MiB, API.md §1); larger answers `413 payload_too_large`.
pub const REQUEST_BODY_BYTES_MAX: usize = 1024 * 1024;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub plans: Arc<PlanCache>,
    pub keys: Arc<auth::AuthCache>,
    pub token_secrets: Arc<user_token::TokenSecrets>,
    pub settings: Arc<settings_cache::SettingsCache>,
    pub metrics: Arc<Metrics>,
    pub config: Arc<ServerConfig>,
}

impl AppState {
    /// `metrics` should be the observer the store was opened with, so `/metrics` shows the
    /// writer's batches.
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>, config: ServerConfig) -> Self {
        Self {
            store,
            plans: Arc::new(PlanCache::new(metrics.clone())),
            keys: Arc::new(auth::AuthCache::default()),
            token_secrets: Arc::new(user_token::TokenSecrets::default()),
            settings: Arc::new(settings_cache::SettingsCache::default()),
            metrics,
            config: Arc::new(config),
        }
    }
}

/// Serves the API on `listener` until `shutdown` resolves, then drains in-flight requests,
/// stops the sweeper and shuts the store down (finishing its queued writes).
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_sweeper, stopped) = tokio::sync::watch::channel(false);
    let sweeper = tokio::spawn(sweeper::run(
        state.store.clone(),
        state.settings.clone(),
        state.config.sweep_interval,
        stopped,
    ));
    let forwarder = tokio::spawn(forwarder::run(
        state.store.clone(),
        state.metrics.clone(),
        stop_sweeper.subscribe(),
    ));
    let app = router(state.clone());
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    tracing::info!("http server stopped; stopping background tasks");
    // The receiver lives until the sweeper returns, so this send cannot fail while it runs.
    let _ = stop_sweeper.send(true);
    if let Err(e) = sweeper.await {
        tracing::error!(error = %e, "sweeper task failed");
    }
    if let Err(e) = forwarder.await {
        tracing::error!(error = %e, "meter forwarder task failed");
    }
    state.store.shutdown().await;
    tracing::info!("store shut down");
    served
}
