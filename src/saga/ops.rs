//! Operations on sagas for the CLI and applications: start, show, list, abort, counts.
//!
//! They talk to Redis directly and need no orchestrator running: `start` creates the
//! saga and enqueues its first step in one atomic step, and `abort` applies the `Abort`
//! event through the same compare-and-set path the orchestrator uses, so an abort racing
//! a step's reply is settled by the saga's revision, never applied on top of it.

use crate::rdb::Conn;
use serde_json::Value;
use tracing::Instrument;

use super::apply;
use super::decide::{self, Outcome, Trigger};
use super::definition::SagaDef;
use super::fsm::StepStatus;
use super::record::{self, Record};
pub use super::view::{render_list, HistoryEntry, SagaCounts, SagaSummary, SagaView, StepView};
use crate::error::{Error, Result};
use crate::rdb::Broker;
use crate::routing::RouteCache;
use crate::task::now_ms;

/// Every saga state name, in life order (`pending` is never stored: a saga is created
/// running its first step).
pub const STATES: [&str; 6] = record::STATES;

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

fn not_found(id: &str) -> Error {
    Error::NotFound(format!(
        "saga {id:?} (never started, or finished and expired)"
    ))
}

/// Starts saga `name` of `defs` with `input` (any JSON; every step receives it) and
/// returns its id. The saga is created and its first step enqueued atomically (to the
/// stream of the pool serving the step's type, if one does); an orchestrator drives it
/// from there.
pub async fn start(conn: &mut Conn, defs: &[SagaDef], name: &str, input: Value) -> Result<String> {
    start_traced(conn, defs, name, input, None).await
}

/// [`start`], continuing the W3C trace of `traceparent` (the caller's request or task):
/// the saga's steps, and its spans when they are exported, join that trace. Without it
/// (or with one that is not a valid traceparent) the saga's trace id is its own id.
pub async fn start_traced(
    conn: &mut Conn,
    defs: &[SagaDef],
    name: &str,
    input: Value,
    traceparent: Option<&str>,
) -> Result<String> {
    let def = find(defs, name)?;
    let w = decide::start_write(def, input, now_ms(), traceparent)?;
    let id = w.id.clone();
    let broker = Broker::new(conn.clone());
    if !apply::commit(&broker, &RouteCache::default(), w).await? {
        // Ids are fresh v7 UUIDs: a clash means a bug, not bad luck.
        return Err(Error::SagaExists(id));
    }
    Ok(id)
}

/// Starts one saga `name` per input, pipelined (for load tests and batch jobs); returns
/// their ids in input order.
pub async fn start_many(
    conn: &mut Conn,
    defs: &[SagaDef],
    name: &str,
    inputs: Vec<Value>,
) -> Result<Vec<String>> {
    let def = find(defs, name)?;
    let broker = Broker::new(conn.clone());
    let routes = RouteCache::default();
    let mut ids = Vec::with_capacity(inputs.len());
    let mut inputs = inputs.into_iter().peekable();
    while inputs.peek().is_some() {
        let now = now_ms();
        let mut ws = inputs
            .by_ref()
            .take(START_CHUNK)
            .map(|i| decide::start_write(def, i, now, None))
            .collect::<Result<Vec<_>>>()?;
        apply::route(&broker, &routes, &mut ws).await?;
        let created = broker.saga_create_many(&ws).await?;
        for (w, _) in ws.iter().zip(created).filter(|(_, c)| *c) {
            apply::after_commit(w);
        }
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
    let current_step = if record::is_terminal_name(&rec.status) {
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
pub async fn show(conn: &mut Conn, id: &str) -> Result<SagaView> {
    let d = Broker::new(conn.clone())
        .saga_dump(id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(view_of(d.record, d.history, d.ttl_ms))
}

/// Sagas in `state` (a name of [`STATES`], or `active` for those not ended; `None` for
/// all), those that entered their state most recently first, at most `limit`.
pub async fn list(conn: &mut Conn, state: Option<&str>, limit: usize) -> Result<Vec<SagaSummary>> {
    let states = states_of(state)?;
    Broker::new(conn.clone()).saga_list(&states, limit).await
}

/// A page of [`list`]: the sagas after `cursor` (the `next` of the previous page, or
/// `None` for the first), and the cursor of the page after this one, if there may be one.
/// A cursor is `<ms>.<saga id>`; [`parse_cursor`] checks one a client sent.
pub async fn list_page(
    conn: &mut Conn,
    state: Option<&str>,
    limit: usize,
    cursor: Option<&str>,
) -> Result<(Vec<SagaSummary>, Option<String>)> {
    let states = states_of(state)?;
    let before = cursor.map(parse_cursor).transpose()?;
    let (list, next) = Broker::new(conn.clone())
        .saga_list_page(
            &states,
            limit,
            before.as_ref().map(|(s, i)| (*s, i.as_str())),
        )
        .await?;
    Ok((list, next.map(|(s, id)| format!("{s}.{id}"))))
}

/// Parses a saga list cursor (`<ms>.<saga id>`).
pub fn parse_cursor(c: &str) -> Result<(u64, String)> {
    let bad = || Error::Invalid {
        what: "cursor",
        reason: format!(
            "{c:?} is not one this server returned (pass the next_cursor of the previous page)"
        ),
    };
    let (ms, id) = c.split_once('.').ok_or_else(bad)?;
    if ms.is_empty() || ms.len() > 19 || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let ms = ms.parse::<u64>().map_err(|_| bad())?;
    if id.is_empty() || id.chars().count() > 128 {
        return Err(bad());
    }
    Ok((ms, id.to_string()))
}

fn states_of(state: Option<&str>) -> Result<Vec<&'static str>> {
    Ok(match state {
        None => STATES.to_vec(),
        Some("active") => vec!["pending", "running", "compensating"],
        Some(s) => match STATES.iter().find(|x| **x == s) {
            Some(x) => vec![*x],
            None => {
                return Err(Error::Invalid {
                    what: "saga state",
                    reason: format!("{s:?}; use one of {}, or active", STATES.join(", ")),
                })
            }
        },
    })
}

/// Aborts saga `id`: a running saga stops and rolls back (its running step, whose
/// outcome is in doubt, is compensated first). Returns the state it is in afterwards:
/// `compensating`, `rolled_back`, or `compensating` already (aborting a rollback changes
/// nothing). An ended saga cannot be aborted ([`Error::SagaEnded`]); an unknown one is
/// [`Error::NotFound`].
pub async fn abort(conn: &mut Conn, defs: &[SagaDef], id: &str, reason: &str) -> Result<String> {
    let trig = Trigger::Abort {
        reason: reason.to_string(),
    };
    let span = tracing::info_span!("saga", saga_id = %id);
    let broker = Broker::new(conn.clone());
    let outcome = apply::advance(&broker, &RouteCache::default(), defs, id, &trig)
        .instrument(span.clone())
        .await?;
    match outcome {
        Outcome::Applied { to, .. } => {
            span.in_scope(|| tracing::info!(reason, state = to, "saga aborted"));
            Ok(to.to_string())
        }
        Outcome::Noop => Ok("compensating".to_string()),
        Outcome::Missing => Err(not_found(id)),
        Outcome::Ended(status) => Err(Error::SagaEnded {
            id: id.to_string(),
            status,
        }),
        Outcome::Stale(why) | Outcome::Rejected(why) => Err(Error::SagaRejected {
            id: id.to_string(),
            reason: why,
        }),
    }
}

/// Counts sagas per state (dropping index entries of finished sagas past the retention)
/// and overdue ones; the orchestrator samples the gauges with it.
pub async fn counts(conn: &mut Conn) -> Result<SagaCounts> {
    Broker::new(conn.clone()).saga_counts(now_ms()).await
}
