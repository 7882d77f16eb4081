//! Operator signals: cancel a task, pause or resume a queue — on every replica at once.
//!
//! A signal is one entry in the queue's signals stream (`ts:{q}:signals`, capped at about
//! 10,000 entries, fields in [`crate::signal`]); every worker follows that stream (see
//! `worker/signal_loop.rs`), so a signal reaches all replicas within ~100 ms, survives a
//! worker restart (a worker replays the stream when it starts) and needs no pub/sub
//! connection. Pausing also sets `ts:{q}:paused`, the state `stats` shows, in the same
//! transaction as the signal.
//!
//! Cancel: a queued task is skipped when a worker picks it up and counted as `cancelled`;
//! a running task has its handler's cancellation token fired (an HTTP handler's request is
//! aborted) and is acknowledged as `cancelled`, never retried. Cancelling a task that
//! already finished does nothing.
//!
//! These functions take a bare connection for the callers that have one; the operator API
//! is [`crate::inspect::Inspector`].

use crate::rdb::Conn;

use crate::error::Result;
use crate::rdb::Broker;
use crate::signal::Signal;
use crate::task::now_ms;

pub use crate::signal::SIGNALS_MAXLEN;

/// Sends `signal` to every replica of `queue`; returns its entry id.
pub async fn send(conn: &Conn, queue: &str, signal: &Signal) -> Result<String> {
    Broker::new(conn.clone())
        .send_signal(queue, signal, now_ms())
        .await
}

/// Cancels task `task_id` of `queue` (queued or running).
pub async fn cancel_task(conn: &mut Conn, queue: &str, task_id: &str) -> Result<()> {
    let s = Signal::Cancel {
        task_id: task_id.to_string(),
    };
    send(conn, queue, &s).await?;
    Ok(())
}

/// Pauses delivery of `queue` on every replica; nothing is lost, tasks wait in the stream.
pub async fn pause(conn: &mut Conn, queue: &str) -> Result<()> {
    send(conn, queue, &Signal::Pause).await?;
    Ok(())
}

/// Resumes delivery of `queue`.
pub async fn resume(conn: &mut Conn, queue: &str) -> Result<()> {
    send(conn, queue, &Signal::Resume).await?;
    Ok(())
}
