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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Fixed(Vec<String>, Result<(), String>);
    impl Health for Fixed {
        fn unhealthy(&self) -> Vec<String> {
            self.0.clone()
        }
        fn ready(&self) -> Result<(), String> {
            self.1.clone()
        }
    }

    /// Sends `parts` with pauses between them (separate TCP segments) and reads the answer.
    async fn get_in_pieces(addr: SocketAddr, parts: &[&str]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        for p in parts {
            s.write_all(p.as_bytes()).await.expect("write");
            s.flush().await.expect("flush");
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn a_request_split_across_segments_is_served() {
        let addr = start("127.0.0.1:0".parse().expect("addr"), Arc::new(Fixed(vec![], Ok(())))).await.expect("bind");
        let resp =
            get_in_pieces(addr, &["GET /met", "rics HTTP/1.1\r\nHo", "st: x\r\nConnection: close\r\n", "\r\n"]).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }

    #[tokio::test]
    async fn health_and_readiness_say_why() {
        let h =
            Fixed(vec!["tier edge: cannot fetch from t/0: down (for 3 s)".into()], Err("tier fog: starting".into()));
        let addr = start("127.0.0.1:0".parse().expect("addr"), Arc::new(h)).await.expect("bind");
        let req = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let health = get_in_pieces(addr, &[&req("/healthz")]).await;
        assert!(health.starts_with("HTTP/1.1 503"), "{health}");
        assert!(health.ends_with("tier edge: cannot fetch from t/0: down (for 3 s)\n"), "{health}");
        let ready = get_in_pieces(addr, &[&req("/readyz")]).await;
        assert!(ready.starts_with("HTTP/1.1 503") && ready.ends_with("tier fog: starting\n"), "{ready}");
        let other = get_in_pieces(addr, &[&req("/nope")]).await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    }
}
