//! Sagas: multi-step workflows that either finish every step or undo the ones that ran.
//!
//! # Why a saga
//!
//! A workflow such as *reasoning → codegen → ml → backtest* spans several tasks, each run
//! by whichever worker picks it up, each with its own side effects (a cache filled, files
//! written, a model stored). There is no transaction around them: if step three fails
//! for good, steps one and two have already happened. A saga (Garcia-Molina & Salem,
//! 1987) gives such a workflow a clear outcome anyway: every step has an optional
//! *compensation*, a task that semantically undoes it, and a failure part-way runs the
//! compensations of the completed steps in reverse order. The workflow then ends either
//! **completed** (every step succeeded) or **rolled back** (every undoable effect undone),
//! and only when an undo itself fails does it end **failed**, waiting for an operator.
//!
//! # Shape of this module
//!
//! - [`definition`]: what a saga *is* — its ordered steps, their task types,
//!   compensations, time limits and retry policies — built in Rust or read from the
//!   `[[sagas]]` tables of the configuration file, and validated with errors that name
//!   the saga, the step and the field.
//! - [`fsm`]: what a running saga *does* — a pure state machine. It takes the saga's
//!   current [`fsm::SagaState`] and one [`fsm::Event`] (a step replied, a deadline
//!   passed, an operator aborted) and returns the next state plus the
//!   [`fsm::Command`]s to carry out (dispatch a step, dispatch a compensation, finish).
//!   It does no I/O, so every transition is unit- and property-tested without Redis; the
//!   orchestrator only persists states and executes commands.
//!
//! # States
//!
//! ```text
//!            Start            StepSucceeded (last)
//! Pending ─────────▶ Running{i} ─────────────────▶ Completed
//!    │                 │  ▲ StepSucceeded(i) → Running{i+1}
//!    │                 │  └───────┘
//!    │ Abort /         │ StepFailed / StepTimedOut / SagaTimedOut / Abort
//!    │ SagaTimedOut    ▼
//!    │             Compensating{j} ── CompensationFailed ──▶ Failed
//!    │                 │  ▲ CompensationSucceeded(j) → Compensating{next j}
//!    │                 │  └───────┘
//!    │                 │ CompensationSucceeded (no step left to undo)
//!    └─────────────────┴──────────────────────────────────▶ RolledBack
//! ```
//!
//! `Completed`, `RolledBack` and `Failed` are terminal: they accept no event.
//!
//! # How compensation works
//!
//! - Compensations run **one at a time, in strictly reverse step order**, because a
//!   later step may depend on an earlier one (delete the generated code before the cache
//!   it was generated from).
//! - A step that **succeeded** is compensated if it has a compensation type; one without
//!   is marked `Skipped` (its effects are accepted as permanent, e.g. a read-only step).
//! - A step that **failed** (its task reported failure after all its retries) is not
//!   compensated: a step is expected to fail without a lasting effect.
//! - A step whose outcome is **in doubt** — it was running when it timed out, when the
//!   saga timed out or when an operator aborted — is marked `Failed` *and* compensated
//!   (if it has a compensation), first, because its task may have done its work or may
//!   still do it. Its late reply is rejected as stale. Compensations must therefore be
//!   idempotent and must succeed when there is nothing to undo.
//! - If no completed step has a compensation, the saga goes straight to `RolledBack`.
//! - If a compensation fails after its retries, the rollback **stops** and the saga is
//!   `Failed`: the steps below it are left `Succeeded`, so an operator sees exactly which
//!   effects remain, and undoing them out of order could do more harm.
//!
//! # Duplicates and late replies
//!
//! Task delivery is at-least-once, so the orchestrator may see a reply twice, or a reply
//! for a step the saga has moved past. The state machine rejects every event that does
//! not concern the step currently in flight with an [`fsm::IllegalTransition`], leaving
//! the state untouched; the orchestrator treats [`fsm::IllegalTransition::is_stale`]
//! errors as idempotent no-ops.

//! # Running sagas durably (phase 2)
//!
//! - `record` (crate-private): the saga's Redis hash as a typed `Record`, its state
//!   names, deadline members and the `correlation` its tasks carry.
//! - `decide` (crate-private): the pure decisions — what a reply, a deadline, an abort or
//!   a start does to a record, as one `Write`: new state, history entry, indexes,
//!   deadlines and the dispatched task. Unit- and property-tested without Redis.
//! - `rdb` (crate-private): every Redis operation of sagas, as typed methods of
//!   [`crate::rdb::Broker`]; a `Write` is applied by one Lua script,
//!   `src/rdb/lua/saga_apply.lua`: compare-and-set on the saga's revision, then
//!   everything, in one atomic step. A crash can therefore never apply half a
//!   transition, nor dispatch a step without recording it.
//! - `apply` (crate-private): read, decide, route the task to the stream of the pool
//!   that serves its type, write; on a lost race, decide again.
//! - [`orchestrator`]: the long-running loops that turn task replies
//!   ([`crate::reply::Reply`]) and due deadlines into [`fsm::Event`]s and apply them.
//!   Any number of orchestrators can run; they share the replies through one consumer
//!   group and serialize on each saga's revision.
//! - [`ops`]: start, show, list and abort, for the CLI and applications.
//! - [`demo_handlers`]: the handlers of the built-in `demo` saga.
//!
//! The configuration tables (`[[sagas]]`, `[orchestrator]`) are plain data in
//! [`crate::config::sagas`]; this module reads them, never the other way round. The
//! Redis layout and the guarantees are described in `docs/sagas.md`; [`keys`] names
//! every key.

pub(crate) mod apply;
pub(crate) mod decide;
pub mod definition;
pub mod demo_handlers;
pub mod fsm;
pub mod keys;
pub mod ops;
pub mod orchestrator;
pub(crate) mod rdb;
pub(crate) mod record;
pub mod view;

pub use crate::config::OrchestratorConfig;
pub use orchestrator::Orchestrator;

use crate::config::Config;
use definition::{defs_from_toml, demo_saga, DefinitionError, SagaDef, SagaDefToml};

/// The saga definitions of a configuration: its `[[sagas]]` tables, plus the built-in
/// `demo` saga ([`demo_saga`]) when `worker.builtin_handlers` is on (those handlers serve
/// it) and no configured saga is already named `demo`.
pub fn configured(cfg: &Config) -> Result<Vec<SagaDef>, DefinitionError> {
    let mut defs = defs_from_toml(cfg.sagas.clone())?;
    if cfg.worker.builtin_handlers && !defs.iter().any(|d| d.name == "demo") {
        defs.push(demo_saga());
    }
    Ok(defs)
}

/// The problems of the `[[sagas]]` tables and the `[orchestrator]` table of a
/// configuration file, as `(key, reason)` pairs with full keys (`sagas[1].steps[0].action`,
/// `orchestrator.block_ms`); [`Config::validate`] reports them. The rules are those of
/// [`crate::config::sagas::table_problems`].
pub fn config_problems(sagas: &[SagaDefToml], orch: &OrchestratorConfig) -> Vec<(String, String)> {
    crate::config::sagas::table_problems(sagas, orch)
}
