//! The worker builder: the way a Rust program embeds a worker.
//!
//! ```no_run
//! use taskstream::config::{QueueConfig, RedisConfig};
//! use taskstream::{handler_fn, TaskContext, Worker};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let worker = Worker::builder(RedisConfig {
//!     url: "redis://127.0.0.1:6379".into(),
//!     ..Default::default()
//! })
//! .queue(QueueConfig {
//!     name: "emails".into(),
//!     concurrency: 16,
//!     ..Default::default()
//! })
//! .handler(
//!     "send",
//!     handler_fn(|ctx: TaskContext| async move {
//!         let to: String = ctx.payload()?;
//!         Ok(serde_json::json!({ "sent_to": to }))
//!     }),
//! )
//! .build()?; // refuses an invalid setup with the problems `taskstream config check` reports
//! worker.run(tokio_util::sync::CancellationToken::new()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! `build` validates the whole setup exactly as the binary validates its configuration
//! file, so a setup that `config check` refuses is refused here too, as a
//! [`ConfigError`] naming each key and the fix — never a panic at start-up (the first
//! release underflowed on `concurrency = 4` with the default express reservation of 8).

use std::time::Duration;

use crate::config::{Config, ConfigError, QueueConfig, RedisConfig, WorkerConfig};
use crate::handler::{Handler, Registry};

use super::Worker;

/// Builds a [`Worker`]; see the module docs.
#[must_use = "a builder does nothing until .build()"]
pub struct WorkerBuilder {
    cfg: Config,
    registry: Registry,
    sagas: Option<Vec<crate::saga::definition::SagaDef>>,
    serve_http: bool,
}

impl WorkerBuilder {
    pub(crate) fn new(redis: RedisConfig) -> Self {
        WorkerBuilder {
            cfg: Config {
                redis,
                http: crate::config::HttpConfig {
                    listen: String::new(),
                    ..Default::default()
                },
                ..Default::default()
            },
            registry: Registry::new(),
            sagas: None,
            serve_http: false,
        }
    }

    pub(crate) fn from_config(cfg: Config) -> Self {
        let serve_http = !cfg.http.listen.is_empty();
        WorkerBuilder {
            cfg,
            registry: Registry::new(),
            sagas: None,
            serve_http,
        }
    }

    /// Adds a queue to consume.
    pub fn queue(mut self, q: QueueConfig) -> Self {
        self.cfg.queues.push(q);
        self
    }

    /// Process settings (block time, batch sizes, heartbeat and recovery timing, grace).
    pub fn settings(mut self, w: WorkerConfig) -> Self {
        self.cfg.worker = w;
        self
    }

    /// Longest time running tasks may finish after shutdown begins.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.cfg.worker.shutdown_grace_ms = grace.as_millis() as u64;
        self
    }

    /// Registers the handler of `task_type`.
    pub fn handler(mut self, task_type: impl Into<String>, handler: impl Handler) -> Self {
        self.registry.register(task_type, handler);
        self
    }

    /// Uses `registry` for the handlers (replacing those registered so far).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Serves `/metrics` (Prometheus), `/health` and `/ready` on `listen` (`host:port`)
    /// while the worker runs, as the binary does with `[http] listen`.
    #[cfg(feature = "http")]
    pub fn http(mut self, listen: impl Into<String>) -> Self {
        self.cfg.http.listen = listen.into();
        self.serve_http = true;
        self
    }

    /// Runs a saga orchestrator for the sagas of `defs` in the same process, as the binary
    /// does with `[worker] orchestrator = true`.
    pub fn orchestrator(mut self, defs: Vec<crate::saga::definition::SagaDef>) -> Self {
        self.sagas = Some(defs);
        self
    }

    /// Checks the setup and builds the worker.
    pub fn build(mut self) -> Result<Worker, ConfigError> {
        if self.cfg.queues.is_empty() {
            self.cfg.queues.push(QueueConfig {
                name: "default".into(),
                ..Default::default()
            });
        }
        self.cfg.validate("worker builder")?;
        let mut w = Worker::new(self.cfg, self.registry);
        w.sagas = self.sagas;
        w.serve_http = self.serve_http;
        Ok(w)
    }
}
