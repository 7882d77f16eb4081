//! The saga tables of the configuration file: `[[sagas]]` (with `[[sagas.steps]]`) and
//! `[orchestrator]`, as plain data, and the rules they must satisfy.
//!
//! # Why here, and not in `saga`
//!
//! The configuration is plain data that every subsystem reads; it depends on none of
//! them. Before this file, `config` imported the saga module (for these structs and their
//! checks) while the saga module imported `config` (for `Config`): an import circle, so
//! neither could be understood, changed or tested without the other. Now the dependency
//! goes one way: the saga module converts these tables into its typed definitions
//! (`saga::definition::SagaDef`, whose module re-exports the types below) and its
//! orchestrator reads [`OrchestratorConfig`]. The rules live with the tables, stated on
//! their wire form — whole milliseconds, as the file and the definition snapshot stored
//! with every saga carry them — and a definition built in Rust is checked by the same
//! rules through that form.
//!
//! ```toml
//! [[sagas]]
//! name = "research"
//! timeout_ms = 60000          # default 60 s
//!
//! [[sagas.steps]]
//! name = "reasoning"
//! action = "demo.reasoning"   # task type that performs the step
//! compensation = "demo.clear_reasoning_cache"   # optional: task type that undoes it
//! queue = "default"           # default "default"
//! timeout_ms = 30000          # default 30 s
//! max_attempts = 3            # default 3
//! backoff_base_ms = 200       # default 200 ms
//! backoff_cap_ms = 10000      # default 10 s
//! ```

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Definition version when none is given.
pub const DEFAULT_VERSION: u32 = 1;
/// Time limit of a whole saga when none is given.
pub const DEFAULT_SAGA_TIMEOUT: Duration = Duration::from_secs(60);
/// Queue a step's task goes to when none is given.
pub const DEFAULT_QUEUE: &str = "default";
/// Handler time limit of one step attempt when none is given.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of a step (and of its compensation) when none is given.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// First retry delay of a step when none is given.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest retry delay of a step when none is given.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(10);

/// Every problem found in one or more saga definitions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct DefinitionError {
    /// One entry per problem, never empty.
    pub problems: Vec<DefinitionProblem>,
}

impl DefinitionError {
    pub(crate) fn from_problems(problems: Vec<DefinitionProblem>) -> Result<(), DefinitionError> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DefinitionError { problems })
        }
    }
}

/// One problem of a saga definition: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionProblem {
    /// Name of the saga.
    pub saga: String,
    /// The step, when the problem is in one.
    pub step: Option<StepRef>,
    /// The field, by its TOML name (`timeout_ms`, `action`, ...).
    pub field: &'static str,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl DefinitionProblem {
    /// The field's path within the saga's TOML table: `steps[1].timeout_ms` or
    /// `timeout_ms`. Prefix it with the saga's own path (`sagas[0].`) for a full key.
    pub fn key(&self) -> String {
        match &self.step {
            Some(s) => format!("steps[{}].{}", s.index, self.field),
            None => self.field.to_string(),
        }
    }
}

impl fmt::Display for DefinitionProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "saga {:?}: ", self.saga)?;
        if let Some(s) = &self.step {
            write!(f, "step #{} {:?}: ", s.index, s.name)?;
        }
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Points at a step of a saga: its position (0-based) and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRef {
    /// Position in the saga's step list, from 0.
    pub index: usize,
    /// Step name (may be empty or duplicated in an invalid definition).
    pub name: String,
}

/// A saga as written in the configuration file's `[[sagas]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SagaDefToml {
    /// Unique name.
    pub name: String,
    /// Definition version.
    #[serde(default = "default_version")]
    pub version: u32,
    /// Time limit of the whole saga, in ms.
    #[serde(default = "default_saga_timeout_ms")]
    pub timeout_ms: u64,
    /// The steps (`[[sagas.steps]]`), in order.
    #[serde(default)]
    pub steps: Vec<StepDefToml>,
}

/// A step as written in the configuration file's `[[sagas.steps]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StepDefToml {
    /// Name, unique within the saga.
    pub name: String,
    /// Queue of the step's tasks.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// Task type that performs the step.
    pub action: String,
    /// Task type that undoes the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<String>,
    /// Handler time limit of one attempt, in ms.
    #[serde(default = "default_step_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts in all.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay, in ms.
    #[serde(default = "default_backoff_base_ms")]
    pub backoff_base_ms: u64,
    /// Longest retry delay, in ms.
    #[serde(default = "default_backoff_cap_ms")]
    pub backoff_cap_ms: u64,
}

fn default_version() -> u32 {
    DEFAULT_VERSION
}
fn default_saga_timeout_ms() -> u64 {
    DEFAULT_SAGA_TIMEOUT.as_millis() as u64
}
fn default_queue() -> String {
    DEFAULT_QUEUE.into()
}
fn default_step_timeout_ms() -> u64 {
    DEFAULT_STEP_TIMEOUT.as_millis() as u64
}
fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}
fn default_backoff_base_ms() -> u64 {
    DEFAULT_BACKOFF_BASE.as_millis() as u64
}
fn default_backoff_cap_ms() -> u64 {
    DEFAULT_BACKOFF_CAP.as_millis() as u64
}

impl SagaDefToml {
    /// Every problem of this saga on its own (names, time limits, steps, task types,
    /// queue names, retry policies); empty when it is valid.
    pub fn problems(&self) -> Vec<DefinitionProblem> {
        let mut p = Vec::new();
        let problem =
            |step: Option<usize>, field: &'static str, reason: String| DefinitionProblem {
                saga: self.name.clone(),
                step: step.map(|index| StepRef {
                    index,
                    name: self.steps[index].name.clone(),
                }),
                field,
                reason,
            };
        if self.name.is_empty() || self.name.chars().any(|c| c.is_whitespace()) {
            p.push(problem(
                None,
                "name",
                "must be non-empty without spaces".into(),
            ));
        }
        if self.timeout_ms < 1 {
            p.push(problem(None, "timeout_ms", "must be at least 1 ms".into()));
        }
        if self.steps.is_empty() {
            p.push(problem(None, "steps", "must have at least one step".into()));
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, s) in self.steps.iter().enumerate() {
            let mut bad = |field, reason| p.push(problem(Some(i), field, reason));
            if s.name.is_empty() {
                bad("name", "must be non-empty".into());
            } else if let Some(first) = seen.insert(&s.name, i) {
                bad(
                    "name",
                    format!("step name {:?} is already used by step #{first}", s.name),
                );
            }
            if let Err(e) = crate::keys::validate_queue_name(&s.queue) {
                bad("queue", e);
            }
            if let Err(e) = crate::task::validate_type(&s.action) {
                bad("action", format!("task type {e}"));
            }
            if let Some(c) = &s.compensation {
                if let Err(e) = crate::task::validate_type(c) {
                    bad("compensation", format!("task type {e}"));
                }
            }
            if s.timeout_ms < 1 {
                bad("timeout_ms", "must be at least 1 ms".into());
            }
            if s.max_attempts < 1 {
                bad("max_attempts", "must be at least 1".into());
            }
            if s.backoff_base_ms < 1 {
                bad("backoff_base_ms", "must be at least 1 ms".into());
            }
            if s.backoff_cap_ms < s.backoff_base_ms {
                bad(
                    "backoff_cap_ms",
                    format!(
                        "must be at least backoff_base_ms ({} ms), got {} ms",
                        s.backoff_base_ms, s.backoff_cap_ms
                    ),
                );
            }
        }
        p
    }
}

/// The problems of the `[[sagas]]` tables and the `[orchestrator]` table of a
/// configuration file, as `(key, reason)` pairs with full keys (`sagas[1].steps[0].action`,
/// `orchestrator.block_ms`). Used by [`super::Config::validate`].
pub fn table_problems(sagas: &[SagaDefToml], orch: &OrchestratorConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, table) in sagas.iter().enumerate() {
        if let Some(first) = seen.insert(&table.name, i) {
            out.push((
                format!("sagas[{i}].name"),
                format!(
                    "saga {:?} is already defined by sagas[{first}]; saga names must be unique",
                    table.name
                ),
            ));
        }
        for p in table.problems() {
            let reason = match &p.step {
                Some(s) => format!("step {:?}: {}", s.name, p.reason),
                None => p.reason.clone(),
            };
            out.push((format!("sagas[{i}].{}", p.key()), reason));
        }
    }
    out.extend(orch.problems());
    out
}

/// How long finished sagas are kept by default (`orchestrator.retention_secs`).
pub const DEFAULT_RETENTION_SECS: u64 = 7 * 86_400;
/// Default slack before a step without reply times out (`orchestrator.step_grace_ms`).
pub const DEFAULT_STEP_GRACE_MS: u64 = 5_000;

/// The `[orchestrator]` table of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrchestratorConfig {
    /// Consumer name in the `orchestrator` group; default `<host>-<pid>-<random>`. Must
    /// be unique per process.
    pub consumer_name: Option<String>,
    /// How long one read of the reply stream blocks waiting for replies, in ms.
    pub block_ms: u64,
    /// Most replies read (and applied concurrently) at once.
    pub read_count: usize,
    /// Replies read by an orchestrator and left unacknowledged this long (it died or
    /// hangs) are claimed by another one, in ms.
    pub claim_idle_ms: u64,
    /// Period of the deadline loop, in ms: the precision of step and saga time-outs.
    pub deadline_interval_ms: u64,
    /// Added to a step's budget (every attempt's time limit plus the retry delays)
    /// before the step counts as timed out, in ms: covers waiting in the queue.
    pub step_grace_ms: u64,
    /// How long finished sagas (and their history) are kept, in seconds.
    pub retention_secs: u64,
    /// Period of sampling the saga gauges (sagas by state, overdue), in ms.
    pub sample_interval_ms: u64,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            consumer_name: None,
            block_ms: 1_000,
            read_count: 256,
            claim_idle_ms: 2_000,
            deadline_interval_ms: 100,
            step_grace_ms: DEFAULT_STEP_GRACE_MS,
            retention_secs: DEFAULT_RETENTION_SECS,
            sample_interval_ms: 5_000,
        }
    }
}

impl OrchestratorConfig {
    /// Every problem of the table, as `(orchestrator.key, reason)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let mut bad = |k: &str, r: &str| p.push((format!("orchestrator.{k}"), r.to_string()));
        for (k, v) in [
            ("block_ms", self.block_ms),
            ("claim_idle_ms", self.claim_idle_ms),
            ("deadline_interval_ms", self.deadline_interval_ms),
            ("retention_secs", self.retention_secs),
            ("sample_interval_ms", self.sample_interval_ms),
        ] {
            if v == 0 {
                bad(k, "must be positive");
            }
        }
        if self.read_count == 0 || self.read_count > 10_000 {
            bad("read_count", "must be between 1 and 10000");
        }
        if self.claim_idle_ms > 0 && self.claim_idle_ms < 100 {
            bad(
                "claim_idle_ms",
                "must be at least 100 ms, or replies being applied would be claimed by other orchestrators",
            );
        }
        if let Some(n) = &self.consumer_name {
            if n.is_empty() || n.contains(char::is_whitespace) {
                bad("consumer_name", "must be non-empty without spaces");
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_problems() {
        let c = OrchestratorConfig::default();
        assert!(c.problems().is_empty());
        assert_eq!(c.claim_idle_ms, 2_000);
        assert_eq!(c.retention_secs, 7 * 86_400);
        let bad = OrchestratorConfig {
            block_ms: 0,
            read_count: 0,
            claim_idle_ms: 10,
            consumer_name: Some("a b".into()),
            ..c
        };
        let keys: Vec<String> = bad.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "orchestrator.block_ms",
                "orchestrator.read_count",
                "orchestrator.claim_idle_ms",
                "orchestrator.consumer_name"
            ]
        );
    }
}
