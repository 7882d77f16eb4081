//! The SLA loop of one queue: every second it adapts this process' concurrency to the
//! queue's latency objective (when one is set), and every five seconds it exports the
//! replicas the queue needs (`taskstream_desired_replicas`). Decisions come from the pure
//! functions of [`crate::scaling`]; this file only measures and applies.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::scaling::{self, Load, Target, Window};

use super::runtime::QueueRuntime;

/// Changes the process' concurrency to `target` slots (bulk slots follow, keeping the
/// express reservation). Shrinking takes only free slots; the rest follows next tick.
fn apply(rt: &QueueRuntime, target: usize) {
    let current = rt.concurrency.load(Ordering::Relaxed);
    if target > current {
        let d = target - current;
        rt.total.add_permits(d);
        rt.bulk.add_permits(d);
        rt.concurrency.store(target, Ordering::Relaxed);
    } else if target < current {
        let want = current - target;
        let got = rt.bulk.forget_permits(want);
        let got = rt.total.forget_permits(got);
        rt.concurrency.store(current - got, Ordering::Relaxed);
    }
    metrics::gauge!(m::CONCURRENCY_TARGET, "queue" => rt.cfg.name.clone())
        .set(rt.concurrency.load(Ordering::Relaxed) as f64);
}

/// Runs until `stop` fires.
pub(crate) async fn run(rt: Arc<QueueRuntime>, stop: CancellationToken) {
    let objective = rt.cfg.sla_p95_wait_ms.map(|ms| ms as f64 / 1000.0);
    let max = rt.cfg.concurrency;
    let min = rt
        .cfg
        .min_concurrency
        .unwrap_or(rt.cfg.express_concurrency + 1)
        .min(max);
    let mut busy_samples = 0.0;
    let mut samples = 0u32;
    let mut last_added: Option<(Instant, u64)> = None;
    let mut service_ewma: Option<f64> = None;
    let mut tick = 0u64;
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let cur = rt.concurrency.load(Ordering::Relaxed).max(1);
        busy_samples += rt.tracked.running_count() as f64 / cur as f64;
        samples += 1;
        tick += 1;
        if !tick.is_multiple_of(10) {
            continue;
        }
        let (mut waits, service) = rt.take_window();
        if let Some(s) = service {
            service_ewma = Some(match service_ewma {
                Some(e) => 0.7 * e + 0.3 * s,
                None => s,
            });
        }
        let utilization = (busy_samples / samples.max(1) as f64).min(1.0);
        busy_samples = 0.0;
        samples = 0;
        if let Some(obj) = objective {
            let next = scaling::next_concurrency(
                cur,
                min,
                max,
                obj,
                Window {
                    p95_wait: scaling::p95(&mut waits),
                    utilization,
                },
            );
            if next != cur {
                tracing::info!(queue = %rt.cfg.name, from = cur, to = next, utilization, "adapting concurrency to the latency objective");
                apply(&rt, next);
            }
        }
        if !tick.is_multiple_of(50) {
            continue;
        }
        if rt.pause.is_paused() {
            // A paused queue's backlog is held back on purpose: keep the last answer
            // rather than asking an autoscaler for replicas that could not run it.
            last_added = None;
            continue;
        }
        // Desired replicas from arrival rate, service time and backlog.
        let added = rt.broker.entries_added(&rt.keys.stream).await
            + rt.broker.entries_added(&rt.keys.express).await;
        let now = Instant::now();
        let rate = match last_added {
            Some((t, a)) if added >= a => {
                (added - a) as f64 / now.duration_since(t).as_secs_f64().max(0.001)
            }
            _ => 0.0,
        };
        last_added = Some((now, added));
        let lag = match rt.broker.queue_stats_ids_only(&rt.cfg.name, 1_500).await {
            Ok(s) => s.lag() as f64,
            Err(_) => continue,
        };
        let desired = scaling::desired_replicas(
            Load {
                arrival_rate: rate,
                service_time: service_ewma.unwrap_or(0.0),
                backlog: lag,
                concurrency_per_replica: max as f64,
            },
            Target::default(),
        );
        metrics::gauge!(m::DESIRED_REPLICAS, "queue" => rt.cfg.name.clone()).set(desired as f64);
    }
}
