//! Point-in-time correct training sets, computed inside PostgreSQL.
//!
//! Semantics are Feast's: for each entity row (key, event_timestamp) and each view, the
//! source row of that key with the greatest timestamp ≤ event_timestamp (and, with a ttl,
//! ≥ event_timestamp − ttl), ties broken by the greatest created timestamp; no such row
//! gives NULLs. Output keeps the entity rows' order and count, duplicates included.
//!
//! How: entity rows reach a temporary table (COPY, or `INSERT … SELECT` from the user's
//! SQL inside a READ ONLY transaction); ONE query joins every view — each view's source
//! query is a subquery, bounded by the entity rows' time span, so a Postgres-compatible
//! distributed engine can run the whole thing — and its result leaves PostgreSQL as a
//! binary COPY stream, decoded into
//! [`Batch`]es of [`BATCH_ROWS`] rows that flow through a bounded channel. Memory stays
//! flat whatever the size of the training set.

use std::io::Read;
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::time::parse_timestamp;
use futures::StreamExt;
use sqlx::{
    Column as _, Connection, Executor, PgPool, Postgres, Row as _, Statement, Transaction, TypeInfo,
};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::batch::{Batch, BatchBuilder, ColumnSpec};
use crate::config::Config;
use crate::definitions::{Definitions, ResolveError, SelectedFeature, ValueType};
use crate::offline::copy::BinaryCopyDecoder;
use crate::offline::database_message;
use crate::pgtypes::{self, column_type, ident};
use crate::transform::{FeaturePlan, PlanError, PluginSet, TransformError};

/// Rows per batch handed downstream (and to plugins). Small enough that writing (and
/// deriving) overlaps with PostgreSQL's stream even for a few thousand rows — with 8192,
/// a 7043-row set reached the writer in one piece after the last row: 42.6 → 39.2 ms —
/// and large enough that per-batch costs vanish (a million rows: same time, 17 MB RSS).
pub const BATCH_ROWS: usize = 1024;

/// How a UTC timestamp is spelled for PostgreSQL: in the entity rows' COPY text and in the
/// sources' bounds.
const PG_UTC: &str = "%Y-%m-%d %H:%M:%S%.6f+00";

/// Name of the entity timestamp column, in requests and in the output.
pub const EVENT_TIMESTAMP: &str = "event_timestamp";

/// Where the entity rows come from.
pub enum Entities {
    /// Rows given inline (HTTP JSON): keys and timestamps, same length.
    Inline {
        keys: Vec<String>,
        timestamps: Vec<String>,
    },
    /// A CSV with a key column and `event_timestamp` (other columns are ignored);
    /// streamed, never held in memory. `name` is used in messages.
    Csv {
        name: String,
        reader: Box<dyn Read + Send>,
    },
    /// SQL returning the key column and `event_timestamp`; runs in a READ ONLY
    /// transaction with a statement timeout.
    Sql(String),
}

/// A training-set request, resolved against the definitions.
pub struct HistoricalRequest {
    pub entities: Entities,
    /// Stored and derived features, in output order.
    pub features: Vec<SelectedFeature>,
    pub label: Option<SelectedFeature>,
    /// The loaded plugins derived features resolve to (empty if none are requested).
    pub plugins: PluginSet,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoricalError {
    /// The request names something that does not exist.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The entity rows are wrong (missing columns, bad timestamps, SQL that fails…).
    #[error("{0}")]
    Entities(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("the training-set query failed: {0}")]
    Query(String),
    #[error("internal error decoding rows: {0}")]
    Decode(String),
    /// A derived view cannot run (its plugin is missing or does not match).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A plugin failed on a batch: the training set is incomplete and must be discarded.
    #[error("derived features failed: {0}")]
    Transform(#[from] TransformError),
}

impl From<sqlx::Error> for HistoricalError {
    fn from(e: sqlx::Error) -> Self {
        if crate::offline::is_unavailable(&e) {
            Self::Unavailable(e.to_string())
        } else {
            Self::Database(database_message(&e))
        }
    }
}

/// A training set being produced: its columns, how many rows it will have, and the
/// batches as they come. Dropping the receiver cancels the query.
pub struct TrainingSet {
    pub schema: Vec<ColumnSpec>,
    pub rows: u64,
    /// Every plugin the derived features ran, so a model can be traced to the exact
    /// transformation code: (name, version, sha256).
    pub plugins: Vec<PluginUse>,
    pub batches: mpsc::Receiver<Result<Batch, HistoricalError>>,
}

/// One plugin a training set ran.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginUse {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

impl TrainingSet {
    /// The provenance as key-value metadata (Parquet footer, sidecar files):
    /// `skewless.plugins` = a JSON list of {name, version, sha256}.
    pub fn metadata(&self) -> Vec<(String, String)> {
        vec![(
            "skewless.plugins".to_string(),
            serde_json::to_string(&self.plugins).expect("serializes"),
        )]
    }
}

/// Tuning knobs that do not change results.
#[derive(Debug, Clone)]
pub struct HistoricalOptions {
    /// `statement_timeout` for entity SQL, in milliseconds.
    pub entity_sql_timeout_ms: u64,
    /// `work_mem` for the join (sorts of the candidate rows).
    pub work_mem: String,
    /// Time one plugin call may take on one batch.
    pub plugin_budget: std::time::Duration,
}

impl HistoricalOptions {
    pub fn from_config(config: &Config) -> Self {
        Self {
            entity_sql_timeout_ms: config.server.entity_sql_timeout_ms,
            work_mem: "256MB".into(),
            plugin_budget: std::time::Duration::from_millis(config.plugins.offline_timeout_ms),
        }
    }
}

/// Starts a training set: validates, loads the entity rows, and spawns the query whose
/// rows arrive on [`TrainingSet::batches`]. Errors found before the first row are
/// returned here, so an HTTP handler can still answer 400.
#[tracing::instrument(skip_all, fields(features = request.features.len()))]
pub async fn start(
    pool: &PgPool,
    defs: &Definitions,
    request: HistoricalRequest,
    options: &HistoricalOptions,
) -> Result<TrainingSet, HistoricalError> {
    let Prepared {
        mut tx,
        pid,
        sql,
        schema,
        stream_schema,
        rows,
        plan,
    } = prepare(pool, defs, request, options).await?;
    let (sender, receiver) = mpsc::channel(4);
    let pool = pool.clone();
    tokio::spawn(async move {
        let result = stream_rows(&mut tx, &sql, stream_schema, &sender, &pool, pid).await;
        match result {
            Ok(()) => {
                // Every row is out: the consumer sees the end now, not after the commit
                // (which only drops the temporary table; the rows do not depend on it).
                drop(sender);
                if let Err(e) = tx.commit().await {
                    tracing::warn!(error = %e, "commit after a training set failed");
                }
            }
            Err(StreamEnd::Failed(e)) => {
                let _ = sender.send(Err(e)).await;
                drop(sender);
                let _ = tx.rollback().await;
            }
            Err(StreamEnd::Abandoned) => {
                // The query was cancelled and its stream drained: the connection is
                // clean and goes back to the pool after the rollback.
                if let Err(e) = tx.rollback().await {
                    tracing::warn!(error = %e, "rollback after cancel failed");
                }
            }
        }
    });
    let mut plugins: Vec<PluginUse> = plan
        .plugins()
        .map(|p| PluginUse {
            name: p.info().name.clone(),
            version: p.info().version.clone(),
            sha256: p.sha256().to_string(),
        })
        .collect();
    plugins.dedup();
    let batches = if plan.is_identity() {
        receiver
    } else {
        derive_stage(plan, receiver, options.plugin_budget)
    };
    Ok(TrainingSet {
        schema,
        rows,
        plugins,
        batches,
    })
}

/// Runs the plan's plugins over each batch as it comes, in a task of its own so that
/// decoding the next batch overlaps with transforming this one. The base columns sit
/// between the entity columns (key, event_timestamp) and the label, if any.
fn derive_stage(
    plan: FeaturePlan,
    mut base: mpsc::Receiver<Result<Batch, HistoricalError>>,
    budget: std::time::Duration,
) -> mpsc::Receiver<Result<Batch, HistoricalError>> {
    let (sender, receiver) = mpsc::channel(2);
    tokio::spawn(
        async move {
            let n = plan.base().len();
            while let Some(batch) = base.recv().await {
                let out = match batch {
                    Ok(mut batch) => {
                        let tail = batch.columns.split_off(2 + n);
                        let features = batch.columns.split_off(2);
                        match plan.derive(features, batch.rows, budget).await {
                            Ok(derived) => {
                                batch.columns.extend(derived);
                                batch.columns.extend(tail);
                                Ok(batch)
                            }
                            Err(e) => Err(HistoricalError::Transform(e)),
                        }
                    }
                    Err(e) => Err(e),
                };
                let failed = out.is_err();
                // A failed batch ends the training set; dropping `base` cancels the query.
                if sender.send(out).await.is_err() || failed {
                    return;
                }
            }
        }
        .instrument(tracing::info_span!("derive")),
    );
    receiver
}

/// A transaction holding the loaded entity rows, and the query to run over them.
struct Prepared {
    tx: Transaction<'static, Postgres>,
    pid: i32,
    sql: String,
    /// The training set's columns.
    schema: Vec<ColumnSpec>,
    /// The query's columns: the entity columns, the plan's base features, the label.
    stream_schema: Vec<ColumnSpec>,
    rows: u64,
    plan: FeaturePlan,
}

/// Validates the request, opens the transaction, and loads the entity rows.
async fn prepare(
    pool: &PgPool,
    defs: &Definitions,
    request: HistoricalRequest,
    options: &HistoricalOptions,
) -> Result<Prepared, HistoricalError> {
    let started = Instant::now();
    let plan = FeaturePlan::new(defs, &request.plugins, request.features)?;
    let mut views: Vec<&SelectedFeature> = plan.base().iter().collect();
    views.extend(request.label.iter());
    let entity = entity_of(defs, &views)?;
    let key_type = column_type(entity.value_type);
    let key = entity.join_key().to_string();

    let mut schema = vec![
        ColumnSpec {
            name: key.clone(),
            dtype: entity.value_type,
        },
        ColumnSpec {
            name: EVENT_TIMESTAMP.into(),
            dtype: ValueType::UnixTimestamp,
        },
    ];
    let mut stream_schema = schema.clone();
    for f in &views {
        stream_schema.push(ColumnSpec {
            name: f.output_name.clone(),
            dtype: f.field.dtype,
        });
    }
    for f in plan.requested().iter().chain(request.label.iter()) {
        if f.output_name == key || f.output_name == EVENT_TIMESTAMP {
            return Err(HistoricalError::Entities(format!(
                "feature `{}` would shadow the entity column `{}`; ask for full feature names",
                f.field.name, f.output_name
            )));
        }
        schema.push(ColumnSpec {
            name: f.output_name.clone(),
            dtype: f.field.dtype,
        });
    }

    let mut tx = pool.begin().await?;
    // One round trip: session settings for this transaction, the entity table, and the
    // backend's pid (to cancel the query if the consumer goes away).
    let setup = format!(
        // JIT compilation costs more than it saves on these queries. The transaction
        // writes nothing durable (its one table is temporary), so its commit need not
        // wait for a WAL flush.
        "SET LOCAL jit = off; SET LOCAL work_mem = '{work_mem}'; SET LOCAL synchronous_commit = off;
         CREATE TEMP TABLE skewless_entities (row_id bigint NOT NULL, entity_key {key_type}, event_timestamp timestamptz NOT NULL) ON COMMIT DROP;
         SELECT pg_backend_pid()",
        work_mem = options.work_mem.replace('\'', ""),
    );
    let pid: i32 = (&mut *tx)
        .fetch_one(sqlx::raw_sql(&setup))
        .await?
        .try_get(0)?;
    let rows = load_entities(&mut tx, request.entities, &key, key_type, options).await?;
    let span = analyze_entities(&mut tx).await?;
    let sql = join_sql(defs, &key, &views, span);
    tracing::debug!(%sql, rows, "training-set query");
    tracing::info!(
        rows,
        prepare_ms = started.elapsed().as_millis() as u64,
        "entity rows loaded"
    );
    Ok(Prepared {
        tx,
        pid,
        sql,
        schema,
        stream_schema,
        rows,
        plan,
    })
}

/// The first and last event timestamps of the entity rows. Source rows outside
/// `[first − ttl, last]` can match no entity row: saying so in the query (as Feast's
/// offline stores do with the entity dataframe's timestamp range) lets PostgreSQL drop
/// them while it scans the source, before they reach the join. With training sets cut at
/// one date while newer snapshots exist, that is most of the source.
/// A side is `None` when it bounds nothing: no entity rows, or an infinite timestamp.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventSpan {
    pub first: Option<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
}

/// Gives the planner statistics on the entity rows and reads their [`EventSpan`], in one
/// round trip. The smallest sample (300 rows, statistics target 1) is enough: the joins
/// need the row count and how distinct the keys are, not histograms; it costs 0.4 ms at
/// 7043 rows and 1.1 ms at 100k (target 10: 2.5 and 5 ms; the default 100: ~40 ms at
/// 100k), with the same plans on the benchmarks. A poor distinct-key estimate could only
/// change the plan, never the rows. The entity SQL's statement timeout ends here (back to
/// the database's own setting: the join is not user SQL), and whatever the entity SQL did
/// to the session's time zone or date style (`set_config` is allowed in a READ ONLY
/// transaction) is undone: the join's casts, the span's bounds and the text the span is
/// read from all assume UTC and ISO.
async fn analyze_entities(
    tx: &mut Transaction<'static, Postgres>,
) -> Result<EventSpan, HistoricalError> {
    let row = (&mut **tx)
        .fetch_one(sqlx::raw_sql(
            "SET LOCAL statement_timeout TO DEFAULT; SET LOCAL TimeZone = 'UTC';
             SET LOCAL DateStyle = 'ISO, MDY'; SET LOCAL default_statistics_target = 1;
             ANALYZE skewless_entities;
             SELECT CASE WHEN isfinite(min(event_timestamp)) THEN min(event_timestamp) END,
                    CASE WHEN isfinite(max(event_timestamp)) THEN max(event_timestamp) END
             FROM skewless_entities",
        ))
        .await?;
    // A side chrono cannot hold (beyond year 262143) bounds nothing either.
    let side = |i: usize| match row.try_get::<Option<DateTime<Utc>>, _>(i) {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(error = %e, "entity time span left open on one side");
            None
        }
    };
    Ok(EventSpan {
        first: side(0),
        last: side(1),
    })
}

/// Runs the training-set query under `EXPLAIN (ANALYZE, BUFFERS)` instead of returning
/// its rows: PostgreSQL's own plan and time for exactly the SQL a training set runs.
pub async fn explain(
    pool: &PgPool,
    defs: &Definitions,
    request: HistoricalRequest,
    options: &HistoricalOptions,
) -> Result<String, HistoricalError> {
    let Prepared { mut tx, sql, .. } = prepare(pool, defs, request, options).await?;
    let lines: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, BUFFERS) {sql}"))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| HistoricalError::Query(database_message(&e)))?;
    tx.rollback().await?;
    Ok(format!("{sql}\n\n{}", lines.join("\n")))
}

enum StreamEnd {
    Failed(HistoricalError),
    Abandoned,
}

async fn stream_rows(
    tx: &mut Transaction<'static, Postgres>,
    sql: &str,
    schema: Vec<ColumnSpec>,
    sender: &mpsc::Sender<Result<Batch, HistoricalError>>,
    pool: &PgPool,
    pid: i32,
) -> Result<(), StreamEnd> {
    let failed = |e: HistoricalError| StreamEnd::Failed(e);
    let mut stream = tx
        .copy_out_raw(&format!("COPY ({sql}) TO STDOUT (FORMAT binary)"))
        .await
        .map_err(|e| failed(HistoricalError::Query(database_message(&e))))?;
    let mut decoder = BinaryCopyDecoder::new();
    let mut builder = BatchBuilder::new(schema, BATCH_ROWS);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| failed(HistoricalError::Query(database_message(&e))))?;
        decoder.feed(&chunk);
        while decoder
            .next_tuple(&mut builder)
            .map_err(|e| failed(HistoricalError::Decode(e.to_string())))?
        {
            if builder.is_full() && sender.send(Ok(builder.take())).await.is_err() {
                // The consumer went away (a client disconnected): stop the query in the
                // server, then read the stream to its (error) end, so the connection is
                // left in a known state.
                cancel_backend(pool, pid).await;
                while let Some(Ok(_)) = stream.next().await {}
                return Err(StreamEnd::Abandoned);
            }
        }
    }
    if builder.rows() > 0 && sender.send(Ok(builder.take())).await.is_err() {
        return Err(StreamEnd::Abandoned);
    }
    Ok(())
}

/// Cancels the running query of backend `pid`, from a connection of its own (the pool
/// may have none to spare).
async fn cancel_backend(pool: &PgPool, pid: i32) {
    tracing::info!(pid, "training-set consumer gone: cancelling the query");
    match sqlx::PgConnection::connect_with(&pool.connect_options()).await {
        Ok(mut conn) => {
            if let Err(e) = sqlx::query("SELECT pg_cancel_backend($1)")
                .bind(pid)
                .execute(&mut conn)
                .await
            {
                tracing::warn!(error = %e, "cannot cancel the query");
            }
            let _ = conn.close().await;
        }
        Err(e) => tracing::warn!(error = %e, "cannot connect to cancel the query"),
    }
}

/// The single entity every requested view is keyed by.
fn entity_of<'d>(
    defs: &'d Definitions,
    views: &[&SelectedFeature],
) -> Result<&'d crate::definitions::Entity, HistoricalError> {
    let first = views.first().ok_or(ResolveError::Empty)?;
    let view = defs
        .feature_view(&first.view)
        .expect("selected features come from known views");
    let entity = defs.view_entity(view);
    for f in views {
        let other = defs.view_entity(defs.feature_view(&f.view).expect("known view"));
        if other.name != entity.name {
            return Err(HistoricalError::Entities(format!(
                "views `{}` and `{}` have different entities (`{}`, `{}`); a training set joins one entity",
                first.view, f.view, entity.name, other.name
            )));
        }
    }
    Ok(entity)
}

/// The point-in-time join of every requested view, as ONE query. Each view becomes a
/// `DISTINCT ON (row_id)` over a left join of the entity rows with the view's source
/// query (a subquery), ordered so the newest eligible row wins: one row per entity row,
/// in the entity rows' order. The views are then merged on `row_id`. With the entity
/// rows' [`EventSpan`], each source is also bounded by it (see there).
pub fn join_sql(
    defs: &Definitions,
    key: &str,
    features: &[&SelectedFeature],
    span: EventSpan,
) -> String {
    let mut order: Vec<&str> = Vec::new();
    for f in features {
        if !order.contains(&f.view.as_str()) {
            order.push(&f.view);
        }
    }
    let mut ctes = Vec::new();
    let mut joins = Vec::new();
    for (i, view_name) in order.iter().enumerate() {
        let view = defs.feature_view(view_name).expect("known view");
        let source = defs.view_source(view);
        let ts = format!("CAST(s.{} AS timestamptz)", ident(&source.timestamp_field));
        let cols: Vec<String> = features
            .iter()
            .enumerate()
            .filter(|(_, f)| f.view == *view_name)
            .map(|(j, f)| {
                format!(
                    "CAST(s.{} AS {}) AS c{j}",
                    ident(&f.field.name),
                    column_type(f.field.dtype)
                )
            })
            .collect();
        let mut conditions = vec![
            format!("s.{} = e.entity_key", ident(key)),
            format!("{ts} <= e.event_timestamp"),
        ];
        if let Some(ttl) = view.ttl_seconds {
            conditions.push(format!(
                "{ts} >= e.event_timestamp - interval '{ttl} seconds'"
            ));
        }
        // The span's bounds compare the source column as it is, against an untyped
        // literal that PostgreSQL reads as the column's own type (date, timestamp or
        // timestamptz, as `apply` checked): no cast per row, and the column's statistics
        // and indexes apply. A date reads the literal's day, which only loosens the lower
        // bound; the exact conditions above still decide. (A source whose timestamp
        // column has since changed type must be applied again, which checks it anew.)
        let raw_ts = format!("s.{}", ident(&source.timestamp_field));
        if let Some(last) = span.last.and_then(timestamp_literal) {
            conditions.push(format!("{raw_ts} <= {last}"));
        }
        let first = span.first.zip(view.ttl_seconds).and_then(|(first, ttl)| {
            first.checked_sub_signed(chrono::TimeDelta::try_seconds(i64::try_from(ttl).ok()?)?)
        });
        if let Some(first) = first.and_then(timestamp_literal) {
            conditions.push(format!("{raw_ts} >= {first}"));
        }
        // Ordering by the columns as they are: the casts to timestamptz (in UTC) keep
        // the order, and cost a conversion per row.
        let mut order_by = vec!["e.row_id".to_string(), format!("{raw_ts} DESC")];
        if let Some(created) = &source.created_timestamp_column {
            order_by.push(format!("s.{} DESC NULLS LAST", ident(created)));
        }
        // The first view also carries the entity columns: every view keeps one row per
        // entity row (a LEFT JOIN: no eligible row gives one row of NULLs) in row order,
        // so the views line up by merge joins on `row_id` with no separate pass over the
        // entity rows (and no sort of them) to restore their order.
        let entity_cols = if i == 0 {
            "e.entity_key, e.event_timestamp, "
        } else {
            ""
        };
        ctes.push(format!(
            "v{i} AS (SELECT DISTINCT ON (e.row_id) e.row_id, {entity_cols}{cols} FROM skewless_entities e LEFT JOIN ({query}) AS s ON {conditions} ORDER BY {order_by})",
            cols = cols.join(", "),
            query = source.query,
            conditions = conditions.join(" AND "),
            order_by = order_by.join(", "),
        ));
        if i > 0 {
            joins.push(format!("JOIN v{i} ON v{i}.row_id = v0.row_id"));
        }
    }
    // Columns in the requested order: feature j lives in the CTE of its view.
    let mut select = vec!["v0.entity_key".to_string(), "v0.event_timestamp".to_string()];
    for (j, f) in features.iter().enumerate() {
        let i = order
            .iter()
            .position(|v| *v == f.view)
            .expect("view listed");
        select.push(format!("v{i}.c{j}"));
    }
    format!(
        "WITH {ctes} SELECT {select} FROM v0 {joins} ORDER BY v0.row_id",
        ctes = ctes.join(", "),
        select = select.join(", "),
        joins = joins.join(" "),
    )
}

/// `'YYYY-MM-DD HH:MM:SS.ffffff+00'`, untyped; `None` outside years 1–9999, where
/// PostgreSQL's and chrono's spellings differ (a bound is an optimisation: leaving it
/// out is always correct).
fn timestamp_literal(t: DateTime<Utc>) -> Option<String> {
    use chrono::Datelike;
    (1..=9999)
        .contains(&t.year())
        .then(|| format!("'{}'", t.format(PG_UTC)))
}

/// Fills `skewless_entities`; returns the row count.
async fn load_entities(
    tx: &mut Transaction<'static, Postgres>,
    entities: Entities,
    key: &str,
    key_type: &str,
    options: &HistoricalOptions,
) -> Result<u64, HistoricalError> {
    const COPY: &str = "COPY skewless_entities (row_id, entity_key, event_timestamp) FROM STDIN";
    match entities {
        Entities::Inline { keys, timestamps } => {
            if keys.len() != timestamps.len() {
                return Err(HistoricalError::Entities(format!(
                    "entities: `{key}` has {} values but `{EVENT_TIMESTAMP}` has {}; they must have the same length",
                    keys.len(),
                    timestamps.len()
                )));
            }
            let mut buf = Vec::with_capacity(keys.len() * 48);
            for (i, (k, t)) in keys.iter().zip(&timestamps).enumerate() {
                let ts = parse_timestamp(t).ok().ok_or_else(|| {
                    HistoricalError::Entities(format!(
                        "entities: row {i}: `{t}` is not a timestamp (expected RFC 3339 like 2024-01-31T00:00:00Z, or a date)"
                    ))
                })?;
                push_entity_row(&mut buf, i as u64 + 1, k, ts);
            }
            copy_in(tx, COPY, vec![buf]).await?;
            Ok(keys.len() as u64)
        }
        Entities::Csv { name, reader } => {
            let mut csv = csv::ReaderBuilder::new().from_reader(reader);
            let headers = csv
                .headers()
                .map_err(|e| HistoricalError::Entities(format!("{name}: {e}")))?
                .clone();
            let position = |col: &str| {
                headers.iter().position(|h| h.trim() == col).ok_or_else(|| {
                    HistoricalError::Entities(format!(
                        "{name}: missing column `{col}` (entity rows need `{key}` and `{EVENT_TIMESTAMP}`; found: {})",
                        headers.iter().collect::<Vec<_>>().join(", ")
                    ))
                })
            };
            let (key_pos, ts_pos) = (position(key)?, position(EVENT_TIMESTAMP)?);
            let mut copy = tx.copy_in_raw(COPY).await?;
            let mut buf = Vec::with_capacity(1 << 20);
            let mut rows = 0u64;
            let mut record = csv::StringRecord::new();
            loop {
                let more = match csv.read_record(&mut record) {
                    Ok(more) => more,
                    Err(e) => {
                        let _ = copy.abort("invalid entity rows").await;
                        return Err(HistoricalError::Entities(format!("{name}: {e}")));
                    }
                };
                if !more {
                    break;
                }
                rows += 1;
                let line = record.position().map_or(rows + 1, |p| p.line());
                let t = &record[ts_pos];
                let Ok(ts) = parse_timestamp(t) else {
                    let _ = copy.abort("invalid entity rows").await;
                    return Err(HistoricalError::Entities(format!(
                        "{name}, line {line}: `{t}` is not a timestamp (expected RFC 3339 like 2024-01-31T00:00:00Z, or a date)"
                    )));
                };
                push_entity_row(&mut buf, rows, &record[key_pos], ts);
                if buf.len() >= 1 << 20 {
                    copy.send(std::mem::take(&mut buf)).await?;
                }
            }
            if !buf.is_empty() {
                copy.send(buf).await?;
            }
            copy.finish().await?;
            Ok(rows)
        }
        Entities::Sql(sql) => {
            let sql = sql.trim().trim_end_matches(';').to_string();
            // From here on nothing but the temporary table can be written.
            let read_only = format!(
                "SET TRANSACTION READ ONLY; SET LOCAL statement_timeout = {}",
                options.entity_sql_timeout_ms
            );
            (&mut **tx).execute(sqlx::raw_sql(&read_only)).await?;
            let entity_err = |e: sqlx::Error| {
                HistoricalError::Entities(format!("entity_sql failed: {}", database_message(&e)))
            };
            let statement = (&mut **tx).prepare(&sql).await.map_err(entity_err)?;
            let columns: Vec<(String, String)> = statement
                .columns()
                .iter()
                .map(|c| (c.name().to_string(), c.type_info().name().to_string()))
                .collect();
            let found = || {
                columns
                    .iter()
                    .map(|(n, t)| format!("{n} {}", t.to_lowercase()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            for (col, temporal) in [(key, false), (EVENT_TIMESTAMP, true)] {
                match columns.iter().find(|(n, _)| n == col) {
                    None => {
                        return Err(HistoricalError::Entities(format!(
                            "entity_sql must return `{key}` and `{EVENT_TIMESTAMP}` columns; it returns: {}",
                            found()
                        )));
                    }
                    Some((_, t)) if temporal && !pgtypes::is_temporal(t) => {
                        return Err(HistoricalError::Entities(format!(
                            "entity_sql: `{EVENT_TIMESTAMP}` has type {}, not a date or timestamp",
                            t.to_lowercase()
                        )));
                    }
                    Some(_) => {}
                }
            }
            let inserted = sqlx::query(&format!(
                "INSERT INTO skewless_entities (row_id, entity_key, event_timestamp)
                 SELECT row_number() OVER (), CAST(q.{k} AS {key_type}), CAST(q.{ts} AS timestamptz)
                 FROM ({sql}) AS q",
                k = ident(key),
                ts = ident(EVENT_TIMESTAMP),
            ))
            .execute(&mut **tx)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(db) if db.code().as_deref() == Some("23502") => {
                    HistoricalError::Entities(format!(
                        "entity_sql returned a NULL `{EVENT_TIMESTAMP}`; every entity row needs a timestamp"
                    ))
                }
                _ => entity_err(e),
            })?
            .rows_affected();
            // (`analyze_entities` ends the statement timeout.)
            Ok(inserted)
        }
    }
}

async fn copy_in(
    tx: &mut Transaction<'static, Postgres>,
    statement: &str,
    chunks: Vec<Vec<u8>>,
) -> Result<(), HistoricalError> {
    let mut copy = tx.copy_in_raw(statement).await?;
    for chunk in chunks {
        copy.send(chunk).await?;
    }
    copy.finish().await?;
    Ok(())
}

fn push_entity_row(buf: &mut Vec<u8>, row_id: u64, key: &str, ts: DateTime<Utc>) {
    use std::io::Write;
    let _ = write!(buf, "{row_id}\t");
    if key.is_empty() {
        buf.extend_from_slice(b"\\N");
    } else {
        for b in key.bytes() {
            match b {
                b'\\' => buf.extend_from_slice(b"\\\\"),
                b'\t' => buf.extend_from_slice(b"\\t"),
                b'\n' => buf.extend_from_slice(b"\\n"),
                b'\r' => buf.extend_from_slice(b"\\r"),
                _ => buf.push(b),
            }
        }
    }
    let _ = writeln!(buf, "\t{}", ts.format(PG_UTC));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::SourceFile;
    use chrono::TimeZone;

    const DEFS: &str = r#"
entities:
  - {name: user, join_keys: [user_id], value_type: String}
data_sources:
  - {name: daily, query: "SELECT user_id, day, x FROM daily", timestamp_field: day}
  - {name: events, query: "SELECT user_id, ts, y FROM events", timestamp_field: ts}
feature_views:
  - {name: recent, entities: [user], source: daily, ttl: 1d, schema: [{name: x, dtype: Int64}]}
  - {name: forever, entities: [user], source: events, schema: [{name: y, dtype: Int64}]}
  - {name: ancient, entities: [user], source: daily, ttl: 3000000d, schema: [{name: x, dtype: Int64}]}
"#;

    fn sql(features: &[&str], span: EventSpan) -> String {
        let defs = Definitions::parse(&[SourceFile {
            name: "defs.yaml",
            text: DEFS,
        }])
        .unwrap();
        let selected = defs
            .select_feature_strings(
                &features.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
                true,
            )
            .unwrap();
        let refs: Vec<&SelectedFeature> = selected.iter().collect();
        join_sql(&defs, "user_id", &refs, span)
    }

    fn span() -> EventSpan {
        EventSpan {
            first: Some(Utc.with_ymd_and_hms(2024, 1, 10, 6, 0, 0).unwrap()),
            last: Some(Utc.with_ymd_and_hms(2024, 1, 31, 12, 30, 0).unwrap()),
        }
    }

    #[test]
    fn sources_are_bounded_by_the_entity_rows_span_minus_the_ttl() {
        let sql = sql(&["recent:x", "forever:y"], span());
        assert!(
            sql.contains(r#"s."day" <= '2024-01-31 12:30:00.000000+00'"#),
            "{sql}"
        );
        assert!(
            sql.contains(r#"s."day" >= '2024-01-09 06:00:00.000000+00'"#),
            "{sql}"
        );
        assert!(
            sql.contains(r#"s."ts" <= '2024-01-31 12:30:00.000000+00'"#),
            "{sql}"
        );
        // No ttl: every older row is eligible.
        assert!(!sql.contains(r#"s."ts" >="#), "{sql}");
        // The exact point-in-time conditions stay.
        assert!(
            sql.contains(r#"CAST(s."day" AS timestamptz) <= e.event_timestamp"#),
            "{sql}"
        );
    }

    #[test]
    fn no_span_or_an_unspellable_bound_means_no_bound() {
        let sql_none = sql(&["recent:x"], EventSpan::default());
        assert!(!sql_none.contains("+00'"), "{sql_none}");
        // 3,000,000 days before 2024 is before year 1: left out, not mangled.
        let sql_ancient = sql(&["ancient:x"], span());
        assert!(
            sql_ancient.contains(r#"s."day" <= '2024-01-31"#),
            "{sql_ancient}"
        );
        assert!(!sql_ancient.contains(r#"s."day" >="#), "{sql_ancient}");
        // An infinite last timestamp (entity SQL can return one) leaves the top open.
        let open_end = sql(
            &["recent:x"],
            EventSpan {
                last: None,
                ..span()
            },
        );
        assert!(!open_end.contains(r#"s."day" <="#), "{open_end}");
        assert!(open_end.contains(r#"s."day" >= '2024-01-09"#), "{open_end}");
    }

    #[test]
    fn timestamp_literals_are_utc_within_years_both_sides_spell_alike() {
        let t = Utc.with_ymd_and_hms(2024, 1, 31, 12, 30, 0).unwrap();
        assert_eq!(
            timestamp_literal(t).as_deref(),
            Some("'2024-01-31 12:30:00.000000+00'")
        );
        let year_zero = Utc.with_ymd_and_hms(0, 12, 31, 0, 0, 0).unwrap();
        assert_eq!(timestamp_literal(year_zero), None);
        let year_10000 = Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(timestamp_literal(year_10000), None);
    }
}
