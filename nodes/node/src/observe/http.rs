//! The node's HTTP endpoint: `/metrics` (Prometheus text), `/healthz` and `/readyz`.
//!
//! Served by axum (hyper underneath): requests split across TCP segments, keep-alive, slow or
//! broken clients and failed `accept()`s are the server's business, not ours. Concurrent requests
//! are bounded so a flood of scrapers cannot grow memory without limit.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// At most this many requests are served at once; more wait for a slot.
pub const MAX_CONCURRENT_REQUESTS: usize = 64;

/// Health of the node: what keeps it from making progress, and whether every tier is running.
pub trait Health: Send + Sync + 'static {
    fn unhealthy(&self) -> Vec<String>;
    fn ready(&self) -> Result<(), String>;
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

async fn metrics() -> Response {
    text(StatusCode::OK, super::metrics::install().render())
}

async fn healthz(State(health): State<Arc<dyn Health>>) -> Response {
    match health.unhealthy() {
        v if v.is_empty() => text(StatusCode::OK, "ok\n".into()),
        v => text(StatusCode::SERVICE_UNAVAILABLE, v.join("\n") + "\n"),
    }
}

async fn readyz(State(health): State<Arc<dyn Health>>) -> Response {
    match health.ready() {
        Ok(()) => text(StatusCode::OK, "ready\n".into()),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why + "\n"),
    }
}

pub fn router(health: Arc<dyn Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { text(StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n".into()) })
        .with_state(health)
        .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_CONCURRENT_REQUESTS))
}

/// Binds now (a taken port is a start-up error naming the address), serves in the background.
pub async fn start(addr: SocketAddr, health: Arc<dyn Health>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(health);
    tokio::spawn(async move {
        // axum's serve logs and backs off on accept errors (e.g. out of file descriptors)
        // instead of ending; it only returns if the listener itself is gone.
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics endpoint {local} stopped: {e}");
        }
    });
    tracing::info!("metrics on http://{local}/metrics");
    Ok(local)
}
