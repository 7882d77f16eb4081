//! The handler API: what a task type's code implements, and the registry the worker looks
//! handlers up in.
//!
//! A handler returns `Ok(json)` on success (the JSON is the task's result, passed to a saga
//! as the step's output), or a [`HandlerError`] that says whether trying again could help.
//! Panics inside a handler are caught by the worker and treated as retryable failures.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::keys::Lane;
use crate::task::Task;

/// What a handler returns.
pub type HandlerResult = Result<serde_json::Value, HandlerError>;

/// A failed handler run.
#[derive(Debug, Clone, PartialEq)]
pub enum HandlerError {
    /// Trying again may succeed (timeouts, 5xx, connection errors).
    Retryable {
        /// What went wrong.
        message: String,
        /// Earliest time to try again, if the handler knows (e.g. `Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Trying again cannot help (bad input, 4xx): the task goes to the dead-letter stream.
    Permanent {
        /// What went wrong.
        message: String,
    },
}

impl HandlerError {
    /// A retryable failure.
    pub fn retryable(message: impl Into<String>) -> Self {
        HandlerError::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }

    /// A retryable failure that should not be retried before `after`.
    pub fn retry_after(message: impl Into<String>, after: Duration) -> Self {
        HandlerError::Retryable {
            message: message.into(),
            retry_after: Some(after),
        }
    }

    /// A permanent failure.
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError::Permanent {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            HandlerError::Retryable { message, .. } | HandlerError::Permanent { message } => {
                message
            }
        }
    }

    /// True for [`HandlerError::Retryable`].
    pub fn is_retryable(&self) -> bool {
        matches!(self, HandlerError::Retryable { .. })
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerError::Retryable { message, .. } => write!(f, "retryable: {message}"),
            HandlerError::Permanent { message } => write!(f, "permanent: {message}"),
        }
    }
}

impl std::error::Error for HandlerError {}

struct ContextInner {
    task: Task,
    queue: String,
    lane: Lane,
    entry_id: String,
    attempt: u32,
    max_attempts: u32,
    cancel: CancellationToken,
    /// The run's own trace context when spans are exported (the `execute` span), set
    /// once the run starts; see [`TaskContext::traceparent`].
    run_trace: std::sync::OnceLock<String>,
    /// Where [`TaskContext::progress`] reports go (set by the worker when the queue keeps
    /// results).
    progress: std::sync::OnceLock<ProgressSink>,
}

/// Takes a progress report's JSON text; false when it was dropped.
pub(crate) type ProgressSink = Arc<dyn Fn(String) -> bool + Send + Sync>;

/// One task execution as a handler sees it. Cheap to clone.
#[derive(Clone)]
pub struct TaskContext(Arc<ContextInner>);

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The payload is left out on purpose: it may hold personal data.
        f.debug_struct("TaskContext")
            .field("id", &self.0.task.id)
            .field("queue", &self.0.queue)
            .field("type", &self.0.task.task_type)
            .field("attempt", &self.0.attempt)
            .finish()
    }
}

impl TaskContext {
    /// Builds a context (the worker does this; public for handler unit tests).
    pub fn new(
        task: Task,
        queue: impl Into<String>,
        lane: Lane,
        entry_id: impl Into<String>,
        attempt: u32,
        max_attempts: u32,
        cancel: CancellationToken,
    ) -> Self {
        TaskContext(Arc::new(ContextInner {
            task,
            queue: queue.into(),
            lane,
            entry_id: entry_id.into(),
            attempt,
            max_attempts,
            cancel,
            run_trace: std::sync::OnceLock::new(),
            progress: std::sync::OnceLock::new(),
        }))
    }

    /// Sets where progress reports go (the worker, on a queue that keeps results).
    pub(crate) fn set_progress(&self, sink: ProgressSink) {
        let _ = self.0.progress.set(sink);
    }

    /// Reports the run's progress (any JSON: `{"done": 40, "of": 100}`), kept as the
    /// newest value in the task's record and shown by `taskstream task show` and the API
    /// (see [`crate::results`]). Returns at once: the report rides the worker's next
    /// settlement round trip. False when it was not kept: the queue keeps no results
    /// (`result_ttl_secs` unset), or too many reports wait to be written.
    pub fn progress(&self, value: serde_json::Value) -> bool {
        match self.0.progress.get() {
            Some(sink) => sink(value.to_string()),
            None => false,
        }
    }

    /// Sets the run's trace context (the worker, when it opens the `execute` span).
    pub(crate) fn set_run_traceparent(&self, tp: String) {
        let _ = self.0.run_trace.set(tp);
    }

    /// Task id, stable across retries.
    pub fn id(&self) -> &str {
        &self.0.task.id
    }
    /// Task type.
    pub fn task_type(&self) -> &str {
        &self.0.task.task_type
    }
    /// Queue name.
    pub fn queue(&self) -> &str {
        &self.0.queue
    }
    /// Lane the task came through.
    pub fn lane(&self) -> Lane {
        self.0.lane
    }
    /// Stream entry id of this delivery.
    pub fn entry_id(&self) -> &str {
        &self.0.entry_id
    }
    /// 1-based attempt number of this execution: handler failures so far + 1. A run cut
    /// off by a crash or a shutdown does not count, so a re-run after one has the same
    /// attempt number; deduplicate on [`TaskContext::id`].
    pub fn attempt(&self) -> u32 {
        self.0.attempt
    }
    /// Attempts allowed in all.
    pub fn max_attempts(&self) -> u32 {
        self.0.max_attempts
    }
    /// The payload as JSON text.
    pub fn payload_str(&self) -> &str {
        &self.0.task.payload
    }
    /// The payload decoded into `T`; a decoding error is a permanent failure.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        // serde's message quotes the offending value; payloads may hold personal data, so
        // only the kind of error and its position are reported.
        serde_json::from_str(&self.0.task.payload).map_err(|e| {
            HandlerError::permanent(format!(
                "payload does not fit the handler: {} error at line {} column {}",
                match e.classify() {
                    serde_json::error::Category::Io => "I/O",
                    serde_json::error::Category::Syntax => "syntax",
                    serde_json::error::Category::Data => "type/shape",
                    serde_json::error::Category::Eof => "truncation",
                },
                e.line(),
                e.column()
            ))
        })
    }
    /// The whole task envelope.
    pub fn task(&self) -> &Task {
        &self.0.task
    }
    /// Saga id, when the task is a saga step.
    pub fn saga_id(&self) -> Option<&str> {
        self.0.task.saga_id.as_deref()
    }
    /// The W3C traceparent to pass on from this run: the `execute` span's when spans are
    /// exported (`[tracing] otlp_endpoint`, see [`crate::telemetry`]), so what the handler
    /// calls hangs under the run; otherwise the producer's, as the task carries it.
    pub fn traceparent(&self) -> Option<&str> {
        self.0
            .run_trace
            .get()
            .map(String::as_str)
            .or(self.0.task.traceparent.as_deref())
    }
    /// Unix ms of the original enqueue.
    pub fn enqueued_at(&self) -> u64 {
        self.0.task.enqueued_at
    }
    /// Fires when the task is cancelled or the worker gives up on it (timeout, shutdown
    /// past the grace period). Long handlers should watch it.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.0.cancel
    }
}

/// The code behind a task type.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs one task.
    async fn handle(&self, ctx: TaskContext) -> HandlerResult;
}

/// A handler made from an async closure.
pub struct FnHandler<F>(F);

#[async_trait::async_trait]
impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    async fn handle(&self, ctx: TaskContext) -> HandlerResult {
        (self.0)(ctx).await
    }
}

/// Wraps an async closure as a [`Handler`].
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    FnHandler(f)
}

/// Task type → handler.
#[derive(Clone, Default)]
pub struct Registry {
    map: HashMap<String, Arc<dyn Handler>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for `task_type`, replacing any earlier one.
    pub fn register(&mut self, task_type: impl Into<String>, handler: impl Handler) -> &mut Self {
        self.map.insert(task_type.into(), Arc::new(handler));
        self
    }

    /// Registers an already shared handler.
    pub fn register_arc(
        &mut self,
        task_type: impl Into<String>,
        handler: Arc<dyn Handler>,
    ) -> &mut Self {
        self.map.insert(task_type.into(), handler);
        self
    }

    /// The handler of `task_type`.
    pub fn get(&self, task_type: &str) -> Option<&Arc<dyn Handler>> {
        self.map.get(task_type)
    }

    /// Registered types, sorted.
    pub fn types(&self) -> Vec<String> {
        let mut v: Vec<_> = self.map.keys().cloned().collect();
        v.sort();
        v
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
