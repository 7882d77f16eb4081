//! The orchestrator: turns task replies and due deadlines into saga transitions.
//!
//! # Why it holds no state
//!
//! Everything an orchestrator knows is in Redis: the saga records, the deadlines, and
//! the replies waiting in `ts:sagas:replies`. It reads replies through the consumer group
//! `orchestrator`, applies each as one compare-and-set transition
//! (`store.rs`) and only then acknowledges it. So any number of orchestrators can
//! run (in `taskstream orchestrator` processes or next to workers), and killing one
//! loses nothing:
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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::definition::SagaDef;
use super::fsm::Event;
use super::keys;
use super::store::{self, Correlation, Deadline, Outcome, Side, Trigger};
use crate::config::{Config, RedisConfig};
use crate::error::Result;
use crate::metrics as m;
use crate::rdb::{self, RawEntry, ReaderPool};
use crate::task::now_ms;

/// Most due deadlines handled per round.
const DEADLINE_BATCH: usize = 256;
/// How often dead orchestrator consumers are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// A consumer idle this long with nothing pending is removed from the group.
const PRUNE_IDLE: Duration = Duration::from_secs(3600);

/// The `[orchestrator]` table of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrchestratorConfig {
    /// Consumer name in the `orchestrator` group; default `<host>-<pid>-<random>`. Must
    /// be unique per process.
    pub consumer_name: Option<String>,
    /// How long one read of the reply stream blocks waiting for replies, in ms.
    pub block_ms: u64,
    /// Most replies read (and applied concurrently) at once.
    pub read_count: usize,
    /// Replies read by an orchestrator and left unacknowledged this long (it died or
    /// hangs) are claimed by another one, in ms.
    pub claim_idle_ms: u64,
    /// Period of the deadline loop, in ms: the precision of step and saga time-outs.
    pub deadline_interval_ms: u64,
    /// Added to a step's budget (every attempt's time limit plus the retry delays)
    /// before the step counts as timed out, in ms: covers waiting in the queue.
    pub step_grace_ms: u64,
    /// How long finished sagas (and their history) are kept, in seconds.
    pub retention_secs: u64,
    /// Period of sampling the saga gauges (sagas by state, overdue), in ms.
    pub sample_interval_ms: u64,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            consumer_name: None,
            block_ms: 1_000,
            read_count: 256,
            claim_idle_ms: 2_000,
            deadline_interval_ms: 100,
            step_grace_ms: store::DEFAULT_STEP_GRACE.as_millis() as u64,
            retention_secs: store::DEFAULT_RETENTION.as_secs(),
            sample_interval_ms: 5_000,
        }
    }
}

impl OrchestratorConfig {
    /// Every problem of the table, as `(orchestrator.key, reason)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let mut bad = |k: &str, r: &str| p.push((format!("orchestrator.{k}"), r.to_string()));
        for (k, v) in [
            ("block_ms", self.block_ms),
            ("claim_idle_ms", self.claim_idle_ms),
            ("deadline_interval_ms", self.deadline_interval_ms),
            ("retention_secs", self.retention_secs),
            ("sample_interval_ms", self.sample_interval_ms),
        ] {
            if v == 0 {
                bad(k, "must be positive");
            }
        }
        if self.read_count == 0 || self.read_count > 10_000 {
            bad("read_count", "must be between 1 and 10000");
        }
        if self.claim_idle_ms > 0 && self.claim_idle_ms < 100 {
            bad(
                "claim_idle_ms",
                "must be at least 100 ms, or replies being applied would be claimed by other orchestrators",
            );
        }
        if let Some(n) = &self.consumer_name {
            if n.is_empty() || n.contains(char::is_whitespace) {
                bad("consumer_name", "must be non-empty without spaces");
            }
        }
        p
    }
}

struct Ctx {
    defs: Arc<[SagaDef]>,
    cfg: OrchestratorConfig,
    consumer: String,
}

/// An orchestrator instance; see the module documentation.
pub struct Orchestrator {
    redis: RedisConfig,
    ctx: Arc<Ctx>,
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
            ctx: Arc::new(Ctx {
                defs: defs.into(),
                cfg: cfg.orchestrator.clone(),
                consumer,
            }),
        }
    }

    /// This instance's consumer name in the `orchestrator` group.
    pub fn consumer_name(&self) -> &str {
        &self.ctx.consumer
    }

    /// Runs until `shutdown` fires: reads replies, fires deadlines, samples gauges. Redis
    /// being unreachable is not an error: it retries with backoff. On shutdown, replies
    /// already read are applied and acknowledged before it returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let ctx = self.ctx;
        let mut conn = match rdb::connect(
            &self.redis,
            &shutdown,
            rdb::ClientName::new(&ctx.consumer, rdb::Role::Orchestrator),
        )
        .await
        {
            Ok(c) => c,
            Err(_) if shutdown.is_cancelled() => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut attempt = 0;
        loop {
            match setup(&mut conn, &ctx.cfg).await {
                Ok(()) => break,
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, "orchestrator cannot set up its consumer group yet, retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(rdb::reconnect_delay(attempt)) => {}
                    }
                }
            }
        }
        let pool = rdb::reader_pool(
            &self.redis,
            Duration::from_millis(ctx.cfg.block_ms),
            1,
            rdb::ClientName::new(&ctx.consumer, rdb::Role::Reader),
        )?;
        tracing::info!(
            consumer = %ctx.consumer,
            sagas = ?ctx.defs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            "orchestrator started"
        );
        let loops = TaskTracker::new();
        loops.spawn(reply_loop(
            ctx.clone(),
            conn.clone(),
            pool,
            shutdown.clone(),
        ));
        loops.spawn(claim_loop(ctx.clone(), conn.clone(), shutdown.clone()));
        loops.spawn(deadline_loop(ctx.clone(), conn.clone(), shutdown.clone()));
        loops.spawn(sample_loop(ctx.clone(), conn.clone(), shutdown.clone()));
        loops.close();
        loops.wait().await;
        // Leave the group tidy: drop this consumer if nothing is pending under it.
        let pending: redis::RedisResult<redis::Value> = redis::cmd("XPENDING")
            .arg(keys::REPLIES)
            .arg(keys::GROUP)
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(&ctx.consumer)
            .query_async(&mut conn)
            .await;
        if matches!(&pending, Ok(redis::Value::Array(a)) if a.is_empty()) {
            let _: redis::RedisResult<i64> = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(keys::REPLIES)
                .arg(keys::GROUP)
                .arg(&ctx.consumer)
                .query_async(&mut conn)
                .await;
        }
        tracing::info!(consumer = %ctx.consumer, "orchestrator stopped");
        Ok(())
    }
}

/// Creates the group and publishes the settings every process that moves sagas applies.
async fn setup(conn: &mut ConnectionManager, cfg: &OrchestratorConfig) -> Result<()> {
    rdb::ensure_group(conn, keys::REPLIES, keys::GROUP).await?;
    redis::cmd("HSET")
        .arg(keys::SETTINGS)
        .arg("retention_ms")
        .arg(cfg.retention_secs.saturating_mul(1000))
        .arg("step_grace_ms")
        .arg(cfg.step_grace_ms)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

async fn sleep_or_stop(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Reads replies on an exclusive connection (the read blocks) and applies them.
async fn reply_loop(
    ctx: Arc<Ctx>,
    conn: ConnectionManager,
    pool: ReaderPool,
    stop: CancellationToken,
) {
    let block = Duration::from_millis(ctx.cfg.block_ms);
    let mut rc: Option<deadpool_redis::Connection> = None;
    let mut failures: u32 = 0;
    while !stop.is_cancelled() {
        if rc.is_none() {
            match pool.get().await {
                Ok(c) => rc = Some(c),
                Err(e) => {
                    failures += 1;
                    let d = rdb::reconnect_delay(failures);
                    tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "orchestrator cannot connect to redis, retrying");
                    if !sleep_or_stop(&stop, d).await {
                        break;
                    }
                    continue;
                }
            }
        }
        let c = rc.as_mut().expect("connected above");
        // A read in flight when `stop` fires completes (at most `block` later) and its
        // replies are applied, so shutdown leaves nothing pending under this consumer.
        match rdb::read_group(
            &mut **c,
            keys::GROUP,
            &ctx.consumer,
            keys::REPLIES,
            ctx.cfg.read_count,
            Some(block),
        )
        .await
        {
            Ok(entries) => {
                if failures > 0 {
                    tracing::info!("orchestrator reconnected to redis");
                    failures = 0;
                }
                if !entries.is_empty() {
                    apply_replies(&ctx, &conn, entries).await;
                }
            }
            Err(e) => {
                failures += 1;
                // The connection may hold a half-read reply: never reuse it.
                if let Some(c) = rc.take() {
                    let _ = deadpool_redis::Connection::take(c);
                }
                if e.code() == Some("NOGROUP") {
                    tracing::warn!("orchestrator consumer group missing (reply stream deleted?), recreating it");
                    let mut conn = conn.clone();
                    let _ = rdb::ensure_group(&mut conn, keys::REPLIES, keys::GROUP).await;
                    continue;
                }
                metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => "saga_replies").increment(1);
                let d = rdb::reconnect_delay(failures);
                tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "reading saga replies failed, reconnecting");
                if !sleep_or_stop(&stop, d).await {
                    break;
                }
            }
        }
    }
}

/// Maps a reply entry to its saga and trigger.
fn parse_reply(e: &RawEntry) -> std::result::Result<(String, Trigger), String> {
    let fields = e.fields.as_ref().ok_or("the entry was deleted")?;
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k.as_slice() == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let corr_text = get("correlation").ok_or("no correlation field")?;
    let corr = Correlation::parse(&corr_text)
        .ok_or_else(|| format!("correlation {corr_text:?} is not ID|STEP|action-or-comp|REV"))?;
    let outcome = get("outcome").ok_or("no outcome field")?;
    let attempt = get("attempt").and_then(|a| a.parse().ok()).unwrap_or(1);
    let error = || get("error").unwrap_or_else(|| "no error given".into());
    let step = corr.step;
    let event = match (corr.side, outcome.as_str()) {
        (Side::Action, "succeeded") => {
            let raw = get("result").unwrap_or_else(|| "null".into());
            let output = serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw));
            Event::StepSucceeded { step, output }
        }
        (Side::Action, "failed") => Event::StepFailed {
            step,
            error: error(),
        },
        (Side::Compensation, "succeeded") => Event::CompensationSucceeded { step },
        (Side::Compensation, "failed") => Event::CompensationFailed {
            step,
            error: error(),
        },
        (_, other) => return Err(format!("unknown outcome {other:?}")),
    };
    Ok((
        corr.id,
        Trigger::Reply {
            event,
            rev: corr.rev,
            attempt,
        },
    ))
}

fn log_outcome(o: &Outcome, what: &str) {
    match o {
        Outcome::Applied { .. } | Outcome::Noop => {}
        Outcome::Stale(r) => tracing::debug!(reason = %r, "stale {what} ignored"),
        Outcome::Rejected(r) => {
            tracing::warn!(reason = %r, "{what} rejected by the saga state machine")
        }
        Outcome::Missing => {
            tracing::debug!("{what} for a saga that does not exist (expired?) ignored")
        }
    }
}

/// Applies a batch of replies (sagas concurrently, each saga's in order), then
/// acknowledges the ones applied or found stale. A reply that hit a Redis error stays
/// pending (with the later ones of its saga) and is claimed again later.
async fn apply_replies(ctx: &Arc<Ctx>, conn: &ConnectionManager, entries: Vec<RawEntry>) {
    let mut ack = Vec::new();
    let mut order: Vec<String> = Vec::new();
    let mut by_saga: HashMap<String, Vec<(String, Trigger)>> = HashMap::new();
    for e in entries {
        match parse_reply(&e) {
            Ok((id, trig)) => {
                by_saga
                    .entry(id.clone())
                    .or_insert_with(|| {
                        order.push(id);
                        Vec::new()
                    })
                    .push((e.id, trig));
            }
            Err(reason) => {
                tracing::warn!(entry_id = %e.id, reason = %reason, "malformed saga reply dropped");
                ack.push(e.id);
            }
        }
    }
    let mut set = JoinSet::new();
    for id in order {
        let items = by_saga.remove(&id).unwrap_or_default();
        let (ctx, mut conn) = (ctx.clone(), conn.clone());
        let span = tracing::info_span!("saga", saga_id = %id);
        set.spawn(
            async move {
                let mut done = Vec::new();
                for (entry_id, trig) in items {
                    match store::advance(&mut conn, &ctx.defs, &id, &trig).await {
                        Ok(o) => {
                            log_outcome(&o, "reply");
                            done.push(entry_id);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, entry_id = %entry_id, "saga reply not applied; it stays pending and will be retried");
                            break;
                        }
                    }
                }
                done
            }
            .instrument(span),
        );
    }
    while let Some(r) = set.join_next().await {
        match r {
            Ok(done) => ack.extend(done),
            Err(e) => {
                tracing::error!(error = %e, "applying saga replies panicked; they stay pending")
            }
        }
    }
    if ack.is_empty() {
        return;
    }
    let mut p = redis::pipe();
    p.cmd("XACK")
        .arg(keys::REPLIES)
        .arg(keys::GROUP)
        .arg(&ack)
        .ignore();
    p.cmd("XDEL").arg(keys::REPLIES).arg(&ack).ignore();
    let mut conn = conn.clone();
    if let Err(e) = p.query_async::<()>(&mut conn).await {
        // Applied but not acknowledged: they are claimed again later and found stale.
        tracing::warn!(error = %e, replies = ack.len(), "acknowledging saga replies failed");
    }
}

/// `XAUTOCLAIM` of one page: the next cursor and the claimed entries.
async fn autoclaim(
    conn: &mut ConnectionManager,
    ctx: &Ctx,
    cursor: &str,
) -> redis::RedisResult<(String, Vec<RawEntry>)> {
    let v: redis::Value = redis::cmd("XAUTOCLAIM")
        .arg(keys::REPLIES)
        .arg(keys::GROUP)
        .arg(&ctx.consumer)
        .arg(ctx.cfg.claim_idle_ms)
        .arg(cursor)
        .arg("COUNT")
        .arg(ctx.cfg.read_count)
        .query_async(conn)
        .await?;
    let redis::Value::Array(mut parts) = v else {
        return Ok(("0-0".into(), Vec::new()));
    };
    if parts.len() < 2 {
        return Ok(("0-0".into(), Vec::new()));
    }
    let entries = rdb::parse_entries(parts.remove(1));
    let next = match parts.remove(0) {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::SimpleString(s) => s,
        _ => "0-0".into(),
    };
    Ok((next, entries))
}

/// Claims and applies replies left pending too long by any consumer (one that died, or
/// this one after a Redis error); now and then removes consumers of dead orchestrators.
async fn claim_loop(ctx: Arc<Ctx>, mut conn: ConnectionManager, stop: CancellationToken) {
    let every = Duration::from_millis((ctx.cfg.claim_idle_ms / 2).max(50));
    let mut last_prune = Instant::now();
    while sleep_or_stop(&stop, every).await {
        let mut cursor = "0-0".to_string();
        loop {
            match autoclaim(&mut conn, &ctx, &cursor).await {
                Ok((next, entries)) => {
                    if !entries.is_empty() {
                        tracing::info!(
                            replies = entries.len(),
                            idle_ms = ctx.cfg.claim_idle_ms,
                            "claimed saga replies left unacknowledged (an orchestrator stopped or is stuck)"
                        );
                        apply_replies(&ctx, &conn, entries).await;
                    }
                    if next == "0-0" || stop.is_cancelled() {
                        break;
                    }
                    cursor = next;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming idle saga replies failed");
                    break;
                }
            }
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            let r: redis::RedisResult<i64> =
                crate::rdb::scripts::script(crate::rdb::ScriptId::SagaPruneConsumers)
                    .key(keys::REPLIES)
                    .arg(keys::GROUP)
                    .arg(PRUNE_IDLE.as_millis() as u64)
                    .arg(&ctx.consumer)
                    .invoke_async(&mut conn)
                    .await;
            match r {
                Ok(n) if n > 0 => tracing::info!(
                    removed = n,
                    "removed idle orchestrator consumers with nothing pending"
                ),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "pruning orchestrator consumers failed"),
            }
        }
    }
}

/// Fires due deadlines: step time-outs and saga time-outs.
async fn deadline_loop(ctx: Arc<Ctx>, mut conn: ConnectionManager, stop: CancellationToken) {
    let every = Duration::from_millis(ctx.cfg.deadline_interval_ms);
    while sleep_or_stop(&stop, every).await {
        loop {
            let due: redis::RedisResult<Vec<String>> = redis::cmd("ZRANGEBYSCORE")
                .arg(keys::DEADLINES)
                .arg("-inf")
                .arg(now_ms())
                .arg("LIMIT")
                .arg(0)
                .arg(DEADLINE_BATCH)
                .query_async(&mut conn)
                .await;
            let due = match due {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "reading saga deadlines failed");
                    break;
                }
            };
            let n = due.len();
            if n == 0 {
                break;
            }
            let all_ok = fire_deadlines(&ctx, &conn, due).await;
            if n < DEADLINE_BATCH || !all_ok || stop.is_cancelled() {
                break;
            }
        }
    }
}

/// Applies due deadline members; returns false if any hit a Redis error (left in place).
async fn fire_deadlines(ctx: &Arc<Ctx>, conn: &ConnectionManager, due: Vec<String>) -> bool {
    let mut order: Vec<String> = Vec::new();
    let mut by_saga: HashMap<String, Vec<(String, Trigger)>> = HashMap::new();
    let mut drop_members = Vec::new();
    for member in due {
        let (id, trig) = match store::parse_member(&member) {
            Some(Deadline::Saga { id }) => (id, Trigger::SagaDeadline),
            Some(Deadline::Step { id, step, rev }) => (id, Trigger::StepDeadline { step, rev }),
            None => {
                tracing::warn!(member = %member, "malformed saga deadline dropped");
                drop_members.push(member);
                continue;
            }
        };
        by_saga
            .entry(id.clone())
            .or_insert_with(|| {
                order.push(id);
                Vec::new()
            })
            .push((member, trig));
    }
    let mut set = JoinSet::new();
    for id in order {
        let items = by_saga.remove(&id).unwrap_or_default();
        let (ctx, mut conn) = (ctx.clone(), conn.clone());
        let span = tracing::info_span!("saga", saga_id = %id);
        set.spawn(
            async move {
                let mut drop = Vec::new();
                let mut ok = true;
                for (member, trig) in items {
                    match store::advance(&mut conn, &ctx.defs, &id, &trig).await {
                        Ok(o @ Outcome::Applied { .. }) => match &trig {
                            Trigger::SagaDeadline => {
                                tracing::warn!(outcome = ?o, "saga timed out; rolling back")
                            }
                            _ => tracing::warn!(outcome = ?o, "saga step timed out; rolling back"),
                        },
                        Ok(o) => {
                            log_outcome(&o, "deadline");
                            drop.push(member);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "saga deadline not applied; retrying later");
                            ok = false;
                            break;
                        }
                    }
                }
                (drop, ok)
            }
            .instrument(span),
        );
    }
    let mut all_ok = true;
    while let Some(r) = set.join_next().await {
        match r {
            Ok((d, ok)) => {
                drop_members.extend(d);
                all_ok &= ok;
            }
            Err(e) => {
                tracing::error!(error = %e, "firing saga deadlines panicked");
                all_ok = false;
            }
        }
    }
    if !drop_members.is_empty() {
        let mut conn = conn.clone();
        let r: redis::RedisResult<()> = redis::cmd("ZREM")
            .arg(keys::DEADLINES)
            .arg(&drop_members)
            .query_async(&mut conn)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "removing spent saga deadlines failed");
            all_ok = false;
        }
    }
    all_ok
}

/// Samples the saga gauges from Redis, so every instance reports the same truth.
async fn sample_loop(ctx: Arc<Ctx>, mut conn: ConnectionManager, stop: CancellationToken) {
    let every = Duration::from_millis(ctx.cfg.sample_interval_ms);
    loop {
        match super::ops::counts(&mut conn).await {
            Ok(c) => {
                for (state, n) in &c.by_state {
                    metrics::gauge!(m::SAGAS, "state" => state.clone()).set(*n as f64);
                }
                metrics::gauge!(m::SAGAS_OVERDUE).set(c.overdue as f64);
            }
            Err(e) => tracing::debug!(error = %e, "sampling saga gauges failed"),
        }
        if !sleep_or_stop(&stop, every).await {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(&str, &str)]) -> RawEntry {
        RawEntry {
            id: "1-0".into(),
            fields: Some(
                fields
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                    .collect(),
            ),
        }
    }

    #[test]
    fn replies_map_to_events() {
        let (id, t) = parse_reply(&entry(&[
            ("correlation", "S|2|action|7"),
            ("outcome", "succeeded"),
            ("attempt", "2"),
            ("result", r#"{"a":1}"#),
        ]))
        .unwrap();
        assert_eq!(id, "S");
        assert_eq!(
            t,
            Trigger::Reply {
                event: Event::StepSucceeded {
                    step: 2,
                    output: serde_json::json!({"a": 1})
                },
                rev: 7,
                attempt: 2
            }
        );
        let (_, t) = parse_reply(&entry(&[
            ("correlation", "S|0|comp|3"),
            ("outcome", "failed"),
            ("error", "disk full"),
        ]))
        .unwrap();
        assert_eq!(
            t,
            Trigger::Reply {
                event: Event::CompensationFailed {
                    step: 0,
                    error: "disk full".into()
                },
                rev: 3,
                attempt: 1
            }
        );
        assert!(parse_reply(&entry(&[("outcome", "failed")])).is_err());
        assert!(parse_reply(&entry(&[("correlation", "S|0|comp|3"), ("outcome", "meh")])).is_err());
        assert!(parse_reply(&RawEntry {
            id: "1-0".into(),
            fields: None
        })
        .is_err());
    }

    #[test]
    fn config_defaults_and_problems() {
        let c = OrchestratorConfig::default();
        assert!(c.problems().is_empty());
        assert_eq!(c.claim_idle_ms, 2_000);
        assert_eq!(c.retention_secs, 7 * 86_400);
        let bad = OrchestratorConfig {
            block_ms: 0,
            read_count: 0,
            claim_idle_ms: 10,
            consumer_name: Some("a b".into()),
            ..c
        };
        let keys: Vec<String> = bad.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "orchestrator.block_ms",
                "orchestrator.read_count",
                "orchestrator.claim_idle_ms",
                "orchestrator.consumer_name"
            ]
        );
    }
}
