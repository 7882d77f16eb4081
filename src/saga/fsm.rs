//! The saga state machine: pure, deterministic, no I/O.
//!
//! [`SagaState::apply`] takes the current state, the saga's [`SagaDef`] and one
//! [`Event`], and returns a [`Transition`]: the next state and the [`Command`]s it
//! causes. The orchestrator persists the new state, then carries out the commands
//! (enqueue a step's task, enqueue a compensation, record the outcome). Keeping the
//! decisions here, away from Redis, means every rule below is tested exhaustively and
//! with random event sequences, and a crash between "persist" and "execute" is handled
//! by re-executing the commands of the persisted state (task delivery is at-least-once
//! anyway, so handlers are idempotent).
//!
//! # Rules
//!
//! - `Start` runs step 0. Each `StepSucceeded` for the running step stores its output
//!   and runs the next step; after the last one the saga is `Completed`.
//! - `StepFailed` (the step's task failed after all its retries) marks the step `Failed`
//!   and starts the rollback *below* it: a failed step has no lasting effect.
//! - `StepTimedOut`, `SagaTimedOut` and `Abort` while a step runs leave that step's
//!   outcome **in doubt**: its task may have done its work, or may still do it and reply
//!   late (the late reply is then rejected as [`IllegalTransition::Stale`] and ignored).
//!   The step is marked `Failed` and, if it has a compensation, it is compensated
//!   **first**, then the rollback continues below it. Compensations must therefore be
//!   idempotent and succeed when there is nothing to undo.
//! - The rollback visits the steps below in reverse order, one at a time: a `Succeeded`
//!   step with a compensation is compensated (`DispatchCompensation`, then wait for its
//!   reply); one without is marked `Skipped`; steps that never ran stay `Pending`. When
//!   no step is left the saga is `RolledBack`.
//! - `CompensationFailed` (after all its retries) marks the step `CompensationFailed` and
//!   the saga `Failed`, and stops: the steps below keep `Succeeded`, showing an operator
//!   exactly which effects remain.
//! - `Abort` or `SagaTimedOut` before `Start` ends the saga `RolledBack` (nothing ran).
//!   While `Compensating` they are **accepted no-ops** (a transition without commands):
//!   the saga is already rolling back, and abandoning the rollback would only leave more
//!   effects behind. Aborting twice is thus harmless.
//! - `Completed`, `RolledBack` and `Failed` are terminal and reject every event.
//!
//! Any other event is rejected with an [`IllegalTransition`] and the state is unchanged
//! ([`SagaState::apply`] takes `&self`). [`IllegalTransition::is_stale`] tells the
//! orchestrator which rejections are duplicate or late deliveries, to be dropped quietly.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::definition::SagaDef;

/// Where a saga is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SagaStatus {
    /// Created, not started.
    Pending,
    /// Waiting for the reply of step `step`.
    Running {
        /// Index of the running step.
        step: usize,
    },
    /// Rolling back: waiting for the reply of step `step`'s compensation.
    Compensating {
        /// Index of the step being compensated.
        step: usize,
    },
    /// Every step succeeded (terminal).
    Completed,
    /// Stopped part-way, every compensable effect undone (terminal).
    RolledBack,
    /// A compensation failed: effects remain and an operator is needed (terminal).
    Failed,
}

impl SagaStatus {
    /// True for `Completed`, `RolledBack` and `Failed`, which accept no event.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SagaStatus::Completed | SagaStatus::RolledBack | SagaStatus::Failed
        )
    }

    /// The step the saga waits on (running or being compensated), if any.
    pub fn step(self) -> Option<usize> {
        match self {
            SagaStatus::Running { step } | SagaStatus::Compensating { step } => Some(step),
            _ => None,
        }
    }
}

impl fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SagaStatus::Pending => f.write_str("pending"),
            SagaStatus::Running { step } => write!(f, "running step #{step}"),
            SagaStatus::Compensating { step } => write!(f, "compensating step #{step}"),
            SagaStatus::Completed => f.write_str("completed"),
            SagaStatus::RolledBack => f.write_str("rolled back"),
            SagaStatus::Failed => f.write_str("failed"),
        }
    }
}

/// Where one step is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not run (yet).
    Pending,
    /// Its task is dispatched; waiting for the reply.
    Running,
    /// Done; its output is stored.
    Succeeded,
    /// Failed after its retries, or its outcome is in doubt (timeout, abort).
    Failed,
    /// Its compensation is dispatched; waiting for the reply.
    Compensating,
    /// Undone.
    Compensated,
    /// Its compensation failed after its retries: its effects remain.
    CompensationFailed,
    /// Succeeded but has no compensation: left as is during the rollback.
    Skipped,
}

/// The state of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    /// Where the step is.
    pub status: StepStatus,
    /// What the step's task returned, once it succeeded.
    pub output: Option<Value>,
    /// Why the step, or its compensation, failed.
    pub error: Option<String>,
}

impl StepState {
    fn pending() -> StepState {
        StepState {
            status: StepStatus::Pending,
            output: None,
            error: None,
        }
    }
}

/// The persisted state of one saga run. Only [`SagaState::apply`] makes a new one from
/// an old one, so the fields are read through accessors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaState {
    status: SagaStatus,
    steps: Vec<StepState>,
    error: Option<String>,
}

/// Something that happened to a saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Begin running the steps.
    Start,
    /// A step's task succeeded.
    StepSucceeded {
        /// Step index.
        step: usize,
        /// What the task returned.
        output: Value,
    },
    /// A step's task failed after all its retries (or failed permanently).
    StepFailed {
        /// Step index.
        step: usize,
        /// The task's last error.
        error: String,
    },
    /// The orchestrator's deadline for a step passed without a reply.
    StepTimedOut {
        /// Step index.
        step: usize,
    },
    /// The saga's own deadline ([`SagaDef::timeout`]) passed.
    SagaTimedOut,
    /// An operator or the application asked to stop the saga and roll it back.
    Abort {
        /// Why.
        reason: String,
    },
    /// A compensation's task succeeded.
    CompensationSucceeded {
        /// Index of the step that was compensated.
        step: usize,
    },
    /// A compensation's task failed after all its retries.
    CompensationFailed {
        /// Index of the step whose compensation failed.
        step: usize,
        /// The task's last error.
        error: String,
    },
}

impl Event {
    /// The event's name, as in its serialized form (`step_succeeded`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::StepSucceeded { .. } => "step_succeeded",
            Event::StepFailed { .. } => "step_failed",
            Event::StepTimedOut { .. } => "step_timed_out",
            Event::SagaTimedOut => "saga_timed_out",
            Event::Abort { .. } => "abort",
            Event::CompensationSucceeded { .. } => "compensation_succeeded",
            Event::CompensationFailed { .. } => "compensation_failed",
        }
    }

    /// The step the event concerns, if it concerns one.
    pub fn step(&self) -> Option<usize> {
        match self {
            Event::StepSucceeded { step, .. }
            | Event::StepFailed { step, .. }
            | Event::StepTimedOut { step }
            | Event::CompensationSucceeded { step }
            | Event::CompensationFailed { step, .. } => Some(*step),
            Event::Start | Event::SagaTimedOut | Event::Abort { .. } => None,
        }
    }
}

/// Something the orchestrator must do after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Enqueue the action task of step `step`.
    DispatchStep {
        /// Step index.
        step: usize,
    },
    /// Enqueue the compensation task of step `step`.
    DispatchCompensation {
        /// Step index.
        step: usize,
    },
    /// The saga ended: record the outcome, cancel its deadlines.
    Finish {
        /// The terminal status reached (`Completed`, `RolledBack` or `Failed`).
        final_state: SagaStatus,
    },
}

/// The result of applying an accepted event.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The next state.
    pub state: SagaState,
    /// What to do, in order. Empty only for an accepted no-op.
    pub commands: Vec<Command>,
}

impl Transition {
    /// True when the event was accepted but changed nothing (`Abort` while rolling back).
    pub fn is_noop(&self) -> bool {
        self.commands.is_empty()
    }
}

/// Why an event was rejected. The state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IllegalTransition {
    /// The saga has ended; it accepts no event.
    #[error("saga is {status}: {event} ignored, the saga has ended")]
    Terminal {
        /// The terminal status.
        status: SagaStatus,
        /// The event's kind.
        event: &'static str,
    },
    /// The event concerns a step or phase the saga is not waiting on: a duplicate or a
    /// late delivery (e.g. the reply of a step that was aborted).
    #[error("saga is {status}: stale {event}{} ignored", fmt_step(.step))]
    Stale {
        /// The current status.
        status: SagaStatus,
        /// The event's kind.
        event: &'static str,
        /// The step the event concerns, if any.
        step: Option<usize>,
    },
    /// The event can never happen in this status (e.g. a compensation reply while the
    /// steps still run): a bug or a forged event.
    #[error("saga is {status}: {event}{} is not expected", fmt_step(.step))]
    Unexpected {
        /// The current status.
        status: SagaStatus,
        /// The event's kind.
        event: &'static str,
        /// The step the event concerns, if any.
        step: Option<usize>,
    },
    /// The event names a step the saga does not have.
    #[error("{event} names step #{step}, but the saga has {steps} steps")]
    UnknownStep {
        /// The event's kind.
        event: &'static str,
        /// The step named.
        step: usize,
        /// Number of steps of the saga.
        steps: usize,
    },
    /// The state does not fit the definition: it was made under another definition
    /// version, or the stored record is damaged.
    #[error("saga state does not fit definition {saga:?}: {reason}")]
    Mismatch {
        /// Name of the definition.
        saga: String,
        /// What does not fit.
        reason: String,
    },
}

fn fmt_step(step: &Option<usize>) -> String {
    step.map(|s| format!(" for step #{s}")).unwrap_or_default()
}

impl IllegalTransition {
    /// True for duplicate or late deliveries (`Stale`, `Terminal`): the orchestrator
    /// drops them as idempotent no-ops. Other rejections point at a bug.
    pub fn is_stale(&self) -> bool {
        matches!(
            self,
            IllegalTransition::Stale { .. } | IllegalTransition::Terminal { .. }
        )
    }
}

impl SagaState {
    /// A new, not yet started run of `def`.
    pub fn new(def: &SagaDef) -> SagaState {
        SagaState {
            status: SagaStatus::Pending,
            steps: vec![StepState::pending(); def.steps.len()],
            error: None,
        }
    }

    /// Where the saga is.
    pub fn status(&self) -> SagaStatus {
        self.status
    }

    /// The state of every step, in step order.
    pub fn steps(&self) -> &[StepState] {
        &self.steps
    }

    /// The output of step `step`, once it succeeded.
    pub fn output(&self, step: usize) -> Option<&Value> {
        self.steps.get(step)?.output.as_ref()
    }

    /// Why the saga did not complete: the cause of the rollback and, when `Failed`, the
    /// compensation that failed.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Applies `event`: the next state and the commands it causes, or why the event is
    /// not valid now (then `self` is, as always, unchanged).
    pub fn apply(&self, def: &SagaDef, event: &Event) -> Result<Transition, IllegalTransition> {
        self.check_fits(def)?;
        let (status, kind, step) = (self.status, event.kind(), event.step());
        if status.is_terminal() {
            return Err(IllegalTransition::Terminal {
                status,
                event: kind,
            });
        }
        if let Some(step) = step.filter(|&s| s >= self.steps.len()) {
            return Err(IllegalTransition::UnknownStep {
                event: kind,
                step,
                steps: self.steps.len(),
            });
        }
        let stale = IllegalTransition::Stale {
            status,
            event: kind,
            step,
        };
        let unexpected = IllegalTransition::Unexpected {
            status,
            event: kind,
            step,
        };
        let mut next = self.clone();
        let commands = match (status, event) {
            (SagaStatus::Pending, Event::Start) => next.run_from(0),
            (SagaStatus::Pending, Event::Abort { reason }) => {
                next.error = Some(format!("aborted before start: {reason}"));
                next.finish(SagaStatus::RolledBack)
            }
            (SagaStatus::Pending, Event::SagaTimedOut) => {
                next.error = Some(format!(
                    "timed out before start (limit {} ms)",
                    def.timeout.as_millis()
                ));
                next.finish(SagaStatus::RolledBack)
            }
            (SagaStatus::Pending, _) => return Err(unexpected),

            (SagaStatus::Running { step: cur }, ev) => match ev {
                Event::StepSucceeded { step, output } if *step == cur => {
                    let s = &mut next.steps[cur];
                    s.status = StepStatus::Succeeded;
                    s.output = Some(output.clone());
                    next.run_from(cur + 1)
                }
                Event::StepFailed { step, error } if *step == cur => {
                    next.fail_step(cur, error.clone());
                    next.error = Some(format!("{} failed: {error}", step_label(def, cur)));
                    next.rollback_below(def, cur)
                }
                Event::StepTimedOut { step } if *step == cur => {
                    next.fail_step(cur, "timed out".into());
                    next.error = Some(format!("{} timed out", step_label(def, cur)));
                    next.rollback_in_doubt(def, cur)
                }
                Event::SagaTimedOut => {
                    next.fail_step(cur, "saga timed out while running".into());
                    next.error = Some(format!(
                        "saga timed out (limit {} ms) during {}",
                        def.timeout.as_millis(),
                        step_label(def, cur)
                    ));
                    next.rollback_in_doubt(def, cur)
                }
                Event::Abort { reason } => {
                    next.fail_step(cur, format!("aborted while running: {reason}"));
                    next.error = Some(format!("aborted during {}: {reason}", step_label(def, cur)));
                    next.rollback_in_doubt(def, cur)
                }
                Event::Start
                | Event::StepSucceeded { .. }
                | Event::StepFailed { .. }
                | Event::StepTimedOut { .. } => return Err(stale),
                Event::CompensationSucceeded { .. } | Event::CompensationFailed { .. } => {
                    return Err(unexpected)
                }
            },

            (SagaStatus::Compensating { step: cur }, ev) => match ev {
                Event::CompensationSucceeded { step } if *step == cur => {
                    next.steps[cur].status = StepStatus::Compensated;
                    next.rollback_below(def, cur)
                }
                Event::CompensationFailed { step, error } if *step == cur => {
                    let s = &mut next.steps[cur];
                    s.status = StepStatus::CompensationFailed;
                    s.error = Some(error.clone());
                    let cause = next.error.take().unwrap_or_default();
                    next.error = Some(format!(
                        "compensation of {} failed: {error} (rolling back because: {cause})",
                        step_label(def, cur)
                    ));
                    next.finish(SagaStatus::Failed)
                }
                // Already rolling back: nothing more to do.
                Event::Abort { .. } | Event::SagaTimedOut => Vec::new(),
                _ => return Err(stale),
            },

            // Rejected above already; repeated so the match needs no panic.
            (SagaStatus::Completed | SagaStatus::RolledBack | SagaStatus::Failed, _) => {
                return Err(IllegalTransition::Terminal {
                    status,
                    event: kind,
                })
            }
        };
        Ok(Transition {
            state: next,
            commands,
        })
    }

    /// Rejects a state that cannot belong to `def`, so indexing below never panics.
    fn check_fits(&self, def: &SagaDef) -> Result<(), IllegalTransition> {
        let mismatch = |reason| IllegalTransition::Mismatch {
            saga: def.name.clone(),
            reason,
        };
        if self.steps.len() != def.steps.len() {
            return Err(mismatch(format!(
                "the state has {} steps, the definition {}",
                self.steps.len(),
                def.steps.len()
            )));
        }
        if let Some(step) = self.status.step().filter(|&s| s >= self.steps.len()) {
            return Err(mismatch(format!(
                "the state points at step #{step} of {}",
                self.steps.len()
            )));
        }
        Ok(())
    }

    /// Runs step `step`, or completes the saga when there is none.
    fn run_from(&mut self, step: usize) -> Vec<Command> {
        if step >= self.steps.len() {
            return self.finish(SagaStatus::Completed);
        }
        self.steps[step].status = StepStatus::Running;
        self.status = SagaStatus::Running { step };
        vec![Command::DispatchStep { step }]
    }

    fn fail_step(&mut self, step: usize, error: String) {
        let s = &mut self.steps[step];
        s.status = StepStatus::Failed;
        s.error = Some(error);
    }

    /// Starts the rollback at step `step`, whose outcome is in doubt: compensates it
    /// first if it can be, then the steps below.
    fn rollback_in_doubt(&mut self, def: &SagaDef, step: usize) -> Vec<Command> {
        if def.steps[step].compensation.is_some() {
            self.compensate(step)
        } else {
            self.rollback_below(def, step)
        }
    }

    /// Continues the rollback below step `below`: compensates the highest succeeded step
    /// that has a compensation, skipping those without; rolled back when none is left.
    fn rollback_below(&mut self, def: &SagaDef, below: usize) -> Vec<Command> {
        for j in (0..below).rev() {
            if self.steps[j].status != StepStatus::Succeeded {
                continue;
            }
            if def.steps[j].compensation.is_some() {
                return self.compensate(j);
            }
            self.steps[j].status = StepStatus::Skipped;
        }
        self.finish(SagaStatus::RolledBack)
    }

    fn compensate(&mut self, step: usize) -> Vec<Command> {
        self.steps[step].status = StepStatus::Compensating;
        self.status = SagaStatus::Compensating { step };
        vec![Command::DispatchCompensation { step }]
    }

    fn finish(&mut self, final_state: SagaStatus) -> Vec<Command> {
        self.status = final_state;
        vec![Command::Finish { final_state }]
    }
}

fn step_label(def: &SagaDef, step: usize) -> String {
    format!("step #{step} {:?}", def.steps[step].name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::definition::{demo_saga, StepDef};
    use serde_json::json;
    use StepStatus as S;

    fn ok(step: usize) -> Event {
        Event::StepSucceeded {
            step,
            output: json!(step),
        }
    }

    fn fail(step: usize) -> Event {
        Event::StepFailed {
            step,
            error: "boom".into(),
        }
    }
    fn comp_ok(step: usize) -> Event {
        Event::CompensationSucceeded { step }
    }
    fn comp_fail(step: usize) -> Event {
        Event::CompensationFailed {
            step,
            error: "undo boom".into(),
        }
    }
    fn abort() -> Event {
        Event::Abort {
            reason: "operator".into(),
        }
    }

    /// Applies every event (each must be accepted); returns the state and all commands.
    fn run(def: &SagaDef, events: &[Event]) -> (SagaState, Vec<Command>) {
        let mut state = SagaState::new(def);
        let mut cmds = Vec::new();
        for e in events {
            let t = state
                .apply(def, e)
                .unwrap_or_else(|err| panic!("{e:?} rejected: {err}"));
            cmds.extend(t.commands);
            state = t.state;
        }
        (state, cmds)
    }

    fn statuses(s: &SagaState) -> Vec<StepStatus> {
        s.steps().iter().map(|s| s.status).collect()
    }

    use Command::{DispatchCompensation as Comp, DispatchStep as Step};
    const fn fin(final_state: SagaStatus) -> Command {
        Command::Finish { final_state }
    }

    #[test]
    fn new_state_is_pending() {
        let s = SagaState::new(&demo_saga());
        assert_eq!(s.status(), SagaStatus::Pending);
        assert_eq!(statuses(&s), [S::Pending; 4]);
        assert_eq!(s.error(), None);
    }

    #[test]
    fn happy_path_completes_and_keeps_outputs() {
        let d = demo_saga();
        let (s, cmds) = run(&d, &[Event::Start, ok(0), ok(1), ok(2), ok(3)]);
        assert_eq!(s.status(), SagaStatus::Completed);
        assert_eq!(
            cmds,
            [
                Step { step: 0 },
                Step { step: 1 },
                Step { step: 2 },
                Step { step: 3 },
                fin(SagaStatus::Completed)
            ]
        );
        assert_eq!(statuses(&s), [S::Succeeded; 4]);
        assert_eq!(s.output(2), Some(&json!(2)));
        assert_eq!(s.error(), None);
    }

    #[test]
    fn start_runs_step_zero() {
        let d = demo_saga();
        let t = SagaState::new(&d).apply(&d, &Event::Start).unwrap();
        assert_eq!(t.state.status(), SagaStatus::Running { step: 0 });
        assert_eq!(t.commands, [Step { step: 0 }]);
        assert_eq!(t.state.steps()[0].status, S::Running);
    }

    #[test]
    fn failed_step_is_not_compensated_and_rollback_is_reverse() {
        let d = demo_saga();
        let (s, cmds) = run(
            &d,
            &[Event::Start, ok(0), ok(1), fail(2), comp_ok(1), comp_ok(0)],
        );
        assert_eq!(s.status(), SagaStatus::RolledBack);
        assert_eq!(
            &cmds[3..],
            [
                Comp { step: 1 },
                Comp { step: 0 },
                fin(SagaStatus::RolledBack)
            ]
        );
        assert_eq!(
            statuses(&s),
            [S::Compensated, S::Compensated, S::Failed, S::Pending]
        );
        assert_eq!(s.steps()[2].error.as_deref(), Some("boom"));
        assert_eq!(s.error(), Some(r#"step #2 "ml" failed: boom"#));
        // Outputs of undone steps are kept for inspection.
        assert_eq!(s.output(1), Some(&json!(1)));
    }

    #[test]
    fn first_step_failing_rolls_back_at_once() {
        let d = demo_saga();
        let (s, cmds) = run(&d, &[Event::Start, fail(0)]);
        assert_eq!(s.status(), SagaStatus::RolledBack);
        assert_eq!(cmds, [Step { step: 0 }, fin(SagaStatus::RolledBack)]);
        assert_eq!(
            statuses(&s),
            [S::Failed, S::Pending, S::Pending, S::Pending]
        );
    }

    #[test]
    fn steps_without_compensation_are_skipped() {
        let d = SagaDef::builder("s")
            .step(StepDef::new("a", "t.a").compensate("t.undo_a"))
            .step(StepDef::new("b", "t.b"))
            .step(StepDef::new("c", "t.c"))
            .build()
            .unwrap();
        let (s, cmds) = run(&d, &[Event::Start, ok(0), ok(1), fail(2), comp_ok(0)]);
        assert_eq!(&cmds[3..], [Comp { step: 0 }, fin(SagaStatus::RolledBack)]);
        assert_eq!(statuses(&s), [S::Compensated, S::Skipped, S::Failed]);
    }

    #[test]
    fn no_compensable_step_goes_straight_to_rolled_back() {
        let d = SagaDef::builder("s")
            .step(StepDef::new("a", "t.a"))
            .step(StepDef::new("b", "t.b"))
            .build()
            .unwrap();
        let (s, cmds) = run(&d, &[Event::Start, ok(0), fail(1)]);
        assert_eq!(s.status(), SagaStatus::RolledBack);
        assert_eq!(&cmds[2..], [fin(SagaStatus::RolledBack)]);
        assert_eq!(statuses(&s), [S::Skipped, S::Failed]);
    }

    #[test]
    fn step_timeout_compensates_the_in_doubt_step_first() {
        let d = demo_saga();
        let (s, cmds) = run(
            &d,
            &[
                Event::Start,
                ok(0),
                Event::StepTimedOut { step: 1 },
                comp_ok(1),
                comp_ok(0),
            ],
        );
        assert_eq!(
            &cmds[2..],
            [
                Comp { step: 1 },
                Comp { step: 0 },
                fin(SagaStatus::RolledBack)
            ]
        );
        assert_eq!(statuses(&s)[..2], [S::Compensated, S::Compensated]);
        assert_eq!(s.error(), Some(r#"step #1 "codegen" timed out"#));
    }

    #[test]
    fn in_doubt_step_without_compensation_stays_failed() {
        let d = demo_saga();
        let (s, cmds) = run(&d, &[Event::Start, ok(0), ok(1), ok(2), abort()]);
        // backtest (#3) has no compensation: the rollback starts at ml (#2).
        assert_eq!(&cmds[4..], [Comp { step: 2 }]);
        assert_eq!(s.status(), SagaStatus::Compensating { step: 2 });
        assert_eq!(s.steps()[3].status, S::Failed);
        assert_eq!(
            s.error(),
            Some(r#"aborted during step #3 "backtest": operator"#)
        );
    }

    #[test]
    fn saga_timeout_while_running_rolls_back_including_running_step() {
        let d = demo_saga();
        let (s, cmds) = run(&d, &[Event::Start, ok(0), Event::SagaTimedOut]);
        assert_eq!(&cmds[2..], [Comp { step: 1 }]);
        assert_eq!(statuses(&s)[..2], [S::Succeeded, S::Compensating]);
        assert_eq!(
            s.error(),
            Some(r#"saga timed out (limit 60000 ms) during step #1 "codegen""#)
        );
    }

    #[test]
    fn abort_or_timeout_before_start_rolls_back() {
        let d = demo_saga();
        for e in [abort(), Event::SagaTimedOut] {
            let t = SagaState::new(&d).apply(&d, &e).unwrap();
            assert_eq!(t.state.status(), SagaStatus::RolledBack);
            assert_eq!(t.commands, [fin(SagaStatus::RolledBack)]);
            assert_eq!(statuses(&t.state), [S::Pending; 4]);
            assert!(t.state.error().unwrap().contains("before start"));
        }
    }

    #[test]
    fn abort_and_timeout_while_compensating_are_accepted_noops() {
        let d = demo_saga();
        let (s, _) = run(&d, &[Event::Start, ok(0), fail(1)]);
        assert_eq!(s.status(), SagaStatus::Compensating { step: 0 });
        for e in [abort(), Event::SagaTimedOut] {
            let t = s.apply(&d, &e).unwrap();
            assert!(t.is_noop());
            assert_eq!(t.state, s);
        }
    }

    #[test]
    fn compensation_failure_stops_the_rollback() {
        let d = demo_saga();
        let (s, cmds) = run(
            &d,
            &[
                Event::Start,
                ok(0),
                ok(1),
                ok(2),
                fail(3),
                comp_ok(2),
                comp_fail(1),
            ],
        );
        assert_eq!(s.status(), SagaStatus::Failed);
        assert_eq!(
            &cmds[4..],
            [Comp { step: 2 }, Comp { step: 1 }, fin(SagaStatus::Failed)]
        );
        assert_eq!(
            statuses(&s),
            [
                S::Succeeded,
                S::CompensationFailed,
                S::Compensated,
                S::Failed
            ]
        );
        assert_eq!(s.steps()[1].error.as_deref(), Some("undo boom"));
        assert_eq!(
            s.error(),
            Some(
                r#"compensation of step #1 "codegen" failed: undo boom (rolling back because: step #3 "backtest" failed: boom)"#
            )
        );
    }

    #[test]
    fn stale_and_duplicate_events_are_rejected_without_change() {
        let d = demo_saga();
        let (running1, _) = run(&d, &[Event::Start, ok(0)]);
        let stale = [
            Event::Start,
            ok(0),                           // duplicate reply of step 0
            fail(0),                         // late failure of step 0
            Event::StepTimedOut { step: 2 }, // deadline of a step not running
            ok(2),
        ];
        for e in &stale {
            let err = running1.apply(&d, e).unwrap_err();
            assert!(err.is_stale(), "{e:?}: {err}");
            assert!(matches!(err, IllegalTransition::Stale { .. }), "{err}");
        }
        // While compensating, replies of steps (e.g. the aborted one) are late.
        let (comp, _) = run(&d, &[Event::Start, ok(0), ok(1), abort()]);
        assert_eq!(comp.status(), SagaStatus::Compensating { step: 2 });
        for e in [
            ok(2),
            fail(2),
            Event::StepTimedOut { step: 2 },
            Event::Start,
            comp_ok(1),
            comp_fail(0),
        ] {
            let err = comp.apply(&d, &e).unwrap_err();
            assert!(err.is_stale(), "{e:?}: {err}");
        }
        let err = comp.apply(&d, &ok(2)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "saga is compensating step #2: stale step_succeeded for step #2 ignored"
        );
    }

    #[test]
    fn impossible_events_are_unexpected() {
        let d = demo_saga();
        let pending = SagaState::new(&d);
        for e in [
            ok(0),
            fail(0),
            Event::StepTimedOut { step: 0 },
            comp_ok(0),
            comp_fail(0),
        ] {
            let err = pending.apply(&d, &e).unwrap_err();
            assert!(matches!(err, IllegalTransition::Unexpected { .. }), "{err}");
            assert!(!err.is_stale());
        }
        let (running, _) = run(&d, &[Event::Start]);
        for e in [comp_ok(0), comp_fail(0)] {
            let err = running.apply(&d, &e).unwrap_err();
            assert!(matches!(err, IllegalTransition::Unexpected { .. }), "{err}");
        }
    }

    #[test]
    fn unknown_step_is_rejected() {
        let d = demo_saga();
        let (running, _) = run(&d, &[Event::Start]);
        let err = running.apply(&d, &ok(4)).unwrap_err();
        assert_eq!(
            err,
            IllegalTransition::UnknownStep {
                event: "step_succeeded",
                step: 4,
                steps: 4
            }
        );
        assert!(!err.is_stale());
    }

    #[test]
    fn terminal_states_reject_everything() {
        let d = demo_saga();
        let ends = [
            run(&d, &[Event::Start, ok(0), ok(1), ok(2), ok(3)]).0,
            run(&d, &[Event::Start, fail(0)]).0,
            run(&d, &[Event::Start, ok(0), fail(1), comp_fail(0)]).0,
        ];
        let all = [
            Event::Start,
            ok(0),
            fail(0),
            Event::StepTimedOut { step: 0 },
            Event::SagaTimedOut,
            abort(),
            comp_ok(0),
            comp_fail(0),
        ];
        for s in &ends {
            assert!(s.status().is_terminal());
            for e in &all {
                let err = s.apply(&d, e).unwrap_err();
                assert!(matches!(err, IllegalTransition::Terminal { .. }), "{err}");
                assert!(err.is_stale());
            }
        }
    }

    #[test]
    fn state_of_another_definition_is_a_mismatch() {
        let d = demo_saga();
        let other = SagaDef::builder("x")
            .step(StepDef::new("a", "t"))
            .build()
            .unwrap();
        let err = SagaState::new(&other).apply(&d, &Event::Start).unwrap_err();
        assert!(matches!(err, IllegalTransition::Mismatch { .. }), "{err}");
        // A damaged record pointing past the last step never panics.
        let mut s = SagaState::new(&d);
        s.status = SagaStatus::Running { step: 9 };
        let err = s.apply(&d, &Event::SagaTimedOut).unwrap_err();
        assert!(err.to_string().contains("points at step #9 of 4"), "{err}");
    }

    #[test]
    fn state_and_events_serialize_to_readable_json() {
        let d = demo_saga();
        let (s, cmds) = run(&d, &[Event::Start, ok(0), fail(1)]);
        let text = serde_json::to_string(&s).unwrap();
        assert!(
            text.contains(r#""status":{"status":"compensating","step":0}"#),
            "{text}"
        );
        assert!(text.contains(r#""status":"failed""#), "{text}");
        let back: SagaState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            serde_json::to_value(comp_fail(2)).unwrap(),
            json!({"event": "compensation_failed", "step": 2, "error": "undo boom"})
        );
        assert_eq!(
            serde_json::to_value(cmds[2]).unwrap(),
            json!({"command": "dispatch_compensation", "step": 0})
        );
        let fin = serde_json::to_value(fin(SagaStatus::Completed)).unwrap();
        assert_eq!(
            fin,
            json!({"command": "finish", "final_state": {"status": "completed"}})
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeSet;

        /// One input of a random run: either an arbitrary event, or an event aimed at
        /// whatever step the saga currently waits on (so runs get past step 0).
        #[derive(Debug, Clone)]
        enum Input {
            Raw(Event),
            Succeed,
            Fail,
            TimeOut,
            CompOk,
            CompFail,
        }

        fn arb_event() -> impl Strategy<Value = Event> {
            let step = 0usize..8;
            prop_oneof![
                Just(Event::Start),
                step.clone().prop_map(ok),
                step.clone().prop_map(fail),
                step.clone().prop_map(|step| Event::StepTimedOut { step }),
                Just(Event::SagaTimedOut),
                Just(abort()),
                step.clone().prop_map(comp_ok),
                step.prop_map(comp_fail),
            ]
        }

        fn arb_input() -> impl Strategy<Value = Input> {
            prop_oneof![
                3 => arb_event().prop_map(Input::Raw),
                6 => Just(Input::Succeed),
                1 => Just(Input::Fail),
                1 => Just(Input::TimeOut),
                4 => Just(Input::CompOk),
                1 => Just(Input::CompFail),
            ]
        }

        fn arb_def() -> impl Strategy<Value = SagaDef> {
            proptest::collection::vec(any::<bool>(), 1..=6).prop_map(|comps| {
                let mut b = SagaDef::builder("p");
                for (i, c) in comps.into_iter().enumerate() {
                    let mut s = StepDef::new(format!("s{i}"), format!("t.s{i}"));
                    if c {
                        s = s.compensate(format!("t.undo{i}"));
                    }
                    b = b.step(s);
                }
                b.build().unwrap()
            })
        }

        fn event_for(state: &SagaState, input: Input) -> Event {
            let cur = state.status().step().unwrap_or(0);
            match input {
                Input::Raw(e) => e,
                Input::Succeed => ok(cur),
                Input::Fail => fail(cur),
                Input::TimeOut => Event::StepTimedOut { step: cur },
                Input::CompOk => comp_ok(cur),
                Input::CompFail => comp_fail(cur),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn random_runs_keep_the_invariants(
                def in arb_def(),
                inputs in proptest::collection::vec(arb_input(), 0..40),
            ) {
                let has_comp = |i: usize| def.steps[i].compensation.is_some();
                let mut state = SagaState::new(&def);
                let mut started = false;
                let mut succeeded = BTreeSet::new();
                let mut in_doubt = None;
                let mut dispatched_steps = Vec::new();
                let mut dispatched_comps = Vec::new();
                let mut finishes = Vec::new();

                // (a) apply never panics: any panic fails the test case.
                for input in inputs {
                    let event = event_for(&state, input);
                    let before = state.clone();
                    match state.apply(&def, &event) {
                        Err(err) => {
                            // (d) terminal states are absorbing.
                            if before.status().is_terminal() {
                                let is_terminal = matches!(err, IllegalTransition::Terminal { .. });
                                prop_assert!(is_terminal);
                            }
                            // (b) a rejected event leaves the state unchanged; `state`
                            // is never reassigned on this path, so check the invariant
                            // that a retry gives the same verdict (purity).
                            prop_assert_eq!(&state, &before);
                            prop_assert_eq!(state.apply(&def, &event), Err(err));
                        }
                        Ok(t) => {
                            prop_assert!(!before.status().is_terminal());
                            if t.is_noop() {
                                prop_assert_eq!(&t.state, &before);
                            }
                            if let SagaStatus::Running { step } = before.status() {
                                match &event {
                                    Event::StepSucceeded { .. } => { succeeded.insert(step); }
                                    Event::StepTimedOut { .. }
                                    | Event::SagaTimedOut
                                    | Event::Abort { .. } => in_doubt = Some(step),
                                    _ => {}
                                }
                            }
                            if event == Event::Start {
                                started = true;
                            }
                            for c in &t.commands {
                                match *c {
                                    Command::DispatchStep { step } => dispatched_steps.push(step),
                                    Command::DispatchCompensation { step } => dispatched_comps.push(step),
                                    Command::Finish { final_state } => {
                                        prop_assert_eq!(final_state, t.state.status());
                                        finishes.push(final_state);
                                    }
                                }
                            }
                            state = t.state;
                        }
                    }
                }

                // Steps are dispatched in order, each once.
                prop_assert_eq!(&dispatched_steps, &(0..dispatched_steps.len()).collect::<Vec<_>>());
                prop_assert_eq!(started, !dispatched_steps.is_empty());
                // Finish is announced exactly once, exactly when the saga ended.
                let terminal = state.status().is_terminal();
                prop_assert_eq!(finishes.len(), usize::from(terminal));

                // Compensations: strictly reverse order over the steps that succeeded,
                // plus the in-doubt step, keeping those that have a compensation.
                let mut expected: Vec<usize> = succeeded
                    .iter()
                    .copied()
                    .chain(in_doubt)
                    .filter(|&i| has_comp(i))
                    .collect();
                expected.sort_unstable_by(|a, b| b.cmp(a));
                match state.status() {
                    // (c) rolled back: exactly that sequence, all of it undone.
                    SagaStatus::RolledBack => {
                        prop_assert_eq!(&dispatched_comps, &expected);
                        for &i in &succeeded {
                            let want = if has_comp(i) { S::Compensated } else { S::Skipped };
                            prop_assert_eq!(state.steps()[i].status, want);
                        }
                        if let Some(i) = in_doubt {
                            let want = if has_comp(i) { S::Compensated } else { S::Failed };
                            prop_assert_eq!(state.steps()[i].status, want);
                        }
                    }
                    // Failed: a prefix of it, stopped at the failed compensation.
                    SagaStatus::Failed => {
                        prop_assert!(expected.starts_with(&dispatched_comps));
                        let last = *dispatched_comps.last().unwrap();
                        prop_assert_eq!(state.steps()[last].status, S::CompensationFailed);
                    }
                    // (e) completed: every step succeeded, nothing compensated.
                    SagaStatus::Completed => {
                        prop_assert!(state.steps().iter().all(|s| s.status == S::Succeeded));
                        prop_assert!(dispatched_comps.is_empty());
                    }
                    SagaStatus::Compensating { step } => {
                        prop_assert!(expected.starts_with(&dispatched_comps));
                        prop_assert_eq!(dispatched_comps.last(), Some(&step));
                    }
                    SagaStatus::Running { .. } | SagaStatus::Pending => {
                        prop_assert!(dispatched_comps.is_empty());
                    }
                }
            }
        }
    }
}
