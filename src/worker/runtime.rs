//! The per-queue state every loop of a worker shares.
//!
//! Capacity: `total` has `concurrency` permits and `bulk` has `concurrency -
//! express_concurrency`. A bulk task holds one of each, an express task only a `total`
//! permit, so bulk work can never occupy the express reservation, and express work may use
//! any free slot. Entries are read only when a slot is free, so nothing waits in a local
//! buffer while its pending-entry idle clock runs (dapr components-contrib#4599).
//!
//! The path of one delivery lives in the files beside this one: `dispatch.rs` (decode,
//! checks, routing, isolation) → `execute.rs` (run the handler, get its outcome) →
//! `decide.rs` (pure: outcome → settlement) → `settler.rs` (the one place that writes
//! settlements to Redis).

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use metrics::{Counter, Histogram};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::decide::Reader;
use super::settler::SettleSender;
use super::tracked::{Cancels, Tracked};
use crate::config::QueueConfig;
use crate::handler::Registry;
use crate::keys::{Lane, QueueKeys};
use crate::metrics as m;
use crate::rdb::Broker;

/// One slot of capacity; dropping it frees the slot.
pub(crate) struct Slot {
    _total: OwnedSemaphorePermit,
    _bulk: Option<OwnedSemaphorePermit>,
}

/// Metric handles of one task type, registered once.
pub(crate) struct TypeMetrics {
    /// Handler run time.
    pub duration: Histogram,
    /// Runs that succeeded.
    pub succeeded: Counter,
    /// Runs that will be retried.
    pub retried: Counter,
    /// Runs that ended in the dead-letter stream.
    pub dead: Counter,
}

/// The slots of one queue, shared by the runtimes of all its partitions: `concurrency`
/// and the express reservation hold for the queue as a whole, however many partitions it
/// has.
#[derive(Clone)]
pub(crate) struct Capacity {
    /// All slots.
    pub total: Arc<Semaphore>,
    /// Slots bulk work may use.
    pub bulk: Arc<Semaphore>,
}

impl Capacity {
    /// The slots `cfg` asks for.
    pub(crate) fn of(cfg: &QueueConfig) -> Capacity {
        Capacity {
            total: Arc::new(Semaphore::new(cfg.concurrency)),
            bulk: Arc::new(Semaphore::new(
                cfg.concurrency.saturating_sub(cfg.express_concurrency),
            )),
        }
    }
}

/// What a queue's runtime is made of.
pub(crate) struct RuntimeParts {
    /// Queue configuration.
    pub cfg: QueueConfig,
    /// The keys of the partition this runtime reads.
    pub keys: QueueKeys,
    /// The queue's slots (shared by its partitions).
    pub capacity: Capacity,
    /// This process' consumer name.
    pub consumer: String,
    /// Handlers.
    pub registry: Arc<Registry>,
    /// Payload size limit.
    pub max_payload: usize,
    /// Most executions before a task is poison.
    pub max_deliveries: u32,
    /// Tracks running executions for graceful shutdown.
    pub tracker: TaskTracker,
    /// Fired when the grace period is over.
    pub hard_stop: CancellationToken,
    /// Fired when shutdown begins (no new work).
    pub stopping: CancellationToken,
    /// The broker.
    pub broker: Broker,
    /// The process's circuit breakers, by task type.
    pub breakers: Arc<super::breaker::Breakers>,
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
    /// Slots currently allowed (the SLA loop moves it between min and max).
    pub concurrency: AtomicUsize,
    /// Every entry this process holds, from dispatch until its settlement went through.
    pub tracked: Arc<Tracked>,
    /// Task ids cancelled by an operator signal (pruned).
    pub cancels: Cancels,
    /// The way to the settler.
    pub settler: SettleSender,
    /// Handlers.
    pub registry: Arc<Registry>,
    /// Payload size limit.
    pub max_payload: usize,
    /// Tracks running executions for graceful shutdown.
    pub tracker: TaskTracker,
    /// Fired when the grace period is over: handlers still running are told to stop.
    pub hard_stop: CancellationToken,
    /// Fired when shutdown begins: tasks held by a pause are handed back.
    pub stopping: CancellationToken,
    /// Most executions before a task is poison.
    pub max_deliveries: u32,
    /// The broker.
    pub broker: Broker,
    /// Delivery paused by an operator: readers stop reading and no handler starts.
    pub pause: super::pause::PauseGate,
    /// What a task without an `id` gets before its entry id, per lane (bulk, express).
    pub id_prefix: [String; 2],
    /// Task type → (GCRA emission interval in µs, burst) for rate-limited types.
    pub limits: HashMap<String, (u64, u32)>,
    /// Task type → pool that serves it (from `ts:{q}:routes`, refreshed by the signal loop).
    pub routes: Mutex<HashMap<String, String>>,
    /// Wait samples (seconds) and service time sum (µs) / count of the current window.
    pub window: Mutex<(Vec<f64>, u64, u64)>,
    type_metrics: Mutex<HashMap<String, Arc<TypeMetrics>>>,
    /// Wait time of bulk tasks.
    pub wait_bulk: Histogram,
    /// Wait time of express tasks.
    pub wait_express: Histogram,
    /// Running bulk tasks.
    pub inflight_bulk: metrics::Gauge,
    /// Running express tasks.
    pub inflight_express: metrics::Gauge,
    /// What the queue keeps of its tasks (`result_ttl_secs`); `None`: nothing.
    pub results: Option<crate::results::ResultsPolicy>,
    /// Some task of the queue can fall under a per-key limit (`max_per_key`): dispatch
    /// then looks at group keys ([`crate::keylimit`]).
    pub limited: bool,
    /// The process's circuit breakers, by task type ([`crate::breaker`]).
    pub breakers: Arc<super::breaker::Breakers>,
}

impl QueueRuntime {
    /// The runtime of one queue, and the receiving end of its settler's channel.
    pub(crate) fn new(p: RuntimeParts) -> (Self, super::settler::SettleReceiver) {
        let RuntimeParts {
            cfg,
            keys,
            capacity,
            consumer,
            registry,
            max_payload,
            max_deliveries,
            tracker,
            hard_stop,
            stopping,
            broker,
            breakers,
        } = p;
        let q = cfg.name.clone();
        metrics::gauge!(m::CONCURRENCY, "queue" => q.clone()).set(cfg.concurrency as f64);
        let tracked = Arc::new(Tracked::default());
        let (settler, rx) = super::settler::channel(tracked.clone());
        let rt = QueueRuntime {
            group: cfg.group.clone(),
            heartbeats: keys.heartbeats_for(&cfg.group),
            delete_on_ack: !cfg.is_fanout(),
            total: capacity.total,
            bulk: capacity.bulk,
            concurrency: AtomicUsize::new(cfg.concurrency),
            tracked,
            cancels: Cancels::default(),
            settler,
            registry,
            max_payload,
            tracker,
            hard_stop,
            stopping,
            max_deliveries,
            broker,
            pause: super::pause::PauseGate::default(),
            id_prefix: [
                keys.default_id_prefix(Lane::Bulk),
                keys.default_id_prefix(Lane::Express),
            ],
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
            routes: Mutex::new(HashMap::new()),
            window: Mutex::new((Vec::with_capacity(256), 0, 0)),
            type_metrics: Mutex::new(HashMap::new()),
            wait_bulk: metrics::histogram!(m::WAIT_SECONDS, "queue" => q.clone(), "lane" => "bulk"),
            wait_express: metrics::histogram!(m::WAIT_SECONDS, "queue" => q.clone(), "lane" => "express"),
            inflight_bulk: metrics::gauge!(m::IN_FLIGHT, "queue" => q.clone(), "lane" => "bulk"),
            inflight_express: metrics::gauge!(m::IN_FLIGHT, "queue" => q, "lane" => "express"),
            results: crate::results::ResultsPolicy::of(&cfg),
            limited: crate::keylimit::limited(&cfg),
            breakers,
            keys,
            consumer,
            cfg,
        };
        (rt, rx)
    }

    /// The record write that ends a run of `task` on a queue that keeps results (`None`
    /// otherwise, or when `how` is not an end: a run handed back at shutdown).
    pub(crate) fn record_end(
        &self,
        task: &crate::task::Task,
        attempt: u32,
        how: Option<crate::results::Ended<'_>>,
    ) -> Option<Box<crate::results::RecordWrite>> {
        let policy = self.results?;
        Some(Box::new(crate::results::ended(
            &self.keys,
            policy,
            task,
            attempt,
            how?,
            crate::task::now_ms(),
        )))
    }

    /// The facts about this reader a settlement needs.
    pub(crate) fn reader(&self) -> Reader<'_> {
        Reader {
            queue: &self.cfg.name,
            group: &self.group,
            consumer: &self.consumer,
            pool: self.cfg.pool.as_deref(),
            delete_on_ack: self.delete_on_ack,
        }
    }

    /// Metric handles of task type `t`.
    pub(crate) fn type_metrics(&self, t: &str) -> Arc<TypeMetrics> {
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

    /// Takes the window's wait samples and mean service time (seconds), starting a new one.
    pub(crate) fn take_window(&self) -> (Vec<f64>, Option<f64>) {
        let mut w = self.window.lock().expect("poisoned");
        let waits = std::mem::take(&mut w.0);
        let service = (w.2 > 0).then(|| w.1 as f64 / w.2 as f64 / 1e6);
        w.1 = 0;
        w.2 = 0;
        (waits, service)
    }

    /// Counts a task that ended as cancelled.
    pub(crate) fn count_cancelled(&self, task_type: &str) {
        metrics::counter!(m::COMPLETED_TOTAL, "queue" => self.cfg.name.clone(), "type" => task_type.to_string(), "outcome" => "cancelled").increment(1);
    }
}
