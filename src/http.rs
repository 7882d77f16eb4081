//! The HTTP server of a taskstream process: `/metrics` (Prometheus text), `/health`
//! (the process is alive: always 200 while it can answer) and `/ready` (200 only while
//! Redis answers, the consumer groups exist and the process is not shutting down; 503 with
//! the reason otherwise — so a load balancer or Kubernetes stops routing to it).

use std::net::SocketAddr;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

/// The router (exposed for tests).
pub fn router(handle: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let h = handle.clone();
                async move {
                    h.run_upkeep();
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        h.render(),
                    )
                }
            }),
        )
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(|| async {
                match crate::health::not_ready_reason() {
                    None => (StatusCode::OK, "ready\n".to_string()),
                    Some(r) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {r}\n")),
                }
            }),
        )
}

/// Binds `addr` and serves until `stop` fires. Returns the bound address (useful with
/// port 0) once listening.
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(handle.clone());
    // Histograms keep raw samples until upkeep folds them into buckets: run it on a timer
    // so memory stays flat even when nothing scrapes /metrics.
    let upkeep_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = upkeep_stop.cancelled() => break,
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => handle.run_upkeep(),
            }
        }
    });
    let j = tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    tracing::info!(addr = %local, "http server listening (/metrics, /health, /ready)");
    Ok((local, j))
}
