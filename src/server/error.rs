//! API errors: always JSON `{"message", "code"}` with the right status, so clients can
//! branch on `code` and people can read `message`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

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
        }
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
            other => Self::internal(other.to_string()),
        }
    }
}
