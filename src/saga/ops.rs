//! Operations on sagas for the CLI and applications: start, show, list, abort, counts.
//!
//! They talk to Redis directly and need no orchestrator running: `start` creates the
//! saga and enqueues its first step in one atomic step, and `abort` applies the `Abort`
//! event through the same compare-and-set path the orchestrator uses, so an abort racing
//! a step's reply is settled by the saga's revision, never applied on top of it.

use std::collections::BTreeMap;

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;

use super::definition::SagaDef;
use super::fsm::StepStatus;
use super::keys;
use super::store::{self, Outcome, Record, Trigger};
pub use super::view::{render_list, HistoryEntry, SagaSummary, SagaView, StepView};
use crate::error::{Error, Result};
use crate::task::now_ms;

/// Every saga state name, in life order (`pending` is never stored: a saga is created
/// running its first step).
pub const STATES: [&str; 6] = store::STATES;

/// Creations sent per pipeline by [`start_many`].
const START_CHUNK: usize = 512;

fn find<'a>(defs: &'a [SagaDef], name: &str) -> Result<&'a SagaDef> {
    defs.iter().find(|d| d.name == name).ok_or_else(|| {
        let known: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
        Error::NotFound(format!(
            "saga definition {name:?} (configured: {})",
            if known.is_empty() {
                "none; add [[sagas]] tables to the configuration".to_string()
            } else {
                known.join(", ")
            }
        ))
    })
}

/// Starts saga `name` of `defs` with `input` (any JSON; every step receives it) and
/// returns its id. The saga is created and its first step enqueued atomically; an
/// orchestrator drives it from there.
pub async fn start(
    conn: &mut ConnectionManager,
    defs: &[SagaDef],
    name: &str,
    input: Value,
) -> Result<String> {
    let def = find(defs, name)?;
    let w = store::start_write(def, input, now_ms())?;
    if !store::commit(conn, &w).await? {
        // Ids are fresh v7 UUIDs: a clash means a bug, not bad luck.
        return Err(Error::Invalid {
            what: "saga id",
            reason: format!("saga {} already exists", w.id),
        });
    }
    Ok(w.id)
}

/// Starts one saga `name` per input, pipelined (for load tests and batch jobs); returns
/// their ids in input order.
pub async fn start_many(
    conn: &mut ConnectionManager,
    defs: &[SagaDef],
    name: &str,
    inputs: Vec<Value>,
) -> Result<Vec<String>> {
    let def = find(defs, name)?;
    let mut ids = Vec::with_capacity(inputs.len());
    let mut inputs = inputs.into_iter().peekable();
    while inputs.peek().is_some() {
        let now = now_ms();
        let ws = inputs
            .by_ref()
            .take(START_CHUNK)
            .map(|i| store::start_write(def, i, now))
            .collect::<Result<Vec<_>>>()?;
        store::commit_creations(conn, &ws).await?;
        ids.extend(ws.into_iter().map(|w| w.id));
    }
    Ok(ids)
}

fn status_text(s: StepStatus) -> String {
    match serde_json::to_value(s) {
        Ok(Value::String(t)) => t,
        _ => format!("{s:?}"),
    }
}

fn view_of(rec: Record, history: Vec<HistoryEntry>, ttl_ms: i64) -> SagaView {
    let state = rec.state.as_ref().ok();
    let snapshot = rec.snapshot().ok();
    let def = snapshot.as_ref();
    let n = def
        .map(|d| d.steps.len())
        .or(state.map(|s| s.steps().len()))
        .unwrap_or(0);
    let steps = (0..n)
        .map(|i| {
            let d = def.and_then(|d| d.steps.get(i));
            let s = state.and_then(|s| s.steps().get(i));
            let m = rec.meta.get(i).cloned().unwrap_or_default();
            StepView {
                index: i,
                name: d.map(|d| d.name.clone()).unwrap_or_else(|| format!("#{i}")),
                action: d.map(|d| d.action.clone()).unwrap_or_default(),
                compensation: d.and_then(|d| d.compensation.clone()),
                queue: d.map(|d| d.queue.clone()).unwrap_or_default(),
                status: s
                    .map(|s| status_text(s.status))
                    .unwrap_or_else(|| "unknown".into()),
                attempts: m.attempts,
                compensation_attempts: m.comp_attempts,
                started_at: m.started_at,
                ended_at: m.ended_at,
                compensation_started_at: m.comp_started_at,
                compensation_ended_at: m.comp_ended_at,
                output: s.and_then(|s| s.output.clone()),
                error: s.and_then(|s| s.error.clone()),
            }
        })
        .collect();
    let current_step = if store::is_terminal_name(&rec.status) {
        None
    } else {
        state
            .and_then(|s| s.status().step())
            .and_then(|i| def.and_then(|d| d.steps.get(i)))
            .map(|s| s.name.clone())
    };
    let mut error = rec.error.clone();
    if let (None, Err(e)) = (&error, &rec.state) {
        error = Some(e.clone());
    }
    SagaView {
        id: rec.id,
        saga: rec.saga,
        version: rec.version,
        status: rec.status,
        current_step,
        input: rec.input,
        error,
        rev: rec.rev,
        created_at: rec.created,
        updated_at: rec.updated,
        finished_at: rec.finished,
        deadline_at: rec.deadline,
        expires_in_secs: rec
            .finished
            .map(|_| if ttl_ms < 0 { -1 } else { ttl_ms / 1000 }),
        traceparent: rec.traceparent,
        steps,
        history,
    }
}

/// Everything about saga `id`: state, steps with status, attempts and timings, errors,
/// history. [`SagaView::render`] formats it for a terminal.
pub async fn show(conn: &mut ConnectionManager, id: &str) -> Result<SagaView> {
    let mut p = redis::pipe();
    p.cmd("HGETALL").arg(keys::saga(id));
    p.cmd("LRANGE").arg(keys::history(id)).arg(0).arg(-1);
    p.cmd("PTTL").arg(keys::saga(id));
    let (h, hist, ttl): (std::collections::HashMap<String, String>, Vec<String>, i64) =
        p.query_async(conn).await?;
    let rec = Record::from_fields(id, h).ok_or_else(|| {
        Error::NotFound(format!(
            "saga {id:?} (never started, or finished and expired)"
        ))
    })?;
    let history = hist
        .iter()
        .filter_map(|h| serde_json::from_str(h).ok())
        .collect();
    Ok(view_of(rec, history, ttl))
}

/// Sagas in `state` (a name of [`STATES`], or `active` for those not ended; `None` for
/// all), those that entered their state most recently first, at most `limit`.
pub async fn list(
    conn: &mut ConnectionManager,
    state: Option<&str>,
    limit: usize,
) -> Result<Vec<SagaSummary>> {
    let states: Vec<&str> = match state {
        None => STATES.to_vec(),
        Some("active") => vec!["pending", "running", "compensating"],
        Some(s) if STATES.contains(&s) => vec![s],
        Some(s) => {
            return Err(Error::Invalid {
                what: "saga state",
                reason: format!("{s:?}; use one of {}, or active", STATES.join(", ")),
            })
        }
    };
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut p = redis::pipe();
    for s in &states {
        p.cmd("ZREVRANGE")
            .arg(keys::state_index(s))
            .arg(0)
            .arg(limit - 1)
            .arg("WITHSCORES");
    }
    let pages: Vec<Vec<(String, f64)>> = p.query_async(conn).await?;
    let mut all: Vec<(String, f64)> = pages.into_iter().flatten().collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1));
    all.truncate(limit);
    if all.is_empty() {
        return Ok(Vec::new());
    }
    let mut p = redis::pipe();
    for (id, _) in &all {
        p.cmd("HMGET").arg(keys::saga(id)).arg(&[
            store::f::SAGA,
            store::f::STATUS,
            store::f::STEP_NAME,
            store::f::CREATED,
            store::f::UPDATED,
            store::f::ERROR,
        ]);
    }
    type Row = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<u64>,
        Option<u64>,
        Option<String>,
    );
    let rows: Vec<Row> = p.query_async(conn).await?;
    Ok(all
        .into_iter()
        .zip(rows)
        // An index entry whose record expired: skip it (trimmed later).
        .filter_map(|((id, _), (saga, status, step, created, updated, error))| {
            Some(SagaSummary {
                id,
                saga: saga?,
                status: status.unwrap_or_default(),
                current_step: step.filter(|s| !s.is_empty()),
                created_at: created.unwrap_or(0),
                updated_at: updated.unwrap_or(0),
                error: error.filter(|e| !e.is_empty()),
            })
        })
        .collect())
}

/// Aborts saga `id`: a running saga stops and rolls back (its running step, whose
/// outcome is in doubt, is compensated first). Returns the state it is in afterwards:
/// `compensating`, `rolled_back`, or `compensating` already (aborting a rollback changes
/// nothing). An ended saga cannot be aborted.
pub async fn abort(
    conn: &mut ConnectionManager,
    defs: &[SagaDef],
    id: &str,
    reason: &str,
) -> Result<String> {
    let trig = Trigger::Abort {
        reason: reason.to_string(),
    };
    let span = tracing::info_span!("saga", saga_id = %id);
    let outcome = store::advance(conn, defs, id, &trig)
        .instrument(span.clone())
        .await?;
    match outcome {
        Outcome::Applied { to, .. } => {
            span.in_scope(|| tracing::info!(reason, state = to, "saga aborted"));
            Ok(to.to_string())
        }
        Outcome::Noop => Ok("compensating".to_string()),
        Outcome::Missing => Err(Error::NotFound(format!(
            "saga {id:?} (never started, or finished and expired)"
        ))),
        Outcome::Stale(why) | Outcome::Rejected(why) => Err(Error::Invalid {
            what: "abort",
            reason: why,
        }),
    }
}

/// Sagas per state and how many are overdue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaCounts {
    /// State name → number of sagas (finished ones within the retention).
    pub by_state: BTreeMap<String, u64>,
    /// Sagas past their deadline that have not ended (rolling back slowly, or stuck).
    pub overdue: u64,
}

/// Counts sagas per state (dropping index entries of finished sagas past the retention)
/// and overdue ones; the orchestrator samples the gauges with it.
pub async fn counts(conn: &mut ConnectionManager) -> Result<SagaCounts> {
    let retention: Option<u64> = redis::cmd("HGET")
        .arg(keys::SETTINGS)
        .arg("retention_ms")
        .query_async(conn)
        .await?;
    let now = now_ms();
    let cutoff =
        now.saturating_sub(retention.unwrap_or(store::DEFAULT_RETENTION.as_millis() as u64));
    let mut p = redis::pipe();
    for s in STATES.iter().filter(|s| store::is_terminal_name(s)) {
        p.cmd("ZREMRANGEBYSCORE")
            .arg(keys::state_index(s))
            .arg("-inf")
            .arg(format!("({cutoff}"))
            .ignore();
    }
    for s in STATES {
        p.cmd("ZCARD").arg(keys::state_index(s));
    }
    p.cmd("ZCOUNT").arg(keys::ACTIVE).arg("-inf").arg(now);
    let mut v: Vec<u64> = p.query_async(conn).await?;
    let overdue = v.pop().unwrap_or(0);
    Ok(SagaCounts {
        by_state: STATES.iter().map(|s| s.to_string()).zip(v).collect(),
        overdue,
    })
}
