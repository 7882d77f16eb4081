//! Circuit breakers per downstream (issue 13.4): the settings, the states and the pure
//! decisions; the transitions themselves are one atomic script (`rdb/lua/breaker.lua`).
//!
//! Without a breaker, a downstream that fails for a minute makes every queued task of the
//! types that call it retry into it and burn its attempts: a ten-second outage under a
//! steady stream dead-letters whatever was on its last attempt, and every retry is one more
//! call into a service that is already down. With `[[breakers]]` naming the target and the
//! task types that call it, every replica shares one breaker in Redis
//! (`ts:breaker:{<target>}`):
//!
//! - **closed**: tasks run; each run's outcome is counted in a sliding window of one-second
//!   buckets (`window_secs`). At least `min_calls` calls with `failure_ratio` or more of them
//!   failed (a retryable error or a time-out: a permanent error is the task's fault, not
//!   the target's) open it.
//! - **open** for `open_ms`: a task of those types is not run. It goes back to the schedule,
//!   due when the breaker may half-open (plus a little jitter), on the *same attempt*: it
//!   holds no slot and burns no attempt, so nothing is dead-lettered because a downstream
//!   was away.
//! - **half-open**: one task at a time runs as a probe (a probe whose worker died is
//!   forgotten after the type's time limit); the others wait a second. A failed probe opens
//!   it again; `close_after` successful probes in a row close it.
//!
//! The defaults are the production reports' pattern this system came from, in ratio form:
//! 5 calls in 10 s with half of them failing open it, for 60 s, and 3 successes close it.
//! Replicas learn the state from every call they make to the script (each run's outcome,
//! each start after the cached state expires), so a replica that has not failed itself stops
//! calling within [`CACHE_MS`] of another opening it.

use serde::{Deserialize, Serialize};

/// How long a replica trusts the breaker state it last saw before asking Redis again.
pub const CACHE_MS: u64 = 250;

/// One `[[breakers]]` table.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// The downstream's name (an HTTP endpoint, a database): `[A-Za-z0-9_.:/-]`, 1–128.
    pub target: String,
    /// Task types whose handlers call it (HTTP handler types or Rust handler types).
    pub types: Vec<String>,
    /// Length of the sliding window of outcomes, in seconds (1 to 3600).
    pub window_secs: u64,
    /// Calls in the window before the ratio is judged.
    pub min_calls: u32,
    /// Share of failed calls in the window that opens the breaker (above 0, at most 1).
    pub failure_ratio: f64,
    /// How long it stays open before a probe may run, in ms.
    pub open_ms: u64,
    /// Successful probes in a row that close it.
    pub close_after: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            target: String::new(),
            types: Vec::new(),
            window_secs: 10,
            min_calls: 5,
            failure_ratio: 0.5,
            open_ms: 60_000,
            close_after: 3,
        }
    }
}

impl BreakerConfig {
    /// What is wrong with the table, as (key, reason) pairs (`config check` prefixes the
    /// keys with `breakers[i].`).
    pub(crate) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if let Err(e) = crate::task::validate_type(&self.target) {
            p.push(("target", format!("{e} (a name for the downstream)")));
        }
        if self.types.is_empty() {
            p.push((
                "types",
                "must name at least one task type that calls the target".into(),
            ));
        }
        for t in &self.types {
            if let Err(e) = crate::task::validate_type(t) {
                p.push(("types", format!("task type {t:?} {e}")));
            }
        }
        if !(1..=3_600).contains(&self.window_secs) {
            p.push((
                "window_secs",
                format!("must be 1 to 3600, got {}", self.window_secs),
            ));
        }
        if self.min_calls == 0 || self.min_calls > 1_000_000 {
            p.push((
                "min_calls",
                format!("must be 1 to 1000000, got {}", self.min_calls),
            ));
        }
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            p.push((
                "failure_ratio",
                format!("must be above 0 and at most 1, got {}", self.failure_ratio),
            ));
        }
        if !(100..=crate::config::MAX_MS).contains(&self.open_ms) {
            p.push((
                "open_ms",
                format!(
                    "must be 100 to {} (7 days), got {}",
                    crate::config::MAX_MS,
                    self.open_ms
                ),
            ));
        }
        if self.close_after == 0 || self.close_after > 1_000 {
            p.push((
                "close_after",
                format!("must be 1 to 1000, got {}", self.close_after),
            ));
        }
        p
    }
}

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Tasks run; outcomes are counted.
    Closed,
    /// One probe at a time runs.
    HalfOpen,
    /// Tasks are held until the open period ends.
    Open,
}

impl State {
    /// The script's name of it.
    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "closed" => State::Closed,
            "half_open" | "probe" => State::HalfOpen,
            "open" => State::Open,
            _ => return None,
        })
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }

    /// The value of `taskstream_breaker_state`: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::HalfOpen => 1.0,
            State::Open => 2.0,
        }
    }
}

/// What a run said about its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It answered: success, or a permanent error (the task's fault).
    Ok,
    /// A retryable error or a time-out.
    Fail,
    /// Nothing (cancelled, handed back at shutdown): only a probe's place is given back.
    None,
}

impl Outcome {
    /// The script's name of it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::None => "none",
        }
    }
}

/// When a task held at `now_ms` until `until_ms` comes back: at `until_ms` plus up to a
/// tenth of the wait (at most 1 s) of jitter drawn from `r` in `0..1`, so the tasks held
/// during an outage do not all arrive in the same millisecond; never before `now_ms + 50`.
pub fn hold_until(now_ms: u64, until_ms: u64, r: f64) -> u64 {
    let wait = until_ms.saturating_sub(now_ms);
    let jitter = ((wait / 10).min(1_000) as f64 * r.clamp(0.0, 1.0)) as u64;
    (until_ms + jitter).max(now_ms + 50)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults_are_the_documented_pattern_and_valid() {
        let c = BreakerConfig {
            target: "payments-api".into(),
            types: vec!["charge".into()],
            ..BreakerConfig::default()
        };
        assert_eq!((c.min_calls, c.open_ms, c.close_after), (5, 60_000, 3));
        assert!(c.problems().is_empty(), "{:?}", c.problems());
    }

    #[test]
    fn bad_tables_name_the_key() {
        let c = BreakerConfig {
            target: "bad name".into(),
            failure_ratio: 0.0,
            open_ms: 10,
            ..BreakerConfig::default()
        };
        let keys: Vec<&str> = c.problems().iter().map(|p| p.0).collect();
        assert_eq!(keys, ["target", "types", "failure_ratio", "open_ms"]);
    }

    #[test]
    fn states_round_trip() {
        for s in [State::Closed, State::HalfOpen, State::Open] {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("probe"), Some(State::HalfOpen));
        assert_eq!(State::parse("x"), None);
    }

    proptest! {
        #[test]
        fn holds_end_after_the_open_period_within_the_jitter(
            now in 0u64..1u64 << 40, wait in 0u64..10_000_000, r in 0.0f64..1.0
        ) {
            let until = now + wait;
            let back = hold_until(now, until, r);
            prop_assert!(back >= until);
            prop_assert!(back >= now + 50);
            prop_assert!(back <= (until + 1_000).max(now + 50));
        }
    }
}
