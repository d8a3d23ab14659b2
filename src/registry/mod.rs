//! The registry: what has been applied, stored in PostgreSQL.
//!
//! Every object (entity, data source, view, feature service) is a row of
//! `<schema>.objects` holding its JSON spec and a version that increases on each change;
//! `<schema>.object_history` keeps every version, `<schema>.applies` every apply. An apply
//! is one transaction that also creates, rebuilds or drops the online tables (they live
//! in the same database), so a failed apply changes nothing, and concurrent applies are
//! serialized by an advisory lock. Servers read the registry into memory and are told of
//! changes by `NOTIFY skewless_registry`.

mod diff;
mod plugins;

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::config::Config;
use crate::definitions::Definitions;
use crate::online::layout::{InfraChange, plan_changes};
use crate::pgtypes::ident;
pub use diff::FieldChange;
pub use plugins::{
    PluginEntry, PluginRegistryError, PluginVersion, Upload, VersionSelector, ViewUse,
};

/// Channel on which an apply announces itself (payload: the project name).
pub const NOTIFY_CHANNEL: &str = "skewless_registry";

/// Layout version of the registry tables, checked so an old binary refuses a newer layout.
const LAYOUT_VERSION: i32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "the registry in schema `{schema}` has layout version {found}, newer than this skewless understands ({LAYOUT_VERSION}); upgrade skewless"
    )]
    NewerLayout { schema: String, found: i32 },
    #[error("the registry holds an unreadable {kind} `{name}`: {reason}")]
    Corrupt {
        kind: String,
        name: String,
        reason: String,
    },
    #[error("online store change failed ({statement}): {message}")]
    Infrastructure { statement: String, message: String },
    #[error("on-demand feature view `{view}` uses plugin {sha256}, which the registry does not hold; apply it with the plugin built")]
    MissingPlugin { view: String, sha256: String },
}

/// A plugin's bytes and what it declared, as the registry stores them.
#[derive(Debug, Clone)]
pub struct StoredPlugin {
    pub sha256: String,
    pub info: crate::definitions::PluginInfo,
    pub bytes: Vec<u8>,
}

/// Kinds of registry objects, in the order they are printed and applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Entity,
    DataSource,
    FeatureView,
    OnDemandFeatureView,
    FeatureService,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Entity => "entity",
            Self::DataSource => "data_source",
            Self::FeatureView => "feature_view",
            Self::OnDemandFeatureView => "on_demand_feature_view",
            Self::FeatureService => "feature_service",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "entity" => Self::Entity,
            "data_source" => Self::DataSource,
            "feature_view" => Self::FeatureView,
            "on_demand_feature_view" => Self::OnDemandFeatureView,
            "feature_service" => Self::FeatureService,
            _ => return None,
        })
    }
}

/// An object as the registry stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    pub kind: ObjectKind,
    pub name: String,
    /// "feature view", "label view", … for humans.
    pub noun: &'static str,
    pub spec: Value,
}

/// Flattens definitions into registry objects.
pub fn objects(defs: &Definitions) -> Vec<StoredObject> {
    fn spec<T: serde::Serialize>(value: &T) -> Value {
        serde_json::to_value(value).expect("definitions serialize to JSON")
    }
    let mut out = Vec::new();
    out.extend(defs.entities.iter().map(|e| StoredObject {
        kind: ObjectKind::Entity,
        name: e.name.clone(),
        noun: "entity",
        spec: spec(e),
    }));
    out.extend(defs.data_sources.iter().map(|s| StoredObject {
        kind: ObjectKind::DataSource,
        name: s.name.clone(),
        noun: "data source",
        spec: spec(s),
    }));
    out.extend(defs.feature_views.iter().map(|v| StoredObject {
        kind: ObjectKind::FeatureView,
        name: v.name.clone(),
        noun: v.kind.noun(),
        spec: spec(v),
    }));
    out.extend(defs.on_demand_feature_views.iter().map(|v| StoredObject {
        kind: ObjectKind::OnDemandFeatureView,
        name: v.name.clone(),
        noun: "on-demand feature view",
        spec: spec(v),
    }));
    out.extend(defs.feature_services.iter().map(|s| StoredObject {
        kind: ObjectKind::FeatureService,
        name: s.name.clone(),
        noun: "feature service",
        spec: spec(s),
    }));
    out
}

/// One object-level change.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Added(StoredObject),
    Changed {
        object: StoredObject,
        fields: Vec<FieldChange>,
    },
    Removed(StoredObject),
}

impl Change {
    fn object(&self) -> &StoredObject {
        match self {
            Self::Added(o) | Self::Removed(o) | Self::Changed { object: o, .. } => o,
        }
    }
}

/// Everything an apply would do.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub infra: Vec<InfraChange>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.infra.is_empty()
    }

    /// Feast-style lines: what apply did (or would do, for `plan`).
    pub fn render(&self, applied: bool) -> String {
        let mut out = String::new();
        if self.changes.is_empty() {
            out.push_str("No changes to registry\n");
        }
        for change in &self.changes {
            let o = change.object();
            let line = match (change, applied) {
                (Change::Added(_), true) => format!("Created {} {}", o.noun, o.name),
                (Change::Added(_), false) => format!("+ {} {} (new)", o.noun, o.name),
                (Change::Removed(_), true) => format!("Deleted {} {}", o.noun, o.name),
                (Change::Removed(_), false) => format!("- {} {} (removed)", o.noun, o.name),
                (Change::Changed { .. }, true) => format!("Updated {} {}", o.noun, o.name),
                (Change::Changed { .. }, false) => format!("~ {} {} (changed)", o.noun, o.name),
            };
            out.push_str(&line);
            out.push('\n');
            if let Change::Changed { fields, .. } = change {
                for f in fields {
                    out.push_str(&format!("    {f}\n"));
                }
            }
        }
        out.push('\n');
        if self.infra.is_empty() {
            out.push_str("No changes to infrastructure\n");
        }
        for infra in &self.infra {
            if applied {
                out.push_str(&infra.describe());
            } else {
                out.push_str(&format!("  {}", infra.describe()));
            }
            out.push('\n');
        }
        out
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(false))
    }
}

/// The registry of one project in one database.
#[derive(Clone)]
pub struct Registry {
    pool: PgPool,
    schema: String,
    project: String,
}

impl Registry {
    pub fn new(pool: PgPool, config: &Config) -> Self {
        Self {
            pool,
            schema: config.registry.schema.clone(),
            project: config.project.clone(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn table(&self, name: &str) -> String {
        format!("{}.{}", ident(&self.schema), ident(name))
    }

    /// Creates the registry tables if they do not exist (idempotent, safe to race: the
    /// caller holds the registry lock).
    async fn ensure_layout(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), RegistryError> {
        let s = ident(&self.schema);
        let statements = [
            format!("CREATE SCHEMA IF NOT EXISTS {s}"),
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.layout (id boolean PRIMARY KEY DEFAULT true CHECK (id), version int NOT NULL)"
            ),
            format!(
                "INSERT INTO {s}.layout (version) VALUES ({LAYOUT_VERSION}) ON CONFLICT (id) DO NOTHING"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.applies (
                    id bigserial PRIMARY KEY,
                    project text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now(),
                    applied_by text NOT NULL DEFAULT current_user,
                    summary jsonb NOT NULL)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.objects (
                    project text NOT NULL,
                    kind text NOT NULL,
                    name text NOT NULL,
                    version int NOT NULL,
                    spec jsonb NOT NULL,
                    created_at timestamptz NOT NULL DEFAULT now(),
                    updated_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (project, kind, name))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.object_history (
                    id bigserial PRIMARY KEY,
                    apply_id bigint NOT NULL REFERENCES {s}.applies (id),
                    project text NOT NULL,
                    kind text NOT NULL,
                    name text NOT NULL,
                    version int NOT NULL,
                    change text NOT NULL CHECK (change IN ('create', 'update', 'delete')),
                    spec jsonb)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.materializations (
                    project text NOT NULL,
                    view text NOT NULL,
                    start_ts timestamptz,
                    end_ts timestamptz NOT NULL,
                    rows bigint NOT NULL DEFAULT 0,
                    updated_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (project, view))"
            ),
            // Plugin bytes by content hash: servers load what was applied from here,
            // whatever the files on their own disk say.
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.plugins (
                    project text NOT NULL,
                    sha256 text NOT NULL,
                    name text NOT NULL,
                    version text NOT NULL,
                    info jsonb NOT NULL,
                    size int NOT NULL,
                    bytes bytea NOT NULL,
                    uploaded_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (project, sha256))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.plugin_active (
                    project text NOT NULL,
                    name text NOT NULL,
                    sha256 text NOT NULL,
                    activated_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (project, name))"
            ),
        ];
        for sql in statements {
            sqlx::query(&sql).execute(&mut **tx).await?;
        }
        let found: i32 = sqlx::query_scalar(&format!("SELECT version FROM {s}.layout"))
            .fetch_one(&mut **tx)
            .await?;
        if found > LAYOUT_VERSION {
            return Err(RegistryError::NewerLayout {
                schema: self.schema.clone(),
                found,
            });
        }
        Ok(())
    }

    /// Key of the advisory lock that serializes applies (see [`Registry::lock`]).
    fn lock_key(&self) -> String {
        format!("skewless_registry:{}", self.schema)
    }

    /// Serializes applies (and layout creation) across every process sharing the database.
    async fn lock(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), RegistryError> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(self.lock_key())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Whether the registry tables exist at all (a fresh database has none).
    async fn exists(&self) -> Result<bool, RegistryError> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(format!("{}.objects", ident(&self.schema)))
            .fetch_one(&self.pool)
            .await?;
        Ok(exists)
    }

    async fn stored_objects<'e, E>(
        &self,
        executor: E,
    ) -> Result<Vec<(StoredObject, i32)>, RegistryError>
    where
        E: sqlx::PgExecutor<'e>,
    {
        let rows = sqlx::query(&format!(
            "SELECT kind, name, version, spec FROM {} WHERE project = $1 ORDER BY kind, name",
            self.table("objects")
        ))
        .bind(&self.project)
        .fetch_all(executor)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let kind: String = row.try_get("kind")?;
            let name: String = row.try_get("name")?;
            let corrupt = |reason: String| RegistryError::Corrupt {
                kind: kind.clone(),
                name: name.clone(),
                reason,
            };
            let kind_enum =
                ObjectKind::parse(&kind).ok_or_else(|| corrupt("unknown kind".into()))?;
            let spec: Value = row.try_get("spec")?;
            let noun = match kind_enum {
                ObjectKind::Entity => "entity",
                ObjectKind::DataSource => "data source",
                ObjectKind::FeatureService => "feature service",
                ObjectKind::OnDemandFeatureView => "on-demand feature view",
                ObjectKind::FeatureView => match spec.get("kind").and_then(Value::as_str) {
                    Some("labels") => "label view",
                    _ => "feature view",
                },
            };
            out.push((
                StoredObject {
                    kind: kind_enum,
                    name,
                    noun,
                    spec,
                },
                row.try_get("version")?,
            ));
        }
        Ok(out)
    }

    /// The applied definitions (empty if nothing was ever applied).
    pub async fn load(&self) -> Result<Definitions, RegistryError> {
        if !self.exists().await? {
            return Ok(Definitions::default());
        }
        let stored = self.stored_objects(&self.pool).await?;
        definitions_from(stored.into_iter().map(|(o, _)| o))
    }

    /// The stored bytes of plugin `sha256` (`None` if the registry does not hold it).
    pub async fn plugin_bytes(&self, sha256: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        if !self.exists().await? {
            return Ok(None);
        }
        Ok(sqlx::query_scalar(&format!(
            "SELECT bytes FROM {} WHERE project = $1 AND sha256 = $2",
            self.table("plugins")
        ))
        .bind(&self.project)
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Registered objects with their versions, for `skewless registry`.
    pub async fn list(&self) -> Result<Vec<(StoredObject, i32)>, RegistryError> {
        if !self.exists().await? {
            return Ok(Vec::new());
        }
        self.stored_objects(&self.pool).await
    }

    /// What applying `defs` would change.
    pub async fn plan(&self, config: &Config, defs: &Definitions) -> Result<Plan, RegistryError> {
        let current = self.load().await?;
        Ok(compute_plan(config, &current, defs))
    }

    /// Applies `defs`: registry rows and online tables in one transaction. Returns what
    /// changed (an empty plan: nothing was written).
    pub async fn apply(&self, config: &Config, defs: &Definitions) -> Result<Plan, RegistryError> {
        self.apply_with_plugins(config, defs, &[]).await
    }

    /// Applies `defs` and stores `plugins` (the bytes its on-demand views resolve to) in
    /// the same transaction. Every on-demand view must resolve to a stored plugin.
    #[tracing::instrument(skip_all, fields(project = %self.project))]
    pub async fn apply_with_plugins(
        &self,
        config: &Config,
        defs: &Definitions,
        plugins: &[StoredPlugin],
    ) -> Result<Plan, RegistryError> {
        let mut tx = self.pool.begin().await?;
        self.lock(&mut tx).await?;
        self.ensure_layout(&mut tx).await?;
        for p in plugins {
            self.store_plugin(&mut tx, p).await?;
        }
        // What the repo's files hold becomes the active version of each plugin.
        for p in plugins {
            sqlx::query(&format!(
                "INSERT INTO {} (project, name, sha256) VALUES ($1, $2, $3)
                 ON CONFLICT (project, name) DO UPDATE SET sha256 = EXCLUDED.sha256, activated_at = now()
                 WHERE {}.sha256 <> EXCLUDED.sha256",
                self.table("plugin_active"),
                self.table("plugin_active"),
            ))
            .bind(&self.project)
            .bind(&p.info.name)
            .bind(&p.sha256)
            .execute(&mut *tx)
            .await?;
        }
        for v in &defs.on_demand_feature_views {
            let sha256 = v.plugin.resolved_sha256.clone().unwrap_or_default();
            let held: bool = sqlx::query_scalar(&format!(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE project = $1 AND sha256 = $2)",
                self.table("plugins")
            ))
            .bind(&self.project)
            .bind(&sha256)
            .fetch_one(&mut *tx)
            .await?;
            if !held {
                return Err(RegistryError::MissingPlugin {
                    view: v.name.clone(),
                    sha256,
                });
            }
        }
        let stored = self.stored_objects(&mut *tx).await?;
        let versions: BTreeMap<(ObjectKind, String), i32> = stored
            .iter()
            .map(|(o, v)| ((o.kind, o.name.clone()), *v))
            .collect();
        let current = definitions_from(stored.into_iter().map(|(o, _)| o))?;
        let plan = compute_plan(config, &current, defs);
        if plan.is_empty() {
            // Nothing to write; the layout creation (if any) may still commit.
            tx.commit().await?;
            return Ok(plan);
        }

        let online_schema = ident(&config.online_store.db_schema);
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {online_schema}"))
            .execute(&mut *tx)
            .await?;
        for infra in &plan.infra {
            for statement in infra.statements() {
                sqlx::query(&statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| RegistryError::Infrastructure {
                        statement: statement.clone(),
                        message: crate::offline::database_message(&e),
                    })?;
            }
            // A new, rebuilt or dropped table holds nothing: forget any watermark.
            sqlx::query(&format!(
                "DELETE FROM {} WHERE project = $1 AND view = $2",
                self.table("materializations")
            ))
            .bind(&self.project)
            .bind(infra.view())
            .execute(&mut *tx)
            .await?;
        }

        let summary = serde_json::json!({
            "changes": plan.changes.iter().map(|c| {
                let (change, o) = match c {
                    Change::Added(o) => ("create", o),
                    Change::Changed { object, .. } => ("update", object),
                    Change::Removed(o) => ("delete", o),
                };
                serde_json::json!({"change": change, "kind": o.kind.as_str(), "name": o.name})
            }).collect::<Vec<_>>(),
            "infrastructure": plan.infra.iter().map(InfraChange::describe).collect::<Vec<_>>(),
        });
        let apply_id: i64 = sqlx::query_scalar(&format!(
            "INSERT INTO {} (project, summary) VALUES ($1, $2) RETURNING id",
            self.table("applies")
        ))
        .bind(&self.project)
        .bind(&summary)
        .fetch_one(&mut *tx)
        .await?;

        for change in &plan.changes {
            let o = change.object();
            let key = (o.kind, o.name.clone());
            let (version, spec) = match change {
                Change::Added(_) => (1, Some(&o.spec)),
                Change::Changed { .. } => (versions[&key] + 1, Some(&o.spec)),
                Change::Removed(_) => (versions[&key] + 1, None),
            };
            self.write_object(&mut tx, apply_id, o.kind, &o.name, version, spec)
                .await?;
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(&self.project)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(plan)
    }

    /// Writes one object's new version (`spec` None: deleted) and its history row.
    async fn write_object(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        apply_id: i64,
        kind: ObjectKind,
        name: &str,
        version: i32,
        spec: Option<&Value>,
    ) -> Result<(), RegistryError> {
        match spec {
            Some(spec) => {
                sqlx::query(&format!(
                    "INSERT INTO {} (project, kind, name, version, spec) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (project, kind, name)
                     DO UPDATE SET version = EXCLUDED.version, spec = EXCLUDED.spec, updated_at = now()",
                    self.table("objects")
                ))
                .bind(&self.project)
                .bind(kind.as_str())
                .bind(name)
                .bind(version)
                .bind(spec)
                .execute(&mut **tx)
                .await?;
            }
            None => {
                sqlx::query(&format!(
                    "DELETE FROM {} WHERE project = $1 AND kind = $2 AND name = $3",
                    self.table("objects")
                ))
                .bind(&self.project)
                .bind(kind.as_str())
                .bind(name)
                .execute(&mut **tx)
                .await?;
            }
        }
        let verb = match (spec, version) {
            (None, _) => "delete",
            (Some(_), 1) => "create",
            (Some(_), _) => "update",
        };
        sqlx::query(&format!(
            "INSERT INTO {} (apply_id, project, kind, name, version, change, spec)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            self.table("object_history")
        ))
        .bind(apply_id)
        .bind(&self.project)
        .bind(kind.as_str())
        .bind(name)
        .bind(version)
        .bind(verb)
        .bind(spec)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Materialization watermarks: `<schema>.materializations`, one row per (project, view),
    // deleted by `apply` whenever the view's online table is created, rebuilt or dropped.

    /// Takes the registry lock in shared mode for the rest of `tx`: an apply (which takes
    /// it exclusively) waits for the transaction to end, and the transaction waits for a
    /// running apply, so what `tx` reads of the registry stays true until it commits.
    /// Shared holders (concurrent materializations) do not wait for each other.
    pub async fn lock_shared(
        &self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<(), RegistryError> {
        sqlx::query("SELECT pg_advisory_xact_lock_shared(hashtext($1))")
            .bind(self.lock_key())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// The applied definitions as `tx` sees them (empty if nothing was ever applied).
    pub async fn load_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<Definitions, RegistryError> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(format!("{}.objects", ident(&self.schema)))
            .fetch_one(&mut **tx)
            .await?;
        if !exists {
            return Ok(Definitions::default());
        }
        let stored = self.stored_objects(&mut **tx).await?;
        definitions_from(stored.into_iter().map(|(o, _)| o))
    }

    /// The end of the materialized window of `view` (the greatest end ever materialized
    /// since its table was last created), `None` if it was never materialized.
    pub async fn materialization_end<'e, E>(
        &self,
        executor: E,
        view: &str,
    ) -> Result<Option<DateTime<Utc>>, RegistryError>
    where
        E: sqlx::PgExecutor<'e>,
    {
        let end = sqlx::query_scalar(&format!(
            "SELECT end_ts FROM {} WHERE project = $1 AND view = $2",
            self.table("materializations")
        ))
        .bind(&self.project)
        .bind(view)
        .fetch_optional(executor)
        .await?;
        Ok(end)
    }

    /// Every materialization watermark of the project: view name and end of its window.
    /// Empty if nothing was ever applied.
    pub async fn materialization_ends(
        &self,
    ) -> Result<Vec<(String, DateTime<Utc>)>, RegistryError> {
        if !self.exists().await? {
            return Ok(Vec::new());
        }
        let rows = sqlx::query_as(&format!(
            "SELECT view, end_ts FROM {} WHERE project = $1 ORDER BY view",
            self.table("materializations")
        ))
        .bind(&self.project)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Records a materialization of `view` over `[start, end]` (`start` `None`: unbounded)
    /// that wrote `rows` rows, inside the transaction that wrote them. The watermark only
    /// moves forward: `end_ts = greatest(stored end_ts, end)`; `start_ts` and `rows` are
    /// those of this latest run.
    pub async fn record_materialization(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        view: &str,
        start: Option<DateTime<Utc>>,
        end: DateTime<Utc>,
        rows: u64,
    ) -> Result<(), RegistryError> {
        sqlx::query(&format!(
            "INSERT INTO {} AS m (project, view, start_ts, end_ts, rows, updated_at)
             VALUES ($1, $2, $3, $4, $5, now())
             ON CONFLICT (project, view) DO UPDATE SET
                 start_ts = EXCLUDED.start_ts,
                 end_ts = greatest(m.end_ts, EXCLUDED.end_ts),
                 rows = EXCLUDED.rows,
                 updated_at = EXCLUDED.updated_at",
            self.table("materializations")
        ))
        .bind(&self.project)
        .bind(view)
        .bind(start)
        .bind(end)
        .bind(i64::try_from(rows).unwrap_or(i64::MAX))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// Rebuilds definitions from stored objects.
fn definitions_from(
    objects: impl Iterator<Item = StoredObject>,
) -> Result<Definitions, RegistryError> {
    let mut defs = Definitions::default();
    for o in objects {
        let corrupt = |e: serde_json::Error| RegistryError::Corrupt {
            kind: o.kind.as_str().to_string(),
            name: o.name.clone(),
            reason: e.to_string(),
        };
        let spec = o.spec.clone();
        match o.kind {
            ObjectKind::Entity => defs
                .entities
                .push(serde_json::from_value(spec).map_err(corrupt)?),
            ObjectKind::DataSource => defs
                .data_sources
                .push(serde_json::from_value(spec).map_err(corrupt)?),
            ObjectKind::FeatureView => defs
                .feature_views
                .push(serde_json::from_value(spec).map_err(corrupt)?),
            ObjectKind::OnDemandFeatureView => defs
                .on_demand_feature_views
                .push(serde_json::from_value(spec).map_err(corrupt)?),
            ObjectKind::FeatureService => defs
                .feature_services
                .push(serde_json::from_value(spec).map_err(corrupt)?),
        }
    }
    Ok(defs)
}

/// The difference between what is registered and what the repo defines.
pub fn compute_plan(config: &Config, current: &Definitions, wanted: &Definitions) -> Plan {
    let old = objects(current);
    let new = objects(wanted);
    let mut changes = Vec::new();
    for o in &new {
        match old.iter().find(|x| x.kind == o.kind && x.name == o.name) {
            None => changes.push(Change::Added(o.clone())),
            Some(previous) if previous.spec != o.spec => changes.push(Change::Changed {
                object: o.clone(),
                fields: diff::diff(&previous.spec, &o.spec),
            }),
            Some(_) => {}
        }
    }
    for o in &old {
        if !new.iter().any(|x| x.kind == o.kind && x.name == o.name) {
            changes.push(Change::Removed(o.clone()));
        }
    }
    changes.sort_by(|a, b| {
        let (a, b) = (a.object(), b.object());
        (a.kind, &a.name).cmp(&(b.kind, &b.name))
    });
    Plan {
        changes,
        infra: plan_changes(config, current, wanted),
    }
}
