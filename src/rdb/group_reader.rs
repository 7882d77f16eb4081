//! The one exclusive-connection consumer-group reader, used by the worker's lane readers and
//! the saga orchestrator's reply loop.
//!
//! Why one type: both loops need the same four things, and each got one of them wrong at
//! some point when they were written twice —
//! - a blocking `XREADGROUP … BLOCK` on its own connection (on the multiplexed one it would
//!   stall every other command; its reply timeout is the block time plus the usual one);
//! - a connection that failed mid-read is discarded, never returned to the pool, because it
//!   may still hold a half-read reply that the next command would take for its own;
//! - a missing group (Redis restarted empty, failed over to an empty replica, stream
//!   deleted) is recreated instead of spinning on NOGROUP forever (a bug of the first
//!   reader);
//! - failures back off exponentially with jitter, and are logged, counted and reported to
//!   `/ready`; the loop never exits on a Redis error;
//! - a refused read (`NOPERM`: the user may not run `XREADGROUP` or touch the stream's
//!   key) is reported as that, with its fix ([`super::noperm`]), not as Redis being down.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::noperm::Watched;
use super::{RawEntry, ReaderPool};
use crate::metrics as m;

/// A consumer-group reader of one stream on an exclusive connection.
pub(crate) struct GroupReader {
    /// Where exclusive connections come from.
    pool: ReaderPool,
    /// Stream key.
    stream: String,
    /// Consumer group.
    group: String,
    /// Consumer name.
    consumer: String,
    /// What reads (for logs), e.g. `queue orders, lane bulk`.
    what: String,
    /// Metric label of the operation (`xreadgroup`, `saga_replies`).
    op: &'static str,
    /// The connection, while it is trusted.
    conn: Option<super::ReaderConn>,
    /// Consecutive failures (the backoff exponent).
    failures: u32,
    /// Set on every new connection until [`GroupReader::take_fresh`] reads it.
    fresh: bool,
    /// The ACL user of the pool's connections, learned at the first refusal.
    user: Arc<OnceLock<String>>,
    /// Set by [`GroupReader::recycle`]: the next connection replaces a healthy one, so it
    /// is not fresh (no reply was lost).
    recycled: bool,
}

impl GroupReader {
    /// A reader of `stream` as `consumer` of `group`.
    pub(crate) fn new(
        pool: ReaderPool,
        stream: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
        what: impl Into<String>,
        op: &'static str,
    ) -> Self {
        GroupReader {
            pool,
            stream: stream.into(),
            group: group.into(),
            consumer: consumer.into(),
            what: what.into(),
            op,
            conn: None,
            failures: 0,
            fresh: false,
            user: Arc::default(),
            recycled: false,
        }
    }

    /// True once after each new connection: a reply lost with the old connection may have
    /// left delivered entries in this consumer's pending list, so the caller re-reads its
    /// own history then.
    pub(crate) fn take_fresh(&mut self) -> bool {
        std::mem::take(&mut self.fresh)
    }

    /// Waits (with backoff) until a connection is there; false when `stop` fired first.
    pub(crate) async fn connected(&mut self, stop: &CancellationToken) -> bool {
        while self.conn.is_none() {
            if stop.is_cancelled() {
                return false;
            }
            match self.pool.get().await {
                Ok(c) => {
                    if self.failures > 0 {
                        tracing::info!(reader = %self.what, "reader reconnected to redis");
                        metrics::counter!(m::RECONNECTS_TOTAL, "role" => "reader").increment(1);
                    }
                    self.conn = Some(c);
                    self.fresh = !std::mem::take(&mut self.recycled);
                }
                Err(e) => {
                    self.failures += 1;
                    crate::health::set_redis_up(false);
                    let d = super::reconnect_delay(self.failures);
                    tracing::warn!(reader = %self.what, error = %e, retry_in_ms = d.as_millis() as u64, "reader cannot connect to redis, retrying");
                    if !sleep_or_stop(stop, d).await {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Closes the connection after a read that made its buffers grow (large entries), so
    /// the next read opens a new one. A connection keeps the capacity its read buffer grew
    /// to for as long as it lives, and a pooled one lives as long as the process: one
    /// 10 MiB entry kept 16 MiB resident per lane (issue 10, item 12). Nothing is lost:
    /// the reply was read completely.
    pub(crate) fn recycle(&mut self) {
        if let Some(c) = self.conn.take() {
            c.discard();
            self.recycled = true;
        }
    }

    /// Reads up to `count` new entries (`>`), blocking up to `block` when given. `None`
    /// when the read failed (already handled: connection discarded, group recreated or
    /// backed off) or `stop` fired while connecting. A read already in flight when `stop`
    /// fires completes (at most `block` later), so its entries are never stranded.
    pub(crate) async fn read_new(
        &mut self,
        count: usize,
        block: Option<Duration>,
        stop: &CancellationToken,
    ) -> Option<Vec<RawEntry>> {
        self.read(">", count, block, stop).await
    }

    /// Reads up to `count` of this consumer's own pending entries after `after` (`0` for
    /// the start). `None` as for [`GroupReader::read_new`].
    pub(crate) async fn read_history(
        &mut self,
        after: &str,
        count: usize,
        stop: &CancellationToken,
    ) -> Option<Vec<RawEntry>> {
        self.read(after, count, None, stop).await
    }

    async fn read(
        &mut self,
        from: &str,
        count: usize,
        block: Option<Duration>,
        stop: &CancellationToken,
    ) -> Option<Vec<RawEntry>> {
        if !self.connected(stop).await {
            return None;
        }
        let mut c = Watched::new(
            self.conn.take().expect("connected above"),
            self.user.clone(),
        );
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&self.stream).arg(from);
        // The reply as it came, not through `Cmd::query_async`: that walks the whole reply
        // tree after parsing, rebuilding every array to look for nested errors, which cost
        // ~5,700 instructions per entry read (issue 14.1). An XREADGROUP reply carries an
        // error only at the top; `Watched` has seen the reply for refusals either way.
        let r = match redis::aio::ConnectionLike::req_packed_command(&mut c, &cmd).await {
            Ok(redis::Value::ServerError(e)) => Err(e.into()),
            other => other,
        };
        self.conn = Some(c.into_inner());
        match r {
            Ok(v) => {
                self.failures = 0;
                crate::health::set_redis_up(true);
                Some(super::parse_read_reply(v))
            }
            Err(e) => {
                self.failures += 1;
                // The connection may hold a half-read reply: never reuse it.
                if let Some(c) = self.conn.take() {
                    c.discard();
                }
                if e.code() == Some("NOGROUP") {
                    tracing::warn!(reader = %self.what, stream = %self.stream, "consumer group missing (Redis restarted empty, failed over, or the stream was deleted), recreating it");
                    let recreated = match self.pool.get().await {
                        Ok(p) => {
                            let mut p = Watched::new(p, self.user.clone());
                            super::create_group(&mut p, &self.stream, &self.group).await
                        }
                        Err(e) => Err(redis::RedisError::from((
                            redis::ErrorKind::Io,
                            "no connection",
                            e.to_string(),
                        ))),
                    };
                    match recreated {
                        Ok(()) => return None,
                        Err(e) => {
                            tracing::warn!(reader = %self.what, error = %e, "cannot recreate the consumer group");
                        }
                    }
                } else if super::no_permission(&e).is_some() {
                    // Redis answered: logged with its fix and shown by /ready (noperm).
                    let d = super::reconnect_delay(self.failures);
                    tracing::debug!(reader = %self.what, error = %e, retry_in_ms = d.as_millis() as u64, "read refused, retrying");
                    sleep_or_stop(stop, d).await;
                    return None;
                } else {
                    crate::health::set_redis_up(false);
                    metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => self.op).increment(1);
                }
                let d = super::reconnect_delay(self.failures);
                tracing::warn!(reader = %self.what, error = %e, retry_in_ms = d.as_millis() as u64, "read failed, reconnecting");
                sleep_or_stop(stop, d).await;
                None
            }
        }
    }
}

/// Sleeps `d` unless `stop` fires first; false when it did.
async fn sleep_or_stop(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}
