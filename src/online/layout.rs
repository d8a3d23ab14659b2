//! The online tables' layout: the single place that knows how a view becomes a table.
//! `apply` calls [`plan_changes`] to create, rebuild or drop tables.

use crate::config::Config;
use crate::definitions::{Definitions, FeatureView};
use crate::pgtypes::{column_type, ident};

/// Column holding the event timestamp of the row a value came from.
pub const EVENT_TS: &str = "event_ts";
/// Column holding the created timestamp of that row, when the source has one.
pub const CREATED_TS: &str = "created_ts";

/// What an online view's table looks like: enough to tell whether a change to the view
/// needs the table rebuilt (columns or key changed) or nothing at all (ttl, tags, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableLayout {
    pub table: String,
    pub key: String,
    pub key_type: &'static str,
    pub columns: Vec<(String, &'static str)>,
}

impl TableLayout {
    pub fn of(config: &Config, defs: &Definitions, view: &FeatureView) -> Self {
        let entity = defs.view_entity(view);
        Self {
            table: config.online_table(&view.name),
            key: entity.join_key().to_string(),
            key_type: column_type(entity.value_type),
            columns: view
                .schema
                .iter()
                .map(|f| (f.name.clone(), column_type(f.dtype)))
                .collect(),
        }
    }

    pub fn create_sql(&self) -> String {
        let mut sql = format!(
            "CREATE TABLE {} ({} {} PRIMARY KEY",
            self.table,
            ident(&self.key),
            self.key_type
        );
        for (name, ty) in &self.columns {
            sql.push_str(&format!(", {} {ty}", ident(name)));
        }
        sql.push_str(&format!(
            ", {EVENT_TS} timestamptz NOT NULL, {CREATED_TS} timestamptz)"
        ));
        sql
    }

    /// `ON CONFLICT … DO UPDATE … WHERE newer`: the one rule by which a row replaces an
    /// online row — a strictly newer event_ts, or an equal one with a newer created_ts.
    /// An equal or older row changes nothing, so writes and materializations are
    /// idempotent and never regress. `alias` is the target table's alias.
    pub fn upsert_if_newer(&self, alias: &str) -> String {
        let updates = self
            .columns
            .iter()
            .map(|(name, _)| format!("{0} = EXCLUDED.{0}", ident(name)))
            .chain([
                format!("{EVENT_TS} = EXCLUDED.{EVENT_TS}"),
                format!("{CREATED_TS} = EXCLUDED.{CREATED_TS}"),
            ])
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "ON CONFLICT ({key}) DO UPDATE SET {updates} WHERE ({alias}.{EVENT_TS}, coalesce({alias}.{CREATED_TS}, '-infinity'::timestamptz)) < (EXCLUDED.{EVENT_TS}, coalesce(EXCLUDED.{CREATED_TS}, '-infinity'::timestamptz))",
            key = ident(&self.key)
        )
    }

    pub fn drop_sql(&self) -> String {
        format!("DROP TABLE IF EXISTS {}", self.table)
    }
}

/// One change to the online store's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfraChange {
    /// A new online view: create its table.
    Create { view: String, layout: TableLayout },
    /// An online view whose columns changed: drop and recreate (it must be materialized
    /// again; its materialization watermark is reset).
    Rebuild { view: String, layout: TableLayout },
    /// A view removed or no longer online: drop its table.
    Drop { view: String, layout: TableLayout },
}

impl InfraChange {
    pub fn view(&self) -> &str {
        match self {
            Self::Create { view, .. } | Self::Rebuild { view, .. } | Self::Drop { view, .. } => {
                view
            }
        }
    }

    /// The statements that carry the change out.
    pub fn statements(&self) -> Vec<String> {
        match self {
            Self::Create { layout, .. } => vec![layout.drop_sql(), layout.create_sql()],
            Self::Rebuild { layout, .. } => vec![layout.drop_sql(), layout.create_sql()],
            Self::Drop { layout, .. } => vec![layout.drop_sql()],
        }
    }

    /// A line for humans, Feast-style.
    pub fn describe(&self) -> String {
        match self {
            Self::Create { view, layout } => {
                format!(
                    "Deploying infrastructure for {view} (table {})",
                    layout.table
                )
            }
            Self::Rebuild { view, layout } => format!(
                "Rebuilding infrastructure for {view} (table {}: columns changed; materialize it again)",
                layout.table
            ),
            Self::Drop { view, layout } => {
                format!(
                    "Removing infrastructure for {view} (table {})",
                    layout.table
                )
            }
        }
    }
}

/// Online tables to create, rebuild or drop to go from `old` to `new` definitions.
pub fn plan_changes(config: &Config, old: &Definitions, new: &Definitions) -> Vec<InfraChange> {
    let online = |defs: &Definitions| -> Vec<(String, TableLayout)> {
        defs.feature_views
            .iter()
            .filter(|v| v.online)
            .map(|v| (v.name.clone(), TableLayout::of(config, defs, v)))
            .collect()
    };
    let (old, new) = (online(old), online(new));
    let mut changes = Vec::new();
    for (view, layout) in &new {
        match old.iter().find(|(name, _)| name == view) {
            None => changes.push(InfraChange::Create {
                view: view.clone(),
                layout: layout.clone(),
            }),
            Some((_, previous)) if previous != layout => changes.push(InfraChange::Rebuild {
                view: view.clone(),
                layout: layout.clone(),
            }),
            Some(_) => {}
        }
    }
    for (view, layout) in &old {
        if !new.iter().any(|(name, _)| name == view) {
            changes.push(InfraChange::Drop {
                view: view.clone(),
                layout: layout.clone(),
            });
        }
    }
    changes
}
