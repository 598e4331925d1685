//! `/metrics`, `/health/live`, `/health/ready` and the status page (`/`, `/status`,
//! `/status.js`, `/status.json`: see [`crate::status`]) of the central hub. Ready means the
//! streams exist and the lander is pulling, pinned or on standby (the rule is
//! [`crate::health`]'s). The body's first line is `ready`, `ready, degraded` or
//! `not ready`; then one line `held edge <edge>: <why>` per edge the lander holds.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::CentralMetrics;
use crate::status::{self, Status};

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<CentralMetrics>,
    pub health: Arc<Health>,
    pub status: Arc<Status>,
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
        s.metrics.render(),
    )
}

async fn ready(State(s): State<HttpState>) -> impl IntoResponse {
    let held = s.health.held();
    let (code, mut body) = match (s.health.ready(), held.is_empty()) {
        (true, true) => (StatusCode::OK, "ready\n".to_string()),
        (true, false) => (StatusCode::OK, "ready, degraded\n".to_string()),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_string()),
    };
    for (edge, why) in held {
        body.push_str(&format!("held edge {edge}: {why}\n"));
    }
    (code, body)
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
    let report = s.status.report(&s.metrics, &s.health);
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
