//! The producer: enqueue one task or a pipelined batch.
//!
//! A plain enqueue is one `XADD` to the lane's stream. A delayed task is a `ZADD` to the
//! queue's scheduled set, moved into the stream by the forwarder when due. An enqueue with
//! an idempotency key runs one Lua script that checks and sets the key and adds the task
//! atomically, so "seen before" and "added" can never disagree after a crash.
//! `enqueue_batch` sends all of its commands in one pipeline (one round trip).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::rdb::Conn;
use serde::Serialize;

use crate::config::ProducerConfig;
use crate::error::{Error, Result};
use crate::keys::{validate_queue_name, Lane, QueueKeys};
use crate::rdb::{self, Added, NewEntry, Placement};
use crate::routing::RouteCache;
use crate::task::{now_ms, validate_type, Task};

/// The task of one schedule tick, ready for `schedule_tick.lua`.
pub(crate) struct TickTask {
    /// `<schedule>@<tick ms>`.
    pub task_id: String,
    /// The schedule's claim state, in the stream's slot.
    pub state_key: String,
    /// The lane stream it goes to.
    pub stream: String,
    /// Its wire fields.
    pub fields: Vec<(&'static str, String)>,
    /// Its enqueue span, when traces are exported.
    pub span: Option<crate::telemetry::Span>,
}

/// A task to enqueue.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// Queue name.
    pub queue: String,
    /// Task type.
    pub task_type: String,
    /// Payload as JSON text.
    pub payload: String,
    /// Express lane.
    pub express: bool,
    /// Do not run before this delay has passed.
    pub delay: Option<Duration>,
    /// Attempts in all (default: the queue's setting in the worker).
    pub max_attempts: Option<u32>,
    /// Handler time limit (default: the queue's setting in the worker).
    pub timeout: Option<Duration>,
    /// Dedupes enqueues with the same key within the idempotency window.
    pub idempotency_key: Option<String>,
    /// Task id; a UUIDv7 when not set.
    pub id: Option<String>,
    /// Saga id, for saga steps.
    pub saga_id: Option<String>,
    /// Stream that receives the outcome.
    pub reply_to: Option<String>,
    /// Correlation text echoed in the reply.
    pub correlation: Option<String>,
    /// W3C traceparent; a new trace is started when not set.
    pub traceparent: Option<String>,
    /// Tasks with the same partition key go to the same partition of a partitioned queue
    /// (otherwise: by group key, by idempotency key, or round-robin).
    pub partition_key: Option<String>,
    /// Group key: at most the queue's `max_per_key` tasks of one key run at once, and
    /// keys take turns (see [`crate::keylimit`]). Also picks the partition.
    pub group_key: Option<String>,
}

impl NewTask {
    /// A task with a payload serialized from `payload`.
    pub fn new(
        queue: impl Into<String>,
        task_type: impl Into<String>,
        payload: &impl Serialize,
    ) -> Result<Self> {
        Ok(Self::raw(queue, task_type, serde_json::to_string(payload)?))
    }

    /// A task whose payload is already JSON text (validated at enqueue).
    pub fn raw(
        queue: impl Into<String>,
        task_type: impl Into<String>,
        payload_json: impl Into<String>,
    ) -> Self {
        NewTask {
            queue: queue.into(),
            task_type: task_type.into(),
            payload: payload_json.into(),
            express: false,
            delay: None,
            max_attempts: None,
            timeout: None,
            idempotency_key: None,
            id: None,
            saga_id: None,
            reply_to: None,
            correlation: None,
            traceparent: None,
            partition_key: None,
            group_key: None,
        }
    }

    /// Sends the task through the express lane.
    pub fn express(mut self) -> Self {
        self.express = true;
        self
    }
    /// Delays the task.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }
    /// Sets the attempts allowed.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }
    /// Sets the handler time limit.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }
    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, k: impl Into<String>) -> Self {
        self.idempotency_key = Some(k.into());
        self
    }
    /// Sets the task id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
    /// Sets the group key (per-key concurrency limits, `max_per_key`).
    pub fn group_key(mut self, k: impl Into<String>) -> Self {
        self.group_key = Some(k.into());
        self
    }
    /// Sets the trace context.
    pub fn traceparent(mut self, tp: impl Into<String>) -> Self {
        self.traceparent = Some(tp.into());
        self
    }

    fn lane(&self) -> Lane {
        if self.express {
            Lane::Express
        } else {
            Lane::Bulk
        }
    }
}

/// What an enqueue did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// Task id (of the earlier task, for a duplicate).
    pub task_id: String,
    /// Stream entry id; `None` for a scheduled task or a duplicate.
    pub entry_id: Option<String>,
    /// True when the idempotency key had been seen within the window.
    pub duplicate: bool,
    /// True when the task went to the schedule (delay).
    pub scheduled: bool,
}

/// Enqueues tasks.
#[derive(Clone)]
pub struct Producer {
    conn: Conn,
    cfg: ProducerConfig,
    known_queues: Arc<Mutex<HashSet<String>>>,
    /// Routes (task type → pool) of the queues this producer sent to, cached for
    /// [`ROUTES_TTL`]: a task sent with a stale copy lands in the default stream and the
    /// default pool forwards it; nothing is lost.
    routes: RouteCache,
    /// Replicas every enqueue waits for (`redis.wait_replicas`), if any.
    wait: Option<rdb::WaitFor>,
    /// Round-robin position over the partitions of partitioned queues.
    next_partition: Arc<std::sync::atomic::AtomicU32>,
    /// The keys of the queues and partitions this producer sent to.
    keys: KeyCache,
    /// Ends the connection's name-refresh loop when the last clone of a producer made by
    /// [`Producer::connect`] is dropped. Without it the loop held a handle on the
    /// connection forever: every dropped producer left a connection and a task behind.
    _name_loop: Option<Arc<tokio_util::sync::DropGuard>>,
    /// Exclusive connections for [`Producer::enqueue_and_wait`]'s blocking waits (a
    /// blocking read on the shared connection would stall every other enqueue behind it);
    /// made by [`Producer::connect`].
    waiters: Option<rdb::ReaderPool>,
}

/// How long one blocking read of [`Producer::enqueue_and_wait`] lasts at most.
const WAIT_BLOCK: std::time::Duration = std::time::Duration::from_secs(5);

/// Connections [`Producer::enqueue_and_wait`] may hold at once (more waiters queue for one).
const WAITER_CONNECTIONS: usize = 64;

/// How a task [`Producer::enqueue_and_wait`] waited for ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// Task id.
    pub task_id: String,
    /// `Succeeded`, `Dead` or `Cancelled`.
    pub state: crate::results::RecordState,
    /// The handler's result (succeeded; `None` if it was larger than `max_result_bytes`).
    pub result: Option<serde_json::Value>,
    /// The whole record: attempts, timestamps, last error, dead reason.
    pub record: crate::results::TaskRecord,
}

pub use crate::routing::ROUTES_TTL;

/// Makes a new W3C traceparent (version 00, sampled).
pub fn new_traceparent() -> String {
    // W3C: trace id and parent id must not be all zeros (the generators never give 0).
    crate::telemetry::TraceContext {
        trace_id: crate::telemetry::context::new_trace_id(),
        span_id: crate::telemetry::context::new_span_id(),
        sampled: true,
    }
    .traceparent()
}

/// The keys of every (queue, partition) a producer sent to, built once. A [`QueueKeys`]
/// is fifteen formatted key names, and building one for every enqueued task was a
/// quarter of the client's instructions per task (issue 14.1, `load-tests/README.md`).
/// Bounded: beyond [`KEY_CACHE_QUEUES`] queues it starts over (queue names come from
/// callers, e.g. the HTTP API).
#[derive(Clone, Default)]
struct KeyCache(Arc<Mutex<HashMap<String, Partitions>>>);

/// The keys of a queue's partitions, by partition number, as they were first needed.
type Partitions = Vec<Option<Arc<QueueKeys>>>;

/// Queues whose keys a producer keeps at most.
const KEY_CACHE_QUEUES: usize = 1024;

impl KeyCache {
    /// The keys of partition `p` of `queue`.
    fn get(&self, queue: &str, p: u32) -> Arc<QueueKeys> {
        let mut m = self.0.lock().expect("poisoned");
        if let Some(k) = m
            .get(queue)
            .and_then(|v| v.get(p as usize))
            .and_then(Option::as_ref)
        {
            return k.clone();
        }
        if m.len() >= KEY_CACHE_QUEUES && !m.contains_key(queue) {
            m.clear();
        }
        let keys = Arc::new(QueueKeys::partition(queue, p));
        let v = m.entry(queue.to_string()).or_default();
        if v.len() <= p as usize {
            v.resize(p as usize + 1, None);
        }
        v[p as usize] = Some(keys.clone());
        keys
    }
}

impl Producer {
    /// A producer on an existing connection (a `ConnectionManager` converts).
    pub fn new(conn: impl Into<Conn>, cfg: ProducerConfig) -> Self {
        Producer {
            conn: conn.into(),
            cfg,
            known_queues: Arc::new(Mutex::new(HashSet::new())),
            routes: RouteCache::default(),
            wait: None,
            next_partition: Arc::default(),
            keys: KeyCache::default(),
            _name_loop: None,
            waiters: None,
        }
    }

    /// [`Producer::wait_replicas`] as the broker's setting.
    pub(crate) fn with_wait_for(mut self, wait: Option<rdb::WaitFor>) -> Self {
        self.wait = wait;
        self
    }

    /// Enqueues return only once `replicas` replicas have the tasks, or fail with
    /// [`Error::NotReplicated`] after `timeout` (`redis.wait_replicas`, which
    /// [`Producer::connect`] applies by itself).
    pub fn wait_replicas(mut self, replicas: u32, timeout: std::time::Duration) -> Self {
        self.wait = (replicas > 0).then_some(rdb::WaitFor {
            replicas,
            timeout_ms: timeout.as_millis().max(1) as u64,
        });
        self
    }

    /// Connects to Redis (retrying with backoff until it answers).
    pub async fn connect(cfg: &crate::config::Config) -> Result<Self> {
        let name_loop = tokio_util::sync::CancellationToken::new();
        let conn = rdb::connect(
            &cfg.redis,
            &name_loop,
            rdb::ClientName::process(rdb::Role::Producer),
        )
        .await?;
        let mut p = Self::new(conn, cfg.producer.clone());
        p.wait = rdb::WaitFor::of(&cfg.redis);
        p.waiters = Some(rdb::reader_pool(
            &cfg.redis,
            WAIT_BLOCK,
            WAITER_CONNECTIONS,
            rdb::ClientName::process(rdb::Role::Producer),
        )?);
        p._name_loop = Some(Arc::new(name_loop.drop_guard()));
        Ok(p)
    }

    /// The connection, for callers that need other commands.
    pub fn connection(&self) -> Conn {
        self.conn.clone()
    }

    /// The broker this producer writes through (also the scheduler's).
    pub(crate) fn broker(&self) -> rdb::Broker {
        rdb::Broker::new(self.conn.clone()).with_wait(self.wait)
    }

    fn check(&self, t: &NewTask) -> Result<()> {
        validate_queue_name(&t.queue).map_err(|reason| Error::Invalid {
            what: "queue name",
            reason,
        })?;
        validate_type(&t.task_type).map_err(|reason| Error::Invalid {
            what: "task type",
            reason: format!("{:?} {reason}", t.task_type),
        })?;
        if t.payload.len() > self.cfg.max_payload_bytes {
            return Err(Error::PayloadTooLarge {
                task_type: t.task_type.clone(),
                size: t.payload.len(),
                limit: self.cfg.max_payload_bytes,
            });
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&t.payload) {
            return Err(Error::Invalid {
                what: "payload",
                reason: format!("not valid JSON: {e}"),
            });
        }
        if let Some(n) = t.max_attempts {
            if n == 0 || n > crate::task::MAX_TASK_ATTEMPTS {
                return Err(Error::Invalid {
                    what: "max_attempts",
                    reason: format!("must be 1 to {}, got {n}", crate::task::MAX_TASK_ATTEMPTS),
                });
            }
        }
        if let Some(d) = t.timeout {
            if d.as_millis() > crate::task::MAX_TASK_TIMEOUT_MS as u128 {
                return Err(Error::Invalid {
                    what: "timeout",
                    reason: format!(
                        "must be at most {} ms (7 days), got {} ms",
                        crate::task::MAX_TASK_TIMEOUT_MS,
                        d.as_millis()
                    ),
                });
            }
        }
        if let Some(k) = &t.group_key {
            crate::keylimit::validate_group_key(k).map_err(|reason| Error::Invalid {
                what: "group key",
                reason,
            })?;
        }
        if let Some(k) = &t.idempotency_key {
            if k.is_empty() || k.len() > 256 {
                return Err(Error::Invalid {
                    what: "idempotency key",
                    reason: "must be 1 to 256 bytes".into(),
                });
            }
        }
        Ok(())
    }

    fn entry(
        &self,
        t: NewTask,
        now: u64,
    ) -> Result<(
        NewEntry,
        bool,
        Option<crate::telemetry::Span>,
        Arc<QueueKeys>,
    )> {
        self.check(&t)?;
        let (pool, n) = self.routes.route(&t.queue, &t.task_type);
        let p = if n > 1 {
            // An idempotency key lives in its partition's slot, so a key must always pick
            // the same partition or a duplicate would slip through another one; a group
            // key's leases live in one partition, so its tasks must all go there.
            let by = t
                .partition_key
                .as_deref()
                .or(t.group_key.as_deref())
                .or(t.idempotency_key.as_deref());
            match by {
                Some(k) => crate::keys::partition_of(k, n),
                None => {
                    self.next_partition
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        % n
                }
            }
        } else {
            0
        };
        let keys = self.keys.get(&t.queue, p);
        let lane = t.lane();
        let task_id =
            t.id.clone()
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let (traceparent, span) = crate::telemetry::enqueue(
            t.traceparent,
            &t.queue,
            &t.task_type,
            &task_id,
            lane == Lane::Express,
        );
        let task = Task {
            max_attempts: t.max_attempts,
            enqueued_at: now,
            timeout_ms: t.timeout.map(|d| d.as_millis().max(1) as u64),
            idempotency_key: t.idempotency_key.clone(),
            saga_id: t.saga_id,
            reply_to: t.reply_to,
            correlation: t.correlation,
            traceparent: Some(traceparent),
            group_key: t.group_key,
            ..Task::new(task_id.clone(), t.task_type, t.payload)
        };
        let scheduled = t.delay.is_some_and(|d| !d.is_zero());
        let due = now + t.delay.map(|d| d.as_millis() as u64).unwrap_or(0);
        let placement = if scheduled {
            Placement::Scheduled {
                set: keys.scheduled.clone(),
                due_ms: due,
                member: task.encode_json_for(lane, pool.as_deref()),
            }
        } else {
            Placement::Stream {
                stream: crate::routing::stream_of(&keys, pool.as_deref(), lane),
                fields: task.encode(),
            }
        };
        let window_ms = self.cfg.idempotency_window_secs.max(1) * 1000;
        let entry = NewEntry {
            task_id,
            placement,
            idem: t
                .idempotency_key
                .as_ref()
                .map(|k| (keys.idem(k), window_ms)),
        };
        Ok((entry, scheduled, span, keys))
    }

    /// The task tick `tick_ms` of schedule `def` adds, built as any enqueue is (checks,
    /// routing to a pool or partition, wire fields), and the key of the schedule's claim
    /// state in the same slot as the stream (see [`crate::schedule`]).
    pub(crate) async fn tick_task(
        &self,
        def: &crate::schedule::ScheduleDef,
        tick_ms: u64,
    ) -> Result<TickTask> {
        self.routes
            .refresh(&self.broker(), std::iter::once(def.queue.as_str()))
            .await?;
        self.register_queues(std::iter::once(def.queue.as_str()))
            .await?;
        let mut t = NewTask::raw(&def.queue, &def.task_type, def.payload_text());
        t.express = def.express;
        t.id = Some(def.task_id(tick_ms));
        t.partition_key = Some(
            def.partition_key
                .clone()
                .unwrap_or_else(|| def.name.clone()),
        );
        let (entry, _, span, keys) = self.entry(t, now_ms())?;
        match entry.placement {
            Placement::Stream { stream, fields } => Ok(TickTask {
                task_id: entry.task_id,
                state_key: keys.schedule(&def.name),
                stream,
                fields,
                span,
            }),
            Placement::Scheduled { .. } => unreachable!("a tick has no delay"),
        }
    }

    async fn register_queues<'a>(&self, queues: impl Iterator<Item = &'a str>) -> Result<()> {
        let new: Vec<String> = {
            let known = self.known_queues.lock().expect("poisoned");
            queues
                .filter(|q| !known.contains(*q))
                .map(str::to_string)
                .collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        self.broker().register_queues(&new).await?;
        self.known_queues.lock().expect("poisoned").extend(new);
        Ok(())
    }

    /// Enqueues one task.
    pub async fn enqueue(&self, t: NewTask) -> Result<Enqueued> {
        let mut v = self.enqueue_batch(vec![t]).await?;
        Ok(v.pop().expect("one result per task"))
    }

    /// Enqueues one task and waits until it ends (succeeded, dead or cancelled), at most
    /// `timeout`; a failed run that will be retried is not an end. The queue's workers must
    /// keep results (`result_ttl_secs`, see [`crate::results`]): the wait blocks in Redis on
    /// the task's doorbell, which they ring, and never polls. An idempotent duplicate waits
    /// for the first task. A producer made with [`Producer::new`] has no connections of its
    /// own to block on: use [`Producer::connect`].
    ///
    /// Errors: [`Error::WaitTimeout`] when the task did not end in time (it is enqueued,
    /// and may still run), and whatever the enqueue itself can fail with.
    pub async fn enqueue_and_wait(
        &self,
        t: NewTask,
        timeout: std::time::Duration,
    ) -> Result<Finished> {
        let Some(pool) = &self.waiters else {
            return Err(Error::Invalid {
                what: "enqueue_and_wait",
                reason:
                    "this producer has no connections to wait on; make it with Producer::connect"
                        .into(),
            });
        };
        let queue = t.queue.clone();
        let mut v = self.enqueue_with_keys(vec![t]).await?;
        let (e, keys) = v.pop().expect("one result per task");
        let deadline = std::time::Instant::now() + timeout;
        let broker = self.broker();
        let done = keys.done(&e.task_id);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let rang =
                !left.is_zero() && broker.wait_done(pool, &done, left.min(WAIT_BLOCK)).await?;
            if rang || left.is_zero() {
                let parts = broker.partitions(&QueueKeys::new(&queue)).await?;
                if let Some((_, r)) = broker.task_record(&queue, parts, &e.task_id).await? {
                    if r.state.is_final() {
                        return Ok(Finished {
                            task_id: e.task_id,
                            state: r.state,
                            result: r
                                .result
                                .as_deref()
                                .and_then(|t| serde_json::from_str(t).ok()),
                            record: r,
                        });
                    }
                }
                if left.is_zero() {
                    return Err(Error::WaitTimeout {
                        task_id: e.task_id,
                        queue,
                        waited_ms: timeout.as_millis() as u64,
                    });
                }
            }
        }
    }

    /// Enqueues tasks in one pipelined round trip. Every task is validated first; if one is
    /// invalid nothing is sent. Each task's add is atomic on its own; on a connection error
    /// some tasks may have been added (as with any producer, retry with idempotency keys
    /// for exactly-once enqueue).
    pub async fn enqueue_batch(&self, tasks: Vec<NewTask>) -> Result<Vec<Enqueued>> {
        Ok(self
            .enqueue_with_keys(tasks)
            .await?
            .into_iter()
            .map(|(e, _)| e)
            .collect())
    }

    /// [`Producer::enqueue_batch`], with the keys of the partition each task went to.
    async fn enqueue_with_keys(
        &self,
        tasks: Vec<NewTask>,
    ) -> Result<Vec<(Enqueued, Arc<QueueKeys>)>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        self.routes
            .refresh(&self.broker(), tasks.iter().map(|t| t.queue.as_str()))
            .await?;
        let now = now_ms();
        let mut queues: Vec<(String, Lane)> = Vec::with_capacity(tasks.len());
        let mut entries = Vec::with_capacity(tasks.len());
        let mut scheduled = Vec::with_capacity(tasks.len());
        let mut spans = Vec::new();
        let mut keys = Vec::with_capacity(tasks.len());
        for t in tasks {
            queues.push((t.queue.clone(), t.lane()));
            let (e, s, span, k) = self.entry(t, now)?;
            entries.push(e);
            scheduled.push(s);
            spans.push(span);
            keys.push(k);
        }
        let added = match self.add(&queues, &entries).await {
            Ok(a) => a,
            Err(e) => {
                let end = std::time::SystemTime::now();
                for s in spans.into_iter().flatten() {
                    s.end(end, Some(e.to_string()));
                }
                return Err(e);
            }
        };
        let end = std::time::SystemTime::now();
        let mut out = Vec::with_capacity(entries.len());
        for (((((entry, added), (queue, lane)), scheduled), span), keys) in entries
            .into_iter()
            .zip(added)
            .zip(queues)
            .zip(scheduled)
            .zip(spans)
            .zip(keys)
        {
            if let Some(s) = span {
                s.attr(
                    "taskstream.duplicate",
                    matches!(added, Added::Duplicate(_)).to_string(),
                )
                .end(end, None);
            }
            let e = match added {
                Added::New(entry_id) => Enqueued {
                    task_id: entry.task_id,
                    entry_id,
                    duplicate: false,
                    scheduled,
                },
                Added::Duplicate(first) => {
                    metrics::counter!(crate::metrics::ENQUEUE_DUPLICATES_TOTAL, "queue" => queue.clone()).increment(1);
                    Enqueued {
                        task_id: first,
                        entry_id: None,
                        duplicate: true,
                        scheduled: false,
                    }
                }
            };
            if !e.duplicate {
                metrics::counter!(crate::metrics::ENQUEUED_TOTAL, "queue" => queue, "lane" => lane.as_str()).increment(1);
            }
            out.push((e, keys));
        }
        Ok(out)
    }

    /// Registers the queues (once per producer) and adds the entries.
    async fn add(&self, queues: &[(String, Lane)], entries: &[NewEntry]) -> Result<Vec<Added>> {
        self.register_queues(queues.iter().map(|(q, _)| q.as_str()))
            .await?;
        self.broker().enqueue(entries).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new traceparent is a valid, sampled one.
    #[test]
    fn new_traceparents_are_valid_and_sampled() {
        let t = new_traceparent();
        let parsed = crate::telemetry::TraceContext::parse(&t).expect("a valid traceparent");
        assert!(parsed.sampled);
        assert_eq!(t.len(), 55);
    }

    /// Cached keys are the keys, per partition, and the cache stays bounded.
    #[test]
    fn cached_keys_are_built_once_and_bounded() {
        let c = KeyCache::default();
        let a = c.get("orders", 2);
        assert_eq!(*a, QueueKeys::partition("orders", 2));
        assert!(Arc::ptr_eq(&a, &c.get("orders", 2)));
        assert_eq!(*c.get("orders", 0), QueueKeys::new("orders"));
        for i in 0..3 * KEY_CACHE_QUEUES {
            assert_eq!(
                c.get(&format!("q{i}"), 0).stream,
                QueueKeys::new(&format!("q{i}")).stream
            );
        }
        assert!(c.0.lock().unwrap().len() <= KEY_CACHE_QUEUES);
    }
}
