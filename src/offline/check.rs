//! Validation of data sources against the real database: we ask Postgres to prepare
//! each query and read back the column names and types it describes, instead of guessing
//! from the SQL text.

use std::collections::HashMap;

use sqlx::{Column, Executor, PgPool, Statement, TypeInfo};

use crate::definitions::{DefinitionError, DefinitionErrors, Definitions};
use crate::pgtypes;

/// Prepares every source query and checks that it yields the join key, the timestamp
/// field (temporal), the created timestamp column if any, and every declared feature
/// with a type that can hold the declared dtype. Returns every problem found.
#[tracing::instrument(skip_all, fields(sources = defs.data_sources.len()))]
pub async fn check_sources(pool: &PgPool, defs: &Definitions) -> Result<(), DefinitionErrors> {
    let mut errors = Vec::new();
    for source in &defs.data_sources {
        let object = format!("data source `{}`", source.name);
        let mut err = |message: String| {
            errors.push(DefinitionError {
                file: source.file.clone(),
                object: object.clone(),
                message,
            })
        };
        let columns: HashMap<String, String> = match pool.prepare(&source.query).await {
            Ok(statement) => statement
                .columns()
                .iter()
                .map(|c| (c.name().to_string(), c.type_info().name().to_string()))
                .collect(),
            Err(e) => {
                err(format!("query does not run: {}", database_message(&e)));
                continue;
            }
        };
        let known = || {
            let mut names: Vec<_> = columns
                .iter()
                .map(|(n, t)| format!("{n} {}", t.to_lowercase()))
                .collect();
            names.sort();
            names.join(", ")
        };
        match columns.get(&source.timestamp_field) {
            None => err(format!(
                "timestamp_field `{}` is not a column of the query (it returns: {})",
                source.timestamp_field,
                known()
            )),
            Some(t) if !pgtypes::is_temporal(t) => err(format!(
                "timestamp_field `{}` has type {}, not a date or timestamp",
                source.timestamp_field,
                t.to_lowercase()
            )),
            Some(_) => {}
        }
        if let Some(created) = &source.created_timestamp_column {
            match columns.get(created) {
                None => err(format!(
                    "created_timestamp_column `{created}` is not a column of the query (it returns: {})",
                    known()
                )),
                Some(t) if !pgtypes::is_temporal(t) => err(format!(
                    "created_timestamp_column `{created}` has type {}, not a date or timestamp",
                    t.to_lowercase()
                )),
                Some(_) => {}
            }
        }
        for view in defs
            .feature_views
            .iter()
            .filter(|v| v.source == source.name)
        {
            let entity = defs.view_entity(view);
            let key = entity.join_key();
            match columns.get(key) {
                None => err(format!(
                    "used by view `{}`: join key `{key}` of entity `{}` is not a column of the query (it returns: {})",
                    view.name,
                    entity.name,
                    known()
                )),
                Some(t) if !pgtypes::accepts(entity.value_type, t) => err(format!(
                    "used by view `{}`: join key `{key}` has type {}, which cannot hold {}",
                    view.name,
                    t.to_lowercase(),
                    entity.value_type
                )),
                Some(_) => {}
            }
            for field in &view.schema {
                match columns.get(&field.name) {
                    None => err(format!(
                        "used by view `{}`: feature `{}` is not a column of the query (it returns: {})",
                        view.name,
                        field.name,
                        known()
                    )),
                    Some(t) if !pgtypes::accepts(field.dtype, t) => err(format!(
                        "used by view `{}`: column `{}` has type {}, which cannot hold the declared dtype {}",
                        view.name,
                        field.name,
                        t.to_lowercase(),
                        field.dtype
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(DefinitionErrors(errors))
    }
}

/// Postgres's own message (and hint) for a failed statement, without sqlx's wrapping.
pub fn database_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => {
            let mut msg = db.message().to_string();
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                if let Some(detail) = pg.detail() {
                    msg.push_str(&format!(" ({detail})"));
                }
                if let Some(hint) = pg.hint() {
                    msg.push_str(&format!(" (hint: {hint})"));
                }
            }
            msg
        }
        other => other.to_string(),
    }
}

/// Whether an error means "the database cannot be reached right now" (answer 503 and
/// retry), as opposed to a query the database refused.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
    ) || matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
}
