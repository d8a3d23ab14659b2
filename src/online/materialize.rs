//! Materialization: copying the latest value of each entity from the offline sources into
//! the online tables, Feast-style, as one set-based statement per view.
//!
//! For each online feature view, inside ONE transaction:
//!
//! 1. the registry lock is taken in shared mode (an `apply` cannot rebuild the table
//!    underneath; concurrent materializations do not wait for each other), and the view,
//!    its source and its entity are checked to be exactly what the registry holds;
//! 2. a single `INSERT … SELECT DISTINCT ON (key) … FROM (<source query>) … ON CONFLICT
//!    (key) DO UPDATE … WHERE <stored row is older>` picks, per entity, the newest source
//!    row of the window (by `timestamp_field`, then `created_timestamp_column`, NULLs
//!    oldest), casts every feature through [`crate::pgtypes::column_type`] and upserts it;
//! 3. the view's watermark in `<registry schema>.materializations` moves forward to
//!    `greatest(stored end, window end)`.
//!
//! A stored row is only replaced by a strictly newer one (event timestamp, then created
//! timestamp): materializing an older window after a newer one changes nothing, and
//! running the same window twice writes nothing the second time. Rows with a NULL join
//! key are skipped. No row ever travels through the client, which is why the offline
//! and the online store must be the same database.
//!
//! **Window bounds** are those of Feast's PostgreSQL offline store
//! (`pull_latest_from_table_or_query`: `timestamp_field BETWEEN start AND end`): BOTH
//! bounds are inclusive. A source row stamped exactly at the end of one window is read
//! again by the next window starting there, which is harmless: the second read finds the
//! stored row equally new and leaves it alone. Sessions run in UTC, so a DATE
//! `timestamp_field` compares as midnight UTC of that day.

use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use indicatif::ProgressBar;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tracing::Instrument;

use crate::config::Config;
use crate::definitions::{Definitions, FeatureView, ViewKind};
use crate::offline::database_message;
use crate::online::layout::{CREATED_TS, EVENT_TS, TableLayout};
use crate::pgtypes::{column_type, ident};
use crate::registry::{Registry, RegistryError};

/// A materialization window: source rows with `start <= timestamp_field <= end`.
///
/// Both bounds are inclusive, as in Feast's PostgreSQL offline store
/// (`timestamp_field BETWEEN start AND end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Inclusive start; `None` means unbounded (`-infinity`): what an incremental
    /// materialization of a view without ttl starts from.
    pub start: Option<DateTime<Utc>>,
    /// Inclusive end.
    pub end: DateTime<Utc>,
}

impl Window {
    /// The window `[start, end]`, both bounds inclusive.
    pub fn between(start: DateTime<Utc>, end: DateTime<Utc>) -> Self {
        Self {
            start: Some(start),
            end,
        }
    }

    /// Whether no timestamp can fall in the window (it starts after it ends).
    pub fn is_empty(&self) -> bool {
        matches!(self.start, Some(start) if start > self.end)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.start {
            Some(start) => write!(
                f,
                "from {} to {}",
                display_time(start),
                display_time(self.end)
            ),
            None => write!(f, "from -infinity to {}", display_time(self.end)),
        }
    }
}

/// A timestamp as Feast prints it: `2024-01-01 00:00:00+00:00` (microseconds only when
/// there are some).
pub fn display_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.f%:z").to_string()
}

pub use crate::time::parse_timestamp;

#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    #[error("{}", unknown_views_message(.unknown, .valid))]
    UnknownViews {
        /// The names asked for that are not online feature views.
        unknown: Vec<String>,
        /// The online feature views that could have been asked for.
        valid: Vec<String>,
    },
    #[error(
        "the offline store ({offline}) and the online store ({online}) are different databases; materialization runs inside PostgreSQL, as one INSERT … SELECT from the sources into the online tables, so both stores must point at the same host, port and database"
    )]
    DifferentDatabases { offline: String, online: String },
    #[error(
        "nothing is applied for project `{project}`: run `skewless apply` before materializing"
    )]
    NothingApplied { project: String },
    #[error("feature view `{view}` is not applied: {reason}; run `skewless apply`")]
    NotApplied { view: String, reason: String },
    #[error("the window starts ({start}) after it ends ({end})", start = display_time(*.start), end = display_time(*.end))]
    InvalidWindow {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    #[error("materializing `{view}` failed: {message}")]
    Database { view: String, message: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl MaterializeError {
    fn database(view: &str, e: &sqlx::Error) -> Self {
        Self::Database {
            view: view.to_string(),
            message: database_message(e),
        }
    }
}

fn unknown_views_message(unknown: &[String], valid: &[String]) -> String {
    let names = unknown
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let what = if unknown.len() == 1 {
        "is not an online feature view"
    } else {
        "are not online feature views"
    };
    let valid = if valid.is_empty() {
        "none".to_string()
    } else {
        valid.join(", ")
    };
    format!("{names} {what} (the online feature views are: {valid})")
}

/// What one view's materialization did.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewReport {
    pub view: String,
    /// The window used (for an incremental run: from the stored watermark, or END - ttl).
    pub window: Window,
    /// Rows inserted or updated in the online table (0: nothing newer in the window).
    pub rows: u64,
    pub elapsed: Duration,
}

/// What a materialization did, view by view, in the order the views were materialized.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MaterializeReport {
    pub views: Vec<ViewReport>,
    pub elapsed: Duration,
}

impl MaterializeReport {
    /// Rows written over every view.
    pub fn rows(&self) -> u64 {
        self.views.iter().map(|v| v.rows).sum()
    }
}

/// Materializes `window` (both bounds inclusive, as in Feast) into the online tables of
/// the online feature views of `defs` (all of them, or those named in `views`).
///
/// `pool` is a pool on the online store (which also holds the registry); the source
/// queries run there with the offline store's `search_path`, so both stores must be the
/// same database. `defs` must be what the registry holds (load it with
/// [`Registry::load`]): each view is checked against the registry inside its transaction.
/// `progress` gets one step per view, its message set to the view being materialized.
pub async fn materialize(
    pool: &PgPool,
    config: &Config,
    defs: &Definitions,
    window: Window,
    views: &[String],
    progress: &ProgressBar,
) -> Result<MaterializeReport, MaterializeError> {
    if let Some(start) = window.start
        && start > window.end
    {
        return Err(MaterializeError::InvalidWindow {
            start,
            end: window.end,
        });
    }
    run(pool, config, defs, Mode::Window(window), views, progress).await
}

/// Materializes, per view, from where the last materialization ended up to `end`
/// (inclusive): the window starts at the view's stored watermark, or, for a view never
/// materialized (or whose table was rebuilt since), at `end - ttl` (unbounded for a view
/// without ttl). A view already materialized beyond `end` is left alone (0 rows).
/// Otherwise as [`materialize`].
pub async fn materialize_incremental(
    pool: &PgPool,
    config: &Config,
    defs: &Definitions,
    end: DateTime<Utc>,
    views: &[String],
    progress: &ProgressBar,
) -> Result<MaterializeReport, MaterializeError> {
    run(pool, config, defs, Mode::Incremental(end), views, progress).await
}

/// The materialization watermark of every online feature view the registry holds: the
/// end of its materialized window, `None` if it was never materialized (or its table was
/// rebuilt since). `pool` is a pool on the online store.
pub async fn watermarks(
    pool: &PgPool,
    config: &Config,
) -> Result<Vec<(String, Option<DateTime<Utc>>)>, MaterializeError> {
    let registry = Registry::new(pool.clone(), config);
    let defs = registry.load().await?;
    let ends = registry.materialization_ends().await?;
    Ok(online_views(&defs, &[])?
        .into_iter()
        .map(|v| {
            let end = ends
                .iter()
                .find(|(name, _)| *name == v.name)
                .map(|(_, e)| *e);
            (v.name.clone(), end)
        })
        .collect())
}

/// The online feature views of `defs` to materialize: all of them when `names` is empty,
/// else those named (in the order of `defs`). A name that is not an online feature view
/// is an error listing the valid ones.
pub fn online_views<'a>(
    defs: &'a Definitions,
    names: &[String],
) -> Result<Vec<&'a FeatureView>, MaterializeError> {
    let online: Vec<&FeatureView> = defs
        .feature_views
        .iter()
        .filter(|v| v.online && v.kind == ViewKind::Features)
        .collect();
    let names: Vec<&str> = names
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return Ok(online);
    }
    let mut unknown: Vec<String> = Vec::new();
    for name in &names {
        if !online.iter().any(|v| v.name == *name) && !unknown.iter().any(|u| u == name) {
            unknown.push(name.to_string());
        }
    }
    if !unknown.is_empty() {
        return Err(MaterializeError::UnknownViews {
            unknown,
            valid: online.iter().map(|v| v.name.clone()).collect(),
        });
    }
    Ok(online
        .into_iter()
        .filter(|v| names.contains(&v.name.as_str()))
        .collect())
}

/// Checks that the offline and the online store are the same database (host, port and
/// database; `localhost`, `127.0.0.1` and `::1` count as the same host).
pub fn check_same_database(config: &Config) -> Result<(), MaterializeError> {
    let offline = address(&config.offline_connect_options());
    let online = address(&config.online_connect_options());
    if offline == online {
        Ok(())
    } else {
        let show = |(host, port, db): (String, u16, String)| format!("{host}:{port}/{db}");
        Err(MaterializeError::DifferentDatabases {
            offline: show(offline),
            online: show(online),
        })
    }
}

fn address(options: &PgConnectOptions) -> (String, u16, String) {
    let host = match options.get_host() {
        "localhost" | "127.0.0.1" | "::1" | "[::1]" => "localhost".to_string(),
        other => other.to_ascii_lowercase(),
    };
    let database = options
        .get_database()
        .unwrap_or(options.get_username())
        .to_string();
    (host, options.get_port(), database)
}

/// The one statement that materializes `view` for the window bound as `$1` (start,
/// NULL: unbounded) and `$2` (end), both inclusive.
///
/// The newest source row per key in the window is kept (`DISTINCT ON`), then only keys
/// whose stored row is missing or strictly older are inserted (the anti-join keeps an
/// idempotent re-run from even locking rows), and `ON CONFLICT … WHERE` enforces the same
/// rule against concurrent writers.
pub fn insert_sql(config: &Config, defs: &Definitions, view: &FeatureView) -> String {
    let layout = TableLayout::of(config, defs, view);
    let entity = defs.view_entity(view);
    let source = defs.view_source(view);
    let table = &layout.table;
    let key = ident(&layout.key);
    let key_type = column_type(entity.value_type);
    let key_expr = format!("CAST(src.{key} AS {key_type})");
    // Grouping text keys in byte order finds the same groups as the table's collation
    // (equality is bytewise under any deterministic collation) and sorts several times
    // faster than a libc collation (abbreviated keys, memcmp).
    let key_group = if key_type == "text" {
        format!("{key_expr} COLLATE \"C\"")
    } else {
        key_expr.clone()
    };
    let ts_expr = format!(
        "CAST(src.{} AS timestamptz)",
        ident(&source.timestamp_field)
    );
    let created_expr = source
        .created_timestamp_column
        .as_ref()
        .map(|c| format!("CAST(src.{} AS timestamptz)", ident(c)));

    let mut columns = vec![key.clone()];
    let mut select = vec![format!("{key_expr} AS {key}")];
    for field in &view.schema {
        let name = ident(&field.name);
        select.push(format!(
            "CAST(src.{name} AS {}) AS {name}",
            column_type(field.dtype)
        ));
        columns.push(name);
    }
    select.push(format!("{ts_expr} AS {EVENT_TS}"));
    select.push(match &created_expr {
        Some(created) => format!("{created} AS {CREATED_TS}"),
        None => format!("CAST(NULL AS timestamptz) AS {CREATED_TS}"),
    });
    columns.push(EVENT_TS.into());
    columns.push(CREATED_TS.into());
    let order_created = match &created_expr {
        Some(created) => format!(", {created} DESC NULLS LAST"),
        None => String::new(),
    };
    // (event_ts, created_ts) of `a` strictly before that of `b`; a NULL created_ts is
    // older than any other: the rule of `TableLayout::upsert_if_newer`, applied before
    // the insert so that rows that would not change are not even locked.
    let older = |a: &str, b: &str| {
        format!(
            "({a}.{EVENT_TS}, coalesce({a}.{CREATED_TS}, '-infinity'::timestamptz)) < ({b}.{EVENT_TS}, coalesce({b}.{CREATED_TS}, '-infinity'::timestamptz))"
        )
    };
    format!(
        "INSERT INTO {table} AS online ({columns})
SELECT latest.* FROM (
    SELECT DISTINCT ON ({key_group}) {select}
    FROM (
{query}
    ) AS src
    WHERE {key_expr} IS NOT NULL
      AND {ts_expr} BETWEEN coalesce($1, '-infinity'::timestamptz) AND $2
    ORDER BY {key_group}, {ts_expr} DESC{order_created}
) AS latest
LEFT JOIN {table} AS stored ON stored.{key} = latest.{key}
WHERE stored.{key} IS NULL OR {stored_older}
{upsert}",
        columns = columns.join(", "),
        select = select.join(", "),
        query = source.query,
        stored_older = older("stored", "latest"),
        upsert = layout.upsert_if_newer("online"),
    )
}

/// `work_mem` of a materialization transaction (at least).
const WORK_MEM: &str = "256MB";

/// How a run picks each view's window.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Window(Window),
    Incremental(DateTime<Utc>),
}

async fn run(
    pool: &PgPool,
    config: &Config,
    defs: &Definitions,
    mode: Mode,
    views: &[String],
    progress: &ProgressBar,
) -> Result<MaterializeReport, MaterializeError> {
    check_same_database(config)?;
    if defs.feature_views.is_empty() {
        return Err(MaterializeError::NothingApplied {
            project: config.project.clone(),
        });
    }
    let selected = online_views(defs, views)?;
    let registry = Registry::new(pool.clone(), config);
    let started = Instant::now();
    progress.set_length(selected.len() as u64);
    let mut report = MaterializeReport::default();
    for view in selected {
        progress.set_message(view.name.clone());
        let span = tracing::info_span!(
            "materialize",
            view = %view.name,
            rows = tracing::field::Empty,
            elapsed_ms = tracing::field::Empty,
        );
        let done = materialize_view(pool, &registry, config, defs, view, mode)
            .instrument(span)
            .await?;
        report.views.push(done);
        progress.inc(1);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// One view, one transaction: check it is applied, pick the window, insert, move the
/// watermark.
async fn materialize_view(
    pool: &PgPool,
    registry: &Registry,
    config: &Config,
    defs: &Definitions,
    view: &FeatureView,
    mode: Mode,
) -> Result<ViewReport, MaterializeError> {
    let started = Instant::now();
    let name = view.name.as_str();
    let db = |e: sqlx::Error| MaterializeError::database(name, &e);
    let mut tx = pool.begin().await.map_err(db)?;
    registry.lock_shared(&mut tx).await?;
    check_applied(defs, &registry.load_in(&mut tx).await?, view)?;
    let table = TableLayout::of(config, defs, view).table;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&table)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
    if !exists {
        return Err(MaterializeError::NotApplied {
            view: name.to_string(),
            reason: format!("its online table {table} does not exist"),
        });
    }

    let window = match mode {
        Mode::Window(window) => window,
        Mode::Incremental(end) => {
            let stored = registry.materialization_end(&mut *tx, name).await?;
            Window {
                start: stored.or_else(|| {
                    let ttl =
                        TimeDelta::try_seconds(i64::try_from(view.applied_ttl_seconds()?).ok()?)?;
                    end.checked_sub_signed(ttl)
                }),
                end,
            }
        }
    };
    let mut rows = 0;
    if !window.is_empty() {
        // Source queries name their tables as the offline store sees them.
        sqlx::query(&format!(
            "SET LOCAL search_path TO {}, public",
            ident(&config.offline_store.db_schema)
        ))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        // Enough memory to sort and hash a million keys in memory rather than in
        // temporary files (3x faster at 1M users); never lowers a larger setting.
        sqlx::query(
            "SELECT set_config('work_mem', $1, true)
             WHERE pg_size_bytes(current_setting('work_mem')) < pg_size_bytes($1)",
        )
        .bind(WORK_MEM)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        rows = sqlx::query(&insert_sql(config, defs, view))
            .bind(window.start)
            .bind(window.end)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        registry
            .record_materialization(&mut tx, name, window.start, window.end, rows)
            .await?;
    }
    tx.commit().await.map_err(db)?;

    let elapsed = started.elapsed();
    let span = tracing::Span::current();
    span.record("rows", rows);
    span.record("elapsed_ms", elapsed.as_millis() as u64);
    tracing::debug!(rows, elapsed_ms = elapsed.as_millis() as u64, %window, "materialized");
    Ok(ViewReport {
        view: name.to_string(),
        window,
        rows,
        elapsed,
    })
}

/// The view, its source and its entity must be exactly what the registry holds: the
/// online table was built from the registered definitions.
fn check_applied(
    defs: &Definitions,
    applied: &Definitions,
    view: &FeatureView,
) -> Result<(), MaterializeError> {
    fn same<T: serde::Serialize>(a: &T, b: Option<&T>) -> bool {
        // `file` is not serialized: definitions from files and from the registry compare
        // equal when they define the same thing.
        b.is_some_and(|b| serde_json::to_value(a).ok() == serde_json::to_value(b).ok())
    }
    let not_applied = |reason: &str| MaterializeError::NotApplied {
        view: view.name.clone(),
        reason: reason.to_string(),
    };
    let Some(registered) = applied.feature_view(&view.name) else {
        return Err(not_applied("the registry has no such feature view"));
    };
    if !same(view, Some(registered)) {
        return Err(not_applied(
            "its definition differs from the registered one",
        ));
    }
    let source = defs.view_source(view);
    if !same(source, applied.data_source(&source.name)) {
        return Err(not_applied(&format!(
            "its data source `{}` differs from the registered one",
            source.name
        )));
    }
    let entity = defs.view_entity(view);
    if !same(entity, applied.entity(&entity.name)) {
        return Err(not_applied(&format!(
            "its entity `{}` differs from the registered one",
            entity.name
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::SourceFile;
    use figment::Figment;
    use figment::providers::{Format, Yaml};

    const CONFIG: &str = r#"
project: streamflow
offline_store: {type: postgres, host: 127.0.0.1, port: 5432, database: streamflow}
online_store: {type: postgres, host: localhost, database: streamflow, db_schema: online}
"#;

    const DEFS: &str = r#"
entities:
  - {name: user, join_keys: [user_id]}
data_sources:
  - {name: src, query: "SELECT user_id, as_of, a, b FROM t -- trailing comment", timestamp_field: as_of}
  - {name: src2, query: "SELECT user_id, as_of, created, a FROM t", timestamp_field: as_of, created_timestamp_column: created}
feature_views:
  - name: fv
    entities: [user]
    source: src
    schema: [{name: a, dtype: Int64}, {name: b, dtype: Float32}]
  - name: fv2
    entities: [user]
    source: src2
    schema: [{name: a, dtype: Int64}]
  - name: offline_only
    entities: [user]
    source: src
    online: false
    schema: [{name: a, dtype: Int64}]
label_views:
  - name: labels
    entities: [user]
    source: src
    schema: [{name: a, dtype: Bool}]
"#;

    fn config(yaml: &str) -> Config {
        Config::from_figment(Figment::from(Yaml::string(yaml)), None).unwrap()
    }

    fn defs() -> Definitions {
        Definitions::parse(&[SourceFile {
            name: "defs.yaml",
            text: DEFS,
        }])
        .unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        parse_timestamp(s).unwrap()
    }

    #[test]
    fn times_print_like_feast() {
        assert_eq!(display_time(utc("2024-01-01")), "2024-01-01 00:00:00+00:00");
        assert_eq!(
            display_time(utc("2024-01-01T00:00:00.25")),
            "2024-01-01 00:00:00.250+00:00"
        );
        let window = Window::between(utc("2024-01-01"), utc("2024-02-01"));
        assert_eq!(
            window.to_string(),
            "from 2024-01-01 00:00:00+00:00 to 2024-02-01 00:00:00+00:00"
        );
        assert!(!window.is_empty());
        assert!(Window::between(utc("2024-02-01"), utc("2024-01-01")).is_empty());
        let unbounded = Window {
            start: None,
            end: utc("2024-02-01"),
        };
        assert!(!unbounded.is_empty());
        assert!(unbounded.to_string().starts_with("from -infinity to"));
    }

    #[test]
    fn view_selection() {
        let defs = defs();
        let all: Vec<_> = online_views(&defs, &[])
            .unwrap()
            .iter()
            .map(|v| v.name.clone())
            .collect();
        assert_eq!(
            all,
            ["fv", "fv2"],
            "offline-only and label views are not materialized"
        );
        let some = online_views(&defs, &[" fv2".into(), "fv2".into()]).unwrap();
        assert_eq!(some.len(), 1);
        let err = online_views(&defs, &["fv".into(), "nope".into(), "labels".into()])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "`nope`, `labels` are not online feature views (the online feature views are: fv, fv2)"
        );
        let err = online_views(&defs, &["offline_only".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("`offline_only` is not an online feature view"),
            "{err}"
        );
    }

    #[test]
    fn stores_must_share_a_database() {
        // localhost and 127.0.0.1 are the same server.
        check_same_database(&config(CONFIG)).unwrap();
        let other = config(&CONFIG.replace(
            "host: localhost, database: streamflow",
            "host: localhost, database: online",
        ));
        let err = check_same_database(&other).unwrap_err().to_string();
        assert!(
            err.contains("offline store (localhost:5432/streamflow) and the online store (localhost:5432/online) are different databases"),
            "{err}"
        );
        let other_port =
            config(&CONFIG.replace("host: localhost,", "host: localhost, port: 5433,"));
        assert!(check_same_database(&other_port).is_err());
        // DATABASE_URL replaces both.
        let url = Config::from_figment(
            Figment::from(Yaml::string(&CONFIG.replace(
                "host: localhost, database: streamflow",
                "host: localhost, database: online",
            ))),
            Some("postgres://postgres@db:5432/x".into()),
        )
        .unwrap();
        check_same_database(&url).unwrap();
    }

    #[test]
    fn insert_statement_shape() {
        let (config, defs) = (config(CONFIG), defs());
        let sql = insert_sql(&config, &defs, defs.feature_view("fv").unwrap());
        for needle in [
            "INSERT INTO \"online\".\"streamflow_fv\" AS online (\"user_id\", \"a\", \"b\", event_ts, created_ts)",
            "SELECT DISTINCT ON (CAST(src.\"user_id\" AS text) COLLATE \"C\") CAST(src.\"user_id\" AS text) AS \"user_id\", CAST(src.\"a\" AS int8) AS \"a\", CAST(src.\"b\" AS float4) AS \"b\", CAST(src.\"as_of\" AS timestamptz) AS event_ts, CAST(NULL AS timestamptz) AS created_ts",
            "-- trailing comment\n    ) AS src",
            "WHERE CAST(src.\"user_id\" AS text) IS NOT NULL",
            "AND CAST(src.\"as_of\" AS timestamptz) BETWEEN coalesce($1, '-infinity'::timestamptz) AND $2",
            "ORDER BY CAST(src.\"user_id\" AS text) COLLATE \"C\", CAST(src.\"as_of\" AS timestamptz) DESC\n",
            "ON CONFLICT (\"user_id\") DO UPDATE SET \"a\" = EXCLUDED.\"a\", \"b\" = EXCLUDED.\"b\", event_ts = EXCLUDED.event_ts, created_ts = EXCLUDED.created_ts",
            "WHERE (online.event_ts, coalesce(online.created_ts, '-infinity'::timestamptz)) < (EXCLUDED.event_ts, coalesce(EXCLUDED.created_ts, '-infinity'::timestamptz))",
        ] {
            assert!(sql.contains(needle), "missing {needle:?} in:\n{sql}");
        }
        let sql = insert_sql(&config, &defs, defs.feature_view("fv2").unwrap());
        assert!(
            sql.contains("CAST(src.\"created\" AS timestamptz) AS created_ts"),
            "{sql}"
        );
        assert!(
            sql.contains("DESC, CAST(src.\"created\" AS timestamptz) DESC NULLS LAST"),
            "{sql}"
        );
        // Integer keys group by their own order (no collation).
        let mut int_keys = defs.clone();
        int_keys.entities[0].value_type = crate::definitions::ValueType::Int64;
        let sql = insert_sql(&config, &int_keys, int_keys.feature_view("fv").unwrap());
        assert!(
            sql.contains("SELECT DISTINCT ON (CAST(src.\"user_id\" AS int8)) "),
            "{sql}"
        );
        assert!(!sql.contains("COLLATE"), "{sql}");
    }

    #[test]
    fn applied_means_identical_to_the_registry() {
        let defs = defs();
        let fv = defs.feature_view("fv").unwrap();
        // From the registry (JSON round trip: no file names) it is the same thing.
        let applied: Definitions =
            serde_json::from_value(serde_json::to_value(&defs).unwrap()).unwrap();
        check_applied(&defs, &applied, fv).unwrap();
        let mut changed = applied.clone();
        changed.feature_views[0].schema[1].dtype = crate::definitions::ValueType::Float64;
        let err = check_applied(&defs, &changed, fv).unwrap_err().to_string();
        assert_eq!(
            err,
            "feature view `fv` is not applied: its definition differs from the registered one; run `skewless apply`"
        );
        let mut changed = applied.clone();
        changed.data_sources[0].query.push_str(" WHERE true");
        assert!(check_applied(&defs, &changed, fv).is_err());
        let err = check_applied(&defs, &Definitions::default(), fv)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the registry has no such feature view"),
            "{err}"
        );
    }
}
