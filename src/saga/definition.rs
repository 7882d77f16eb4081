//! Saga definitions: the ordered steps of a workflow, what runs them and what undoes them.
//!
//! A definition is data, not code: each step names a task *type* (served by whatever
//! handler is registered for it) and optionally the task type of its compensation. That
//! keeps a saga's shape in one place — the configuration file or a short Rust builder —
//! and lets `taskstream config check` verify it before anything runs.
//!
//! Definitions come from two places that end in the same validated [`SagaDef`]:
//!
//! - Rust: `SagaDef::builder("name").step(StepDef::new(..).compensate(..)).build()`.
//! - TOML, in the configuration file (durations in milliseconds):
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
//!
//! Validation collects every problem rather than stopping at the first, and each
//! [`DefinitionProblem`] names the saga, the step and the field (with its TOML name), so
//! a typo is found and fixed in one round.

use std::collections::HashMap;
use std::time::Duration;

use crate::backoff::Backoff;

pub use crate::config::sagas::{
    DefinitionError, DefinitionProblem, SagaDefToml, StepDefToml, StepRef, DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_CAP, DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, DEFAULT_SAGA_TIMEOUT,
    DEFAULT_STEP_TIMEOUT, DEFAULT_VERSION,
};

/// A saga: a named, versioned, ordered list of steps with an overall time limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaDef {
    /// Unique name, used to start the saga.
    pub name: String,
    /// Version of the definition; a running saga keeps the version it started with.
    pub version: u32,
    /// Time limit of the whole saga, from start to its last step's reply.
    pub timeout: Duration,
    /// The steps, run one after the other in this order.
    pub steps: Vec<StepDef>,
}

/// One step of a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepDef {
    /// Name, unique within the saga.
    pub name: String,
    /// Queue the step's tasks (and its compensation's tasks) are enqueued to.
    pub queue: String,
    /// Task type that performs the step.
    pub action: String,
    /// Task type that undoes the step, if it can be undone.
    pub compensation: Option<String>,
    /// Handler time limit of one attempt.
    pub timeout: Duration,
    /// Retry policy of the step's task and of its compensation's task.
    pub retry: StepRetry,
}

/// How a step's task is retried before the step counts as failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepRetry {
    /// Attempts in all (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub backoff_base: Duration,
    /// Longest delay between retries.
    pub backoff_cap: Duration,
}

impl Default for StepRetry {
    fn default() -> Self {
        StepRetry {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_cap: DEFAULT_BACKOFF_CAP,
        }
    }
}

impl StepRetry {
    /// The retry delays as a [`Backoff`] schedule.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: self.backoff_base,
            cap: self.backoff_cap,
        }
    }
}

impl StepDef {
    /// A step named `name` performed by task type `action`, with default queue, time
    /// limit and retries and no compensation.
    pub fn new(name: impl Into<String>, action: impl Into<String>) -> StepDef {
        StepDef {
            name: name.into(),
            queue: DEFAULT_QUEUE.into(),
            action: action.into(),
            compensation: None,
            timeout: DEFAULT_STEP_TIMEOUT,
            retry: StepRetry::default(),
        }
    }

    /// Sets the queue the step's tasks go to.
    pub fn queue(mut self, queue: impl Into<String>) -> StepDef {
        self.queue = queue.into();
        self
    }

    /// Sets the task type that undoes the step.
    pub fn compensate(mut self, task_type: impl Into<String>) -> StepDef {
        self.compensation = Some(task_type.into());
        self
    }

    /// Sets the handler time limit of one attempt.
    pub fn timeout(mut self, timeout: Duration) -> StepDef {
        self.timeout = timeout;
        self
    }

    /// Sets the number of attempts in all.
    pub fn max_attempts(mut self, n: u32) -> StepDef {
        self.retry.max_attempts = n;
        self
    }

    /// Sets the retry delays: `base` before the first retry, doubling up to `cap`.
    pub fn backoff(mut self, base: Duration, cap: Duration) -> StepDef {
        self.retry.backoff_base = base;
        self.retry.backoff_cap = cap;
        self
    }
}

/// Builds a [`SagaDef`]; see [`SagaDef::builder`].
#[derive(Debug, Clone)]
pub struct SagaDefBuilder {
    def: SagaDef,
}

impl SagaDefBuilder {
    /// Sets the definition version (default 1).
    pub fn version(mut self, version: u32) -> SagaDefBuilder {
        self.def.version = version;
        self
    }

    /// Sets the time limit of the whole saga (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> SagaDefBuilder {
        self.def.timeout = timeout;
        self
    }

    /// Appends a step.
    pub fn step(mut self, step: StepDef) -> SagaDefBuilder {
        self.def.steps.push(step);
        self
    }

    /// Validates and returns the definition.
    pub fn build(self) -> Result<SagaDef, DefinitionError> {
        self.def.validate()?;
        Ok(self.def)
    }
}

impl SagaDef {
    /// Starts building a saga named `name`.
    pub fn builder(name: impl Into<String>) -> SagaDefBuilder {
        SagaDefBuilder {
            def: SagaDef {
                name: name.into(),
                version: DEFAULT_VERSION,
                timeout: DEFAULT_SAGA_TIMEOUT,
                steps: Vec::new(),
            },
        }
    }

    /// The index and definition of the step named `name`.
    pub fn step_named(&self, name: &str) -> Option<(usize, &StepDef)> {
        self.steps.iter().enumerate().find(|(_, s)| s.name == name)
    }

    /// Every task type the saga enqueues: actions and compensations, in step order.
    pub fn task_types(&self) -> impl Iterator<Item = &str> {
        self.steps
            .iter()
            .flat_map(|s| std::iter::once(s.action.as_str()).chain(s.compensation.as_deref()))
    }

    /// Checks the definition on its own; collects every problem.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        DefinitionError::from_problems(self.problems())
    }

    /// Checks that a handler serves every action and compensation type: `known_types`
    /// are the task types registered with the worker pool that will run the saga.
    pub fn validate_against(&self, known_types: &[String]) -> Result<(), DefinitionError> {
        let mut p = Vec::new();
        let unknown = |t: &str| !known_types.iter().any(|k| k == t);
        for (i, s) in self.steps.iter().enumerate() {
            if unknown(&s.action) {
                p.push(self.problem(
                    Some(i),
                    "action",
                    format!("no handler serves task type {:?}", s.action),
                ));
            }
            if let Some(c) = s.compensation.as_deref().filter(|c| unknown(c)) {
                p.push(self.problem(
                    Some(i),
                    "compensation",
                    format!("no handler serves task type {c:?}"),
                ));
            }
        }
        DefinitionError::from_problems(p)
    }

    /// The rules of the `[[sagas]]` tables ([`SagaDefToml::problems`]), applied to this
    /// definition's wire form: a definition from Rust and one from the file are checked
    /// alike, and what is checked is what is stored with every saga.
    fn problems(&self) -> Vec<DefinitionProblem> {
        SagaDefToml::from(self).problems()
    }

    fn problem(
        &self,
        step: Option<usize>,
        field: &'static str,
        reason: String,
    ) -> DefinitionProblem {
        DefinitionProblem {
            saga: self.name.clone(),
            step: step.map(|index| StepRef {
                index,
                name: self.steps[index].name.clone(),
            }),
            field,
            reason,
        }
    }
}

/// Validates a list of definitions: each on its own, and their names unique.
pub fn validate_all(defs: &[SagaDef]) -> Result<(), DefinitionError> {
    let mut p = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, d) in defs.iter().enumerate() {
        if let Some(first) = seen.insert(&d.name, i) {
            p.push(d.problem(
                None,
                "name",
                format!(
                    "saga {:?} is defined twice (entries #{first} and #{i})",
                    d.name
                ),
            ));
        }
        p.extend(d.problems());
    }
    DefinitionError::from_problems(p)
}

impl SagaDefToml {
    /// Converts to a [`SagaDef`] and validates it.
    pub fn into_def(self) -> Result<SagaDef, DefinitionError> {
        let def = self.into_unchecked();
        def.validate()?;
        Ok(def)
    }

    fn into_unchecked(self) -> SagaDef {
        SagaDef {
            name: self.name,
            version: self.version,
            timeout: Duration::from_millis(self.timeout_ms),
            steps: self.steps.into_iter().map(StepDefToml::into_def).collect(),
        }
    }
}

impl StepDefToml {
    fn into_def(self) -> StepDef {
        StepDef {
            name: self.name,
            queue: self.queue,
            action: self.action,
            compensation: self.compensation,
            timeout: Duration::from_millis(self.timeout_ms),
            retry: StepRetry {
                max_attempts: self.max_attempts,
                backoff_base: Duration::from_millis(self.backoff_base_ms),
                backoff_cap: Duration::from_millis(self.backoff_cap_ms),
            },
        }
    }
}

/// Converts the `[[sagas]]` tables of a configuration file and validates them together
/// (names unique across the list); collects every problem of every saga.
pub fn defs_from_toml(tables: Vec<SagaDefToml>) -> Result<Vec<SagaDef>, DefinitionError> {
    let defs: Vec<SagaDef> = tables
        .into_iter()
        .map(SagaDefToml::into_unchecked)
        .collect();
    validate_all(&defs)?;
    Ok(defs)
}

impl From<&SagaDef> for SagaDefToml {
    fn from(d: &SagaDef) -> SagaDefToml {
        SagaDefToml {
            name: d.name.clone(),
            version: d.version,
            timeout_ms: d.timeout.as_millis() as u64,
            steps: d.steps.iter().map(StepDefToml::from).collect(),
        }
    }
}

impl From<&StepDef> for StepDefToml {
    fn from(s: &StepDef) -> StepDefToml {
        StepDefToml {
            name: s.name.clone(),
            queue: s.queue.clone(),
            action: s.action.clone(),
            compensation: s.compensation.clone(),
            timeout_ms: s.timeout.as_millis() as u64,
            max_attempts: s.retry.max_attempts,
            backoff_base_ms: s.retry.backoff_base.as_millis() as u64,
            backoff_cap_ms: s.retry.backoff_cap.as_millis() as u64,
        }
    }
}

/// The built-in example: `reasoning → codegen → ml → backtest` on queue `default`,
/// 60 s in all. Each step but `backtest` (read-only) has a compensation.
pub fn demo_saga() -> SagaDef {
    SagaDef::builder("demo")
        .timeout(Duration::from_secs(60))
        .step(StepDef::new("reasoning", "demo.reasoning").compensate("demo.clear_reasoning_cache"))
        .step(StepDef::new("codegen", "demo.codegen").compensate("demo.delete_generated_code"))
        .step(StepDef::new("ml", "demo.ml").compensate("demo.discard_model"))
        .step(StepDef::new("backtest", "demo.backtest"))
        .build()
        .expect("the built-in demo saga is valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        sagas: Vec<SagaDefToml>,
    }

    fn parse(text: &str) -> Result<Vec<SagaDef>, DefinitionError> {
        defs_from_toml(toml::from_str::<File>(text).unwrap().sagas)
    }

    fn fields(e: &DefinitionError) -> Vec<(Option<usize>, &'static str)> {
        e.problems
            .iter()
            .map(|p| (p.step.as_ref().map(|s| s.index), p.field))
            .collect()
    }

    #[test]
    fn builder_applies_defaults_and_settings() {
        let d = SagaDef::builder("s")
            .step(StepDef::new("a", "t.a"))
            .step(
                StepDef::new("b", "t.b")
                    .queue("q2")
                    .compensate("t.undo_b")
                    .timeout(Duration::from_secs(5))
                    .max_attempts(7)
                    .backoff(Duration::from_millis(50), Duration::from_secs(1)),
            )
            .build()
            .unwrap();
        assert_eq!(d.version, 1);
        assert_eq!(d.timeout, Duration::from_secs(60));
        let a = &d.steps[0];
        assert_eq!(a.queue, "default");
        assert_eq!(a.compensation, None);
        assert_eq!(a.timeout, Duration::from_secs(30));
        assert_eq!(a.retry, StepRetry::default());
        assert_eq!(a.retry.max_attempts, 3);
        assert_eq!(a.retry.backoff_base, Duration::from_millis(200));
        assert_eq!(a.retry.backoff_cap, Duration::from_secs(10));
        let b = &d.steps[1];
        assert_eq!(b.queue, "q2");
        assert_eq!(b.compensation.as_deref(), Some("t.undo_b"));
        assert_eq!(b.timeout, Duration::from_secs(5));
        assert_eq!(b.retry.max_attempts, 7);
        assert_eq!(b.retry.backoff().base, Duration::from_millis(50));
        assert_eq!(d.step_named("b").map(|(i, _)| i), Some(1));
        assert_eq!(
            d.task_types().collect::<Vec<_>>(),
            ["t.a", "t.b", "t.undo_b"]
        );
    }

    #[test]
    fn demo_saga_shape() {
        let d = demo_saga();
        assert_eq!(d.timeout, Duration::from_secs(60));
        let shape: Vec<_> = d
            .steps
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.action.as_str(),
                    s.compensation.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                (
                    "reasoning",
                    "demo.reasoning",
                    Some("demo.clear_reasoning_cache")
                ),
                (
                    "codegen",
                    "demo.codegen",
                    Some("demo.delete_generated_code")
                ),
                ("ml", "demo.ml", Some("demo.discard_model")),
                ("backtest", "demo.backtest", None),
            ]
        );
    }

    #[test]
    fn toml_with_defaults_matches_builder() {
        let text = r#"
[[sagas]]
name = "demo"

[[sagas.steps]]
name = "reasoning"
action = "demo.reasoning"
compensation = "demo.clear_reasoning_cache"

[[sagas.steps]]
name = "codegen"
action = "demo.codegen"
compensation = "demo.delete_generated_code"

[[sagas.steps]]
name = "ml"
action = "demo.ml"
compensation = "demo.discard_model"

[[sagas.steps]]
name = "backtest"
action = "demo.backtest"
"#;
        assert_eq!(parse(text).unwrap(), vec![demo_saga()]);
    }

    #[test]
    fn toml_explicit_fields() {
        let text = r#"
[[sagas]]
name = "s"
version = 4
timeout_ms = 1500
[[sagas.steps]]
name = "a"
queue = "fast"
action = "t.a"
timeout_ms = 250
max_attempts = 1
backoff_base_ms = 10
backoff_cap_ms = 20
"#;
        let d = &parse(text).unwrap()[0];
        assert_eq!(d.version, 4);
        assert_eq!(d.timeout, Duration::from_millis(1500));
        let s = &d.steps[0];
        assert_eq!(s.queue, "fast");
        assert_eq!(s.timeout, Duration::from_millis(250));
        assert_eq!(s.retry.max_attempts, 1);
        assert_eq!(s.retry.backoff_base, Duration::from_millis(10));
        assert_eq!(s.retry.backoff_cap, Duration::from_millis(20));
    }

    #[test]
    fn toml_roundtrips_through_serialize() {
        let d = demo_saga();
        let table = SagaDefToml::from(&d);
        let text = toml::to_string(&table).unwrap();
        let back: SagaDefToml = toml::from_str(&text).unwrap();
        assert_eq!(back.into_def().unwrap(), d);
    }

    #[test]
    fn toml_rejects_unknown_fields() {
        let step_typo = "[[sagas]]\nname = \"s\"\n[[sagas.steps]]\nname = \"a\"\naction = \"t\"\ncompensate = \"u\"\n";
        let err = toml::from_str::<File>(step_typo).unwrap_err().to_string();
        assert!(err.contains("unknown field `compensate`"), "{err}");
        let saga_typo = "[[sagas]]\nname = \"s\"\ntimeout = 5\n";
        let err = toml::from_str::<File>(saga_typo).unwrap_err().to_string();
        assert!(err.contains("unknown field `timeout`"), "{err}");
        let missing = "[[sagas]]\nname = \"s\"\n[[sagas.steps]]\nname = \"a\"\n";
        let err = toml::from_str::<File>(missing).unwrap_err().to_string();
        assert!(err.contains("missing field `action`"), "{err}");
    }

    #[test]
    fn validation_collects_every_problem_with_saga_step_and_field() {
        let text = r#"
[[sagas]]
name = "s"
timeout_ms = 0
[[sagas.steps]]
name = "a"
queue = "bad queue"
action = "has space"
compensation = "ok.undo"
timeout_ms = 0
max_attempts = 0
backoff_base_ms = 0
[[sagas.steps]]
name = "a"
action = "t.b"
compensation = "bad!"
backoff_base_ms = 500
backoff_cap_ms = 100
[[sagas.steps]]
name = ""
action = "t.c"
"#;
        let err = parse(text).unwrap_err();
        assert_eq!(
            fields(&err),
            [
                (None, "timeout_ms"),
                (Some(0), "queue"),
                (Some(0), "action"),
                (Some(0), "timeout_ms"),
                (Some(0), "max_attempts"),
                (Some(0), "backoff_base_ms"),
                (Some(1), "name"),
                (Some(1), "compensation"),
                (Some(1), "backoff_cap_ms"),
                (Some(2), "name"),
            ]
        );
        assert!(err.problems.iter().all(|p| p.saga == "s"));
        let text = err.to_string();
        assert!(
            text.contains(
                r#"saga "s": step #1 "a": name: step name "a" is already used by step #0"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"saga "s": timeout_ms: must be at least 1 ms"#),
            "{text}"
        );
        assert!(
            text.contains("must be at least backoff_base_ms (500 ms), got 100 ms"),
            "{text}"
        );
        assert_eq!(err.problems[1].key(), "steps[0].queue");
        assert_eq!(err.problems[0].key(), "timeout_ms");
    }

    #[test]
    fn sub_millisecond_timeouts_are_rejected() {
        // Timeouts travel as whole milliseconds (`timeout_ms`); 0 ms would mean "none".
        let err = SagaDef::builder("s")
            .timeout(Duration::from_micros(900))
            .step(StepDef::new("a", "t").timeout(Duration::from_micros(10)))
            .build()
            .unwrap_err();
        assert_eq!(
            fields(&err),
            [(None, "timeout_ms"), (Some(0), "timeout_ms")]
        );
    }

    #[test]
    fn saga_needs_a_name_and_a_step() {
        let err = SagaDef::builder("").build().unwrap_err();
        assert_eq!(fields(&err), [(None, "name"), (None, "steps")]);
    }

    #[test]
    fn saga_names_must_be_unique_across_the_list() {
        let a = SagaDef::builder("x")
            .step(StepDef::new("a", "t"))
            .build()
            .unwrap();
        let b = SagaDef::builder("y")
            .step(StepDef::new("a", "t"))
            .build()
            .unwrap();
        validate_all(&[a.clone(), b.clone()]).unwrap();
        let err = validate_all(&[a.clone(), b, a]).unwrap_err();
        assert_eq!(fields(&err), [(None, "name")]);
        assert!(
            err.to_string()
                .contains("defined twice (entries #0 and #2)"),
            "{err}"
        );
    }

    #[test]
    fn validate_against_reports_types_no_handler_serves() {
        let d = demo_saga();
        let mut known: Vec<String> = d.task_types().map(String::from).collect();
        d.validate_against(&known).unwrap();
        known.retain(|t| t != "demo.ml" && t != "demo.delete_generated_code");
        let err = d.validate_against(&known).unwrap_err();
        assert_eq!(
            fields(&err),
            [(Some(1), "compensation"), (Some(2), "action")]
        );
        assert!(
            err.to_string().contains(
                r#"saga "demo": step #2 "ml": action: no handler serves task type "demo.ml""#
            ),
            "{err}"
        );
    }
}
