//! Follows the queue's signals stream (see [`crate::signals`]) and the pause flag, every
//! 100 ms, on the multiplexed connection (XREAD without BLOCK never stalls it).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::runtime::QueueRuntime;
use crate::signal::Signal;

/// Reads signals once from `last`; returns the new last id. `first` records this replica's
/// initial pause state in `ts:{q}:pause_acks` (later polls record only changes).
pub(crate) async fn poll_once(rt: &QueueRuntime, last: &str, first: bool) -> crate::Result<String> {
    let (now_paused, entries) = rt.broker.poll_signals(&rt.keys, last).await?;
    // Close the gate before reporting `paused`: once the ack is written, nothing starts.
    let changed = if now_paused {
        rt.pause.close().await
    } else {
        rt.pause.open()
    };
    if changed || first {
        // Tell operators (and tests) that this replica applied the state.
        rt.broker
            .ack_pause_state(&rt.keys, &rt.consumer, now_paused)
            .await?;
    }
    if changed {
        tracing::info!(queue = %rt.cfg.name, paused = now_paused, "queue delivery {}", if now_paused { "paused" } else { "resumed" });
        metrics::gauge!(crate::metrics::PAUSED, "queue" => rt.cfg.name.clone())
            .set(if now_paused { 1.0 } else { 0.0 });
    }
    let mut last = last.to_string();
    for e in entries {
        last = e.id.clone();
        // Pause and resume entries are an audit trail (who paused when); the state itself
        // is the `paused` key read above, so a replica that starts later still sees it.
        match Signal::decode(e.fields.as_deref().unwrap_or_default()) {
            Ok(Signal::Cancel { task_id }) => {
                // Record first, then fire: the handler may return at once, and its outcome
                // must already read as cancelled.
                rt.cancels.insert(&task_id);
                let running = rt.tracked.cancel_task(&task_id);
                tracing::info!(queue = %rt.cfg.name, task_id = %task_id, running, "cancel signal");
            }
            Ok(Signal::Pause | Signal::Resume) => {}
            Err(err) => {
                tracing::warn!(queue = %rt.cfg.name, entry_id = %e.id, error = %err, "ignoring a signal this worker cannot read");
            }
        }
    }
    Ok(last)
}

/// Reloads the type → pool routes of the queue.
pub(crate) async fn refresh_routes(rt: &QueueRuntime) -> crate::Result<()> {
    let mut routes = rt
        .broker
        .routes_of(std::slice::from_ref(&rt.cfg.name))
        .await?;
    *rt.routes.lock().expect("poisoned") = routes.pop().unwrap_or_default();
    Ok(())
}

/// Runs until `stop` fires, following the signals after `last` (the id the start-up read
/// reached, so the history is not replayed twice).
pub(crate) async fn run(rt: Arc<QueueRuntime>, last: String, stop: CancellationToken) {
    let mut last = last;
    let mut tick: u64 = 0;
    while !stop.is_cancelled() {
        match poll_once(&rt, &last, false).await {
            Ok(l) => last = l,
            Err(e) => tracing::debug!(queue = %rt.cfg.name, error = %e, "signals: redis error"),
        }
        tick += 1;
        if tick.is_multiple_of(10) {
            if let Err(e) = refresh_routes(&rt).await {
                tracing::debug!(queue = %rt.cfg.name, error = %e, "routes: redis error");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}
