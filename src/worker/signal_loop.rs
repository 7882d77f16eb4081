//! Follows the queue's signals stream (see [`crate::signals`]) and the pause flag, every
//! 100 ms, on the multiplexed connection (XREAD without BLOCK never stalls it).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Value;
use tokio_util::sync::CancellationToken;

use super::runtime::QueueRuntime;

/// Reads signals once from `last`; returns the new last id. `first` records this replica's
/// initial pause state in `ts:{q}:pause_acks` (later polls record only changes).
pub(crate) async fn poll_once(
    rt: &QueueRuntime,
    conn: &mut ConnectionManager,
    last: &str,
    first: bool,
) -> redis::RedisResult<String> {
    let mut p = redis::Pipeline::new();
    p.cmd("EXISTS").arg(&rt.keys.paused);
    p.cmd("XREAD")
        .arg("COUNT")
        .arg(1000)
        .arg("STREAMS")
        .arg(&rt.keys.signals)
        .arg(last);
    let (paused, v): (u64, Value) = p.query_async(conn).await?;
    let now_paused = paused > 0;
    let was = rt.paused.swap(now_paused, Ordering::Relaxed);
    if was != now_paused || first {
        // Tell operators (and tests) that this replica applied the state.
        let state = if now_paused { "paused" } else { "running" };
        redis::cmd("HSET")
            .arg(&rt.keys.pause_acks)
            .arg(&rt.consumer)
            .arg(state)
            .query_async::<()>(conn)
            .await?;
    }
    if was != now_paused {
        tracing::info!(queue = %rt.cfg.name, paused = now_paused, "queue delivery {}", if now_paused { "paused" } else { "resumed" });
        metrics::gauge!(crate::metrics::PAUSED, "queue" => rt.cfg.name.clone())
            .set(if now_paused { 1.0 } else { 0.0 });
    }
    let mut last = last.to_string();
    for e in crate::rdb::parse_read_reply(v) {
        last = e.id.clone();
        let Some(fields) = e.fields else { continue };
        let get = |k: &[u8]| {
            fields
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        if get(b"kind").as_deref() == Some("cancel") {
            if let Some(id) = get(b"task_id") {
                // Record first, then fire: the handler may return at once, and its outcome
                // must already read as cancelled.
                rt.cancelled.lock().expect("poisoned").insert(id.clone());
                let running = rt.cancel_running(&id);
                tracing::info!(queue = %rt.cfg.name, task_id = %id, running, "cancel signal");
            }
        }
    }
    Ok(last)
}

/// Reloads the type → pool routes of the queue.
pub(crate) async fn refresh_routes(
    rt: &QueueRuntime,
    conn: &mut ConnectionManager,
) -> redis::RedisResult<()> {
    let routes: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&rt.keys.routes)
        .query_async(conn)
        .await?;
    *rt.routes.lock().expect("poisoned") = routes;
    Ok(())
}

/// Runs until `stop` fires, following the signals after `last` (the id the start-up read
/// reached, so the history is not replayed twice).
pub(crate) async fn run(
    rt: Arc<QueueRuntime>,
    conn: ConnectionManager,
    last: String,
    stop: CancellationToken,
) {
    let mut conn = conn;
    let mut last = last;
    let mut tick: u64 = 0;
    while !stop.is_cancelled() {
        match poll_once(&rt, &mut conn, &last, false).await {
            Ok(l) => last = l,
            Err(e) => tracing::debug!(queue = %rt.cfg.name, error = %e, "signals: redis error"),
        }
        tick += 1;
        if tick.is_multiple_of(10) {
            if let Err(e) = refresh_routes(&rt, &mut conn).await {
                tracing::debug!(queue = %rt.cfg.name, error = %e, "routes: redis error");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}
