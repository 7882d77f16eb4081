//! Task results and state (issue 13.2): what a queue that sets `result_ttl_secs` keeps of
//! each task after it ran, and the pure rules that build and read it.
//!
//! Why it is opt-in: the hot path of a queue without it writes nothing per task but its
//! ACK (taskstream keeps no index from task id to entry, see [`crate::lookup`]). A queue
//! with it pays two small writes per run, both riding the settler's batched round trips,
//! never a round trip of their own:
//!
//! - when a run starts, `ts:{q}:result:<id>` (a hash, [`crate::keys::QueueKeys::result`])
//!   gets `state = running`, the attempt, the consumer and `started_at`;
//! - when it ends, the same hash gets the outcome — `succeeded` with the handler's result
//!   (at most `max_result_bytes` of JSON; a larger one is left out and `result_error` says
//!   so), `retrying` or `dead` with the last error, `cancelled` — and `finished_at`; an
//!   ending state (succeeded, dead, cancelled) also rings the task's doorbell
//!   `ts:{q}:done:<id>`, a list of one element (the state), so
//!   [`Producer::enqueue_and_wait`](crate::producer::Producer::enqueue_and_wait) blocks in
//!   Redis instead of polling: `BLMOVE done done RIGHT LEFT` moves the element onto the same
//!   list, so it returns at once if the task already ended, wakes on the `RPUSH` otherwise,
//!   and leaves the element for every other waiter (each is served in turn). A run's start
//!   deletes the doorbell, so a task an operator requeued after it ended rings anew. Why a
//!   list and not a stream of one entry: a stream key costs about 4.5 KB of Redis memory,
//!   a one-element list about a tenth of that, for every task kept.
//!
//! Both keys expire `result_ttl_secs` after their last write. The record of a run is
//! written in the settlement batch right after its ACK, so a reader never sees
//! `succeeded` for a task that Redis still holds as pending; a run's `running` write and
//! its progress go through the same settler ahead of its settlement, so they cannot land
//! after it. Queued and scheduled tasks have no record: [`crate::lookup`] finds them where
//! they wait, and merges the record when there is one.
//!
//! What it is not: a history. The record holds the newest run; a task run twice (a worker
//! died after the handler returned and before the ACK landed, at least once) shows the
//! run that settled last. On a fan-out queue every group's run writes the same record.
//! Progress (`ctx.progress(json)`, or `POST /api/v1/queues/{q}/tasks/{id}/progress` from an
//! HTTP handler) is the newest value only, cut at `max_result_bytes`; a progress report the
//! settler has no room for (more than [`MAX_PENDING_NOTES`] waiting) is dropped, not queued
//! without bound.

use serde::Serialize;

use crate::config::QueueConfig;
use crate::keys::QueueKeys;
use crate::task::Task;

/// Running and progress writes the settler holds at most, per queue partition, before it
/// drops new progress reports (hostile or chatty handlers must not grow memory).
pub(crate) const MAX_PENDING_NOTES: usize = 10_000;

/// Longest error text a record keeps.
const MAX_RECORD_ERROR: usize = 4096;

/// What a queue keeps of its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResultsPolicy {
    /// How long a record lives after its last write, in ms.
    pub ttl_ms: u64,
    /// Longest result or progress kept, in bytes of JSON.
    pub max_result_bytes: usize,
}

impl ResultsPolicy {
    /// The policy of `cfg`; `None` when the queue keeps no results (the default).
    pub(crate) fn of(cfg: &QueueConfig) -> Option<ResultsPolicy> {
        cfg.result_ttl_secs
            .filter(|s| *s > 0)
            .map(|s| ResultsPolicy {
                ttl_ms: s.saturating_mul(1000),
                max_result_bytes: cfg.max_result_bytes,
            })
    }
}

/// The state a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    /// A run started and has not ended.
    Running,
    /// The last run failed; the next attempt waits in the schedule.
    Retrying,
    /// The last run succeeded.
    Succeeded,
    /// Dead-lettered (failed for good, out of attempts, malformed or unknown type).
    Dead,
    /// Cancelled by an operator.
    Cancelled,
}

impl RecordState {
    /// The value stored in the record's `state` field.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordState::Running => "running",
            RecordState::Retrying => "retrying",
            RecordState::Succeeded => "succeeded",
            RecordState::Dead => "dead",
            RecordState::Cancelled => "cancelled",
        }
    }

    /// Reads a stored `state`.
    pub fn parse(s: &str) -> Option<RecordState> {
        Some(match s {
            "running" => RecordState::Running,
            "retrying" => RecordState::Retrying,
            "succeeded" => RecordState::Succeeded,
            "dead" => RecordState::Dead,
            "cancelled" => RecordState::Cancelled,
            _ => return None,
        })
    }

    /// True for the states a task does not leave by itself (succeeded, dead, cancelled).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RecordState::Succeeded | RecordState::Dead | RecordState::Cancelled
        )
    }
}

/// One write to a task's record: `HSET key fields…`, `PEXPIRE key ttl`; for a final state
/// `RPUSH done <state>`, `LTRIM done -1 -1`, `PEXPIRE done ttl`; for a run's start
/// `DEL done`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RecordWrite {
    /// The record (`ts:{q}:result:<id>`).
    pub key: String,
    /// The doorbell (`ts:{q}:done:<id>`): rung by a final state, deleted by a run's start.
    pub done: Option<String>,
    /// True: ring the doorbell (a final state); false: delete it (a start).
    pub ring: bool,
    /// Time to live of both, in ms.
    pub ttl_ms: u64,
    /// Fields to set.
    pub fields: Vec<(&'static str, String)>,
}

impl RecordWrite {
    /// Bytes it holds (for the settler's budgets).
    pub(crate) fn bytes(&self) -> usize {
        self.key.len()
            + self.done.as_ref().map_or(0, String::len)
            + self
                .fields
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// The write that marks a run of `task` (attempt `attempt`, on `consumer`) as started.
pub(crate) fn running(
    keys: &QueueKeys,
    policy: ResultsPolicy,
    task: &Task,
    attempt: u32,
    consumer: &str,
    now_ms: u64,
) -> RecordWrite {
    let mut fields = vec![
        ("state", RecordState::Running.as_str().to_string()),
        ("type", task.task_type.clone()),
        ("attempt", attempt.to_string()),
        ("consumer", consumer.to_string()),
        ("enqueued_at", task.enqueued_at.to_string()),
        ("started_at", now_ms.to_string()),
        ("updated_at", now_ms.to_string()),
    ];
    if let Some(n) = task.max_attempts {
        fields.push(("max_attempts", n.to_string()));
    }
    RecordWrite {
        key: keys.result(&task.id),
        done: Some(keys.done(&task.id)),
        ring: false,
        ttl_ms: policy.ttl_ms,
        fields,
    }
}

/// The write of a progress report (`json` is the handler's JSON text). A report larger
/// than the policy's `max_result_bytes` is replaced by a note saying so.
pub(crate) fn progress(
    keys: &QueueKeys,
    policy: ResultsPolicy,
    task_id: &str,
    json: &str,
    now_ms: u64,
) -> RecordWrite {
    let value = if json.len() <= policy.max_result_bytes {
        json.to_string()
    } else {
        serde_json::json!({
            "omitted": format!(
                "progress of {} bytes exceeds max_result_bytes ({})",
                json.len(),
                policy.max_result_bytes
            )
        })
        .to_string()
    };
    RecordWrite {
        key: keys.result(task_id),
        done: None,
        ring: false,
        ttl_ms: policy.ttl_ms,
        fields: vec![("progress", value), ("updated_at", now_ms.to_string())],
    }
}

/// How a run (or a delivery that never ran) ended, as the record tells it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Ended<'a> {
    /// Succeeded with this result.
    Succeeded(&'a serde_json::Value),
    /// Failed; attempt `next_attempt` is scheduled.
    Retrying {
        /// The error.
        error: &'a str,
    },
    /// Dead-lettered for `reason`.
    Dead {
        /// Why (as in `dlq_reason`).
        reason: &'a str,
        /// The error.
        error: &'a str,
    },
    /// Cancelled by an operator.
    Cancelled,
}

/// The write that records how a run of `task` on attempt `attempt` ended.
pub(crate) fn ended(
    keys: &QueueKeys,
    policy: ResultsPolicy,
    task: &Task,
    attempt: u32,
    how: Ended<'_>,
    now_ms: u64,
) -> RecordWrite {
    let state = match how {
        Ended::Succeeded(_) => RecordState::Succeeded,
        Ended::Retrying { .. } => RecordState::Retrying,
        Ended::Dead { .. } => RecordState::Dead,
        Ended::Cancelled => RecordState::Cancelled,
    };
    let mut fields = vec![
        ("state", state.as_str().to_string()),
        ("type", task.task_type.clone()),
        ("attempt", attempt.to_string()),
        ("enqueued_at", task.enqueued_at.to_string()),
        ("updated_at", now_ms.to_string()),
    ];
    if let Some(n) = task.max_attempts {
        fields.push(("max_attempts", n.to_string()));
    }
    if state.is_final() {
        fields.push(("finished_at", now_ms.to_string()));
    }
    let cut = |e: &str| crate::worker::decide::truncate(e, MAX_RECORD_ERROR);
    match how {
        Ended::Succeeded(v) => {
            let text = v.to_string();
            if text.len() <= policy.max_result_bytes {
                fields.push(("result", text));
            } else {
                fields.push((
                    "result_error",
                    format!(
                        "result of {} bytes exceeds max_result_bytes ({}); not kept",
                        text.len(),
                        policy.max_result_bytes
                    ),
                ));
            }
        }
        Ended::Retrying { error } => fields.push(("last_error", cut(error))),
        Ended::Dead { reason, error } => {
            fields.push(("last_error", cut(error)));
            fields.push(("dead_reason", reason.to_string()));
        }
        Ended::Cancelled => {}
    }
    RecordWrite {
        key: keys.result(&task.id),
        done: state.is_final().then(|| keys.done(&task.id)),
        ring: state.is_final(),
        ttl_ms: policy.ttl_ms,
        fields,
    }
}

/// A task's record as read back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRecord {
    /// State of the newest run.
    pub state: RecordState,
    /// Task type.
    pub task_type: Option<String>,
    /// Attempt of the newest run (1-based).
    pub attempt: u32,
    /// Attempts allowed, if the task sets it.
    pub max_attempts: Option<u32>,
    /// The consumer that ran it last.
    pub consumer: Option<String>,
    /// Unix ms of the original enqueue.
    pub enqueued_at: Option<u64>,
    /// Unix ms the newest run started.
    pub started_at: Option<u64>,
    /// Unix ms it ended (final states).
    pub finished_at: Option<u64>,
    /// Unix ms of the newest write.
    pub updated_at: Option<u64>,
    /// The handler's result, JSON text (succeeded).
    pub result: Option<String>,
    /// Why the result was not kept (too large).
    pub result_error: Option<String>,
    /// The newest progress report, JSON text.
    pub progress: Option<String>,
    /// The last handler error.
    pub last_error: Option<String>,
    /// Why it was dead-lettered.
    pub dead_reason: Option<String>,
}

impl TaskRecord {
    /// Reads a record from its hash fields; `None` when it has no valid `state` (no record,
    /// or one a progress report outlived).
    pub fn from_fields(fields: &[(String, String)]) -> Option<TaskRecord> {
        let get = |n: &str| {
            fields
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_string())
        };
        let num = |n: &str| get(n).and_then(|v| v.parse::<u64>().ok());
        Some(TaskRecord {
            state: RecordState::parse(&get("state")?)?,
            task_type: get("type"),
            attempt: num("attempt").unwrap_or(1).min(u32::MAX as u64) as u32,
            max_attempts: num("max_attempts").map(|n| n.min(u32::MAX as u64) as u32),
            consumer: get("consumer"),
            enqueued_at: num("enqueued_at"),
            started_at: num("started_at"),
            finished_at: num("finished_at"),
            updated_at: num("updated_at"),
            result: get("result"),
            result_error: get("result_error"),
            progress: get("progress"),
            last_error: get("last_error"),
            dead_reason: get("dead_reason"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: usize) -> ResultsPolicy {
        ResultsPolicy {
            ttl_ms: 60_000,
            max_result_bytes: max,
        }
    }

    fn task() -> Task {
        Task {
            enqueued_at: 5,
            max_attempts: Some(3),
            ..Task::new("t1", "email", "{}")
        }
    }

    fn text(w: &RecordWrite) -> Vec<(String, String)> {
        w.fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn a_queue_without_a_ttl_keeps_nothing() {
        let mut q = QueueConfig::default();
        assert_eq!(ResultsPolicy::of(&q), None);
        q.result_ttl_secs = Some(0);
        assert_eq!(ResultsPolicy::of(&q), None);
        q.result_ttl_secs = Some(2);
        assert_eq!(ResultsPolicy::of(&q).map(|p| p.ttl_ms), Some(2000));
    }

    #[test]
    fn every_write_reads_back_as_its_state() {
        let k = QueueKeys::new("q");
        let p = policy(1024);
        let t = task();
        let v = serde_json::json!({"sent": true});
        let cases = [
            (running(&k, p, &t, 1, "c1", 10), RecordState::Running, false),
            (
                ended(&k, p, &t, 1, Ended::Retrying { error: "503" }, 11),
                RecordState::Retrying,
                false,
            ),
            (
                ended(&k, p, &t, 2, Ended::Succeeded(&v), 12),
                RecordState::Succeeded,
                true,
            ),
            (
                ended(
                    &k,
                    p,
                    &t,
                    3,
                    Ended::Dead {
                        reason: "exhausted: 3 of 3 attempts failed",
                        error: "503",
                    },
                    13,
                ),
                RecordState::Dead,
                true,
            ),
            (
                ended(&k, p, &t, 1, Ended::Cancelled, 14),
                RecordState::Cancelled,
                true,
            ),
        ];
        for (w, state, ends) in cases {
            assert_eq!(w.key, "ts:{q}:result:t1");
            assert_eq!(w.ring, ends, "{state:?}");
            // A start deletes the doorbell, an end rings it, a retry leaves it alone.
            assert_eq!(w.done.is_some(), ends || state == RecordState::Running);
            let r = TaskRecord::from_fields(&text(&w)).expect("a record");
            assert_eq!(r.state, state);
            assert_eq!(r.state.is_final(), ends);
            assert_eq!(r.finished_at.is_some(), ends);
            assert_eq!(r.max_attempts, Some(3));
            assert_eq!(r.enqueued_at, Some(5));
        }
    }

    #[test]
    fn a_result_too_large_is_named_not_kept() {
        let k = QueueKeys::new("q");
        let big = serde_json::json!("x".repeat(100));
        let w = ended(&k, policy(50), &task(), 1, Ended::Succeeded(&big), 1);
        let r = TaskRecord::from_fields(&text(&w)).unwrap();
        assert_eq!(r.result, None);
        assert!(r
            .result_error
            .unwrap()
            .contains("102 bytes exceeds max_result_bytes (50)"));
        let w = ended(&k, policy(102), &task(), 1, Ended::Succeeded(&big), 1);
        assert_eq!(
            TaskRecord::from_fields(&text(&w)).unwrap().result,
            Some(big.to_string())
        );
        let pw = progress(&k, policy(10), "t1", "[1,2,3,4,5,6,7]", 1);
        assert!(pw.fields[0].1.contains("exceeds max_result_bytes (10)"));
    }

    #[test]
    fn a_record_without_a_state_is_none() {
        let f = vec![("progress".to_string(), "1".to_string())];
        assert_eq!(TaskRecord::from_fields(&f), None);
        let f = vec![("state".to_string(), "weird".to_string())];
        assert_eq!(TaskRecord::from_fields(&f), None);
    }
}
