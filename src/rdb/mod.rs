//! Every Redis command and Lua script taskstream sends lives here (asynq's `internal/rdb`).
//!
//! Each state transition of a task is one atomic operation: a Lua script or a MULTI/EXEC,
//! never two round trips that a crash could split. Hot-path replies (XREADGROUP) are
//! decoded straight from [`redis::Value`], moving the field bytes out instead of copying
//! them into maps.
//!
//! Connections: commands go through a multiplexed [`ConnectionManager`], which reconnects
//! by itself; blocking `XREADGROUP … BLOCK` never runs on it (it would stall every other
//! command), but on an exclusive connection from [`ReaderPool`] whose reply timeout is
//! longer than the block time (redis-rs times replies out after 500 ms by default).

mod parse;

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisError, Script, Value};

pub use parse::{RawEntry, StreamBatch};

use crate::config::RedisConfig;
use crate::error::{Error, Result};
use crate::keys::QueueKeys;

/// The Lua scripts, loaded into Redis on first use and again after a restart (NOSCRIPT).
pub struct Scripts {
    /// Idempotent enqueue.
    pub enqueue_idem: Script,
    /// Scheduled set → stream.
    pub forward: Script,
    /// ACK + delete + retry/dead-letter/reply.
    pub settle: Script,
    /// Claim a dead consumer's entries.
    pub claim_dead: Script,
    /// Claim long-idle entries (XAUTOCLAIM).
    pub claim_idle: Script,
    /// Remove an empty dead consumer.
    pub remove_consumer: Script,
    /// Refresh idle time of running entries.
    pub touch: Script,
    /// Trim a fan-out stream behind its slowest group.
    pub trim_fanout: Script,
    /// Dead letter → queue.
    pub requeue: Script,
    /// GCRA rate limiter.
    pub rate_limit: Script,
}

/// The scripts, compiled once.
pub static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    enqueue_idem: Script::new(include_str!("lua/enqueue_idem.lua")),
    forward: Script::new(include_str!("lua/forward.lua")),
    settle: Script::new(include_str!("lua/settle.lua")),
    claim_dead: Script::new(include_str!("lua/claim_dead.lua")),
    claim_idle: Script::new(include_str!("lua/claim_idle.lua")),
    remove_consumer: Script::new(include_str!("lua/remove_consumer.lua")),
    touch: Script::new(include_str!("lua/touch.lua")),
    trim_fanout: Script::new(include_str!("lua/trim_fanout.lua")),
    requeue: Script::new(include_str!("lua/requeue.lua")),
    rate_limit: Script::new(include_str!("lua/rate_limit.lua")),
});

impl Scripts {
    fn all(&self) -> [&Script; 10] {
        [
            &self.enqueue_idem,
            &self.forward,
            &self.settle,
            &self.claim_dead,
            &self.claim_idle,
            &self.remove_consumer,
            &self.touch,
            &self.trim_fanout,
            &self.requeue,
            &self.rate_limit,
        ]
    }
}

/// Source text of every script, for `SCRIPT LOAD`.
fn script_sources() -> [&'static str; 10] {
    [
        include_str!("lua/enqueue_idem.lua"),
        include_str!("lua/forward.lua"),
        include_str!("lua/settle.lua"),
        include_str!("lua/claim_dead.lua"),
        include_str!("lua/claim_idle.lua"),
        include_str!("lua/remove_consumer.lua"),
        include_str!("lua/touch.lua"),
        include_str!("lua/trim_fanout.lua"),
        include_str!("lua/requeue.lua"),
        include_str!("lua/rate_limit.lua"),
    ]
}

/// True when Redis answered NOSCRIPT (scripts flushed, e.g. by a restart).
pub fn is_noscript(e: &RedisError) -> bool {
    e.code() == Some("NOSCRIPT") || e.to_string().contains("NOSCRIPT")
}

/// An EVALSHA command for `script` with `keys` and `args`, for pipelines.
pub fn evalsha(script: &Script, keys: &[&str], args: Vec<Vec<u8>>) -> Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(script.get_hash()).arg(keys.len());
    for k in keys {
        c.arg(*k);
    }
    for a in args {
        c.arg(a);
    }
    c
}

/// Loads every script (used after NOSCRIPT).
pub async fn load_scripts(conn: &mut ConnectionManager) -> Result<()> {
    let mut p = Pipeline::new();
    for src in script_sources() {
        p.cmd("SCRIPT").arg("LOAD").arg(src).ignore();
    }
    p.query_async::<()>(conn).await?;
    debug_assert_eq!(SCRIPTS.all().len(), script_sources().len());
    Ok(())
}

/// Runs `pipe`, loading the scripts and retrying once if Redis had lost them.
pub async fn query_pipe<T: redis::FromRedisValue>(
    conn: &mut ConnectionManager,
    pipe: &Pipeline,
) -> Result<T> {
    match pipe.query_async::<T>(conn).await {
        Err(e) if is_noscript(&e) => {
            load_scripts(conn).await?;
            Ok(pipe.query_async::<T>(conn).await?)
        }
        r => Ok(r?),
    }
}

/// Builds the client for `cfg.url`.
pub fn client(cfg: &RedisConfig) -> Result<redis::Client> {
    redis::Client::open(cfg.url.as_str()).map_err(|e| {
        Error::Config(format!(
            "redis.url {:?} is not usable: {e}",
            crate::config::redact_url(&cfg.url)
        ))
    })
}

/// Connects the multiplexed command connection, retrying with exponential backoff and
/// jitter (and saying so in the log) until Redis answers or `cancel` fires.
pub async fn connect(
    cfg: &RedisConfig,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<ConnectionManager> {
    let client = client(cfg)?;
    let mcfg = ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_millis(cfg.response_timeout_ms)))
        .set_connection_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2));
    let mut attempt: u32 = 0;
    loop {
        match ConnectionManager::new_with_config(client.clone(), mcfg.clone()).await {
            Ok(c) => {
                if attempt > 0 {
                    tracing::info!(
                        url = %crate::config::redact_url(&cfg.url),
                        attempts = attempt + 1,
                        "connected to redis"
                    );
                }
                crate::health::set_redis_up(true);
                return Ok(c);
            }
            Err(e) => {
                attempt += 1;
                crate::health::set_redis_up(false);
                let delay = reconnect_delay(attempt);
                tracing::warn!(
                    url = %crate::config::redact_url(&cfg.url),
                    attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    error = %e,
                    "redis unreachable, retrying with backoff"
                );
                tokio::select! {
                    _ = cancel.cancelled() => return Err(Error::Redis(e)),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Backoff for reconnects: 100 ms doubling to 5 s, full jitter on the upper half.
pub fn reconnect_delay(attempt: u32) -> Duration {
    crate::backoff::Backoff {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(5),
    }
    .delay_random(attempt)
}

/// Exclusive connections for blocking reads.
pub type ReaderPool = deadpool_redis::Pool;

/// Builds the pool of blocking-read connections; replies may take `block` plus the normal
/// response timeout.
pub fn reader_pool(cfg: &RedisConfig, block: Duration, size: usize) -> Result<ReaderPool> {
    let conn_cfg = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(block + Duration::from_millis(cfg.response_timeout_ms)))
        .set_connection_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)));
    let manager = deadpool_redis::Manager::new_with_config(cfg.url.as_str(), conn_cfg)?;
    deadpool_redis::Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .map_err(|e| Error::Pool(e.to_string()))
}

/// Creates `group` on `stream` (and the stream) if missing. The group starts at id 0 so
/// it sees tasks enqueued before any worker ran; an existing group is fine.
pub async fn ensure_group(conn: &mut ConnectionManager, stream: &str, group: &str) -> Result<()> {
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") || e.to_string().contains("BUSYGROUP") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates every group of a queue on both lanes and records the queue in the registry.
pub async fn ensure_queue(
    conn: &mut ConnectionManager,
    keys: &QueueKeys,
    groups: &[String],
) -> Result<()> {
    for stream in [&keys.stream, &keys.express] {
        for g in groups {
            ensure_group(conn, stream, g).await?;
        }
    }
    redis::cmd("SADD")
        .arg(crate::keys::queues_registry())
        .arg(&keys.queue)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// `XREADGROUP GROUP g c COUNT n [BLOCK ms] STREAMS stream >` on an exclusive connection.
pub async fn read_group(
    conn: &mut impl redis::aio::ConnectionLike,
    group: &str,
    consumer: &str,
    stream: &str,
    count: usize,
    block: Option<Duration>,
) -> redis::RedisResult<Vec<RawEntry>> {
    let mut c = redis::cmd("XREADGROUP");
    c.arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count);
    if let Some(b) = block {
        c.arg("BLOCK").arg(b.as_millis() as u64);
    }
    c.arg("STREAMS").arg(stream).arg(">");
    let v: Value = c.query_async(conn).await?;
    Ok(parse::read_reply(v)
        .into_iter()
        .next()
        .map(|b| b.entries)
        .unwrap_or_default())
}

/// Heartbeat: records `consumer` as alive now.
pub async fn heartbeat(
    conn: &mut ConnectionManager,
    heartbeats_key: &str,
    consumer: &str,
    now_ms: u64,
) -> Result<()> {
    redis::cmd("ZADD")
        .arg(heartbeats_key)
        .arg(now_ms)
        .arg(consumer)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// One member of a scheduled set, parsed for display.
pub fn decode_scheduled_member(member: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str::<serde_json::Value>(member) {
        Ok(serde_json::Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// Decodes a list of stream entries (XRANGE, XCLAIM, XAUTOCLAIM replies).
pub fn parse_entries(v: Value) -> Vec<RawEntry> {
    parse::entries(v)
}

/// Decodes the entries of the first stream of an XREADGROUP reply.
pub fn parse_read_reply(v: Value) -> Vec<RawEntry> {
    parse::read_reply(v)
        .into_iter()
        .next()
        .map(|b| b.entries)
        .unwrap_or_default()
}
