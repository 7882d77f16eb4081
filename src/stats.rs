//! Queue statistics read from Redis: what `taskstream stats` prints and what the collector
//! exports as gauges. Read from Redis, not from process memory, so any replica (or the CLI
//! on an operator's laptop) reports the same truth.

use crate::rdb::Conn;
use serde::Serialize;

use crate::error::Result;
use crate::keys::DEFAULT_GROUP;
use crate::rdb::Broker;

/// One consumer group of one lane.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupStats {
    /// Group name.
    pub name: String,
    /// Lane ("bulk" or "express").
    pub lane: String,
    /// Consumers registered in the group.
    pub consumers: u64,
    /// Delivered, not acknowledged.
    pub pending: u64,
    /// Not yet delivered to the group (Redis ≥ 7); `None` when Redis cannot tell.
    pub lag: Option<u64>,
}

/// One queue.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueueStats {
    /// Queue name.
    pub queue: String,
    /// Entries in the bulk stream (waiting + in flight).
    pub bulk_length: u64,
    /// Entries in the express stream.
    pub express_length: u64,
    /// Delayed or retrying tasks in the schedule.
    pub scheduled: u64,
    /// Entries in the dead-letter stream.
    pub dead_letters: u64,
    /// Age in seconds of the oldest entry still in the bulk stream.
    pub oldest_bulk_age_seconds: f64,
    /// Age in seconds of the oldest entry still in the express stream.
    pub oldest_express_age_seconds: f64,
    /// Worker processes with a fresh heartbeat (default group).
    pub live_workers: u64,
    /// Whether delivery is paused.
    pub paused: bool,
    /// Consumer groups of both lanes.
    pub groups: Vec<GroupStats>,
    /// Tasks waiting in Redis because their group key is at its `max_per_key` cap
    /// (summed over at most 100 keys per partition; see [`crate::keylimit`]).
    pub parked: u64,
    /// Group keys (scopes) with parked tasks.
    pub parked_keys: u64,
    /// Partitions the figures add up (1 for a queue that is not partitioned).
    pub partitions: u32,
    /// Each partition's own backlog and the node that holds it (partitioned queues only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_partition: Vec<PartitionStats>,
}

/// One partition of a partitioned queue.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PartitionStats {
    /// Partition number (0 holds the queue's original keys).
    pub partition: u32,
    /// Its hash tag (`Q`, `Q#p.k`).
    pub tag: String,
    /// Its Redis Cluster slot.
    pub slot: u16,
    /// The master that holds the slot (`host:port`), on a Redis Cluster.
    pub node: Option<String>,
    /// Entries in its bulk stream.
    pub bulk_length: u64,
    /// Entries in its express stream.
    pub express_length: u64,
    /// Its delayed or retrying tasks.
    pub scheduled: u64,
    /// Its dead letters.
    pub dead_letters: u64,
}

impl QueueStats {
    /// Pending entries over all groups and lanes.
    pub fn pending(&self) -> u64 {
        self.groups.iter().map(|g| g.pending).sum()
    }
    /// Lag over all groups and lanes (unknown counts as 0).
    pub fn lag(&self) -> u64 {
        self.groups.iter().map(|g| g.lag.unwrap_or(0)).sum()
    }
    /// Consumers of the default group (bulk lane).
    pub fn consumers(&self) -> u64 {
        self.groups
            .iter()
            .filter(|g| g.name == DEFAULT_GROUP && g.lane == "bulk")
            .map(|g| g.consumers)
            .sum()
    }
}

/// The completion counters of one queue (`ts:{q}:counters`, kept by the ackers).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QueueCounters {
    /// Queue name.
    pub queue: String,
    /// Tasks finished successfully.
    pub done: u64,
    /// Failed runs re-scheduled for another attempt.
    pub retried: u64,
    /// Tasks sent to the dead-letter stream.
    pub dead: u64,
}

/// Names of all known queues: the registry set plus `extra` (e.g. configured queues),
/// sorted.
pub async fn queue_names(conn: &mut Conn, extra: &[String]) -> Result<Vec<String>> {
    let mut names = Broker::new(conn.clone()).registered_queues().await?;
    for e in extra {
        if !names.contains(e) {
            names.push(e.clone());
        }
    }
    names.sort();
    Ok(names)
}

/// Reads the statistics of `queue` (kept for callers holding a bare connection; the
/// operator API is [`crate::inspect::Inspector`]).
pub async fn queue_stats(conn: &mut Conn, queue: &str, lapse_ms: u64) -> Result<QueueStats> {
    Broker::new(conn.clone()).queue_stats(queue, lapse_ms).await
}

/// Renders stats as a fixed-width table.
pub fn render_table(stats: &[QueueStats], rates: Option<&[f64]>) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<20} {:>9} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9} {:>8} {:>7} {:>10}\n",
        "QUEUE",
        "BULK",
        "EXPRESS",
        "PENDING",
        "LAG",
        "SCHED",
        "DEAD",
        "OLDEST_S",
        "WORKERS",
        "PAUSED",
        "DONE/S"
    ));
    for (i, s) in stats.iter().enumerate() {
        let rate = rates
            .and_then(|r| r.get(i))
            .map(|r| format!("{r:.0}"))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<20} {:>9} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9.1} {:>8} {:>7} {:>10}\n",
            s.queue,
            s.bulk_length,
            s.express_length,
            s.pending(),
            s.lag(),
            s.scheduled,
            s.dead_letters,
            s.oldest_bulk_age_seconds.max(s.oldest_express_age_seconds),
            s.live_workers,
            if s.paused { "yes" } else { "no" },
            rate
        ));
        if s.parked_keys > 0 {
            out.push_str(&format!(
                "  parked: {} tasks of {} keys at their max_per_key cap\n",
                s.parked, s.parked_keys
            ));
        }
        for p in &s.by_partition {
            out.push_str(&format!(
                "  #{:<17} {:>9} {:>8} {:>9} {:>8} {:>8} {:>9}  {} slot {}{}\n",
                p.partition,
                p.bulk_length,
                p.express_length,
                "",
                "",
                p.scheduled,
                p.dead_letters,
                p.tag,
                p.slot,
                p.node
                    .as_deref()
                    .map(|n| format!(" on {n}"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}

/// Tasks finished per queue so far (`ts:{q}:counters` field `done`, kept by the ackers),
/// for the throughput column of `stats --watch` and the demo's progress line.
pub async fn completed_counts(conn: &mut Conn, queues: &[String]) -> Result<Vec<(String, u64)>> {
    Ok(Broker::new(conn.clone())
        .counters(queues)
        .await?
        .into_iter()
        .map(|c| (c.queue, c.done))
        .collect())
}
