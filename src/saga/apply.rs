//! Applying a decision: read the record, decide ([`super::decide`]), route the dispatched
//! task to the stream of the pool that serves it, write with compare-and-set
//! ([`super::rdb`]); on a lost race, read and decide again. Then log and measure what was
//! written. The orchestrator, `saga start` and `saga abort` all move sagas through here.
//!
//! Routing happens at this step, just before the write, from a [`RouteCache`] refreshed
//! for the dispatch's queue: before it, a step of a type that only a named pool serves
//! went to the queue's default stream and waited for the default pool to forward it
//! (forever, when no default pool ran).

use super::decide::{decide, Decision, Outcome, Trigger, Write};
use super::definition::SagaDef;
use crate::error::{Error, Result};
use crate::metrics as m;
use crate::rdb::Broker;
use crate::routing::RouteCache;
use crate::task::now_ms;

/// Re-reads after a lost compare-and-set before giving up (the caller retries later).
pub(crate) const CAS_ATTEMPTS: usize = 16;

/// Points the dispatches of `ws` at the streams of the pools serving their types,
/// refreshing the cached routes of their queues first (when older than the cache's TTL).
pub(crate) async fn route(broker: &Broker, routes: &RouteCache, ws: &mut [Write]) -> Result<()> {
    let queues: Vec<String> = ws
        .iter()
        .flat_map(|w| w.dispatches.iter().map(|d| d.queue.clone()))
        .collect();
    if queues.is_empty() {
        return Ok(());
    }
    routes
        .refresh(broker, queues.iter().map(String::as_str))
        .await?;
    for w in ws.iter_mut() {
        w.route(|q, t| routes.route(q, t));
    }
    Ok(())
}

/// Routes and writes `w`: true when written (logged and measured), false when the saga
/// was not at the revision `w` was decided from.
pub(crate) async fn commit(broker: &Broker, routes: &RouteCache, mut w: Write) -> Result<bool> {
    route(broker, routes, std::slice::from_mut(&mut w)).await?;
    let written = broker.saga_apply(&w).await?;
    if written {
        after_commit(&w);
    }
    Ok(written)
}

/// Applies `trig` to saga `id`: reads, decides, writes with compare-and-set, and on a
/// lost race re-reads and decides again (at most [`CAS_ATTEMPTS`] times).
pub(crate) async fn advance(
    broker: &Broker,
    routes: &RouteCache,
    defs: &[SagaDef],
    id: &str,
    trig: &Trigger,
) -> Result<Outcome> {
    for _ in 0..CAS_ATTEMPTS {
        let Some(rec) = broker.saga_record(id).await? else {
            return Ok(Outcome::Missing);
        };
        let w = match decide(&rec, defs, trig, now_ms()) {
            Decision::Done(o) => return Ok(o),
            Decision::Write(w) => *w,
        };
        let (from, to) = (w.from, w.to);
        if commit(broker, routes, w).await? {
            return Ok(Outcome::Applied { from, to });
        }
        tracing::debug!(saga_id = %id, rev = rec.rev, "saga moved meanwhile; deciding again");
    }
    Err(Error::SagaConflict {
        id: id.to_string(),
        attempts: CAS_ATTEMPTS,
    })
}

/// Logs, measures and (when spans are exported) traces a written transition.
pub(crate) fn after_commit(w: &Write) {
    let n = &w.note;
    crate::telemetry::saga_transition(crate::telemetry::Transition {
        saga_id: &w.id,
        saga: &n.saga,
        traceparent: w.traceparent.as_deref(),
        started_under: w.started_under.as_deref(),
        event: &w.history.event,
        step: w.history.step.as_deref(),
        from: w.from,
        to: w.to,
        rev: w.new_rev,
        decided_ms: w.now,
    });
    metrics::counter!(m::SAGA_TRANSITIONS_TOTAL, "saga" => n.saga.clone(), "from" => w.from, "to" => w.to)
        .increment(1);
    tracing::debug!(
        saga_id = %w.id,
        saga = %n.saga,
        rev = w.new_rev,
        event = %w.history.event,
        from = %w.history.from,
        to = %w.history.to,
        dispatched = w.dispatches.len(),
        streams = ?w.dispatches.iter().map(|d| d.stream.as_str()).collect::<Vec<_>>(),
        "saga transition"
    );
    let Some(fin) = n.finished else { return };
    let secs = w.now.saturating_sub(n.created) as f64 / 1000.0;
    metrics::histogram!(m::SAGA_DURATION_SECONDS, "saga" => n.saga.clone(), "state" => fin)
        .record(secs);
    let error = n.error.as_deref().unwrap_or("");
    match fin {
        "completed" => {
            tracing::info!(saga_id = %w.id, saga = %n.saga, duration_ms = w.now.saturating_sub(n.created), "saga completed")
        }
        "rolled_back" => tracing::info!(
            saga_id = %w.id,
            saga = %n.saga,
            duration_ms = w.now.saturating_sub(n.created),
            error,
            "saga rolled back: every completed step was compensated"
        ),
        _ => {
            if let Some(step) = &n.compensation_failed {
                metrics::counter!(m::COMPENSATION_FAILURES_TOTAL, "saga" => n.saga.clone(), "step" => step.clone())
                    .increment(1);
            }
            tracing::error!(
                saga_id = %w.id,
                saga = %n.saga,
                step = n.compensation_failed.as_deref().unwrap_or(""),
                forced = n.forced,
                error,
                "saga FAILED and needs an operator: effects of its completed steps remain (see `taskstream saga show {}`)",
                w.id
            );
        }
    }
}
