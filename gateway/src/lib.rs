//! `postmesh-gateway`: the HTTP front door of the mesh. It serves health and
//! Prometheus metrics today (`/health`, `/health/live`, `/health/ready`,
//! `/health/detailed`, `/metrics`); the HTTP/JSON → gRPC transcoding driven
//! by the `google.api.http` annotations arrives with the gateway issue.
//! Anything else answers 404 with the error body every route will use.
#![forbid(unsafe_code)]

use axum::Router;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use postmesh_kit::health::Health;
use serde_json::json;

/// The gateway's HTTP routes.
pub fn router(health: Health) -> Router {
    postmesh_kit::admin::router(health).fallback(not_found)
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let body = json!({
        "code": "NOT_FOUND",
        "message": format!("no route for {method} {}", uri.path()),
        "details": [],
    });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}
