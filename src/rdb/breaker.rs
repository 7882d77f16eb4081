//! The Redis side of circuit breakers ([`crate::breaker`]): `breaker.lua` in its two
//! modes (may a task run now; what a run said), one atomic step on the breaker's own key,
//! and the read of every breaker's state for `stats`.

use redis::Pipeline;

use super::{Broker, ScriptId};
use crate::breaker::{BreakerConfig, Outcome, State};
use crate::error::Result;
use crate::task::now_ms;

/// What the breaker script answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The breaker's state after the call.
    pub state: State,
    /// `allow`: run this task as the probe.
    pub probe: bool,
    /// Open or half-open with a probe under way: hold tasks until then (Unix ms).
    pub until_ms: u64,
    /// This call opened the breaker.
    pub opened: bool,
}

/// A breaker's state as `stats` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BreakerStatus {
    /// Target name.
    pub target: String,
    /// `closed`, `half_open` or `open`.
    pub state: String,
    /// End of the open period (Unix ms), when open.
    pub until_ms: Option<u64>,
}

/// The key of `target`'s breaker: `ts:breaker:{<target>}` (a slot of its own).
pub fn breaker_key(target: &str) -> String {
    format!("{}:breaker:{{{target}}}", crate::keys::PREFIX)
}

/// Targets that have a breaker (a set, for `stats`).
pub const BREAKERS: &str = "ts:breakers";

impl Broker {
    async fn breaker_call(
        &self,
        b: &BreakerConfig,
        probe_ms: u64,
        mode: &str,
        rest: &[&str],
    ) -> Result<Verdict> {
        let key = breaker_key(&b.target);
        let now = now_ms();
        let (n, w, m, r, o, c, pm) = (
            now.to_string(),
            b.window_secs.to_string(),
            b.min_calls.to_string(),
            b.failure_ratio.to_string(),
            b.open_ms.to_string(),
            b.close_after.to_string(),
            probe_ms.to_string(),
        );
        let mut args: Vec<&str> = vec![mode, &n, &w, &m, &r, &o, &c, &pm];
        args.extend_from_slice(rest);
        let mut p = Pipeline::new();
        p.add_command(super::evalsha(ScriptId::Breaker, &[&key], args));
        let ((state, until, opened),): ((String, u64, u64),) = self.pipe(&p).await?;
        Ok(Verdict {
            state: State::parse(&state).unwrap_or(State::Closed),
            probe: state == "probe",
            until_ms: until,
            opened: opened == 1,
        })
    }

    /// May a task of `b`'s types run now? (`probe_ms`: how long a probe may stay silent.)
    pub(crate) async fn breaker_allow(&self, b: &BreakerConfig, probe_ms: u64) -> Result<Verdict> {
        self.breaker_call(b, probe_ms, "allow", &[]).await
    }

    /// Counts what a run said about `b`'s target.
    pub(crate) async fn breaker_record(
        &self,
        b: &BreakerConfig,
        probe_ms: u64,
        outcome: Outcome,
        probe: bool,
    ) -> Result<Verdict> {
        self.breaker_call(
            b,
            probe_ms,
            "record",
            &[outcome.as_str(), if probe { "1" } else { "0" }],
        )
        .await
    }

    /// Records that `targets` have breakers (for `stats`).
    pub(crate) async fn register_breakers(&self, targets: &[String]) -> Result<()> {
        if targets.is_empty() {
            return Ok(());
        }
        redis::cmd("SADD")
            .arg(BREAKERS)
            .arg(targets)
            .query_async::<()>(&mut self.c())
            .await?;
        Ok(())
    }

    /// The state of every registered breaker, by target name.
    pub async fn breakers(&self) -> Result<Vec<BreakerStatus>> {
        let mut targets: Vec<String> = redis::cmd("SMEMBERS")
            .arg(BREAKERS)
            .query_async(&mut self.c())
            .await?;
        targets.sort();
        let mut out = Vec::new();
        for t in targets {
            let (state, until): (Option<String>, Option<u64>) = redis::cmd("HMGET")
                .arg(breaker_key(&t))
                .arg("state")
                .arg("until")
                .query_async(&mut self.c())
                .await?;
            let state = state.unwrap_or_else(|| "closed".into());
            let until_ms = (state == "open").then_some(until).flatten();
            out.push(BreakerStatus {
                target: t,
                state,
                until_ms,
            });
        }
        Ok(out)
    }
}
