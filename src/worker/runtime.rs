//! The per-queue state every loop of a worker shares, and the path of one delivery from
//! decoded entry to settled outcome.
//!
//! Capacity: `total` has `concurrency` permits and `bulk` has `concurrency -
//! express_concurrency`. A bulk task holds one of each, an express task only a `total`
//! permit, so bulk work can never occupy the express reservation, and express work may use
//! any free slot. Entries are read only when a slot is free, so nothing waits in a local
//! buffer while its pending-entry idle clock runs (dapr components-contrib#4599).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::backoff::honour_retry_after;
use crate::config::QueueConfig;
use crate::handler::{HandlerError, Registry, TaskContext};
use crate::keys::{Lane, QueueKeys};
use crate::metrics as m;
use crate::rdb::RawEntry;
use crate::task::{entry_id_ms, now_ms, Task};

use super::acker::{Action, Reply, Settle};

/// From this delivery on, a recovered entry runs alone in its process.
const ISOLATE_FROM: u32 = 3;

/// One slot of capacity; dropping it frees the slot.
pub(crate) struct Slot {
    _total: OwnedSemaphorePermit,
    _bulk: Option<OwnedSemaphorePermit>,
}

/// A task running now.
pub(crate) struct InFlight {
    /// Lane it came from.
    pub lane: Lane,
    /// Task id (for cancel signals).
    pub task_id: String,
    /// Fires the handler's cancellation token.
    pub cancel: CancellationToken,
}

/// Metric handles of one task type, registered once.
struct TypeMetrics {
    duration: Histogram,
    succeeded: Counter,
    retried: Counter,
    dead: Counter,
}

/// Everything the loops of one queue share.
pub(crate) struct QueueRuntime {
    /// Queue configuration.
    pub cfg: QueueConfig,
    /// Key names.
    pub keys: QueueKeys,
    /// Group this process reads with.
    pub group: String,
    /// This process' consumer name.
    pub consumer: String,
    /// Heartbeat set of the group.
    pub heartbeats: String,
    /// XDEL entries on ACK (false on fan-out queues: trimmed behind the slowest group).
    pub delete_on_ack: bool,
    /// All slots.
    pub total: Arc<Semaphore>,
    /// Slots bulk work may use.
    pub bulk: Arc<Semaphore>,
    /// Entry id → running task.
    pub inflight: Mutex<HashMap<String, InFlight>>,
    /// Entries this process holds: from dispatch until the acker's round trip settled them.
    /// A reader that re-reads its own pending history skips these.
    pub held: Mutex<std::collections::HashSet<String>>,
    /// Outcomes to the acker.
    pub settle_tx: mpsc::UnboundedSender<Settle>,
    /// Handlers.
    pub registry: Arc<Registry>,
    /// Payload size limit.
    pub max_payload: usize,
    /// Tracks running executions for graceful shutdown.
    pub tracker: TaskTracker,
    /// Fired when the grace period is over: handlers still running are told to stop.
    pub hard_stop: CancellationToken,
    /// Most deliveries before a task is poison.
    pub max_deliveries: u32,
    /// Commands connection (start marks of recovered entries, rate limits).
    pub conn: redis::aio::ConnectionManager,
    /// Delivery paused by an operator (readers stop reading).
    pub paused: std::sync::atomic::AtomicBool,
    /// Task ids cancelled by an operator signal.
    pub cancelled: Mutex<std::collections::HashSet<String>>,
    /// Task type → (GCRA emission interval in µs, burst) for rate-limited types.
    limits: HashMap<String, (u64, u32)>,
    /// Task type → pool that serves it (from `ts:{q}:routes`, refreshed by the signal loop).
    pub routes: Mutex<HashMap<String, String>>,
    /// Slots currently allowed (the SLA loop moves it between min and max).
    pub concurrency: std::sync::atomic::AtomicUsize,
    /// Wait samples (seconds) and service time sum (µs) / count of the current window.
    window: Mutex<(Vec<f64>, u64, u64)>,
    type_metrics: Mutex<HashMap<String, Arc<TypeMetrics>>>,
    wait_bulk: Histogram,
    wait_express: Histogram,
    inflight_bulk: metrics::Gauge,
    inflight_express: metrics::Gauge,
}

impl QueueRuntime {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: QueueConfig,
        consumer: String,
        settle_tx: mpsc::UnboundedSender<Settle>,
        registry: Arc<Registry>,
        max_payload: usize,
        max_deliveries: u32,
        tracker: TaskTracker,
        hard_stop: CancellationToken,
        conn: redis::aio::ConnectionManager,
    ) -> Self {
        let keys = QueueKeys::pooled(&cfg.name, cfg.pool.as_deref());
        let q = cfg.name.clone();
        metrics::gauge!(m::CONCURRENCY, "queue" => q.clone()).set(cfg.concurrency as f64);
        QueueRuntime {
            group: cfg.group.clone(),
            heartbeats: keys.heartbeats_for(&cfg.group),
            delete_on_ack: !cfg.is_fanout(),
            total: Arc::new(Semaphore::new(cfg.concurrency)),
            bulk: Arc::new(Semaphore::new(cfg.concurrency - cfg.express_concurrency)),
            inflight: Mutex::new(HashMap::new()),
            held: Mutex::new(std::collections::HashSet::new()),
            settle_tx,
            registry,
            max_payload,
            tracker,
            hard_stop,
            max_deliveries,
            conn,
            paused: std::sync::atomic::AtomicBool::new(false),
            cancelled: Mutex::new(std::collections::HashSet::new()),
            routes: Mutex::new(HashMap::new()),
            concurrency: std::sync::atomic::AtomicUsize::new(cfg.concurrency),
            window: Mutex::new((Vec::with_capacity(256), 0, 0)),
            limits: cfg
                .types
                .iter()
                .filter_map(|(t, o)| {
                    o.rate_per_sec.map(|r| {
                        (
                            t.clone(),
                            ((1_000_000.0 / r).max(1.0) as u64, o.burst.unwrap_or(1)),
                        )
                    })
                })
                .collect(),
            type_metrics: Mutex::new(HashMap::new()),
            wait_bulk: metrics::histogram!(m::WAIT_SECONDS, "queue" => q.clone(), "lane" => "bulk"),
            wait_express: metrics::histogram!(m::WAIT_SECONDS, "queue" => q.clone(), "lane" => "express"),
            inflight_bulk: metrics::gauge!(m::IN_FLIGHT, "queue" => q.clone(), "lane" => "bulk"),
            inflight_express: metrics::gauge!(m::IN_FLIGHT, "queue" => q, "lane" => "express"),
            keys,
            consumer,
            cfg,
        }
    }

    fn type_metrics(&self, t: &str) -> Arc<TypeMetrics> {
        let mut map = self.type_metrics.lock().expect("poisoned");
        if let Some(tm) = map.get(t) {
            return tm.clone();
        }
        let q = self.cfg.name.clone();
        let c = |outcome: &'static str| metrics::counter!(m::COMPLETED_TOTAL, "queue" => q.clone(), "type" => t.to_string(), "outcome" => outcome);
        let tm = Arc::new(TypeMetrics {
            duration: metrics::histogram!(m::HANDLER_DURATION_SECONDS, "queue" => q.clone(), "type" => t.to_string()),
            succeeded: c("succeeded"),
            retried: c("retried"),
            dead: c("dead"),
        });
        map.insert(t.to_string(), tm.clone());
        tm
    }

    /// Takes up to `max` free slots of `lane`; waits for the first one unless `wait` is
    /// false. Returns an empty vector when `stop` fires first (or nothing is free).
    pub(crate) async fn acquire(
        &self,
        lane: Lane,
        max: usize,
        wait: bool,
        stop: &CancellationToken,
    ) -> Vec<Slot> {
        let mut slots = Vec::new();
        if max == 0 {
            return slots;
        }
        let first = async {
            let bulk = match lane {
                Lane::Bulk => Some(self.bulk.clone().acquire_owned().await.ok()?),
                Lane::Express => None,
            };
            let total = self.total.clone().acquire_owned().await.ok()?;
            Some(Slot {
                _total: total,
                _bulk: bulk,
            })
        };
        if wait {
            tokio::select! {
                _ = stop.cancelled() => return slots,
                s = first => match s { Some(s) => slots.push(s), None => return slots },
            }
        }
        while slots.len() < max {
            let bulk = match lane {
                Lane::Bulk => match self.bulk.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => break,
                },
                Lane::Express => None,
            };
            match self.total.clone().try_acquire_owned() {
                Ok(t) => slots.push(Slot {
                    _total: t,
                    _bulk: bulk,
                }),
                Err(_) => break,
            }
        }
        slots
    }

    fn dlq_fields(
        &self,
        lane: Lane,
        entry_id: &str,
        reason: &str,
        error: &str,
        attempts: u32,
        mut fields: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut add = |k: &str, v: String| fields.push((k.as_bytes().to_vec(), v.into_bytes()));
        add("dlq_reason", reason.to_string());
        add("dlq_error", error.to_string());
        add("dlq_attempts", attempts.to_string());
        add("dlq_at", now_ms().to_string());
        add("dlq_entry_id", entry_id.to_string());
        add("dlq_lane", lane.as_str().to_string());
        add("dlq_group", self.group.clone());
        add("dlq_consumer", self.consumer.clone());
        fields
    }

    fn send(&self, s: Settle) {
        // The acker outlives every execution; if it is gone the process is exiting and the
        // entry stays pending for recovery.
        let _ = self.settle_tx.send(s);
    }

    fn dead_letter_now(
        &self,
        lane: Lane,
        entry_id: String,
        reason_label: &'static str,
        reason: String,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
        task: Option<&Task>,
    ) {
        metrics::counter!(m::DEAD_LETTERED_TOTAL, "queue" => self.cfg.name.clone(), "reason" => reason_label).increment(1);
        tracing::warn!(queue = %self.cfg.name, entry_id = %entry_id, task_id = task.map(|t| t.id.as_str()).unwrap_or(""), reason = %reason, "task dead-lettered");
        let dlq = self.dlq_fields(
            lane,
            &entry_id,
            &reason,
            &reason,
            task.map(|t| t.attempt).unwrap_or(0),
            fields,
        );
        let reply = task.and_then(|t| reply_for(t, &self.cfg.name, false, "null", &reason));
        self.send(Settle {
            lane,
            entry_id,
            action: Action::Dead(dlq),
            reply,
            recovered: false,
        });
    }

    /// Takes one delivered entry: decodes it, finds its handler and runs it on `slot`, or
    /// dead-letters it with the reason. `deliveries` is the delivery count (1 for a fresh
    /// read; higher for a recovered entry, which raises the attempt number).
    pub(crate) fn dispatch(
        self: &Arc<Self>,
        lane: Lane,
        entry: RawEntry,
        deliveries: u32,
        slot: Slot,
    ) {
        self.held.lock().expect("poisoned").insert(entry.id.clone());
        let Some(fields) = entry.fields else {
            // Deleted while pending (trimmed): nothing to run; drop the reference.
            self.send(Settle {
                lane,
                entry_id: entry.id,
                action: Action::Skip,
                reply: None,
                recovered: false,
            });
            return;
        };
        let task = match Task::decode_or_return(&entry.id, fields, self.max_payload) {
            Ok(t) => t,
            Err((e, raw)) => {
                self.dead_letter_now(lane, entry.id, "malformed", e.to_string(), raw, None);
                return;
            }
        };
        if let Some(g) = &task.only_group {
            if g != &self.group {
                self.send(Settle {
                    lane,
                    entry_id: entry.id,
                    action: Action::Skip,
                    reply: None,
                    recovered: false,
                });
                return;
            }
        }
        if self.is_cancelled(&task.id) {
            tracing::info!(queue = %self.cfg.name, task_id = %task.id, "skipping a cancelled task");
            self.count_cancelled(&task.task_type);
            let reply = reply_for(&task, &self.cfg.name, false, "null", "cancelled");
            self.send(Settle {
                lane,
                entry_id: entry.id,
                action: Action::Cancelled,
                reply,
                recovered: false,
            });
            return;
        }
        let Some(handler) = self.registry.get(&task.task_type).cloned() else {
            // Not ours: the type may belong to a pool (routes are cached; a type we have
            // not seen routed is looked up once more before it is called unknown).
            let rt = self.clone();
            self.tracker.spawn(async move {
                let mut route = rt
                    .routes
                    .lock()
                    .expect("poisoned")
                    .get(&task.task_type)
                    .cloned();
                if route.is_none() {
                    let mut c = rt.conn.clone();
                    let r: redis::RedisResult<Option<String>> = redis::cmd("HGET")
                        .arg(&rt.keys.routes)
                        .arg(&task.task_type)
                        .query_async(&mut c)
                        .await;
                    route = r.ok().flatten();
                    if let Some(p) = &route {
                        rt.routes
                            .lock()
                            .expect("poisoned")
                            .insert(task.task_type.clone(), p.clone());
                    }
                }
                rt.route_or_reject(lane, entry.id, task, route);
                drop(slot);
            });
            return;
        };
        let attempt = task.attempt + deliveries.saturating_sub(1);
        let rt = self.clone();
        self.tracker.spawn(async move {
            // A recovered entry may be what killed its last worker: run it alone from the
            // third delivery on, and record that it started (poison detection counts starts).
            let _alone = if deliveries >= ISOLATE_FROM.min(rt.max_deliveries) {
                drop(slot);
                // Every slot the process has *now*: the SLA loop may have shrunk the
                // semaphore below the configured concurrency, and asking for more permits
                // than exist would wait forever (and starve the queue behind it).
                let slots = rt.concurrency.load(std::sync::atomic::Ordering::Relaxed).max(1);
                let all = rt.total.clone().acquire_many_owned(slots as u32).await;
                tracing::info!(queue = %rt.cfg.name, entry_id = %entry.id, deliveries, "running a suspect task alone");
                (None, all.ok())
            } else {
                (Some(slot), None)
            };
            if deliveries >= 2 {
                let mut c = rt.conn.clone();
                let r: redis::RedisResult<()> = redis::cmd("HINCRBY").arg(&rt.keys.starts).arg(&entry.id).arg(1).query_async(&mut c).await;
                if let Err(e) = r {
                    tracing::warn!(queue = %rt.cfg.name, entry_id = %entry.id, error = %e, "could not record the start of a recovered task");
                }
            }
            rt.execute(lane, entry.id, task, attempt, handler, deliveries >= 2).await;
        });
    }

    async fn execute(
        self: Arc<Self>,
        lane: Lane,
        entry_id: String,
        task: Task,
        attempt: u32,
        handler: Arc<dyn crate::handler::Handler>,
        recovered: bool,
    ) {
        let mut policy = self.cfg.policy(&task.task_type);
        if let Some(b) = task.backoff_base_ms {
            policy.backoff.base = Duration::from_millis(b);
        }
        if let Some(c) = task.backoff_cap_ms {
            policy.backoff.cap = Duration::from_millis(c).max(policy.backoff.base);
        }
        let max_attempts = task.max_attempts.unwrap_or(policy.max_attempts);
        let timeout = task
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(policy.timeout);
        let tm = self.type_metrics(&task.task_type);
        let now = now_ms();
        if let Some(ms) = entry_id_ms(&entry_id) {
            let wait = now.saturating_sub(ms) as f64 / 1000.0;
            {
                let mut w = self.window.lock().expect("poisoned");
                if w.0.len() < 4096 {
                    w.0.push(wait);
                }
            }
            match lane {
                Lane::Bulk => self.wait_bulk.record(wait),
                Lane::Express => self.wait_express.record(wait),
            }
        }
        let gauge = match lane {
            Lane::Bulk => &self.inflight_bulk,
            Lane::Express => &self.inflight_express,
        };
        gauge.increment(1.0);
        let cancel = self.hard_stop.child_token();
        self.inflight.lock().expect("poisoned").insert(
            entry_id.clone(),
            InFlight {
                lane,
                task_id: task.id.clone(),
                cancel: cancel.clone(),
            },
        );
        let span = tracing::info_span!(
            "task",
            task_id = %task.id,
            queue = %self.cfg.name,
            task_type = %task.task_type,
            attempt,
            saga_id = task.saga_id.as_deref().unwrap_or(""),
            traceparent = task.traceparent.as_deref().unwrap_or(""),
        );
        let ctx = TaskContext::new(
            task,
            self.cfg.name.clone(),
            lane,
            entry_id.clone(),
            attempt,
            max_attempts,
            cancel.clone(),
        );
        self.wait_for_rate(ctx.task_type(), &cancel).await;
        let started = Instant::now();
        let hctx = ctx.clone();
        // The handler runs inside this task; a panic is caught here instead of paying for a
        // second spawned task per execution.
        let run = CatchUnwind(Box::pin(
            async move { handler.handle(hctx).await }.instrument(span.clone()),
        ));
        let result = match tokio::time::timeout(timeout, run).await {
            Ok(Ok(r)) => r,
            Ok(Err(p)) => Err(HandlerError::retryable(format!(
                "handler panicked: {}",
                panic_message(p)
            ))),
            Err(_) => {
                // Dropping the future stops the handler at its next await point.
                cancel.cancel();
                Err(HandlerError::retryable(format!(
                    "timed out after {} ms",
                    timeout.as_millis()
                )))
            }
        };
        let took = started.elapsed();
        tm.duration.record(took.as_secs_f64());
        {
            let mut w = self.window.lock().expect("poisoned");
            w.1 += took.as_micros() as u64;
            w.2 += 1;
        }
        self.inflight.lock().expect("poisoned").remove(&entry_id);
        gauge.decrement(1.0);
        let task = ctx.task();
        if self.is_cancelled(&task.id) {
            // Cancelled while it ran: whatever the handler returned, it is not retried.
            self.count_cancelled(&task.task_type);
            let _e = span.enter();
            tracing::info!("task cancelled while running");
            let reply = reply_for(task, &self.cfg.name, false, "null", "cancelled");
            self.send(Settle {
                lane,
                entry_id,
                action: Action::Cancelled,
                reply,
                recovered,
            });
            return;
        }
        let settle = match result {
            Ok(value) => {
                tm.succeeded.increment(1);
                let reply = task
                    .reply_to
                    .as_ref()
                    .and_then(|_| reply_for(task, &self.cfg.name, true, &value.to_string(), ""));
                Settle {
                    lane,
                    entry_id,
                    action: Action::Ok,
                    reply,
                    recovered: false,
                }
            }
            Err(HandlerError::Retryable {
                message,
                retry_after,
            }) if attempt < max_attempts => {
                tm.retried.increment(1);
                let delay = honour_retry_after(policy.backoff.delay_random(attempt), retry_after);
                let mut next = task.clone();
                next.attempt = attempt + 1;
                next.last_error = Some(truncate(&message, 2048));
                if !self.delete_on_ack {
                    next.only_group = Some(self.group.clone());
                }
                let _e = span.enter();
                tracing::info!(error = %message, retry_in_ms = delay.as_millis() as u64, "task failed, will retry");
                Settle {
                    lane,
                    entry_id,
                    action: Action::Retry {
                        due_ms: now_ms() + delay.as_millis() as u64,
                        member: next.encode_json_for(lane, self.cfg.pool.as_deref()),
                    },
                    reply: None,
                    recovered: false,
                }
            }
            Err(e) => {
                tm.dead.increment(1);
                let (label, reason) = match &e {
                    HandlerError::Permanent { .. } => {
                        ("failed", "failed: permanent error".to_string())
                    }
                    HandlerError::Retryable { .. } => (
                        "exhausted",
                        format!("exhausted: {attempt} of {max_attempts} attempts failed"),
                    ),
                };
                metrics::counter!(m::DEAD_LETTERED_TOTAL, "queue" => self.cfg.name.clone(), "reason" => label).increment(1);
                {
                    let _e = span.enter();
                    tracing::warn!(error = %e.message(), reason = %reason, "task dead-lettered");
                }
                let fields = task
                    .encode()
                    .into_iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.into_bytes()))
                    .collect();
                let msg = truncate(e.message(), 4096);
                let mut dlq = self.dlq_fields(lane, &entry_id, &reason, &msg, attempt, fields);
                dlq.retain(|(k, _)| k.as_slice() != b"attempt");
                dlq.push((b"attempt".to_vec(), attempt.to_string().into_bytes()));
                let reply = reply_for(task, &self.cfg.name, false, "null", &msg);
                Settle {
                    lane,
                    entry_id,
                    action: Action::Dead(dlq),
                    reply,
                    recovered: false,
                }
            }
        };
        let settle = Settle {
            recovered,
            ..settle
        };
        self.send(settle);
    }

    /// Fires the cancellation token of a running task; true when it was running here.
    pub(crate) fn cancel_running(&self, task_id: &str) -> bool {
        let map = self.inflight.lock().expect("poisoned");
        let mut found = false;
        for f in map.values().filter(|f| f.task_id == task_id) {
            f.cancel.cancel();
            found = true;
        }
        found
    }

    /// Hands a task of a type this process does not serve to the pool that does, or
    /// dead-letters it as unknown when no pool serves it.
    fn route_or_reject(&self, lane: Lane, entry_id: String, task: Task, route: Option<String>) {
        if self.cfg.pool.is_some() {
            // A named pool received a type it does not serve: count it (should stay 0).
            metrics::counter!(m::CROSS_TYPE_TOTAL, "queue" => self.cfg.name.clone(), "type" => task.task_type.clone()).increment(1);
        }
        if let Some(pool) = route.filter(|p| Some(p) != self.cfg.pool.as_ref()) {
            tracing::debug!(queue = %self.cfg.name, task_type = %task.task_type, pool = %pool, "routing a task to the pool that serves its type");
            let target = self.keys.pool_stream(&pool, lane);
            let fields = task
                .encode()
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.into_bytes()))
                .collect();
            self.send(Settle {
                lane,
                entry_id,
                action: Action::Move { target, fields },
                reply: None,
                recovered: false,
            });
            return;
        }
        let reason = format!(
            "unknown task type {:?}: no handler is registered for it in queue {:?} (this worker serves: {})",
            task.task_type,
            self.cfg.name,
            self.registry.types().join(", ")
        );
        let fields = task
            .encode()
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.into_bytes()))
            .collect();
        self.dead_letter_now(lane, entry_id, "unknown_type", reason, fields, Some(&task));
    }

    /// Takes the window's wait samples and mean service time (seconds), starting a new one.
    pub(crate) fn take_window(&self) -> (Vec<f64>, Option<f64>) {
        let mut w = self.window.lock().expect("poisoned");
        let waits = std::mem::take(&mut w.0);
        let service = (w.2 > 0).then(|| w.1 as f64 / w.2 as f64 / 1e6);
        w.1 = 0;
        w.2 = 0;
        (waits, service)
    }

    fn is_cancelled(&self, task_id: &str) -> bool {
        let c = self.cancelled.lock().expect("poisoned");
        !c.is_empty() && c.contains(task_id)
    }

    fn count_cancelled(&self, task_type: &str) {
        metrics::counter!(m::COMPLETED_TOTAL, "queue" => self.cfg.name.clone(), "type" => task_type.to_string(), "outcome" => "cancelled").increment(1);
    }

    /// Waits until the type's rate limit lets one more task start (GCRA in Redis, shared
    /// by every replica). Returns early when `cancel` fires. A Redis error lets the task
    /// start: a limiter must not turn an outage into lost work.
    async fn wait_for_rate(&self, task_type: &str, cancel: &CancellationToken) {
        let Some(&(interval_us, burst)) = self.limits.get(task_type) else {
            return;
        };
        let key = format!("{}{}", self.keys.rate_prefix, task_type);
        let mut throttled = false;
        loop {
            let mut c = self.conn.clone();
            let mut p = redis::Pipeline::new();
            p.add_command(crate::rdb::evalsha(
                crate::rdb::ScriptId::RateLimit,
                &[&key],
                vec![
                    interval_us.to_string().into_bytes(),
                    burst.to_string().into_bytes(),
                ],
            ));
            let wait_us = match crate::rdb::query_pipe::<(u64,)>(&mut c, &p).await {
                Ok((w,)) => w,
                Err(e) => {
                    tracing::warn!(queue = %self.cfg.name, task_type, error = %e, "rate limiter unavailable; starting the task");
                    0
                }
            };
            if wait_us == 0 {
                return;
            }
            if !throttled {
                throttled = true;
                metrics::counter!(m::THROTTLED_TOTAL, "queue" => self.cfg.name.clone(), "type" => task_type.to_string()).increment(1);
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_micros(wait_us)) => {}
            }
        }
    }

    /// True when this process holds `entry_id` (running or waiting for its ACK).
    pub(crate) fn holds(&self, entry_id: &str) -> bool {
        self.held.lock().expect("poisoned").contains(entry_id)
    }

    /// Entry ids running now in `lane`.
    pub(crate) fn inflight_ids(&self, lane: Lane) -> Vec<String> {
        self.inflight
            .lock()
            .expect("poisoned")
            .iter()
            .filter(|(_, f)| f.lane == lane)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

fn reply_for(task: &Task, queue: &str, ok: bool, result: &str, error: &str) -> Option<Reply> {
    let stream = task.reply_to.clone()?;
    let mut f: Vec<(&'static str, String)> = vec![
        ("task_id", task.id.clone()),
        ("type", task.task_type.clone()),
        ("queue", queue.to_string()),
        (
            "outcome",
            if ok { "succeeded" } else { "failed" }.to_string(),
        ),
        ("attempt", task.attempt.to_string()),
        ("at", now_ms().to_string()),
    ];
    if ok {
        f.push(("result", result.to_string()));
    } else {
        f.push(("error", error.to_string()));
    }
    if let Some(s) = &task.saga_id {
        f.push(("saga_id", s.clone()));
    }
    if let Some(c) = &task.correlation {
        f.push(("correlation", c.clone()));
    }
    if let Some(t) = &task.traceparent {
        f.push(("traceparent", t.clone()));
    }
    Some(Reply { stream, fields: f })
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

/// Polls a future and turns a panic inside it into an `Err` with the panic payload.
struct CatchUnwind<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(p) => std::task::Poll::Ready(Err(p)),
        }
    }
}
