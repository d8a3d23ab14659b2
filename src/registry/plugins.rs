//! Plugin versions in the registry: uploads, activation (roll forward or back), deletion.
//!
//! The bytes of every version live in `<schema>.plugins` under their sha256. Which bytes an
//! on-demand view runs is its `plugin.resolved_sha256`: activating a version rewrites that
//! field in every view using the plugin without a pin (version or sha256), in ONE
//! transaction that also bumps those objects' versions, records an apply and NOTIFYs every
//! server — so a fleet switches together, and a request or training-set batch, which works
//! from one registry snapshot, runs entirely on one version. `<schema>.plugin_active`
//! remembers the active version per plugin name.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Postgres, Row, Transaction};

use super::{NOTIFY_CHANNEL, ObjectKind, Registry, RegistryError, StoredPlugin, definitions_from};
use crate::definitions::{Definitions, PluginInfo};

/// One stored version of a plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginVersion {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size: i64,
    pub uploaded_at: DateTime<Utc>,
    pub active: bool,
    pub info: PluginInfo,
}

/// A plugin: its versions (newest first), the active one, the views using each.
#[derive(Debug, Clone, Serialize)]
pub struct PluginEntry {
    pub name: String,
    pub active_sha256: Option<String>,
    pub versions: Vec<PluginVersion>,
    /// (view, the sha256 it runs, whether it pins it).
    pub views: Vec<ViewUse>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ViewUse {
    pub view: String,
    pub sha256: String,
    pub pinned: bool,
}

/// Whether an upload stored new bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    Created,
    /// The same bytes were already stored: nothing changed.
    Unchanged,
}

/// Which version to activate.
#[derive(Debug, Clone)]
pub enum VersionSelector {
    Version(String),
    Sha256(String),
}

impl VersionSelector {
    /// A sha256 if it looks like one (64 hex digits), else a version.
    pub fn parse(s: &str) -> Self {
        if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
            Self::Sha256(s.to_ascii_lowercase())
        } else {
            Self::Version(s.to_string())
        }
    }
}

impl std::fmt::Display for VersionSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Version(v) => write!(f, "version {v}"),
            Self::Sha256(s) => write!(f, "sha256 {s}"),
        }
    }
}

/// Why a plugin operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum PluginRegistryError {
    #[error("plugin `{plugin}` {version} does not match the views that use it:\n{}", views.iter().map(|(v, p)| format!("  - on-demand feature view `{v}`: {}", p.join("; "))).collect::<Vec<_>>().join("\n"))]
    Incompatible {
        plugin: String,
        version: String,
        views: Vec<(String, Vec<String>)>,
    },
    #[error("unknown plugin `{name}` (known: {known})")]
    UnknownPlugin { name: String, known: String },
    #[error("plugin `{name}` has no {selector} (it has: {known})")]
    UnknownVersion {
        name: String,
        selector: String,
        known: String,
    },
    #[error("plugin `{name}` {version} is used by {}: change or re-point those views first", views.join(", "))]
    InUse {
        name: String,
        version: String,
        views: Vec<String>,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl From<sqlx::Error> for PluginRegistryError {
    fn from(e: sqlx::Error) -> Self {
        Self::Registry(e.into())
    }
}

impl Registry {
    /// Stores an uploaded plugin and makes it the active version of its name: every view
    /// using the plugin without a pin switches to it — unless one of them does not match
    /// its `describe()`, which refuses the whole upload. The same bytes again change
    /// nothing.
    pub async fn upload_plugin(
        &self,
        plugin: &StoredPlugin,
    ) -> Result<(Upload, Vec<String>), PluginRegistryError> {
        let mut tx = self.pool.begin().await?;
        self.lock(&mut tx).await?;
        self.ensure_layout(&mut tx).await?;
        if !self.store_plugin(&mut tx, plugin).await? {
            tx.rollback().await?;
            return Ok((Upload::Unchanged, Vec::new()));
        }
        let views = self
            .activate_in(&mut tx, &plugin.info, &plugin.sha256)
            .await?;
        tx.commit().await?;
        Ok((Upload::Created, views))
    }

    /// Makes a stored version the active one (roll forward or back): the views using the
    /// plugin without a pin switch to it, in one transaction, after the same check as an
    /// upload. Returns the version and the views switched.
    pub async fn activate_plugin(
        &self,
        name: &str,
        selector: &VersionSelector,
    ) -> Result<(PluginVersion, Vec<String>), PluginRegistryError> {
        let mut tx = self.pool.begin().await?;
        self.lock(&mut tx).await?;
        self.ensure_layout(&mut tx).await?;
        let version = self.find_version(&mut tx, name, selector).await?;
        let views = self
            .activate_in(&mut tx, &version.info, &version.sha256)
            .await?;
        tx.commit().await?;
        Ok((
            PluginVersion {
                active: true,
                ..version
            },
            views,
        ))
    }

    /// Deletes a stored version; refused while a view runs it.
    pub async fn delete_plugin(
        &self,
        name: &str,
        selector: &VersionSelector,
    ) -> Result<PluginVersion, PluginRegistryError> {
        let mut tx = self.pool.begin().await?;
        self.lock(&mut tx).await?;
        self.ensure_layout(&mut tx).await?;
        let version = self.find_version(&mut tx, name, selector).await?;
        let defs = self.defs_in(&mut tx).await?;
        let users: Vec<String> = defs
            .on_demand_feature_views
            .iter()
            .filter(|v| v.plugin.resolved_sha256.as_deref() == Some(version.sha256.as_str()))
            .map(|v| v.name.clone())
            .collect();
        if !users.is_empty() {
            return Err(PluginRegistryError::InUse {
                name: name.to_string(),
                version: version.version.clone(),
                views: users,
            });
        }
        sqlx::query(&format!(
            "DELETE FROM {} WHERE project = $1 AND sha256 = $2",
            self.table("plugins")
        ))
        .bind(&self.project)
        .bind(&version.sha256)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "DELETE FROM {} WHERE project = $1 AND name = $2 AND sha256 = $3",
            self.table("plugin_active")
        ))
        .bind(&self.project)
        .bind(name)
        .bind(&version.sha256)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    /// Every plugin with its versions and the views using it.
    pub async fn list_plugins(&self) -> Result<Vec<PluginEntry>, PluginRegistryError> {
        if !self.exists().await? {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        self.ensure_layout(&mut tx).await?;
        let rows = sqlx::query(&format!(
            "SELECT p.name, p.version, p.sha256, p.size::int8 AS size, p.uploaded_at, p.info,
                    a.sha256 IS NOT NULL AS active
             FROM {} p LEFT JOIN {} a ON a.project = p.project AND a.name = p.name AND a.sha256 = p.sha256
             WHERE p.project = $1 ORDER BY p.name, p.uploaded_at DESC",
            self.table("plugins"),
            self.table("plugin_active")
        ))
        .bind(&self.project)
        .fetch_all(&mut *tx)
        .await?;
        let defs = self.defs_in(&mut tx).await?;
        tx.commit().await?;
        let mut out: Vec<PluginEntry> = Vec::new();
        for row in rows {
            let version = version_from_row(&row)?;
            let entry = match out.iter_mut().find(|e| e.name == version.name) {
                Some(e) => e,
                None => {
                    out.push(PluginEntry {
                        name: version.name.clone(),
                        active_sha256: None,
                        versions: Vec::new(),
                        views: defs
                            .on_demand_feature_views
                            .iter()
                            .filter(|v| v.plugin.name == version.name)
                            .map(|v| ViewUse {
                                view: v.name.clone(),
                                sha256: v.plugin.resolved_sha256.clone().unwrap_or_default(),
                                pinned: v.plugin.version.is_some() || v.plugin.sha256.is_some(),
                            })
                            .collect(),
                    });
                    out.last_mut().expect("just pushed")
                }
            };
            if version.active {
                entry.active_sha256 = Some(version.sha256.clone());
            }
            entry.versions.push(version);
        }
        Ok(out)
    }

    /// Stores a plugin's bytes under their hash; `false` if they were already there.
    pub(super) async fn store_plugin(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        plugin: &StoredPlugin,
    ) -> Result<bool, RegistryError> {
        let inserted = sqlx::query(&format!(
            "INSERT INTO {} (project, sha256, name, version, info, size, bytes)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (project, sha256) DO NOTHING",
            self.table("plugins")
        ))
        .bind(&self.project)
        .bind(&plugin.sha256)
        .bind(&plugin.info.name)
        .bind(&plugin.info.version)
        .bind(serde_json::to_value(&plugin.info).expect("plugin info serializes"))
        .bind(i32::try_from(plugin.bytes.len()).unwrap_or(i32::MAX))
        .bind(&plugin.bytes)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(inserted > 0)
    }

    async fn defs_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<Definitions, RegistryError> {
        let stored = self.stored_objects(&mut **tx).await?;
        definitions_from(stored.into_iter().map(|(o, _)| o))
    }

    async fn find_version(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        name: &str,
        selector: &VersionSelector,
    ) -> Result<PluginVersion, PluginRegistryError> {
        let rows = sqlx::query(&format!(
            "SELECT p.name, p.version, p.sha256, p.size::int8 AS size, p.uploaded_at, p.info,
                    a.sha256 IS NOT NULL AS active
             FROM {} p LEFT JOIN {} a ON a.project = p.project AND a.name = p.name AND a.sha256 = p.sha256
             WHERE p.project = $1 AND p.name = $2 ORDER BY p.uploaded_at DESC",
            self.table("plugins"),
            self.table("plugin_active")
        ))
        .bind(&self.project)
        .bind(name)
        .fetch_all(&mut **tx)
        .await?;
        if rows.is_empty() {
            let known: Vec<String> = sqlx::query_scalar(&format!(
                "SELECT DISTINCT name FROM {} WHERE project = $1 ORDER BY name",
                self.table("plugins")
            ))
            .bind(&self.project)
            .fetch_all(&mut **tx)
            .await?;
            return Err(PluginRegistryError::UnknownPlugin {
                name: name.to_string(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        }
        let versions = rows
            .iter()
            .map(version_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let found = versions.iter().find(|v| match selector {
            VersionSelector::Version(x) => &v.version == x,
            VersionSelector::Sha256(x) => &v.sha256 == x,
        });
        match found {
            Some(v) => Ok(v.clone()),
            None => Err(PluginRegistryError::UnknownVersion {
                name: name.to_string(),
                selector: selector.to_string(),
                known: versions
                    .iter()
                    .map(|v| format!("{} ({})", v.version, &v.sha256[..12]))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Points every unpinned view using `info.name` at `sha256` (after checking each), and
    /// records the active version. Returns the views switched.
    async fn activate_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        info: &PluginInfo,
        sha256: &str,
    ) -> Result<Vec<String>, PluginRegistryError> {
        let stored = self.stored_objects(&mut **tx).await?;
        let versions: std::collections::HashMap<String, i32> = stored
            .iter()
            .filter(|(o, _)| o.kind == ObjectKind::OnDemandFeatureView)
            .map(|(o, v)| (o.name.clone(), *v))
            .collect();
        let defs = definitions_from(stored.into_iter().map(|(o, _)| o))?;
        let mut problems = Vec::new();
        let mut switched = Vec::new();
        for view in &defs.on_demand_feature_views {
            if view.plugin.name != info.name
                || view.plugin.version.is_some()
                || view.plugin.sha256.is_some()
            {
                continue;
            }
            if let Err(p) = defs.check_plugin(view, info) {
                problems.push((view.name.clone(), p));
                continue;
            }
            if view.plugin.resolved_sha256.as_deref() != Some(sha256) {
                let mut changed = view.clone();
                changed.plugin.resolved_sha256 = Some(sha256.to_string());
                switched.push(changed);
            }
        }
        if !problems.is_empty() {
            return Err(PluginRegistryError::Incompatible {
                plugin: info.name.clone(),
                version: info.version.clone(),
                views: problems,
            });
        }
        sqlx::query(&format!(
            "INSERT INTO {} (project, name, sha256) VALUES ($1, $2, $3)
             ON CONFLICT (project, name) DO UPDATE SET sha256 = EXCLUDED.sha256, activated_at = now()",
            self.table("plugin_active")
        ))
        .bind(&self.project)
        .bind(&info.name)
        .bind(sha256)
        .execute(&mut **tx)
        .await?;
        if switched.is_empty() {
            return Ok(Vec::new());
        }
        let summary = serde_json::json!({
            "plugin": {"name": info.name, "version": info.version, "sha256": sha256},
            "changes": switched.iter().map(|v| serde_json::json!({"change": "update", "kind": ObjectKind::OnDemandFeatureView.as_str(), "name": v.name})).collect::<Vec<_>>(),
        });
        let apply_id: i64 = sqlx::query_scalar(&format!(
            "INSERT INTO {} (project, summary) VALUES ($1, $2) RETURNING id",
            self.table("applies")
        ))
        .bind(&self.project)
        .bind(&summary)
        .fetch_one(&mut **tx)
        .await?;
        for view in &switched {
            let spec = serde_json::to_value(view).expect("definitions serialize to JSON");
            let version = versions.get(&view.name).copied().unwrap_or(0) + 1;
            self.write_object(
                tx,
                apply_id,
                ObjectKind::OnDemandFeatureView,
                &view.name,
                version,
                Some(&spec),
            )
            .await?;
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(&self.project)
            .execute(&mut **tx)
            .await?;
        Ok(switched.into_iter().map(|v| v.name).collect())
    }
}

fn version_from_row(row: &sqlx::postgres::PgRow) -> Result<PluginVersion, RegistryError> {
    let name: String = row.try_get("name")?;
    let info: serde_json::Value = row.try_get("info")?;
    let info: PluginInfo = serde_json::from_value(info).map_err(|e| RegistryError::Corrupt {
        kind: "plugin".into(),
        name: name.clone(),
        reason: e.to_string(),
    })?;
    Ok(PluginVersion {
        name,
        version: row.try_get("version")?,
        sha256: row.try_get("sha256")?,
        size: row.try_get("size")?,
        uploaded_at: row.try_get("uploaded_at")?,
        active: row.try_get("active")?,
        info,
    })
}
