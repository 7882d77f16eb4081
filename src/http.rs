//! The HTTP server of a taskstream process: `/metrics` (Prometheus text), `/health`
//! (the process is alive: always 200 while it can answer) and `/ready` (200 only while
//! Redis answers, refuses none of the commands the process needs, the consumer groups
//! exist and the process is not shutting down; 503 with the reason otherwise — so a load
//! balancer or Kubernetes stops routing to it). A refused command (a missing ACL
//! permission) is named on its own line with the `ACL SETUSER` that grants it. The same
//! server serves the runbooks at `/runbooks` and `/runbooks/<Alert>`, unauthenticated
//! ([`crate::runbooks`]), so an alert's `runbook_url` can point at any process.
//!
//! Connections are served by hyper directly rather than `axum::serve`, which sets no
//! header-read timeout: 500 half-sent requests stayed open indefinitely (issue 13).
//! Here a connection that has not sent a complete request head within
//! `http.header_read_timeout_ms` is closed (also when it sends nothing at all), and at
//! most `http.max_connections` are open at once: a new connection beyond that closes the
//! oldest one, so idle connections can hold the server's slots only until someone else
//! needs them, and a `/ready` probe (a whole request at once) is always served.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

/// The router (exposed for tests): `/metrics`, `/health`, `/ready` and the runbooks.
pub fn router(handle: PrometheusHandle) -> Router {
    Router::new()
        .merge(crate::runbooks::router())
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
                match crate::health::not_ready_message() {
                    None => (StatusCode::OK, "ready\n".to_string()),
                    Some(text) => (StatusCode::SERVICE_UNAVAILABLE, text),
                }
            }),
        )
}

/// Open connections, oldest first: (id, the token that closes it).
type Open = Arc<Mutex<VecDeque<(u64, CancellationToken)>>>;

/// Serves `listener` with `app` until `stop` fires, with the limits of the module docs.
pub(crate) async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: Router,
    stop: CancellationToken,
    header_timeout: Duration,
    max_connections: usize,
) {
    let open: Open = Arc::default();
    let mut next_id = 0u64;
    let conns = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "http server cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let close = CancellationToken::new();
        let id = next_id;
        next_id += 1;
        {
            let mut o = open.lock().expect("poisoned");
            while o.len() >= max_connections.max(1) {
                if let Some((_, oldest)) = o.pop_front() {
                    oldest.cancel();
                }
            }
            o.push_back((id, close.clone()));
        }
        let app = app.clone();
        let open = open.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(io, svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = close.cancelled() => {}
                _ = stop.cancelled() => {
                    // Let a request in progress finish; idle connections end at once.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(header_timeout, conn.as_mut()).await;
                }
            }
            open.lock().expect("poisoned").retain(|(i, _)| *i != id);
        });
    }
    conns.close();
    conns.wait().await;
}

/// Binds `addr` and serves until `stop` fires, with the default limits of
/// [`crate::config::HttpConfig`]. Returns the bound address (useful with port 0) once
/// listening.
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_with(addr, handle, stop, &crate::config::HttpConfig::default()).await
}

/// [`serve`] with the header-read timeout and connection cap of `cfg`.
pub async fn serve_with(
    addr: SocketAddr,
    handle: PrometheusHandle,
    stop: CancellationToken,
    cfg: &crate::config::HttpConfig,
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
    let j = tokio::spawn(serve_connections(
        listener,
        app,
        stop,
        Duration::from_millis(cfg.header_read_timeout_ms),
        cfg.max_connections,
    ));
    tracing::info!(addr = %local, "http server listening (/metrics, /health, /ready, /runbooks)");
    Ok((local, j))
}
