//! Connections to Redis: the multiplexed command connection (reconnects by itself) and
//! the pool of exclusive connections that blocking reads need.
//!
//! redis-rs times a reply out after 500 ms by default, and a blocking `XREADGROUP … BLOCK`
//! on the multiplexed connection would stall every other command behind it; so blocking
//! reads get exclusive connections whose reply timeout is the block time plus the normal
//! response timeout.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisConfig;
use crate::error::{Error, Result};

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

/// True when a Redis at `url` answers PING within about a second (a blocking check, for
/// tools that spawn a private server and wait for it).
pub fn answers_ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
        return false;
    };
    redis::cmd("PING").query::<String>(&mut conn).is_ok()
}
