//! The pure decisions of the saga subsystem: what a trigger (a step's reply, a passed
//! deadline, an abort, a start) does to a saga record.
//!
//! # Why compare-and-set
//!
//! A transition is decided here, in Rust, by the state machine ([`super::fsm`]) from the
//! record read at revision `rev`, then written by `src/rdb/lua/saga_apply.lua`
//! ([`super::rdb`]), which first checks that the record is still at `rev`. If another
//! orchestrator (or an operator's abort) moved the saga in between, nothing is written and
//! the caller re-reads and decides again ([`super::apply`]); usually the event has become
//! stale and is dropped. There is no lock to leak when a process dies, the decision logic
//! stays in tested Rust, and the script stays a dumb "check, then write everything" step.
//! Everything the transition causes — the new state, the history entry, the state
//! indexes, the deadlines and the step or compensation task — is in one [`Write`], written
//! by that one script, so a crash can never record a transition without its dispatch or
//! dispatch without record.
//!
//! # No I/O
//!
//! [`decide`] turns a record plus a [`Trigger`] into either a [`Write`] (the exact
//! content of the script's run) or a final [`Outcome`] (stale, rejected, nothing to do);
//! [`start_write`] builds the creation of a saga. Neither reads a clock or Redis, so they
//! are unit- and property-tested below in the style of the state machine's tests. The one
//! input from outside, which pool serves a step's task type, is applied to a finished
//! write by [`Write::route`].

use std::borrow::Cow;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::definition::{SagaDef, SagaDefToml, StepDef};
use super::fsm::{Command, Event, IllegalTransition, SagaState, SagaStatus, Transition};
use super::keys;
use super::record::{
    f, is_terminal_name, saga_member, status_name, step_member, Correlation, Record, Side,
    StepMeta, STATES,
};
use super::view::HistoryEntry;
use crate::error::{Error, Result};
use crate::keys::{Lane, QueueKeys};
use crate::task::Task;

/// Longest step budget: a misconfigured retry policy must not push a deadline to 2500 AD.
const MAX_STEP_BUDGET: Duration = Duration::from_secs(30 * 86_400);

/// `running:codegen`, `compensating:ml`, `completed`.
fn label(def: &SagaDef, s: SagaStatus) -> String {
    match s.step().and_then(|i| def.steps.get(i)) {
        Some(step) => format!("{}:{}", status_name(s), step.name),
        None => status_name(s).to_string(),
    }
}

/// What moves a saga.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Trigger {
    /// The saga is created.
    Start,
    /// A step's or compensation's task replied; `rev` is the revision it was dispatched at.
    Reply {
        event: Event,
        rev: u64,
        attempt: u32,
    },
    /// The running step's deadline (member of revision `rev`) passed.
    StepDeadline { step: usize, rev: u64 },
    /// The saga's own deadline passed.
    SagaDeadline,
    /// An operator or the application aborts it.
    Abort { reason: String },
}

impl Trigger {
    fn event(&self) -> Event {
        match self {
            Trigger::Start => Event::Start,
            Trigger::Reply { event, .. } => event.clone(),
            Trigger::StepDeadline { step, .. } => Event::StepTimedOut { step: *step },
            Trigger::SagaDeadline => Event::SagaTimedOut,
            Trigger::Abort { reason } => Event::Abort {
                reason: reason.clone(),
            },
        }
    }

    /// The deadline member that fired this trigger, to remove with the transition.
    fn member(&self, id: &str) -> Option<String> {
        match self {
            Trigger::StepDeadline { step, rev } => Some(step_member(id, *step, *rev)),
            Trigger::SagaDeadline => Some(saga_member(id)),
            _ => None,
        }
    }
}

/// How applying a trigger ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A transition was written.
    Applied {
        from: &'static str,
        to: &'static str,
    },
    /// Accepted, but there was nothing to change (abort while rolling back).
    Noop,
    /// The saga has ended (its status is given): every event is late, dropped.
    Ended(String),
    /// A duplicate or late event: dropped.
    Stale(String),
    /// An event that cannot happen (a bug or a forged reply): dropped, logged.
    Rejected(String),
    /// The saga does not exist (never did, or its record expired).
    Missing,
}

/// One task to enqueue with a transition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Dispatch {
    /// The queue of the step.
    pub queue: String,
    /// Its lane: bulk for actions, express for compensations.
    pub lane: Lane,
    /// The stream it is added to: the queue's lane stream, or a pool's after
    /// [`Write::route`].
    pub stream: String,
    /// The task.
    pub task: Task,
}

/// What to log and measure once a write went through.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Note {
    pub saga: String,
    pub created: u64,
    pub finished: Option<&'static str>,
    pub error: Option<String>,
    pub compensation_failed: Option<String>,
    pub forced: bool,
}

/// The arguments of one run of the transition script.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Write {
    pub id: String,
    /// Revision the record must be at (0: must not exist).
    pub expect_rev: u64,
    pub new_rev: u64,
    pub from: &'static str,
    pub to: &'static str,
    pub now: u64,
    /// Score in the active set (its deadline), when the saga is created.
    pub active_score: Option<u64>,
    pub fields: Vec<(&'static str, String)>,
    pub history: HistoryEntry,
    pub zrem: Vec<String>,
    /// Deadlines to add: (score, add the step grace, member).
    pub zadd: Vec<(u64, bool, String)>,
    pub dispatches: Vec<Dispatch>,
    pub note: Note,
    /// The saga's traceparent, for the transition's span ([`crate::telemetry`]).
    pub traceparent: Option<String>,
    /// On the start: the traceparent the saga was started under (its span's parent).
    pub started_under: Option<String>,
}

impl Write {
    /// True when the write ends the saga.
    pub(crate) fn finished(&self) -> bool {
        is_terminal_name(self.to)
    }

    /// Sends each dispatched task to the stream of the pool that serves its type, per
    /// `route(queue, task_type)` = `(pool, N)` (a copy of the queue's routes and its
    /// partition count), instead of the queue's own lane stream: a step of a type only a
    /// pool serves would otherwise wait for the default pool to forward it, or forever if
    /// no default pool runs.
    ///
    /// On a queue of N partitions every task of
    /// one saga goes to the partition its id picks ([`crate::keys::partition_of`]): the
    /// saga's steps spread over the partitions (and, on a cluster, over the masters)
    /// while each saga's tasks stay together.
    pub(crate) fn route(&mut self, route: impl Fn(&str, &str) -> (Option<String>, u32)) {
        for d in &mut self.dispatches {
            let (pool, n) = route(&d.queue, &d.task.task_type);
            let mut routes = std::collections::HashMap::new();
            if let Some(pool) = pool {
                routes.insert(d.task.task_type.clone(), pool);
            }
            let p = crate::keys::partition_of(&self.id, n);
            d.stream = crate::routing::target_stream(
                &QueueKeys::partition(&d.queue, p),
                &routes,
                &d.task.task_type,
                d.lane,
            );
        }
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    Write(Box<Write>),
    Done(Outcome),
}

/// The time the orchestrator grants a step before declaring it timed out (without the
/// grace): every attempt's time limit plus the longest retry delays between them.
pub(crate) fn step_budget(step: &StepDef) -> Duration {
    let r = &step.retry;
    let n = r.max_attempts.max(1);
    let mut total = step.timeout.saturating_mul(n);
    let b = r.backoff();
    let mut retry = 1;
    while retry < n {
        let d = b.ceiling(retry);
        if d >= r.backoff_cap {
            total = total.saturating_add(r.backoff_cap.saturating_mul(n - retry));
            break;
        }
        total = total.saturating_add(d);
        retry += 1;
    }
    total.min(MAX_STEP_BUDGET)
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// The definition to run `rec` with: the configured one of the same name and version;
/// for another version the snapshot taken at start (a running saga keeps the version it
/// started with). An unknown name is an error: nothing here knows what the saga does.
fn resolve<'a>(rec: &Record, defs: &'a [SagaDef]) -> std::result::Result<Cow<'a, SagaDef>, String> {
    match defs.iter().find(|d| d.name == rec.saga) {
        None => Err(format!(
            "saga definition {:?} (version {}) is not known to this orchestrator; \
             add it to the [[sagas]] of its configuration (known: {})",
            rec.saga,
            rec.version,
            if defs.is_empty() {
                "none".to_string()
            } else {
                defs.iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )),
        Some(d) if d.version == rec.version => Ok(Cow::Borrowed(d)),
        Some(d) => Ok(rec.snapshot().map(Cow::Owned).unwrap_or(Cow::Borrowed(d))),
    }
}

/// Decides what `trig` does to `rec`: the write to attempt, or why there is none.
pub(crate) fn decide(rec: &Record, defs: &[SagaDef], trig: &Trigger, now: u64) -> Decision {
    if is_terminal_name(&rec.status) {
        return Decision::Done(Outcome::Ended(rec.status.clone()));
    }
    if rec.rev == 0 {
        return Decision::Done(Outcome::Rejected(
            "saga record has no revision (damaged); left as is".into(),
        ));
    }
    match trig {
        Trigger::Reply { rev, .. } | Trigger::StepDeadline { rev, .. } if *rev != rec.rev => {
            return Decision::Done(Outcome::Stale(format!(
                "{} of revision {rev} ignored: the saga is at revision {}",
                trig.event().kind(),
                rec.rev
            )));
        }
        _ => {}
    }
    let def = match resolve(rec, defs) {
        Ok(d) => d,
        Err(reason) => return Decision::Write(Box::new(forced_failure(rec, trig, reason, now))),
    };
    let state = match &rec.state {
        Ok(s) => s,
        Err(e) => {
            return Decision::Write(Box::new(forced_failure(rec, trig, e.clone(), now)));
        }
    };
    let event = trig.event();
    let def = def.as_ref();
    match state.apply(def, &event) {
        Err(e) if e.is_stale() => Decision::Done(Outcome::Stale(e.to_string())),
        Err(e @ IllegalTransition::Mismatch { .. }) => {
            Decision::Write(Box::new(forced_failure(rec, trig, e.to_string(), now)))
        }
        Err(e) => Decision::Done(Outcome::Rejected(e.to_string())),
        Ok(t) if t.is_noop() => Decision::Done(Outcome::Noop),
        Ok(t) => Decision::Write(Box::new(transition_write(
            rec, def, state, trig, &event, &t, now,
        ))),
    }
}

fn detail(def: &SagaDef, trig: &Trigger, event: &Event) -> Option<String> {
    match (event, trig) {
        (Event::StepSucceeded { .. } | Event::CompensationSucceeded { .. }, Trigger::Reply { attempt, .. }) => {
            Some(format!("attempt {attempt}"))
        }
        (Event::StepFailed { error, .. } | Event::CompensationFailed { error, .. }, Trigger::Reply { attempt, .. }) => {
            Some(format!("attempt {attempt}: {error}"))
        }
        (Event::StepTimedOut { step }, _) => def.steps.get(*step).map(|s| {
            format!(
                "no reply within {} ms (every attempt's time limit and retry delays) plus the grace",
                ms(step_budget(s))
            )
        }),
        (Event::SagaTimedOut, _) => Some(format!("time limit {} ms", ms(def.timeout))),
        (Event::Abort { reason }, _) => Some(reason.clone()),
        _ => None,
    }
}

fn transition_write(
    rec: &Record,
    def: &SagaDef,
    state: &SagaState,
    trig: &Trigger,
    event: &Event,
    t: &Transition,
    now: u64,
) -> Write {
    let id = rec.id.as_str();
    let new_rev = rec.rev + 1;
    let (from, to) = (state.status(), t.state.status());
    let mut meta = rec.meta.clone();
    meta.resize(def.steps.len(), StepMeta::default());
    let attempt = match trig {
        Trigger::Reply { attempt, .. } => *attempt,
        _ => 0,
    };
    match event {
        Event::StepSucceeded { step, .. } | Event::StepFailed { step, .. } => {
            meta[*step].ended_at = Some(now);
            meta[*step].attempts = attempt;
        }
        Event::StepTimedOut { step } => meta[*step].ended_at = Some(now),
        Event::SagaTimedOut | Event::Abort { .. } => {
            if let SagaStatus::Running { step } = from {
                meta[step].ended_at = Some(now);
            }
        }
        Event::CompensationSucceeded { step } | Event::CompensationFailed { step, .. } => {
            meta[*step].comp_ended_at = Some(now);
            meta[*step].comp_attempts = attempt;
        }
        Event::Start => {}
    }
    let mut dispatches = Vec::new();
    for c in &t.commands {
        match *c {
            Command::DispatchStep { step } => {
                meta[step].started_at = Some(now);
                dispatches.push(task_for(
                    rec,
                    def,
                    &t.state,
                    step,
                    Side::Action,
                    new_rev,
                    now,
                ));
            }
            Command::DispatchCompensation { step } => {
                meta[step].comp_started_at = Some(now);
                dispatches.push(task_for(
                    rec,
                    def,
                    &t.state,
                    step,
                    Side::Compensation,
                    new_rev,
                    now,
                ));
            }
            Command::Finish { .. } => {}
        }
    }
    let mut zrem = Vec::new();
    if let SagaStatus::Running { step } = from {
        zrem.push(step_member(id, step, rec.rev));
    }
    zrem.extend(trig.member(id));
    if to.is_terminal() {
        zrem.push(saga_member(id));
    }
    zrem.sort();
    zrem.dedup();
    let mut zadd = Vec::new();
    if let SagaStatus::Running { step } = to {
        zadd.push((
            now + ms(step_budget(&def.steps[step])),
            true,
            step_member(id, step, new_rev),
        ));
    }
    let step = to.step();
    let mut fields = vec![
        (
            f::STATE,
            serde_json::to_string(&t.state).unwrap_or_default(),
        ),
        (f::STATUS, status_name(to).to_string()),
        (f::STEP, step.map(|s| s.to_string()).unwrap_or_default()),
        (
            f::STEP_NAME,
            step.and_then(|s| def.steps.get(s))
                .map(|s| s.name.clone())
                .unwrap_or_default(),
        ),
        (f::REV, new_rev.to_string()),
        (f::UPDATED, now.to_string()),
        (f::META, serde_json::to_string(&meta).unwrap_or_default()),
        (f::ERROR, t.state.error().unwrap_or_default().to_string()),
    ];
    if to.is_terminal() {
        fields.push((f::FINISHED, now.to_string()));
    }
    let compensation_failed = match event {
        Event::CompensationFailed { step, .. } => def.steps.get(*step).map(|s| s.name.clone()),
        _ => None,
    };
    Write {
        id: id.to_string(),
        expect_rev: rec.rev,
        new_rev,
        from: status_name(from),
        to: status_name(to),
        now,
        active_score: None,
        fields,
        history: HistoryEntry {
            rev: new_rev,
            at: now,
            event: event.kind().to_string(),
            step: event
                .step()
                .and_then(|s| def.steps.get(s))
                .map(|s| s.name.clone()),
            from: label(def, from),
            to: label(def, to),
            detail: detail(def, trig, event),
        },
        zrem,
        zadd,
        dispatches,
        note: Note {
            saga: def.name.clone(),
            created: rec.created,
            finished: to.is_terminal().then(|| status_name(to)),
            error: t.state.error().map(String::from),
            compensation_failed,
            forced: false,
        },
        traceparent: rec.traceparent.clone(),
        started_under: None,
    }
}

/// Ends a saga the state machine cannot move (unknown definition, damaged state) as
/// `failed`, with the reason: it needs an operator, and must not sit in the indexes
/// forever nor be retried on every reply.
fn forced_failure(rec: &Record, trig: &Trigger, reason: String, now: u64) -> Write {
    let id = rec.id.as_str();
    let from: &'static str = STATES
        .iter()
        .find(|s| **s == rec.status)
        .copied()
        .unwrap_or("running");
    let mut zrem = vec![saga_member(id)];
    if let Ok(s) = &rec.state {
        if let SagaStatus::Running { step } = s.status() {
            zrem.push(step_member(id, step, rec.rev));
        }
    }
    zrem.extend(trig.member(id));
    zrem.sort();
    zrem.dedup();
    let error = format!("cannot continue the saga: {reason}");
    let event = trig.event();
    Write {
        id: id.to_string(),
        expect_rev: rec.rev,
        new_rev: rec.rev + 1,
        from,
        to: "failed",
        now,
        active_score: None,
        fields: vec![
            (f::STATUS, "failed".to_string()),
            (f::STEP, String::new()),
            (f::STEP_NAME, String::new()),
            (f::REV, (rec.rev + 1).to_string()),
            (f::UPDATED, now.to_string()),
            (f::FINISHED, now.to_string()),
            (f::ERROR, error.clone()),
        ],
        history: HistoryEntry {
            rev: rec.rev + 1,
            at: now,
            event: event.kind().to_string(),
            step: None,
            from: from.to_string(),
            to: "failed".to_string(),
            detail: Some(error.clone()),
        },
        zrem,
        zadd: Vec::new(),
        dispatches: Vec::new(),
        note: Note {
            saga: rec.saga.clone(),
            created: rec.created,
            finished: Some("failed"),
            error: Some(error),
            compensation_failed: None,
            forced: true,
        },
        traceparent: rec.traceparent.clone(),
        started_under: None,
    }
}

/// The task of step `step` (its action or its compensation), as dispatched at `rev`.
fn task_for(
    rec: &Record,
    def: &SagaDef,
    state: &SagaState,
    step: usize,
    side: Side,
    rev: u64,
    now: u64,
) -> Dispatch {
    let s = &def.steps[step];
    let (task_type, payload, lane) = match side {
        Side::Action => {
            let mut outputs = Map::new();
            for (i, earlier) in def.steps.iter().enumerate().take(step) {
                if let Some(o) = state.output(i) {
                    outputs.insert(earlier.name.clone(), o.clone());
                }
            }
            let payload = json!({
                "saga_id": rec.id,
                "step": s.name,
                "input": rec.input,
                "outputs": outputs,
            });
            (s.action.clone(), payload, Lane::Bulk)
        }
        Side::Compensation => {
            let payload = json!({
                "saga_id": rec.id,
                "step": s.name,
                "input": rec.input,
                "output": state.output(step).cloned().unwrap_or(Value::Null),
            });
            // Compensations take the express lane: they are rare, and a rollback should
            // not wait behind a backlog of new work.
            (
                s.compensation.clone().unwrap_or_default(),
                payload,
                Lane::Express,
            )
        }
    };
    let key = format!("{}:{step}:{}", rec.id, side.as_str());
    let corr = Correlation {
        id: rec.id.clone(),
        step,
        side,
        rev,
    };
    Dispatch {
        queue: s.queue.clone(),
        lane,
        stream: QueueKeys::new(&s.queue).lane_stream(lane).to_string(),
        task: Task {
            max_attempts: Some(s.retry.max_attempts),
            enqueued_at: now,
            timeout_ms: Some(ms(s.timeout).max(1)),
            idempotency_key: Some(key.clone()),
            saga_id: Some(rec.id.clone()),
            reply_to: Some(keys::REPLIES.to_string()),
            correlation: Some(corr.encode()),
            traceparent: rec.traceparent.clone(),
            backoff_base_ms: Some(ms(s.retry.backoff_base).max(1)),
            backoff_cap_ms: Some(ms(s.retry.backoff_cap).max(1)),
            ..Task::new(key, task_type, payload.to_string())
        },
    }
}

/// The creation of a saga: the `Start` transition written at revision 1 together with
/// the definition snapshot, the input and the saga's deadline. Its W3C traceparent, which
/// every task of the saga carries, continues `parent`'s trace when one is given (a saga
/// started from a traced request or task), else a trace whose id is the saga id.
pub(crate) fn start_write(
    def: &SagaDef,
    input: Value,
    now: u64,
    parent: Option<&str>,
) -> Result<Write> {
    let uid = uuid::Uuid::now_v7();
    let id = uid.to_string();
    let traceparent = crate::telemetry::saga_traceparent(uid.as_u128(), parent);
    let deadline = now + ms(def.timeout);
    let rec = Record {
        id: id.clone(),
        saga: def.name.clone(),
        version: def.version,
        definition: None,
        input,
        state: Ok(SagaState::new(def)),
        status: "pending".into(),
        rev: 0,
        created: now,
        updated: now,
        finished: None,
        deadline,
        error: None,
        traceparent: Some(traceparent.clone()),
        meta: Vec::new(),
    };
    let state = SagaState::new(def);
    let t = state
        .apply(def, &Event::Start)
        .map_err(|e| Error::Invalid {
            what: "saga start",
            reason: e.to_string(),
        })?;
    let mut w = transition_write(&rec, def, &state, &Trigger::Start, &Event::Start, &t, now);
    w.started_under = parent.map(str::to_string);
    w.expect_rev = 0;
    w.active_score = Some(deadline);
    w.zadd.push((deadline, false, saga_member(&id)));
    let snapshot = serde_json::to_string(&SagaDefToml::from(def))?;
    w.fields.extend([
        (f::SAGA, def.name.clone()),
        (f::VERSION, def.version.to_string()),
        (f::DEFINITION, snapshot),
        (f::INPUT, rec.input.to_string()),
        (f::CREATED, now.to_string()),
        (f::DEADLINE, deadline.to_string()),
        (f::TRACEPARENT, traceparent),
    ]);
    Ok(w)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::definition::demo_saga;

    fn record(def: &SagaDef, state: SagaState, rev: u64) -> Record {
        Record {
            id: "S1".into(),
            saga: def.name.clone(),
            version: def.version,
            definition: Some(serde_json::to_string(&SagaDefToml::from(def)).unwrap()),
            input: json!({"topic": "x"}),
            status: status_name(state.status()).into(),
            state: Ok(state),
            rev,
            created: 1_000,
            updated: 1_000,
            finished: None,
            deadline: 61_000,
            error: None,
            traceparent: Some("00-aa-bb-01".into()),
            meta: Vec::new(),
        }
    }

    /// A record of the demo saga after `events`, one revision per event.
    fn after(events: &[Event]) -> Record {
        let d = demo_saga();
        let mut s = SagaState::new(&d);
        for e in events {
            s = s.apply(&d, e).unwrap().state;
        }
        record(&d, s, events.len() as u64)
    }

    fn ok(step: usize) -> Trigger {
        Trigger::Reply {
            event: Event::StepSucceeded {
                step,
                output: json!({"n": step}),
            },
            rev: step as u64 + 1,
            attempt: 1,
        }
    }

    fn write(d: Decision) -> Write {
        match d {
            Decision::Write(w) => *w,
            Decision::Done(o) => panic!("expected a write, got {o:?}"),
        }
    }

    #[test]
    fn start_creates_and_dispatches_step_zero_atomically() {
        let d = demo_saga();
        let w = start_write(&d, json!({"topic": "x"}), 5_000, None).unwrap();
        assert_eq!(
            (w.expect_rev, w.new_rev, w.from, w.to),
            (0, 1, "pending", "running")
        );
        assert_eq!(w.active_score, Some(65_000));
        assert_eq!(w.dispatches.len(), 1);
        let t = &w.dispatches[0].task;
        assert_eq!(t.task_type, "demo.reasoning");
        assert_eq!(w.dispatches[0].stream, "ts:{default}:stream");
        assert_eq!(
            t.correlation.as_deref(),
            Some(format!("{}|0|action|1", w.id).as_str())
        );
        assert_eq!(
            t.idempotency_key.as_deref(),
            Some(format!("{}:0:action", w.id).as_str())
        );
        assert_eq!(t.reply_to.as_deref(), Some(keys::REPLIES));
        let p: Value = serde_json::from_str(&t.payload).unwrap();
        assert_eq!(
            p,
            json!({"saga_id": w.id, "step": "reasoning", "input": {"topic": "x"}, "outputs": {}})
        );
        let tp = w.fields.iter().find(|(k, _)| *k == f::TRACEPARENT).unwrap();
        assert!(
            tp.1.starts_with(&format!("00-{}-", w.id.replace('-', ""))),
            "{}",
            tp.1
        );
        assert_eq!(t.traceparent.as_deref(), Some(tp.1.as_str()));
        let budget = ms(step_budget(&d.steps[0]));
        assert_eq!(
            w.zadd,
            vec![
                (5_000 + budget, true, step_member(&w.id, 0, 1)),
                (65_000, false, saga_member(&w.id)),
            ]
        );
        assert_eq!(w.history.to, "running:reasoning");
    }

    #[test]
    fn step_reply_runs_the_next_step_with_earlier_outputs() {
        let d = demo_saga();
        let rec = after(&[Event::Start]);
        let w = write(decide(&rec, &[d], &ok(0), 2_000));
        assert_eq!((w.expect_rev, w.new_rev), (1, 2));
        assert_eq!(w.zrem, vec![step_member("S1", 0, 1)]);
        assert_eq!(w.zadd.len(), 1);
        assert_eq!(w.zadd[0].2, step_member("S1", 1, 2));
        let t = &w.dispatches[0].task;
        assert_eq!(t.task_type, "demo.codegen");
        let p: Value = serde_json::from_str(&t.payload).unwrap();
        assert_eq!(p["outputs"], json!({"reasoning": {"n": 0}}));
        assert_eq!(p["input"], json!({"topic": "x"}));
        assert_eq!(w.history.detail.as_deref(), Some("attempt 1"));
        let meta: Vec<StepMeta> =
            serde_json::from_str(&w.fields.iter().find(|(k, _)| *k == f::META).unwrap().1).unwrap();
        assert_eq!(meta[0].ended_at, Some(2_000));
        assert_eq!(meta[1].started_at, Some(2_000));
    }

    #[test]
    fn replies_of_another_revision_are_stale() {
        let d = demo_saga();
        let rec = after(&[
            Event::Start,
            Event::StepSucceeded {
                step: 0,
                output: json!(0),
            },
        ]);
        // The reply of step 0 delivered again: revision 1, the saga is at 2.
        let o = decide(&rec, std::slice::from_ref(&d), &ok(0), 3_000);
        assert!(matches!(o, Decision::Done(Outcome::Stale(_))), "{o:?}");
        // A deadline of a step that has moved on.
        let o = decide(
            &rec,
            std::slice::from_ref(&d),
            &Trigger::StepDeadline { step: 0, rev: 1 },
            3_000,
        );
        assert!(matches!(o, Decision::Done(Outcome::Stale(_))), "{o:?}");
        // The right revision but a step that is not running: the state machine says stale.
        let forged = Trigger::Reply {
            event: Event::StepSucceeded {
                step: 0,
                output: json!(0),
            },
            rev: 2,
            attempt: 1,
        };
        let o = decide(&rec, std::slice::from_ref(&d), &forged, 3_000);
        assert!(matches!(o, Decision::Done(Outcome::Stale(_))), "{o:?}");
        // An event that can never happen is rejected, not applied.
        let impossible = Trigger::Reply {
            event: Event::CompensationSucceeded { step: 1 },
            rev: 2,
            attempt: 1,
        };
        let o = decide(&rec, &[d], &impossible, 3_000);
        assert!(matches!(o, Decision::Done(Outcome::Rejected(_))), "{o:?}");
    }

    #[test]
    fn failure_compensates_on_the_express_lane_with_the_undone_output() {
        let d = demo_saga();
        let rec = after(&[
            Event::Start,
            Event::StepSucceeded {
                step: 0,
                output: json!("r"),
            },
            Event::StepSucceeded {
                step: 1,
                output: json!("code"),
            },
        ]);
        let trig = Trigger::Reply {
            event: Event::StepFailed {
                step: 2,
                error: "boom".into(),
            },
            rev: 3,
            attempt: 3,
        };
        let w = write(decide(&rec, &[d], &trig, 9_000));
        assert_eq!((w.from, w.to), ("running", "compensating"));
        assert!(w.zadd.is_empty());
        assert_eq!(w.zrem, vec![step_member("S1", 2, 3)]);
        let dsp = &w.dispatches[0];
        assert_eq!(dsp.stream, "ts:{default}:express");
        assert_eq!(dsp.task.task_type, "demo.delete_generated_code");
        assert_eq!(dsp.task.correlation.as_deref(), Some("S1|1|comp|4"));
        let p: Value = serde_json::from_str(&dsp.task.payload).unwrap();
        assert_eq!(p["output"], json!("code"));
        assert_eq!(p["step"], json!("codegen"));
        assert_eq!(w.history.detail.as_deref(), Some("attempt 3: boom"));
        assert_eq!(w.history.from, "running:ml");
        assert_eq!(w.history.to, "compensating:codegen");
    }

    #[test]
    fn deadlines_and_terminal_states() {
        let d = demo_saga();
        let rec = after(&[Event::Start]);
        let w = write(decide(
            &rec,
            std::slice::from_ref(&d),
            &Trigger::SagaDeadline,
            70_000,
        ));
        // Step 0 is in doubt: compensated first; both deadlines go.
        assert_eq!(w.dispatches[0].task.task_type, "demo.clear_reasoning_cache");
        assert_eq!(w.zrem, vec![saga_member("S1"), step_member("S1", 0, 1)]);
        // While compensating, the saga deadline changes nothing.
        let comp = after(&[Event::Start, Event::Abort { reason: "x".into() }]);
        let o = decide(
            &comp,
            std::slice::from_ref(&d),
            &Trigger::SagaDeadline,
            70_000,
        );
        assert_eq!(o, Decision::Done(Outcome::Noop));
        // Ending removes the saga deadline and sets `finished`.
        let trig = Trigger::Reply {
            event: Event::CompensationSucceeded { step: 0 },
            rev: 2,
            attempt: 1,
        };
        let w = write(decide(&comp, std::slice::from_ref(&d), &trig, 80_000));
        assert_eq!(
            (w.to, w.note.finished),
            ("rolled_back", Some("rolled_back"))
        );
        assert!(w.zrem.contains(&saga_member("S1")));
        assert!(w
            .fields
            .iter()
            .any(|(k, v)| *k == f::FINISHED && v == "80000"));
        let mut ended = after(&[Event::Start]);
        ended.status = "completed".into();
        let o = decide(&ended, &[d], &ok(0), 1);
        assert!(matches!(o, Decision::Done(Outcome::Ended(_))), "{o:?}");
    }

    #[test]
    fn unknown_definition_or_damaged_state_fails_the_saga() {
        let rec = after(&[Event::Start]);
        let w = write(decide(&rec, &[], &ok(0), 5));
        assert_eq!((w.from, w.to), ("running", "failed"));
        assert!(w.note.forced);
        let err = &w.fields.iter().find(|(k, _)| *k == f::ERROR).unwrap().1;
        assert!(
            err.contains(r#"saga definition "demo" (version 1) is not known"#),
            "{err}"
        );
        assert!(w.zrem.contains(&saga_member("S1")) && w.zrem.contains(&step_member("S1", 0, 1)));
        let mut bad = after(&[Event::Start]);
        bad.state = Err("stored state is unreadable: eof".into());
        let w = write(decide(&bad, &[demo_saga()], &Trigger::SagaDeadline, 5));
        assert_eq!(w.to, "failed");
        // Another version of the definition: the snapshot is used.
        let mut v2 = demo_saga();
        v2.version = 2;
        v2.steps.pop();
        let w = write(decide(&rec, &[v2], &ok(0), 5));
        assert_eq!(w.dispatches[0].task.task_type, "demo.codegen");
    }

    #[test]
    fn budget_covers_every_attempt_and_the_delays_between() {
        let s = StepDef::new("a", "t")
            .timeout(Duration::from_millis(100))
            .max_attempts(4)
            .backoff(Duration::from_millis(10), Duration::from_millis(25));
        // 4 × 100 + 10 + 20 + 25 (capped)
        assert_eq!(step_budget(&s), Duration::from_millis(455));
        let one = StepDef::new("a", "t")
            .timeout(Duration::from_millis(100))
            .max_attempts(1);
        assert_eq!(step_budget(&one), Duration::from_millis(100));
        let huge = StepDef::new("a", "t").max_attempts(u32::MAX);
        assert_eq!(step_budget(&huge), MAX_STEP_BUDGET);
    }

    #[test]
    fn a_damaged_record_is_rejected_not_decided() {
        let mut h = std::collections::HashMap::new();
        h.insert("state".to_string(), "{not json".to_string());
        h.insert("rev".to_string(), "x".to_string());
        let r = Record::from_fields("S", h).unwrap();
        assert!(matches!(
            decide(&r, &[demo_saga()], &Trigger::SagaDeadline, 1),
            Decision::Done(Outcome::Rejected(_))
        ));
    }

    #[test]
    fn routing_sends_a_pooled_type_to_its_pool_and_others_to_the_queue() {
        let d = demo_saga();
        let mut w = start_write(&d, json!({}), 1, None).unwrap();
        assert_eq!(w.dispatches[0].stream, "ts:{default}:stream");
        w.route(|q, t| {
            let pool = (q == "default" && t == "demo.reasoning").then(|| "gpu".to_string());
            (pool, 1)
        });
        assert_eq!(w.dispatches[0].stream, "ts:{default}:pool:gpu");
        // The script's keys follow the routed stream.
        w.route(|_, _| (None, 1));
        assert_eq!(w.dispatches[0].stream, "ts:{default}:stream");
        // On a partitioned queue, the partition the saga id picks.
        w.route(|_, _| (None, 4));
        let p = crate::keys::partition_of(&w.id, 4);
        assert_eq!(
            w.dispatches[0].stream,
            QueueKeys::partition("default", p).stream
        );
        // A compensation goes to the express lane of its pool.
        let rec = after(&[Event::Start]);
        let mut w = write(decide(&rec, &[d], &Trigger::SagaDeadline, 70_000));
        w.route(|_, _| (Some("gpu".into()), 1));
        assert_eq!(w.dispatches[0].lane, Lane::Express);
        assert_eq!(w.dispatches[0].stream, "ts:{default}:pool:gpu:express");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A trigger of a random run, aimed at the step in flight or not.
        #[derive(Debug, Clone)]
        enum Input {
            /// A reply of the step or compensation in flight (`ok`), at the current
            /// revision or `rev_off` revisions behind.
            Reply {
                ok: bool,
                rev_off: u64,
            },
            /// A reply of an arbitrary step and side.
            Stray {
                step: usize,
                comp: bool,
                ok: bool,
                rev_off: u64,
            },
            StepDeadline {
                rev_off: u64,
            },
            SagaDeadline,
            Abort,
        }

        fn arb_input() -> impl Strategy<Value = Input> {
            let off = prop_oneof![3 => Just(0u64), 1 => 1u64..4];
            prop_oneof![
                6 => (any::<bool>(), off.clone()).prop_map(|(ok, rev_off)| Input::Reply { ok, rev_off }),
                2 => (0usize..8, any::<bool>(), any::<bool>(), off.clone())
                    .prop_map(|(step, comp, ok, rev_off)| Input::Stray { step, comp, ok, rev_off }),
                1 => off.prop_map(|rev_off| Input::StepDeadline { rev_off }),
                1 => Just(Input::SagaDeadline),
                1 => Just(Input::Abort),
            ]
        }

        fn arb_def() -> impl Strategy<Value = SagaDef> {
            proptest::collection::vec((any::<bool>(), 1u32..4), 1..=6).prop_map(|steps| {
                let mut b = SagaDef::builder("p");
                for (i, (c, attempts)) in steps.into_iter().enumerate() {
                    let mut s = StepDef::new(format!("s{i}"), format!("t.s{i}"))
                        .max_attempts(attempts)
                        .queue(if i % 2 == 0 { "default" } else { "other" });
                    if c {
                        s = s.compensate(format!("t.undo{i}"));
                    }
                    b = b.step(s);
                }
                b.build().unwrap()
            })
        }

        fn reply(event: Event, rev: u64) -> Trigger {
            Trigger::Reply {
                event,
                rev,
                attempt: 1,
            }
        }

        fn trigger(rec: &Record, input: &Input) -> Trigger {
            let st = rec.state.as_ref().unwrap().status();
            let rev = |off: u64| rec.rev.saturating_sub(off);
            let event = |step: usize, comp: bool, ok: bool| match (comp, ok) {
                (false, true) => Event::StepSucceeded {
                    step,
                    output: json!(step),
                },
                (false, false) => Event::StepFailed {
                    step,
                    error: "boom".into(),
                },
                (true, true) => Event::CompensationSucceeded { step },
                (true, false) => Event::CompensationFailed {
                    step,
                    error: "undo boom".into(),
                },
            };
            match *input {
                Input::Reply { ok, rev_off } => {
                    let comp = matches!(st, SagaStatus::Compensating { .. });
                    reply(event(st.step().unwrap_or(0), comp, ok), rev(rev_off))
                }
                Input::Stray {
                    step,
                    comp,
                    ok,
                    rev_off,
                } => reply(event(step, comp, ok), rev(rev_off)),
                Input::StepDeadline { rev_off } => Trigger::StepDeadline {
                    step: st.step().unwrap_or(0),
                    rev: rev(rev_off),
                },
                Input::SagaDeadline => Trigger::SagaDeadline,
                Input::Abort => Trigger::Abort {
                    reason: "operator".into(),
                },
            }
        }

        /// What the script does to the record: its new fields.
        fn store(rec: &Record, w: &Write) -> Record {
            let mut r = rec.clone();
            for (k, v) in &w.fields {
                match *k {
                    f::STATE => r.state = Ok(serde_json::from_str(v).unwrap()),
                    f::STATUS => r.status = v.clone(),
                    f::REV => r.rev = v.parse().unwrap(),
                    f::META => r.meta = serde_json::from_str(v).unwrap(),
                    _ => {}
                }
            }
            r
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            #[test]
            fn decisions_keep_the_invariants(
                def in arb_def(),
                inputs in proptest::collection::vec(arb_input(), 0..40),
            ) {
                let defs = std::slice::from_ref(&def);
                let start = start_write(&def, json!({"k": 1}), 1_000, None).unwrap();
                let mut rec = Record {
                    id: start.id.clone(),
                    saga: def.name.clone(),
                    version: def.version,
                    definition: None,
                    input: json!({"k": 1}),
                    state: Ok(SagaState::new(&def)),
                    status: "pending".into(),
                    rev: 0,
                    created: 1_000,
                    updated: 1_000,
                    finished: None,
                    deadline: 61_000,
                    error: None,
                    traceparent: None,
                    meta: Vec::new(),
                };
                rec = store(&rec, &start);
                let mut now = 1_000;
                for input in inputs {
                    now += 7;
                    let trig = trigger(&rec, &input);
                    let before = rec.state.clone().unwrap().status();
                    match decide(&rec, defs, &trig, now) {
                        Decision::Done(o) => {
                            // (a) Nothing is written for a trigger of another revision, nor
                            // for an ended saga.
                            let applied = matches!(o, Outcome::Applied { .. });
                            prop_assert!(!applied, "a decision without write says applied");
                            continue;
                        }
                        Decision::Write(w) => {
                            let w = *w;
                            prop_assert!(!w.note.forced, "forced failure: {:?}", w.fields);
                            // (b) Nothing is written for a reply or step deadline of another
                            // revision, nor to an ended saga.
                            match &trig {
                                Trigger::Reply { rev, .. } | Trigger::StepDeadline { rev, .. } => {
                                    prop_assert_eq!(*rev, rec.rev)
                                }
                                _ => {}
                            }
                            prop_assert!(!before.is_terminal());
                            // (c) Compare-and-set on the revision read, one revision on.
                            prop_assert_eq!((w.expect_rev, w.new_rev), (rec.rev, rec.rev + 1));
                            prop_assert_eq!(w.history.rev, w.new_rev);
                            prop_assert_eq!(w.from, status_name(before));
                            let next = store(&rec, &w);
                            let after = next.state.clone().unwrap().status();
                            prop_assert_eq!(w.to, status_name(after));
                            // (d) At most one task, and it is the one now in flight, with a
                            // correlation and idempotency key naming it at the new revision.
                            prop_assert!(w.dispatches.len() <= 1);
                            for d in &w.dispatches {
                                let c = Correlation::parse(d.task.correlation.as_deref().unwrap()).unwrap();
                                prop_assert_eq!(&c.id, &rec.id);
                                prop_assert_eq!(c.rev, w.new_rev);
                                let (side, lane) = match after {
                                    SagaStatus::Running { step } => { prop_assert_eq!(c.step, step); (Side::Action, Lane::Bulk) }
                                    SagaStatus::Compensating { step } => { prop_assert_eq!(c.step, step); (Side::Compensation, Lane::Express) }
                                    other => { prop_assert!(false, "dispatch while {:?}", other); unreachable!() }
                                };
                                prop_assert_eq!(c.side, side);
                                prop_assert_eq!(d.lane, lane);
                                let s = &def.steps[c.step];
                                let want_type = match side { Side::Action => &s.action, Side::Compensation => s.compensation.as_ref().unwrap() };
                                prop_assert_eq!(&d.task.task_type, want_type);
                                prop_assert_eq!(&d.queue, &s.queue);
                                let lane_stream = QueueKeys::new(&s.queue).lane_stream(lane).to_string();
                                prop_assert_eq!(&d.stream, &lane_stream);
                                let key = format!("{}:{}:{}", rec.id, c.step, side.as_str());
                                prop_assert_eq!(d.task.idempotency_key.as_deref(), Some(key.as_str()));
                                prop_assert_eq!(d.task.reply_to.as_deref(), Some(keys::REPLIES));
                            }
                            // (e) Running a step means its deadline is set (at the new
                            // revision); the previous step's deadline always goes.
                            let step_deadlines: Vec<&String> = w.zadd.iter().map(|(_, _, m)| m).collect();
                            match after {
                                SagaStatus::Running { step } => {
                                    let member = step_member(&rec.id, step, w.new_rev);
                                    prop_assert_eq!(step_deadlines, vec![&member]);
                                    prop_assert!(!w.dispatches.is_empty());
                                }
                                _ => prop_assert!(step_deadlines.is_empty()),
                            }
                            if let SagaStatus::Running { step } = before {
                                prop_assert!(w.zrem.contains(&step_member(&rec.id, step, rec.rev)));
                            }
                            // (f) Ending removes the saga deadline and sets `finished`.
                            prop_assert_eq!(w.finished(), after.is_terminal());
                            if after.is_terminal() {
                                prop_assert!(w.zrem.contains(&saga_member(&rec.id)));
                                prop_assert!(w.fields.iter().any(|(k, _)| *k == f::FINISHED));
                                prop_assert!(w.dispatches.is_empty());
                            }
                            rec = next;
                        }
                    }
                }
            }

            #[test]
            fn step_budget_covers_every_attempt_and_is_bounded(
                timeout_ms in 1u64..100_000,
                attempts in 1u32..50,
                base_ms in 1u64..10_000,
                extra_ms in 0u64..100_000,
            ) {
                let s = StepDef::new("a", "t")
                    .timeout(Duration::from_millis(timeout_ms))
                    .max_attempts(attempts)
                    .backoff(Duration::from_millis(base_ms), Duration::from_millis(base_ms + extra_ms));
                let b = step_budget(&s);
                prop_assert!(b <= MAX_STEP_BUDGET);
                let floor = Duration::from_millis(timeout_ms) * attempts
                    + Duration::from_millis(base_ms) * (attempts - 1);
                prop_assert!(b >= floor.min(MAX_STEP_BUDGET));
                let cap = Duration::from_millis(timeout_ms + base_ms + extra_ms) * attempts;
                prop_assert!(b <= cap);
            }
        }
    }
}
