//! Direct writes to the online store, in Feast's columnar shape: what
//! `POST /write-to-online-store` and `POST /push` receive. The same typed tables and the
//! same "only newer rows win" rule as materialization ([`TableLayout::upsert_if_newer`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

use crate::config::Config;
use crate::definitions::{Definitions, ValueType};

use crate::online::layout::{CREATED_TS, EVENT_TS, TableLayout};
use crate::pgtypes::{column_type, ident};

/// A timestamp, or None.
fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    crate::time::parse_timestamp(s).ok()
}

#[derive(Debug, thiserror::Error)]
pub enum OnlineWriteError {
    #[error("{0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Database(String),
}

/// Typed columns ready to bind as arrays.
enum Typed {
    Int32(Vec<Option<i32>>),
    Int64(Vec<Option<i64>>),
    Float32(Vec<Option<f32>>),
    Float64(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    String(Vec<Option<String>>),
    Timestamp(Vec<Option<DateTime<Utc>>>),
}

fn convert(
    name: &str,
    dtype: ValueType,
    values: &[Value],
    rows: &[usize],
) -> Result<Typed, OnlineWriteError> {
    let bad = |row: usize, v: &Value| {
        OnlineWriteError::Invalid(format!(
            "column `{name}`, row {row}: {v} is not a valid {dtype}"
        ))
    };
    macro_rules! collect {
        ($variant:ident, $f:expr) => {{
            let mut out = Vec::with_capacity(rows.len());
            for &row in rows {
                let v = &values[row];
                out.push(if v.is_null() {
                    None
                } else {
                    Some($f(v).ok_or_else(|| bad(row, v))?)
                });
            }
            Typed::$variant(out)
        }};
    }
    let int = |v: &Value| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
    };
    Ok(match dtype {
        ValueType::Int32 => collect!(Int32, |v: &Value| int(v)
            .and_then(|i| i32::try_from(i).ok())),
        ValueType::Int64 => collect!(Int64, int),
        ValueType::Float32 => collect!(Float32, |v: &Value| v.as_f64().map(|f| f as f32)),
        ValueType::Float64 => collect!(Float64, |v: &Value| v.as_f64()),
        ValueType::Bool => collect!(Bool, |v: &Value| v.as_bool()),
        ValueType::String => collect!(String, |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }),
        ValueType::UnixTimestamp => collect!(Timestamp, |v: &Value| match v {
            Value::String(s) => parse_ts(s),
            Value::Number(n) => n
                .as_f64()
                .and_then(|secs| { DateTime::from_timestamp_micros((secs * 1e6) as i64) }),
            _ => None,
        }),
    })
}

/// Writes rows given as columns (`{"user_id": [...], "<feature>": [...],
/// "event_timestamp": [...], "created": [...]}`) to `view`'s online table. Every
/// feature of the view must be present; `created` is optional. Rows older than what the
/// table holds are ignored. Returns (rows received, rows written).
pub async fn write_columns(
    pool: &PgPool,
    config: &Config,
    defs: &Definitions,
    view_name: &str,
    df: &serde_json::Map<String, Value>,
) -> Result<(u64, u64), OnlineWriteError> {
    let invalid = |m: String| OnlineWriteError::Invalid(m);
    let view = defs
        .feature_view(view_name)
        .filter(|v| v.online)
        .ok_or_else(|| {
            invalid(format!(
                "unknown online feature view `{view_name}` (known: {})",
                defs.feature_views
                    .iter()
                    .filter(|v| v.online)
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let entity = defs.view_entity(view);
    let layout = TableLayout::of(config, defs, view);
    let column = |name: &str| -> Result<&Vec<Value>, OnlineWriteError> {
        match df.get(name) {
            Some(Value::Array(values)) => Ok(values),
            Some(_) => Err(invalid(format!("column `{name}` must be a list"))),
            None => Err(invalid(format!(
                "missing column `{name}` (view `{}` needs {}, {}, event_timestamp)",
                view.name,
                entity.join_key(),
                view.schema
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    };
    let keys = column(entity.join_key())?;
    let n = keys.len();
    let mut named: Vec<(&str, ValueType, &Vec<Value>)> =
        vec![(entity.join_key(), entity.value_type, keys)];
    for f in &view.schema {
        named.push((&f.name, f.dtype, column(&f.name)?));
    }
    let event = column("event_timestamp")?;
    named.push(("event_timestamp", ValueType::UnixTimestamp, event));
    let empty = Vec::new();
    let created = match df.get("created").or_else(|| df.get("created_timestamp")) {
        Some(Value::Array(v)) => v,
        Some(_) => return Err(invalid("column `created` must be a list".into())),
        None => &empty,
    };
    for (name, _, values) in &named {
        if values.len() != n {
            return Err(invalid(format!(
                "column `{name}` has {} values, `{}` has {n}; every column needs the same length",
                values.len(),
                entity.join_key()
            )));
        }
    }
    if !created.is_empty() && created.len() != n {
        return Err(invalid(format!(
            "column `created` has {} values, expected {n}",
            created.len()
        )));
    }
    // One row per key, the newest (ON CONFLICT cannot touch a row twice in one statement).
    let stamp = |row: usize| -> Result<(DateTime<Utc>, Option<DateTime<Utc>>), OnlineWriteError> {
        let ts = event[row].as_str().and_then(parse_ts).ok_or_else(|| {
            invalid(format!(
                "column `event_timestamp`, row {row}: {} is not a timestamp",
                event[row]
            ))
        })?;
        let created = match created.get(row) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_str().and_then(parse_ts).ok_or_else(|| {
                invalid(format!(
                    "column `created`, row {row}: {v} is not a timestamp"
                ))
            })?),
        };
        Ok((ts, created))
    };
    type Stamp = (DateTime<Utc>, Option<DateTime<Utc>>);
    let mut newest: HashMap<String, (usize, Stamp)> = HashMap::new();
    for (row, key) in keys.iter().enumerate() {
        let key = match key {
            Value::String(s) => s.clone(),
            Value::Number(num) => num.to_string(),
            other => {
                return Err(invalid(format!(
                    "column `{}`, row {row}: {other} is not a key",
                    entity.join_key()
                )));
            }
        };
        let when = stamp(row)?;
        match newest.get(&key) {
            Some((_, seen)) if (seen.0, seen.1) >= (when.0, when.1) => {}
            _ => {
                newest.insert(key, (row, when));
            }
        }
    }
    let mut rows: Vec<usize> = newest.values().map(|(r, _)| *r).collect();
    rows.sort_unstable();

    let mut typed = Vec::new();
    for (name, dtype, values) in &named {
        typed.push(convert(name, *dtype, values, &rows)?);
    }
    typed.push(Typed::Timestamp(
        rows.iter()
            .map(|&r| stamp(r).map(|s| s.1))
            .collect::<Result<_, _>>()?,
    ));
    let mut casts = vec![format!("$1::{}[]", column_type(entity.value_type))];
    for (i, f) in view.schema.iter().enumerate() {
        casts.push(format!("${}::{}[]", i + 2, column_type(f.dtype)));
    }
    casts.push(format!("${}::timestamptz[]", view.schema.len() + 2));
    casts.push(format!("${}::timestamptz[]", view.schema.len() + 3));
    let columns: Vec<String> = std::iter::once(ident(&layout.key))
        .chain(view.schema.iter().map(|f| ident(&f.name)))
        .chain([EVENT_TS.to_string(), CREATED_TS.to_string()])
        .collect();
    let sql = format!(
        "INSERT INTO {table} AS t ({columns}) SELECT * FROM unnest({casts}) {upsert}",
        table = layout.table,
        columns = columns.join(", "),
        casts = casts.join(", "),
        upsert = layout.upsert_if_newer("t"),
    );
    let mut query = sqlx::query(&sql);
    for t in typed {
        query = match t {
            Typed::Int32(v) => query.bind(v),
            Typed::Int64(v) => query.bind(v),
            Typed::Float32(v) => query.bind(v),
            Typed::Float64(v) => query.bind(v),
            Typed::Bool(v) => query.bind(v),
            Typed::String(v) => query.bind(v),
            Typed::Timestamp(v) => query.bind(v),
        };
    }
    let written = query
        .execute(pool)
        .await
        .map_err(|e| OnlineWriteError::Database(crate::offline::database_message(&e)))?
        .rows_affected();
    Ok((n as u64, written))
}
