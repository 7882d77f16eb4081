//! # taskstream
//!
//! Background work on Redis Streams: producers enqueue tasks to per-queue streams, worker
//! pools consume them through consumer groups with batched reads and atomic ACKs, orphaned
//! tasks of crashed workers are recovered, express tasks take a priority lane, and a saga
//! orchestrator runs multi-step workflows with compensation.
//!
//! Module map (one concept per file):
//! - [`keys`]: key naming (the hash-tagged key layout, a public contract).
//! - [`task`]: the task envelope and its wire format (a public contract).
//! - [`reply`]: the reply a task sends to its `reply_to` stream (a public contract).
//! - [`config`]: the TOML configuration and its validation.
//! - [`handler`]: the handler trait and registry.
//! - [`backoff`]: retry schedules (pure).
//! - [`metrics`]: every metric name.
//! - [`producer`]: enqueueing; [`worker`]: the [`Worker`] and its validating [`WorkerBuilder`].
//! - [`saga`]: saga definitions, the orchestrator and the saga client ([`saga::ops`]).
//! - [`inspect`]: the operator API (stats, dead letters, pause/resume/cancel signals).
//! - [`rdb`]: the broker — every Redis operation, one typed method each.
//! - `runbooks` (feature `http`): the runbooks, embedded and served as HTML at `/runbooks/<Alert>` by
//!   every process's HTTP server, because the alerts' `runbook_url` pointed at a repository
//!   that does not exist (a dead link for on-call; issue 12.5). Unauthenticated on purpose:
//!   a browser following an alert's link cannot send a bearer token.
//! - `mcp` (feature `http`): the MCP server, at `/mcp` on `taskstream serve` and on stdio
//!   (`taskstream mcp`), whose tools call the REST API's functions.
//!
//! - `dashboard` (feature `http`): the control plane's page, embedded (HTML, vanilla
//!   JavaScript and CSS compiled in), served by `taskstream serve` at `/` (issue 12.3).
//!
//! Features: `cli` (the binaries), `http` (the `/metrics` `/health` `/ready` `/runbooks` server),
//! `http-handler` (task types served by an HTTP endpoint); all on by default. A library-only
//! build is `default-features = false`.
#![deny(missing_docs)]

#[cfg(feature = "http")]
pub mod api;
pub mod backoff;
pub mod breaker;
#[cfg(feature = "cli")]
pub(crate) mod builtin;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
#[cfg(feature = "cli")]
pub(crate) mod collector;
pub mod config;
#[cfg(feature = "http")]
pub mod dashboard;
pub mod dlq;
pub mod error;
pub mod handler;
pub mod health;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "http-handler")]
pub mod http_handler;
pub mod inspect;
pub mod keylimit;
pub mod keys;
#[doc(hidden)]
pub mod local_redis;
pub mod lookup;
#[cfg(feature = "http")]
pub mod mcp;
pub mod metrics;
pub mod preflight;
pub mod producer;
pub mod rdb;
pub mod reply;
pub mod results;
pub(crate) mod routing;
#[cfg(feature = "http")]
pub mod runbooks;
pub mod saga;
pub(crate) mod scaling;
pub mod schedule;
pub mod signal;
pub mod signals;
pub mod stats;
pub mod task;
pub mod telemetry;
pub mod worker;

pub use error::{Error, Result};
pub use handler::{handler_fn, Handler, HandlerError, HandlerResult, Registry, TaskContext};
pub use worker::{Worker, WorkerBuilder};
