//! The acker: settles finished deliveries in batches (asynq's processor does one round trip
//! per task; batching is where most of our throughput comes from).
//!
//! Every delivery's settlement is atomic on its own: plain successes of a lane go as one
//! `MULTI XACK … XDEL … EXEC`, everything else (retry, dead letter, reply) as one run of
//! `settle.lua`. All of a batch travels in one pipelined round trip.
//!
//! A failed round trip is retried with exponential backoff and jitter (`backon`). Both forms
//! are idempotent (XACK of an acknowledged entry is a no-op, and `settle.lua` does nothing
//! for an entry no longer pending), so resending after a reply was lost cannot apply an
//! outcome twice. After a retry the batch is verified against `XPENDING`. If Redis stays
//! away past the retry budget the entries are left pending: recovery re-delivers them, so
//! a lost ACK costs a duplicate execution, never a lost task.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use redis::aio::ConnectionManager;
use redis::{Pipeline, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::keys::{Lane, QueueKeys};
use crate::metrics as m;
use crate::rdb;

/// What to do with a finished delivery.
#[derive(Debug)]
pub(crate) enum Action {
    /// Succeeded: ACK and delete.
    Ok,
    /// Failed, try again: ACK, delete, schedule `member` at `due_ms`.
    Retry {
        /// When the retry is due (Unix ms).
        due_ms: u64,
        /// Scheduled-set member (task JSON with lane).
        member: String,
    },
    /// Give up: ACK, delete, add these fields to the dead-letter stream.
    Dead(Vec<(Vec<u8>, Vec<u8>)>),
    /// Not for this consumer or already gone: ACK (and delete) only.
    Skip,
    /// Cancelled by an operator: ACK and delete, counted as cancelled.
    Cancelled,
    /// Served by another pool: ACK, delete, and add these fields to `target`.
    Move {
        /// Target stream.
        target: String,
        /// The entry's fields.
        fields: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

/// A reply to post atomically with the settlement.
#[derive(Debug)]
pub(crate) struct Reply {
    /// Reply stream key.
    pub stream: String,
    /// Fields.
    pub fields: Vec<(&'static str, String)>,
}

/// One delivery's outcome.
#[derive(Debug)]
pub(crate) struct Settle {
    /// Lane (stream) of the entry.
    pub lane: Lane,
    /// Entry id.
    pub entry_id: String,
    /// What to do.
    pub action: Action,
    /// Reply to post, if the task asked for one.
    pub reply: Option<Reply>,
    /// A recovered entry: its start marks are dropped with the settlement.
    pub recovered: bool,
}

impl Settle {
    /// True when the settlement is a plain ACK (+ delete) with nothing else to write: these
    /// go in the lane's MULTI/EXEC batch; everything else goes through `settle.lua`.
    fn plain_ack(&self) -> bool {
        matches!(self.action, Action::Ok | Action::Skip | Action::Cancelled) && self.reply.is_none()
    }
}

/// Static facts the acker needs.
pub(crate) struct AckerCtx {
    /// Queue keys.
    pub keys: QueueKeys,
    /// Group.
    pub group: String,
    /// XDEL on ACK.
    pub delete_on_ack: bool,
    /// Most settlements per round trip.
    pub batch: usize,
    /// The queue's runtime, whose `held` set is cleared once a batch is settled.
    pub held: std::sync::Weak<super::runtime::QueueRuntime>,
}

fn release(ctx: &AckerCtx, batch: &[Settle]) {
    if let Some(rt) = ctx.held.upgrade() {
        let mut held = rt.held.lock().expect("poisoned");
        for s in batch {
            held.remove(&s.entry_id);
        }
    }
}

fn build(ctx: &AckerCtx, batch: &[Settle]) -> Pipeline {
    let mut p = Pipeline::with_capacity(batch.len() + 8);
    for lane in [Lane::Bulk, Lane::Express] {
        let ids: Vec<&str> = batch
            .iter()
            .filter(|s| s.lane == lane && s.plain_ack())
            .map(|s| s.entry_id.as_str())
            .collect();
        if ids.is_empty() {
            continue;
        }
        let stream = ctx.keys.lane_stream(lane);
        p.cmd("MULTI").ignore();
        p.cmd("XACK").arg(stream).arg(&ctx.group).arg(&ids).ignore();
        if ctx.delete_on_ack {
            p.cmd("XDEL").arg(stream).arg(&ids).ignore();
        }
        p.cmd("EXEC").ignore();
    }
    // Running totals for `stats --watch` (not part of any task's state transition).
    let (mut done, mut retried, mut dead, mut cancelled) = (0u64, 0u64, 0u64, 0u64);
    for s in batch {
        match s.action {
            Action::Ok => done += 1,
            Action::Retry { .. } => retried += 1,
            Action::Dead(_) => dead += 1,
            Action::Cancelled => cancelled += 1,
            Action::Skip | Action::Move { .. } => {}
        }
    }
    let recovered: Vec<&str> = batch
        .iter()
        .filter(|s| s.recovered)
        .map(|s| s.entry_id.as_str())
        .collect();
    if !recovered.is_empty() {
        p.cmd("HDEL").arg(&ctx.keys.starts).arg(&recovered).ignore();
    }
    for (f, n) in [
        ("done", done),
        ("retried", retried),
        ("dead", dead),
        ("cancelled", cancelled),
    ] {
        if n > 0 {
            p.cmd("HINCRBY")
                .arg(&ctx.keys.counters)
                .arg(f)
                .arg(n)
                .ignore();
        }
    }
    for s in batch {
        if s.plain_ack() {
            continue;
        }
        let stream = ctx.keys.lane_stream(s.lane);
        let reply_stream = s
            .reply
            .as_ref()
            .map(|r| r.stream.as_str())
            .unwrap_or(stream);
        let (action, due, member): (&[u8], String, &[u8]) = match &s.action {
            Action::Ok => (b"ok", String::new(), b""),
            Action::Skip | Action::Cancelled => (b"skip", String::new(), b""),
            Action::Retry { due_ms, member } => (b"retry", due_ms.to_string(), member.as_bytes()),
            Action::Dead(_) => (b"dead", String::new(), b""),
            Action::Move { .. } => (b"move", String::new(), b""),
        };
        let mut args: Vec<Vec<u8>> = vec![
            ctx.group.clone().into_bytes(),
            s.entry_id.clone().into_bytes(),
            if ctx.delete_on_ack {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            },
            action.to_vec(),
            due.into_bytes(),
            member.to_vec(),
        ];
        match &s.action {
            Action::Dead(fields) | Action::Move { fields, .. } => {
                args.push((fields.len() * 2).to_string().into_bytes());
                for (k, v) in fields {
                    args.push(k.clone());
                    args.push(v.clone());
                }
            }
            _ => args.push(b"0".to_vec()),
        }
        match &s.reply {
            Some(r) => {
                args.push((r.fields.len() * 2).to_string().into_bytes());
                for (k, v) in &r.fields {
                    args.push(k.as_bytes().to_vec());
                    args.push(v.clone().into_bytes());
                }
            }
            None => args.push(b"0".to_vec()),
        }
        p.add_command(rdb::evalsha(
            rdb::ScriptId::Settle,
            &[
                stream,
                &ctx.keys.scheduled,
                match &s.action {
                    Action::Move { target, .. } => target.as_str(),
                    _ => ctx.keys.dlq.as_str(),
                },
                reply_stream,
            ],
            args,
        ))
        .ignore();
    }
    p
}

/// Entries of `batch` still pending for the group (should be none after a settle).
async fn still_pending(
    conn: &mut ConnectionManager,
    ctx: &AckerCtx,
    batch: &[Settle],
) -> redis::RedisResult<usize> {
    let mut p = Pipeline::with_capacity(batch.len());
    for s in batch {
        p.cmd("XPENDING")
            .arg(ctx.keys.lane_stream(s.lane))
            .arg(&ctx.group)
            .arg(&s.entry_id)
            .arg(&s.entry_id)
            .arg(1);
    }
    let r: Vec<Value> = p.query_async(conn).await?;
    Ok(r.iter()
        .filter(|v| matches!(v, Value::Array(a) if !a.is_empty()))
        .count())
}

/// Sends one batch, retrying with backoff; gives up (leaving entries pending) after
/// `max_times` failures.
async fn flush(
    conn: &ConnectionManager,
    ctx: &AckerCtx,
    batch: &[Settle],
    max_times: usize,
) -> bool {
    let pipe = build(ctx, batch);
    let q = ctx.keys.queue.clone();
    let mut retried = false;
    let attempt = || async {
        let mut c = conn.clone();
        rdb::query_pipe::<()>(&mut c, &pipe).await
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_secs(2))
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(max_times);
    let r = attempt
        .retry(backoff)
        .notify(|e, d| {
            retried = true;
            crate::health::set_redis_up(false);
            metrics::counter!(m::ACK_RETRIES_TOTAL, "queue" => q.clone()).increment(1);
            metrics::counter!(m::ACK_TOTAL, "queue" => q.clone(), "result" => "error").increment(1);
            tracing::warn!(queue = %q, entries = batch.len(), retry_in_ms = d.as_millis() as u64, error = %e, "ack failed, retrying");
        })
        .await;
    match r {
        Ok(()) => {
            crate::health::set_redis_up(true);
            metrics::counter!(m::ACK_TOTAL, "queue" => q.clone(), "result" => "ok").increment(1);
            if retried {
                let mut c = conn.clone();
                match still_pending(&mut c, ctx, batch).await {
                    Ok(0) => {
                        tracing::info!(queue = %q, entries = batch.len(), "ack confirmed against XPENDING after retry")
                    }
                    Ok(n) => {
                        tracing::error!(queue = %q, entries = n, "entries still pending after ack; left for recovery");
                        metrics::counter!(m::ACK_FAILURES_TOTAL, "queue" => q).increment(n as u64);
                    }
                    Err(e) => {
                        tracing::warn!(queue = %q, error = %e, "could not verify ack against XPENDING")
                    }
                }
            }
            true
        }
        Err(e) => {
            metrics::counter!(m::ACK_FAILURES_TOTAL, "queue" => q.clone())
                .increment(batch.len() as u64);
            tracing::error!(queue = %q, entries = batch.len(), error = %e, "ack gave up; entries stay pending and will be recovered (possible duplicate execution)");
            false
        }
    }
}

/// Runs until the channel closes or `stop` fires; on `stop` it drains what is queued.
pub(crate) async fn run(
    ctx: Arc<AckerCtx>,
    conn: ConnectionManager,
    mut rx: mpsc::UnboundedReceiver<Settle>,
    stop: CancellationToken,
) {
    let mut batch: Vec<Settle> = Vec::with_capacity(ctx.batch);
    loop {
        let first = tokio::select! {
            biased;
            s = rx.recv() => s,
            _ = stop.cancelled() => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        while batch.len() < ctx.batch {
            match rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        // While running, keep trying for ~a minute; recovery takes over after that.
        flush(&conn, &ctx, &batch, 12).await;
        release(&ctx, &batch);
        batch.clear();
    }
    // Drain whatever finished before shutdown, with a short retry budget.
    while let Ok(s) = rx.try_recv() {
        batch.push(s);
        if batch.len() >= ctx.batch {
            flush(&conn, &ctx, &batch, 4).await;
            release(&ctx, &batch);
            batch.clear();
        }
    }
    if !batch.is_empty() {
        flush(&conn, &ctx, &batch, 4).await;
        release(&ctx, &batch);
    }
}
