//! SLA-driven scaling: pure decisions, unit- and property-tested without Redis.
//!
//! Two questions, answered from the same observations:
//!
//! 1. **How many replicas does the queue need?** ([`desired_replicas`]) — exported as
//!    `taskstream_desired_replicas{queue}` for an HPA (see `deploy/`). Capacity of one
//!    replica is `concurrency / mean service time` tasks per second; the queue needs
//!    enough replicas to absorb the arrival rate at a target utilization (headroom keeps
//!    waits short: queueing delay grows without bound as utilization nears 1) plus drain
//!    the current backlog within a horizon. This is the same arithmetic an operator does
//!    with Little's law, done continuously.
//! 2. **How much concurrency should this process run?** ([`next_concurrency`]) — the
//!    worker adapts between `min_concurrency` and `concurrency`: when the observed p95
//!    wait breaks the objective and the slots are saturated it grows multiplicatively;
//!    when waits are far below the objective and slots sit idle it shrinks gently
//!    (AIMD, as TCP congestion control: fast to react to pain, slow to give back).

/// Observations of one queue over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Tasks arriving per second (both lanes).
    pub arrival_rate: f64,
    /// Mean handler run time, in seconds.
    pub service_time: f64,
    /// Tasks waiting (consumer-group lag).
    pub backlog: f64,
    /// Slots of one replica (its maximum concurrency).
    pub concurrency_per_replica: f64,
}

/// Tuning of [`desired_replicas`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// Utilization to plan for (0 < u ≤ 1), e.g. 0.8.
    pub utilization: f64,
    /// Time within which the current backlog should be drained, in seconds.
    pub drain_horizon: f64,
    /// Upper bound of the answer.
    pub max_replicas: u32,
}

impl Default for Target {
    fn default() -> Self {
        Target {
            utilization: 0.8,
            drain_horizon: 60.0,
            max_replicas: 1_000,
        }
    }
}

/// Replicas needed for `load` (0 when there is neither traffic nor backlog).
pub fn desired_replicas(load: Load, target: Target) -> u32 {
    let finite = |x: f64| if x.is_finite() && x > 0.0 { x } else { 0.0 };
    let lambda = finite(load.arrival_rate);
    let backlog = finite(load.backlog);
    if lambda == 0.0 && backlog == 0.0 {
        return 0;
    }
    // Unknown service time (nothing ran yet): assume fast tasks; backlog still counts.
    let service = if load.service_time.is_finite() && load.service_time > 0.0 {
        load.service_time
    } else {
        0.001
    };
    let slots = load.concurrency_per_replica.max(1.0);
    let per_replica = slots / service * target.utilization.clamp(0.05, 1.0);
    let needed = (lambda + backlog / target.drain_horizon.max(1.0)) / per_replica;
    (needed.ceil() as u32).clamp(1, target.max_replicas.max(1))
}

/// Observations of one process for [`next_concurrency`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Observed 95th percentile wait, in seconds (None: nothing ran).
    pub p95_wait: Option<f64>,
    /// Fraction of the current slots that were busy on average (0..=1).
    pub utilization: f64,
}

/// The concurrency to use next, between `min` and `max`.
pub fn next_concurrency(
    current: usize,
    min: usize,
    max: usize,
    objective: f64,
    w: Window,
) -> usize {
    let (min, max) = (min.max(1), max.max(min.max(1)));
    let current = current.clamp(min, max);
    let Some(p95) = w.p95_wait else {
        return current;
    };
    if p95 > objective && w.utilization >= 0.85 {
        // Too slow and saturated: grow by a quarter (at least one slot).
        (current + (current / 4).max(1)).min(max)
    } else if p95 < objective / 2.0 && w.utilization < 0.5 {
        // Comfortably fast and mostly idle: give back a tenth (at least one slot).
        current.saturating_sub((current / 10).max(1)).max(min)
    } else {
        current
    }
}

/// p95 of `samples` (None when empty).
pub fn p95(samples: &mut [f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Some(samples[((samples.len() as f64 - 1.0) * 0.95).round() as usize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn load(rate: f64, service: f64, backlog: f64, slots: f64) -> Load {
        Load {
            arrival_rate: rate,
            service_time: service,
            backlog,
            concurrency_per_replica: slots,
        }
    }

    #[test]
    fn steady_state_uses_littles_law_with_headroom() {
        // 1,000 tasks/s of 50 ms each = 50 busy slots; 64 slots at 80% = 51.2 per replica.
        assert_eq!(
            desired_replicas(load(1000.0, 0.05, 0.0, 64.0), Target::default()),
            1
        );
        // 2,000 tasks/s = 100 busy slots → 2 replicas.
        assert_eq!(
            desired_replicas(load(2000.0, 0.05, 0.0, 64.0), Target::default()),
            2
        );
        // 10,000 tasks/s of 100 ms: 1,000 busy slots / 51.2 → 20 replicas.
        assert_eq!(
            desired_replicas(load(10_000.0, 0.1, 0.0, 64.0), Target::default()),
            20
        );
    }

    #[test]
    fn backlog_adds_replicas_to_drain_within_the_horizon() {
        let t = Target::default();
        let idle = desired_replicas(load(0.0, 0.1, 0.0, 10.0), t);
        assert_eq!(idle, 0, "no traffic, no backlog: scale to zero");
        // 60,000 waiting tasks, 60 s horizon → 1,000/s extra; a replica does 10/0.1*0.8 = 80/s.
        assert_eq!(desired_replicas(load(0.0, 0.1, 60_000.0, 10.0), t), 13);
    }

    #[test]
    fn garbage_in_is_bounded() {
        let t = Target {
            max_replicas: 50,
            ..Target::default()
        };
        assert_eq!(
            desired_replicas(load(f64::NAN, f64::INFINITY, -5.0, 0.0), t),
            0
        );
        assert_eq!(desired_replicas(load(1e12, 10.0, 0.0, 1.0), t), 50);
        assert_eq!(
            desired_replicas(load(5.0, 0.0, 0.0, 8.0), t),
            1,
            "unknown service time"
        );
    }

    #[test]
    fn concurrency_grows_on_pain_and_shrinks_when_idle() {
        let slow = Window {
            p95_wait: Some(0.5),
            utilization: 0.95,
        };
        let fast = Window {
            p95_wait: Some(0.01),
            utilization: 0.2,
        };
        assert_eq!(next_concurrency(16, 4, 64, 0.2, slow), 20);
        assert_eq!(next_concurrency(62, 4, 64, 0.2, slow), 64);
        assert_eq!(next_concurrency(20, 4, 64, 0.2, fast), 18);
        assert_eq!(next_concurrency(4, 4, 64, 0.2, fast), 4);
        // Slow but not saturated: more slots would not help (the handler is the bottleneck).
        assert_eq!(
            next_concurrency(
                16,
                4,
                64,
                0.2,
                Window {
                    p95_wait: Some(0.5),
                    utilization: 0.3
                }
            ),
            16
        );
        assert_eq!(
            next_concurrency(
                16,
                4,
                64,
                0.2,
                Window {
                    p95_wait: None,
                    utilization: 0.0
                }
            ),
            16
        );
    }

    proptest! {
        #[test]
        fn replicas_are_monotonic_in_load(rate in 0.0f64..1e5, service in 0.0001f64..10.0, backlog in 0.0f64..1e6, slots in 1.0f64..1000.0, more in 0.0f64..1e4) {
            let t = Target::default();
            let a = desired_replicas(load(rate, service, backlog, slots), t);
            prop_assert!(a <= t.max_replicas);
            prop_assert!(desired_replicas(load(rate + more, service, backlog, slots), t) >= a);
            prop_assert!(desired_replicas(load(rate, service, backlog + more, slots), t) >= a);
            prop_assert!(desired_replicas(load(rate, service, backlog, slots * 2.0), t) <= a);
        }

        #[test]
        fn concurrency_stays_within_bounds(cur in 0usize..500, min in 1usize..50, extra in 0usize..200, p in proptest::option::of(0.0f64..10.0), u in 0.0f64..1.0) {
            let max = min + extra;
            let n = next_concurrency(cur, min, max, 0.2, Window { p95_wait: p, utilization: u });
            prop_assert!(n >= min && n <= max);
        }
    }
}
