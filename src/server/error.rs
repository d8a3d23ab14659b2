//! API errors: always JSON `{"message", "code"}` with the right status, so clients can
//! branch on `code` and people can read `message`.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::SharedState;

use crate::definitions::ResolveError;
use crate::offline::HistoricalError;
use crate::online::read::OnlineReadError;
use crate::online::write::OnlineWriteError;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, and how to fix it.
    pub message: String,
    /// A stable machine-readable code, e.g. `UNKNOWN_FEATURE`.
    pub code: &'static str,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "DATABASE_UNAVAILABLE",
            message,
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody {
            message: self.message,
            code: self.code,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// Rewrites the error responses that do not come from [`ApiError`] (axum's own
/// rejections: a body over `server.max_body_bytes`, a bad query string, a wrong method)
/// into the same JSON `{"message", "code"}`, keeping the status.
pub async fn json_errors(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "BODY_TOO_LARGE",
            format!(
                "the request body is larger than {} bytes (server.max_body_bytes)",
                state.config.server.max_body_bytes
            ),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "METHOD_NOT_ALLOWED",
            match &allow {
                Some(a) => format!(
                    "method not allowed on this route (allowed: {})",
                    a.to_str().unwrap_or("")
                ),
                None => "method not allowed on this route".to_string(),
            },
        ),
        StatusCode::NOT_FOUND => ("NOT_FOUND", text),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("UNSUPPORTED_MEDIA_TYPE", text),
        StatusCode::BAD_REQUEST => ("BAD_REQUEST", text),
        s if s.is_server_error() => ("INTERNAL", text),
        _ => ("HTTP_ERROR", text),
    };
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        message
    };
    let mut rewritten = ApiError::new(status, code, message).into_response();
    if let Some(allow) = allow {
        rewritten.headers_mut().insert(header::ALLOW, allow);
    }
    rewritten
}

/// Unknown routes: 404 as JSON, pointing at the route list.
pub async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        format!(
            "no route {} {} (the routes are listed at GET /openapi.json)",
            request.method(),
            request.uri().path()
        ),
    )
}

impl From<ResolveError> for ApiError {
    fn from(e: ResolveError) -> Self {
        let code = match &e {
            ResolveError::UnknownView { .. } => "UNKNOWN_FEATURE_VIEW",
            ResolveError::UnknownFeature { .. } => "UNKNOWN_FEATURE",
            ResolveError::UnknownService { .. } => "UNKNOWN_FEATURE_SERVICE",
            ResolveError::UnknownLabel { .. } => "UNKNOWN_LABEL",
            _ => "INVALID_FEATURES",
        };
        Self::bad_request(code, e.to_string())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if crate::offline::is_unavailable(&e) {
            Self::unavailable(format!("the database is unavailable: {e}"))
        } else {
            Self::internal(format!(
                "database error: {}",
                crate::offline::database_message(&e)
            ))
        }
    }
}

impl From<OnlineReadError> for ApiError {
    fn from(e: OnlineReadError) -> Self {
        match e {
            OnlineReadError::Database(e) => e.into(),
            OnlineReadError::BadKey { .. } => Self::bad_request("INVALID_ENTITY", e.to_string()),
            OnlineReadError::NotOnline(_) => Self::bad_request("NOT_ONLINE", e.to_string()),
            OnlineReadError::Decode(_) => Self::internal(e.to_string()),
            OnlineReadError::Plan(e) => Self::new(StatusCode::SERVICE_UNAVAILABLE, "PLUGIN_NOT_LOADED", e.to_string()),
            OnlineReadError::Transform(e) => e.into(),
        }
    }
}

/// A plugin that refuses its input is the data's problem (422); one that crashes,
/// overruns or returns garbage is a server-side failure (500); a full instance pool is
/// temporary (503).
impl From<crate::transform::TransformError> for ApiError {
    fn from(e: crate::transform::TransformError) -> Self {
        use crate::transform::TransformError as T;
        let (status, code) = match &e {
            T::Refused { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "PLUGIN_REFUSED"),
            T::Timeout { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "PLUGIN_TIMEOUT"),
            T::Memory { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "PLUGIN_MEMORY"),
            T::Trap { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "PLUGIN_CRASHED"),
            T::BadOutput { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "PLUGIN_BAD_OUTPUT"),
            T::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "PLUGIN_UNAVAILABLE"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<OnlineWriteError> for ApiError {
    fn from(e: OnlineWriteError) -> Self {
        match e {
            OnlineWriteError::Invalid(m) => Self::bad_request("INVALID_ROWS", m),
            OnlineWriteError::Database(m) => Self::internal(m),
        }
    }
}

impl From<HistoricalError> for ApiError {
    fn from(e: HistoricalError) -> Self {
        match e {
            HistoricalError::Resolve(e) => e.into(),
            HistoricalError::Entities(m) => Self::bad_request("INVALID_ENTITIES", m),
            HistoricalError::Unavailable(m) => Self::unavailable(m),
            HistoricalError::Transform(e) => e.into(),
            HistoricalError::Plan(e) => Self::new(StatusCode::SERVICE_UNAVAILABLE, "PLUGIN_NOT_LOADED", e.to_string()),
            other => Self::internal(other.to_string()),
        }
    }
}
