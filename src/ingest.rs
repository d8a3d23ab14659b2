//! Ingestion of the StreamFlow month folders into the offline store.
//!
//! A month folder holds six CSVs (users, subscriptions, usage_agg_30d, payments_agg_90d,
//! support_agg_90d, labels). Ingesting it:
//! 1. validates every cell in Rust while streaming (errors name file, line and column),
//! 2. bulk-loads the validated rows with `COPY` into temporary staging tables,
//! 3. upserts the raw tables (the latest state per user; an older month never overwrites
//!    a newer one) and stamps the snapshot tables keyed by `(user_id, as_of)`,
//!
//! all in ONE transaction: any error leaves the database exactly as it was. Rows whose
//! values did not change are not rewritten, so ingesting the same month twice changes
//! nothing. Empty cells are NULL, always: a missing `plan_stream_tv` is unknown, not false.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::pgtypes::{ident, write_copy_text};

/// The kind of a CSV column, as the course data has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
    Float,
    Bool,
    Date,
}

impl Kind {
    fn sql(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Int => "int8",
            Kind::Float => "float8",
            Kind::Bool => "boolean",
            Kind::Date => "date",
        }
    }
}

/// One column of a course CSV.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    /// The lab's expectation that this value is never negative.
    pub non_negative: bool,
}

const fn col(name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        kind,
        non_negative: false,
    }
}

const fn non_neg(name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        kind,
        non_negative: true,
    }
}

/// One course CSV: its raw table and, for the feature and label tables, its snapshot table.
#[derive(Debug, Clone, Copy)]
pub struct TableSpec {
    pub file: &'static str,
    pub raw: &'static str,
    pub snapshot: Option<&'static str>,
    /// Columns after `user_id`.
    pub columns: &'static [Column],
}

/// The six files of a month folder, with the course's columns.
pub const TABLES: &[TableSpec] = &[
    TableSpec {
        file: "users.csv",
        raw: "users",
        snapshot: None,
        columns: &[
            col("signup_date", Kind::Date),
            col("user_gender", Kind::Text),
            col("user_is_senior", Kind::Bool),
            col("has_family", Kind::Bool),
            col("has_dependents", Kind::Bool),
        ],
    },
    TableSpec {
        file: "subscriptions.csv",
        raw: "subscriptions",
        snapshot: Some("subscriptions_profile_snapshots"),
        columns: &[
            non_neg("months_active", Kind::Int),
            col("plan_stream_tv", Kind::Bool),
            col("plan_stream_movies", Kind::Bool),
            col("contract_type", Kind::Text),
            col("paperless_billing", Kind::Bool),
            non_neg("monthly_fee", Kind::Float),
            col("total_paid", Kind::Float),
            col("net_service", Kind::Text),
        ],
    },
    TableSpec {
        file: "usage_agg_30d.csv",
        raw: "usage_agg_30d",
        snapshot: Some("usage_agg_30d_snapshots"),
        columns: &[
            non_neg("watch_hours_30d", Kind::Float),
            non_neg("avg_session_mins_7d", Kind::Float),
            col("unique_devices_30d", Kind::Int),
            col("skips_7d", Kind::Int),
            col("rebuffer_events_7d", Kind::Int),
        ],
    },
    TableSpec {
        file: "payments_agg_90d.csv",
        raw: "payments_agg_90d",
        snapshot: Some("payments_agg_90d_snapshots"),
        columns: &[col("failed_payments_90d", Kind::Int)],
    },
    TableSpec {
        file: "support_agg_90d.csv",
        raw: "support_agg_90d",
        snapshot: Some("support_agg_90d_snapshots"),
        columns: &[
            col("support_tickets_90d", Kind::Int),
            col("ticket_avg_resolution_hrs_90d", Kind::Float),
        ],
    },
    TableSpec {
        file: "labels.csv",
        raw: "labels",
        snapshot: Some("labels_snapshots"),
        columns: &[col("churn_label", Kind::Bool)],
    },
];

/// Table recording which months were ingested (and from which bytes).
const INGESTIONS: &str = "skewless_ingestions";

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The data itself is wrong: a message naming file, line and column.
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database error while ingesting {what}: {message}")]
    Database { what: String, message: String },
}

impl IngestError {
    fn db(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Self {
        let what = what.into();
        move |e| Self::Database {
            what,
            message: crate::offline::database_message(&e),
        }
    }
}

/// What one file contributed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    pub file: String,
    pub rows: u64,
    /// Raw rows inserted or changed.
    pub raw_changed: u64,
    /// Snapshot rows inserted or changed for this as_of.
    pub snapshot_changed: u64,
}

/// What an ingestion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestReport {
    pub as_of: NaiveDate,
    pub files: Vec<FileReport>,
    /// False when a newer month was already ingested: raw tables were left alone.
    pub raw_updated: bool,
}

impl IngestReport {
    pub fn changed_rows(&self) -> u64 {
        self.files
            .iter()
            .map(|f| f.raw_changed + f.snapshot_changed)
            .sum()
    }
}

/// Ingests one month folder, stamped `as_of`, into `schema` (created if missing).
#[tracing::instrument(skip(pool, progress), fields(dir = %dir.display()))]
pub async fn ingest_month(
    pool: &PgPool,
    schema: &str,
    dir: &Path,
    as_of: NaiveDate,
    progress: &ProgressBar,
) -> Result<IngestReport, IngestError> {
    let paths: Vec<PathBuf> = TABLES.iter().map(|t| dir.join(t.file)).collect();
    let mut total = 0;
    for path in &paths {
        let meta = std::fs::metadata(path).map_err(|source| IngestError::Io {
            path: path.clone(),
            source,
        })?;
        total += meta.len();
    }
    progress.set_length(total);

    let mut tx = pool.begin().await.map_err(IngestError::db("the month"))?;
    // One ingestion at a time per schema: two months racing on the raw tables would
    // otherwise decide "newest wins" on stale reads.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("skewless_ingest:{schema}"))
        .execute(&mut *tx)
        .await
        .map_err(IngestError::db("the month"))?;
    for sql in create_tables_sql(schema) {
        sqlx::query(&sql)
            .execute(&mut *tx)
            .await
            .map_err(IngestError::db("the table layout"))?;
    }
    let newest: Option<NaiveDate> = sqlx::query_scalar(&format!(
        "SELECT max(as_of) FROM {}.{INGESTIONS}",
        ident(schema)
    ))
    .fetch_one(&mut *tx)
    .await
    .map_err(IngestError::db("the ingestion log"))?;
    let raw_updated = newest.is_none_or(|newest| as_of >= newest);

    let mut files = Vec::new();
    let mut hasher = Sha256::new();
    for (spec, path) in TABLES.iter().zip(&paths) {
        let stage = format!("skewless_stage_{}", spec.raw);
        sqlx::query(&format!(
            "CREATE TEMP TABLE {stage} (LIKE {}.{}) ON COMMIT DROP",
            ident(schema),
            ident(spec.raw)
        ))
        .execute(&mut *tx)
        .await
        .map_err(IngestError::db(spec.file))?;

        let mut copy = tx
            .copy_in_raw(&format!("COPY {stage} FROM STDIN"))
            .await
            .map_err(IngestError::db(spec.file))?;
        let mut chunks = match CsvChunks::open(spec, path, &mut hasher, progress) {
            Ok(chunks) => chunks,
            Err(e) => {
                let _ = copy.abort("skewless: invalid input").await;
                return Err(e);
            }
        };
        loop {
            // COPY data is sent in ~1 MiB chunks while the file is parsed.
            match chunks.next_chunk() {
                Ok(Some(chunk)) => {
                    if let Err(e) = copy.send(chunk).await {
                        let _ = copy.abort("skewless: send failed").await;
                        return Err(IngestError::db(spec.file)(e));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = copy.abort("skewless: invalid input").await;
                    return Err(e);
                }
            }
        }
        let rows = chunks.rows;
        copy.finish().await.map_err(IngestError::db(spec.file))?;

        let names: Vec<&str> = std::iter::once("user_id")
            .chain(spec.columns.iter().map(|c| c.name))
            .collect();
        let cols = names
            .iter()
            .map(|n| ident(n))
            .collect::<Vec<_>>()
            .join(", ");
        let updates = spec
            .columns
            .iter()
            .map(|c| format!("{0} = EXCLUDED.{0}", ident(c.name)))
            .collect::<Vec<_>>()
            .join(", ");
        let distinct = |table: &str| {
            let old = spec
                .columns
                .iter()
                .map(|c| format!("{table}.{}", ident(c.name)))
                .collect::<Vec<_>>()
                .join(", ");
            let new = spec
                .columns
                .iter()
                .map(|c| format!("EXCLUDED.{}", ident(c.name)))
                .collect::<Vec<_>>()
                .join(", ");
            format!("ROW({old}) IS DISTINCT FROM ROW({new})")
        };
        let raw_changed = if raw_updated {
            sqlx::query(&format!(
                "INSERT INTO {schema_q}.{raw} AS t ({cols}) SELECT {cols} FROM {stage}
                 ON CONFLICT (user_id) DO UPDATE SET {updates} WHERE {distinct}",
                schema_q = ident(schema),
                raw = ident(spec.raw),
                distinct = distinct("t"),
            ))
            .execute(&mut *tx)
            .await
            .map_err(IngestError::db(spec.file))?
            .rows_affected()
        } else {
            0
        };
        let snapshot_changed = match spec.snapshot {
            Some(snapshot) => sqlx::query(&format!(
                "INSERT INTO {schema_q}.{snap} AS t (user_id, as_of, {rest})
                 SELECT user_id, $1, {rest} FROM {stage}
                 ON CONFLICT (user_id, as_of) DO UPDATE SET {updates} WHERE {distinct}",
                schema_q = ident(schema),
                snap = ident(snapshot),
                rest = spec
                    .columns
                    .iter()
                    .map(|c| ident(c.name))
                    .collect::<Vec<_>>()
                    .join(", "),
                distinct = distinct("t"),
            ))
            .bind(as_of)
            .execute(&mut *tx)
            .await
            .map_err(IngestError::db(spec.file))?
            .rows_affected(),
            None => 0,
        };
        files.push(FileReport {
            file: spec.file.to_string(),
            rows,
            raw_changed,
            snapshot_changed,
        });
    }
    let digest = hex::encode(hasher.finalize());
    sqlx::query(&format!(
        "INSERT INTO {}.{INGESTIONS} (as_of, sha256, rows) VALUES ($1, $2, $3)
         ON CONFLICT (as_of) DO UPDATE SET sha256 = EXCLUDED.sha256, rows = EXCLUDED.rows,
             ingested_at = now()
         WHERE {0}.{INGESTIONS}.sha256 IS DISTINCT FROM EXCLUDED.sha256",
        ident(schema)
    ))
    .bind(as_of)
    .bind(&digest)
    .bind(files.iter().map(|f| f.rows as i64).sum::<i64>())
    .execute(&mut *tx)
    .await
    .map_err(IngestError::db("the ingestion log"))?;
    tx.commit().await.map_err(IngestError::db("the month"))?;
    // Fresh statistics, so the planner of the first training set or materialization
    // after an ingestion does not guess (autovacuum may be off or late).
    for spec in TABLES {
        for table in std::iter::once(spec.raw).chain(spec.snapshot) {
            sqlx::query(&format!("ANALYZE {}.{}", ident(schema), ident(table)))
                .execute(pool)
                .await
                .map_err(IngestError::db("the statistics"))?;
        }
    }
    progress.finish_and_clear();
    Ok(IngestReport {
        as_of,
        files,
        raw_updated,
    })
}

/// DDL of the raw and snapshot tables (idempotent).
pub fn create_tables_sql(schema: &str) -> Vec<String> {
    let s = ident(schema);
    let mut out = vec![
        format!("CREATE SCHEMA IF NOT EXISTS {s}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.{INGESTIONS} (as_of date PRIMARY KEY, sha256 text NOT NULL, rows bigint NOT NULL, ingested_at timestamptz NOT NULL DEFAULT now())"
        ),
    ];
    for spec in TABLES {
        let cols: String = spec
            .columns
            .iter()
            .map(|c| {
                let check = if c.non_negative {
                    format!(" CHECK ({} >= 0)", ident(c.name))
                } else {
                    String::new()
                };
                format!(", {} {}{check}", ident(c.name), c.kind.sql())
            })
            .collect();
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS {s}.{} (user_id text PRIMARY KEY{cols})",
            ident(spec.raw)
        ));
        if let Some(snapshot) = spec.snapshot {
            out.push(format!(
                "CREATE TABLE IF NOT EXISTS {s}.{} (user_id text NOT NULL, as_of date NOT NULL{cols}, PRIMARY KEY (user_id, as_of))",
                ident(snapshot)
            ));
        }
    }
    out
}

/// Parses and validates one CSV, yielding Postgres COPY text in ~1 MiB chunks; the first
/// invalid cell ends it with an error naming file, line and column.
struct CsvChunks<'a> {
    spec: &'a TableSpec,
    display: String,
    csv: csv::Reader<HashingReader<'a, std::io::BufReader<std::fs::File>>>,
    /// Position in the file of each expected column (`user_id` first).
    positions: Vec<usize>,
    seen: HashMap<String, u64>,
    record: csv::StringRecord,
    rows: u64,
}

const CHUNK: usize = 1 << 20;

impl<'a> CsvChunks<'a> {
    fn open(
        spec: &'a TableSpec,
        path: &Path,
        hasher: &'a mut Sha256,
        progress: &'a ProgressBar,
    ) -> Result<Self, IngestError> {
        let display = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| IngestError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let reader = HashingReader {
            inner: std::io::BufReader::with_capacity(CHUNK, file),
            hasher,
            progress,
        };
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(reader);
        let headers = csv
            .headers()
            .map_err(|e| IngestError::Invalid(format!("{display}: cannot read the header: {e}")))?
            .clone();
        let expected: Vec<&str> = std::iter::once("user_id")
            .chain(spec.columns.iter().map(|c| c.name))
            .collect();
        // Exact column set, any order: map each expected column to its position.
        let mut positions = Vec::with_capacity(expected.len());
        for name in &expected {
            match headers.iter().position(|h| h.trim() == *name) {
                Some(p) => positions.push(p),
                None => {
                    return Err(IngestError::Invalid(format!(
                        "{display}: missing column `{name}` (expected exactly: {})",
                        expected.join(", ")
                    )));
                }
            }
        }
        for (i, h) in headers.iter().enumerate() {
            if !expected.contains(&h.trim()) {
                return Err(IngestError::Invalid(format!(
                    "{display}: unexpected column `{h}` (column {}; expected exactly: {})",
                    i + 1,
                    expected.join(", ")
                )));
            }
            if headers.iter().take(i).any(|x| x == h) {
                return Err(IngestError::Invalid(format!(
                    "{display}: column `{h}` appears twice"
                )));
            }
        }
        Ok(Self {
            spec,
            display,
            csv,
            positions,
            seen: HashMap::new(),
            record: csv::StringRecord::new(),
            rows: 0,
        })
    }

    /// The next chunk of COPY text, or `None` at the end of the file.
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, IngestError> {
        let mut buf = Vec::with_capacity(CHUNK + 4096);
        while buf.len() < CHUNK {
            match self.csv.read_record(&mut self.record) {
                Ok(true) => self.push_row(&mut buf)?,
                Ok(false) => break,
                Err(e) => {
                    let line = e.position().map(|p| p.line()).unwrap_or(0);
                    return Err(IngestError::Invalid(format!(
                        "{}, line {line}: malformed CSV: {e}",
                        self.display
                    )));
                }
            }
        }
        Ok((!buf.is_empty()).then_some(buf))
    }

    fn push_row(&mut self, buf: &mut Vec<u8>) -> Result<(), IngestError> {
        let record = &self.record;
        let line = record.position().map(|p| p.line()).unwrap_or(self.rows + 2);
        let display = &self.display;
        let invalid = |column: &str, message: String| {
            IngestError::Invalid(format!(
                "{display}, line {line}, column {column}: {message}"
            ))
        };
        let user_id = record[self.positions[0]].trim();
        if user_id.is_empty() {
            return Err(invalid(
                "user_id",
                "user_id is empty; every row needs one".into(),
            ));
        }
        if let Some(first) = self.seen.insert(user_id.to_string(), line) {
            return Err(invalid(
                "user_id",
                format!("duplicate user_id `{user_id}` (first seen on line {first})"),
            ));
        }
        write_copy_text(buf, user_id);
        for (column, &pos) in self.spec.columns.iter().zip(&self.positions[1..]) {
            buf.push(b'\t');
            let raw = record[pos].trim();
            if raw.is_empty() {
                buf.extend_from_slice(b"\\N");
                continue;
            }
            match column.kind {
                Kind::Text => write_copy_text(buf, raw),
                Kind::Int => {
                    let v: i64 = raw.parse().map_err(|_| {
                        invalid(column.name, format!("`{raw}` is not a whole number"))
                    })?;
                    if column.non_negative && v < 0 {
                        return Err(invalid(
                            column.name,
                            format!("{v} is negative; expected >= 0"),
                        ));
                    }
                    buf.extend_from_slice(v.to_string().as_bytes());
                }
                Kind::Float => {
                    let v: f64 = raw
                        .parse()
                        .ok()
                        .filter(|v: &f64| v.is_finite())
                        .ok_or_else(|| invalid(column.name, format!("`{raw}` is not a number")))?;
                    if column.non_negative && v < 0.0 {
                        return Err(invalid(
                            column.name,
                            format!("{v} is negative; expected >= 0"),
                        ));
                    }
                    // Rust's shortest round-trip form: Postgres reads back the same f64.
                    buf.extend_from_slice(format!("{v:?}").as_bytes());
                }
                Kind::Bool => {
                    let v = parse_bool(raw).ok_or_else(|| {
                        invalid(
                            column.name,
                            format!("`{raw}` is not a boolean (expected True or False)"),
                        )
                    })?;
                    buf.extend_from_slice(if v { b"t" } else { b"f" });
                }
                Kind::Date => {
                    let v = NaiveDate::parse_from_str(raw, "%Y-%m-%d").map_err(|_| {
                        invalid(
                            column.name,
                            format!("`{raw}` is not a date (expected YYYY-MM-DD)"),
                        )
                    })?;
                    buf.extend_from_slice(v.to_string().as_bytes());
                }
            }
        }
        buf.push(b'\n');
        self.rows += 1;
        Ok(())
    }
}

/// Booleans as pandas and humans write them.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "True" | "true" | "TRUE" | "t" | "1" => Some(true),
        "False" | "false" | "FALSE" | "f" | "0" => Some(false),
        _ => None,
    }
}

/// Feeds the bytes read to the month's digest and to the progress bar.
struct HashingReader<'a, R> {
    inner: R,
    hasher: &'a mut Sha256,
    progress: &'a ProgressBar,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.progress.inc(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans() {
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("False"), Some(false));
        assert_eq!(parse_bool("yes please"), None);
    }

    #[test]
    fn ddl_covers_every_file() {
        let sql = create_tables_sql("offline").join(";\n");
        for t in TABLES {
            assert!(sql.contains(&format!("\"{}\"", t.raw)));
            if let Some(s) = t.snapshot {
                assert!(sql.contains(&format!(
                    "\"{s}\" (user_id text NOT NULL, as_of date NOT NULL"
                )));
            }
        }
        assert!(sql.contains("\"monthly_fee\" float8 CHECK (\"monthly_fee\" >= 0)"));
    }
}
