//! The Redis record of a saga, and the one atomic operation that moves it.
//!
//! # Why compare-and-set
//!
//! A transition is decided in Rust by the pure state machine ([`super::fsm`]) from the
//! record read at revision `rev`, then written by `src/rdb/lua/saga_apply.lua`, which first checks
//! that the record is still at `rev`. If another orchestrator (or an operator's abort)
//! moved the saga in between, nothing is written and the caller re-reads and decides
//! again; usually the event has become stale and is dropped. There is no lock to leak
//! when a process dies, the decision logic stays in tested Rust, and the script stays a
//! dumb "check, then write everything" step. Everything the transition causes — the new
//! state, the history entry, the state indexes, the deadlines and the step or
//! compensation task (an `XADD` to its queue) — is written by that one script, so a
//! crash can never record a transition without its dispatch or dispatch without record.
//!
//! # Decisions are pure
//!
//! [`decide`] turns a record plus a trigger (a reply, a deadline, an abort) into either
//! a [`Write`] (the exact arguments of the script) or a final [`Outcome`] (stale,
//! rejected, nothing to do), without I/O, so it is unit-tested below.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::definition::{SagaDef, SagaDefToml, StepDef};
use super::fsm::{Command, Event, IllegalTransition, SagaState, SagaStatus, Transition};
use super::keys;
use super::view::HistoryEntry;
use crate::error::{Error, Result};
use crate::keys::QueueKeys;
use crate::metrics as m;
use crate::task::{now_ms, Task};

/// How long finished sagas are kept when no orchestrator published a setting.
pub(crate) const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 86_400);
/// Slack added to a step's own time budget before the orchestrator declares it timed out,
/// when no orchestrator published a setting: covers queueing and reply delivery.
pub(crate) const DEFAULT_STEP_GRACE: Duration = Duration::from_secs(5);
/// Longest step budget: a misconfigured retry policy must not push a deadline to 2500 AD.
const MAX_STEP_BUDGET: Duration = Duration::from_secs(30 * 86_400);
/// Re-reads after a lost compare-and-set before giving up (the caller retries later).
const CAS_ATTEMPTS: usize = 16;

/// Hash field names of a saga record.
pub(crate) mod f {
    pub const SAGA: &str = "saga";
    pub const VERSION: &str = "version";
    pub const DEFINITION: &str = "definition";
    pub const INPUT: &str = "input";
    pub const STATE: &str = "state";
    pub const STATUS: &str = "status";
    pub const STEP: &str = "step";
    pub const STEP_NAME: &str = "step_name";
    pub const REV: &str = "rev";
    pub const CREATED: &str = "created";
    pub const UPDATED: &str = "updated";
    pub const FINISHED: &str = "finished";
    pub const DEADLINE: &str = "deadline";
    pub const ERROR: &str = "error";
    pub const TRACEPARENT: &str = "traceparent";
    pub const META: &str = "meta";
}

/// Timing and attempts of one step, kept next to the state machine's view of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StepMeta {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub comp_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comp_started_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comp_ended_at: Option<u64>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// A saga record as read from Redis. Damaged fields become errors or defaults, never a
/// panic: the orchestrator must be able to fail such a saga cleanly.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub id: String,
    pub saga: String,
    pub version: u32,
    /// The definition the saga started with (a snapshot, JSON); parsed only when needed
    /// (see [`Record::snapshot`]), since most transitions use the configured definition.
    pub definition: Option<String>,
    pub input: Value,
    pub state: std::result::Result<SagaState, String>,
    /// State name (`running`, ...): authoritative for terminal states, since a saga
    /// failed outside the state machine keeps its last machine state.
    pub status: String,
    pub rev: u64,
    pub created: u64,
    pub updated: u64,
    pub finished: Option<u64>,
    pub deadline: u64,
    pub error: Option<String>,
    pub traceparent: Option<String>,
    pub meta: Vec<StepMeta>,
}

impl Record {
    /// Parses the fields of `HGETALL`; `None` when the hash does not exist.
    pub(crate) fn from_fields(id: &str, mut h: HashMap<String, String>) -> Option<Record> {
        if h.is_empty() {
            return None;
        }
        let num = |h: &HashMap<String, String>, k: &str| -> Option<u64> {
            h.get(k).and_then(|v| v.parse().ok())
        };
        let state = match h.get(f::STATE) {
            None => Err("the record has no state".to_string()),
            Some(t) => {
                serde_json::from_str(t).map_err(|e| format!("stored state is unreadable: {e}"))
            }
        };
        let input = h
            .get(f::INPUT)
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or(Value::Null);
        let meta = h
            .get(f::META)
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default();
        Some(Record {
            id: id.to_string(),
            saga: h.remove(f::SAGA).unwrap_or_default(),
            version: num(&h, f::VERSION).unwrap_or(0) as u32,
            definition: h.remove(f::DEFINITION),
            input,
            state,
            status: h.remove(f::STATUS).unwrap_or_default(),
            rev: num(&h, f::REV).unwrap_or(0),
            created: num(&h, f::CREATED).unwrap_or(0),
            updated: num(&h, f::UPDATED).unwrap_or(0),
            finished: num(&h, f::FINISHED),
            deadline: num(&h, f::DEADLINE).unwrap_or(0),
            error: h.remove(f::ERROR).filter(|e| !e.is_empty()),
            traceparent: h.remove(f::TRACEPARENT).filter(|t| !t.is_empty()),
            meta,
        })
    }
}

impl Record {
    /// The definition the saga started with.
    pub(crate) fn snapshot(&self) -> std::result::Result<SagaDef, String> {
        let text = self
            .definition
            .as_deref()
            .ok_or("the record has no definition snapshot")?;
        serde_json::from_str::<SagaDefToml>(text)
            .map_err(|e| format!("definition snapshot is unreadable: {e}"))?
            .into_def()
            .map_err(|e| e.to_string())
    }
}

/// Reads saga `id`; `None` when it does not exist (never did, or expired).
pub(crate) async fn load(conn: &mut ConnectionManager, id: &str) -> Result<Option<Record>> {
    let h: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys::saga(id))
        .query_async(conn)
        .await?;
    Ok(Record::from_fields(id, h))
}

/// The name of a state as stored and indexed: `running`, `rolled_back`, ...
pub(crate) fn status_name(s: SagaStatus) -> &'static str {
    match s {
        SagaStatus::Pending => "pending",
        SagaStatus::Running { .. } => "running",
        SagaStatus::Compensating { .. } => "compensating",
        SagaStatus::Completed => "completed",
        SagaStatus::RolledBack => "rolled_back",
        SagaStatus::Failed => "failed",
    }
}

/// Every state name, in life order.
pub(crate) const STATES: [&str; 6] = [
    "pending",
    "running",
    "compensating",
    "completed",
    "rolled_back",
    "failed",
];

/// True for the names of the final states.
pub(crate) fn is_terminal_name(s: &str) -> bool {
    matches!(s, "completed" | "rolled_back" | "failed")
}

/// `running:codegen`, `compensating:ml`, `completed`.
fn label(def: &SagaDef, s: SagaStatus) -> String {
    match s.step().and_then(|i| def.steps.get(i)) {
        Some(step) => format!("{}:{}", status_name(s), step.name),
        None => status_name(s).to_string(),
    }
}

/// The deadline member of the saga's own time limit.
pub(crate) fn saga_member(id: &str) -> String {
    format!("{id}|saga|-|1")
}

/// The deadline member of step `step` dispatched at revision `rev`.
pub(crate) fn step_member(id: &str, step: usize, rev: u64) -> String {
    format!("{id}|step|{step}|{rev}")
}

/// A parsed deadline member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Deadline {
    Saga { id: String },
    Step { id: String, step: usize, rev: u64 },
}

pub(crate) fn parse_member(m: &str) -> Option<Deadline> {
    let mut it = m.rsplitn(4, '|');
    let (rev, step, kind, id) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if id.is_empty() {
        return None;
    }
    match kind {
        "saga" => Some(Deadline::Saga { id: id.into() }),
        "step" => Some(Deadline::Step {
            id: id.into(),
            step: step.parse().ok()?,
            rev: rev.parse().ok()?,
        }),
        _ => None,
    }
}

/// Which side of a step a task performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Action,
    Compensation,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Action => "action",
            Side::Compensation => "comp",
        }
    }
}

/// The `correlation` of a saga task: `ID|STEP|action-or-comp|REV`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Correlation {
    pub id: String,
    pub step: usize,
    pub side: Side,
    pub rev: u64,
}

impl Correlation {
    pub(crate) fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.id,
            self.step,
            self.side.as_str(),
            self.rev
        )
    }

    pub(crate) fn parse(s: &str) -> Option<Correlation> {
        let mut it = s.rsplitn(4, '|');
        let (rev, side, step, id) = (it.next()?, it.next()?, it.next()?, it.next()?);
        if id.is_empty() {
            return None;
        }
        Some(Correlation {
            id: id.into(),
            step: step.parse().ok()?,
            side: match side {
                "action" => Side::Action,
                "comp" => Side::Compensation,
                _ => return None,
            },
            rev: rev.parse().ok()?,
        })
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
    pub queue: String,
    pub stream: String,
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
}

impl Write {
    fn finished(&self) -> bool {
        is_terminal_name(self.to)
    }

    /// Keys and arguments of the script.
    pub(crate) fn script_args(&self) -> (Vec<String>, Vec<Vec<u8>>) {
        let mut k = vec![
            keys::saga(&self.id),
            keys::history(&self.id),
            keys::DEADLINES.to_string(),
            keys::ACTIVE.to_string(),
            keys::state_index(self.from),
            keys::state_index(self.to),
            keys::SETTINGS.to_string(),
            crate::keys::queues_registry(),
        ];
        k.extend(self.dispatches.iter().map(|d| d.stream.clone()));
        let mut a: Vec<Vec<u8>> = Vec::with_capacity(32 + 2 * self.fields.len());
        let mut s = |v: String| a.push(v.into_bytes());
        s(self.expect_rev.to_string());
        s(self.new_rev.to_string());
        s(self.id.clone());
        s(self.now.to_string());
        s(DEFAULT_RETENTION.as_millis().to_string());
        s(DEFAULT_STEP_GRACE.as_millis().to_string());
        s(if self.finished() { "1" } else { "0" }.into());
        s(self.active_score.map(|v| v.to_string()).unwrap_or_default());
        s(serde_json::to_string(&self.history).unwrap_or_default());
        s(self.fields.len().to_string());
        for (name, v) in &self.fields {
            s(name.to_string());
            s(v.clone());
        }
        s(self.zrem.len().to_string());
        for m in &self.zrem {
            s(m.clone());
        }
        s(self.zadd.len().to_string());
        for (score, grace, m) in &self.zadd {
            s(score.to_string());
            s(if *grace { "1" } else { "0" }.into());
            s(m.clone());
        }
        s(self.dispatches.len().to_string());
        for d in &self.dispatches {
            let fields = d.task.encode();
            s(d.queue.clone());
            s(fields.len().to_string());
            for (name, v) in fields {
                s(name.to_string());
                s(v);
            }
        }
        (k, a)
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
        return Decision::Done(Outcome::Stale(format!(
            "saga has ended ({}); {} ignored",
            rec.status,
            trig.event().kind()
        )));
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
    let (task_type, payload, lane_stream) = match side {
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
            (s.action.clone(), payload, QueueKeys::new(&s.queue).stream)
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
                QueueKeys::new(&s.queue).express,
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
        stream: lane_stream,
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

/// A W3C traceparent whose trace id is the saga id, so every task of the saga shares it.
pub(crate) fn traceparent_for(id: &uuid::Uuid) -> String {
    let span: u64 = rand::random::<u64>() | 1;
    format!("00-{}-{span:016x}-01", id.simple())
}

/// The creation of a saga: the `Start` transition written at revision 1 together with
/// the definition snapshot, the input and the saga's deadline.
pub(crate) fn start_write(def: &SagaDef, input: Value, now: u64) -> Result<Write> {
    let uid = uuid::Uuid::now_v7();
    let id = uid.to_string();
    let traceparent = traceparent_for(&uid);
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

/// Runs the script for `w`: true when written, false when the revision did not match.
pub(crate) async fn commit(conn: &mut ConnectionManager, w: &Write) -> Result<bool> {
    let (k, a) = w.script_args();
    let mut inv = crate::rdb::scripts::script(crate::rdb::ScriptId::SagaApply).prepare_invoke();
    for key in &k {
        inv.key(key);
    }
    for arg in &a {
        inv.arg(arg.as_slice());
    }
    let (ok, _rev): (i64, String) = inv.invoke_async(conn).await?;
    if ok == 1 {
        after_commit(w);
    }
    Ok(ok == 1)
}

/// Runs the scripts of several creations in one pipeline (loading the script and
/// resending the rest if Redis had lost it; a creation is never applied twice, since it
/// requires the saga not to exist).
pub(crate) async fn commit_creations(conn: &mut ConnectionManager, ws: &[Write]) -> Result<()> {
    let mut todo: Vec<usize> = (0..ws.len()).collect();
    for round in 0..2 {
        let mut p = redis::pipe();
        p.ignore_errors();
        for &i in &todo {
            let (k, a) = ws[i].script_args();
            let keys: Vec<&str> = k.iter().map(String::as_str).collect();
            p.add_command(crate::rdb::evalsha(
                crate::rdb::ScriptId::SagaApply,
                &keys,
                a,
            ));
        }
        let results: Vec<redis::RedisResult<(i64, String)>> = p.query_async(conn).await?;
        let mut again = Vec::new();
        let mut first_err = None;
        for (&i, r) in todo.iter().zip(results) {
            match r {
                Ok((1, _)) => after_commit(&ws[i]),
                // Created by the first round, whose reply was an error for another entry.
                Ok(_) => {}
                Err(e) if crate::rdb::is_noscript(&e) && round == 0 => again.push(i),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e.into());
        }
        if again.is_empty() {
            return Ok(());
        }
        crate::rdb::scripts::script(crate::rdb::ScriptId::SagaApply)
            .prepare_invoke()
            .load_async(conn)
            .await?;
        todo = again;
    }
    Ok(())
}

fn after_commit(w: &Write) {
    let n = &w.note;
    metrics::counter!(m::SAGA_TRANSITIONS_TOTAL, "saga" => n.saga.clone(), "from" => w.from, "to" => w.to)
        .increment(1);
    tracing::debug!(
        saga_id = %w.id,
        saga = %n.saga,
        rev = w.new_rev,
        event = %w.history.event,
        from = %w.history.from,
        to = %w.history.to,
        dispatched = w.dispatches.len(),
        "saga transition"
    );
    let Some(fin) = n.finished else { return };
    let secs = w.now.saturating_sub(n.created) as f64 / 1000.0;
    metrics::histogram!(m::SAGA_DURATION_SECONDS, "saga" => n.saga.clone(), "state" => fin)
        .record(secs);
    let error = n.error.as_deref().unwrap_or("");
    match fin {
        "completed" => {
            tracing::info!(saga_id = %w.id, saga = %n.saga, duration_ms = w.now.saturating_sub(n.created), "saga completed")
        }
        "rolled_back" => tracing::info!(
            saga_id = %w.id,
            saga = %n.saga,
            duration_ms = w.now.saturating_sub(n.created),
            error,
            "saga rolled back: every completed step was compensated"
        ),
        _ => {
            if let Some(step) = &n.compensation_failed {
                metrics::counter!(m::COMPENSATION_FAILURES_TOTAL, "saga" => n.saga.clone(), "step" => step.clone())
                    .increment(1);
            }
            tracing::error!(
                saga_id = %w.id,
                saga = %n.saga,
                step = n.compensation_failed.as_deref().unwrap_or(""),
                forced = n.forced,
                error,
                "saga FAILED and needs an operator: effects of its completed steps remain (see `taskstream saga show {}`)",
                w.id
            );
        }
    }
}

/// Applies `trig` to saga `id`: reads, decides, writes with compare-and-set, and on a
/// lost race re-reads and decides again.
pub(crate) async fn advance(
    conn: &mut ConnectionManager,
    defs: &[SagaDef],
    id: &str,
    trig: &Trigger,
) -> Result<Outcome> {
    for _ in 0..CAS_ATTEMPTS {
        let Some(rec) = load(conn, id).await? else {
            return Ok(Outcome::Missing);
        };
        let w = match decide(&rec, defs, trig, now_ms()) {
            Decision::Done(o) => return Ok(o),
            Decision::Write(w) => w,
        };
        if commit(conn, &w).await? {
            return Ok(Outcome::Applied {
                from: w.from,
                to: w.to,
            });
        }
        tracing::debug!(saga_id = %id, rev = rec.rev, "saga moved meanwhile; deciding again");
    }
    Err(Error::Invalid {
        what: "saga transition",
        reason: format!(
            "saga {id} changed {CAS_ATTEMPTS} times while this transition was being applied; it will be retried"
        ),
    })
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
        let w = start_write(&d, json!({"topic": "x"}), 5_000).unwrap();
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
        assert!(matches!(o, Decision::Done(Outcome::Stale(_))), "{o:?}");
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
    fn correlations_and_members_roundtrip() {
        let c = Correlation {
            id: "0190-ab".into(),
            step: 3,
            side: Side::Compensation,
            rev: 12,
        };
        assert_eq!(Correlation::parse(&c.encode()), Some(c));
        assert_eq!(Correlation::parse("x|1|other|2"), None);
        assert_eq!(Correlation::parse("|1|action|2"), None);
        assert_eq!(
            parse_member(&step_member("a-b", 2, 7)),
            Some(Deadline::Step {
                id: "a-b".into(),
                step: 2,
                rev: 7
            })
        );
        assert_eq!(
            parse_member(&saga_member("a-b")),
            Some(Deadline::Saga { id: "a-b".into() })
        );
        assert_eq!(parse_member("garbage"), None);
    }

    #[test]
    fn damaged_records_parse_without_panic() {
        let mut h = HashMap::new();
        h.insert("state".to_string(), "{not json".to_string());
        h.insert("rev".to_string(), "x".to_string());
        let r = Record::from_fields("S", h).unwrap();
        assert!(r.state.is_err() && r.snapshot().is_err());
        assert_eq!(r.rev, 0);
        assert!(matches!(
            decide(&r, &[demo_saga()], &Trigger::SagaDeadline, 1),
            Decision::Done(Outcome::Rejected(_))
        ));
        assert!(Record::from_fields("S", HashMap::new()).is_none());
    }
}
