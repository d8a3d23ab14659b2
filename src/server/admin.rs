//! Mutating routes, behind the admin token: materialization and direct writes.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::features::parse_json;
use super::{ApiError, SharedState};
use crate::online::materialize::{self as mat, MaterializeError, Window};

/// Every mutating route needs `Authorization: Bearer <server.admin_token>`. With no
/// token configured they are refused, except under `--dev` on a loopback address.
pub async fn require_admin(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let unauthorized = |message: &str| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            message.to_string(),
        )
    };
    match &state.config.server.admin_token {
        Some(token) => {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let ok = given.is_some_and(|g| constant_time_eq(g.trim().as_bytes(), token.as_bytes()));
            if !ok {
                return Err(unauthorized(
                    "this route needs `Authorization: Bearer <admin token>` (server.admin_token)",
                ));
            }
        }
        None if state.dev && state.addr.ip().is_loopback() => {}
        None => {
            return Err(unauthorized(
                "no admin token is configured, so mutating routes are refused: set server.admin_token (or SKEWLESS_SERVER__ADMIN_TOKEN), or run `skewless serve --dev` on a loopback address",
            ));
        }
    }
    Ok(next.run(request).await)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Feast's materialize request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaterializeRequest {
    /// Start of the window, inclusive (RFC 3339, a UTC date-time or a date).
    start_ts: String,
    /// End of the window, inclusive.
    end_ts: String,
    /// Only these views (default: every online view).
    #[serde(default)]
    feature_views: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaterializeIncrementalRequest {
    end_ts: String,
    #[serde(default)]
    feature_views: Option<Vec<String>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MaterializedView {
    view: String,
    start: Option<DateTime<Utc>>,
    end: DateTime<Utc>,
    rows: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MaterializeResponse {
    views: Vec<MaterializedView>,
    rows: u64,
    elapsed_ms: u64,
}

fn timestamp(field: &str, s: &str) -> Result<DateTime<Utc>, ApiError> {
    mat::parse_timestamp(s)
        .map_err(|m| ApiError::bad_request("INVALID_TIMESTAMP", format!("{field}: {m}")))
}

impl From<MaterializeError> for ApiError {
    fn from(e: MaterializeError) -> Self {
        match &e {
            MaterializeError::UnknownViews { .. } => {
                ApiError::bad_request("UNKNOWN_FEATURE_VIEW", e.to_string())
            }
            MaterializeError::InvalidWindow { .. } => {
                ApiError::bad_request("INVALID_TIMESTAMP", e.to_string())
            }
            MaterializeError::NothingApplied { .. } | MaterializeError::NotApplied { .. } => {
                ApiError::new(StatusCode::CONFLICT, "NOT_APPLIED", e.to_string())
            }
            _ => ApiError::internal(e.to_string()),
        }
    }
}

async fn run_materialize(
    state: &SharedState,
    window: Option<Window>,
    end: DateTime<Utc>,
    views: &[String],
) -> Result<Json<MaterializeResponse>, ApiError> {
    mat::check_same_database(&state.config)?;
    let snapshot = state.registry.snapshot();
    let progress = indicatif::ProgressBar::hidden();
    let report = match window {
        Some(w) => {
            mat::materialize(
                &state.online,
                &state.config,
                &snapshot.defs,
                w,
                views,
                &progress,
            )
            .await?
        }
        None => {
            mat::materialize_incremental(
                &state.online,
                &state.config,
                &snapshot.defs,
                end,
                views,
                &progress,
            )
            .await?
        }
    };
    Ok(Json(MaterializeResponse {
        rows: report.rows(),
        elapsed_ms: report.elapsed.as_millis() as u64,
        views: report
            .views
            .into_iter()
            .map(|v| MaterializedView {
                view: v.view,
                start: v.window.start,
                end: v.window.end,
                rows: v.rows,
            })
            .collect(),
    }))
}

/// Materializes a window (both bounds inclusive) into the online store.
#[utoipa::path(post, path = "/materialize", request_body = MaterializeRequest,
    responses((status = 200, body = MaterializeResponse), (status = 400, body = super::ErrorBody),
              (status = 401, body = super::ErrorBody)),
    security(("admin_token" = [])))]
pub async fn materialize(
    State(state): State<SharedState>,
    body: Bytes,
) -> Result<Json<MaterializeResponse>, ApiError> {
    let request: MaterializeRequest = parse_json(&body)?;
    let start = timestamp("start_ts", &request.start_ts)?;
    let end = timestamp("end_ts", &request.end_ts)?;
    let views = request.feature_views.unwrap_or_default();
    run_materialize(&state, Some(Window::between(start, end)), end, &views).await
}

/// Materializes each view from its last materialized end up to `end_ts`.
#[utoipa::path(post, path = "/materialize-incremental", request_body = MaterializeIncrementalRequest,
    responses((status = 200, body = MaterializeResponse), (status = 400, body = super::ErrorBody),
              (status = 401, body = super::ErrorBody)),
    security(("admin_token" = [])))]
pub async fn materialize_incremental(
    State(state): State<SharedState>,
    body: Bytes,
) -> Result<Json<MaterializeResponse>, ApiError> {
    let request: MaterializeIncrementalRequest = parse_json(&body)?;
    let end = timestamp("end_ts", &request.end_ts)?;
    let views = request.feature_views.unwrap_or_default();
    run_materialize(&state, None, end, &views).await
}

/// Feast's write-to-online-store request: columns of rows for one view.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct WriteRequest {
    feature_view_name: String,
    /// Columns: the join key, every feature, `event_timestamp`, optionally `created`.
    #[schema(value_type = Object)]
    df: serde_json::Map<String, Value>,
    #[serde(default)]
    #[allow(dead_code)]
    allow_registry_cache: Option<bool>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WriteResponse {
    rows: u64,
    /// Rows that replaced older values (rows not newer than what is stored are ignored).
    written: u64,
}

/// Writes rows straight to a view's online table; only rows newer than the stored ones win.
#[utoipa::path(post, path = "/write-to-online-store", request_body = WriteRequest,
    responses((status = 200, body = WriteResponse), (status = 400, body = super::ErrorBody),
              (status = 401, body = super::ErrorBody)),
    security(("admin_token" = [])))]
pub async fn write_to_online_store(
    State(state): State<SharedState>,
    body: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let request: WriteRequest = parse_json(&body)?;
    let snapshot = state.registry.snapshot();
    let (rows, written) = crate::online::write::write_columns(
        &state.online,
        &state.config,
        &snapshot.defs,
        &request.feature_view_name,
        &request.df,
    )
    .await?;
    Ok(Json(WriteResponse { rows, written }))
}

/// Feast's push request. skewless has no separate push sources: `push_source_name` names
/// a data source, and the rows go to every online view over it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PushRequest {
    push_source_name: String,
    #[schema(value_type = Object)]
    df: serde_json::Map<String, Value>,
    /// `online` (default) or `online_and_offline`/`offline` (refused: the offline store is
    /// your own tables).
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    allow_registry_cache: Option<bool>,
}

/// Pushes rows to the online tables of every online view reading `push_source_name`.
#[utoipa::path(post, path = "/push", request_body = PushRequest,
    responses((status = 200, body = WriteResponse), (status = 400, body = super::ErrorBody),
              (status = 401, body = super::ErrorBody)),
    security(("admin_token" = [])))]
pub async fn push(
    State(state): State<SharedState>,
    body: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let request: PushRequest = parse_json(&body)?;
    if let Some(to) = request.to.as_deref()
        && to != "online"
    {
        return Err(ApiError::bad_request(
            "UNSUPPORTED",
            format!(
                "push `to: {to}` is not supported: skewless pushes to the online store only (the offline store is your own tables)"
            ),
        ));
    }
    let snapshot = state.registry.snapshot();
    let views: Vec<&str> = snapshot
        .defs
        .feature_views
        .iter()
        .filter(|v| v.online && v.source == request.push_source_name)
        .map(|v| v.name.as_str())
        .collect();
    if views.is_empty() {
        return Err(ApiError::bad_request(
            "UNKNOWN_PUSH_SOURCE",
            format!(
                "no online feature view reads data source `{}` (sources: {})",
                request.push_source_name,
                snapshot
                    .defs
                    .data_sources
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let (mut rows, mut written) = (0, 0);
    for view in views {
        let (r, w) = crate::online::write::write_columns(
            &state.online,
            &state.config,
            &snapshot.defs,
            view,
            &request.df,
        )
        .await?;
        rows = r;
        written += w;
    }
    Ok(Json(WriteResponse { rows, written }))
}
