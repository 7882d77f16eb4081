//! Dispatch: the first step of a delivery in the process. Takes one delivered entry and
//! either starts its execution on the slot it came with, or settles it at once — skipped
//! (deleted while pending, meant for another group), cancelled, forwarded to the pool that
//! serves its type, or dead-lettered (malformed, unknown type) with the reason. Before it
//! runs, a task with a group key on a limited queue takes a per-key lease or is parked in
//! Redis ([`crate::keylimit`]), and a task whose type calls a downstream behind an open
//! circuit breaker goes back to the schedule on the same attempt ([`crate::breaker`]);
//! either way its slot is given back at once.
//!
//! A recovered entry may be what killed its last worker: from the third delivery on it
//! runs *isolated* (it waits for every slot of the queue in this process, so nothing else
//! runs beside it), and each recovered run records its start (`ts:{q}:starts`), because
//! poison detection counts started executions, not deliveries — tasks merely claimed
//! alongside a crashing task are not blamed for its crashes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::breaker::Gate;
use super::decide::{self, Delivery};
use super::runtime::{QueueRuntime, Slot};
use crate::keylimit;
use crate::keys::Lane;
use crate::metrics as m;
use crate::rdb::keylimit::{Admission, LeaseRelease};
use crate::rdb::RawEntry;
use crate::routing::{self, Unserved};
use crate::task::{now_ms, Fields, Task};

/// From this delivery on, a recovered entry runs alone in its process.
const ISOLATE_FROM: u32 = 3;

/// Takes one delivered entry on `slot`. `deliveries` is the delivery count (1 for a fresh
/// read; higher for a recovered entry). It does not touch the attempt number: attempts
/// count handler failures (written in the entry by each retry), deliveries are bounded
/// apart by `max_deliveries` — a run cut off by a crash or a deploy is not a failure of
/// the task (issue 10.3).
pub(crate) fn dispatch(
    rt: &Arc<QueueRuntime>,
    lane: Lane,
    entry: RawEntry,
    deliveries: u32,
    slot: Slot,
) {
    rt.tracked.hold(&entry.id, lane);
    // A re-delivered entry may carry a start marker; every settlement takes it along.
    let recovered = deliveries >= 2;
    let Some(fields) = entry.fields else {
        // Deleted while pending (trimmed): nothing to run; drop the reference.
        rt.settler.send(decide::skip(lane, &entry.id, recovered));
        return;
    };
    let id_prefix = match lane {
        Lane::Bulk => &rt.id_prefix[0],
        Lane::Express => &rt.id_prefix[1],
    };
    let task = match Task::decode_or_return(&entry.id, id_prefix, fields, rt.max_payload) {
        Ok(t) => t,
        Err((e, raw)) => {
            let reason = e.to_string();
            dead_on_arrival(
                rt,
                lane,
                &entry.id,
                "malformed",
                &reason,
                raw,
                None,
                recovered,
            );
            return;
        }
    };
    if task.only_group.as_ref().is_some_and(|g| g != &rt.group) {
        rt.settler.send(decide::skip(lane, &entry.id, recovered));
        return;
    }
    if rt.cancels.contains(&task.id) {
        tracing::info!(queue = %rt.cfg.name, task_id = %task.id, "skipping a cancelled task");
        rt.count_cancelled(&task.task_type);
        let mut s = decide::settlement(
            decide::Decision::Cancelled,
            &task,
            rt.reader(),
            delivery(lane, &entry.id, task.attempt, recovered),
        );
        s.record = rt.record_end(&task, task.attempt, Some(crate::results::Ended::Cancelled));
        // A parked task cancelled while it waited comes back with its turn's lease taken:
        // give it back with the settlement (a release of a lease never taken is a no-op).
        s.lease = key_limit(rt, &task).map(|limit| {
            Box::new(LeaseRelease {
                field: keylimit::lease_field(rt.keys.lane_stream(lane), &entry.id),
                limit,
            })
        });
        rt.settler.send(s);
        return;
    }
    let Some(handler) = rt.registry.get(&task.task_type).cloned() else {
        // Not ours: the type may belong to a pool (routes are cached; a type we have not
        // seen routed is looked up once more before it is called unknown).
        let rt = rt.clone();
        rt.tracker.clone().spawn(async move {
            let cached = rt
                .routes
                .lock()
                .expect("poisoned")
                .get(&task.task_type)
                .cloned();
            let route = match cached {
                Some(r) => Some(r),
                None => {
                    let r = rt
                        .broker
                        .route_of(&rt.keys, &task.task_type)
                        .await
                        .ok()
                        .flatten();
                    if let Some(p) = &r {
                        rt.routes
                            .lock()
                            .expect("poisoned")
                            .insert(task.task_type.clone(), p.clone());
                    }
                    r
                }
            };
            route_or_reject(&rt, lane, &entry.id, task, route, recovered);
            drop(slot);
        });
        return;
    };
    let attempt = task.attempt;
    let limit = key_limit(rt, &task);
    let rt = rt.clone();
    // Boxed: a spawned future is moved into its task and its stage rewritten as it runs and
    // ends, each a copy of the whole future, and this one (the run with its context) is
    // large; behind a box the copies are of a pointer (issue 14.1).
    rt.tracker.clone().spawn(Box::pin(async move {
        // Over its key's cap, the task is parked in Redis and gives its slot back here.
        let lease = match limit {
            None => None,
            Some(limit) => match admit(&rt, lane, &entry.id, &task, limit).await {
                Some(lease) => Some(lease),
                None => return,
            },
        };
        // A downstream behind an open circuit breaker: back to the schedule, same attempt.
        let breaker = rt.breakers.of(&task.task_type).cloned();
        let probe = match &breaker {
            None => false,
            Some(b) => {
                let probe_ms = rt.cfg.policy(&task.task_type).timeout.as_millis() as u64;
                match b.gate(&rt.broker, probe_ms.max(1_000)).await {
                    Gate::Run { probe } => probe,
                    Gate::Hold(until) => {
                        let now = crate::task::now_ms();
                        let until = crate::breaker::hold_until(now, until, rand::random());
                        metrics::counter!(m::BREAKER_HELD_TOTAL, "target" => b.cfg.target.clone()).increment(1);
                        tracing::debug!(queue = %rt.cfg.name, task_id = %task.id, target_name = %b.cfg.target, back_in_ms = until - now, "task held: its circuit breaker is open");
                        let mut s = decide::held(&task, rt.reader(), delivery(lane, &entry.id, task.attempt, recovered), until);
                        s.lease = lease;
                        rt.settler.send(s);
                        return;
                    }
                }
            }
        };
        let _alone = if deliveries >= ISOLATE_FROM.min(rt.max_deliveries) {
            drop(slot);
            // Every slot the process has *now*: the SLA loop may have shrunk the semaphore
            // below the configured concurrency, and asking for more permits than exist
            // would wait forever (and starve the queue behind it).
            let slots = rt.concurrency.load(Ordering::Relaxed).max(1);
            let all = rt.total.clone().acquire_many_owned(slots as u32).await;
            // The ACKs of what ran before must be in Redis first (see `drained`).
            rt.settler.drained(&rt.stopping).await;
            tracing::info!(queue = %rt.cfg.name, entry_id = %entry.id, deliveries, "running a suspect task alone");
            (None, all.ok())
        } else {
            (Some(slot), None)
        };
        if recovered {
            if let Err(e) = rt.broker.mark_start(&rt.keys, &entry.id).await {
                tracing::warn!(queue = %rt.cfg.name, entry_id = %entry.id, error = %e, "could not record the start of a recovered task");
            }
        }
        let guard = breaker.map(|b| super::execute::Guard { breaker: b, probe });
        super::execute::execute(
            rt, lane, entry.id, task, attempt, handler, recovered, lease, guard,
        )
        .await;
    }));
}

/// The per-key limit `task` falls under on this queue, if any.
fn key_limit(rt: &QueueRuntime, task: &Task) -> Option<keylimit::Limit> {
    match rt.limited {
        true => keylimit::limit_of(&rt.cfg, &task.task_type, task.group_key.as_deref()),
        false => None,
    }
}

/// Takes a lease of `limit` for the task, or parks it (see [`crate::keylimit`]): `None`
/// when it is parked or no longer ours, after which the caller drops the slot. Redis
/// errors are retried with a growing pause until shutdown, which leaves the entry pending
/// for recovery.
async fn admit(
    rt: &QueueRuntime,
    lane: Lane,
    entry_id: &str,
    task: &Task,
    limit: keylimit::Limit,
) -> Option<Box<LeaseRelease>> {
    let stream = rt.keys.lane_stream(lane);
    let item = keylimit::parked_item(task, stream);
    let mut pause = std::time::Duration::from_millis(50);
    loop {
        match rt
            .broker
            .admit(&rt.keys, stream, &rt.group, entry_id, &limit, &item)
            .await
        {
            Ok(Admission::Run) => {
                return Some(Box::new(LeaseRelease {
                    field: keylimit::lease_field(stream, entry_id),
                    limit,
                }))
            }
            Ok(a) => {
                if a == Admission::Parked {
                    tracing::debug!(queue = %rt.cfg.name, task_id = %task.id, scope = %limit.scope, "task parked: its key is at max_per_key");
                    metrics::counter!(m::PARKED_TOTAL, "queue" => rt.cfg.name.clone()).increment(1);
                }
                rt.tracked.release(std::iter::once(entry_id));
                return None;
            }
            Err(e) => {
                tracing::warn!(queue = %rt.cfg.name, task_id = %task.id, error = %e, retry_in_ms = pause.as_millis() as u64, "could not take the task's per-key lease; retrying");
                tokio::select! {
                    _ = rt.stopping.cancelled() => {
                        rt.tracked.release(std::iter::once(entry_id));
                        return None;
                    }
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
}

/// The delivery facts of a settlement made now.
pub(crate) fn delivery(lane: Lane, entry_id: &str, attempt: u32, recovered: bool) -> Delivery<'_> {
    Delivery {
        lane,
        entry_id,
        attempt,
        recovered,
        now_ms: now_ms(),
    }
}

/// Hands a task of a type this process does not serve to the pool that does, or
/// dead-letters it as unknown when no pool serves it.
fn route_or_reject(
    rt: &QueueRuntime,
    lane: Lane,
    entry_id: &str,
    task: Task,
    route: Option<String>,
    recovered: bool,
) {
    if rt.cfg.pool.is_some() {
        // A named pool received a type it does not serve: count it (should stay 0).
        metrics::counter!(m::CROSS_TYPE_TOTAL, "queue" => rt.cfg.name.clone(), "type" => task.task_type.clone()).increment(1);
    }
    match routing::unserved(&rt.keys, rt.cfg.pool.as_deref(), route.as_deref(), lane) {
        Unserved::Forward(target) => {
            tracing::debug!(queue = %rt.cfg.name, task_type = %task.task_type, target = %target, "routing a task to the pool that serves its type");
            rt.settler
                .send(decide::moved(lane, entry_id, &task, target, recovered));
        }
        Unserved::Unknown => {
            let reason = format!(
                "unknown task type {:?}: no handler is registered for it in queue {:?} (this worker serves: {})",
                task.task_type,
                rt.cfg.name,
                rt.registry.types().join(", ")
            );
            let fields = decide::task_fields(&task);
            dead_on_arrival(
                rt,
                lane,
                entry_id,
                "unknown_type",
                &reason,
                fields,
                Some(&task),
                recovered,
            );
        }
    }
}

/// Dead-letters an entry that never ran, with its own fields and the reason.
#[allow(clippy::too_many_arguments)]
fn dead_on_arrival(
    rt: &QueueRuntime,
    lane: Lane,
    entry_id: &str,
    label: &'static str,
    reason: &str,
    fields: Fields,
    task: Option<&Task>,
    recovered: bool,
) {
    metrics::counter!(m::DEAD_LETTERED_TOTAL, "queue" => rt.cfg.name.clone(), "reason" => label)
        .increment(1);
    tracing::warn!(queue = %rt.cfg.name, entry_id = %entry_id, task_id = task.map(|t| t.id.as_str()).unwrap_or(""), reason = %reason, "task dead-lettered");
    let mut s = decide::dead_on_arrival(
        fields,
        task,
        reason,
        rt.reader(),
        delivery(lane, entry_id, 0, recovered),
    );
    s.record = task.and_then(|t| {
        rt.record_end(
            t,
            t.attempt,
            Some(crate::results::Ended::Dead {
                reason,
                error: reason,
            }),
        )
    });
    rt.settler.send(s);
}
