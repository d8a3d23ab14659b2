//! `skewless serve --dev`: hot reload. The feature repo's YAML files and the plugins
//! folder are watched; a change is applied (sources checked, plugins loaded in the
//! sandbox and type-checked, registry and plugin bytes written, NOTIFY) and swapped in
//! without a restart — the listening socket stays open. An invalid change changes
//! nothing: the last good state keeps serving, and the error is logged and shown by
//! `GET /ready` (detail) and `GET /plugins` (last_error) until a good change replaces it.
//! (`feature_store.yaml` settings other than definitions need a restart.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};

use super::SharedState;
use crate::plugins::PluginStore;
use crate::repo::FeatureRepo;

/// Changes closer together than this are applied once.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Starts watching `repo` (and its plugins folder) for as long as the server runs.
pub fn spawn(state: SharedState, repo: PathBuf) -> notify::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        for path in event.paths {
            if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "wasm")
            ) {
                let _ = tx.send(path);
            }
        }
    })?;
    watcher.watch(&repo, RecursiveMode::NonRecursive)?;
    let plugins = plugins_dir(&state, &repo);
    if plugins.is_dir() {
        watcher.watch(&plugins, RecursiveMode::NonRecursive)?;
    } else {
        tracing::warn!(dir = %plugins.display(), "plugins folder not found: only the definitions are watched");
    }
    tracing::info!(repo = %repo.display(), plugins = %plugins.display(), "dev mode: watching for changes");
    tokio::spawn(async move {
        let _watcher = watcher; // dropped with the task
        while let Some(first) = rx.recv().await {
            tokio::time::sleep(DEBOUNCE).await;
            let mut changed = vec![first];
            while let Ok(path) = rx.try_recv() {
                changed.push(path);
            }
            changed.sort();
            changed.dedup();
            apply_change(&state, &repo, &changed).await;
        }
    });
    Ok(())
}

fn plugins_dir(state: &SharedState, repo: &Path) -> PathBuf {
    let dir = &state.config.plugins.dir;
    if dir.is_absolute() {
        dir.clone()
    } else {
        repo.join(dir)
    }
}

#[tracing::instrument(skip_all, fields(files = changed.len()))]
async fn apply_change(state: &SharedState, repo: &Path, changed: &[PathBuf]) {
    let result = async {
        let repo = FeatureRepo::load(repo).map_err(|e| e.to_string())?;
        let store = PluginStore::new(&repo.config.plugins, &repo.dir).map_err(|e| e.to_string())?;
        repo.apply(&state.offline, state.registry.registry(), &store, true)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    match result {
        Ok(plan) => {
            state.registry.set_change_error(None);
            let _ = state.registry.reload().await;
            tracing::info!(
                changes = plan.changes.len(),
                files = ?changed,
                "dev mode: change applied"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, files = ?changed, "dev mode: change refused; the last good state keeps serving");
            state.registry.set_change_error(Some(e));
        }
    }
}
