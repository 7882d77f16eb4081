//! Operator signals: cancel a task, pause or resume a queue — on every replica at once.
//!
//! A signal is one entry in the queue's signals stream (`ts:{q}:signals`, capped at about
//! 10,000 entries); every worker follows that stream (see `worker/signal_loop.rs`), so a
//! signal reaches all replicas within ~100 ms, survives a worker restart (a worker replays
//! the stream when it starts) and needs no pub/sub connection. Pausing also sets
//! `ts:{q}:paused`, the state `stats` shows.
//!
//! Cancel: a queued task is skipped when a worker picks it up and counted as `cancelled`;
//! a running task has its handler's cancellation token fired (an HTTP handler's request is
//! aborted) and is acknowledged as `cancelled`, never retried. Cancelling a task that
//! already finished does nothing.

use redis::aio::ConnectionManager;

use crate::error::Result;
use crate::keys::QueueKeys;
use crate::task::now_ms;

/// Signals kept in the stream.
pub const SIGNALS_MAXLEN: usize = 10_000;

async fn send(
    conn: &mut ConnectionManager,
    keys: &QueueKeys,
    kind: &str,
    task_id: Option<&str>,
) -> Result<String> {
    let mut c = redis::cmd("XADD");
    c.arg(&keys.signals)
        .arg("MAXLEN")
        .arg("~")
        .arg(SIGNALS_MAXLEN)
        .arg("*")
        .arg("kind")
        .arg(kind)
        .arg("at")
        .arg(now_ms());
    if let Some(id) = task_id {
        c.arg("task_id").arg(id);
    }
    Ok(c.query_async(conn).await?)
}

/// Cancels task `task_id` of `queue` (queued or running).
pub async fn cancel_task(conn: &mut ConnectionManager, queue: &str, task_id: &str) -> Result<()> {
    send(conn, &QueueKeys::new(queue), "cancel", Some(task_id)).await?;
    Ok(())
}

/// Pauses delivery of `queue` on every replica; nothing is lost, tasks wait in the stream.
pub async fn pause(conn: &mut ConnectionManager, queue: &str) -> Result<()> {
    let k = QueueKeys::new(queue);
    redis::cmd("SET")
        .arg(&k.paused)
        .arg(now_ms())
        .query_async::<()>(conn)
        .await?;
    send(conn, &k, "pause", None).await?;
    Ok(())
}

/// Resumes delivery of `queue`.
pub async fn resume(conn: &mut ConnectionManager, queue: &str) -> Result<()> {
    let k = QueueKeys::new(queue);
    redis::cmd("DEL")
        .arg(&k.paused)
        .query_async::<()>(conn)
        .await?;
    send(conn, &k, "resume", None).await?;
    Ok(())
}
