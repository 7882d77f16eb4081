//! Finding one task by id: where it is and what state that means.
//!
//! taskstream keeps no index from task id to entry on the hot path (it would cost every
//! enqueue and settle a write). A lookup therefore searches where a task can be, in the
//! order a task moves through them, with every scan done inside Redis and bounded:
//!
//! 1. each lane stream of each partition (and each pool's streams): `queued` when the
//!    default group has not been given the entry yet, `running` when it is in the group's
//!    pending list (delivered, not yet acknowledged); an entry delivered and acknowledged
//!    (a fan-out queue keeps it until its slowest group passes) is not the task's state;
//! 2. the schedule: `scheduled` (attempt 1, a delayed enqueue) or `retrying`;
//! 3. the dead-letter stream: `dead`, with its reason and last error.
//!
//! A default task id (the entry id, `express:` + entry id, …) is found with one `XRANGE`;
//! other ids are searched for among the newest [`LOOKUP_SCAN`] entries of each stream.
//! A task that finished leaves no entry behind (it was deleted when acknowledged). On a
//! queue that keeps results (`result_ttl_secs`, [`crate::results`]) its record says how it
//! ended — `succeeded` with its result, `cancelled`, `dead` — and is read first: a
//! succeeded or cancelled task is answered from it with one `HGETALL` per partition and no
//! stream search. Otherwise the search above runs, and the record adds what the streams do
//! not hold (when the run started, its progress, when it ended). Without a record a
//! finished task is not found, and the answer says so rather than guessing.

use serde::Serialize;

use crate::error::Result;
use crate::keys::{Lane, QueueKeys, DEFAULT_GROUP};
use crate::rdb::scan::{Criterion, Fields, SCAN_CHUNK};
use crate::rdb::Broker;
use crate::results::{RecordState, TaskRecord};
use crate::task::entry_order;

/// Entries of one stream a lookup looks at, at most (newest first is not possible with a
/// forward scan, so: the first this many from the oldest).
pub const LOOKUP_SCAN: usize = 100_000;

/// Values of a looked-up task are cut to this many bytes.
pub const LOOKUP_VALUE_CUT: usize = 64 * 1024;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Delayed: waits in the schedule for its due time.
    Scheduled,
    /// In a lane stream, not yet delivered.
    Queued,
    /// Delivered to a worker and not yet acknowledged.
    Running,
    /// Failed, waiting in the schedule for its next attempt.
    Retrying,
    /// In the dead-letter stream.
    Dead,
    /// Succeeded (known from its record, on a queue that keeps results).
    Succeeded,
    /// Cancelled by an operator (known from its record).
    Cancelled,
}

/// What a lookup found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskInfo {
    /// Task id.
    pub task_id: String,
    /// Queue.
    pub queue: String,
    /// State.
    pub state: TaskState,
    /// Lane (`bulk` or `express`).
    pub lane: String,
    /// Partition (0 for a queue that is not partitioned).
    pub partition: u32,
    /// The pool whose stream holds it, if any.
    pub pool: Option<String>,
    /// Entry id in its stream (or in the dead-letter stream); `None` while scheduled.
    pub entry_id: Option<String>,
    /// Task type.
    pub task_type: Option<String>,
    /// Attempt (1-based) it is on, or the last one made.
    pub attempt: u32,
    /// Attempts allowed, if the task sets it.
    pub max_attempts: Option<u32>,
    /// Unix ms of the original enqueue, if known.
    pub enqueued_at: Option<u64>,
    /// Unix ms it is due (scheduled and retrying tasks).
    pub due_at: Option<u64>,
    /// The last handler error, if any.
    pub last_error: Option<String>,
    /// Why it was dead-lettered (dead tasks).
    pub dead_reason: Option<String>,
    /// The consumer that holds it (running tasks).
    pub consumer: Option<String>,
    /// Times it was delivered (running tasks).
    pub deliveries: Option<u64>,
    /// Its payload (JSON text, cut at [`LOOKUP_VALUE_CUT`] bytes).
    pub payload: Option<String>,
    /// Unix ms its newest run started (from its record).
    pub started_at: Option<u64>,
    /// Unix ms it ended: succeeded, dead or cancelled (from its record).
    pub finished_at: Option<u64>,
    /// The handler's result, JSON text (succeeded, from its record).
    pub result: Option<String>,
    /// Why the result was not kept (larger than `max_result_bytes`).
    pub result_error: Option<String>,
    /// The newest progress report, JSON text (from its record).
    pub progress: Option<String>,
}

fn get<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The info of a task with `fields`, in `state`.
fn info_of(
    task_id: &str,
    queue: &str,
    state: TaskState,
    lane: &str,
    fields: &[(String, String)],
) -> TaskInfo {
    let num = |n: &str| get(fields, n).and_then(|v| v.parse::<u64>().ok());
    TaskInfo {
        task_id: task_id.to_string(),
        queue: queue.to_string(),
        state,
        lane: get(fields, "dlq_lane")
            .or(get(fields, "lane"))
            .unwrap_or(lane)
            .to_string(),
        partition: 0,
        pool: None,
        entry_id: None,
        task_type: get(fields, "type").map(String::from),
        attempt: num("attempt")
            .or(num("dlq_attempts"))
            .unwrap_or(1)
            .min(u32::MAX as u64) as u32,
        max_attempts: num("max_attempts").map(|n| n.min(u32::MAX as u64) as u32),
        enqueued_at: num("enqueued_at"),
        due_at: None,
        last_error: get(fields, "dlq_error")
            .or(get(fields, "last_error"))
            .map(String::from),
        dead_reason: get(fields, "dlq_reason").map(String::from),
        consumer: None,
        deliveries: None,
        payload: get(fields, "payload").map(String::from),
        started_at: None,
        finished_at: None,
        result: None,
        result_error: None,
        progress: None,
    }
}

/// The info of a task known only from its record (in partition `partition`).
fn info_of_record(task_id: &str, queue: &str, partition: u32, r: &TaskRecord) -> TaskInfo {
    let state = match r.state {
        RecordState::Running => TaskState::Running,
        RecordState::Retrying => TaskState::Retrying,
        RecordState::Succeeded => TaskState::Succeeded,
        RecordState::Dead => TaskState::Dead,
        RecordState::Cancelled => TaskState::Cancelled,
    };
    let mut info = info_of(task_id, queue, state, "bulk", &[]);
    info.partition = partition;
    info.task_type = r.task_type.clone();
    info.attempt = r.attempt;
    info.max_attempts = r.max_attempts;
    info.enqueued_at = r.enqueued_at;
    info.last_error = r.last_error.clone();
    info.dead_reason = r.dead_reason.clone();
    if r.state == RecordState::Running {
        info.consumer = r.consumer.clone();
    }
    merge_record(&mut info, r);
    info
}

/// Adds to `info` (found where the task waits or lies) what only its record holds.
fn merge_record(info: &mut TaskInfo, r: &TaskRecord) {
    info.started_at = r.started_at;
    info.progress = r.progress.clone();
    if r.state.is_final() {
        info.finished_at = r.finished_at;
        info.result = r.result.clone();
        info.result_error = r.result_error.clone();
    }
    if info.consumer.is_none() && info.state == TaskState::Running {
        info.consumer = r.consumer.clone();
    }
}

/// Splits a default task id into (lane, pool, entry id) when it is one.
fn default_id(task_id: &str) -> Option<(Lane, Option<&str>, &str)> {
    let is_entry = |s: &str| {
        s.split_once('-').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        })
    };
    if is_entry(task_id) {
        return Some((Lane::Bulk, None, task_id));
    }
    if let Some(rest) = task_id.strip_prefix("express:") {
        return is_entry(rest).then_some((Lane::Express, None, rest));
    }
    let rest = task_id.strip_prefix("pool:")?;
    let (pool, tail) = rest.split_once(':')?;
    if let Some(id) = tail.strip_prefix("express:") {
        return is_entry(id).then_some((Lane::Express, Some(pool), id));
    }
    is_entry(tail).then_some((Lane::Bulk, Some(pool), tail))
}

/// Searches `stream` for the entry of `task_id` (see the module docs).
async fn find_in(
    b: &Broker,
    stream: &str,
    task_id: &str,
    default_entry: Option<&str>,
) -> Result<Option<(String, Vec<(String, String)>)>> {
    if let Some(id) = default_entry {
        let s = b
            .scan_entries(stream, (id, id), 1, 1, Fields::CutAt(LOOKUP_VALUE_CUT), &[])
            .await?;
        if let Some(e) = s.matches.into_iter().next() {
            let (id, f) = e.into_text();
            // An entry that names another id is not this task.
            if get(&f, "id").is_none_or(|v| v == task_id) {
                return Ok(Some((id, f)));
            }
        }
    }
    let criteria = [Criterion::Eq("id", task_id.to_string())];
    let mut start = "-".to_string();
    let mut seen = 0usize;
    while seen < LOOKUP_SCAN {
        let s = b
            .scan_entries(
                stream,
                (&start, "+"),
                SCAN_CHUNK,
                1,
                Fields::CutAt(LOOKUP_VALUE_CUT),
                &criteria,
            )
            .await?;
        seen += s.scanned as usize;
        if let Some(e) = s.matches.into_iter().next() {
            return Ok(Some(e.into_text()));
        }
        match s.last {
            Some(last) if (s.scanned as usize) == SCAN_CHUNK => start = format!("({last}"),
            _ => break,
        }
    }
    Ok(None)
}

/// Finds task `task_id` of `queue` (see the module docs); `None` when it is nowhere.
pub(crate) async fn find(b: &Broker, queue: &str, task_id: &str) -> Result<Option<TaskInfo>> {
    let parts = b.partitions(&QueueKeys::new(queue)).await?;
    let record = b.task_record(queue, parts, task_id).await?;
    if let Some((p, r)) = &record {
        // Succeeded and cancelled tasks are nowhere else; a dead one may have been
        // requeued since, so the search below still runs for it.
        if matches!(r.state, RecordState::Succeeded | RecordState::Cancelled) {
            return Ok(Some(info_of_record(task_id, queue, *p, r)));
        }
    }
    let live = search(b, queue, parts, task_id).await?;
    Ok(match (live, record) {
        (Some(mut info), Some((_, r))) => {
            merge_record(&mut info, &r);
            Some(info)
        }
        (Some(info), None) => Some(info),
        (None, Some((p, r))) => Some(info_of_record(task_id, queue, p, &r)),
        (None, None) => None,
    })
}

/// Searches the streams, the schedule and the dead letters of `queue` for `task_id`.
async fn search(b: &Broker, queue: &str, parts: u32, task_id: &str) -> Result<Option<TaskInfo>> {
    let mut pools: Vec<String> = b
        .routes_of(&[queue.to_string()])
        .await?
        .into_iter()
        .flat_map(|m| m.into_values())
        .collect();
    pools.sort();
    pools.dedup();
    let dflt = default_id(task_id);
    for part in 0..parts {
        let mut places: Vec<(QueueKeys, Option<String>)> =
            vec![(QueueKeys::partition(queue, part), None)];
        for p in &pools {
            places.push((
                QueueKeys::pooled_partition(queue, Some(p), part),
                Some(p.clone()),
            ));
        }
        for (k, pool) in &places {
            for lane in [Lane::Bulk, Lane::Express] {
                let stream = k.lane_stream(lane);
                let entry = match dflt {
                    Some((l, p, id)) if l == lane && p == pool.as_deref() => Some(id),
                    _ => None,
                };
                let Some((entry_id, fields)) = find_in(b, stream, task_id, entry).await? else {
                    continue;
                };
                let group = DEFAULT_GROUP;
                let pending = b.pending_entry(stream, group, &entry_id).await?;
                let state = if pending.is_some() {
                    TaskState::Running
                } else {
                    let delivered = b.last_delivered(stream, group).await?;
                    if delivered.is_some_and(|d| entry_order(&entry_id) <= entry_order(&d)) {
                        // Delivered and acknowledged: a copy a fan-out queue keeps until
                        // its slowest group passes it. The task is elsewhere or finished.
                        continue;
                    }
                    TaskState::Queued
                };
                let mut info = info_of(task_id, queue, state, lane.as_str(), &fields);
                info.partition = part;
                info.pool = pool.clone();
                info.entry_id = Some(entry_id);
                if let Some((consumer, _idle, n)) = pending {
                    info.consumer = Some(consumer);
                    info.deliveries = Some(n);
                }
                return Ok(Some(info));
            }
        }
        let k = QueueKeys::partition(queue, part);
        if let Some((member, due)) = b.find_scheduled(&k.scheduled, task_id, 100).await? {
            let fields: Vec<(String, String)> =
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&member)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), String::from)))
                    .collect();
            let attempt = get(&fields, "attempt")
                .and_then(|a| a.parse::<u32>().ok())
                .unwrap_or(1);
            let state = if attempt > 1 {
                TaskState::Retrying
            } else {
                TaskState::Scheduled
            };
            let mut info = info_of(task_id, queue, state, "bulk", &fields);
            info.partition = part;
            info.due_at = Some(due as u64);
            info.payload = info
                .payload
                .map(|p| crate::worker::decide::truncate(&p, LOOKUP_VALUE_CUT));
            return Ok(Some(info));
        }
        if let Some((entry_id, fields)) = find_in(b, &k.dlq, task_id, None).await? {
            let mut info = info_of(task_id, queue, TaskState::Dead, "bulk", &fields);
            info.partition = part;
            info.entry_id = Some(entry_id);
            return Ok(Some(info));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ids_name_their_stream() {
        assert_eq!(default_id("17-0"), Some((Lane::Bulk, None, "17-0")));
        assert_eq!(
            default_id("express:17-3"),
            Some((Lane::Express, None, "17-3"))
        );
        assert_eq!(
            default_id("pool:gpu:17-3"),
            Some((Lane::Bulk, Some("gpu"), "17-3"))
        );
        assert_eq!(
            default_id("pool:gpu:express:17-3"),
            Some((Lane::Express, Some("gpu"), "17-3"))
        );
        for other in [
            "0190a1b2-7c3d-7e4f",
            "order-17",
            "express:x",
            "pool:gpu",
            "17-",
            "-0",
        ] {
            assert_eq!(default_id(other), None, "{other}");
        }
    }

    #[test]
    fn a_dead_letter_reads_as_dead_with_its_reason() {
        let f: Vec<(String, String)> = [
            ("type", "t"),
            ("dlq_reason", "exhausted: 3 of 3 attempts failed"),
            ("dlq_error", "boom"),
            ("dlq_attempts", "3"),
            ("dlq_lane", "express"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let i = info_of("x", "q", TaskState::Dead, "bulk", &f);
        assert_eq!(i.lane, "express");
        assert_eq!(i.attempt, 3);
        assert_eq!(i.last_error.as_deref(), Some("boom"));
        assert_eq!(
            i.dead_reason.as_deref(),
            Some("exhausted: 3 of 3 attempts failed")
        );
    }
}
