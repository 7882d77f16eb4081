//! The orchestrator: turns task replies and due deadlines into saga transitions.
//!
//! # Why it holds no state
//!
//! Everything an orchestrator knows is in Redis: the saga records, the deadlines, and
//! the replies waiting in `ts:sagas:replies` (on a Redis Cluster: in the reply stream of
//! each queue partition, and the dispatches waiting in each bucket's outbox; see
//! [`crate::saga::keys`]). It reads replies through the consumer group
//! `orchestrator`, applies each as one compare-and-set transition ([`super::apply`]) and
//! only then acknowledges it. So any number of orchestrators can run (in `taskstream
//! orchestrator` processes or next to workers), and killing one loses nothing:
//!
//! - a reply it read but had not acknowledged stays pending in the group; once it has
//!   been idle for `claim_idle_ms`, another orchestrator claims it (`XAUTOCLAIM`) and
//!   applies it — or finds it already applied (the saga's revision moved on) and just
//!   acknowledges it. No transition is applied twice, because each is guarded by the
//!   revision it was decided from;
//! - deadlines are members of a sorted set, not timers: whichever orchestrator is alive
//!   fires them, guarded by revision the same way.
//!
//! Replies of different sagas are applied concurrently; replies of one saga in order
//! (and any race with another instance is settled by the compare-and-set).
//!
//! # One file per loop
//!
//! As in the worker, each background loop is a small file with a `run` that returns
//! when the shutdown token fires: [`streams`] (start a [`replies`] reader per reply
//! stream, and more as queues gain partitions), [`replies`] (read and apply replies),
//! [`claims`] (claim replies other instances left idle), [`prune`] (remove dead
//! instances from the group), [`deadlines`] (fire step and saga time-outs), [`outbox`]
//! (cluster only: relay dispatches a stopped process left in an outbox), [`gauges`]
//! (sample the saga gauges). This file wires them: connect, create the group, mark the process ready,
//! start the loops, and on shutdown wait for them and leave the group tidy.

mod claims;
mod deadlines;
mod gauges;
mod outbox;
mod prune;
mod replies;
mod streams;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::decide::Outcome;
use super::definition::SagaDef;
use crate::config::{Config, OrchestratorConfig, RedisConfig};
use crate::error::Result;
use crate::rdb::{self, Broker};
use crate::routing::RouteCache;

/// What every loop of one orchestrator shares.
struct Ctx {
    /// The sagas it runs.
    defs: Arc<[SagaDef]>,
    /// Its `[orchestrator]` settings.
    cfg: OrchestratorConfig,
    /// Its consumer name in the `orchestrator` group.
    consumer: String,
    /// Redis.
    broker: Broker,
    /// Copies of the routes of the queues its steps go to (task type → pool).
    routes: RouteCache,
    /// The reply streams it reads (one on a server; one per queue partition on a
    /// cluster), kept by [`streams`].
    replies: std::sync::RwLock<Vec<String>>,
}

impl Ctx {
    /// The reply streams read so far.
    fn reply_streams(&self) -> Vec<String> {
        self.replies.read().expect("poisoned").clone()
    }
}

/// An orchestrator instance; see the module documentation.
pub struct Orchestrator {
    redis: RedisConfig,
    defs: Arc<[SagaDef]>,
    cfg: OrchestratorConfig,
    consumer: String,
}

impl Orchestrator {
    /// An orchestrator for the Redis and `[orchestrator]` settings of `cfg`, running the
    /// sagas `defs` (usually [`super::configured`]).
    pub fn new(cfg: &Config, defs: Vec<SagaDef>) -> Orchestrator {
        let consumer = cfg
            .orchestrator
            .consumer_name
            .clone()
            .unwrap_or_else(|| format!("{}-orch", crate::worker::default_consumer_name()));
        Orchestrator {
            redis: cfg.redis.clone(),
            defs: defs.into(),
            cfg: cfg.orchestrator.clone(),
            consumer,
        }
    }

    /// This instance's consumer name in the `orchestrator` group.
    pub fn consumer_name(&self) -> &str {
        &self.consumer
    }

    /// Runs until `shutdown` fires: reads replies, fires deadlines, samples gauges. Redis
    /// being unreachable is not an error: it retries with backoff. Once its consumer
    /// group exists the process counts as ready (`/ready`). On shutdown, replies already
    /// read are applied and acknowledged before it returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let conn = match rdb::connect(
            &self.redis,
            &shutdown,
            rdb::ClientName::new(&self.consumer, rdb::Role::Orchestrator),
        )
        .await
        {
            Ok(c) => c,
            Err(_) if shutdown.is_cancelled() => return Ok(()),
            Err(e) => return Err(e),
        };
        let broker = Broker::new(conn);
        let ctx = Arc::new(Ctx {
            defs: self.defs,
            cfg: self.cfg,
            consumer: self.consumer,
            broker,
            routes: RouteCache::default(),
            replies: Default::default(),
        });
        let mut attempt = 0;
        loop {
            let setup = async {
                let replies = streams::wanted(&ctx).await?;
                ctx.broker
                    .saga_setup(
                        &replies,
                        ctx.cfg.retention_secs.saturating_mul(1000),
                        ctx.cfg.step_grace_ms,
                    )
                    .await
            };
            match setup.await {
                Ok(()) => break,
                Err(e) => {
                    attempt += 1;
                    // A refusal is logged by the broker with its fix (rate-limited).
                    if !e.is_no_permission() {
                        tracing::warn!(error = %e, "orchestrator cannot set up its consumer group yet, retrying");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(rdb::reconnect_delay(attempt)) => {}
                    }
                }
            }
        }
        // Issue 10.11: a standalone orchestrator never said its group existed, so its
        // `/ready` stayed 503 ("consumer groups not created yet") forever.
        crate::health::set_groups_ready(true);
        let pool = rdb::reader_pool(
            &self.redis,
            Duration::from_millis(ctx.cfg.block_ms),
            1,
            rdb::ClientName::new(&ctx.consumer, rdb::Role::Reader),
        )?;
        tracing::info!(
            consumer = %ctx.consumer,
            sagas = ?ctx.defs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            cluster = ctx.broker.is_cluster(),
            "orchestrator started"
        );
        let loops = TaskTracker::new();
        loops.spawn(streams::run(ctx.clone(), pool, shutdown.clone()));
        loops.spawn(claims::run(ctx.clone(), shutdown.clone()));
        loops.spawn(prune::run(ctx.clone(), shutdown.clone()));
        loops.spawn(deadlines::run(ctx.clone(), shutdown.clone()));
        if ctx.broker.is_cluster() {
            loops.spawn(outbox::run(ctx.clone(), shutdown.clone()));
        }
        loops.spawn(gauges::run(ctx.clone(), shutdown.clone()));
        loops.close();
        let mut serving = crate::health::serving();
        shutdown.cancelled().await;
        serving.shutting_down();
        loops.wait().await;
        // Leave the groups tidy: drop this consumer where nothing is pending under it.
        for replies in ctx.reply_streams() {
            if let Err(e) = ctx.broker.saga_leave_group(&replies, &ctx.consumer).await {
                tracing::debug!(error = %e, replies = %replies, "leaving the orchestrator group failed");
            }
        }
        tracing::info!(consumer = %ctx.consumer, "orchestrator stopped");
        Ok(())
    }
}

/// Sleeps `d`; false when `stop` fired first.
async fn sleep_or_stop(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Logs an outcome that wrote nothing.
fn log_outcome(o: &Outcome, what: &str) {
    match o {
        Outcome::Applied { .. } | Outcome::Noop => {}
        Outcome::Stale(r) => tracing::debug!(reason = %r, "stale {what} ignored"),
        Outcome::Ended(status) => {
            tracing::debug!(status = %status, "{what} for a saga that has ended ignored")
        }
        Outcome::Rejected(r) => {
            tracing::warn!(reason = %r, "{what} rejected by the saga state machine")
        }
        Outcome::Missing => {
            tracing::debug!("{what} for a saga that does not exist (expired?) ignored")
        }
    }
}
