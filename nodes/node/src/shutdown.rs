//! Shutdown is an argument: a cancellation token handed to every stage.
//!
//! Drain order on cancel: consumers stop fetching -> the pool finishes queued work -> the producer
//! delivers what it holds -> the final offset commit.

pub use tokio_util::sync::CancellationToken as Shutdown;

/// Cancels `token` on SIGINT or SIGTERM.
pub fn on_signals(token: Shutdown) {
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
                token.cancel();
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
        }
        token.cancel();
    });
}
