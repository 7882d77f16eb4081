//! Execute: runs one task's handler and settles what came of it.
//!
//! The handler runs inside this task (a panic is caught here instead of paying for a second
//! spawned task per execution), under its time limit, after the type's rate limit lets it
//! start. What it returned becomes an [`Outcome`]; the pure [`decide`] turns that into a
//! decision and a settlement; this file only measures, logs and hands the settlement to the
//! settler.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::decide::{self, Decision, Outcome};
use super::dispatch::delivery;
use super::pause::Start;
use super::runtime::QueueRuntime;
use crate::handler::{Handler, HandlerError, TaskContext};
use crate::keys::Lane;
use crate::metrics as m;
use crate::task::{entry_id_ms, now_ms, Task};

/// Runs `handler` on `task` (entry `entry_id` of `lane`, run number `attempt`) and settles,
/// giving back the task's per-key `lease` with the settlement.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn execute(
    rt: Arc<QueueRuntime>,
    lane: Lane,
    entry_id: String,
    task: Task,
    attempt: u32,
    handler: Arc<dyn Handler>,
    recovered: bool,
    lease: Option<Box<crate::rdb::keylimit::LeaseRelease>>,
    guard: Option<Guard>,
) {
    let policy = decide::run_policy(rt.cfg.policy(&task.task_type), &task);
    let tm = rt.type_metrics(&task.task_type);
    if let Some(ms) = entry_id_ms(&entry_id) {
        let wait = now_ms().saturating_sub(ms) as f64 / 1000.0;
        {
            let mut w = rt.window.lock().expect("poisoned");
            if w.0.len() < 4096 {
                w.0.push(wait);
            }
        }
        match lane {
            Lane::Bulk => rt.wait_bulk.record(wait),
            Lane::Express => rt.wait_express.record(wait),
        }
    }
    let gauge = match lane {
        Lane::Bulk => &rt.inflight_bulk,
        Lane::Express => &rt.inflight_express,
    };
    gauge.increment(1.0);
    let cancel = rt.hard_stop.child_token();
    rt.tracked.running(&entry_id, &task.id, cancel.clone());
    let span = tracing::info_span!(
        "task",
        task_id = %task.id,
        queue = %rt.cfg.name,
        task_type = %task.task_type,
        attempt,
        saga_id = task.saga_id.as_deref().unwrap_or(""),
        traceparent = task.traceparent.as_deref().unwrap_or(""),
    );
    let ctx = TaskContext::new(
        task,
        rt.cfg.name.clone(),
        lane,
        entry_id.clone(),
        attempt,
        policy.max_attempts,
        cancel.clone(),
    );
    wait_for_rate(&rt, ctx.task_type(), &cancel).await;
    // The pause gate (see `pause.rs`): a paused queue holds the start here; shutdown
    // hands a held task back instead of waiting for a resume.
    let start = tokio::select! {
        // The gate first: an open gate lets the run start even once shutdown began
        // (running tasks get the grace period); only a closed one hands it back.
        biased;
        s = rt.pause.admit() => Some(s),
        _ = rt.stopping.cancelled() => None,
    };
    // Shutdown came before the gate opened: the run never started, so it is handed back.
    let refused = start.is_none();
    let trace = match refused {
        true => None,
        false => crate::telemetry::Attempt::start(
            ctx.task().traceparent.as_deref(),
            &rt.cfg.name,
            ctx.task_type(),
            ctx.id(),
            attempt,
            entry_id_ms(&entry_id),
        ),
    };
    if let Some(t) = &trace {
        ctx.set_run_traceparent(t.traceparent());
    }
    if let (Some(policy), false) = (rt.results, refused) {
        // The record says `running` (ahead of the settlement, through the settler), and
        // the handler's progress reports go the same way.
        rt.settler.note(crate::results::running(
            &rt.keys,
            policy,
            ctx.task(),
            attempt,
            &rt.consumer,
            now_ms(),
        ));
        let (sender, keys, id) = (rt.settler.clone(), rt.keys.clone(), ctx.id().to_string());
        ctx.set_progress(Arc::new(move |json: String| {
            sender.note(crate::results::progress(
                &keys,
                policy,
                &id,
                &json,
                now_ms(),
            ))
        }));
    }
    let started = Instant::now();
    let outcome = match start {
        Some(start) => {
            run(
                handler,
                ctx.clone(),
                policy.timeout,
                &cancel,
                span.clone(),
                start,
            )
            .await
        }
        None => Outcome::Failed(HandlerError::retryable(
            "not started: the worker is shutting down while the queue is paused",
        )),
    };
    let interrupted = refused || rt.hard_stop.is_cancelled();
    let took = started.elapsed();
    tm.duration.record(took.as_secs_f64());
    {
        let mut w = rt.window.lock().expect("poisoned");
        w.1 += took.as_micros() as u64;
        w.2 += 1;
    }
    gauge.decrement(1.0);
    let task = ctx.task();
    let cancelled = rt.cancels.contains(&task.id);
    let decision = decide::decide(
        outcome,
        cancelled,
        interrupted,
        attempt,
        &policy,
        task,
        rand::random(),
    );
    {
        let _e = span.enter();
        match &decision {
            Decision::Succeeded(_) => tm.succeeded.increment(1),
            Decision::Retry { delay, error, .. } => {
                tm.retried.increment(1);
                tracing::info!(error = %error, retry_in_ms = delay.as_millis() as u64, "task failed, will retry");
            }
            Decision::Dead {
                label,
                reason,
                error,
            } => {
                tm.dead.increment(1);
                metrics::counter!(m::DEAD_LETTERED_TOTAL, "queue" => rt.cfg.name.clone(), "reason" => *label).increment(1);
                tracing::warn!(error = %error, reason = %reason, "task dead-lettered");
            }
            Decision::Cancelled => {
                // Cancelled while it ran: whatever the handler returned, it is not retried.
                rt.count_cancelled(&task.task_type);
                tracing::info!("task cancelled while running");
            }
            Decision::HandBack => {
                metrics::counter!(m::HANDED_BACK_TOTAL, "queue" => rt.cfg.name.clone())
                    .increment(1);
                tracing::info!(
                    "task interrupted by shutdown: handed back at once, on the same attempt"
                );
            }
        }
    }
    let settle_span = trace.map(|t| {
        let (label, error) = trace_outcome(&decision);
        t.executed(label, error)
    });
    if let Some(g) = &guard {
        let probe_ms = policy.timeout.as_millis() as u64;
        g.breaker
            .record(
                &rt.broker,
                probe_ms.max(1_000),
                breaker_outcome(&decision),
                g.probe,
            )
            .await;
    }
    let record = rt.record_end(task, attempt, ended(&decision));
    let mut s = decide::settlement(
        decision,
        task,
        rt.reader(),
        delivery(lane, &entry_id, attempt, recovered),
    );
    s.trace = settle_span.map(Box::new);
    s.record = record;
    s.lease = lease;
    rt.settler.send(s);
}

/// The circuit breaker a run reports to, and whether it is the half-open probe.
pub(crate) struct Guard {
    /// The breaker of the task's type.
    pub breaker: Arc<super::breaker::Breaker>,
    /// This run is the probe.
    pub probe: bool,
}

/// What a run said about its downstream: a retryable failure or time-out is the target's
/// (a permanent error is the task's own, and means the target answered).
fn breaker_outcome(d: &Decision) -> crate::breaker::Outcome {
    use crate::breaker::Outcome;
    match d {
        Decision::Succeeded(_) => Outcome::Ok,
        Decision::Retry { .. } => Outcome::Fail,
        Decision::Dead { label, .. } if *label == "exhausted" => Outcome::Fail,
        Decision::Dead { .. } => Outcome::Ok,
        Decision::Cancelled | Decision::HandBack => Outcome::None,
    }
}

/// How the task's record tells `d` (`None`: a hand-back, which is not an end of a run).
fn ended(d: &Decision) -> Option<crate::results::Ended<'_>> {
    use crate::results::Ended;
    Some(match d {
        Decision::Succeeded(v) => Ended::Succeeded(v),
        Decision::Retry { error, .. } => Ended::Retrying { error },
        Decision::Dead { reason, error, .. } => Ended::Dead { reason, error },
        Decision::Cancelled => Ended::Cancelled,
        Decision::HandBack => return None,
    })
}

/// The `taskstream.outcome` of a run's spans, and the error that is their status.
fn trace_outcome(d: &Decision) -> (&'static str, Option<String>) {
    match d {
        Decision::Succeeded(_) => ("succeeded", None),
        Decision::Retry { error, .. } => ("retry", Some(error.to_string())),
        Decision::Dead { error, .. } => ("dead", Some(error.to_string())),
        Decision::Cancelled => ("cancelled", None),
        Decision::HandBack => ("handed_back", None),
    }
}

/// Runs the handler under `timeout`; a panic or a timeout is a retryable failure. `start`
/// counts the run as starting until the handler's first poll (the pause gate).
async fn run(
    handler: Arc<dyn Handler>,
    ctx: TaskContext,
    timeout: Duration,
    cancel: &CancellationToken,
    span: tracing::Span,
    start: Start<'_>,
) -> Outcome {
    let fut = CatchUnwind(
        Box::pin(async move { handler.handle(ctx).await }.instrument(span)),
        Some(start),
    );
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(Ok(v))) => Outcome::Succeeded(v),
        Ok(Ok(Err(e))) => Outcome::Failed(e),
        Ok(Err(p)) => Outcome::Failed(HandlerError::retryable(format!(
            "handler panicked: {}",
            panic_message(p)
        ))),
        Err(_) => {
            // Dropping the future stops the handler at its next await point.
            cancel.cancel();
            Outcome::Failed(HandlerError::retryable(format!(
                "timed out after {} ms",
                timeout.as_millis()
            )))
        }
    }
}

/// Waits until the type's rate limit lets one more task start (GCRA in Redis, shared by
/// every replica). Returns early when `cancel` fires. A Redis error lets the task start: a
/// limiter must not turn an outage into lost work.
async fn wait_for_rate(rt: &QueueRuntime, task_type: &str, cancel: &CancellationToken) {
    let Some(&(interval_us, burst)) = rt.limits.get(task_type) else {
        return;
    };
    let key = format!("{}{}", rt.keys.rate_prefix, task_type);
    let mut throttled = false;
    loop {
        let wait_us = match rt.broker.rate_limit(&key, interval_us, burst).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(queue = %rt.cfg.name, task_type, error = %e, "rate limiter unavailable; starting the task");
                0
            }
        };
        if wait_us == 0 {
            return;
        }
        if !throttled {
            throttled = true;
            metrics::counter!(m::THROTTLED_TOTAL, "queue" => rt.cfg.name.clone(), "type" => task_type.to_string()).increment(1);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_micros(wait_us)) => {}
        }
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

/// Polls a future and turns a panic inside it into an `Err` with the panic payload. The
/// [`Start`] it holds is released after the first poll: from then on the handler has
/// begun, and a pause that comes later no longer concerns it (see `pause.rs`).
struct CatchUnwind<'a, F>(std::pin::Pin<Box<F>>, Option<Start<'a>>);

impl<F: std::future::Future> std::future::Future for CatchUnwind<'_, F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let fut = self.0.as_mut();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.poll(cx)));
        self.1 = None;
        match r {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(p) => std::task::Poll::Ready(Err(p)),
        }
    }
}
