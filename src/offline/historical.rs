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
//! flat whatever the size of the training set. A large set is split, by entity row, over
//! several backends that share one snapshot and run that same query each on its share
//! (see [`Partition`]): PostgreSQL cannot parallelise a query over a temporary table.

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
    /// How many PostgreSQL backends run the join (see [`HistoricalOptions::partitions`]).
    pub backends: usize,
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
    /// How many PostgreSQL backends share the join (see [`Partition`]); 1 runs it on
    /// one.
    pub partitions: usize,
    /// Fewest entity rows worth splitting: below, the second backend's setup costs more
    /// than it saves.
    pub partition_min_rows: u64,
}

impl HistoricalOptions {
    pub fn from_config(config: &Config) -> Self {
        Self {
            entity_sql_timeout_ms: config.server.entity_sql_timeout_ms,
            work_mem: "256MB".into(),
            plugin_budget: std::time::Duration::from_millis(config.plugins.offline_timeout_ms),
            partitions: config.server.historical_partitions.max(1),
            partition_min_rows: config.server.historical_partition_min_rows,
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
        mut parts,
        sql,
        schema,
        stream_schema,
        rows,
        plan,
    } = prepare(pool, defs, request, options, options.partitions).await?;
    let backends = parts.len();
    let (sender, receiver) = mpsc::channel(4);
    let pool = pool.clone();
    tokio::spawn(
        async move {
            let result = stream_rows(&mut parts, &sql, stream_schema, rows, &sender, &pool).await;
            match result {
                Ok(()) => {
                    // Every row is out: the consumer sees the end now, not after the
                    // commits (which only drop the temporary tables; the rows do not
                    // depend on them).
                    drop(sender);
                    for part in parts {
                        if let Err(e) = part.tx.commit().await {
                            tracing::warn!(error = %e, "commit after a training set failed");
                        }
                    }
                }
                Err(StreamEnd::Failed(e)) => {
                    let _ = sender.send(Err(e)).await;
                    drop(sender);
                    for part in parts {
                        let _ = part.tx.rollback().await;
                    }
                }
                Err(StreamEnd::Abandoned) => {
                    // The queries were cancelled and their streams drained: the
                    // connections are clean and go back to the pool after the rollback.
                    for part in parts {
                        if let Err(e) = part.tx.rollback().await {
                            tracing::warn!(error = %e, "rollback after cancel failed");
                        }
                    }
                }
            }
        }
        .in_current_span(),
    );
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
        backends,
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

/// The loaded entity rows, split over one or more backends, and what to run on each.
struct Prepared {
    parts: Vec<Partition>,
    /// The query every partition runs over its own entity rows.
    sql: String,
    /// The training set's columns.
    schema: Vec<ColumnSpec>,
    /// The query's columns: the entity columns, the plan's base features, the label.
    stream_schema: Vec<ColumnSpec>,
    rows: u64,
    plan: FeaturePlan,
}

/// One backend's share of a training set: the transaction holding its entity rows, and
/// its pid (to cancel its query when the consumer goes away).
///
/// A training set on PostgreSQL runs on one backend, and so on one core: parallel
/// workers cannot read a temporary table, and the entity rows must live in one (a READ
/// ONLY transaction can write nothing else, and nothing is left behind by a crash). So
/// skewless runs the parallel plan itself, as `pg_dump --jobs` does: entity row `i`
/// (from 1) goes to partition `(i − 1) mod P` as the rows load; every partition's
/// backend imports the first one's snapshot (`pg_export_snapshot`, REPEATABLE READ: all
/// of them, and the entity SQL, read the very same data), holds its share of the rows in
/// its own temporary table, and runs the same query over them; the rows come back in
/// order by taking one row from each partition in turn. Each backend does 1/P of the
/// per-row work (loading, hashing, probing, sorting) and the same scans of the sources.
struct Partition {
    tx: Transaction<'static, Postgres>,
    pid: i32,
}

/// The temporary table of entity rows, one per partition's transaction.
const ENTITY_TABLE: &str = "skewless_entities";

/// How every training-set transaction begins: all its statements (entity SQL, join) see
/// one snapshot, which other partitions import.
const BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ";

/// Session settings for a training set's transaction, its entity table, and the
/// backend's pid (and, with `export`, the snapshot), in one round trip. `prefix` goes
/// first: `SET TRANSACTION SNAPSHOT` must precede everything else.
fn session_setup(
    prefix: &str,
    key_type: &str,
    export: bool,
    options: &HistoricalOptions,
) -> String {
    format!(
        // JIT compilation costs more than it saves on these queries. The transaction
        // writes nothing durable (its one table is temporary), so its commit need not
        // wait for a WAL flush.
        "{prefix}SET LOCAL jit = off; SET LOCAL work_mem = '{work_mem}'; SET LOCAL synchronous_commit = off;
         CREATE TEMP TABLE {ENTITY_TABLE} (row_id bigint NOT NULL, entity_key {key_type}, event_timestamp timestamptz NOT NULL) ON COMMIT DROP;
         SELECT pg_backend_pid(), {snapshot}",
        work_mem = options.work_mem.replace('\'', ""),
        snapshot = if export {
            "pg_export_snapshot()"
        } else {
            "NULL::text"
        },
    )
}

/// Validates the request, opens the transaction(s), and loads the entity rows.
/// `partitions` is the most backends to split the join over.
async fn prepare(
    pool: &PgPool,
    defs: &Definitions,
    request: HistoricalRequest,
    options: &HistoricalOptions,
    partitions: usize,
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

    let partitions = partitions.max(1);
    let mut tx = pool.begin_with(BEGIN).await?;
    let row = (&mut *tx)
        .fetch_one(sqlx::raw_sql(&session_setup(
            "",
            key_type,
            partitions > 1,
            options,
        )))
        .await?;
    let split = Split {
        partitions,
        min_rows: options.partition_min_rows.max(2),
        snapshot: row.try_get(1)?,
        key_type,
    };
    let mut first = Partition {
        tx,
        pid: row.try_get(0)?,
    };
    let (rows, others) =
        load_entities(pool, &mut first, request.entities, &key, &split, options).await?;
    let mut parts = vec![first];
    parts.extend(others);
    let span = analyze_entities(&mut parts).await?;
    let sql = join_sql(defs, &key, &views, span);
    tracing::debug!(%sql, rows, "training-set query");
    tracing::info!(
        rows,
        partitions = parts.len(),
        prepare_ms = started.elapsed().as_millis() as u64,
        "entity rows loaded"
    );
    Ok(Prepared {
        parts,
        sql,
        schema,
        stream_schema,
        rows,
        plan,
    })
}

/// Whether and how a training set may be split over several backends.
struct Split<'a> {
    /// The most partitions wanted (1: never split).
    partitions: usize,
    /// Fewest entity rows worth splitting.
    min_rows: u64,
    /// The first transaction's exported snapshot (when `partitions` > 1).
    snapshot: Option<String>,
    key_type: &'a str,
}

/// How long a training set waits for another connection before doing without it: a
/// new backend starts in a few ms, and a connection just used comes back as soon as its
/// transaction ends. A training set holding one connection never waits longer for
/// another, so a busy pool slows training sets down but cannot deadlock them.
const EXTRA_CONNECTION: std::time::Duration = std::time::Duration::from_millis(100);

/// Begins a transaction on the training set's snapshot over another connection of the
/// pool, then runs `setup` in it; `Err` says why it could not (for the log: the
/// training set does without).
async fn begin_on_snapshot(
    pool: &PgPool,
    snapshot: &str,
    setup: &str,
) -> Result<(Transaction<'static, Postgres>, sqlx::postgres::PgRow), String> {
    let mut tx = match tokio::time::timeout(EXTRA_CONNECTION, pool.begin_with(BEGIN)).await {
        Ok(Ok(tx)) => tx,
        Ok(Err(e)) => return Err(format!("cannot open another connection: {e}")),
        Err(_) => return Err("no database connection came in time".into()),
    };
    let statement = format!(
        "SET TRANSACTION SNAPSHOT '{}'; {setup}",
        snapshot.replace('\'', "")
    );
    let row = (&mut *tx)
        .fetch_one(sqlx::raw_sql(&statement))
        .await
        .map_err(|e| format!("cannot set another connection up: {e}"))?;
    Ok((tx, row))
}

/// Opens the other partitions: each on the snapshot, with its (empty) entity table.
async fn open_partitions(
    pool: &PgPool,
    split: &Split<'_>,
    options: &HistoricalOptions,
) -> Result<Vec<Partition>, String> {
    let snapshot = split.snapshot.as_deref().ok_or("no snapshot to share")?;
    let setup = session_setup("", split.key_type, false, options);
    let mut others = Vec::with_capacity(split.partitions - 1);
    for _ in 1..split.partitions {
        let (tx, row) = begin_on_snapshot(pool, snapshot, &setup).await?;
        let pid = row.try_get(0).map_err(|e| e.to_string())?;
        others.push(Partition { tx, pid });
    }
    Ok(others)
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
/// read from all assume UTC and ISO. Every partition's backend does this for its own
/// rows, at once; the span is the union of theirs.
async fn analyze_entities(parts: &mut [Partition]) -> Result<EventSpan, HistoricalError> {
    let spans = futures::future::try_join_all(parts.iter_mut().map(|part| async {
        let row = (&mut *part.tx)
            .fetch_one(sqlx::raw_sql(&format!(
                "SET LOCAL statement_timeout TO DEFAULT; SET LOCAL TimeZone = 'UTC';
                 SET LOCAL DateStyle = 'ISO, MDY'; SET LOCAL default_statistics_target = 1;
                 ANALYZE {ENTITY_TABLE};
                 SELECT count(*),
                        CASE WHEN isfinite(min(event_timestamp)) THEN min(event_timestamp) END,
                        CASE WHEN isfinite(max(event_timestamp)) THEN max(event_timestamp) END
                 FROM {ENTITY_TABLE}"
            )))
            .await?;
        // A side chrono cannot hold (beyond year 262143) bounds nothing either.
        let side = |i: usize| match row.try_get::<Option<DateTime<Utc>>, _>(i) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %e, "entity time span left open on one side");
                None
            }
        };
        let rows: i64 = row.try_get(0)?;
        Ok::<_, HistoricalError>((rows, side(1), side(2)))
    }))
    .await?;
    // A partition without rows bounds nothing; one with an open side opens the union's.
    let spans: Vec<_> = spans.into_iter().filter(|(rows, ..)| *rows > 0).collect();
    if spans.is_empty() {
        return Ok(EventSpan::default());
    }
    let first = spans
        .iter()
        .map(|(_, first, _)| *first)
        .collect::<Option<Vec<_>>>()
        .and_then(|firsts| firsts.into_iter().min());
    let last = spans
        .iter()
        .map(|(_, _, last)| *last)
        .collect::<Option<Vec<_>>>()
        .and_then(|lasts| lasts.into_iter().max());
    Ok(EventSpan { first, last })
}

/// Runs the training-set query under `EXPLAIN (ANALYZE, BUFFERS)` instead of returning
/// its rows: PostgreSQL's own plan and time for exactly the SQL a training set runs.
pub async fn explain(
    pool: &PgPool,
    defs: &Definitions,
    request: HistoricalRequest,
    options: &HistoricalOptions,
) -> Result<String, HistoricalError> {
    // On one backend: the plan and time of the whole query, as a database that runs it
    // alone would (split over P backends, each runs it on 1/P of the rows).
    let Prepared { parts, sql, .. } = prepare(pool, defs, request, options, 1).await?;
    let Partition { mut tx, .. } = parts.into_iter().next().expect("one partition");
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

/// Streams the partitions' rows to `sender`, in the entity rows' order: row `i` (from
/// 0) is the next row of partition `i mod P`. Every partition's stream must hold exactly
/// its share of the `rows` entity rows.
async fn stream_rows(
    parts: &mut [Partition],
    sql: &str,
    schema: Vec<ColumnSpec>,
    rows: u64,
    sender: &mpsc::Sender<Result<Batch, HistoricalError>>,
    pool: &PgPool,
) -> Result<(), StreamEnd> {
    let failed = |e: HistoricalError| StreamEnd::Failed(e);
    let query = |e: sqlx::Error| StreamEnd::Failed(HistoricalError::Query(database_message(&e)));
    let decode = |e: crate::batch::DecodeError| failed(HistoricalError::Decode(e.to_string()));
    let pids: Vec<i32> = parts.iter().map(|p| p.pid).collect();
    // All at once: PostgreSQL holds back a COPY's first message until its first rows
    // (after the sorts, most of the work), so starting them one by one would run them
    // one after the other.
    let copy = format!("COPY ({sql}) TO STDOUT (FORMAT binary)");
    let mut streams =
        futures::future::try_join_all(parts.iter_mut().map(|part| part.tx.copy_out_raw(&copy)))
            .await
            .map_err(query)?;
    let n = streams.len() as u64;
    let mut decoders: Vec<BinaryCopyDecoder> =
        streams.iter().map(|_| BinaryCopyDecoder::new()).collect();
    let mut builder = BatchBuilder::new(schema, BATCH_ROWS);
    for row in 0..rows {
        let p = (row % n) as usize;
        while !decoders[p].next_tuple(&mut builder).map_err(decode)? {
            match streams[p].next().await {
                Some(chunk) => decoders[p].feed(&chunk.map_err(query)?),
                None => {
                    return Err(failed(HistoricalError::Query(format!(
                        "the query ended after {row} of {rows} rows"
                    ))));
                }
            }
        }
        if builder.is_full() && sender.send(Ok(builder.take())).await.is_err() {
            // The consumer went away (a client disconnected): stop the queries in the
            // server, then read the streams to their (error) ends, so the connections
            // are left in a known state.
            cancel_backends(pool, &pids).await;
            for stream in &mut streams {
                while let Some(Ok(_)) = stream.next().await {}
            }
            return Err(StreamEnd::Abandoned);
        }
    }
    // Every row is in: each stream now ends (its trailer, then the end of the COPY).
    for (stream, decoder) in streams.iter_mut().zip(&mut decoders) {
        loop {
            if decoder.next_tuple(&mut builder).map_err(decode)? {
                return Err(failed(HistoricalError::Query(format!(
                    "the query returned more rows than the {rows} entity rows"
                ))));
            }
            match stream.next().await {
                Some(chunk) => decoder.feed(&chunk.map_err(query)?),
                None => break,
            }
        }
    }
    if builder.rows() > 0 && sender.send(Ok(builder.take())).await.is_err() {
        return Err(StreamEnd::Abandoned);
    }
    Ok(())
}

/// Cancels the running queries of backends `pids`, from a connection of its own (the
/// pool may have none to spare).
async fn cancel_backends(pool: &PgPool, pids: &[i32]) {
    tracing::info!(?pids, "cancelling training-set queries");
    match sqlx::PgConnection::connect_with(&pool.connect_options()).await {
        Ok(mut conn) => {
            for &pid in pids {
                if let Err(e) = sqlx::query("SELECT pg_cancel_backend($1)")
                    .bind(pid)
                    .execute(&mut conn)
                    .await
                {
                    tracing::warn!(error = %e, pid, "cannot cancel the query");
                }
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
        let ttl = view.applied_ttl_seconds();
        if let Some(ttl) = ttl {
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
        let first = span.first.zip(ttl).and_then(|(first, ttl)| {
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
            "v{i} AS (SELECT DISTINCT ON (e.row_id) e.row_id, {entity_cols}{cols} FROM {ENTITY_TABLE} e LEFT JOIN ({query}) AS s ON {conditions} ORDER BY {order_by})",
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

/// Loads the entity rows into the first partition's table and, when the set is large
/// enough and the pool can spare the connections, into the other partitions' (opened
/// here). Returns the row count and the other partitions.
///
/// Entity SQL runs, READ ONLY and under its statement timeout, in the first
/// transaction (`INSERT … SELECT`) when the set cannot be split; otherwise in a
/// transaction of its own on the same snapshot, whose rows (binary COPY) are dealt to
/// the partitions' tables as they come, as the rows of a file or a request are.
async fn load_entities(
    pool: &PgPool,
    first: &mut Partition,
    entities: Entities,
    key: &str,
    split: &Split<'_>,
    options: &HistoricalOptions,
) -> Result<(u64, Vec<Partition>), HistoricalError> {
    match entities {
        Entities::Inline { keys, timestamps } => {
            if keys.len() != timestamps.len() {
                return Err(HistoricalError::Entities(format!(
                    "entities: `{key}` has {} values but `{EVENT_TIMESTAMP}` has {}; they must have the same length",
                    keys.len(),
                    timestamps.len()
                )));
            }
            let source = RowSource::Inline {
                rows: keys.into_iter().zip(timestamps).enumerate(),
            };
            deal(pool, first, source, split, options).await
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
            let source = RowSource::Csv {
                name,
                csv,
                key_pos,
                ts_pos,
                record: csv::StringRecord::new(),
            };
            deal(pool, first, source, split, options).await
        }
        Entities::Sql(sql) => {
            let sql = sql.trim().trim_end_matches(';').to_string();
            let select = format!(
                "SELECT CAST(q.{k} AS {key_type}), CAST(q.{ts} AS timestamptz) FROM ({sql}) AS q",
                k = ident(key),
                ts = ident(EVENT_TIMESTAMP),
                key_type = split.key_type,
            );
            // Only entity SQL runs in this transaction: nothing can be written in it.
            let read_only = format!(
                "SET TRANSACTION READ ONLY; SET LOCAL statement_timeout = {}; SELECT pg_backend_pid()",
                options.entity_sql_timeout_ms
            );
            let reader = match &split.snapshot {
                Some(snapshot) => begin_on_snapshot(pool, snapshot, &read_only)
                    .await
                    .map_err(|reason| {
                        tracing::info!(%reason, "entity SQL runs in the training set's transaction");
                    })
                    .ok(),
                None => None,
            };
            let Some((mut reader, row)) = reader else {
                // From here on nothing but the temporary table can be written.
                (&mut *first.tx).execute(sqlx::raw_sql(&read_only)).await?;
                check_entity_sql(&mut first.tx, &sql, key).await?;
                let rows = insert_entity_rows(&mut first.tx, &select).await?;
                // (`analyze_entities` ends the statement timeout.)
                return Ok((rows, Vec::new()));
            };
            check_entity_sql(&mut reader, &sql, key).await?;
            let stream = reader
                .copy_out_raw(&format!("COPY ({select}) TO STDOUT (FORMAT binary)"))
                .await
                .map_err(entity_sql_failed)?;
            let source = RowSource::Sql {
                stream,
                decoder: BinaryCopyDecoder::new(),
            };
            let loaded = deal(pool, first, source, split, options).await;
            if loaded.is_err() {
                // Rows that are no longer wanted (a NULL timestamp, a backend that
                // failed): stop the entity SQL rather than read the rest to its end.
                if let Ok(pid) = row.try_get::<i32, _>(0) {
                    cancel_backends(pool, &[pid]).await;
                }
            }
            let _ = reader.rollback().await;
            loaded
        }
    }
}

fn entity_sql_failed(e: sqlx::Error) -> HistoricalError {
    HistoricalError::Entities(format!("entity_sql failed: {}", database_message(&e)))
}

/// Checks, without running it, that the entity SQL returns the key and a date or
/// timestamp `event_timestamp`.
async fn check_entity_sql(
    tx: &mut Transaction<'static, Postgres>,
    sql: &str,
    key: &str,
) -> Result<(), HistoricalError> {
    let statement = (&mut **tx).prepare(sql).await.map_err(entity_sql_failed)?;
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
    Ok(())
}

/// The entity SQL's rows into the entity table, inside PostgreSQL, numbered in the
/// order the SQL returns them.
async fn insert_entity_rows(
    tx: &mut Transaction<'static, Postgres>,
    select: &str,
) -> Result<u64, HistoricalError> {
    let inserted = sqlx::query(&format!(
        "INSERT INTO {ENTITY_TABLE} (row_id, entity_key, event_timestamp)
         SELECT row_number() OVER (), q.* FROM ({select}) AS q"
    ))
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        if is_not_null_violation(&e) {
            null_timestamp()
        } else {
            entity_sql_failed(e)
        }
    })?;
    Ok(inserted.rows_affected())
}

/// The entity table refused a row without a timestamp (its NOT NULL constraint).
fn is_not_null_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23502"))
}

fn null_timestamp() -> HistoricalError {
    HistoricalError::Entities(format!(
        "entity_sql returned a NULL `{EVENT_TIMESTAMP}`; every entity row needs a timestamp"
    ))
}

/// Where entity rows come from, each encoded for `COPY … FROM STDIN` into an entity
/// table as `(row_id, entity_key, event_timestamp)`.
enum RowSource<'c> {
    /// (index, (key, timestamp)).
    Inline { rows: InlineRows },
    /// Streamed, never held in memory.
    Csv {
        name: String,
        csv: csv::Reader<Box<dyn Read + Send>>,
        key_pos: usize,
        ts_pos: usize,
        record: csv::StringRecord,
    },
    /// The entity SQL's binary COPY: its fields pass through as they are.
    Sql {
        stream: futures::stream::BoxStream<'c, Result<bytes::Bytes, sqlx::Error>>,
        decoder: BinaryCopyDecoder,
    },
}

impl RowSource<'_> {
    /// Whether the rows are encoded for binary COPY (else text).
    fn is_binary(&self) -> bool {
        matches!(self, Self::Sql { .. })
    }

    /// Appends row `row_id` to `out`; `false` when there are no more rows.
    async fn next_row(&mut self, row_id: u64, out: &mut Vec<u8>) -> Result<bool, HistoricalError> {
        match self {
            Self::Inline { rows } => {
                let Some((i, (key, t))) = rows.next() else {
                    return Ok(false);
                };
                let ts = parse_timestamp(&t).ok().ok_or_else(|| {
                    HistoricalError::Entities(format!(
                        "entities: row {i}: `{t}` is not a timestamp (expected RFC 3339 like 2024-01-31T00:00:00Z, or a date)"
                    ))
                })?;
                push_entity_row(out, row_id, &key, ts);
                Ok(true)
            }
            Self::Csv {
                name,
                csv,
                key_pos,
                ts_pos,
                record,
            } => {
                if !csv
                    .read_record(record)
                    .map_err(|e| HistoricalError::Entities(format!("{name}: {e}")))?
                {
                    return Ok(false);
                }
                let line = record.position().map_or(row_id + 1, |p| p.line());
                let t = &record[*ts_pos];
                let Ok(ts) = parse_timestamp(t) else {
                    return Err(HistoricalError::Entities(format!(
                        "{name}, line {line}: `{t}` is not a timestamp (expected RFC 3339 like 2024-01-31T00:00:00Z, or a date)"
                    )));
                };
                push_entity_row(out, row_id, &record[*key_pos], ts);
                Ok(true)
            }
            Self::Sql { stream, decoder } => loop {
                let decoded = decoder
                    .next_fields(2, |fields| {
                        let ts = fields.get(1).ok_or_else(null_timestamp)?;
                        out.extend_from_slice(&3i16.to_be_bytes());
                        out.extend_from_slice(&8i32.to_be_bytes());
                        out.extend_from_slice(&(row_id as i64).to_be_bytes());
                        match fields.get(0) {
                            Some(key) => {
                                out.extend_from_slice(&(key.len() as i32).to_be_bytes());
                                out.extend_from_slice(key);
                            }
                            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                        }
                        out.extend_from_slice(&(ts.len() as i32).to_be_bytes());
                        out.extend_from_slice(ts);
                        Ok::<_, HistoricalError>(())
                    })
                    .map_err(|e| HistoricalError::Decode(e.to_string()))?;
                if let Some(row) = decoded {
                    return row.map(|()| true);
                }
                match stream.next().await {
                    Some(chunk) => decoder.feed(&chunk.map_err(entity_sql_failed)?),
                    None if decoder.is_finished() => return Ok(false),
                    None => {
                        return Err(HistoricalError::Entities(
                            "entity_sql: its rows ended before the end of the stream".into(),
                        ));
                    }
                }
            },
        }
    }
}

type InlineRows =
    std::iter::Enumerate<std::iter::Zip<std::vec::IntoIter<String>, std::vec::IntoIter<String>>>;

/// Bytes handed to a COPY at a time.
const COPY_CHUNK: usize = 1 << 18;

/// Deals the rows of `source` to the partitions' entity tables: row `i` (from 1) to
/// partition `(i − 1) mod P`. The first [`Split::min_rows`] rows wait in memory until it
/// is known whether the set is worth splitting (and the connections are there); a
/// smaller set, or one that cannot be split, all goes to `first`.
async fn deal(
    pool: &PgPool,
    first: &mut Partition,
    mut source: RowSource<'_>,
    split: &Split<'_>,
    options: &HistoricalOptions,
) -> Result<(u64, Vec<Partition>), HistoricalError> {
    let mut rows = 0u64;
    let mut held = Vec::new();
    let mut ends = Vec::new();
    let mut others = Vec::new();
    if split.partitions > 1 && split.snapshot.is_some() {
        while rows < split.min_rows && source.next_row(rows + 1, &mut held).await? {
            rows += 1;
            ends.push(held.len());
        }
        if rows == split.min_rows {
            match open_partitions(pool, split, options).await {
                Ok(opened) => others = opened,
                Err(reason) => tracing::info!(%reason, "training set runs on one backend"),
            }
        }
    }
    let binary = source.is_binary();
    let statement = format!(
        "COPY {ENTITY_TABLE} (row_id, entity_key, event_timestamp) FROM STDIN{}",
        if binary { " (FORMAT binary)" } else { "" }
    );
    let mut sinks = vec![first.tx.copy_in_raw(&statement).await?];
    for other in &mut others {
        sinks.push(other.tx.copy_in_raw(&statement).await?);
    }
    let mut bufs: Vec<Vec<u8>> = sinks
        .iter()
        .map(|_| {
            let mut buf = Vec::with_capacity(COPY_CHUNK + 1024);
            if binary {
                buf.extend_from_slice(crate::offline::copy::HEADER);
            }
            buf
        })
        .collect();
    let mut start = 0;
    for (i, end) in ends.into_iter().enumerate() {
        bufs[i % sinks.len()].extend_from_slice(&held[start..end]);
        start = end;
    }
    drop(held);
    let pumped = pump(&mut source, &mut sinks, &mut bufs, &mut rows, binary).await;
    match pumped {
        Ok(()) => {
            for sink in sinks {
                sink.finish().await.map_err(|e| {
                    if is_not_null_violation(&e) {
                        null_timestamp()
                    } else {
                        HistoricalError::from(e)
                    }
                })?;
            }
            Ok((rows, others))
        }
        Err(e) => {
            for sink in sinks {
                let _ = sink.abort("invalid entity rows").await;
            }
            Err(e)
        }
    }
}

/// The rest of `source` into the sinks, then what is left in the buffers.
async fn pump(
    source: &mut RowSource<'_>,
    sinks: &mut [sqlx::postgres::PgCopyIn<&mut sqlx::PgConnection>],
    bufs: &mut [Vec<u8>],
    rows: &mut u64,
    binary: bool,
) -> Result<(), HistoricalError> {
    let n = sinks.len() as u64;
    loop {
        let p = (*rows % n) as usize;
        if !source.next_row(*rows + 1, &mut bufs[p]).await? {
            break;
        }
        *rows += 1;
        if bufs[p].len() >= COPY_CHUNK {
            let full = std::mem::replace(&mut bufs[p], Vec::with_capacity(COPY_CHUNK + 1024));
            sinks[p].send(full).await?;
        }
    }
    for (sink, buf) in sinks.iter_mut().zip(bufs) {
        if binary {
            buf.extend_from_slice(crate::offline::copy::TRAILER);
        }
        if !buf.is_empty() {
            sink.send(std::mem::take(buf)).await?;
        }
    }
    Ok(())
}

fn push_entity_row(buf: &mut Vec<u8>, row_id: u64, key: &str, ts: DateTime<Utc>) {
    use std::io::Write;
    let _ = write!(buf, "{row_id}\t");
    if key.is_empty() {
        buf.extend_from_slice(b"\\N");
    } else {
        pgtypes::write_copy_text(buf, key);
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
  - {name: ancient, entities: [user], source: daily, ttl: 1000y, schema: [{name: x, dtype: Int64}]}
"#;

    fn defs() -> Definitions {
        Definitions::parse(&[SourceFile {
            name: "defs.yaml",
            text: DEFS,
        }])
        .unwrap()
    }

    fn sql(features: &[&str], span: EventSpan) -> String {
        let defs = defs();
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
        // 1000 years (the longest ttl) before an entity row of year 500 is before year 1:
        // left out, not mangled.
        let sql_ancient = sql(
            &["ancient:x"],
            EventSpan {
                first: Some(Utc.with_ymd_and_hms(500, 6, 1, 0, 0, 0).unwrap()),
                ..span()
            },
        );
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
    fn a_ttl_past_the_cap_from_an_older_registry_limits_nothing() {
        let mut defs = defs();
        let selected = defs
            .select_feature_strings(&["recent:x".to_string()], true)
            .unwrap();
        // As a registry written before the cap could hold it (JSON is not re-validated).
        defs.feature_views[0].ttl_seconds = Some(crate::definitions::MAX_TTL_SECONDS + 1);
        let refs: Vec<&SelectedFeature> = selected.iter().collect();
        let sql = join_sql(&defs, "user_id", &refs, span());
        assert!(!sql.contains("interval"), "{sql}");
        assert!(!sql.contains(r#"s."day" >="#), "{sql}");
        defs.feature_views[0].ttl_seconds = Some(crate::definitions::MAX_TTL_SECONDS);
        let sql = join_sql(&defs, "user_id", &refs, span());
        assert!(sql.contains("interval '31557600000 seconds'"), "{sql}");
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
