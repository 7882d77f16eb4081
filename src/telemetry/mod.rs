//! OpenTelemetry spans of tasks and sagas, exported over OTLP/HTTP when
//! `[tracing] otlp_endpoint` is set (issue 12.7; asynq users asked since 2022, asynq#547).
//!
//! One task makes one trace that reads like its life:
//!
//! ```text
//! enqueue <queue>        PRODUCER  the producer's XADD (child of the caller's traceparent)
//! ├─ wait <queue>        INTERNAL  from the entry's arrival in the stream to the handler's start
//! ├─ execute <type>      CONSUMER  the handler run (its status: the error when it failed)
//! └─ settle <queue>      INTERNAL  from the handler's end to the ACK / retry / dead letter in Redis
//! ```
//!
//! `wait`, `execute` and `settle` repeat for every attempt (attribute
//! `taskstream.attempt`), all children of the enqueue, whose id is the one the task's
//! `traceparent` carries. A handler gets the *execute* span's context from
//! [`crate::TaskContext::traceparent`] (an HTTP handler in its `traceparent` header), so
//! the spans it makes hang under the run. A saga is one more level:
//!
//! ```text
//! saga <name>                    the start (child of the traceparent it was started with)
//! ├─ saga <name> step_succeeded  one span per transition: event, step, from → to, rev
//! └─ wait/execute/settle of every step run (a step's task carries the saga's traceparent;
//!    the orchestrator writes it in the transition's script, so there is no enqueue span)
//! ```
//!
//! # Why spans are built from records, not from `tracing` spans
//!
//! A `wait` span starts when the producer — another process, maybe another language —
//! added the entry, and a `settle` span ends in the settler's batch after the handler's
//! task is gone: neither has a live scope to hang a `tracing::Span` on, and
//! `tracing-opentelemetry` cannot set a start time. The enqueue's span id must also be
//! known before the span ends, because it travels in the entry. So each span here is a
//! [`Span`] record (ids, times, attributes), handed finished to the SDK's batch
//! processor; `tracing` stays the log, and no bridge turns every log scope of the
//! process into a root span.
//!
//! # Why it is free when off
//!
//! Every entry point first reads one `OnceLock` ([`enabled`]); with no exporter it
//! returns before building anything, and the task's `traceparent` is what it always was
//! (a new one, sampled, when the producer gave none). A `traceparent` that is not a valid
//! W3C one is kept as it came and starts no span (see [`context`]).
//!
//! # Bounded
//!
//! Spans queue in the SDK's batch processor (at most [`MAX_QUEUED_SPANS`], then dropped,
//! never blocking a task) and leave every `export_interval_ms` in batches of
//! [`EXPORT_BATCH`]; a collector that is down costs a warning a minute in the log and
//! `taskstream_trace_exports_total{result="error"}`, never a stalled worker.
//! `taskstream_trace_spans_total{result="exported"|"failed"}` counts spans (and
//! [`counts`] the same plus those handed over, so the dropped ones show).

pub(crate) mod context;
#[cfg(feature = "otel")]
mod export;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) use context::TraceContext;

use crate::config::TracingConfig;
use crate::error::Result;

/// Spans held for export before new ones are dropped.
pub const MAX_QUEUED_SPANS: usize = 65_536;
/// Spans per export request.
pub const EXPORT_BATCH: usize = 2_048;

/// The kind of a span (OpenTelemetry's `SpanKind`, the three used here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The enqueue.
    Producer,
    /// The handler run.
    Consumer,
    /// Waiting, settling, saga transitions.
    Internal,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// Text.
    Str(String),
    /// A number.
    Int(i64),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<u32> for Value {
    fn from(n: u32) -> Self {
        Value::Int(n.into())
    }
}
impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Int(n.min(i64::MAX as u64) as i64)
    }
}

/// One span, recorded while it runs and exported when [`Span::end`] is called.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Span {
    /// Low-cardinality name (`execute send_email`).
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// Its own trace and span id (what a child's `traceparent` carries).
    pub ctx: TraceContext,
    /// The parent's span id, when it has one.
    pub parent: Option<u64>,
    /// The parent was made in another process (a producer's, a saga starter's).
    pub parent_remote: bool,
    /// When it started.
    pub start: SystemTime,
    /// Attributes (`messaging.*` per the OpenTelemetry semantic conventions, then ours).
    pub attrs: Vec<(&'static str, Value)>,
}

impl Span {
    /// A new span under `parent`, starting at `start`.
    pub(crate) fn child_of(
        parent: &TraceContext,
        remote: bool,
        name: String,
        kind: Kind,
        start: SystemTime,
    ) -> Span {
        Span {
            name,
            kind,
            ctx: parent.child(context::new_span_id()),
            parent: Some(parent.span_id),
            parent_remote: remote,
            start,
            attrs: Vec::new(),
        }
    }

    /// Adds an attribute.
    pub(crate) fn attr(mut self, key: &'static str, v: impl Into<Value>) -> Span {
        self.attrs.push((key, v.into()));
        self
    }

    /// The `traceparent` a child of this span carries.
    pub(crate) fn traceparent(&self) -> String {
        self.ctx.traceparent()
    }

    /// Ends the span at `end` (with `error` as its status when it failed) and hands it to
    /// the exporter; an unsampled span, or one made with export off, goes nowhere.
    pub(crate) fn end(self, end: SystemTime, error: Option<String>) {
        #[cfg(feature = "otel")]
        if self.ctx.sampled {
            if let Some(e) = export::get() {
                e.emit(self, end, error);
            }
        }
        #[cfg(not(feature = "otel"))]
        let _ = (end, error);
    }
}

/// What this process's span export did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpanCounts {
    /// Spans finished and handed to the exporter's queue.
    pub emitted: u64,
    /// Spans the collector accepted.
    pub exported: u64,
    /// Spans lost in an export that failed (collector down, refused, timed out).
    pub failed: u64,
}

impl SpanCounts {
    /// Spans dropped because the queue was full (valid once the queue is flushed).
    pub fn dropped(&self) -> u64 {
        self.emitted.saturating_sub(self.exported + self.failed)
    }
}

/// The counters of span export in this process (all 0 when it is off).
pub fn counts() -> SpanCounts {
    #[cfg(feature = "otel")]
    {
        export::counts()
    }
    #[cfg(not(feature = "otel"))]
    {
        SpanCounts::default()
    }
}

/// True when spans are exported ([`init`] ran with an endpoint).
#[inline]
pub(crate) fn enabled() -> bool {
    #[cfg(feature = "otel")]
    {
        export::get().is_some()
    }
    #[cfg(not(feature = "otel"))]
    {
        false
    }
}

/// The sampling ratio of traces that start here (1 when export is off).
fn ratio() -> f64 {
    #[cfg(feature = "otel")]
    if let Some(e) = export::get() {
        return e.sample_ratio;
    }
    1.0
}

/// Unix time in ms as a [`SystemTime`].
pub(crate) fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Starts span export for this process, as `cfg` says; `None` when `otlp_endpoint` is
/// unset. Call it once, inside the Tokio runtime (export requests run on it), and call
/// [`Exporting::shutdown`] before the runtime ends so the last spans leave.
pub fn init(cfg: &TracingConfig) -> Result<Option<Exporting>> {
    let Some(url) = cfg.traces_url() else {
        return Ok(None);
    };
    #[cfg(feature = "otel")]
    {
        export::install(cfg, &url)?;
        tracing::info!(endpoint = %url, sample_ratio = cfg.sample_ratio, "exporting spans over OTLP/HTTP");
        Ok(Some(Exporting { _private: () }))
    }
    #[cfg(not(feature = "otel"))]
    {
        Err(crate::Error::Invalid {
            what: "tracing.otlp_endpoint",
            reason: format!(
                "{url} is set but this build has no OpenTelemetry export: build with the `otel` feature"
            ),
        })
    }
}

/// Span export in progress; [`Exporting::shutdown`] flushes what is queued.
#[derive(Debug)]
pub struct Exporting {
    _private: (),
}

impl Exporting {
    /// Exports the spans still queued (waiting at most the export timeout) and stops.
    pub async fn shutdown(self) {
        #[cfg(feature = "otel")]
        {
            let _ = tokio::task::spawn_blocking(export::shutdown).await;
        }
    }
}

/// The producer's side: the `traceparent` to store on a new task, and the `enqueue`
/// span to end once Redis has the entry. With export off (or the caller's traceparent
/// unsampled or malformed) the traceparent is the caller's, or a new one, and no span.
pub(crate) fn enqueue(
    given: Option<String>,
    queue: &str,
    task_type: &str,
    task_id: &str,
    express: bool,
) -> (String, Option<Span>) {
    if !enabled() {
        return (given.unwrap_or_else(crate::producer::new_traceparent), None);
    }
    let (parent, remote) = match given.as_deref().map(TraceContext::parse) {
        // Unsampled: no span, so nothing new to point at; the caller's goes on as it came.
        Some(Some(p)) if !p.sampled => return (given.unwrap_or_default(), None),
        Some(Some(p)) => (p, true),
        // Malformed: kept as it came, no span (a producer's bad header fails nothing).
        Some(None) => return (given.unwrap_or_default(), None),
        None => {
            let trace_id = context::new_trace_id();
            if !context::sample(trace_id, ratio()) {
                // A new trace not kept: its traceparent says so, and nothing is built.
                let ctx = TraceContext {
                    trace_id,
                    span_id: context::new_span_id(),
                    sampled: false,
                };
                return (ctx.traceparent(), None);
            }
            let root = TraceContext {
                trace_id,
                span_id: 0,
                sampled: true,
            };
            (root, false)
        }
    };
    let mut span = Span::child_of(
        &parent,
        remote,
        format!("enqueue {queue}"),
        Kind::Producer,
        SystemTime::now(),
    )
    .attr("messaging.system", "taskstream")
    .attr("messaging.operation.type", "send")
    .attr("messaging.destination.name", queue)
    .attr("messaging.message.id", task_id)
    .attr("taskstream.task.type", task_type)
    .attr("taskstream.lane", if express { "express" } else { "bulk" });
    if parent.span_id == 0 {
        span.parent = None;
    }
    (span.traceparent(), Some(span))
}

/// One attempt of a task, seen by the worker: the `wait` span is exported when the run
/// starts, `execute` when it ends, `settle` when Redis has the outcome.
#[derive(Debug)]
pub(crate) struct Attempt {
    /// The enqueue's context (the task's traceparent): parent of the three spans.
    parent: TraceContext,
    /// The handler run, open.
    execute: Span,
    /// Attributes every span of the attempt carries.
    common: Vec<(&'static str, Value)>,
}

impl Attempt {
    /// Starts attempt `attempt` of the task whose traceparent is `traceparent`, entry
    /// added to the stream at `entry_ms`: exports its `wait` span and opens `execute`.
    /// `None` when export is off or the trace is not sampled.
    pub(crate) fn start(
        traceparent: Option<&str>,
        queue: &str,
        task_type: &str,
        task_id: &str,
        attempt: u32,
        entry_ms: Option<u64>,
    ) -> Option<Attempt> {
        if !enabled() {
            return None;
        }
        let parent = TraceContext::parse(traceparent?)?;
        if !parent.sampled {
            return None;
        }
        let now = SystemTime::now();
        let common = vec![
            ("messaging.system", Value::from("taskstream")),
            ("messaging.destination.name", Value::from(queue)),
            ("messaging.message.id", Value::from(task_id)),
            ("taskstream.task.type", Value::from(task_type)),
            ("taskstream.attempt", Value::from(attempt)),
        ];
        let with = |mut s: Span| {
            s.attrs.extend(common.iter().cloned());
            s
        };
        if let Some(ms) = entry_ms {
            let w = Span::child_of(
                &parent,
                true,
                format!("wait {queue}"),
                Kind::Internal,
                at_ms(ms).min(now),
            );
            with(w).end(now, None);
        }
        let execute = with(
            Span::child_of(
                &parent,
                true,
                format!("execute {task_type}"),
                Kind::Consumer,
                now,
            )
            .attr("messaging.operation.type", "process"),
        );
        Some(Attempt {
            parent,
            execute,
            common,
        })
    }

    /// The `traceparent` of the run, for the handler's own calls.
    pub(crate) fn traceparent(&self) -> String {
        self.execute.traceparent()
    }

    /// Ends the run with what came of it (`succeeded`, `retry`, `dead`, ...; `error`
    /// when it failed) and opens the `settle` span.
    pub(crate) fn executed(self, outcome: &'static str, error: Option<String>) -> Span {
        let now = SystemTime::now();
        self.execute
            .attr("taskstream.outcome", outcome)
            .end(now, error);
        let mut s = Span::child_of(
            &self.parent,
            true,
            format!("settle {}", queue_of(&self.common)),
            Kind::Internal,
            now,
        )
        .attr("taskstream.outcome", outcome);
        s.attrs.extend(self.common);
        s
    }
}

fn queue_of<'a>(common: &'a [(&'static str, Value)]) -> &'a str {
    common
        .iter()
        .find_map(|(k, v)| match v {
            Value::Str(s) if *k == "messaging.destination.name" => Some(s.as_str()),
            _ => None,
        })
        .unwrap_or("")
}

/// Ends the `settle` spans of a batch the settler wrote (`ok`) or gave up on.
pub(crate) fn settled(spans: impl Iterator<Item = Span>, ok: bool) {
    let now = SystemTime::now();
    for s in spans {
        let error = (!ok).then(|| "not settled: the entry stays pending for recovery".into());
        s.end(now, error);
    }
}

/// The trace context of a new saga: its trace id is the parent's (so a saga started with
/// a `traceparent` joins the starter's trace) or else the saga's own id, which makes a
/// saga's trace findable by its id.
pub(crate) fn saga_traceparent(saga_uuid: u128, parent: Option<&str>) -> String {
    let span_id = context::new_span_id();
    let ctx = match parent.and_then(TraceContext::parse) {
        Some(p) => p.child(span_id),
        None => TraceContext {
            trace_id: saga_uuid.max(1),
            span_id,
            sampled: context::sample(saga_uuid, ratio()),
        },
    };
    ctx.traceparent()
}

/// What a written saga transition exports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transition<'a> {
    /// The saga's id.
    pub saga_id: &'a str,
    /// The saga definition's name.
    pub saga: &'a str,
    /// The saga's traceparent (the start span's context).
    pub traceparent: Option<&'a str>,
    /// The traceparent the saga was started with, on the start transition.
    pub started_under: Option<&'a str>,
    /// The event (`start`, `step_succeeded`, ...).
    pub event: &'a str,
    /// The step concerned.
    pub step: Option<&'a str>,
    /// State before and after.
    pub from: &'a str,
    /// State after.
    pub to: &'a str,
    /// Revision reached.
    pub rev: u64,
    /// When the transition was decided (ms).
    pub decided_ms: u64,
}

/// Exports a written saga transition; the start transition also exports the `saga
/// <name>` span whose id the saga's traceparent carries (the parent of every other
/// transition and of the steps' tasks).
pub(crate) fn saga_transition(t: Transition<'_>) {
    if !enabled() {
        return;
    }
    let Some(ctx) = t.traceparent.and_then(TraceContext::parse) else {
        return;
    };
    let now = SystemTime::now();
    let start = at_ms(t.decided_ms).min(now);
    if t.rev == 1 {
        let under = t.started_under.and_then(TraceContext::parse);
        Span {
            name: format!("saga {}", t.saga),
            kind: Kind::Internal,
            ctx,
            parent: under.map(|p| p.span_id),
            parent_remote: true,
            start,
            attrs: vec![
                ("taskstream.saga.id", t.saga_id.into()),
                ("taskstream.saga.name", t.saga.into()),
            ],
        }
        .end(now, None);
    }
    let mut s = Span::child_of(
        &ctx,
        false,
        format!("saga {} {}", t.saga, t.event),
        Kind::Internal,
        start,
    )
    .attr("taskstream.saga.id", t.saga_id)
    .attr("taskstream.saga.name", t.saga)
    .attr("taskstream.saga.event", t.event)
    .attr("taskstream.saga.from", t.from)
    .attr("taskstream.saga.to", t.to)
    .attr("taskstream.saga.rev", t.rev);
    if let Some(step) = t.step {
        s = s.attr("taskstream.saga.step", step);
    }
    let failed = t.from != t.to && matches!(t.to, "failed" | "rolled_back");
    s.end(now, failed.then(|| format!("saga {} {}", t.saga_id, t.to)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_export_off_the_traceparent_is_the_callers_or_a_new_sampled_one() {
        let (tp, span) = enqueue(Some("00-x".into()), "q", "t", "id", false);
        assert_eq!((tp.as_str(), span), ("00-x", None));
        let (tp, span) = enqueue(None, "q", "t", "id", false);
        assert!(span.is_none());
        let c = TraceContext::parse(&tp).unwrap();
        assert!(c.sampled);
        assert!(Attempt::start(Some(&tp), "q", "t", "id", 1, Some(1)).is_none());
    }

    #[test]
    fn a_saga_joins_its_starters_trace_or_takes_its_own_id() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = TraceContext::parse(&saga_traceparent(7, Some(parent))).unwrap();
        assert_eq!(c.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_ne!(c.span_id, 0x00f067aa0ba902b7);
        let own = TraceContext::parse(&saga_traceparent(0xabc, None)).unwrap();
        assert_eq!(own.trace_id, 0xabc);
        let junk = TraceContext::parse(&saga_traceparent(0xabc, Some("junk"))).unwrap();
        assert_eq!(junk.trace_id, 0xabc);
    }

    #[test]
    fn a_child_keeps_the_trace_and_the_sampling_and_names_its_parent() {
        let p = TraceContext {
            trace_id: 5,
            span_id: 9,
            sampled: false,
        };
        let s = Span::child_of(&p, true, "x".into(), Kind::Internal, SystemTime::now());
        assert_eq!(
            (s.ctx.trace_id, s.ctx.sampled, s.parent),
            (5, false, Some(9))
        );
        assert_ne!(s.ctx.span_id, 9);
    }
}
