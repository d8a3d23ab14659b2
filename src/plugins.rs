//! The plugin store: where plugin bytes come from, and the loaded plugins.
//!
//! At `apply`, each on-demand view's plugin is read from the plugins folder
//! (`plugins.dir`, `<name>.wasm`), loaded in the sandbox, type-checked against the view,
//! and stored in the registry with its sha256, which the view records. Servers load the
//! applied bytes from the registry by that hash, so every server of a fleet runs exactly
//! what was applied. Loaded plugins are cached by hash: a reload recompiles nothing
//! that did not change. (Uploads over HTTP, versions and hot reload add to this module.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::config::PluginsConfig;
use crate::definitions::Definitions;
use crate::registry::{Registry, RegistryError, StoredPlugin};
use crate::transform::{LoadError, Plugin, PluginSet, Runtime, RuntimeOptions};

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{file}: on-demand feature view `{view}`: plugin `{plugin}` not found at {path} (build it: cd plugins && cargo build --release --target wasm32-wasip2)")]
    NotFound {
        file: String,
        view: String,
        plugin: String,
        path: PathBuf,
    },
    #[error("{file}: on-demand feature view `{view}`: {source}")]
    Load {
        file: String,
        view: String,
        #[source]
        source: LoadError,
    },
    #[error("{file}: on-demand feature view `{view}` does not match plugin `{plugin}` {version} ({path}):\n      - {}", problems.join("\n      - "))]
    Mismatch {
        file: String,
        view: String,
        plugin: String,
        version: String,
        path: String,
        problems: Vec<String>,
    },
    #[error("{file}: on-demand feature view `{view}` pins sha256 {pinned}, but {path} has sha256 {found}")]
    PinnedSha {
        file: String,
        view: String,
        pinned: String,
        found: String,
        path: PathBuf,
    },
    #[error("cannot read {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("on-demand feature view `{view}`: plugin {sha256} is not in the registry; apply again")]
    NotInRegistry { view: String, sha256: String },
    #[error("plugin {sha256} from the registry: {source}")]
    Registered {
        sha256: String,
        #[source]
        source: LoadError,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Runtime(String),
}

/// Loads plugins, from files (apply) or from the registry (servers), caching by hash.
pub struct PluginStore {
    /// Started on first use: commands that run no plugin never pay for the engine.
    runtime: std::sync::OnceLock<Arc<Runtime>>,
    memory_mib: usize,
    reuse_instances: bool,
    dir: PathBuf,
    loaded: Mutex<HashMap<String, Arc<Plugin>>>,
}

impl PluginStore {
    /// A store reading plugin files from `config.dir` (relative to `repo`).
    pub fn new(config: &PluginsConfig, repo: &Path) -> Result<Self, PluginError> {
        let dir = if config.dir.is_absolute() {
            config.dir.clone()
        } else {
            repo.join(&config.dir)
        };
        Ok(Self {
            runtime: std::sync::OnceLock::new(),
            memory_mib: config.memory_mib,
            reuse_instances: config.reuse_instances,
            dir,
            loaded: Mutex::new(HashMap::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn runtime(&self) -> Result<&Arc<Runtime>, String> {
        if let Some(r) = self.runtime.get() {
            return Ok(r);
        }
        let r = shared_runtime(self.memory_mib, self.reuse_instances)?;
        Ok(self.runtime.get_or_init(|| r))
    }

    /// Loads `bytes` (or returns the already loaded plugin with the same hash).
    pub async fn load_bytes(&self, label: &str, bytes: &[u8]) -> Result<Arc<Plugin>, LoadError> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        if let Some(p) = self.loaded.lock().expect("not poisoned").get(&sha256) {
            return Ok(p.clone());
        }
        let runtime = self.runtime().map_err(|reason| LoadError::Engine {
            plugin: label.to_string(),
            reason,
        })?;
        let plugin = Arc::new(runtime.load(label, bytes).await?);
        self.loaded
            .lock()
            .expect("not poisoned")
            .insert(sha256, plugin.clone());
        Ok(plugin)
    }

    /// For `apply`: loads each on-demand view's plugin file, checks it against the view,
    /// and records its hash in the view. Returns the plugins to store in the registry.
    /// Every problem of every view is reported, not just the first.
    pub async fn resolve_files(
        &self,
        defs: &mut Definitions,
    ) -> Result<(PluginSet, Vec<StoredPlugin>), Vec<PluginError>> {
        let mut set = PluginSet::default();
        let mut stored: Vec<StoredPlugin> = Vec::new();
        let mut errors = Vec::new();
        let mut resolved = Vec::new();
        for view in &defs.on_demand_feature_views {
            let path = self.dir.join(format!("{}.wasm", view.plugin.name));
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    errors.push(PluginError::NotFound {
                        file: view.file.clone(),
                        view: view.name.clone(),
                        plugin: view.plugin.name.clone(),
                        path,
                    });
                    resolved.push(None);
                    continue;
                }
                Err(e) => {
                    errors.push(PluginError::Io {
                        path,
                        message: e.to_string(),
                    });
                    resolved.push(None);
                    continue;
                }
            };
            let label = path.display().to_string();
            let plugin = match self.load_bytes(&label, &bytes).await {
                Ok(p) => p,
                Err(source) => {
                    errors.push(PluginError::Load {
                        file: view.file.clone(),
                        view: view.name.clone(),
                        source,
                    });
                    resolved.push(None);
                    continue;
                }
            };
            if let Some(pinned) = &view.plugin.sha256
                && pinned != plugin.sha256()
            {
                errors.push(PluginError::PinnedSha {
                    file: view.file.clone(),
                    view: view.name.clone(),
                    pinned: pinned.clone(),
                    found: plugin.sha256().to_string(),
                    path,
                });
                resolved.push(None);
                continue;
            }
            if let Err(problems) = defs.check_plugin(view, plugin.info()) {
                errors.push(PluginError::Mismatch {
                    file: view.file.clone(),
                    view: view.name.clone(),
                    plugin: plugin.info().name.clone(),
                    version: plugin.info().version.clone(),
                    path: label,
                    problems,
                });
                resolved.push(None);
                continue;
            }
            if !stored.iter().any(|s| s.sha256 == plugin.sha256()) {
                stored.push(StoredPlugin {
                    sha256: plugin.sha256().to_string(),
                    info: plugin.info().clone(),
                    bytes,
                });
            }
            resolved.push(Some(plugin.sha256().to_string()));
            set.insert(plugin);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        for (view, sha) in defs.on_demand_feature_views.iter_mut().zip(resolved) {
            view.plugin.resolved_sha256 = sha;
        }
        Ok((set, stored))
    }

    /// For servers: loads the plugin every applied on-demand view resolved to, from the
    /// registry's copy of its bytes.
    pub async fn load_applied(
        &self,
        registry: &Registry,
        defs: &Definitions,
    ) -> Result<PluginSet, PluginError> {
        self.load_applied_for(registry, defs, |_| true).await
    }

    /// Like [`Self::load_applied`], for the on-demand views `wanted` accepts only (a
    /// one-shot command loads what its request uses).
    pub async fn load_applied_for(
        &self,
        registry: &Registry,
        defs: &Definitions,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<PluginSet, PluginError> {
        let mut set = PluginSet::default();
        for view in defs
            .on_demand_feature_views
            .iter()
            .filter(|v| wanted(&v.name))
        {
            let sha256 = view.plugin.resolved_sha256.clone().unwrap_or_default();
            if set.get(&sha256).is_some() {
                continue;
            }
            let cached = self.loaded.lock().expect("not poisoned").get(&sha256).cloned();
            let plugin = match cached {
                Some(p) => p,
                None => {
                    let bytes = registry.plugin_bytes(&sha256).await?.ok_or_else(|| {
                        PluginError::NotInRegistry {
                            view: view.name.clone(),
                            sha256: sha256.clone(),
                        }
                    })?;
                    let label = format!("`{}` ({})", view.plugin.name, &sha256[..12.min(sha256.len())]);
                    self.load_bytes(&label, &bytes)
                        .await
                        .map_err(|source| PluginError::Registered {
                            sha256: sha256.clone(),
                            source,
                        })?
                }
            };
            set.insert(plugin);
        }
        Ok(set)
    }
}

/// One runtime per process and memory setting: an engine reserves its instance pool's
/// address space up front, so tests that start many servers must share it.
fn shared_runtime(memory_mib: usize, reuse_instances: bool) -> Result<Arc<Runtime>, String> {
    static RUNTIMES: Mutex<Vec<((usize, bool), Arc<Runtime>)>> = Mutex::new(Vec::new());
    let memory_bytes = memory_mib << 20;
    let key = (memory_bytes, reuse_instances);
    let mut runtimes = RUNTIMES.lock().expect("not poisoned");
    if let Some((_, r)) = runtimes.iter().find(|(k, _)| *k == key) {
        return Ok(r.clone());
    }
    let cache_dir = std::env::var_os("SKEWLESS_PLUGIN_CACHE")
        .map(PathBuf::from)
        .or_else(default_cache_dir);
    let runtime = Runtime::new(RuntimeOptions {
        memory_bytes,
        max_output_bytes: memory_bytes,
        cache_dir,
        reuse_instances,
    })
    .map_err(|e| format!("cannot start the WebAssembly engine: {e}"))?;
    runtimes.push((key, runtime.clone()));
    Ok(runtime)
}

/// `$XDG_CACHE_HOME/skewless/plugins` or `~/.cache/skewless/plugins`.
fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("skewless").join("plugins"))
}

/// Why `skewless plugin new` cannot scaffold.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("`{0}` is not a valid plugin name (letters, digits and underscores, starting with a letter)")]
    InvalidName(String),
    #[error("{0} already exists")]
    Exists(PathBuf),
    #[error("{path}: {message}")]
    Workspace { path: PathBuf, message: String },
    #[error("cannot write {path}: {message}")]
    Io { path: PathBuf, message: String },
}

/// Creates `<workspace>/<name>/` — a plugin crate that builds with `cargo build --release
/// --target wasm32-wasip2` and passes its own test as is — and adds it to the plugins
/// workspace's members. Returns the crate's folder.
pub fn scaffold(workspace: &Path, name: &str) -> Result<PathBuf, ScaffoldError> {
    if !crate::config::is_identifier(name) {
        return Err(ScaffoldError::InvalidName(name.to_string()));
    }
    let manifest = workspace.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|e| ScaffoldError::Workspace {
        path: manifest.clone(),
        message: format!("{e} (point --dir at the plugins workspace)"),
    })?;
    let mut doc: toml_edit::DocumentMut =
        text.parse().map_err(|e: toml_edit::TomlError| ScaffoldError::Workspace {
            path: manifest.clone(),
            message: e.to_string(),
        })?;
    let members = doc
        .get_mut("workspace")
        .and_then(|w| w.get_mut("members"))
        .and_then(|m| m.as_array_mut())
        .ok_or_else(|| ScaffoldError::Workspace {
            path: manifest.clone(),
            message: "no [workspace] members list".into(),
        })?;
    let dir = workspace.join(name);
    if dir.exists() || members.iter().any(|m| m.as_str() == Some(name)) {
        return Err(ScaffoldError::Exists(dir));
    }
    members.push(name);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| ScaffoldError::Io {
            path,
            message: e.to_string(),
        }
    };
    let fill = |template: &str| template.replace("{{name}}", name);
    std::fs::create_dir_all(dir.join("src")).map_err(io(&dir))?;
    let cargo = dir.join("Cargo.toml");
    std::fs::write(&cargo, fill(include_str!("../templates/plugin/Cargo.toml.tmpl")))
        .map_err(io(&cargo))?;
    let lib = dir.join("src/lib.rs");
    std::fs::write(&lib, fill(include_str!("../templates/plugin/lib.rs.tmpl"))).map_err(io(&lib))?;
    std::fs::write(&manifest, doc.to_string()).map_err(io(&manifest))?;
    Ok(dir)
}
