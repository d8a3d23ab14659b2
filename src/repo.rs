//! A feature repo on disk: `feature_store.yaml` plus definition files.
//!
//! This is the only place that reads definition files; [`crate::definitions`] stays a
//! pure model so the server can rebuild it from the registry instead.

use std::path::{Path, PathBuf};

use crate::config::{CONFIG_FILE, Config, ConfigError};
use crate::definitions::{DefinitionErrors, Definitions, SourceFile};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Definitions(#[from] DefinitionErrors),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A loaded feature repo.
#[derive(Debug, Clone)]
pub struct FeatureRepo {
    pub dir: PathBuf,
    pub config: Config,
    pub definitions: Definitions,
}

impl FeatureRepo {
    /// Reads the configuration and every `*.yaml` / `*.yml` definition file of `dir`.
    pub fn load(dir: &Path) -> Result<Self, RepoError> {
        let config = Config::load(dir)?;
        let definitions = load_definitions(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            definitions,
        })
    }
}

/// The definition files of a repo, sorted by name so errors come out in a stable order.
pub fn definition_files(dir: &Path) -> Result<Vec<PathBuf>, RepoError> {
    let io = |source| RepoError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let is_yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if is_yaml && path.is_file() && path.file_name() != Some(CONFIG_FILE.as_ref()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Parses every definition file of `dir`.
pub fn load_definitions(dir: &Path) -> Result<Definitions, RepoError> {
    let mut texts = Vec::new();
    for path in definition_files(dir)? {
        let text = std::fs::read_to_string(&path).map_err(|source| RepoError::Io {
            path: path.clone(),
            source,
        })?;
        texts.push((path.display().to_string(), text));
    }
    let files: Vec<SourceFile<'_>> = texts
        .iter()
        .map(|(name, text)| SourceFile { name, text })
        .collect();
    Ok(Definitions::parse(&files)?)
}

/// Why `plan`/`apply` of a repo failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The definitions do not hold against the database (sources, columns, types).
    #[error(transparent)]
    Definitions(#[from] DefinitionErrors),
    /// A plugin is missing, broken, or does not match its view.
    #[error("{} problem{} with the transformation plugins:{}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.iter().map(|e| format!("\n  - {e}")).collect::<String>())]
    Plugins(Vec<crate::plugins::PluginError>),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
}

impl FeatureRepo {
    /// What applying this repo would change (`write: false`), or applies it: checks every
    /// source against the offline store, loads and type-checks each on-demand view's
    /// plugin from the plugins folder, then writes the registry, the plugin bytes and the
    /// online tables in one transaction. Shared by `skewless plan|apply` and the dev
    /// server's file watcher.
    pub async fn apply(
        &self,
        offline: &sqlx::PgPool,
        registry: &crate::registry::Registry,
        plugins: &crate::plugins::PluginStore,
        write: bool,
    ) -> Result<crate::registry::Plan, ApplyError> {
        crate::offline::check_sources(offline, &self.definitions).await?;
        let mut defs = self.definitions.clone();
        let mut stored = Vec::new();
        if !defs.on_demand_feature_views.is_empty() {
            let (_, found) = plugins
                .resolve_files(&mut defs)
                .await
                .map_err(ApplyError::Plugins)?;
            stored = found;
        }
        Ok(if write {
            registry
                .apply_with_plugins(&self.config, &defs, &stored)
                .await?
        } else {
            registry.plan(&self.config, &defs).await?
        })
    }
}
