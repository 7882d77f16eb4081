//! The inspector: the operator's typed view of a taskstream deployment — queue statistics,
//! the queues that have live workers, dead letters (list, requeue, purge) and the signals
//! that pause, resume and cancel.
//!
//! The CLI is a thin layer over it (it parses flags and prints), and a REST API or an MCP
//! server can be one too: everything an operator can do against Redis is a method here
//! with a typed, `Serialize`able answer, never a raw reply. The Redis commands themselves
//! are methods of [`Broker`] (`src/rdb/inspect.rs`, `src/rdb/signals.rs`).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::RedisConfig;
use crate::dlq::DeadLetter;
use crate::error::Result;
use crate::preflight::Report;
use crate::rdb::Broker;
use crate::signal::{Signal, SignalEntry};
use crate::stats::{QueueCounters, QueueStats};
use crate::task::now_ms;

/// The heartbeat lapse used when none is given: a worker silent this long is not live.
pub const DEFAULT_HEARTBEAT_LAPSE_MS: u64 = 1_500;

/// Operator operations over one Redis deployment. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Inspector {
    /// The broker every operation goes through.
    broker: Broker,
    /// A worker that beat within this many ms counts as live.
    lapse_ms: u64,
}

/// A page of dead letters and how many there are in all.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetterPage {
    /// The letters, oldest first.
    pub letters: Vec<DeadLetter>,
    /// Entries in the dead-letter stream when it was read.
    pub total: u64,
}

impl DeadLetterPage {
    /// True when the stream holds more letters than this page shows.
    pub fn truncated(&self) -> bool {
        (self.letters.len() as u64) < self.total
    }
}

/// What requeueing one dead letter did.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Requeued {
    /// Moved back to its lane with attempt 1.
    Requeued,
    /// No dead letter with that id (already requeued or purged?).
    NotFound,
    /// The entry holds no task fields (a malformed entry); it stays where it is.
    Malformed,
}

/// What [`Inspector::pause_and_wait`] saw.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PauseReport {
    /// The pause signal's entry id.
    pub signal_id: String,
    /// Live consumers that reported the pause applied (nothing starts on them).
    pub applied: Vec<String>,
    /// Live consumers that had not reported it when the wait ended.
    pub missing: Vec<String>,
}

/// What requeueing every dead letter did.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
pub struct RequeueAll {
    /// Letters moved back to their lane.
    pub requeued: u64,
    /// Malformed letters left in place.
    pub skipped: u64,
}

/// Whether a queue is served, as a producer would want to know before enqueueing.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QueueStatus {
    /// The queue asked about.
    pub queue: String,
    /// Whether it is in the queues registry (`ts:queues`: a worker or a producer used it).
    pub registered: bool,
    /// Its workers with a fresh heartbeat.
    pub live_workers: u64,
    /// Every queue that has at least one live worker, sorted.
    pub served_queues: Vec<String>,
}

/// One worker process of a queue, as it reported itself with its last heartbeat.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkerInfo {
    /// Consumer name (`<host>-<pid>` unless configured).
    pub consumer: String,
    /// Unix ms of its last heartbeat.
    pub last_beat_at: u64,
    /// Host it runs on.
    pub host: Option<String>,
    /// Its process id.
    pub pid: Option<u64>,
    /// taskstream version.
    pub version: Option<String>,
    /// Consumer group.
    pub group: Option<String>,
    /// Pool it serves, if not the default.
    pub pool: Option<String>,
    /// Slots it may use now (the SLA loop moves it between min and max).
    pub concurrency: Option<u64>,
    /// Handlers running at its last heartbeat.
    pub running: Option<u64>,
    /// Unix ms it started.
    pub started_at: Option<u64>,
    /// Entries delivered to it and not yet acknowledged, bulk lane.
    pub pending_bulk: u64,
    /// Same, express lane.
    pub pending_express: u64,
}

impl WorkerInfo {
    /// From a heartbeat, the JSON the worker wrote (`ts:{q}:workers`, may be empty for a
    /// worker of an older version) and its pending counts.
    pub(crate) fn from_parts(
        consumer: String,
        last_beat_at: u64,
        v: &serde_json::Value,
        pending_bulk: u64,
        pending_express: u64,
    ) -> Self {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
        let n = |k: &str| v.get(k).and_then(|x| x.as_u64());
        WorkerInfo {
            consumer,
            last_beat_at,
            host: s("host"),
            pid: n("pid"),
            version: s("version"),
            group: s("group"),
            pool: s("pool"),
            concurrency: n("concurrency"),
            running: n("running"),
            started_at: n("started_at"),
            pending_bulk,
            pending_express,
        }
    }
}

impl Inspector {
    /// An inspector over `broker`, with the default heartbeat lapse.
    pub fn new(broker: Broker) -> Self {
        Inspector {
            broker,
            lapse_ms: DEFAULT_HEARTBEAT_LAPSE_MS,
        }
    }

    /// Connects to `cfg`, retrying with backoff until Redis answers or `cancel` fires.
    pub async fn connect(
        cfg: &RedisConfig,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<Self> {
        Ok(Inspector::new(
            Broker::connect(
                cfg,
                cancel,
                crate::rdb::ClientName::process(crate::rdb::Role::Cli),
            )
            .await?,
        ))
    }

    /// Judges workers live when they beat within `ms` (the workers' `heartbeat_lapse_ms`).
    pub fn with_heartbeat_lapse(mut self, ms: u64) -> Self {
        self.lapse_ms = ms;
        self
    }

    /// The broker underneath.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Names of all known queues: the registry plus `extra` (e.g. configured ones), sorted.
    pub async fn queues(&self, extra: &[String]) -> Result<Vec<String>> {
        let mut names = self.broker.registered_queues().await?;
        for e in extra {
            if !names.contains(e) {
                names.push(e.clone());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Statistics of one queue.
    /// How many partitions `queue` has, as workers recorded it (1 when none did).
    pub async fn partitions(&self, queue: &str) -> Result<u32> {
        self.broker
            .partitions(&crate::keys::QueueKeys::new(queue))
            .await
    }

    /// One queue's figures, all partitions added up.
    pub async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        self.broker.queue_stats(queue, self.lapse_ms).await
    }

    /// Statistics of each of `queues`, in that order.
    pub async fn stats(&self, queues: &[String]) -> Result<Vec<QueueStats>> {
        let mut out = Vec::with_capacity(queues.len());
        for q in queues {
            out.push(self.queue_stats(q).await?);
        }
        Ok(out)
    }

    /// Completion counters (done, retried, dead) of each of `queues`.
    pub async fn counters(&self, queues: &[String]) -> Result<Vec<QueueCounters>> {
        self.broker.counters(queues).await
    }

    /// Registered queues that have live workers, with how many, sorted by name.
    pub async fn served_queues(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for q in self.queues(&[]).await? {
            let n = self.broker.live_workers(&q, self.lapse_ms).await?;
            if n > 0 {
                out.push((q, n));
            }
        }
        Ok(out)
    }

    /// Whether `queue` is known and served (and which queues are).
    pub async fn queue_status(&self, queue: &str) -> Result<QueueStatus> {
        let registered = self.broker.registered_queues().await?;
        let served = self.served_queues().await?;
        Ok(QueueStatus {
            queue: queue.to_string(),
            registered: registered.iter().any(|q| q == queue),
            live_workers: served
                .iter()
                .find(|(q, _)| q == queue)
                .map(|(_, n)| *n)
                .unwrap_or(0),
            served_queues: served.into_iter().map(|(q, _)| q).collect(),
        })
    }

    /// Up to `limit` dead letters of `queue`, oldest first, and how many there are.
    pub async fn dead_letters(&self, queue: &str, limit: usize) -> Result<DeadLetterPage> {
        let (letters, total) = self.broker.dead_letters(queue, "-", "+", limit).await?;
        Ok(DeadLetterPage { letters, total })
    }

    /// Searches the dead letters of `queue` with `filter`: up to `limit` matches from
    /// `cursor` on (see [`crate::dlq::SearchPage`]). The scan runs in Redis, bounded per
    /// request.
    pub async fn search_dead_letters(
        &self,
        queue: &str,
        filter: &crate::dlq::DeadLetterFilter,
        cursor: Option<&crate::dlq::SearchCursor>,
        limit: usize,
    ) -> Result<crate::dlq::SearchPage> {
        crate::dlq::search(&self.broker, queue, filter, cursor, limit.max(1)).await
    }

    /// Requeues or deletes every dead letter of `queue` that `filter` matches; with
    /// `dry_run`, only counts them.
    pub async fn bulk_dead_letters(
        &self,
        queue: &str,
        filter: &crate::dlq::DeadLetterFilter,
        action: crate::dlq::BulkAction,
        dry_run: bool,
    ) -> Result<crate::dlq::BulkOutcome> {
        crate::dlq::bulk(&self.broker, queue, filter, action, dry_run).await
    }

    /// Where task `task_id` of `queue` is and its state (see [`crate::lookup`]);
    /// `None` when it is in none of the places a task waits, runs or dies.
    pub async fn task(
        &self,
        queue: &str,
        task_id: &str,
    ) -> Result<Option<crate::lookup::TaskInfo>> {
        crate::lookup::find(&self.broker, queue, task_id).await
    }

    /// The live worker processes of `queue`.
    pub async fn workers(&self, queue: &str) -> Result<Vec<WorkerInfo>> {
        self.broker.workers(queue, self.lapse_ms).await
    }

    /// Moves dead letter `dlq_id` back into its lane with a fresh attempt count.
    pub async fn requeue(&self, queue: &str, dlq_id: &str) -> Result<Requeued> {
        Ok(
            match self.broker.requeue_dead_letter(queue, dlq_id).await? {
                1 => Requeued::Requeued,
                0 => Requeued::NotFound,
                _ => Requeued::Malformed,
            },
        )
    }

    /// Requeues every dead letter present when called; letters that die again meanwhile
    /// are left alone, so it always ends.
    pub async fn requeue_all(&self, queue: &str) -> Result<RequeueAll> {
        let (requeued, skipped) = crate::dlq::requeue_all_on(&self.broker, queue).await?;
        Ok(RequeueAll { requeued, skipped })
    }

    /// Deletes every dead letter of `queue`; returns how many there were.
    pub async fn purge(&self, queue: &str) -> Result<u64> {
        self.broker.purge_dead_letters(queue).await
    }

    /// Sends `signal` to every replica of `queue`; returns its entry id.
    pub async fn signal(&self, queue: &str, signal: &Signal) -> Result<String> {
        self.broker.send_signal(queue, signal, now_ms()).await
    }

    /// Pauses delivery of `queue` on every replica (tasks wait in Redis). Returns at once;
    /// see [`Inspector::pause_and_wait`] to know when the replicas applied it.
    pub async fn pause(&self, queue: &str) -> Result<String> {
        self.signal(queue, &Signal::Pause).await
    }

    /// Pauses `queue`, then waits up to `wait` until every consumer live when it was sent
    /// (one that beat within the heartbeat lapse) reports it applied the pause. A replica reports that
    /// only once nothing more can start on it (issue 10.2), so when the report lists no
    /// `missing` consumer, nothing of the queue starts anywhere until the resume. A
    /// consumer that is stopped (SIGSTOP), partitioned or busy in a long stall is named in
    /// `missing`; it applies the pause when it reads its signals again.
    pub async fn pause_and_wait(&self, queue: &str, wait: Duration) -> Result<PauseReport> {
        // The consumers live when the pause is sent: one that dies meanwhile stops
        // beating, but is still named, as it may have run something since.
        let live = self.broker.live_consumers(queue, self.lapse_ms).await?;
        let signal_id = self.pause(queue).await?;
        let deadline = Instant::now() + wait;
        loop {
            let states = self.broker.pause_states(queue).await?;
            let (applied, missing): (Vec<String>, Vec<String>) = live
                .iter()
                .cloned()
                .partition(|c| states.get(c).copied().unwrap_or(false));
            if missing.is_empty() || Instant::now() >= deadline {
                return Ok(PauseReport {
                    signal_id,
                    applied,
                    missing,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await; // poll
        }
    }

    /// Resumes delivery of `queue`.
    pub async fn resume(&self, queue: &str) -> Result<String> {
        self.signal(queue, &Signal::Resume).await
    }

    /// Sets the progress of running task `task_id` of `queue` (any JSON text, kept as the
    /// newest report in its record; [`crate::results`]): how an HTTP handler reports
    /// progress. False when the task has no running record (unknown, ended, or the queue
    /// keeps no results).
    pub async fn report_progress(&self, queue: &str, task_id: &str, json: &str) -> Result<bool> {
        let parts = self
            .broker
            .partitions(&crate::keys::QueueKeys::new(queue))
            .await?;
        self.broker
            .report_progress(queue, parts, task_id, json)
            .await
    }

    /// Cancels task `task_id` of `queue`, queued or running.
    pub async fn cancel(&self, queue: &str, task_id: &str) -> Result<String> {
        let s = Signal::Cancel {
            task_id: task_id.to_string(),
        };
        self.signal(queue, &s).await
    }

    /// Up to `count` signals of `queue` after entry id `after` (`"0"`: from the start).
    pub async fn signals(
        &self,
        queue: &str,
        after: &str,
        count: usize,
    ) -> Result<Vec<SignalEntry>> {
        self.broker.read_signals(queue, after, count).await
    }

    /// Checks the server as a worker does at start (version, eviction policy, durability).
    pub async fn server_check(&self) -> Result<Report> {
        let f = self.broker.server_facts().await?;
        Ok(crate::preflight::evaluate(
            &f.version,
            f.maxmemory_policy.as_deref(),
            f.appendonly.as_deref(),
            f.replicas,
        ))
    }
}
