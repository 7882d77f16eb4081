//! The worker: consumes queues through consumer groups and runs handlers.
//!
//! A worker process runs, per configured queue, one reader per lane ([`reader`]), an acker
//! ([`settler`]), a forwarder for due scheduled tasks ([`forwarder`]), the recovery loop
//! ([`recovery`]) and, on fan-out queues, a janitor ([`janitor`]); one heartbeat
//! loop ([`heartbeat`]) serves all queues. Each loop is one file with a start and a stop.
//!
//! Shutdown (SIGINT/SIGTERM, or the token passed to [`Worker::run`]): readers stop taking
//! new work; running tasks get `shutdown_grace` to finish and are acknowledged; tasks still
//! running after that are told to stop (their cancellation token fires). A handler that
//! stops within [`HAND_BACK_WAIT`] has its task handed back at once on the same attempt
//! (an interrupted run is not a failed attempt); one that does not is left pending. The
//! process marks itself gone so another worker recovers what is left at once, and returns.
//! Tasks held by a pause (see [`pause`]) are handed back when shutdown begins.

pub(crate) mod batch;
pub(crate) mod breaker;
mod builder;
pub(crate) mod decide;
pub(crate) mod dispatch;
pub(crate) mod execute;
pub(crate) mod forwarder;
pub(crate) mod heartbeat;
pub(crate) mod janitor;
pub(crate) mod pause;
pub(crate) mod reader;
pub(crate) mod recovery;
pub(crate) mod runtime;
pub(crate) mod scheduler;
pub(crate) mod settler;
pub(crate) mod signal_loop;
pub(crate) mod sla;
pub(crate) mod tracked;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::Result;
use crate::handler::Registry;
use crate::keys::Lane;
use crate::rdb;
use recovery::RecoveryConfig;
use runtime::{QueueRuntime, RuntimeParts};

/// After the grace period, how long cancelled handlers get to return so their tasks are
/// handed back rather than left for recovery.
pub const HAND_BACK_WAIT: Duration = Duration::from_secs(2);

/// Makes a consumer name unique to this process: `<host>-<pid>-<random>`.
pub fn default_consumer_name() -> String {
    let host = crate::rdb::hostname();
    let rnd: u32 = rand::random::<u32>() & 0xffff;
    format!("{host}-{}-{rnd:04x}", std::process::id())
}

/// Records that `pool` serves its types (`ts:{q}:routes`), so producers and the default
/// pool send them to the pool's streams. A type another pool already claimed is taken
/// over, with a warning: the last pool to start wins, as with a deploy that moves a type.
async fn register_routes(broker: &rdb::Broker, rt: &QueueRuntime, pool: &str) -> Result<()> {
    for (t, from) in broker.claim_routes(&rt.keys, &rt.cfg.serves, pool).await? {
        tracing::warn!(queue = %rt.cfg.name, task_type = %t, from = %from, to = %pool, "task type moves to another pool");
    }
    Ok(())
}

/// Records how many partitions `q` has (`ts:{q}:partitions`), so producers spread over
/// them. Only raised: a worker configured with fewer partitions than Redis records says
/// so and reads its own number, leaving the rest to workers that know them (lowering
/// needs a drain, see the README).
async fn publish_partitions(broker: &rdb::Broker, q: &crate::config::QueueConfig) -> Result<()> {
    let keys = crate::keys::QueueKeys::new(&q.name);
    let known = broker.partitions(&keys).await?;
    if q.partitions > known {
        broker.set_partitions(&keys, q.partitions).await?;
    } else if q.partitions < known {
        tracing::warn!(queue = %q.name, configured = q.partitions, recorded = known, "the queue has more partitions in Redis than this worker is configured for: partitions {}..{} are not read by it (lowering partitions needs a drain, see README)", q.partitions, known - 1);
    }
    Ok(())
}

pub use builder::WorkerBuilder;

/// A worker process' queues and handlers.
pub struct Worker {
    cfg: Config,
    registry: Arc<Registry>,
    consumer: String,
    /// Sagas of an orchestrator run beside the worker (builder only).
    sagas: Option<Vec<crate::saga::definition::SagaDef>>,
    /// Serve `/metrics`, `/health`, `/ready` on `cfg.http.listen` (builder only).
    serve_http: bool,
}

impl Worker {
    /// A builder: queues, handlers and options, validated by
    /// [`WorkerBuilder::build`] as `taskstream config check` validates a file.
    pub fn builder(redis: crate::config::RedisConfig) -> WorkerBuilder {
        WorkerBuilder::new(redis)
    }

    /// A builder starting from a whole configuration (as loaded from a file); HTTP serving
    /// follows `cfg.http.listen`.
    pub fn from_config(cfg: Config) -> WorkerBuilder {
        WorkerBuilder::from_config(cfg)
    }

    /// A worker for the queues of `cfg`, running the handlers of `registry`, without
    /// validating `cfg` (prefer [`Worker::builder`] or [`Worker::from_config`]).
    pub fn new(cfg: Config, registry: Registry) -> Self {
        let consumer = cfg
            .worker
            .consumer_name
            .clone()
            .unwrap_or_else(default_consumer_name);
        Worker {
            cfg,
            registry: Arc::new(registry),
            consumer,
            sagas: None,
            serve_http: false,
        }
    }

    /// This process' consumer name.
    pub fn consumer_name(&self) -> &str {
        &self.consumer
    }

    /// Runs until `shutdown` fires, then shuts down gracefully. Redis being unreachable at
    /// start is not an error: the worker retries with backoff (and says so in the log).
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        #[cfg(not(feature = "http"))]
        if self.serve_http {
            return Err(crate::Error::Config(format!(
                "http.listen is {:?} but this build has no /metrics server (cargo feature `http`); build with it or set http.listen = \"\"",
                self.cfg.http.listen
            )));
        }
        #[cfg(feature = "http")]
        if self.serve_http {
            let addr: std::net::SocketAddr = self.cfg.http.listen.parse().map_err(|e| {
                crate::Error::Config(format!(
                    "http.listen {:?} is not host:port: {e}",
                    self.cfg.http.listen
                ))
            })?;
            crate::http::serve_with(
                addr,
                crate::metrics::install(),
                shutdown.clone(),
                &self.cfg.http,
            )
            .await
            .map_err(|e| {
                crate::Error::Config(format!(
                    "cannot listen on {addr} (http.listen): {e}; set another address"
                ))
            })?;
        }
        let orchestrator = self.sagas.clone().map(|defs| {
            let o = crate::saga::Orchestrator::new(&self.cfg, defs);
            tokio::spawn(o.run(shutdown.clone()))
        });
        let r = self.run_worker(shutdown).await;
        if let Some(o) = orchestrator {
            match o.await {
                Ok(r2) => r2?,
                Err(e) => {
                    return Err(crate::Error::Config(format!(
                        "orchestrator task failed: {e}"
                    )))
                }
            }
        }
        r
    }

    async fn run_worker(self, shutdown: CancellationToken) -> Result<()> {
        let cfg = self.cfg;
        let w = &cfg.worker;
        let mut conn = match rdb::connect(
            &cfg.redis,
            &shutdown,
            rdb::ClientName::new(&self.consumer, rdb::Role::Cmd),
        )
        .await
        {
            Ok(c) => c,
            Err(_) if shutdown.is_cancelled() => return Ok(()),
            Err(e) => return Err(e),
        };
        let broker = rdb::Broker::new(conn.clone()).with_wait(rdb::WaitFor::of(&cfg.redis));
        // Preflight, scripts and groups: retried until Redis lets us run them. A refused
        // permission is logged by the broker (command and fix) and shown by /ready.
        let mut attempt = 0;
        let mut checked = false;
        loop {
            let r: Result<()> = async {
                if !checked {
                    crate::preflight::run(&mut conn, cfg.redis.preflight).await?;
                    checked = true;
                }
                broker.load_scripts().await?;
                for q in &cfg.queues {
                    for keys in
                        crate::keys::QueueKeys::partitions(&q.name, q.pool.as_deref(), q.partitions)
                    {
                        broker.ensure_queue(&keys, &q.all_groups()).await?;
                    }
                    publish_partitions(&broker, q).await?;
                }
                Ok(())
            }
            .await;
            match r {
                Ok(()) => break,
                Err(e @ crate::Error::Preflight(_)) => return Err(e),
                Err(e) if e.is_no_permission() => {
                    tracing::debug!(error = %e, "cannot set up yet, retrying")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load scripts or create consumer groups yet, retrying")
                }
            }
            attempt += 1;
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(rdb::reconnect_delay(attempt)) => {}
            }
        }
        crate::health::set_groups_ready(true);
        let mut serving = crate::health::serving();
        tracing::info!(
            consumer = %self.consumer,
            queues = ?cfg.queues.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(),
            types = ?self.registry.types(),
            "worker started"
        );

        let block = Duration::from_millis(w.block_ms);
        let pool = rdb::reader_pool(
            &cfg.redis,
            block,
            // Two lane readers per partition, plus a settler's detached connection each.
            cfg.queues
                .iter()
                .map(|q| q.partitions as usize * 3)
                .sum::<usize>()
                + 2,
            rdb::ClientName::new(&self.consumer, rdb::Role::Reader),
        )?;
        let tracker = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        let stop_reading = shutdown.child_token();
        let acker_stop = CancellationToken::new();
        let loops = TaskTracker::new();
        let ackers = TaskTracker::new();
        let mut runtimes = Vec::new();
        let breakers = Arc::new(breaker::Breakers::new(&cfg.breakers));
        let targets: Vec<String> = cfg.breakers.iter().map(|b| b.target.clone()).collect();
        if let Err(e) = broker.register_breakers(&targets).await {
            tracing::warn!(error = %e, "could not record the circuit breakers for stats");
        }
        for q in &cfg.queues {
            let capacity = runtime::Capacity::of(q);
            for keys in crate::keys::QueueKeys::partitions(&q.name, q.pool.as_deref(), q.partitions)
            {
                let (rt, rx) = QueueRuntime::new(RuntimeParts {
                    cfg: q.clone(),
                    keys,
                    capacity: capacity.clone(),
                    consumer: self.consumer.clone(),
                    registry: self.registry.clone(),
                    max_payload: cfg.producer.max_payload_bytes,
                    max_deliveries: w.max_deliveries,
                    tracker: tracker.clone(),
                    hard_stop: hard_stop.clone(),
                    stopping: stop_reading.clone(),
                    broker: broker.clone(),
                    breakers: breakers.clone(),
                });
                let rt = Arc::new(rt);
                let settler = settler::Settler {
                    broker: broker.clone(),
                    keys: rt.keys.clone(),
                    group: rt.group.clone(),
                    delete_on_ack: rt.delete_on_ack,
                    batch: w.ack_batch,
                    tracked: rt.tracked.clone(),
                    pool: pool.clone(),
                    backlog: rt.settler.backlog(),
                };
                ackers.spawn(settler.run(rx, acker_stop.clone()));
                runtimes.push(rt);
            }
        }
        // Heartbeat first, so no reader takes work before the process is known alive.
        heartbeat::mark_alive(&broker, &runtimes).await;
        let hb_stop = CancellationToken::new();
        // Refresh running entries well inside min_idle so the idle net never takes them.
        let touch_every = Duration::from_millis((w.min_idle_ms / 4).max(50));
        let hb = tokio::spawn(heartbeat::run(
            runtimes.clone(),
            broker.clone(),
            Duration::from_millis(w.heartbeat_interval_ms),
            touch_every,
            hb_stop.clone(),
        ));
        let rcfg = RecoveryConfig {
            interval: Duration::from_millis(w.recovery_interval_ms),
            lapse: Duration::from_millis(w.heartbeat_lapse_ms),
            min_idle: Duration::from_millis(w.min_idle_ms),
        };
        for rt in &runtimes {
            if let Some(pool) = &rt.cfg.pool {
                register_routes(&broker, rt, pool).await?;
            }
            if let Err(e) = signal_loop::refresh_routes(rt).await {
                tracing::warn!(queue = %rt.cfg.name, error = %e, "could not read routes yet");
            }
            // Learn pause state and past cancels before the first read.
            let last = match signal_loop::poll_once(rt, "0-0", true).await {
                Ok(last) => last,
                Err(e) => {
                    tracing::warn!(queue = %rt.cfg.name, error = %e, "could not read signals yet");
                    "0-0".to_string()
                }
            };
            loops.spawn(signal_loop::run(rt.clone(), last, stop_reading.clone()));
            // One controller per queue: the partitions share its slots.
            if rt.keys.partition == 0 {
                loops.spawn(sla::run(rt.clone(), stop_reading.clone()));
            }
            for lane in [Lane::Bulk, Lane::Express] {
                loops.spawn(reader::run(
                    rt.clone(),
                    lane,
                    pool.clone(),
                    w.read_count,
                    block,
                    stop_reading.clone(),
                ));
            }
            let keys = Arc::new(rt.keys.clone());
            loops.spawn(forwarder::run(
                keys.clone(),
                broker.clone(),
                Duration::from_millis(w.forward_interval_ms),
                stop_reading.clone(),
            ));
            loops.spawn(recovery::run(rt.clone(), rcfg, stop_reading.clone()));
            if rt.cfg.is_fanout() {
                loops.spawn(janitor::run(
                    keys,
                    rt.cfg.all_groups(),
                    broker.clone(),
                    Duration::from_secs(1),
                    stop_reading.clone(),
                ));
            }
        }
        if cfg.scheduler.enabled {
            let producer = crate::producer::Producer::new(conn.clone(), cfg.producer.clone())
                .with_wait_for(rdb::WaitFor::of(&cfg.redis));
            loops.spawn(scheduler::run(
                producer,
                cfg.schedules.clone(),
                stop_reading.clone(),
            ));
        }
        loops.close();

        shutdown.cancelled().await;
        serving.shutting_down();
        tracing::info!(
            grace_ms = w.shutdown_grace_ms,
            "shutting down: no new work; waiting for running tasks"
        );
        loops.wait().await;
        tracker.close();
        let running = tracker.len();
        if tokio::time::timeout(cfg.shutdown_grace(), tracker.wait())
            .await
            .is_err()
        {
            let left: usize = runtimes.iter().map(|r| r.tracked.running_count()).sum();
            tracing::warn!(left, "grace period over: cancelling running tasks; those that stop are handed back at once, the rest stay pending and will be recovered");
            hard_stop.cancel();
            // Give cancelled handlers a moment to return, so their hand-backs reach the
            // settler before it drains; a handler that ignores cancellation is recovered.
            let _ = tokio::time::timeout(HAND_BACK_WAIT, tracker.wait()).await;
        } else if running > 0 {
            tracing::info!(finished = running, "running tasks finished");
        }
        acker_stop.cancel();
        ackers.close();
        ackers.wait().await;
        hb_stop.cancel();
        let _ = hb.await;
        heartbeat::mark_gone(&broker, &runtimes).await;
        tracing::info!(consumer = %self.consumer, "worker stopped");
        Ok(())
    }
}
