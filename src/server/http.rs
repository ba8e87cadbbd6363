//! The HTTP listener: health and readiness probes now; ingest and metrics build on it.

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serve HTTP until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    engine: std::sync::Arc<crate::planner::Engine>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = engine;
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(|| async { "ready\n" }));
    let shutdown = async move {
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(error = %e, "HTTP server stopped with an error");
    }
}
