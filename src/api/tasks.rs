//! `/api/v1/queues/{queue}/tasks…`: enqueue (one or a batch), look up, cancel.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{whole, Body, Obj};
use super::{known_queue, ApiState, Caller, PathParams, Problem};
use crate::lookup::TaskInfo;
use crate::producer::{Enqueued, NewTask};

/// Most tasks in one batch.
pub(crate) const MAX_BATCH: usize = 1000;

/// A task to enqueue, as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TaskIn {
    /// Task type (selects the handler).
    #[serde(rename = "type")]
    task_type: String,
    /// Any JSON; `{}` when absent.
    #[serde(default)]
    payload: Option<serde_json::Value>,
    /// The express lane.
    #[serde(default)]
    express: bool,
    /// Do not run before this many ms.
    #[serde(default, deserialize_with = "whole::opt_u64")]
    delay_ms: Option<u64>,
    /// Dedupes enqueues with the same key within the idempotency window.
    #[serde(default)]
    idempotency_key: Option<String>,
    /// Task id (a UUIDv7 when absent).
    #[serde(default)]
    id: Option<String>,
    /// Attempts in all.
    #[serde(default, deserialize_with = "whole::opt_u32")]
    max_attempts: Option<u32>,
    /// Handler time limit in ms.
    #[serde(default, deserialize_with = "whole::opt_u64")]
    timeout_ms: Option<u64>,
    /// Same key → same partition of a partitioned queue.
    #[serde(default)]
    partition_key: Option<String>,
    /// Group key: tasks of one key share the queue's `max_per_key` limit.
    #[serde(default)]
    group_key: Option<String>,
    /// W3C trace context to continue.
    #[serde(default)]
    traceparent: Option<String>,
}

/// What an enqueue did.
#[derive(Debug, Serialize)]
pub(crate) struct EnqueuedOut {
    /// Task id (of the earlier task, for a duplicate).
    task_id: String,
    /// Stream entry id; `null` for a scheduled task or a duplicate.
    entry_id: Option<String>,
    /// True when the idempotency key was seen within the window.
    duplicate: bool,
    /// True when the task went to the schedule.
    scheduled: bool,
}

impl From<Enqueued> for EnqueuedOut {
    fn from(e: Enqueued) -> Self {
        EnqueuedOut {
            task_id: e.task_id,
            entry_id: e.entry_id,
            duplicate: e.duplicate,
            scheduled: e.scheduled,
        }
    }
}

/// Upper bounds that keep a request from asking for nonsense (as the wire format's).
const MAX_DELAY_MS: u64 = 366 * 86_400_000;
const MAX_TIMEOUT_MS: u64 = 604_800_000;

fn new_task(queue: &str, t: TaskIn) -> Result<NewTask, Problem> {
    let payload = match t.payload {
        None => "{}".to_string(),
        Some(v) => serde_json::to_string(&v).map_err(|e| Problem::bad_request(e.to_string()))?,
    };
    let mut n = NewTask::raw(queue, t.task_type, payload);
    n.express = t.express;
    if let Some(d) = t.delay_ms {
        if d > MAX_DELAY_MS {
            return Err(Problem::bad_request(format!(
                "delay_ms {d} is above one year ({MAX_DELAY_MS})"
            )));
        }
        if d > 0 {
            n.delay = Some(Duration::from_millis(d));
        }
    }
    if let Some(m) = t.max_attempts {
        if !(1..=1_000_000).contains(&m) {
            return Err(Problem::bad_request(format!(
                "max_attempts {m} must be from 1 to 1000000"
            )));
        }
        n.max_attempts = Some(m);
    }
    if let Some(ms) = t.timeout_ms {
        if !(1..=MAX_TIMEOUT_MS).contains(&ms) {
            return Err(Problem::bad_request(format!(
                "timeout_ms {ms} must be from 1 to {MAX_TIMEOUT_MS} (7 days)"
            )));
        }
        n.timeout = Some(Duration::from_millis(ms));
    }
    n.idempotency_key = printable("idempotency_key", t.idempotency_key, 256)?;
    n.id = printable("id", t.id, 128)?;
    if let Some(k) = &t.partition_key {
        if k.chars().count() > 256 {
            return Err(Problem::bad_request(
                "partition_key is longer than 256 characters",
            ));
        }
    }
    n.partition_key = t.partition_key;
    if let Some(k) = &t.group_key {
        crate::keylimit::validate_group_key(k)
            .map_err(|e| Problem::bad_request(format!("group_key {e}")))?;
    }
    n.group_key = t.group_key;
    if let Some(tp) = &t.traceparent {
        if !is_traceparent(tp) {
            return Err(Problem::bad_request(format!(
                "traceparent {tp:?} is not a W3C trace context (00-<32 hex>-<16 hex>-<2 hex>)"
            )));
        }
    }
    n.traceparent = t.traceparent;
    Ok(n)
}

/// The API takes ids and idempotency keys of printable ASCII (1 to `max` characters), so
/// they read the same in a URL, a log line and a terminal. (The wire format allows more,
/// for raw producers.)
fn printable(what: &str, v: Option<String>, max: usize) -> Result<Option<String>, Problem> {
    match v {
        Some(s) if s.is_empty() || s.len() > max || !s.bytes().all(|b| b.is_ascii_graphic()) => {
            Err(Problem::bad_request(format!(
                "{what} must be 1 to {max} printable ASCII characters (no spaces)"
            )))
        }
        v => Ok(v),
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, lower case: the shape the OpenAPI document's pattern
/// gives. (Ids of all zeros pass here and are kept on the task, but start no span:
/// [`crate::telemetry::TraceContext`] refuses them.)
pub(crate) fn is_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}

/// The request's own W3C `traceparent` header, when valid: what an instrumented HTTP
/// client sends, so its trace continues through the enqueue without a body field. An
/// invalid header is ignored, as the W3C spec asks of a receiver.
pub(crate) fn header_traceparent(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| is_traceparent(v))
        .map(str::to_string)
}

/// `POST /queues/{queue}/tasks`: 201 with the new task, 200 for a duplicate.
pub(crate) async fn enqueue(
    State(state): State<ApiState>,
    caller: Caller,
    PathParams(queue): PathParams<String>,
    headers: axum::http::HeaderMap,
    Body(task): Body<TaskIn>,
) -> Result<(StatusCode, Json<EnqueuedOut>), Problem> {
    caller.require_admin("enqueue tasks")?;
    known_queue(&state, &queue).await?;
    let mut t = new_task(&queue, task)?;
    if t.traceparent.is_none() {
        t.traceparent = header_traceparent(&headers);
    }
    let ty = t.task_type.clone();
    let e = state.backend()?.producer.enqueue(t).await?;
    tracing::info!(token = %caller.name, queue = %queue, task_id = %e.task_id, task_type = %ty, duplicate = e.duplicate, "api: task enqueued");
    let status = if e.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(e.into())))
}

/// A batch to enqueue.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchIn {
    /// 1 to [`MAX_BATCH`] tasks.
    tasks: Vec<Obj<TaskIn>>,
}

/// What a batch did, in the order given.
#[derive(Debug, Serialize)]
pub(crate) struct BatchOut {
    /// One result per task.
    results: Vec<EnqueuedOut>,
}

/// `POST /queues/{queue}/tasks/batch`: every task is checked first; one invalid task
/// fails the batch with its index and nothing is enqueued.
pub(crate) async fn enqueue_batch(
    State(state): State<ApiState>,
    caller: Caller,
    PathParams(queue): PathParams<String>,
    headers: axum::http::HeaderMap,
    Body(batch): Body<BatchIn>,
) -> Result<(StatusCode, Json<BatchOut>), Problem> {
    caller.require_admin("enqueue tasks")?;
    known_queue(&state, &queue).await?;
    let n = batch.tasks.len();
    if n == 0 || n > MAX_BATCH {
        return Err(Problem::bad_request(format!(
            "a batch holds 1 to {MAX_BATCH} tasks, got {n}"
        )));
    }
    let mut tasks = Vec::with_capacity(n);
    let header = header_traceparent(&headers);
    for (i, Obj(t)) in batch.tasks.into_iter().enumerate() {
        let mut t = new_task(&queue, t).map_err(|mut p| {
            p.detail = format!("tasks[{i}]: {}", p.detail);
            p
        })?;
        if t.traceparent.is_none() {
            t.traceparent = header.clone();
        }
        tasks.push(t);
    }
    let out = state.backend()?.producer.enqueue_batch(tasks).await?;
    tracing::info!(token = %caller.name, queue = %queue, tasks = n, "api: batch enqueued");
    Ok((
        StatusCode::CREATED,
        Json(BatchOut {
            results: out.into_iter().map(Into::into).collect(),
        }),
    ))
}

/// `GET /queues/{queue}/tasks/{task_id}`.
pub(crate) async fn show(
    State(state): State<ApiState>,
    _caller: Caller,
    PathParams((queue, task_id)): PathParams<(String, String)>,
) -> Result<Json<TaskInfo>, Problem> {
    known_queue(&state, &queue).await?;
    match state.backend()?.insp.task(&queue, &task_id).await? {
        Some(t) => Ok(Json(t)),
        None => Err(Problem::not_found(format!(
            "task {task_id:?} is not waiting, running or dead in queue {queue:?}: it finished (and the queue keeps no results, or its record expired: result_ttl_secs), was never enqueued there, or sits beyond the first {} entries of a stream",
            crate::lookup::LOOKUP_SCAN
        ))),
    }
}

/// Longest progress report the API takes, in bytes of JSON.
pub(crate) const MAX_PROGRESS_BYTES: usize = 64 * 1024;

/// A progress report stored.
#[derive(Debug, Serialize)]
pub(crate) struct ProgressOut {
    /// The task.
    task_id: String,
    /// The report, as stored (JSON text).
    progress: String,
}

/// `POST /queues/{queue}/tasks/{task_id}/progress`: an HTTP handler (or anything with an
/// admin token) reports a running task's progress; the body is a JSON object. 404 when the
/// task has no running record (the queue keeps no results, or the task is not running).
pub(crate) async fn progress(
    State(state): State<ApiState>,
    caller: Caller,
    PathParams((queue, task_id)): PathParams<(String, String)>,
    Body(value): Body<serde_json::Value>,
) -> Result<Json<ProgressOut>, Problem> {
    caller.require_admin("report task progress")?;
    known_queue(&state, &queue).await?;
    if task_id.is_empty() || task_id.len() > 128 {
        return Err(Problem::bad_request("a task id is 1 to 128 bytes"));
    }
    let text = value.to_string();
    if text.len() > MAX_PROGRESS_BYTES {
        return Err(Problem::bad_request(format!(
            "a progress report is at most {MAX_PROGRESS_BYTES} bytes of JSON, got {}",
            text.len()
        )));
    }
    if !state
        .backend()?
        .insp
        .report_progress(&queue, &task_id, &text)
        .await?
    {
        return Err(Problem::not_found(format!(
            "task {task_id:?} of queue {queue:?} is not running with a record: progress is kept only while a task runs, on a queue whose workers set result_ttl_secs"
        )));
    }
    tracing::debug!(token = %caller.name, queue = %queue, task_id = %task_id, "api: task progress");
    Ok(Json(ProgressOut {
        task_id,
        progress: text,
    }))
}

/// A cancel signal sent.
#[derive(Debug, Serialize)]
pub(crate) struct Cancelled {
    /// The task.
    task_id: String,
    /// Entry id of the cancel signal.
    signal_id: String,
}

/// `POST /queues/{queue}/tasks/{task_id}/cancel`: skipped if still queued, its handler's
/// cancellation fired if running (202: the replicas act on it as they read it).
pub(crate) async fn cancel(
    State(state): State<ApiState>,
    caller: Caller,
    PathParams((queue, task_id)): PathParams<(String, String)>,
) -> Result<(StatusCode, Json<Cancelled>), Problem> {
    caller.require_admin("cancel tasks")?;
    known_queue(&state, &queue).await?;
    if task_id.is_empty() || task_id.len() > 128 {
        return Err(Problem::bad_request("a task id is 1 to 128 bytes"));
    }
    let signal_id = state.backend()?.insp.cancel(&queue, &task_id).await?;
    tracing::info!(token = %caller.name, queue = %queue, task_id = %task_id, "api: task cancelled");
    Ok((StatusCode::ACCEPTED, Json(Cancelled { task_id, signal_id })))
}
