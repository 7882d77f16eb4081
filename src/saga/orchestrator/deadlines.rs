//! The deadline loop: fires due step and saga time-outs. Deadlines are members of the
//! sorted set `ts:sagas:deadlines` (on a cluster, one per saga bucket) scored by due time, not timers in a process, so
//! whichever orchestrator is alive fires them after a crash; each member names the
//! revision it was set at, so a deadline of a step that has moved on is stale and dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{log_outcome, sleep_or_stop, Ctx};
use crate::saga::apply;
use crate::saga::decide::{Outcome, Trigger};
use crate::saga::record::{parse_member, Deadline};
use crate::task::now_ms;

/// A due deadline: the set it is in and its member.
type Due = (String, String);

/// Most due deadlines handled per round.
const DEADLINE_BATCH: usize = 256;

/// Every `deadline_interval_ms` until `stop` fires, fires every due deadline (in rounds
/// of [`DEADLINE_BATCH`]).
pub(super) async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    let every = Duration::from_millis(ctx.cfg.deadline_interval_ms);
    while sleep_or_stop(&stop, every).await {
        loop {
            let due = match ctx
                .broker
                .saga_due_deadlines(now_ms(), DEADLINE_BATCH)
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "reading saga deadlines failed");
                    break;
                }
            };
            let n = due.len();
            if n == 0 {
                break;
            }
            let all_ok = fire(&ctx, due).await;
            if n < DEADLINE_BATCH || !all_ok || stop.is_cancelled() {
                break;
            }
        }
    }
}

/// Applies due deadline members (sagas concurrently, each saga's in order); returns
/// false if any hit a Redis error (it is left in place and fired again later). Members
/// that applied a transition were removed by it; stale and malformed ones are removed
/// here.
async fn fire(ctx: &Arc<Ctx>, due: Vec<Due>) -> bool {
    let mut order: Vec<String> = Vec::new();
    let mut by_saga: HashMap<String, Vec<(Due, Trigger)>> = HashMap::new();
    let mut drop_members = Vec::new();
    for (set, member) in due {
        let (id, trig) = match parse_member(&member) {
            Some(Deadline::Saga { id }) => (id, Trigger::SagaDeadline),
            Some(Deadline::Step { id, step, rev }) => (id, Trigger::StepDeadline { step, rev }),
            None => {
                tracing::warn!(member = %member, "malformed saga deadline dropped");
                drop_members.push((set, member));
                continue;
            }
        };
        by_saga
            .entry(id.clone())
            .or_insert_with(|| {
                order.push(id);
                Vec::new()
            })
            .push(((set, member), trig));
    }
    let mut set = JoinSet::new();
    for id in order {
        let items = by_saga.remove(&id).unwrap_or_default();
        let ctx = ctx.clone();
        let span = tracing::info_span!("saga", saga_id = %id);
        set.spawn(
            async move {
                let mut drop = Vec::new();
                let mut ok = true;
                for (member, trig) in items {
                    match apply::advance(&ctx.broker, &ctx.routes, &ctx.defs, &id, &trig).await {
                        Ok(o @ Outcome::Applied { .. }) => match &trig {
                            Trigger::SagaDeadline => {
                                tracing::warn!(outcome = ?o, "saga timed out; rolling back")
                            }
                            _ => tracing::warn!(outcome = ?o, "saga step timed out; rolling back"),
                        },
                        Ok(o) => {
                            log_outcome(&o, "deadline");
                            drop.push(member);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "saga deadline not applied; retrying later");
                            ok = false;
                            break;
                        }
                    }
                }
                (drop, ok)
            }
            .instrument(span),
        );
    }
    let mut all_ok = true;
    while let Some(r) = set.join_next().await {
        match r {
            Ok((d, ok)) => {
                drop_members.extend(d);
                all_ok &= ok;
            }
            Err(e) => {
                tracing::error!(error = %e, "firing saga deadlines panicked");
                all_ok = false;
            }
        }
    }
    if let Err(e) = ctx.broker.saga_drop_deadlines(&drop_members).await {
        tracing::warn!(error = %e, "removing spent saga deadlines failed");
        all_ok = false;
    }
    all_ok
}
