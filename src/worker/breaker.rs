//! The worker's side of circuit breakers ([`crate::breaker`]): which types call which
//! target, the state this process last saw (trusted for [`CACHE_MS`], so a closed breaker
//! costs no round trip before a run), the gate a task passes before it runs, and the
//! outcome it reports after.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::breaker::{BreakerConfig, Outcome, State, CACHE_MS};
use crate::metrics as m;
use crate::rdb::breaker::Verdict;
use crate::rdb::Broker;
use crate::task::now_ms;

/// One target's breaker as this process sees it.
#[derive(Debug)]
pub(crate) struct Breaker {
    /// Its settings.
    pub cfg: BreakerConfig,
    /// The state last seen and when (Unix ms), and until when tasks are held.
    seen: Mutex<(State, u64, u64)>,
}

/// What the gate decided for one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Run it (as the half-open probe when `probe`).
    Run {
        /// The one probe of a half-open breaker.
        probe: bool,
    },
    /// Do not run it: back to the schedule, on the same attempt, until then (Unix ms).
    Hold(u64),
}

impl Breaker {
    fn note(&self, v: &Verdict) {
        let mut s = self.seen.lock().expect("poisoned");
        let changed = s.0 != v.state;
        *s = (v.state, now_ms(), v.until_ms);
        drop(s);
        metrics::gauge!(m::BREAKER_STATE, "target" => self.cfg.target.clone()).set(v.state.gauge());
        if v.opened {
            metrics::counter!(m::BREAKER_OPENED_TOTAL, "target" => self.cfg.target.clone())
                .increment(1);
            tracing::warn!(target_name = %self.cfg.target, open_ms = self.cfg.open_ms, "circuit breaker opened: tasks of its types wait, on the same attempt, until a probe succeeds");
        } else if changed {
            tracing::info!(target_name = %self.cfg.target, state = v.state.as_str(), "circuit breaker state");
        }
    }

    /// May the task run? Closed and fresh: yes, without asking Redis. Open and before its
    /// end: hold. Otherwise the script decides (and picks the one probe). A Redis error
    /// lets the task run: the breaker protects the target, it must not stop the queue.
    pub(crate) async fn gate(&self, broker: &Broker, probe_ms: u64) -> Gate {
        let now = now_ms();
        let (state, at, until) = *self.seen.lock().expect("poisoned");
        if now.saturating_sub(at) < CACHE_MS {
            match state {
                State::Closed => return Gate::Run { probe: false },
                State::Open | State::HalfOpen if now < until => return Gate::Hold(until),
                _ => {}
            }
        }
        match broker.breaker_allow(&self.cfg, probe_ms).await {
            Ok(v) => {
                self.note(&v);
                match (v.state, v.probe) {
                    (State::Closed, _) => Gate::Run { probe: false },
                    (_, true) => Gate::Run { probe: true },
                    _ => Gate::Hold(v.until_ms.max(now + 50)),
                }
            }
            Err(e) => {
                tracing::warn!(target_name = %self.cfg.target, error = %e, "circuit breaker unavailable; running the task");
                Gate::Run { probe: false }
            }
        }
    }

    /// Reports what a run said about the target.
    pub(crate) async fn record(
        &self,
        broker: &Broker,
        probe_ms: u64,
        outcome: Outcome,
        probe: bool,
    ) {
        match broker
            .breaker_record(&self.cfg, probe_ms, outcome, probe)
            .await
        {
            Ok(v) => self.note(&v),
            Err(e) => {
                tracing::warn!(target_name = %self.cfg.target, error = %e, "could not record an outcome in the circuit breaker")
            }
        }
    }
}

/// The breakers of one process, by task type.
#[derive(Debug, Default)]
pub(crate) struct Breakers {
    by_type: HashMap<String, Arc<Breaker>>,
}

impl Breakers {
    /// From the `[[breakers]]` tables.
    pub(crate) fn new(cfgs: &[BreakerConfig]) -> Breakers {
        let mut by_type = HashMap::new();
        for c in cfgs {
            let b = Arc::new(Breaker {
                cfg: c.clone(),
                seen: Mutex::new((State::Closed, 0, 0)),
            });
            for t in &c.types {
                by_type.insert(t.clone(), b.clone());
            }
        }
        Breakers { by_type }
    }

    /// The breaker of `task_type`, if it calls a guarded target.
    pub(crate) fn of(&self, task_type: &str) -> Option<&Arc<Breaker>> {
        if self.by_type.is_empty() {
            return None;
        }
        self.by_type.get(task_type)
    }
}
