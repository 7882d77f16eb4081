//! The settler: the one place that sends settlements to Redis, in batches (asynq's
//! processor does one round trip per task; batching is where most of our throughput comes
//! from). A batch is bounded by `worker.ack_batch` settlements and by bytes
//! ([`super::batch::settle_batch_full`]): a dead-letter settlement carries the entry's
//! fields, and twenty 10 MiB ones in one pipeline cost 200 MiB per copy. A batch above
//! the byte budget goes over an exclusive connection closed afterwards
//! ([`Broker::settle_detached`]), so the shared connection's buffers never grow to it.
//!
//! Every execution path ends in [`SettleSender::send`]; the settler takes what is queued,
//! up to `batch` at a time, and settles it with one [`Broker::settle`] round trip. A failed
//! round trip is retried with exponential backoff and jitter (`backon`); the broker's
//! settle is idempotent, so resending after a lost reply cannot apply an outcome twice, and
//! after a retry the batch is verified against `XPENDING`. If Redis stays away past the
//! retry budget the entries are left pending: recovery re-delivers them, so a lost ACK
//! costs a duplicate execution, never a lost task. Once a batch is settled (or given up
//! on) its entries leave the [`Tracked`] map.
//!
//! A refused settle (`NOPERM`, e.g. a user without `MULTI`/`EXEC` or `@scripting`) is not
//! Redis being away: it does not mark Redis down, does not use up the retry budget, and is
//! never given up on while the worker runs — the batch is retried with backoff (capped at
//! 5 s) until the permission is granted, so its tasks are acknowledged then instead of
//! being executed again by recovery. The broker logs the refusal with its fix
//! (rate-limited) and `/ready` shows it meanwhile.
//!
//! The queue between executions and the settler is unbounded (sending never blocks an
//! execution), but its bytes are counted ([`Backlog`]): while more than
//! [`super::batch::BACKLOG_BUDGET_BYTES`] wait, the lane readers read nothing new
//! ([`SettleSender::room`]). Dead letters of large entries are settled about as fast as
//! they are read, so without this a long run of them piled up in memory (60 entries of
//! 10 MiB peaked at 236 MB, growing with the run).
//!
//! On a queue that keeps results ([`crate::results`]) the settler also carries the task
//! records' `running` and progress writes ("notes"), on a second, bounded channel: every
//! round trip sends the notes queued so far ahead of its settlements, so a run's `running`
//! can never land after its `succeeded`, and an idle settler sends notes as they come.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::batch::{
    settle_batch_full, settlement_bytes, BACKLOG_BUDGET_BYTES, SETTLE_BUDGET_BYTES,
};
use super::tracked::Tracked;
use crate::keys::QueueKeys;
use crate::metrics as m;
use crate::rdb::{Broker, ReaderPool, SettleScope, Settlement};
use crate::results::{RecordWrite, MAX_PENDING_NOTES};

/// Bytes of the settlements sent to the settler and not yet settled.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    bytes: AtomicUsize,
    drained: Notify,
}

impl Backlog {
    fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::AcqRel);
    }

    fn sub(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
        self.drained.notify_waiters();
    }

    fn over(&self) -> bool {
        self.bytes.load(Ordering::Acquire) > BACKLOG_BUDGET_BYTES
    }
}

/// The sending side, held by the queue's runtime.
#[derive(Clone)]
pub(crate) struct SettleSender {
    tx: mpsc::UnboundedSender<Settlement>,
    notes: mpsc::Sender<RecordWrite>,
    tracked: Arc<Tracked>,
    backlog: Arc<Backlog>,
}

impl SettleSender {
    /// Queues `s` for the next batch. The settler outlives every execution; if it is gone
    /// the process is exiting and the entry stays pending for recovery.
    pub(crate) fn send(&self, s: Settlement) {
        self.tracked.settling(&s.entry_id);
        self.backlog.add(settlement_bytes(&s));
        let _ = self.tx.send(s);
    }

    /// Queues a record write (a run's start, a progress report) ahead of any settlement
    /// sent after it. False when [`MAX_PENDING_NOTES`] already wait: the write is dropped
    /// (records are information, not state a task depends on).
    pub(crate) fn note(&self, w: RecordWrite) -> bool {
        self.notes.try_send(w).is_ok()
    }

    /// Waits while more than [`BACKLOG_BUDGET_BYTES`] of settlements wait for the
    /// settler (see the module docs). False when `stop` fired first.
    pub(crate) async fn room(&self, stop: &CancellationToken) -> bool {
        while self.backlog.over() {
            let drained = self.backlog.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if !self.backlog.over() {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = drained => {}
            }
        }
        true
    }

    /// Waits until every settlement sent so far has been written to Redis (or given up
    /// on). A suspect task runs alone only after this: otherwise the task that ran alone
    /// before it could still have its ACK queued here when the suspect, if it is the
    /// poison one, kills the process — and that innocent task would be charged one more
    /// execution and dead-lettered as poison itself (seen on Valkey in
    /// `a_task_that_keeps_killing_workers_becomes_poison`). False when `stop` fired first.
    pub(crate) async fn drained(&self, stop: &CancellationToken) -> bool {
        while self.backlog.bytes.load(Ordering::Acquire) > 0 {
            let drained = self.backlog.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.backlog.bytes.load(Ordering::Acquire) == 0 {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = drained => {}
            }
        }
        true
    }

    /// The byte count the settler lowers as it settles ([`Settler::backlog`]).
    pub(crate) fn backlog(&self) -> Arc<Backlog> {
        self.backlog.clone()
    }
}

/// What the settler needs to know.
pub(crate) struct Settler {
    /// The broker.
    pub broker: Broker,
    /// Queue keys (pool streams for a pool).
    pub keys: QueueKeys,
    /// Group.
    pub group: String,
    /// XDEL on ACK.
    pub delete_on_ack: bool,
    /// Most settlements per round trip.
    pub batch: usize,
    /// Entries of the process; settled ones are released.
    pub tracked: Arc<Tracked>,
    /// Exclusive connections for batches above the byte budget ([`Broker::settle_detached`]).
    pub pool: ReaderPool,
    /// Bytes waiting to be settled ([`SettleSender::backlog`] of the same channel).
    pub backlog: Arc<Backlog>,
}

/// The receiving side: settlements and record notes.
pub(crate) struct SettleReceiver {
    rx: mpsc::UnboundedReceiver<Settlement>,
    notes: mpsc::Receiver<RecordWrite>,
}

/// A channel to a settler.
pub(crate) fn channel(tracked: Arc<Tracked>) -> (SettleSender, SettleReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ntx, nrx) = mpsc::channel(MAX_PENDING_NOTES);
    let backlog = Arc::default();
    (
        SettleSender {
            tx,
            notes: ntx,
            tracked,
            backlog,
        },
        SettleReceiver { rx, notes: nrx },
    )
}

/// Moves every note queued now into `out`.
fn take_notes(rx: &mut mpsc::Receiver<RecordWrite>, out: &mut Vec<RecordWrite>) {
    while let Ok(n) = rx.try_recv() {
        out.push(n);
    }
}

/// Ends the `settle` spans of a batch once the settler knows whether Redis has it.
fn end_spans(batch: &mut [Settlement], ok: bool) {
    if crate::telemetry::enabled() {
        crate::telemetry::settled(
            batch.iter_mut().filter_map(|s| s.trace.take()).map(|b| *b),
            ok,
        );
    }
}

impl Settler {
    fn scope(&self) -> SettleScope<'_> {
        SettleScope {
            keys: &self.keys,
            group: &self.group,
            delete_on_ack: self.delete_on_ack,
        }
    }

    fn release(&self, batch: &[Settlement]) {
        self.tracked
            .release(batch.iter().map(|s| s.entry_id.as_str()));
        self.backlog
            .sub(batch.iter().map(settlement_bytes).sum::<usize>());
    }

    /// Sends one batch, retrying with backoff; gives up (leaving entries pending) after
    /// `max_times` failures. A refusal (`NOPERM`) is retried until `stop` fires.
    async fn flush(
        &self,
        notes: &[RecordWrite],
        batch: &[Settlement],
        max_times: usize,
        stop: &CancellationToken,
    ) -> bool {
        let q = self.keys.queue.clone();
        let mut retried = false;
        let large = batch.iter().map(settlement_bytes).sum::<usize>() > SETTLE_BUDGET_BYTES;
        let mut refusals: u32 = 0;
        let r = loop {
            let attempt = || async move {
                if large {
                    self.broker
                        .settle_detached(&self.pool, self.scope(), notes, batch)
                        .await
                } else {
                    self.broker.settle(self.scope(), notes, batch).await
                }
            };
            let backoff = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(20))
                .with_max_delay(Duration::from_secs(2))
                .with_factor(2.0)
                .with_jitter()
                .with_max_times(max_times);
            let r = attempt
                .retry(backoff)
                .when(|e: &crate::Error| !e.is_no_permission())
                .notify(|e, d| {
                    retried = true;
                    crate::health::set_redis_up(false);
                    metrics::counter!(m::ACK_RETRIES_TOTAL, "queue" => q.clone()).increment(1);
                    metrics::counter!(m::ACK_TOTAL, "queue" => q.clone(), "result" => "error").increment(1);
                    tracing::warn!(queue = %q, entries = batch.len(), retry_in_ms = d.as_millis() as u64, error = %e, "ack failed, retrying");
                })
                .await;
            match r {
                Err(e) if e.is_no_permission() && !stop.is_cancelled() => {
                    // Logged with its fix by the broker; retried until granted.
                    refusals += 1;
                    retried = true;
                    metrics::counter!(m::ACK_RETRIES_TOTAL, "queue" => q.clone()).increment(1);
                    metrics::counter!(m::ACK_TOTAL, "queue" => q.clone(), "result" => "error")
                        .increment(1);
                    let d = crate::rdb::reconnect_delay(refusals);
                    tracing::debug!(queue = %q, entries = batch.len(), retry_in_ms = d.as_millis() as u64, error = %e, "ack refused, retrying");
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(d) => {}
                    }
                }
                r => break r,
            }
        };
        if refusals > 0 && r.is_ok() {
            tracing::info!(queue = %q, entries = batch.len(), refusals, "ack allowed again");
        }
        match r {
            Ok(()) => {
                crate::health::set_redis_up(true);
                metrics::counter!(m::ACK_TOTAL, "queue" => q.clone(), "result" => "ok")
                    .increment(1);
                if retried && !batch.is_empty() {
                    match self.broker.still_pending(self.scope(), batch).await {
                        Ok(0) => {
                            tracing::info!(queue = %q, entries = batch.len(), "ack confirmed against XPENDING after retry")
                        }
                        Ok(n) => {
                            tracing::error!(queue = %q, entries = n, "entries still pending after ack; left for recovery");
                            metrics::counter!(m::ACK_FAILURES_TOTAL, "queue" => q)
                                .increment(n as u64);
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
    pub(crate) async fn run(self, rx: SettleReceiver, stop: CancellationToken) {
        let SettleReceiver {
            mut rx,
            notes: mut notes_rx,
        } = rx;
        let mut batch: Vec<Settlement> = Vec::with_capacity(self.batch);
        let mut notes: Vec<RecordWrite> = Vec::new();
        loop {
            let first = tokio::select! {
                biased;
                s = rx.recv() => match s {
                    Some(s) => Some(s),
                    None => break,
                },
                // Before the notes: a handler reporting progress without pause cannot
                // keep the settler from seeing shutdown (the drain below takes its notes).
                _ = stop.cancelled() => break,
                n = notes_rx.recv() => match n {
                    Some(n) => {
                        notes.push(n);
                        None
                    }
                    None => break,
                },
            };
            if let Some(first) = first {
                let mut bytes = settlement_bytes(&first);
                batch.push(first);
                while !settle_batch_full(batch.len(), bytes, self.batch) {
                    match rx.try_recv() {
                        Ok(s) => {
                            bytes += settlement_bytes(&s);
                            batch.push(s);
                        }
                        Err(_) => break,
                    }
                }
            }
            // After the settlements: a note sent before any of them is taken with them.
            take_notes(&mut notes_rx, &mut notes);
            // While running, keep trying for ~a minute; recovery takes over after that.
            let ok = self.flush(&notes, &batch, 12, &stop).await;
            end_spans(&mut batch, ok);
            self.release(&batch);
            batch.clear();
            notes.clear();
        }
        // Drain whatever finished before shutdown, with a short retry budget.
        let mut bytes = 0;
        take_notes(&mut notes_rx, &mut notes);
        while let Ok(s) = rx.try_recv() {
            bytes += settlement_bytes(&s);
            batch.push(s);
            if settle_batch_full(batch.len(), bytes, self.batch) {
                take_notes(&mut notes_rx, &mut notes);
                let ok = self.flush(&notes, &batch, 4, &stop).await;
                end_spans(&mut batch, ok);
                self.release(&batch);
                batch.clear();
                notes.clear();
                bytes = 0;
            }
        }
        take_notes(&mut notes_rx, &mut notes);
        if !batch.is_empty() || !notes.is_empty() {
            let ok = self.flush(&notes, &batch, 4, &stop).await;
            end_spans(&mut batch, ok);
            self.release(&batch);
        }
    }
}
