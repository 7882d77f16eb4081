//! `/api/v1/queues…`: live statistics, pause and resume, workers.

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::Json;
use serde::Serialize;

use super::extract::Query;
use super::{known_queue, limit, ApiState, Caller, PathParams, Problem};
use crate::inspect::WorkerInfo;
use crate::stats::{QueueCounters, QueueStats};

/// One queue: its live figures and completion counters.
#[derive(Debug, Serialize)]
pub(crate) struct QueueView {
    /// Lengths, pending, lag, ages, workers, partitions.
    #[serde(flatten)]
    stats: QueueStats,
    /// Tasks done, retried and dead-lettered since the queue was first used.
    counters: QueueCounters,
}

/// A page of queues.
#[derive(Debug, Serialize)]
pub(crate) struct QueuePage {
    /// The queues, by name.
    pub(crate) queues: Vec<QueueView>,
    /// The cursor of the next page (the last name of this one), if any.
    pub(crate) next_cursor: Option<String>,
}

async fn view(state: &ApiState, queue: &str) -> Result<QueueView, Problem> {
    let b = state.backend()?;
    let stats = b.insp.queue_stats(queue).await?;
    let counters = b
        .insp
        .counters(&[queue.to_string()])
        .await?
        .pop()
        .unwrap_or(QueueCounters {
            queue: queue.to_string(),
            done: 0,
            retried: 0,
            dead: 0,
        });
    Ok(QueueView { stats, counters })
}

/// `GET /queues`: every known queue with its figures, by name.
pub(crate) async fn list(
    State(state): State<ApiState>,
    _caller: Caller,
    uri: Uri,
) -> Result<Json<QueuePage>, Problem> {
    let q = Query::parse(uri.query(), &["cursor", "limit"])?;
    let limit = limit(&q)?;
    Ok(Json(page(&state, q.str("cursor"), limit).await?))
}

/// The known queues after `after` (a page's `next_cursor`), at most `limit`, with their
/// figures (also the MCP tool `queue_stats`).
pub(crate) async fn page(
    state: &ApiState,
    after: Option<&str>,
    limit: usize,
) -> Result<QueuePage, Problem> {
    let b = state.backend()?;
    let names = b.insp.queues(&state.configured).await?;
    let mut page: Vec<String> = names
        .into_iter()
        .filter(|n| after.is_none_or(|a| n.as_str() > a))
        .take(limit + 1)
        .collect();
    let more = page.len() > limit;
    page.truncate(limit);
    let mut queues = Vec::with_capacity(page.len());
    for n in &page {
        queues.push(view(state, n).await?);
    }
    Ok(QueuePage {
        next_cursor: if more { page.last().cloned() } else { None },
        queues,
    })
}

/// `GET /queues/{queue}`.
pub(crate) async fn show(
    State(state): State<ApiState>,
    _caller: Caller,
    PathParams(queue): PathParams<String>,
) -> Result<Json<QueueView>, Problem> {
    known_queue(&state, &queue).await?;
    Ok(Json(view(&state, &queue).await?))
}

/// The answer to a signal.
#[derive(Debug, Serialize)]
pub(crate) struct SignalSent {
    /// The queue.
    queue: String,
    /// Entry id of the signal every replica follows.
    signal_id: String,
}

async fn signal(
    state: ApiState,
    caller: Caller,
    queue: String,
    pause: bool,
) -> Result<(StatusCode, Json<SignalSent>), Problem> {
    let action = if pause { "pause" } else { "resume" };
    caller.require_admin(&format!("{action} a queue"))?;
    known_queue(&state, &queue).await?;
    let b = state.backend()?;
    let signal_id = if pause {
        b.insp.pause(&queue).await?
    } else {
        b.insp.resume(&queue).await?
    };
    tracing::info!(token = %caller.name, queue = %queue, action, "api: queue {action}d");
    Ok((StatusCode::ACCEPTED, Json(SignalSent { queue, signal_id })))
}

/// `POST /queues/{queue}/pause`: no task of the queue starts on any replica until resumed.
pub(crate) async fn pause(
    State(state): State<ApiState>,
    caller: Caller,
    PathParams(queue): PathParams<String>,
) -> Result<(StatusCode, Json<SignalSent>), Problem> {
    signal(state, caller, queue, true).await
}

/// `POST /queues/{queue}/resume`.
pub(crate) async fn resume(
    State(state): State<ApiState>,
    caller: Caller,
    PathParams(queue): PathParams<String>,
) -> Result<(StatusCode, Json<SignalSent>), Problem> {
    signal(state, caller, queue, false).await
}

/// A page of workers.
#[derive(Debug, Serialize)]
pub(crate) struct WorkerPage {
    /// Live workers, by consumer name.
    workers: Vec<WorkerInfo>,
    /// The cursor of the next page (the last consumer name of this one), if any.
    next_cursor: Option<String>,
}

/// `GET /queues/{queue}/workers`: live worker processes, with concurrency, running
/// handlers, pending entries and heartbeat times.
pub(crate) async fn workers(
    State(state): State<ApiState>,
    _caller: Caller,
    PathParams(queue): PathParams<String>,
    uri: Uri,
) -> Result<Json<WorkerPage>, Problem> {
    let q = Query::parse(uri.query(), &["cursor", "limit"])?;
    let limit = limit(&q)?;
    known_queue(&state, &queue).await?;
    let after = q.str("cursor");
    let mut all: Vec<WorkerInfo> = state
        .backend()?
        .insp
        .workers(&queue)
        .await?
        .into_iter()
        .filter(|w| after.is_none_or(|a| w.consumer.as_str() > a))
        .take(limit + 1)
        .collect();
    let more = all.len() > limit;
    all.truncate(limit);
    Ok(Json(WorkerPage {
        next_cursor: if more {
            all.last().map(|w| w.consumer.clone())
        } else {
            None
        },
        workers: all,
    }))
}
