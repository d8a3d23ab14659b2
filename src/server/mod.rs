//! The feature server: axum routes over the library. It holds no SQL: every query lives
//! in [`crate::online`], [`crate::offline`] or [`crate::registry`].
//!
//! Routes (OpenAPI at `GET /openapi.json`):
//! - `GET /features/{id}`, `POST /get-online-features` (Feast's JSON), `POST /historical`
//! - `POST /materialize`, `POST /materialize-incremental`, `POST /write-to-online-store`,
//!   `POST /push` (admin token)
//! - `GET /health`, `GET /ready`, `GET /metrics`

mod admin;
mod error;
mod features;
mod ops;
mod plugins;
mod watch;
mod state;
mod training;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use sqlx::PgPool;
use tower_http::trace::TraceLayer;

pub use error::{ApiError, ErrorBody};
pub use state::{RegistryCache, Snapshot};

use crate::config::Config;
use crate::registry::Registry;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// Development mode: mutating routes need no token when bound to loopback.
    pub dev: bool,
    /// Hot reload (`serve --dev`): the feature repo to watch, with its plugins folder.
    pub watch: Option<std::path::PathBuf>,
}

/// Everything a handler may touch.
pub struct AppState {
    pub config: Config,
    pub online: PgPool,
    pub offline: PgPool,
    pub registry: Arc<RegistryCache>,
    pub dev: bool,
    pub addr: SocketAddr,
}

pub type SharedState = Arc<AppState>;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// Builds the state (lazy pools: the server starts even while the database is down).
pub fn state(config: Config, options: &ServeOptions) -> SharedState {
    let (online, offline) = config.server_pools();
    // Servers load plugins from the registry, never from files: the folder is unused.
    let plugins = crate::plugins::PluginStore::new(&config.plugins, std::path::Path::new("."))
        .expect("the WebAssembly engine starts");
    let registry = Arc::new(RegistryCache::new(
        Registry::new(online.clone(), &config),
        plugins,
    ));
    Arc::new(AppState {
        config,
        online,
        offline,
        registry,
        dev: options.dev,
        addr: options.addr,
    })
}

/// The routes.
pub fn router(state: SharedState) -> Router {
    let limit = state.config.server.max_body_bytes;
    let admin = Router::new()
        .route("/materialize", post(admin::materialize))
        .route(
            "/materialize-incremental",
            post(admin::materialize_incremental),
        )
        .route("/write-to-online-store", post(admin::write_to_online_store))
        .route("/push", post(admin::push))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::require_admin,
        ));
    let upload_limit = state.config.plugins.max_upload_mib << 20;
    let admin_only = || axum::middleware::from_fn_with_state(state.clone(), admin::require_admin);
    Router::new()
        .route(
            "/plugins",
            get(plugins::list).merge(
                post(plugins::upload)
                    .layer(DefaultBodyLimit::max(upload_limit))
                    .layer(admin_only()),
            ),
        )
        .route("/plugins/{name}", get(plugins::get))
        .route(
            "/plugins/{name}/activate",
            post(plugins::activate).layer(admin_only()),
        )
        .route(
            "/plugins/{name}/{version}",
            delete(plugins::delete).layer(admin_only()),
        )
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/features/{id}", get(features::get_features))
        .route("/get-online-features", post(features::get_online_features))
        .route("/historical", post(training::historical))
        .merge(admin)
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            error::json_errors,
        ))
        .layer(axum::middleware::from_fn(ops::record_metrics))
        .layer(DefaultBodyLimit::max(limit))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Runs the server until `shutdown` resolves; in-flight requests then finish.
pub async fn serve(
    config: Config,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: options.addr,
            source,
        })?;
    serve_on(listener, config, options, shutdown).await
}

/// Like [`serve`], on a listener the caller bound (tests bind port 0).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: Config,
    mut options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    if let Ok(addr) = listener.local_addr() {
        options.addr = addr;
    }
    ops::install_metrics();
    let state = state(config, &options);
    let ttl = Duration::from_secs(state.config.registry.cache_ttl_seconds.max(1));
    let _ = state.registry.reload().await;
    if let Some(repo) = options.watch.clone()
        && let Err(e) = watch::spawn(state.clone(), repo)
    {
        tracing::warn!(error = %e, "dev mode: cannot watch the feature repo");
    }
    let watcher = tokio::spawn(
        state
            .registry
            .clone()
            .watch(state.config.project.clone(), ttl),
    );
    tracing::info!(addr = %options.addr, dev = options.dev, "skewless serving");
    let result = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServerError::Serve);
    watcher.abort();
    result
}
