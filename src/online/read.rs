//! Online reads: the features of many entities in ONE SQL round trip.
//!
//! A request shape (which features, in which order) becomes one statement that unnests
//! the entity keys WITH ORDINALITY and left-joins every view's online table on its key:
//! one round trip whatever the number of views and entities, rows in request order,
//! missing rows as NULLs. sqlx prepares and caches the statement per connection, and
//! [`OnlineQuery`] is built once per shape and cached by the caller. Values are decoded by
//! the same [`ColumnBuilder::push_pg_binary`](crate::batch::ColumnBuilder) as training
//! sets, into the same [`Batch`] type.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{PgPool, Row, ValueRef};

use std::time::Duration;

use crate::batch::{Batch, BatchBuilder, Column, ColumnSpec, Values};
use crate::transform::{FeaturePlan, PlanError, PluginSet, TransformError};
use crate::config::Config;
use crate::definitions::{Definitions, SelectedFeature, ValueType};
use crate::online::layout::{EVENT_TS, TableLayout};
use crate::pgtypes::ident;

/// Feast's field statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldStatus {
    Present,
    NullValue,
    NotFound,
    OutsideMaxAge,
}

impl FieldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Present => "PRESENT",
            Self::NullValue => "NULL_VALUE",
            Self::NotFound => "NOT_FOUND",
            Self::OutsideMaxAge => "OUTSIDE_MAX_AGE",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OnlineReadError {
    #[error("feature view `{0}` is not served online")]
    NotOnline(String),
    #[error("entity key `{key}` is not a valid {dtype}")]
    BadKey { key: String, dtype: ValueType },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("internal error decoding online values: {0}")]
    Decode(String),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Transform(#[from] TransformError),
}

/// One view's part of a request.
#[derive(Debug, Clone)]
struct ViewSlot {
    ttl_seconds: Option<u64>,
    /// Index of the view's event_ts among the result columns.
    event_ts_column: usize,
}

/// A prepared request shape.
#[derive(Debug, Clone)]
pub struct OnlineQuery {
    sql: String,
    key_type: ValueType,
    /// Result columns: the features in request order, then one event_ts per view.
    columns: Vec<ColumnSpec>,
    /// For each feature: its view slot.
    feature_view: Vec<usize>,
    views: Vec<ViewSlot>,
    /// The requested features (stored and derived), in order.
    pub features: Vec<SelectedFeature>,
    /// The entity's join key, e.g. `user_id`.
    key_name: String,
    /// Stored features to fetch and plugins to run: the same plan training sets use.
    plan: FeaturePlan,
    /// Budget of the plugin calls of one request.
    plugin_budget: Duration,
}

impl OnlineQuery {
    /// Builds the statement for `features` (all from online views of one entity).
    pub fn new(
        config: &Config,
        defs: &Definitions,
        plugins: &PluginSet,
        requested: Vec<SelectedFeature>,
    ) -> Result<Self, OnlineReadError> {
        let plan = FeaturePlan::new(defs, plugins, requested)?;
        let features = plan.base().to_vec();
        let mut view_names: Vec<&str> = Vec::new();
        for f in &features {
            if !view_names.contains(&f.view.as_str()) {
                view_names.push(&f.view);
            }
        }
        let mut layouts = Vec::new();
        for name in &view_names {
            let view = defs.feature_view(name).expect("selected features exist");
            if !view.online {
                return Err(OnlineReadError::NotOnline(view.name.clone()));
            }
            layouts.push((view, TableLayout::of(config, defs, view)));
        }
        let (key_type, key_name) = layouts
            .first()
            .map(|(v, _)| {
                let entity = defs.view_entity(v);
                (entity.value_type, entity.join_key().to_string())
            })
            .unwrap_or((ValueType::String, "entity".into()));
        let mut select = Vec::new();
        let mut columns = Vec::new();
        let mut feature_view = Vec::new();
        for f in &features {
            let slot = view_names
                .iter()
                .position(|v| *v == f.view)
                .expect("listed");
            select.push(format!("v{slot}.{}", ident(&f.field.name)));
            columns.push(ColumnSpec {
                name: f.output_name.clone(),
                dtype: f.field.dtype,
            });
            feature_view.push(slot);
        }
        let mut views = Vec::new();
        let mut joins = Vec::new();
        for (slot, (view, layout)) in layouts.iter().enumerate() {
            views.push(ViewSlot {
                ttl_seconds: view.applied_ttl_seconds(),
                event_ts_column: columns.len(),
            });
            select.push(format!("v{slot}.{EVENT_TS}"));
            columns.push(ColumnSpec {
                name: format!("{}.{EVENT_TS}", view.name),
                dtype: ValueType::UnixTimestamp,
            });
            joins.push(format!(
                "LEFT JOIN {} v{slot} ON v{slot}.{} = k.key",
                layout.table,
                ident(&layout.key)
            ));
        }
        let array_type = crate::pgtypes::column_type(key_type);
        let sql = format!(
            "SELECT {} FROM unnest($1::{array_type}[]) WITH ORDINALITY AS k(key, ord) {} ORDER BY k.ord",
            select.join(", "),
            joins.join(" ")
        );
        Ok(Self {
            sql,
            key_type,
            columns,
            feature_view,
            views,
            features: plan.requested().to_vec(),
            key_name,
            plan,
            plugin_budget: Duration::from_millis(config.plugins.online_timeout_ms),
        })
    }

    /// The entity's join key, e.g. `user_id`.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// Reads the features of `keys` (in order; duplicates allowed).
    pub async fn read(
        &self,
        pool: &PgPool,
        keys: &[String],
    ) -> Result<OnlineResult, OnlineReadError> {
        let query = sqlx::query(&self.sql);
        let query = match self.key_type {
            ValueType::Int64 | ValueType::Int32 => {
                let parsed = keys
                    .iter()
                    .map(|k| {
                        k.trim()
                            .parse::<i64>()
                            .map_err(|_| OnlineReadError::BadKey {
                                key: k.clone(),
                                dtype: self.key_type,
                            })
                    })
                    .collect::<Result<Vec<i64>, _>>()?;
                if self.key_type == ValueType::Int32 {
                    let narrow = parsed
                        .iter()
                        .zip(keys)
                        .map(|(v, k)| {
                            i32::try_from(*v).map_err(|_| OnlineReadError::BadKey {
                                key: k.clone(),
                                dtype: self.key_type,
                            })
                        })
                        .collect::<Result<Vec<i32>, _>>()?;
                    query.bind(narrow)
                } else {
                    query.bind(parsed)
                }
            }
            _ => query.bind(keys),
        };
        let rows = query.fetch_all(pool).await?;
        let mut builder = BatchBuilder::new(self.columns.clone(), rows.len());
        for row in &rows {
            for i in 0..self.columns.len() {
                let raw = row.try_get_raw(i)?;
                let bytes = if raw.is_null() {
                    None
                } else {
                    Some(
                        raw.as_bytes()
                            .map_err(|e| OnlineReadError::Decode(e.to_string()))?,
                    )
                };
                builder
                    .column_mut(i)
                    .push_pg_binary(bytes)
                    .map_err(|e| OnlineReadError::Decode(e.to_string()))?;
            }
        }
        let n_base = self.plan.base().len();
        let mut all = builder.take();
        let mut event_ts_columns = all.columns.split_off(n_base);
        let now_micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let mut statuses = Vec::with_capacity(n_base);
        for (f, column) in all.columns.iter().enumerate() {
            let slot = &self.views[self.feature_view[f]];
            let ts = &event_ts_columns[slot.event_ts_column - n_base];
            // The oldest event timestamp the view's ttl still serves (an applied ttl is
            // at most 1000 years: no overflow).
            let oldest = slot
                .ttl_seconds
                .map(|ttl| now_micros.saturating_sub(ttl as i64 * 1_000_000));
            let per_entity: Vec<FieldStatus> = (0..rows.len())
                .map(|r| {
                    if ts.is_null(r) {
                        return FieldStatus::NotFound;
                    }
                    if let (Some(oldest), Values::Timestamp(t)) = (oldest, &ts.values)
                        && t[r] < oldest
                    {
                        return FieldStatus::OutsideMaxAge;
                    }
                    if column.is_null(r) {
                        FieldStatus::NullValue
                    } else {
                        FieldStatus::Present
                    }
                })
                .collect();
            statuses.push(per_entity);
        }
        let event_timestamps: Vec<usize> = (0..n_base)
            .map(|f| self.views[self.feature_view[f]].event_ts_column - n_base)
            .collect();
        if self.plan.is_identity() {
            return Ok(OnlineResult {
                values: Batch {
                    rows: rows.len(),
                    columns: all.columns,
                },
                statuses,
                event_ts: event_ts_columns,
                feature_event_ts: event_timestamps,
            });
        }

        // Derived features. A plugin sees what a training set would: a value too old for
        // its view's ttl is NULL, exactly as the point-in-time join leaves it.
        let n = rows.len();
        let mut base = all.columns;
        for (column, per_entity) in base.iter_mut().zip(&statuses) {
            for (r, status) in per_entity.iter().enumerate() {
                if *status == FieldStatus::OutsideMaxAge {
                    column.set_null(r);
                }
            }
        }
        let columns = self.plan.derive(base, n, self.plugin_budget).await?;
        let mut out_statuses = Vec::with_capacity(columns.len());
        let mut out_event_ts = Vec::with_capacity(columns.len());
        for (i, column) in columns.iter().enumerate() {
            match self.plan.derived_inputs(i) {
                None => {
                    let b = self.plan.base_index(i).expect("stored feature");
                    out_statuses.push(statuses[b].clone());
                    out_event_ts.push(event_timestamps[b]);
                }
                Some(inputs) => {
                    // Found if any input row was found; its time is the newest input's.
                    let mut times = Vec::with_capacity(n);
                    let mut validity = crate::batch::Validity::default();
                    let mut per_entity = Vec::with_capacity(n);
                    for r in 0..n {
                        let newest = inputs
                            .iter()
                            .filter_map(|&b| {
                                let c = &event_ts_columns[event_timestamps[b]];
                                match &c.values {
                                    Values::Timestamp(t) if !c.is_null(r) => Some(t[r]),
                                    _ => None,
                                }
                            })
                            .max();
                        per_entity.push(match newest {
                            None => FieldStatus::NotFound,
                            Some(_) if column.is_null(r) => FieldStatus::NullValue,
                            Some(_) => FieldStatus::Present,
                        });
                        times.push(newest.unwrap_or(0));
                        validity.push(newest.is_some());
                    }
                    event_ts_columns.push(Column {
                        name: EVENT_TS.into(),
                        dtype: ValueType::UnixTimestamp,
                        values: Values::Timestamp(times),
                        validity: Some(validity),
                    });
                    out_statuses.push(per_entity);
                    out_event_ts.push(event_ts_columns.len() - 1);
                }
            }
        }
        Ok(OnlineResult {
            values: Batch { rows: n, columns },
            statuses: out_statuses,
            event_ts: event_ts_columns,
            feature_event_ts: out_event_ts,
        })
    }
}

/// Values and statuses of an online read: `values` holds one column per feature, in
/// request order, one row per entity. A value whose status is not PRESENT must be shown
/// as null (see [`OnlineResult::is_served`]).
#[derive(Debug, Clone)]
pub struct OnlineResult {
    pub values: Batch,
    /// `statuses[feature][entity]`.
    pub statuses: Vec<Vec<FieldStatus>>,
    /// One event_ts column per view (and per derived view).
    event_ts: Vec<Column>,
    /// For each feature: its view's index in `event_ts`.
    feature_event_ts: Vec<usize>,
}

impl OnlineResult {
    /// Whether the value of `feature` for `entity` is served (not NULL, not too old).
    pub fn is_served(&self, feature: usize, entity: usize) -> bool {
        self.statuses[feature][entity] == FieldStatus::Present
    }

    /// The event timestamp (µs since the epoch) of the row `feature` came from.
    pub fn event_ts(&self, feature: usize, entity: usize) -> Option<i64> {
        let column = &self.event_ts[self.feature_event_ts[feature]];
        match &column.values {
            Values::Timestamp(t) if !column.is_null(entity) => Some(t[entity]),
            _ => None,
        }
    }
}
