//! Configuration: a TOML file plus `TASKSTREAM_*` environment overrides.
//!
//! Loading never panics. A file that does not parse, has an unknown key (typos are
//! rejected, not ignored) or a value out of range yields a [`ConfigError`] that lists
//! every problem as `file: key: reason`, which `taskstream config check FILE` prints.
//! Validation is pure (no I/O) so it is unit-tested without Redis.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;

pub mod api;
pub mod sagas;
pub mod trace;
pub use api::{ApiConfig, ApiRole, ApiToken};
pub use sagas::{OrchestratorConfig, SagaDefToml};
pub use trace::TracingConfig;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Redis connection.
    pub redis: RedisConfig,
    /// Worker process settings.
    pub worker: WorkerConfig,
    /// Producer settings.
    pub producer: ProducerConfig,
    /// HTTP server (/metrics, /health, /ready).
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
    /// Queues this process works on.
    pub queues: Vec<QueueConfig>,
    /// HTTP handlers: task types served by POSTing to a URL.
    pub http_handlers: Vec<HttpHandlerConfig>,
    /// Saga definitions (`[[sagas]]`, see [`sagas`]).
    pub sagas: Vec<SagaDefToml>,
    /// Saga orchestrator settings (`[orchestrator]`).
    pub orchestrator: OrchestratorConfig,
    /// The control plane of `taskstream serve` (`[api]`, see [`api`]).
    pub api: ApiConfig,
    /// Span export over OTLP (`[tracing]`, see [`trace`]); off unless an endpoint is set.
    pub tracing: TracingConfig,
    /// Periodic tasks (`[[schedules]]`, see [`crate::schedule`]), written to Redis by
    /// every worker that starts with them.
    pub schedules: Vec<crate::schedule::ScheduleDef>,
    /// Whether this worker runs the scheduler (`[scheduler]`).
    pub scheduler: SchedulerConfig,
    /// Circuit breakers per downstream (`[[breakers]]`, see [`crate::breaker`]).
    pub breakers: Vec<crate::breaker::BreakerConfig>,
}

/// The `[scheduler]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Run the scheduler loop in `taskstream worker` (default true). Any number of
    /// workers may run it: each tick still fires once.
    pub enabled: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { enabled: true }
    }
}

/// `redis.url` when none is given.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Redis connection settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db` or `rediss://` for TLS.
    pub url: String,
    /// Replicas that must have each enqueue and each settle before it counts as done
    /// (`WAIT`); 0 (the default) waits for none. See "Durability across failover".
    pub wait_replicas: u32,
    /// How long a write waits for `wait_replicas`, in ms; past it the write is reported as
    /// not replicated ([`crate::Error::NotReplicated`]).
    pub wait_timeout_ms: u64,
    /// Seed nodes of a Redis Cluster (`redis://host:port`, or `rediss://`), instead of
    /// `url`: any reachable one gives the slot map. User and password come from the first.
    pub cluster_nodes: Vec<String>,
    /// Redis Sentinels (`redis://host:port`, or `rediss://`) watching the master named
    /// `sentinel_master`, instead of `url`: the master is whichever node they name, and a
    /// failover is followed (see `rdb::sentinel`). The URLs' user and password (from the
    /// first) authenticate to the sentinels, and to the data nodes unless
    /// `master_username` / `master_password` are set.
    pub sentinels: Vec<String>,
    /// The master name the sentinels monitor (`sentinel monitor <name> …`), with `sentinels`.
    pub sentinel_master: Option<String>,
    /// With `sentinels`: the ACL user of the data nodes, when it is not the sentinel URLs'.
    pub master_username: Option<String>,
    /// With `sentinels`: the password of the data nodes, when it is not the sentinel URLs'.
    pub master_password: Option<String>,
    /// Time limit for one (non-blocking) command's reply, in ms.
    pub response_timeout_ms: u64,
    /// Time limit for establishing a connection, in ms.
    pub connect_timeout_ms: u64,
    /// What to do when the server fails a preflight check: "warn" or "refuse".
    pub preflight: PreflightMode,
    /// PEM file of the CA(s) that sign the server's certificate (`rediss://` only); when
    /// set, only these are trusted instead of the bundled web roots.
    pub tls_ca_file: Option<String>,
    /// PEM file of the client certificate chain for mutual TLS (with `tls_key_file`).
    pub tls_cert_file: Option<String>,
    /// PEM file of the client certificate's private key (with `tls_cert_file`).
    pub tls_key_file: Option<String>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: DEFAULT_REDIS_URL.into(),
            cluster_nodes: Vec::new(),
            sentinels: Vec::new(),
            sentinel_master: None,
            master_username: None,
            master_password: None,
            wait_replicas: 0,
            wait_timeout_ms: 1_000,
            response_timeout_ms: 2_000,
            connect_timeout_ms: 2_000,
            preflight: PreflightMode::Warn,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// Preflight policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PreflightMode {
    /// Log a warning and carry on.
    Warn,
    /// Refuse to start.
    Refuse,
}

/// Worker process settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Consumer name; default `<hostname>-<pid>-<random>`. Must be unique per process.
    pub consumer_name: Option<String>,
    /// How long one XREADGROUP blocks waiting for work, in ms.
    pub block_ms: u64,
    /// Most entries one XREADGROUP fetches.
    pub read_count: usize,
    /// How long in-flight tasks may run after SIGTERM before the process exits, in ms.
    pub shutdown_grace_ms: u64,
    /// Heartbeat period, in ms.
    pub heartbeat_interval_ms: u64,
    /// A consumer whose heartbeat is older than this is dead, in ms.
    pub heartbeat_lapse_ms: u64,
    /// Period of the recovery loop, in ms.
    pub recovery_interval_ms: u64,
    /// Safety net: entries idle longer than this are claimed even if their owner's
    /// heartbeat looks alive (owners that never heartbeat), in ms.
    pub min_idle_ms: u64,
    /// A task delivered this many times without completing is poison: dead-lettered.
    pub max_deliveries: u32,
    /// Period of the scheduled-task forwarder, in ms.
    pub forward_interval_ms: u64,
    /// Most completions one ACK round trip carries.
    pub ack_batch: usize,
    /// Register the `builtin.*` handlers (noop, echo, sleep, record) in the binary.
    pub builtin_handlers: bool,
    /// Period of the collector that samples queue gauges from Redis, in ms.
    pub collect_interval_ms: u64,
    /// Also run a saga orchestrator in this worker process (several may run at once).
    pub orchestrator: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            consumer_name: None,
            block_ms: 1_000,
            read_count: 256,
            shutdown_grace_ms: 30_000,
            heartbeat_interval_ms: 500,
            heartbeat_lapse_ms: 1_500,
            recovery_interval_ms: 250,
            min_idle_ms: 60_000,
            max_deliveries: 5,
            forward_interval_ms: 100,
            ack_batch: 512,
            builtin_handlers: false,
            collect_interval_ms: 5_000,
            orchestrator: false,
        }
    }
}

/// Producer settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducerConfig {
    /// Largest payload accepted, in bytes.
    pub max_payload_bytes: usize,
    /// How long an idempotency key dedupes repeated enqueues, in seconds.
    pub idempotency_window_secs: u64,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            max_payload_bytes: 1 << 20,
            idempotency_window_secs: 86_400,
        }
    }
}

/// HTTP server settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address; empty disables the server.
    pub listen: String,
    /// A connection that has not sent a complete request head within this many ms is
    /// closed (slow or half-sent requests, idle connections), in ms.
    pub header_read_timeout_ms: u64,
    /// Most connections open at once; one more closes the oldest.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9464".into(),
            header_read_timeout_ms: 5_000,
            max_connections: 64,
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// "text" or "json".
    pub format: LogFormat,
    /// Filter in `RUST_LOG` syntax, e.g. "info" or "taskstream=debug".
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One queue.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Queue name (`[A-Za-z0-9_.-]`, at most 64).
    pub name: String,
    /// Most tasks of this queue running at once in this process.
    pub concurrency: usize,
    /// Slots reserved for express tasks (part of `concurrency`, never used by bulk work).
    /// Left out of a file, it is derived from `concurrency` ([`default_express_concurrency`]),
    /// so `concurrency = 8` or less is valid on its own (issue 15).
    pub express_concurrency: usize,
    /// Attempts in all before a failing task is dead-lettered.
    pub max_attempts: u32,
    /// Handler time limit, in ms.
    pub timeout_ms: u64,
    /// First retry delay, in ms.
    pub backoff_base_ms: u64,
    /// Longest retry delay, in ms.
    pub backoff_cap_ms: u64,
    /// The consumer group this process reads with (default `taskstream`).
    pub group: String,
    /// Extra consumer groups that each receive every task of the queue (fan-out).
    pub fanout_groups: Vec<String>,
    /// Per task type overrides of attempts, timeout, backoff and rate limits.
    pub types: BTreeMap<String, TypeOverride>,
    /// Worker pool name: this process reads the pool's own streams and serves only the
    /// task types in `serves` (see "Routing task types to pools" in the README).
    pub pool: Option<String>,
    /// Task types this pool serves; producers route them to the pool's streams.
    pub serves: Vec<String>,
    /// Latency objective: 95th percentile wait (enqueue → start) in ms. With it the
    /// worker adapts its concurrency between `min_concurrency` and `concurrency`, and
    /// exports the replicas the queue needs.
    pub sla_p95_wait_ms: Option<u64>,
    /// Lowest concurrency the SLA controller may set (default: express_concurrency + 1).
    pub min_concurrency: Option<usize>,
    /// Partitions the queue is split into, each under its own hash tag so they spread over
    /// the masters of a Redis Cluster (1: the queue's keys as they always were). Every
    /// worker reads every partition; producers pick one round-robin, or by partition key.
    pub partitions: u32,
    /// Keep each task's state, attempts, timestamps, last error and result for this many
    /// seconds after its last change (`taskstream task show`, the API, and
    /// `Producer::enqueue_and_wait`; see [`crate::results`]). Off by default: the hot path
    /// then writes nothing per task beyond its ACK.
    pub result_ttl_secs: Option<u64>,
    /// Longest result (and progress report) a record keeps, in bytes of JSON; a larger
    /// one is left out and the record says why. Default 64 KiB.
    pub max_result_bytes: usize,
    /// Most tasks of one group key (the `group_key` wire field) running at once across
    /// all replicas; a task over the cap waits in Redis, holding no worker slot, and the
    /// keys take turns (see [`crate::keylimit`]). Tasks without a key are not limited.
    /// A type's own `max_per_key` overrides it for that type.
    pub max_per_key: Option<u32>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            name: String::new(),
            concurrency: 64,
            express_concurrency: 8,
            max_attempts: 5,
            timeout_ms: 30_000,
            backoff_base_ms: 1_000,
            backoff_cap_ms: 300_000,
            group: crate::keys::DEFAULT_GROUP.into(),
            fanout_groups: Vec::new(),
            types: BTreeMap::new(),
            pool: None,
            serves: Vec::new(),
            sla_p95_wait_ms: None,
            min_concurrency: None,
            partitions: 1,
            result_ttl_secs: None,
            max_result_bytes: 64 * 1024,
            max_per_key: None,
        }
    }
}

/// The express reservation a queue gets when its file does not set one: an eighth of
/// `concurrency` (8 of the default 64), at least 1, and 0 for a single-slot queue (whose
/// one slot serves either lane).
pub fn default_express_concurrency(concurrency: usize) -> usize {
    if concurrency <= 1 {
        0
    } else {
        (concurrency / 8).max(1)
    }
}

/// Most slots one queue may have in one process (`concurrency`, `min_concurrency`).
pub const MAX_CONCURRENCY: usize = 100_000;

/// Longest `result_ttl_secs` (30 days).
pub const MAX_RESULT_TTL_SECS: u64 = 30 * 24 * 3_600;

/// Largest `max_per_key`.
pub const MAX_PER_KEY: u32 = 10_000;

/// Largest `max_result_bytes` (16 MiB).
pub const MAX_RESULT_BYTES: usize = 16 * 1024 * 1024;

/// Longest time any `*_ms` setting may name: 7 days. Longer values overflow timers or
/// make no operational sense (issue 9: `u64::MAX` passed the check).
pub const MAX_MS: u64 = 7 * 24 * 3_600 * 1_000;

/// Overrides for one task type.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TypeOverride {
    /// Attempts in all.
    pub max_attempts: Option<u32>,
    /// Handler time limit, in ms.
    pub timeout_ms: Option<u64>,
    /// First retry delay, in ms.
    pub backoff_base_ms: Option<u64>,
    /// Longest retry delay, in ms.
    pub backoff_cap_ms: Option<u64>,
    /// Most tasks of this type started per second across all replicas (GCRA in Redis).
    /// Throttled tasks wait for their turn; they are not failed.
    pub rate_per_sec: Option<f64>,
    /// Tasks that may start at once above the rate (default 1).
    pub burst: Option<u32>,
    /// Most tasks of this type with one group key running at once across all replicas
    /// (the type's own limit, counted apart from the queue's `max_per_key`).
    pub max_per_key: Option<u32>,
}

/// Effective retry policy of a task type in a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all.
    pub max_attempts: u32,
    /// Handler time limit.
    pub timeout: Duration,
    /// Retry delays.
    pub backoff: Backoff,
}

impl QueueConfig {
    /// The policy of `task_type`: the queue's, with the type's overrides on top.
    pub fn policy(&self, task_type: &str) -> RetryPolicy {
        let o = self.types.get(task_type);
        let pick = |v: Option<u64>, d: u64| v.unwrap_or(d);
        RetryPolicy {
            max_attempts: o.and_then(|o| o.max_attempts).unwrap_or(self.max_attempts),
            timeout: Duration::from_millis(pick(o.and_then(|o| o.timeout_ms), self.timeout_ms)),
            backoff: Backoff {
                base: Duration::from_millis(pick(
                    o.and_then(|o| o.backoff_base_ms),
                    self.backoff_base_ms,
                )),
                cap: Duration::from_millis(pick(
                    o.and_then(|o| o.backoff_cap_ms),
                    self.backoff_cap_ms,
                )),
            },
        }
    }

    /// All groups of the queue: the read group, then the fan-out groups.
    pub fn all_groups(&self) -> Vec<String> {
        let mut g = vec![crate::keys::DEFAULT_GROUP.to_string()];
        for x in self
            .fanout_groups
            .iter()
            .chain(std::iter::once(&self.group))
        {
            if !g.contains(x) {
                g.push(x.clone());
            }
        }
        g
    }

    /// True when more than one group reads the queue: entries are then trimmed behind the
    /// slowest group instead of deleted on ACK.
    pub fn is_fanout(&self) -> bool {
        self.all_groups().len() > 1
    }
}

/// An HTTP handler: task type `task_type` is served by POSTing to `url`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHandlerConfig {
    /// Task type served.
    #[serde(rename = "type")]
    pub task_type: String,
    /// URL to POST to.
    pub url: String,
    /// Request time limit in ms (default: the queue's task timeout).
    pub timeout_ms: Option<u64>,
    /// Largest 2xx response body accepted, in bytes (default
    /// [`DEFAULT_MAX_RESPONSE_BYTES`], 1 MiB). A larger body fails the attempt (retryably,
    /// like a timeout) as soon as it is announced or read past the limit; it is never
    /// buffered whole.
    pub max_response_bytes: Option<usize>,
    /// Extra request headers (e.g. Authorization). Values are never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `max_response_bytes` of an HTTP handler that does not set it: 1 MiB, the same as the
/// default payload limit (`producer.max_payload_bytes`).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Largest `max_response_bytes`: 512 MiB, Redis' string limit (the body is the task's
/// result, which a saga step or a reply stream stores in Redis).
pub const MAX_RESPONSE_BYTES_LIMIT: usize = 512 << 20;

impl HttpHandlerConfig {
    /// The response body limit in effect, or why the configured one is refused. Shared by
    /// `config check` (`Config::validate`) and the worker (`HttpHandler::new`), so the
    /// check refuses exactly what the worker refuses.
    pub fn response_limit(&self) -> Result<usize, String> {
        match self.max_response_bytes {
            None => Ok(DEFAULT_MAX_RESPONSE_BYTES),
            Some(n) if n == 0 || n > MAX_RESPONSE_BYTES_LIMIT => Err(format!(
                "must be between 1 and {MAX_RESPONSE_BYTES_LIMIT} (Redis' string limit), got {n}"
            )),
            Some(n) => Ok(n),
        }
    }
}

impl std::fmt::Debug for HttpHandlerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values are often credentials: show only their names.
        f.debug_struct("HttpHandlerConfig")
            .field("task_type", &self.task_type)
            .field("url", &self.url)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// One entry per problem.
    pub problems: Vec<Problem>,
}

/// One configuration problem: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (or "environment").
    pub file: String,
    /// The key, dotted (`queues[0].concurrency`).
    pub key: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.key, self.reason)
    }
}

impl Config {
    /// Reads, parses, applies environment overrides and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![Problem {
                file: file.clone(),
                key: "-".into(),
                reason: format!("cannot read the file: {e}"),
            }],
        })?;
        let mut cfg = Config::parse(&file, &text)?;
        cfg.apply_env(|k| std::env::var(k).ok())
            .map_err(|problems| ConfigError { problems })?;
        cfg.validate(&file)?;
        cfg.check_files(&file)?;
        Ok(cfg)
    }

    /// Built-in defaults plus environment overrides, validated (no file).
    pub fn from_env() -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        cfg.apply_env(|k| std::env::var(k).ok())
            .map_err(|problems| ConfigError { problems })?;
        cfg.validate("environment")?;
        cfg.check_files("environment")?;
        Ok(cfg)
    }

    /// The checks that read files (the TLS certificates): the worker would refuse an
    /// unreadable one, so `config check` does too.
    fn check_files(&self, file: &str) -> Result<(), ConfigError> {
        crate::rdb::tls_certificates(&self.redis)
            .map(|_| ())
            .map_err(|e| {
                let text = e.to_string();
                let key = ["tls_ca_file", "tls_cert_file", "tls_key_file"]
                    .into_iter()
                    .find(|k| text.starts_with(&format!("redis.{k} ")))
                    .map(|k| format!("redis.{k}"))
                    .unwrap_or_else(|| "redis.tls_cert_file".into());
                ConfigError {
                    problems: vec![Problem {
                        file: file.into(),
                        key,
                        reason: text,
                    }],
                }
            })
    }

    /// Parses TOML text; `file` names it in errors. A queue without
    /// `express_concurrency` gets [`default_express_concurrency`] of its `concurrency`.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let mut cfg = Config::parse_raw(file, text)?;
        let table: toml::Table = toml::from_str(text).unwrap_or_default();
        let given: Vec<bool> = table
            .get("queues")
            .and_then(toml::Value::as_array)
            .map(|qs| {
                qs.iter()
                    .map(|q| q.get("express_concurrency").is_some())
                    .collect()
            })
            .unwrap_or_default();
        for (i, q) in cfg.queues.iter_mut().enumerate() {
            if !given.get(i).copied().unwrap_or(false) {
                q.express_concurrency = default_express_concurrency(q.concurrency);
            }
        }
        Ok(cfg)
    }

    fn parse_raw(file: &str, text: &str) -> Result<Config, ConfigError> {
        toml::from_str::<Config>(text).map_err(|e| {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            let key = key_at(text, e.span().map(|s| s.start));
            ConfigError {
                problems: vec![Problem {
                    file: format!("{file}:{line}:{col}"),
                    key,
                    reason: e.message().trim().to_string(),
                }],
            }
        })
    }

    /// Applies `TASKSTREAM_*` overrides read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), Vec<Problem>> {
        let mut problems = Vec::new();
        let env_problem = |key: &str, reason: String| Problem {
            file: "environment".into(),
            key: key.into(),
            reason,
        };
        if let Some(v) = get("TASKSTREAM_REDIS_URL") {
            self.redis.url = v;
        }
        if let Some(v) = get("TASKSTREAM_REDIS_WAIT_REPLICAS") {
            match v.parse() {
                Ok(n) => self.redis.wait_replicas = n,
                Err(_) => problems.push(env_problem(
                    "TASKSTREAM_REDIS_WAIT_REPLICAS",
                    format!("must be a number of replicas, got {v:?}"),
                )),
            }
        }
        if let Some(v) = get("TASKSTREAM_REDIS_CLUSTER_NODES") {
            self.redis.cluster_nodes = v
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(v) = get("TASKSTREAM_REDIS_SENTINELS") {
            self.redis.sentinels = v
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(v) = get("TASKSTREAM_REDIS_SENTINEL_MASTER") {
            self.redis.sentinel_master = Some(v);
        }
        if let Some(v) = get("TASKSTREAM_REDIS_MASTER_USERNAME") {
            self.redis.master_username = Some(v);
        }
        if let Some(v) = get("TASKSTREAM_REDIS_MASTER_PASSWORD") {
            self.redis.master_password = Some(v);
        }
        if let Some(v) = get("TASKSTREAM_HTTP_LISTEN") {
            self.http.listen = v;
        }
        if let Some(v) = get("TASKSTREAM_API_LISTEN") {
            self.api.listen = v;
        }
        if let Some(v) = get("TASKSTREAM_TRACING_OTLP_ENDPOINT") {
            self.tracing.otlp_endpoint = Some(v);
        }
        if let Some(v) = get("TASKSTREAM_LOG_LEVEL") {
            self.log.level = v;
        }
        if let Some(v) = get("TASKSTREAM_REDIS_TLS_CA_FILE") {
            self.redis.tls_ca_file = Some(v);
        }
        if let Some(v) = get("TASKSTREAM_REDIS_TLS_CERT_FILE") {
            self.redis.tls_cert_file = Some(v);
        }
        if let Some(v) = get("TASKSTREAM_REDIS_TLS_KEY_FILE") {
            self.redis.tls_key_file = Some(v);
        }
        if let Some(v) = get("TASKSTREAM_CONSUMER_NAME") {
            self.worker.consumer_name = Some(v);
        }
        if let Some(v) = get("TASKSTREAM_LOG_FORMAT") {
            match v.as_str() {
                "text" => self.log.format = LogFormat::Text,
                "json" => self.log.format = LogFormat::Json,
                _ => problems.push(env_problem(
                    "TASKSTREAM_LOG_FORMAT",
                    format!("must be \"text\" or \"json\", got {v:?}"),
                )),
            }
        }
        if let Some(v) = get("TASKSTREAM_PREFLIGHT") {
            match v.as_str() {
                "warn" => self.redis.preflight = PreflightMode::Warn,
                "refuse" => self.redis.preflight = PreflightMode::Refuse,
                _ => problems.push(env_problem(
                    "TASKSTREAM_PREFLIGHT",
                    format!("must be \"warn\" or \"refuse\", got {v:?}"),
                )),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Checks every value; collects all problems instead of stopping at the first.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        let mut bad = |key: String, reason: String| {
            p.push(Problem {
                file: file.into(),
                key,
                reason,
            })
        };
        let url_scheme_ok = |u: &str| {
            u.starts_with("redis://")
                || u.starts_with("rediss://")
                || u.starts_with("unix://")
                || u.starts_with("redis+unix://")
        };
        let r = &self.redis;
        let sentinel_mode = !r.sentinels.is_empty() || r.sentinel_master.is_some();
        if !sentinel_mode {
            for (key, v) in [
                ("redis.master_username", &r.master_username),
                ("redis.master_password", &r.master_password),
            ] {
                if v.is_some() {
                    bad(
                        key.into(),
                        "is only used with redis.sentinels (the data nodes' credentials); with redis.url or redis.cluster_nodes put them in the URL".into(),
                    );
                }
            }
        }
        if sentinel_mode {
            for p in sentinel_problems(r) {
                bad(p.0, p.1);
            }
        } else if !self.redis.cluster_nodes.is_empty() {
            if self.redis.url != DEFAULT_REDIS_URL {
                bad(
                    "redis.cluster_nodes".into(),
                    "set either redis.url (one server) or redis.cluster_nodes (a Redis Cluster), not both".into(),
                );
            }
            for (i, n) in self.redis.cluster_nodes.iter().enumerate() {
                if !(n.starts_with("redis://") || n.starts_with("rediss://"))
                    || redis::Client::open(n.as_str()).is_err()
                {
                    bad(
                        format!("redis.cluster_nodes[{i}]"),
                        format!(
                            "must be a redis:// or rediss:// URL of a cluster node, got {:?}",
                            redact_url(n)
                        ),
                    );
                }
            }
            let tls = self
                .redis
                .cluster_nodes
                .iter()
                .filter(|n| n.starts_with("rediss://"))
                .count();
            if tls != 0 && tls != self.redis.cluster_nodes.len() {
                bad(
                    "redis.cluster_nodes".into(),
                    "mixes redis:// and rediss:// nodes; a cluster is reached with TLS or without it".into(),
                );
            }
        } else if !url_scheme_ok(&self.redis.url) {
            bad(
                "redis.url".into(),
                format!(
                    "must start with redis://, rediss:// or unix://, got {:?}",
                    redact_url(&self.redis.url)
                ),
            );
        } else if redis::Client::open(self.redis.url.as_str()).is_err() {
            bad(
                "redis.url".into(),
                format!(
                    "is not a valid Redis URL: {:?}",
                    redact_url(&self.redis.url)
                ),
            );
        }
        let tls_set =
            r.tls_ca_file.is_some() || r.tls_cert_file.is_some() || r.tls_key_file.is_some();
        let (tls_url, tls_key) = if sentinel_mode {
            (
                r.sentinels.iter().all(|n| n.starts_with("rediss://")),
                "redis.sentinels",
            )
        } else if r.cluster_nodes.is_empty() {
            (r.url.starts_with("rediss://"), "redis.url")
        } else {
            (
                r.cluster_nodes.iter().all(|n| n.starts_with("rediss://")),
                "redis.cluster_nodes",
            )
        };
        if tls_set && !tls_url {
            bad(
                tls_key.into(),
                "must be rediss:// when redis.tls_ca_file, tls_cert_file or tls_key_file is set"
                    .into(),
            );
        }
        if r.tls_cert_file.is_some() != r.tls_key_file.is_some() {
            let missing = if r.tls_cert_file.is_some() {
                "redis.tls_key_file"
            } else {
                "redis.tls_cert_file"
            };
            bad(
                missing.into(),
                "redis.tls_cert_file and redis.tls_key_file must be set together (mutual TLS)"
                    .into(),
            );
        }
        for (key, v) in [
            ("redis.tls_ca_file", &r.tls_ca_file),
            ("redis.tls_cert_file", &r.tls_cert_file),
            ("redis.tls_key_file", &r.tls_key_file),
        ] {
            if v.as_deref() == Some("") {
                bad(
                    key.into(),
                    "must be a file path (leave it out for none)".into(),
                );
            }
        }
        for (key, v) in [
            ("redis.response_timeout_ms", self.redis.response_timeout_ms),
            ("redis.connect_timeout_ms", self.redis.connect_timeout_ms),
            ("redis.wait_timeout_ms", self.redis.wait_timeout_ms),
            ("worker.block_ms", self.worker.block_ms),
            (
                "worker.heartbeat_interval_ms",
                self.worker.heartbeat_interval_ms,
            ),
            (
                "worker.recovery_interval_ms",
                self.worker.recovery_interval_ms,
            ),
            ("worker.min_idle_ms", self.worker.min_idle_ms),
            (
                "worker.forward_interval_ms",
                self.worker.forward_interval_ms,
            ),
            (
                "worker.collect_interval_ms",
                self.worker.collect_interval_ms,
            ),
            (
                "http.header_read_timeout_ms",
                self.http.header_read_timeout_ms,
            ),
        ] {
            if v == 0 {
                bad(key.into(), "must be positive".into());
            }
        }
        if self.redis.wait_replicas > 0
            && self.redis.wait_timeout_ms >= self.redis.response_timeout_ms
        {
            bad(
                "redis.wait_timeout_ms".into(),
                format!(
                    "must be below redis.response_timeout_ms ({} ms), or the reply times out before WAIT answers; got {}",
                    self.redis.response_timeout_ms, self.redis.wait_timeout_ms
                ),
            );
        }
        let w = &self.worker;
        let mut too_long = |key: String, v: u64| {
            if v > MAX_MS {
                bad(key, format!("must be at most {MAX_MS} (7 days), got {v}"));
            }
        };
        for (key, v) in [
            ("redis.response_timeout_ms", self.redis.response_timeout_ms),
            ("redis.connect_timeout_ms", self.redis.connect_timeout_ms),
            ("worker.block_ms", w.block_ms),
            (
                "http.header_read_timeout_ms",
                self.http.header_read_timeout_ms,
            ),
            ("worker.shutdown_grace_ms", w.shutdown_grace_ms),
            ("worker.heartbeat_interval_ms", w.heartbeat_interval_ms),
            ("worker.heartbeat_lapse_ms", w.heartbeat_lapse_ms),
            ("worker.recovery_interval_ms", w.recovery_interval_ms),
            ("worker.min_idle_ms", w.min_idle_ms),
            ("worker.forward_interval_ms", w.forward_interval_ms),
            ("worker.collect_interval_ms", w.collect_interval_ms),
        ] {
            too_long(key.into(), v);
        }
        for (i, q) in self.queues.iter().enumerate() {
            let k = |f: &str| format!("queues[{i}].{f}");
            too_long(k("timeout_ms"), q.timeout_ms);
            too_long(k("backoff_base_ms"), q.backoff_base_ms);
            too_long(k("backoff_cap_ms"), q.backoff_cap_ms);
            if let Some(v) = q.sla_p95_wait_ms {
                too_long(k("sla_p95_wait_ms"), v);
            }
            for (t, o) in &q.types {
                let tk = |f: &str| format!("queues[{i}].types.{t}.{f}");
                for (f, v) in [
                    ("timeout_ms", o.timeout_ms),
                    ("backoff_base_ms", o.backoff_base_ms),
                    ("backoff_cap_ms", o.backoff_cap_ms),
                ] {
                    if let Some(v) = v {
                        too_long(tk(f), v);
                    }
                }
            }
        }
        for (i, h) in self.http_handlers.iter().enumerate() {
            if let Some(v) = h.timeout_ms {
                too_long(format!("http_handlers[{i}].timeout_ms"), v);
            }
        }
        if w.heartbeat_lapse_ms < 2 * w.heartbeat_interval_ms {
            bad(
                "worker.heartbeat_lapse_ms".into(),
                format!(
                    "must be at least twice worker.heartbeat_interval_ms ({} ms), or a live worker that misses one beat would be judged dead",
                    w.heartbeat_interval_ms
                ),
            );
        }
        if w.read_count == 0 || w.read_count > 10_000 {
            bad(
                "worker.read_count".into(),
                "must be between 1 and 10000".into(),
            );
        }
        if w.ack_batch == 0 {
            bad("worker.ack_batch".into(), "must be positive".into());
        }
        if w.max_deliveries < 1 {
            bad("worker.max_deliveries".into(), "must be at least 1".into());
        }
        if let Some(n) = &w.consumer_name {
            if n.is_empty() || n.contains(char::is_whitespace) {
                bad(
                    "worker.consumer_name".into(),
                    "must be non-empty without spaces".into(),
                );
            }
        }
        if self.producer.max_payload_bytes == 0 || self.producer.max_payload_bytes > 512 << 20 {
            bad(
                "producer.max_payload_bytes".into(),
                "must be between 1 and 536870912 (Redis' string limit)".into(),
            );
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err()
        {
            bad(
                "http.listen".into(),
                format!(
                    "must be an address like 127.0.0.1:9464 (or empty to disable), got {:?}",
                    self.http.listen
                ),
            );
        }
        if self.http.max_connections == 0 || self.http.max_connections > MAX_CONCURRENCY {
            bad(
                "http.max_connections".into(),
                format!("must be between 1 and {MAX_CONCURRENCY}"),
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            bad(
                "log.level".into(),
                format!("is not a valid filter: {:?}", self.log.level),
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, q) in self.queues.iter().enumerate() {
            let k = |f: &str| format!("queues[{i}].{f}");
            if let Err(e) = crate::keys::validate_queue_name(&q.name) {
                bad(k("name"), e);
            } else if !names.insert(q.name.clone()) {
                bad(k("name"), format!("queue {:?} is listed twice", q.name));
            }
            if q.partitions == 0 || q.partitions > crate::keys::MAX_PARTITIONS {
                bad(
                    k("partitions"),
                    format!(
                        "must be 1 to {}, got {}",
                        crate::keys::MAX_PARTITIONS,
                        q.partitions
                    ),
                );
            } else if q.partitions > 1
                && (q.concurrency <= 2 * q.partitions as usize
                    || q.concurrency.saturating_sub(q.express_concurrency) <= q.partitions as usize)
            {
                bad(
                    k("concurrency"),
                    format!(
                        "must be above 2 × partitions ({}) with more than {} bulk slots (concurrency - express_concurrency): each partition's two readers hold a slot while they wait for work",
                        2 * q.partitions,
                        q.partitions
                    ),
                );
            }
            if q.concurrency == 0 {
                bad(k("concurrency"), "must be at least 1".into());
            } else if q.concurrency > MAX_CONCURRENCY {
                bad(
                    k("concurrency"),
                    format!(
                        "must be at most {MAX_CONCURRENCY}, got {}; run more replicas instead",
                        q.concurrency
                    ),
                );
            }
            if q.express_concurrency >= q.concurrency && q.concurrency > 0 {
                bad(
                    k("express_concurrency"),
                    format!(
                        "must be below concurrency ({}), or bulk work would have no slot",
                        q.concurrency
                    ),
                );
            }
            if q.max_attempts == 0 {
                bad(k("max_attempts"), "must be at least 1".into());
            } else if q.max_attempts > crate::task::MAX_TASK_ATTEMPTS {
                bad(
                    k("max_attempts"),
                    format!(
                        "must be at most {}, got {}",
                        crate::task::MAX_TASK_ATTEMPTS,
                        q.max_attempts
                    ),
                );
            }
            if q.timeout_ms == 0 {
                bad(k("timeout_ms"), "must be positive".into());
            }
            if q.backoff_base_ms == 0 {
                bad(k("backoff_base_ms"), "must be positive".into());
            }
            if q.backoff_cap_ms < q.backoff_base_ms {
                bad(
                    k("backoff_cap_ms"),
                    "must be at least backoff_base_ms".into(),
                );
            }
            for g in q.fanout_groups.iter().chain(std::iter::once(&q.group)) {
                if g.is_empty() || g.contains(char::is_whitespace) {
                    bad(
                        k("fanout_groups"),
                        format!("group name {g:?} must be non-empty without spaces"),
                    );
                }
            }
            if let Some(p) = &q.pool {
                if let Err(e) = crate::keys::validate_queue_name(p) {
                    bad(k("pool"), e.replace("queue name", "pool name"));
                }
                if q.serves.is_empty() {
                    bad(
                        k("serves"),
                        "a pool must list the task types it serves".into(),
                    );
                }
            } else if !q.serves.is_empty() {
                bad(
                    k("serves"),
                    "needs `pool`: only a named pool has streams of its own".into(),
                );
            }
            for t in &q.serves {
                if let Err(e) = crate::task::validate_type(t) {
                    bad(k("serves"), format!("task type {t:?} {e}"));
                }
            }
            if q.sla_p95_wait_ms == Some(0) {
                bad(k("sla_p95_wait_ms"), "must be positive".into());
            }
            if let Some(t) = q.result_ttl_secs {
                if t == 0 || t > MAX_RESULT_TTL_SECS {
                    bad(
                        k("result_ttl_secs"),
                        format!("must be 1 to {MAX_RESULT_TTL_SECS} (30 days), got {t}; leave it out to keep no results"),
                    );
                }
            }
            if q.max_result_bytes == 0 || q.max_result_bytes > MAX_RESULT_BYTES {
                bad(
                    k("max_result_bytes"),
                    format!(
                        "must be 1 to {MAX_RESULT_BYTES} (16 MiB), got {}",
                        q.max_result_bytes
                    ),
                );
            }
            let per_key = |v: Option<u32>| {
                v.filter(|n| *n == 0 || *n > MAX_PER_KEY)
                    .map(|n| format!("must be 1 to {MAX_PER_KEY}, got {n}"))
            };
            if let Some(r) = per_key(q.max_per_key) {
                bad(
                    k("max_per_key"),
                    format!("{r}; leave it out for no per-key limit"),
                );
            }
            let keyed =
                q.max_per_key.is_some() || q.types.values().any(|o| o.max_per_key.is_some());
            if keyed && !q.fanout_groups.is_empty() {
                bad(
                    k("max_per_key"),
                    "cannot be used with fanout_groups: a per-key limit needs every task read by one group (drop fanout_groups, or the limit)".into(),
                );
            }
            if let Some(m) = q.min_concurrency {
                if m <= q.express_concurrency || m > q.concurrency {
                    bad(
                        k("min_concurrency"),
                        format!(
                            "must be above express_concurrency ({}) and at most concurrency ({})",
                            q.express_concurrency, q.concurrency
                        ),
                    );
                }
            }
            for (t, o) in &q.types {
                let tk = |f: &str| format!("queues[{i}].types.{t}.{f}");
                if let Err(e) = crate::task::validate_type(t) {
                    bad(format!("queues[{i}].types.{t}"), format!("task type {e}"));
                }
                if o.max_attempts == Some(0) {
                    bad(tk("max_attempts"), "must be at least 1".into());
                }
                if o.timeout_ms == Some(0) {
                    bad(tk("timeout_ms"), "must be positive".into());
                }
                if o.backoff_base_ms == Some(0) {
                    bad(tk("backoff_base_ms"), "must be positive".into());
                }
                if let Some(r) = o.rate_per_sec {
                    if !(r > 0.0 && r <= 1_000_000.0) {
                        bad(
                            tk("rate_per_sec"),
                            "must be above 0 and at most 1000000".into(),
                        );
                    }
                }
                if o.burst.is_some() && o.rate_per_sec.is_none() {
                    bad(tk("burst"), "needs rate_per_sec".into());
                }
                if let Some(r) = per_key(o.max_per_key) {
                    bad(tk("max_per_key"), r);
                }
            }
        }
        for (i, h) in self.http_handlers.iter().enumerate() {
            let k = |f: &str| format!("http_handlers[{i}].{f}");
            if let Err(e) = crate::task::validate_type(&h.task_type) {
                bad(k("type"), format!("task type {e}"));
            }
            if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                bad(
                    k("url"),
                    format!("must be an http:// or https:// URL, got {:?}", h.url),
                );
            } else {
                #[cfg(feature = "http-handler")]
                if let Err(e) = crate::http_handler::parse_url(&h.url) {
                    bad(k("url"), e);
                }
            }
            #[cfg(feature = "http-handler")]
            if let Err((name, reason)) = crate::http_handler::parse_headers(&h.headers) {
                bad(format!("http_handlers[{i}].headers.{name:?}"), reason);
            }
            #[cfg(not(feature = "http-handler"))]
            bad(
                k("type"),
                "this build has no HTTP handlers (cargo feature `http-handler`); build with it or remove the table".into(),
            );
            if h.timeout_ms == Some(0) {
                bad(k("timeout_ms"), "must be positive".into());
            }
            if let Err(reason) = h.response_limit() {
                bad(k("max_response_bytes"), reason);
            }
        }
        for (key, reason) in self.api.problems() {
            bad(key, reason);
        }
        for (key, reason) in self.tracing.problems() {
            bad(key, reason);
        }
        for (key, reason) in sagas::table_problems(&self.sagas, &self.orchestrator) {
            bad(key, reason);
        }
        let mut guarded = std::collections::HashMap::new();
        let mut targets = std::collections::HashSet::new();
        for (i, b) in self.breakers.iter().enumerate() {
            for (field, reason) in b.problems() {
                bad(format!("breakers[{i}].{field}"), reason);
            }
            if !targets.insert(b.target.as_str()) {
                bad(
                    format!("breakers[{i}].target"),
                    format!("{:?} is defined twice: one table per downstream", b.target),
                );
            }
            for t in &b.types {
                if let Some(other) = guarded.insert(t.as_str(), b.target.as_str()) {
                    bad(
                        format!("breakers[{i}].types"),
                        format!("task type {t:?} is already guarded by breaker {other:?}: a type calls one guarded target"),
                    );
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, d) in self.schedules.iter().enumerate() {
            if let Err(problems) = d.compile() {
                for (field, reason) in problems {
                    bad(format!("schedules[{i}].{field}"), reason);
                }
            }
            if !names.insert(d.name.as_str()) {
                bad(
                    format!("schedules[{i}].name"),
                    format!(
                        "{:?} is defined twice: give each schedule its own name",
                        d.name
                    ),
                );
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems: p })
        }
    }

    /// The configuration of queue `name`, if listed.
    pub fn queue(&self, name: &str) -> Option<&QueueConfig> {
        self.queues.iter().find(|q| q.name == name)
    }

    /// Duration helpers.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.worker.shutdown_grace_ms)
    }
}

/// Hides the password of a Redis URL for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            if creds.contains(':') {
                format!("{}{user}:***{}", &url[..s + 3], &url[at..])
            } else {
                url.to_string()
            }
        }
        _ => url.to_string(),
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

/// Best-effort key for an error at `offset`, in the same style as validation's keys:
/// the nearest table header above, with the index of each array of tables
/// (`queues[0].concurrency`, `queues[1].types.send.timeout_ms`), plus the key on the line.
fn key_at(text: &str, offset: Option<usize>) -> String {
    let Some(offset) = offset else {
        return "-".into();
    };
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[line_start..]
        .find('\n')
        .map(|i| line_start + i)
        .unwrap_or(text.len());
    let line = text[line_start..line_end].trim();
    // Walk the headers in order, counting the entries of every array of tables (an
    // entry of `[[a.b]]` belongs to the current entry of `[[a]]`, so counts restart).
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut table = String::new();
    let headers_upto = if line.starts_with('[') {
        &text[..line_end]
    } else {
        &before[..line_start]
    };
    for l in headers_upto.lines() {
        let l = l.trim();
        let (path, is_array) = if let Some(p) = l.strip_prefix("[[") {
            (p.split("]]").next().unwrap_or("").trim(), true)
        } else if let Some(p) = l.strip_prefix('[') {
            (p.split(']').next().unwrap_or("").trim(), false)
        } else {
            continue;
        };
        if is_array {
            *counts.entry(path.to_string()).or_insert(0) += 1;
            let nested = format!("{path}.");
            counts.retain(|k, _| !k.starts_with(&nested));
        }
        table = indexed_path(path, &counts);
    }
    let key = if line.starts_with('[') {
        String::new()
    } else {
        line.split('=').next().unwrap_or("").trim().to_string()
    };
    match (table.is_empty(), key.is_empty()) {
        (true, true) => "-".into(),
        (true, false) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

/// The problems of a Sentinel setup (`redis.sentinels` or `redis.sentinel_master` set), as
/// (key, reason): both set, no other way of reaching Redis, every sentinel a `redis://` or
/// `rediss://` URL without a database (a sentinel has none), all with TLS or none.
fn sentinel_problems(r: &RedisConfig) -> Vec<(String, String)> {
    let mut p = Vec::new();
    let mut bad = |k: &str, reason: &str| p.push((k.to_string(), reason.to_string()));
    if r.sentinels.is_empty() {
        bad(
            "redis.sentinels",
            "must list the sentinels (redis://host:port, env TASKSTREAM_REDIS_SENTINELS) when redis.sentinel_master is set",
        );
    }
    match r.sentinel_master.as_deref() {
        None => bad(
            "redis.sentinel_master",
            "must name the master the sentinels monitor (`sentinel monitor <name> …`) when redis.sentinels is set",
        ),
        Some(m) if m.is_empty() || m.chars().any(|c| c.is_whitespace() || c.is_control()) => bad(
            "redis.sentinel_master",
            "must be the master's name as in `sentinel monitor <name> …` (no spaces)",
        ),
        Some(_) => {}
    }
    if r.url != DEFAULT_REDIS_URL {
        bad(
            "redis.sentinels",
            "set either redis.url (one server) or redis.sentinels (a master under Redis Sentinel), not both",
        );
    }
    if !r.cluster_nodes.is_empty() {
        bad(
            "redis.sentinels",
            "set either redis.cluster_nodes (a Redis Cluster) or redis.sentinels (a master under Redis Sentinel), not both",
        );
    }
    for (i, n) in r.sentinels.iter().enumerate() {
        let key = format!("redis.sentinels[{i}]");
        let client = (n.starts_with("redis://") || n.starts_with("rediss://"))
            .then(|| redis::Client::open(n.as_str()).ok())
            .flatten();
        match client {
            None => p.push((
                key,
                format!(
                    "must be a redis:// or rediss:// URL of a sentinel, got {:?}",
                    redact_url(n)
                ),
            )),
            Some(c) if c.get_connection_info().redis_settings().db() != 0 => p.push((
                key,
                format!(
                    "a sentinel has no databases: leave the /db path out of {:?} (taskstream uses database 0 of the master)",
                    redact_url(n)
                ),
            )),
            Some(_) => {}
        }
    }
    let tls = r
        .sentinels
        .iter()
        .filter(|n| n.starts_with("rediss://"))
        .count();
    if tls != 0 && tls != r.sentinels.len() {
        p.push((
            "redis.sentinels".into(),
            "mixes redis:// and rediss:// sentinels; they and the data nodes are reached with TLS or all without it".into(),
        ));
    }
    p
}

/// `a.b.c` with `[n]` after every prefix that is an array of tables seen `n + 1` times.
fn indexed_path(path: &str, counts: &BTreeMap<String, usize>) -> String {
    let mut out = String::new();
    let mut prefix = String::new();
    for part in path.split('.') {
        let part = part.trim();
        if !prefix.is_empty() {
            prefix.push('.');
            out.push('.');
        }
        prefix.push_str(part);
        out.push_str(part);
        if let Some(n) = counts.get(&prefix) {
            out.push_str(&format!("[{}]", n.saturating_sub(1)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../config/taskstream.toml");
        let cfg = Config::parse("taskstream.toml", text).unwrap();
        cfg.validate("taskstream.toml").unwrap();
        assert!(!cfg.queues.is_empty());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = Config::parse("c.toml", "[worker]\nblock_ms = 10\nconcurency = 3\n").unwrap_err();
        let s = err.to_string();
        assert!(s.starts_with("c.toml:3:"), "{s}");
        assert!(s.contains("worker.concurency"), "{s}");
        assert!(s.contains("unknown field"), "{s}");
    }

    #[test]
    fn wrong_type_names_key() {
        let err = Config::parse(
            "c.toml",
            "[[queues]]\nname = \"a\"\nconcurrency = \"ten\"\n",
        )
        .unwrap_err()
        .to_string();
        // The same key style as validation's problems (issue 9).
        assert!(err.contains("queues[0].concurrency"), "{err}");
    }

    #[test]
    fn type_errors_index_arrays_of_tables() {
        let text = "[[queues]]\nname = \"a\"\n[[queues]]\nname = \"b\"\n[queues.types.send]\ntimeout_ms = \"x\"\n";
        let err = Config::parse("c.toml", text).unwrap_err().to_string();
        assert!(err.contains("queues[1].types.send.timeout_ms"), "{err}");
        let text = "[[http_handlers]]\ntype = \"a\"\nurl = \"http://h/\"\n[[http_handlers]]\ntype = \"b\"\nurl = 5\n";
        let err = Config::parse("c.toml", text).unwrap_err().to_string();
        assert!(err.contains("http_handlers[1].url"), "{err}");
        let text = "[worker]\nblock_ms = \"x\"\n";
        let err = Config::parse("c.toml", text).unwrap_err().to_string();
        assert!(err.contains(": worker.block_ms: "), "{err}");
    }

    fn problems(text: &str) -> Vec<(String, String)> {
        let cfg = Config::parse("f.toml", text).unwrap();
        match cfg.validate("f.toml") {
            Ok(()) => Vec::new(),
            Err(e) => e.problems.into_iter().map(|p| (p.key, p.reason)).collect(),
        }
    }

    #[test]
    fn http_handler_headers_the_worker_refuses_are_refused_by_the_check() {
        let handler = |headers: &str| {
            format!("[[http_handlers]]\ntype = \"t\"\nurl = \"http://h:1/x\"\n[http_handlers.headers]\n{headers}\n")
        };
        for (headers, want) in [
            (
                "\"X-Tenant\" = \"a\\r\\nX-Evil: 1\"",
                "not a valid header value",
            ),
            ("\"X-Bad\\r\\nName\" = \"v\"", "is not valid"),
            (
                "\"X-Taskstream-Attempt\" = \"9\"",
                "set by the http handler protocol",
            ),
            (
                "\"Content-Type\" = \"text/plain\"",
                "set by the http handler protocol",
            ),
            ("traceparent = \"00-x\"", "set by the http handler protocol"),
            ("\"X-A\" = \"1\"\n\"x-a\" = \"2\"", "listed twice"),
        ] {
            let p = problems(&handler(headers));
            assert_eq!(p.len(), 1, "{headers}: {p:?}");
            assert!(p[0].0.starts_with("http_handlers[0].headers."), "{p:?}");
            assert!(p[0].1.contains(want), "{headers}: {p:?}");
            // The worker refuses the same configuration.
            let cfg = Config::parse("f.toml", &handler(headers)).unwrap();
            assert!(crate::http_handler::HttpHandler::new(
                &cfg.http_handlers[0],
                Duration::from_secs(1),
                reqwest::Client::new()
            )
            .is_err());
        }
        assert_eq!(problems(&handler("Authorization = \"Bearer x\"")), []);
        // Secrets in values never reach the message.
        let p = problems(&handler("\"X-Tenant\" = \"s3cret\\n\""));
        assert!(!format!("{p:?}").contains("s3cret"), "{p:?}");
        let p = problems("[[http_handlers]]\ntype = \"t\"\nurl = \"http://\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "http_handlers[0].url");
    }

    #[test]
    #[cfg(feature = "http-handler")]
    fn http_handler_response_limits_the_worker_refuses_are_refused_by_the_check() {
        let handler = |limit: &str| {
            format!("[[http_handlers]]\ntype = \"t\"\nurl = \"http://h:1/x\"\n{limit}\n")
        };
        let worker = |text: &str| {
            let cfg = Config::parse("f.toml", text).unwrap();
            crate::http_handler::HttpHandler::new(
                &cfg.http_handlers[0],
                Duration::from_secs(1),
                reqwest::Client::new(),
            )
        };
        for bad in [
            "max_response_bytes = 0".to_string(),
            format!("max_response_bytes = {}", MAX_RESPONSE_BYTES_LIMIT + 1),
        ] {
            let p = problems(&handler(&bad));
            assert_eq!(p.len(), 1, "{bad}: {p:?}");
            assert_eq!(p[0].0, "http_handlers[0].max_response_bytes", "{p:?}");
            assert!(p[0].1.contains("must be between 1 and 536870912"), "{p:?}");
            let e = worker(&handler(&bad)).unwrap_err().to_string();
            assert!(e.contains("max_response_bytes must be between"), "{e}");
        }
        for (ok, limit) in [
            (String::new(), DEFAULT_MAX_RESPONSE_BYTES),
            ("max_response_bytes = 1".to_string(), 1),
            (
                format!("max_response_bytes = {MAX_RESPONSE_BYTES_LIMIT}"),
                MAX_RESPONSE_BYTES_LIMIT,
            ),
        ] {
            assert_eq!(problems(&handler(&ok)), [], "{ok}");
            assert_eq!(worker(&handler(&ok)).unwrap().max_response_bytes(), limit);
        }
        // Negative numbers do not parse into a usize at all; the file is refused at load.
        let err = Config::parse("f.toml", &handler("max_response_bytes = -1")).unwrap_err();
        assert!(
            err.to_string()
                .contains("http_handlers[0].max_response_bytes"),
            "{err}"
        );
    }

    #[test]
    fn timeouts_and_concurrency_have_upper_bounds() {
        let p = problems(&format!(
            "[redis]\nresponse_timeout_ms = {}\n[worker]\nshutdown_grace_ms = {}\n[[queues]]\nname = \"q\"\nconcurrency = 4294967295\ntimeout_ms = {}\n[queues.types.t]\ntimeout_ms = {}\n[[http_handlers]]\ntype = \"t\"\nurl = \"http://h/\"\ntimeout_ms = {}\n",
            i64::MAX, // the largest integer TOML holds
            i64::MAX,
            i64::MAX,
            MAX_MS + 1,
            u32::MAX
        ));
        let keys: Vec<&str> = p.iter().map(|x| x.0.as_str()).collect();
        for want in [
            "redis.response_timeout_ms",
            "worker.shutdown_grace_ms",
            "queues[0].concurrency",
            "queues[0].timeout_ms",
            "queues[0].types.t.timeout_ms",
            "http_handlers[0].timeout_ms",
        ] {
            assert!(keys.contains(&want), "missing {want} in {p:?}");
        }
        // The limits themselves are accepted.
        let ok = format!(
            "[[queues]]\nname = \"q\"\nconcurrency = {MAX_CONCURRENCY}\ntimeout_ms = {MAX_MS}\n"
        );
        assert_eq!(problems(&ok), []);
    }

    #[test]
    fn cluster_nodes_exclude_a_url_and_are_checked() {
        assert_eq!(
            problems("[redis]\ncluster_nodes = [\"redis://h:7000\", \"redis://h:7001\"]\n"),
            []
        );
        let p = problems("[redis]\nurl = \"redis://h:1\"\ncluster_nodes = [\"redis://h:7000\"]\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "redis.cluster_nodes");
        let p = problems("[redis]\ncluster_nodes = [\"h:7000\"]\n");
        assert_eq!(p[0].0, "redis.cluster_nodes[0]", "{p:?}");
        let p = problems("[redis]\ncluster_nodes = [\"redis://h:7000\", \"rediss://h:7001\"]\n");
        assert!(p.iter().any(|x| x.1.contains("mixes")), "{p:?}");
        let mut cfg = Config::default();
        cfg.apply_env(|k| match k {
            "TASKSTREAM_REDIS_CLUSTER_NODES" => Some("redis://a:1, redis://b:2,".into()),
            "TASKSTREAM_REDIS_WAIT_REPLICAS" => Some("2".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(cfg.redis.cluster_nodes, ["redis://a:1", "redis://b:2"]);
        assert_eq!(cfg.redis.wait_replicas, 2);
        assert!(Config::default()
            .apply_env(|k| (k == "TASKSTREAM_REDIS_WAIT_REPLICAS").then(|| "x".into()))
            .is_err());
    }

    #[test]
    fn wait_timeout_must_be_below_the_reply_timeout() {
        assert_eq!(
            problems("[redis]\nwait_replicas = 1\nwait_timeout_ms = 500\n"),
            []
        );
        let p = problems("[redis]\nwait_replicas = 1\nwait_timeout_ms = 2000\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "redis.wait_timeout_ms");
        let p = problems("[redis]\nwait_replicas = 1\nwait_timeout_ms = 0\n");
        assert!(p.iter().any(|x| x.0 == "redis.wait_timeout_ms"), "{p:?}");
    }

    #[test]
    fn tls_files_need_rediss_and_come_in_pairs() {
        let p = problems("[redis]\nurl = \"redis://h:1\"\ntls_ca_file = \"/ca.pem\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "redis.url");
        let p = problems("[redis]\nurl = \"rediss://h:1\"\ntls_cert_file = \"/c.pem\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "redis.tls_key_file");
        assert_eq!(
            problems("[redis]\nurl = \"rediss://h:1\"\ntls_ca_file = \"/ca.pem\"\ntls_cert_file = \"/c.pem\"\ntls_key_file = \"/k.pem\"\n"),
            []
        );
        let mut cfg = Config::default();
        cfg.apply_env(|k| match k {
            "TASKSTREAM_REDIS_TLS_CA_FILE" => Some("/a".into()),
            "TASKSTREAM_REDIS_TLS_CERT_FILE" => Some("/b".into()),
            "TASKSTREAM_REDIS_TLS_KEY_FILE" => Some("/c".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            (
                cfg.redis.tls_ca_file.as_deref(),
                cfg.redis.tls_cert_file.as_deref(),
                cfg.redis.tls_key_file.as_deref()
            ),
            (Some("/a"), Some("/b"), Some("/c"))
        );
        // Reading them is load's job: a missing file names the key and the path.
        let e = cfg.check_files("f").unwrap_err().to_string();
        assert!(e.starts_with("f: redis.tls_ca_file: "), "{e}");
        assert!(e.contains("\"/a\" cannot be read"), "{e}");
    }

    #[test]
    fn express_concurrency_defaults_from_concurrency() {
        for (c, want) in [
            (1, 0),
            (2, 1),
            (8, 1),
            (9, 1),
            (16, 2),
            (64, 8),
            (1000, 125),
        ] {
            assert_eq!(default_express_concurrency(c), want, "concurrency {c}");
            assert!(want < c, "bulk keeps a slot at concurrency {c}");
            let cfg = Config::parse(
                "f",
                &format!("[[queues]]\nname = \"q\"\nconcurrency = {c}\n"),
            )
            .unwrap();
            assert_eq!(cfg.queues[0].express_concurrency, want);
            cfg.validate("f").unwrap();
        }
        // Left out everywhere: the built-in default stays 8 of 64.
        let cfg = Config::parse("f", "[[queues]]\nname = \"q\"\n").unwrap();
        assert_eq!(
            (cfg.queues[0].concurrency, cfg.queues[0].express_concurrency),
            (64, 8)
        );
        // An explicit value is kept, and checked.
        let cfg = Config::parse(
            "f",
            "[[queues]]\nname = \"a\"\nconcurrency = 4\n[[queues]]\nname = \"b\"\nconcurrency = 4\nexpress_concurrency = 3\n",
        )
        .unwrap();
        assert_eq!(cfg.queues[0].express_concurrency, 1);
        assert_eq!(cfg.queues[1].express_concurrency, 3);
        assert_eq!(
            problems("[[queues]]\nname = \"q\"\nconcurrency = 4\nexpress_concurrency = 4\n")[0].0,
            "queues[0].express_concurrency"
        );
    }

    #[test]
    fn validation_collects_every_problem() {
        let text = r#"
[redis]
url = "http://nope"
[worker]
heartbeat_interval_ms = 1000
heartbeat_lapse_ms = 1000
[http]
listen = "not an address"
[[queues]]
name = "a b"
concurrency = 0
[[queues]]
name = "ok"
express_concurrency = 64
backoff_base_ms = 10
backoff_cap_ms = 5
[queues.types.send]
timeout_ms = 0
[[http_handlers]]
type = "t"
url = "ftp://x"
"#;
        let cfg = Config::parse("f.toml", text).unwrap();
        let err = cfg.validate("f.toml").unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        for want in [
            "redis.url",
            "worker.heartbeat_lapse_ms",
            "http.listen",
            "queues[0].name",
            "queues[0].concurrency",
            "queues[1].express_concurrency",
            "queues[1].backoff_cap_ms",
            "queues[1].types.send.timeout_ms",
            "http_handlers[0].url",
        ] {
            assert!(keys.contains(&want), "missing {want} in {keys:?}");
        }
        assert!(err.problems.iter().all(|p| p.file == "f.toml"));
    }

    #[test]
    fn env_overrides_apply_and_are_checked() {
        let mut cfg = Config::default();
        cfg.apply_env(|k| match k {
            "TASKSTREAM_REDIS_URL" => Some("rediss://u:secret@h:6380/0".into()),
            "TASKSTREAM_LOG_FORMAT" => Some("json".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(cfg.redis.url, "rediss://u:secret@h:6380/0");
        assert_eq!(cfg.log.format, LogFormat::Json);
        let errs = cfg
            .apply_env(|k| (k == "TASKSTREAM_LOG_FORMAT").then(|| "xml".into()))
            .unwrap_err();
        assert_eq!(errs[0].key, "TASKSTREAM_LOG_FORMAT");
    }

    #[test]
    fn sentinels_need_a_master_name_and_exclude_url_and_cluster() {
        let ok = "[redis]\nsentinels = [\"redis://127.0.0.1:26379\", \"redis://u:pw@h2:26379\"]\nsentinel_master = \"mymaster\"\n";
        assert_eq!(problems(ok), []);
        let cfg = Config::parse("f", ok).unwrap();
        assert_eq!(cfg.redis.sentinels.len(), 2);
        assert_eq!(cfg.redis.sentinel_master.as_deref(), Some("mymaster"));
        // With data-node credentials of their own, and over TLS.
        assert_eq!(
            problems("[redis]\nsentinels = [\"rediss://h:26379\"]\nsentinel_master = \"m\"\nmaster_username = \"app\"\nmaster_password = \"pw\"\ntls_ca_file = \"/ca.pem\"\n"),
            []
        );
        for (text, key, want) in [
            (
                "[redis]\nsentinels = [\"redis://h:26379\"]\n",
                "redis.sentinel_master",
                "must name the master",
            ),
            (
                "[redis]\nsentinel_master = \"m\"\n",
                "redis.sentinels",
                "must list the sentinels",
            ),
            (
                "[redis]\nsentinels = [\"redis://h:26379\"]\nsentinel_master = \"my master\"\n",
                "redis.sentinel_master",
                "no spaces",
            ),
            (
                "[redis]\nurl = \"redis://other:6379\"\nsentinels = [\"redis://h:26379\"]\nsentinel_master = \"m\"\n",
                "redis.sentinels",
                "either redis.url",
            ),
            (
                "[redis]\ncluster_nodes = [\"redis://c:7000\"]\nsentinels = [\"redis://h:26379\"]\nsentinel_master = \"m\"\n",
                "redis.sentinels",
                "either redis.cluster_nodes",
            ),
            (
                "[redis]\nsentinels = [\"http://h:26379\"]\nsentinel_master = \"m\"\n",
                "redis.sentinels[0]",
                "redis:// or rediss://",
            ),
            (
                "[redis]\nsentinels = [\"redis://h:26379\", \"redis://h2:26379/2\"]\nsentinel_master = \"m\"\n",
                "redis.sentinels[1]",
                "no databases",
            ),
            (
                "[redis]\nsentinels = [\"redis://h:26379\", \"rediss://h2:26379\"]\nsentinel_master = \"m\"\n",
                "redis.sentinels",
                "mixes redis:// and rediss://",
            ),
            (
                "[redis]\nsentinels = [\"redis://h:26379\"]\nsentinel_master = \"m\"\ntls_ca_file = \"/ca.pem\"\n",
                "redis.sentinels",
                "must be rediss://",
            ),
            (
                "[redis]\nmaster_password = \"pw\"\n",
                "redis.master_password",
                "only used with redis.sentinels",
            ),
        ] {
            let p = problems(text);
            assert_eq!(p.len(), 1, "{text}: {p:?}");
            assert_eq!(p[0].0, key, "{text}: {p:?}");
            assert!(p[0].1.contains(want), "{text}: {p:?}");
        }
        // A password in a sentinel URL never reaches the message.
        let p = problems(
            "[redis]\nsentinels = [\"redis://u:s3cret@h:26379/1\"]\nsentinel_master = \"m\"\n",
        );
        assert!(!format!("{p:?}").contains("s3cret"), "{p:?}");
    }

    #[test]
    fn sentinel_env_overrides_apply() {
        let mut cfg = Config::default();
        cfg.apply_env(|k| match k {
            "TASKSTREAM_REDIS_SENTINELS" => {
                Some(" redis://127.0.0.1:26379, redis://127.0.0.1:26380 ,,".into())
            }
            "TASKSTREAM_REDIS_SENTINEL_MASTER" => Some("mymaster".into()),
            "TASKSTREAM_REDIS_MASTER_USERNAME" => Some("app".into()),
            "TASKSTREAM_REDIS_MASTER_PASSWORD" => Some("pw".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            cfg.redis.sentinels,
            ["redis://127.0.0.1:26379", "redis://127.0.0.1:26380"]
        );
        assert_eq!(cfg.redis.sentinel_master.as_deref(), Some("mymaster"));
        assert_eq!(cfg.redis.master_username.as_deref(), Some("app"));
        assert_eq!(cfg.redis.master_password.as_deref(), Some("pw"));
        cfg.validate("env").unwrap();
        // The environment combined with a file that sets redis.url is refused by the check.
        let mut cfg = Config::parse("f", "[redis]\nurl = \"redis://h:6379\"\n").unwrap();
        cfg.apply_env(|k| match k {
            "TASKSTREAM_REDIS_SENTINELS" => Some("redis://127.0.0.1:26379".into()),
            "TASKSTREAM_REDIS_SENTINEL_MASTER" => Some("m".into()),
            _ => None,
        })
        .unwrap();
        let e = cfg.validate("f").unwrap_err().to_string();
        assert!(e.contains("redis.sentinels"), "{e}");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("redis://u:pw@h:1"), "redis://u:***@h:1");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn type_overrides_win() {
        let mut q = QueueConfig::default();
        q.types.insert(
            "slow".into(),
            TypeOverride {
                max_attempts: Some(9),
                timeout_ms: Some(5),
                ..Default::default()
            },
        );
        assert_eq!(q.policy("slow").max_attempts, 9);
        assert_eq!(q.policy("slow").timeout, Duration::from_millis(5));
        assert_eq!(q.policy("other").max_attempts, 5);
    }
}
