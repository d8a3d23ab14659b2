//! Online features: `GET /features/{id}` (the lab's shape) and
//! `POST /get-online-features` (Feast's shape, so Feast's `remote` online store works
//! against skewless unchanged).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::{ApiError, SharedState};
use crate::batch::{format_timestamp, write_json_string};
use crate::definitions::SelectedFeature;
use crate::online::read::OnlineResult;

/// Query of `GET /features/{id}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct FeaturesQuery {
    /// Features as `view:feature`, comma-separated.
    features: Option<String>,
    /// A feature service (default: the server's `default_feature_service`).
    feature_service: Option<String>,
    /// Name features `view__feature`.
    #[serde(default)]
    full_feature_names: bool,
}

/// Feast's `get-online-features` request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GetOnlineFeaturesRequest {
    /// Features as `view:feature`.
    #[serde(default)]
    features: Option<Vec<String>>,
    #[serde(default)]
    feature_service: Option<String>,
    /// The entity key column and its values, e.g. `{"user_id": ["7590-VHVEG"]}`.
    #[schema(value_type = Object)]
    entities: HashMap<String, Vec<Value>>,
    #[serde(default)]
    full_feature_names: bool,
    /// Accepted for compatibility; skewless has no request-time data sources.
    #[serde(default)]
    #[schema(value_type = Object)]
    #[allow(dead_code)]
    request_context: Option<Value>,
    /// Accepted for compatibility.
    #[serde(default)]
    #[allow(dead_code)]
    query_embedding: Option<Value>,
}

fn select(
    state: &SharedState,
    defs: &crate::definitions::Definitions,
    features: Option<&[String]>,
    service: Option<&str>,
    full: bool,
) -> Result<Vec<SelectedFeature>, ApiError> {
    Ok(match (features, service) {
        (Some(list), None) if !list.is_empty() => defs.select_feature_strings(list, full)?,
        (None, Some(name)) | (Some(_), Some(name)) if features.is_none_or(<[_]>::is_empty) => {
            defs.select_service(name, full)?
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "INVALID_FEATURES",
                "give either features or feature_service, not both",
            ));
        }
        _ => match &state.config.server.default_feature_service {
            Some(name) => defs.select_service(name, full)?,
            None => {
                return Err(ApiError::bad_request(
                    "INVALID_FEATURES",
                    "no features requested: give features=view:feature,... or feature_service=NAME (this server has no default_feature_service)",
                ));
            }
        },
    })
}

fn json_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The features of one entity: `{"user_id", "features", "statuses"}`. An unknown entity
/// gets 200 with every feature null and NOT_FOUND.
#[utoipa::path(
    get,
    path = "/features/{id}",
    params(("id" = String, Path, description = "The entity key, e.g. a user_id"), FeaturesQuery),
    responses(
        (status = 200, description = "Feature values and statuses", content_type = "application/json"),
        (status = 400, body = super::ErrorBody),
        (status = 503, body = super::ErrorBody),
    )
)]
pub async fn get_features(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    Query(query): Query<FeaturesQuery>,
) -> Result<Response, ApiError> {
    let snapshot = state.registry.snapshot();
    let shape = format!(
        "get|{}|{}|{}",
        query.features.as_deref().unwrap_or(""),
        query.feature_service.as_deref().unwrap_or(""),
        query.full_feature_names
    );
    let online = snapshot.online_query(&state.config, &shape, |defs| {
        let list: Option<Vec<String>> = query.features.as_deref().map(|s| {
            s.split(',')
                .map(|f| f.trim().to_string())
                .filter(|f| !f.is_empty())
                .collect()
        });
        select(
            &state,
            defs,
            list.as_deref(),
            query.feature_service.as_deref(),
            query.full_feature_names,
        )
    })?;
    let key_name = online.key_name().to_string();
    let result = online
        .read(&state.online, std::slice::from_ref(&id))
        .await?;
    let mut body = String::with_capacity(512);
    body.push('{');
    write_json_string(&key_name, &mut body);
    body.push(':');
    write_json_string(&id, &mut body);
    body.push_str(",\"features\":{");
    for (f, column) in result.values.columns.iter().enumerate() {
        if f > 0 {
            body.push(',');
        }
        write_json_string(&column.name, &mut body);
        body.push(':');
        write_value(&result, f, 0, &mut body);
    }
    body.push_str("},\"statuses\":{");
    for (f, column) in result.values.columns.iter().enumerate() {
        if f > 0 {
            body.push(',');
        }
        write_json_string(&column.name, &mut body);
        body.push(':');
        write_json_string(result.statuses[f][0].as_str(), &mut body);
    }
    body.push_str("}}");
    Ok(json_response(body))
}

/// A value as JSON: null unless its status is PRESENT.
fn write_value(result: &OnlineResult, feature: usize, entity: usize, out: &mut String) {
    if result.is_served(feature, entity) {
        result.values.columns[feature].write_json(entity, out);
    } else {
        out.push_str("null");
    }
}

/// Feast's online read: `metadata.feature_names` (the entity column first, then the
/// features in request order) and one `results[]` entry per column with `values`,
/// `statuses` and `event_timestamps`. The body is parsed as JSON whatever its
/// Content-Type (Feast's client sends none).
#[utoipa::path(
    post,
    path = "/get-online-features",
    request_body = GetOnlineFeaturesRequest,
    responses(
        (status = 200, description = "Feast's GetOnlineFeaturesResponse as JSON", content_type = "application/json"),
        (status = 400, body = super::ErrorBody),
        (status = 413, body = super::ErrorBody),
        (status = 503, body = super::ErrorBody),
    )
)]
pub async fn get_online_features(
    State(state): State<SharedState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: GetOnlineFeaturesRequest = parse_json(&body)?;
    let snapshot = state.registry.snapshot();
    let shape = format!(
        "post|{}|{}|{}",
        request.features.as_deref().unwrap_or_default().join(","),
        request.feature_service.as_deref().unwrap_or(""),
        request.full_feature_names
    );
    let online = snapshot.online_query(&state.config, &shape, |defs| {
        select(
            &state,
            defs,
            request.features.as_deref(),
            request.feature_service.as_deref(),
            request.full_feature_names,
        )
    })?;
    let key_name = online.key_name().to_string();
    let keys = entity_keys(
        &request.entities,
        &key_name,
        state.config.server.max_entities,
    )?;
    let result = online.read(&state.online, &keys).await?;

    let epoch = "1970-01-01T00:00:00Z";
    let mut body = String::with_capacity(256 + keys.len() * result.values.columns.len() * 48);
    body.push_str("{\"metadata\":{\"feature_names\":[");
    write_json_string(&key_name, &mut body);
    for column in &result.values.columns {
        body.push(',');
        write_json_string(&column.name, &mut body);
    }
    body.push_str("]},\"results\":[{\"values\":[");
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        write_json_string(k, &mut body);
    }
    body.push_str("],\"statuses\":[");
    push_repeated(&mut body, "\"PRESENT\"", keys.len());
    body.push_str("],\"event_timestamps\":[");
    push_repeated(&mut body, &format!("\"{epoch}\""), keys.len());
    body.push_str("]}");
    for f in 0..result.values.columns.len() {
        body.push_str(",{\"values\":[");
        for e in 0..keys.len() {
            if e > 0 {
                body.push(',');
            }
            write_value(&result, f, e, &mut body);
        }
        body.push_str("],\"statuses\":[");
        for e in 0..keys.len() {
            if e > 0 {
                body.push(',');
            }
            write_json_string(result.statuses[f][e].as_str(), &mut body);
        }
        body.push_str("],\"event_timestamps\":[");
        for e in 0..keys.len() {
            if e > 0 {
                body.push(',');
            }
            let ts = result.event_ts(f, e).map(format_timestamp);
            write_json_string(ts.as_deref().unwrap_or(epoch), &mut body);
        }
        body.push_str("]}");
    }
    body.push_str("]}");
    Ok(json_response(body))
}

fn push_repeated(out: &mut String, item: &str, n: usize) {
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
}

/// Parses a JSON body whatever the Content-Type, with a message that says where.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "MALFORMED_JSON",
            format!("the request body is not valid: {e}"),
        )
    })
}

/// The entity keys of a Feast request, as strings, capped.
fn entity_keys(
    entities: &HashMap<String, Vec<Value>>,
    key_name: &str,
    max: usize,
) -> Result<Vec<String>, ApiError> {
    let values = entities.get(key_name).ok_or_else(|| {
        ApiError::bad_request(
            "INVALID_ENTITY",
            format!(
                "entities must hold `{key_name}` (got: {})",
                entities.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )
    })?;
    if let Some(other) = entities.keys().find(|k| k.as_str() != key_name) {
        return Err(ApiError::bad_request(
            "INVALID_ENTITY",
            format!(
                "unexpected entity column `{other}`; these features are keyed by `{key_name}` only"
            ),
        ));
    }
    if values.len() > max {
        return Err(ApiError::bad_request(
            "TOO_MANY_ENTITIES",
            format!(
                "{} entities requested; at most {max} per request (server.max_entities)",
                values.len()
            ),
        ));
    }
    json_strings(values, "INVALID_ENTITY", key_name)
}

/// A JSON column of keys or timestamps as strings (numbers are accepted as written).
pub fn json_strings(
    values: &[Value],
    code: &'static str,
    column: &str,
) -> Result<Vec<String>, ApiError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(ApiError::bad_request(
                code,
                format!("{column}[{i}]: {other} is not a string or a number"),
            )),
        })
        .collect()
}
