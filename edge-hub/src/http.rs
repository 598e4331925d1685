//! `/metrics`, `/health/live`, `/health/ready` and the status page (`/`, `/status`,
//! `/status.js`, `/status.json`: see [`crate::status`]) of the edge hub.
//!
//! Ready means the hub accepts publishes: the ingest subscription is in place. The state
//! of the uplink is not part of readiness, because the edge keeps accepting while the
//! link is cut (G6); it is the `mesh_edge_uplink_up` metric.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::metrics::EdgeMetrics;
use crate::outbox::Outbox;
use crate::status;

#[derive(Clone)]
pub struct HttpState {
    /// This edge's id.
    pub edge: String,
    /// `outbox.max_bytes`, for the page's fill gauge.
    pub outbox_max_bytes: u64,
    pub metrics: Arc<EdgeMetrics>,
    pub outbox: Arc<Outbox>,
    pub ready: Arc<AtomicBool>,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(|| async { "ok\n" }))
        .route("/health/ready", get(ready))
        .route("/", get(page))
        .route("/status", get(page))
        .route("/status.js", get(script))
        .route("/status.json", get(status_json))
        .with_state(state);
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "http server failed");
    }
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(&s.outbox),
    )
}

async fn ready(State(s): State<HttpState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, status::CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        status::PAGE,
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        status::SCRIPT,
    )
}

async fn status_json(State(s): State<HttpState>) -> impl IntoResponse {
    let report = status::report(
        &s.edge,
        s.ready.load(Ordering::Relaxed),
        &s.metrics,
        &s.outbox,
        s.outbox_max_bytes,
    );
    let body = serde_json::to_string(&report)
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string());
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
}
