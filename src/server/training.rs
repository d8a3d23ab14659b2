//! `POST /historical`: a point-in-time training set, streamed (chunked) as CSV, JSON
//! lines or Parquet. The same library function as `skewless historical`; rows flow from
//! PostgreSQL to the socket batch by batch, and a client that disconnects cancels the
//! query.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;

use super::features::{json_strings, parse_json};
use super::{ApiError, SharedState};
use crate::offline::historical::{
    self, EVENT_TIMESTAMP, Entities, HistoricalOptions, HistoricalRequest,
};
use crate::output::{BatchWriter, Format};

/// A training-set request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoricalBody {
    /// Entity rows as columns: `{"user_id": [...], "event_timestamp": [...]}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    entities: Option<HashMap<String, Vec<Value>>>,
    /// Or SQL returning `user_id` and `event_timestamp` (runs read-only, with a timeout).
    #[serde(default)]
    entity_sql: Option<String>,
    #[serde(default)]
    features: Option<Vec<String>>,
    #[serde(default)]
    feature_service: Option<String>,
    /// A label (e.g. `churn_label`), joined point-in-time as the last column.
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    full_feature_names: bool,
    /// `csv`, `jsonl` or `parquet` (default: from `Accept`, else csv).
    #[serde(default)]
    format: Option<String>,
}

/// Builds a point-in-time correct training set, streamed as it is computed.
#[utoipa::path(post, path = "/historical", request_body = HistoricalBody,
    responses(
        (status = 200, description = "The training set (text/csv, application/x-ndjson or application/vnd.apache.parquet), streamed"),
        (status = 400, body = super::ErrorBody),
        (status = 503, body = super::ErrorBody)))]
pub async fn historical(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: HistoricalBody = parse_json(&body)?;
    let format = match request.format.as_deref() {
        Some(f) => Format::parse(f).ok_or_else(|| {
            ApiError::bad_request(
                "INVALID_FORMAT",
                format!("unknown format `{f}` (expected csv, jsonl or parquet)"),
            )
        })?,
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .and_then(Format::from_accept)
            .unwrap_or(Format::Csv),
    };
    let snapshot = state.registry.snapshot();
    let defs = &snapshot.defs;
    let full = request.full_feature_names;
    let features = match (&request.features, &request.feature_service) {
        (Some(list), None) => defs.select_feature_strings(list, full)?,
        (None, Some(name)) => defs.select_service(name, full)?,
        _ => {
            return Err(ApiError::bad_request(
                "INVALID_FEATURES",
                "give exactly one of features or feature_service",
            ));
        }
    };
    let label = request
        .label
        .as_deref()
        .map(|l| defs.select_label(l, full))
        .transpose()?;
    let key = features
        .first()
        .and_then(|f| defs.entity_of_view(&f.view))
        .map(|e| e.join_key().to_string())
        .unwrap_or_default();
    let entities = match (request.entities, request.entity_sql) {
        (Some(columns), None) => {
            let column = |name: &str| -> Result<Vec<String>, ApiError> {
                let values = columns.get(name).ok_or_else(|| {
                    ApiError::bad_request(
                        "INVALID_ENTITIES",
                        format!("entities must hold `{key}` and `{EVENT_TIMESTAMP}` columns; missing `{name}`"),
                    )
                })?;
                json_strings(values, "INVALID_ENTITIES", &format!("entities.{name}"))
            };
            Entities::Inline {
                keys: column(&key)?,
                timestamps: column(EVENT_TIMESTAMP)?,
            }
        }
        (None, Some(sql)) => Entities::Sql(sql),
        _ => {
            return Err(ApiError::bad_request(
                "INVALID_ENTITIES",
                "give exactly one of entities or entity_sql",
            ));
        }
    };
    let set = historical::start(
        &state.offline,
        defs,
        HistoricalRequest {
            entities,
            features,
            label,
            plugins: snapshot.plugins.clone(),
        },
        &HistoricalOptions::from_config(&state.config),
    )
    .await?;

    let writer = BatchWriter::new(
        format,
        &set.schema,
        Vec::with_capacity(1 << 16),
        &set.metadata(),
    )
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let rows = set.rows;
    let plugins = set
        .plugins
        .iter()
        .map(|p| format!("{}@{}={}", p.name, p.version, p.sha256))
        .collect::<Vec<_>>()
        .join(", ");
    // Each batch is encoded and sent as it arrives; when the client goes away the body
    // stream is dropped, with it the receiver, and the query is cancelled.
    // A stream that ends short of `rows` (a task that died without a word) ends the body
    // with an error, so the client sees a broken transfer, never a short training set.
    let stream = futures::stream::unfold(
        (Some(writer), set.batches, 0u64),
        move |(writer, mut batches, written)| async move {
            let mut writer = writer?;
            match batches.recv().await {
                Some(Ok(batch)) => {
                    let chunk = writer
                        .write(&batch)
                        .map(|()| Bytes::from(std::mem::take(writer.get_mut())))
                        .map_err(std::io::Error::other);
                    Some((chunk, (Some(writer), batches, written + batch.rows as u64)))
                }
                Some(Err(e)) => Some((
                    Err(std::io::Error::other(e.to_string())),
                    (None, batches, written),
                )),
                None if written != rows => Some((
                    Err(std::io::Error::other(format!(
                        "the training set ended after {written} of {rows} rows"
                    ))),
                    (None, batches, written),
                )),
                None => {
                    let tail = writer
                        .finish()
                        .map(Bytes::from)
                        .map_err(std::io::Error::other);
                    Some((tail, (None, batches, written)))
                }
            }
        },
    )
    .filter(|chunk| futures::future::ready(!matches!(chunk, Ok(b) if b.is_empty())));
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (
                header::HeaderName::from_static("x-skewless-rows"),
                rows.to_string(),
            ),
            // The exact transformation code behind the derived columns.
            (
                header::HeaderName::from_static("x-skewless-plugins"),
                plugins,
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
