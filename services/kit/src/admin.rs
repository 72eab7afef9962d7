//! The admin HTTP surface every process serves: Prometheus `/metrics` and
//! `/health`, `/health/live`, `/health/ready`, `/health/detailed`. `serve`
//! binds it on `POSTMESH_ADMIN_LISTEN`; in `dev` the gateway mounts it.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::health::Health;

/// Routes for metrics and health.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(ready))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/health/detailed", get(detailed))
        .with_state(health)
}

async fn metrics() -> Response {
    let body = crate::telemetry::metrics_handle().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

async fn live(State(_): State<Health>) -> Response {
    (StatusCode::OK, axum::Json(json!({ "status": "ok" }))).into_response()
}

async fn ready(State(health): State<Health>) -> Response {
    if health.is_ready() {
        (StatusCode::OK, axum::Json(json!({ "status": "ok" }))).into_response()
    } else {
        let status = if health.is_shutting_down() { "shutting_down" } else { "degraded" };
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "status": status }))).into_response()
    }
}

async fn detailed(State(health): State<Health>) -> Response {
    let report = health.report();
    let code = if report.status == "ok" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(report)).into_response()
}
