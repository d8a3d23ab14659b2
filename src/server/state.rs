//! What a server holds in memory: the registry snapshot (swapped atomically, never read
//! per request) and the prepared online request shapes built from it.
//!
//! A server is stateless: everything here is rebuilt from PostgreSQL. Changes arrive by
//! `LISTEN skewless_registry` (an apply anywhere NOTIFYs); after a lost connection, and
//! every `registry.cache_ttl_seconds`, the snapshot is reloaded in full.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sqlx::postgres::PgListener;

use super::ApiError;
use crate::config::Config;
use crate::definitions::{Definitions, SelectedFeature};
use crate::online::read::OnlineQuery;
use crate::plugins::PluginStore;
use crate::registry::{NOTIFY_CHANNEL, Registry};
use crate::transform::PluginSet;

/// Most request shapes kept prepared; past it the cache starts afresh.
const MAX_SHAPES: usize = 1024;

/// One consistent view of the registry.
pub struct Snapshot {
    pub defs: Definitions,
    /// The plugins the on-demand views resolve to, loaded from the registry.
    pub plugins: PluginSet,
    pub loaded_at: Instant,
    shapes: Mutex<HashMap<String, Arc<OnlineQuery>>>,
}

impl Snapshot {
    pub fn new(defs: Definitions, plugins: PluginSet) -> Self {
        Self {
            defs,
            plugins,
            loaded_at: Instant::now(),
            shapes: Mutex::new(HashMap::new()),
        }
    }

    /// The prepared query of a request shape, built on first use: `request` is the
    /// request's own wording of its features (so a repeated request resolves nothing),
    /// `resolve` turns it into features when the shape is new.
    pub fn online_query(
        &self,
        config: &Config,
        request: &str,
        resolve: impl FnOnce(&Definitions) -> Result<Vec<SelectedFeature>, ApiError>,
    ) -> Result<Arc<OnlineQuery>, ApiError> {
        if let Some(q) = self.shapes.lock().expect("not poisoned").get(request) {
            return Ok(q.clone());
        }
        let features = resolve(&self.defs)?;
        let query = Arc::new(OnlineQuery::new(config, &self.defs, &self.plugins, features)?);
        let mut shapes = self.shapes.lock().expect("not poisoned");
        if shapes.len() >= MAX_SHAPES {
            shapes.clear();
        }
        shapes.insert(request.to_string(), query.clone());
        Ok(query)
    }
}

/// The registry snapshot shared by every request.
pub struct RegistryCache {
    registry: Registry,
    plugins: PluginStore,
    /// The last refused change from `serve --dev`'s file watcher (the server keeps serving
    /// its last good state meanwhile).
    change_error: Mutex<Option<String>>,
    current: ArcSwap<Snapshot>,
    last_error: Mutex<Option<String>>,
}

impl RegistryCache {
    pub fn new(registry: Registry, plugins: PluginStore) -> Self {
        Self {
            registry,
            plugins,
            change_error: Mutex::new(None),
            current: ArcSwap::from_pointee(Snapshot::new(
                Definitions::default(),
                PluginSet::default(),
            )),
            last_error: Mutex::new(Some("registry not loaded yet".into())),
        }
    }

    /// The registry the snapshot is read from (plugin uploads and activations go there).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The loader plugins go through (uploads are validated by it).
    pub fn plugin_store(&self) -> &PluginStore {
        &self.plugins
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Why the last reload failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("not poisoned").clone()
    }

    /// Records (or clears) why the last watched change was refused.
    pub fn set_change_error(&self, error: Option<String>) {
        *self.change_error.lock().expect("not poisoned") = error;
    }

    /// Why the last watched change was refused, if it was.
    pub fn change_error(&self) -> Option<String> {
        self.change_error.lock().expect("not poisoned").clone()
    }

    pub fn is_loaded(&self) -> bool {
        self.last_error().is_none()
    }

    /// Reads the registry, loads the plugins it names (unchanged ones are cached), and
    /// swaps the snapshot in. In-flight requests keep the snapshot they started with; a
    /// failed reload keeps the last good one.
    pub async fn reload(&self) -> Result<(), String> {
        let loaded = async {
            let defs = self.registry.load().await.map_err(|e| e.to_string())?;
            let plugins = self
                .plugins
                .load_applied(&self.registry, &defs)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((defs, plugins))
        }
        .await;
        match loaded {
            Ok((defs, plugins)) => {
                let views = defs.feature_views.len();
                let derived = defs.on_demand_feature_views.len();
                self.current.store(Arc::new(Snapshot::new(defs, plugins)));
                *self.last_error.lock().expect("not poisoned") = None;
                tracing::info!(views, derived, "registry loaded");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "registry reload failed; keeping the last good state");
                *self.last_error.lock().expect("not poisoned") = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Keeps the snapshot fresh for as long as the server runs: LISTEN for applies,
    /// reload in full on (re)connect and every `ttl`.
    pub async fn watch(self: Arc<Self>, project: String, ttl: Duration) {
        loop {
            let mut listener = match PgListener::connect_with(self.registry.pool()).await {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::warn!(error = %e, "registry listener cannot connect; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
                tracing::warn!(error = %e, "LISTEN failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            // Anything may have changed while we were not listening.
            let _ = self.reload().await;
            loop {
                match tokio::time::timeout(ttl, listener.try_recv()).await {
                    Ok(Ok(Some(n))) if n.payload() == project => {
                        let _ = self.reload().await;
                    }
                    Ok(Ok(Some(_))) => {}
                    // The connection dropped (and sqlx reconnected): reload in full.
                    Ok(Ok(None)) => {
                        let _ = self.reload().await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "registry listener failed; reconnecting");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        break;
                    }
                    Err(_) => {
                        let _ = self.reload().await;
                    }
                }
            }
        }
    }
}
