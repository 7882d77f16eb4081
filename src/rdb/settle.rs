//! Settling deliveries: the one Redis operation that ends a delivery (`settle.lua`, or a
//! `MULTI XACK … XDEL … EXEC` for plain successes), for a whole batch in one round trip.
//!
//! Every delivery's settlement is atomic on its own. Both forms are idempotent (XACK of an
//! acknowledged entry is a no-op, and `settle.lua` does nothing for an entry no longer
//! pending), so a batch resent after its reply was lost cannot apply an outcome twice.

use redis::{Pipeline, Value};

use super::{Broker, ScriptId};
use crate::error::Result;
use crate::keys::{Lane, QueueKeys};
use crate::results::RecordWrite;
use crate::task::Fields;

/// What a settlement does with its delivery.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SettleAction {
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
    Dead(Fields),
    /// Not for this consumer or already gone: ACK (and delete) only.
    Skip,
    /// Cancelled by an operator: ACK and delete, counted as cancelled.
    Cancelled,
    /// Served by another pool: ACK, delete, and add these fields to `target`.
    Move {
        /// Target stream.
        target: String,
        /// The entry's fields.
        fields: Fields,
    },
}

/// A reply stream entry to add atomically with the settlement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReplyEntry {
    /// Reply stream key.
    pub stream: String,
    /// Encoded fields (see `crate::reply`).
    pub fields: Vec<(&'static str, String)>,
}

/// One delivery's settlement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settlement {
    /// Lane (stream) of the entry.
    pub lane: Lane,
    /// Entry id.
    pub entry_id: String,
    /// What to do.
    pub action: SettleAction,
    /// Reply to post, if the task asked for one.
    pub reply: Option<ReplyEntry>,
    /// A recovered entry: its start marks are dropped with the settlement.
    pub recovered: bool,
    /// The `settle` span, ended by the settler once Redis has the batch (boxed: `None`
    /// costs one word on the hot path when spans are not exported).
    pub trace: Option<Box<crate::telemetry::Span>>,
    /// How the task's record ends this run, on a queue that keeps results
    /// ([`crate::results`]); written right after the ACK, in the same round trip.
    pub record: Option<Box<RecordWrite>>,
    /// The per-key lease the task holds ([`crate::keylimit`]), given back right after
    /// the ACK, in the same round trip.
    pub lease: Option<Box<super::keylimit::LeaseRelease>>,
}

impl Settlement {
    /// True when the settlement is a plain ACK (+ delete) with nothing else to write: these
    /// go in the lane's MULTI/EXEC batch; everything else goes through `settle.lua`.
    pub(crate) fn plain_ack(&self) -> bool {
        matches!(
            self.action,
            SettleAction::Ok | SettleAction::Skip | SettleAction::Cancelled
        ) && self.reply.is_none()
    }
}

/// Where a batch settles: the queue's keys, the group and whether ACK deletes the entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SettleScope<'a> {
    /// Keys of the queue (pool streams when the reader is a pool).
    pub keys: &'a QueueKeys,
    /// Consumer group.
    pub group: &'a str,
    /// XDEL entries on ACK (false on fan-out queues: trimmed behind the slowest group).
    pub delete_on_ack: bool,
}

/// The pipeline of one batch: the records' `running` and progress writes (`notes`, sent
/// before the batch's settlements, so they can never land after them), the plain ACKs per
/// lane in MULTI/EXEC, the counters, `settle.lua` for the rest, then the ending records.
fn build(scope: SettleScope<'_>, notes: &[RecordWrite], batch: &[Settlement]) -> Pipeline {
    let keys = scope.keys;
    let mut p = Pipeline::with_capacity(batch.len() + 8 + notes.len() * 2);
    for n in notes {
        super::results::append_record(&mut p, n);
    }
    for lane in [Lane::Bulk, Lane::Express] {
        let ids: Vec<&str> = batch
            .iter()
            .filter(|s| s.lane == lane && s.plain_ack())
            .map(|s| s.entry_id.as_str())
            .collect();
        if ids.is_empty() {
            continue;
        }
        let stream = keys.lane_stream(lane);
        p.cmd("MULTI").ignore();
        p.cmd("XACK")
            .arg(stream)
            .arg(scope.group)
            .arg(&ids)
            .ignore();
        if scope.delete_on_ack {
            p.cmd("XDEL").arg(stream).arg(&ids).ignore();
        }
        p.cmd("EXEC").ignore();
    }
    // Running totals for `stats --watch` (not part of any task's state transition).
    let (mut done, mut retried, mut dead, mut cancelled) = (0u64, 0u64, 0u64, 0u64);
    for s in batch {
        match s.action {
            SettleAction::Ok => done += 1,
            SettleAction::Retry { .. } => retried += 1,
            SettleAction::Dead(_) => dead += 1,
            SettleAction::Cancelled => cancelled += 1,
            SettleAction::Skip | SettleAction::Move { .. } => {}
        }
    }
    let recovered: Vec<&str> = batch
        .iter()
        .filter(|s| s.recovered)
        .map(|s| s.entry_id.as_str())
        .collect();
    if !recovered.is_empty() {
        p.cmd("HDEL").arg(&keys.starts).arg(&recovered).ignore();
    }
    for (f, n) in [
        ("done", done),
        ("retried", retried),
        ("dead", dead),
        ("cancelled", cancelled),
    ] {
        if n > 0 {
            p.cmd("HINCRBY").arg(&keys.counters).arg(f).arg(n).ignore();
        }
    }
    for s in batch.iter().filter(|s| !s.plain_ack()) {
        let stream = keys.lane_stream(s.lane);
        let reply_stream = s
            .reply
            .as_ref()
            .map(|r| r.stream.as_str())
            .unwrap_or(stream);
        let (action, due, member): (&[u8], String, &[u8]) = match &s.action {
            SettleAction::Ok => (b"ok", String::new(), b""),
            SettleAction::Skip | SettleAction::Cancelled => (b"skip", String::new(), b""),
            SettleAction::Retry { due_ms, member } => {
                (b"retry", due_ms.to_string(), member.as_bytes())
            }
            SettleAction::Dead(_) => (b"dead", String::new(), b""),
            SettleAction::Move { .. } => (b"move", String::new(), b""),
        };
        let mut args: Vec<&[u8]> = vec![
            scope.group.as_bytes(),
            s.entry_id.as_bytes(),
            if scope.delete_on_ack { b"1" } else { b"0" },
            action,
            due.as_bytes(),
            member,
        ];
        let nd;
        match &s.action {
            SettleAction::Dead(fields) | SettleAction::Move { fields, .. } => {
                nd = (fields.len() * 2).to_string();
                args.push(nd.as_bytes());
                for (k, v) in fields {
                    args.push(k);
                    args.push(v);
                }
            }
            _ => args.push(b"0"),
        }
        let nr;
        match &s.reply {
            Some(r) => {
                nr = (r.fields.len() * 2).to_string();
                args.push(nr.as_bytes());
                for (k, v) in &r.fields {
                    args.push(k.as_bytes());
                    args.push(v.as_bytes());
                }
            }
            None => args.push(b"0"),
        }
        let third = match &s.action {
            SettleAction::Move { target, .. } => target.as_str(),
            _ => keys.dlq.as_str(),
        };
        p.add_command(super::evalsha(
            ScriptId::Settle,
            &[stream, &keys.scheduled, third, reply_stream],
            args,
        ))
        .ignore();
    }
    for r in batch.iter().filter_map(|s| s.lease.as_deref()) {
        super::keylimit::append_release(&mut p, keys, r);
    }
    for r in batch.iter().filter_map(|s| s.record.as_deref()) {
        super::results::append_record(&mut p, r);
    }
    p
}

impl Broker {
    /// Settles a batch of deliveries in one pipelined round trip (each settlement atomic on
    /// its own; resending the same batch is harmless).
    pub(crate) async fn settle(
        &self,
        scope: SettleScope<'_>,
        notes: &[RecordWrite],
        batch: &[Settlement],
    ) -> Result<()> {
        let detached = self.post_foreign_replies(scope, batch).await?;
        let batch = detached.as_deref().unwrap_or(batch);
        let mut p = build(scope, notes, batch);
        match self.wait {
            None => self.pipe(&p).await,
            Some(w) => {
                p.add_command(w.cmd());
                let (got,): (u64,) = self.pipe(&p).await?;
                self.judge_settle(w, got, scope);
                Ok(())
            }
        }
    }

    /// On a Redis Cluster, posts the replies of `batch` whose stream is on another slot
    /// than the task's (a raw producer's `reply_to`; saga steps reply on their own slot)
    /// before the batch is settled, and returns the batch without them; `None` when
    /// nothing was posted. `settle.lua` cannot write such a reply (its keys would span
    /// slots, and the whole settle would fail with CROSSSLOT every time: the task would
    /// be redelivered for ever). Posting first keeps the reply at least once: a settle
    /// that fails after it leaves the task to run again, and reply again.
    async fn post_foreign_replies(
        &self,
        scope: SettleScope<'_>,
        batch: &[Settlement],
    ) -> Result<Option<Vec<Settlement>>> {
        if !self.is_cluster() {
            return Ok(None);
        }
        let slot = crate::keys::slot(&scope.keys.stream);
        let foreign = |s: &Settlement| {
            s.reply
                .as_ref()
                .is_some_and(|r| crate::keys::slot(&r.stream) != slot)
        };
        if !batch.iter().any(foreign) {
            return Ok(None);
        }
        let mut cmds = Vec::new();
        for r in batch
            .iter()
            .filter(|s| foreign(s))
            .filter_map(|s| s.reply.as_ref())
        {
            let mut c = redis::cmd("XADD");
            c.arg(&r.stream).arg("*");
            for (k, v) in &r.fields {
                c.arg(*k).arg(v);
            }
            cmds.push((r.stream.as_str(), c));
        }
        self.pipe_per_slot(cmds).await?;
        Ok(Some(
            batch
                .iter()
                .map(|s| {
                    let mut s = s.clone();
                    if foreign(&s) {
                        s.reply = None;
                    }
                    s
                })
                .collect(),
        ))
    }

    /// A settle that fewer replicas than asked acknowledged is logged and counted, not
    /// retried: it went through on the master, and if a failover loses it the tasks run
    /// again (at least once still holds) — blocking every ack while a replica is away would
    /// stall the workers for no gain in safety.
    fn judge_settle(&self, w: super::WaitFor, got: u64, scope: SettleScope<'_>) {
        if let Err(e) = w.judge(got) {
            tracing::warn!(queue = %scope.keys.queue, error = %e, "settle not replicated in time");
            metrics::counter!(crate::metrics::SETTLES_NOT_REPLICATED_TOTAL, "queue" => scope.keys.queue.clone()).increment(1);
        }
    }

    /// Like [`Broker::settle`], on an exclusive connection from `pool` that is closed
    /// afterwards, for batches larger than a few MiB (dead letters of large entries carry
    /// their fields). The shared command connection would otherwise keep a write buffer the
    /// size of the largest batch it ever sent, for as long as the process lives (issue 10,
    /// item 12). Falls back to the shared connection when the pool has none to give.
    pub(crate) async fn settle_detached(
        &self,
        pool: &super::ReaderPool,
        scope: SettleScope<'_>,
        notes: &[RecordWrite],
        batch: &[Settlement],
    ) -> Result<()> {
        let Ok(mut c) = pool.get().await else {
            return self.settle(scope, notes, batch).await;
        };
        let detached = self.post_foreign_replies(scope, batch).await?;
        let batch = detached.as_deref().unwrap_or(batch);
        let mut p = build(scope, notes, batch);
        if let Some(w) = &self.wait {
            p.add_command(w.cmd());
        }
        let r = super::scripts::query_pipe::<Vec<u64>>(&mut c, &p).await;
        c.discard();
        if let (Some(w), Some(got)) = (self.wait, r.as_ref().ok().and_then(|v| v.first())) {
            self.judge_settle(w, *got, scope);
        }
        r.map(|_| ()).map_err(Into::into)
    }

    /// How many entries of `batch` are still pending for the group (none after a settle
    /// that went through).
    pub(crate) async fn still_pending(
        &self,
        scope: SettleScope<'_>,
        batch: &[Settlement],
    ) -> Result<usize> {
        let mut p = Pipeline::with_capacity(batch.len());
        for s in batch {
            p.cmd("XPENDING")
                .arg(scope.keys.lane_stream(s.lane))
                .arg(scope.group)
                .arg(&s.entry_id)
                .arg(&s.entry_id)
                .arg(1);
        }
        let r: Vec<Value> = p.query_async(&mut self.c()).await?;
        Ok(r.iter()
            .filter(|v| matches!(v, Value::Array(a) if !a.is_empty()))
            .count())
    }
}
