//! What the long-running commands (`worker`, `orchestrator`) share: the shutdown token
//! (signals and `--run-for`), the HTTP server, and the handlers the binary serves.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::Registry;

/// First SIGINT/SIGTERM cancels `token` (graceful); a second one exits at once.
fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot install SIGTERM handler");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("signal received: shutting down gracefully (send it again to exit at once)");
        token.cancel();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::warn!(
            "second signal: exiting now; running tasks stay pending and will be recovered"
        );
        std::process::exit(130);
    });
}

/// The token a long-running command stops on: SIGINT/SIGTERM, or `--run-for` elapsing.
pub(crate) fn shutdown_token(run_for: Option<Duration>) -> CancellationToken {
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    if let Some(d) = run_for {
        let t = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            t.cancel();
        });
    }
    shutdown
}

/// The handlers the binary serves: built-ins (when enabled) and configured HTTP handlers.
pub(crate) fn registry(cfg: &Config, conn: crate::rdb::Conn) -> anyhow::Result<Registry> {
    let mut reg = Registry::new();
    if cfg.worker.builtin_handlers {
        crate::builtin::register(&mut reg, conn.clone());
        crate::saga::demo_handlers::register(&mut reg, conn);
    }
    if !cfg.http_handlers.is_empty() {
        register_http_handlers(cfg, &mut reg)?;
    }
    Ok(reg)
}

#[cfg(feature = "http-handler")]
fn register_http_handlers(cfg: &Config, reg: &mut Registry) -> anyhow::Result<()> {
    use anyhow::Context;
    let client = crate::http_handler::client();
    for h in &cfg.http_handlers {
        // The worker enforces each task's own time limit; the request limit defaults to
        // the longest queue timeout so it never cuts a task shorter than its queue allows.
        let default_timeout = Duration::from_millis(
            cfg.queues
                .iter()
                .map(|q| q.timeout_ms)
                .max()
                .unwrap_or(30_000),
        );
        let handler = crate::http_handler::HttpHandler::new(h, default_timeout, client.clone())
            .with_context(|| format!("http handler for task type {:?}", h.task_type))?;
        reg.register(h.task_type.clone(), handler);
    }
    Ok(())
}

#[cfg(not(feature = "http-handler"))]
fn register_http_handlers(cfg: &Config, _reg: &mut Registry) -> anyhow::Result<()> {
    anyhow::bail!(
        "the configuration has {} [[http_handlers]] but this binary was built without the \
         `http-handler` feature; rebuild with `--features http-handler` or remove them",
        cfg.http_handlers.len()
    )
}

/// Starts `/metrics`, `/health` and `/ready` on `http.listen` (nothing when it is "").
#[cfg(feature = "http")]
pub(crate) async fn start_http(cfg: &Config, stop: &CancellationToken) -> anyhow::Result<()> {
    use anyhow::Context;
    if cfg.http.listen.is_empty() {
        return Ok(());
    }
    let addr: std::net::SocketAddr = cfg.http.listen.parse().context("http.listen")?;
    let handle = crate::metrics::install();
    crate::http::serve_with(addr, handle, stop.clone(), &cfg.http)
        .await
        .with_context(|| {
            format!("cannot listen on {addr} (http.listen); set another address or \"\" to disable")
        })?;
    Ok(())
}

/// Without the `http` feature there is no server: say so when one is configured.
#[cfg(not(feature = "http"))]
pub(crate) async fn start_http(cfg: &Config, _stop: &CancellationToken) -> anyhow::Result<()> {
    if !cfg.http.listen.is_empty() {
        tracing::warn!(
            listen = %cfg.http.listen,
            "this binary was built without the `http` feature: no /metrics, /health or /ready \
             (rebuild with `--features http`, or set http.listen = \"\" to silence this)"
        );
    }
    Ok(())
}
