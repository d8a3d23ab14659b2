//! Operations routes: liveness, readiness, Prometheus metrics, the OpenAPI document.

use std::sync::OnceLock;
use std::time::Instant;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use utoipa::OpenApi;

use super::SharedState;

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once, however many servers run).
pub fn install_metrics() {
    METRICS.get_or_init(|| {
        let buckets = [
            0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("http_request_duration_seconds".into()),
                &buckets,
            )
            .expect("static buckets")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding application's).
        let _ = metrics::set_global_recorder(recorder);
        handle
    });
}

/// Counts requests and measures latency per route (the route's template, not its path,
/// so `/features/{id}` is one series).
pub async fn record_metrics(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    status: &'static str,
}

/// The process is alive.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    ready: bool,
    database: bool,
    registry_loaded: bool,
    feature_views: usize,
    /// Why the server is not ready, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// Ready to serve: the database answers and the registry is loaded.
#[utoipa::path(get, path = "/ready", responses(
    (status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn ready(State(state): State<SharedState>) -> Response {
    let database = match state.online.acquire().await {
        Ok(mut conn) => sqlx::Connection::ping(&mut *conn).await.is_ok(),
        Err(_) => false,
    };
    if database && !state.registry.is_loaded() {
        let _ = state.registry.reload().await;
    }
    let snapshot = state.registry.snapshot();
    let registry_loaded = state.registry.is_loaded();
    let ready = database && registry_loaded;
    let detail = if !database {
        Some("the database is unreachable".to_string())
    } else {
        state.registry.last_error().or_else(|| {
            state
                .registry
                .change_error()
                .map(|e| format!("serving the last good state; the last change was refused: {e}"))
        })
    };
    let body = Readiness {
        ready,
        database,
        registry_loaded,
        feature_views: snapshot.defs.feature_views.len(),
        detail,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics: requests and latency per route, database pool usage.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(state): State<SharedState>) -> Response {
    for (name, pool) in [("online", &state.online), ("offline", &state.offline)] {
        metrics::gauge!("db_pool_connections", "pool" => name).set(pool.size() as f64);
        metrics::gauge!("db_pool_idle_connections", "pool" => name).set(pool.num_idle() as f64);
    }
    let body = METRICS.get().map(|h| h.render()).unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "skewless",
        description = "Feature server: online features, point-in-time training sets, materialization. Mutating routes need `Authorization: Bearer <admin token>`."
    ),
    paths(
        health,
        ready,
        metrics,
        super::features::get_features,
        super::features::get_online_features,
        super::training::historical,
        super::admin::materialize,
        super::admin::materialize_incremental,
        super::admin::write_to_online_store,
        super::admin::push,
        super::plugins::upload,
        super::plugins::list,
        super::plugins::get,
        super::plugins::activate,
        super::plugins::delete,
    ),
    components(schemas(super::ErrorBody, super::plugins::PluginAnswer, super::plugins::ActivateBody))
)]
pub struct ApiDoc;

/// The OpenAPI document, generated from the handlers' annotations.
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
