//! The broker: every Redis command and Lua script taskstream sends lives under this module
//! (the model is asynq's `internal/rdb`).
//!
//! Each state transition of a task is one method of [`Broker`], one atomic operation — a
//! Lua script or a MULTI/EXEC, never two round trips that a crash could split — written in
//! the file of its subsystem beside the script it runs (`src/rdb/lua/`, all listed in one
//! table in [`scripts`]). Callers pass and receive typed values; no module outside `rdb/`
//! builds a command by hand (`tests/broker_walls.rs` fails the build if one does).
//!
//! Hot-path replies (XREADGROUP) are decoded straight from [`redis::Value`], moving the
//! field bytes out instead of copying them into maps.
//!
//! Connections ([`conn`]): commands go through a multiplexed [`ConnectionManager`], which
//! reconnects by itself; blocking `XREADGROUP … BLOCK` never runs on it (it would stall
//! every other command), but on an exclusive connection from a [`ReaderPool`] whose reply
//! timeout is longer than the block time (redis-rs times replies out after 500 ms by
//! default).
//!
//! Permission refusals ([`noperm`]): every reply of the command connection and of the
//! group readers is watched for `NOPERM`; a refusal is logged with the command and the
//! `ACL SETUSER` that grants it, shown by `/ready` until that command succeeds again, and
//! converted to [`crate::Error::NoPermission`] so the loops retry it.

mod claim;
mod conn;
mod enqueue;
mod group_reader;
mod lifecycle;
mod noperm;
mod parse;
mod routes;
pub(crate) mod scripts;
mod settle;

#[cfg(feature = "cli")]
mod builtin;
#[cfg(feature = "cli")]
mod demo;
mod inspect;
mod preflight;
mod signals;

use redis::aio::ConnectionManager;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::{Pipeline, RedisError, Value};

pub(crate) use claim::ClaimScope;
pub(crate) use conn::hostname;
pub use conn::{
    answers_ping, client, connect, reader_pool, reconnect_delay, tls_certificates, ClientName,
    ReaderPool, Role, NAME_REFRESH,
};
pub(crate) use enqueue::{Added, NewEntry, Placement};
pub(crate) use group_reader::GroupReader;
pub(crate) use noperm::no_permission;
use noperm::Watched;
pub use parse::{RawEntry, StreamBatch};
pub(crate) use scripts::{evalsha, ScriptId};
pub(crate) use settle::{ReplyEntry, SettleAction, SettleScope, Settlement};

use crate::error::Result;
use crate::keys::QueueKeys;

/// The typed broker: one method per Redis operation of the system. Cheap to clone (the
/// multiplexed connection inside is shared).
#[derive(Clone)]
pub struct Broker {
    /// The multiplexed command connection.
    conn: ConnectionManager,
    /// Its ACL user, learned at the first permission refusal (see [`noperm`]).
    user: Arc<OnceLock<String>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker over an established command connection.
    pub fn new(conn: ConnectionManager) -> Self {
        Broker {
            conn,
            user: Arc::default(),
        }
    }

    /// Connects to `cfg`, retrying with backoff until Redis answers or `cancel` fires.
    pub async fn connect(
        cfg: &crate::config::RedisConfig,
        cancel: &tokio_util::sync::CancellationToken,
        name: ClientName,
    ) -> Result<Self> {
        Ok(Broker::new(connect(cfg, cancel, name).await?))
    }

    /// A handle on the command connection, for the methods of this module; its replies
    /// are watched for permission refusals ([`noperm`]).
    pub(crate) fn c(&self) -> Watched<ConnectionManager> {
        Watched::new(self.conn.clone(), self.user.clone())
    }

    /// The command connection unwatched, for the few commands whose refusal costs nothing
    /// by design (`CONFIG GET` in the preflight, `XINFO STREAM` for the arrival counter).
    pub(crate) fn raw(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Loads every script of the table.
    pub async fn load_scripts(&self) -> Result<()> {
        Ok(scripts::load_all(&mut self.c()).await?)
    }

    /// Runs `pipe`, loading the scripts and retrying once if Redis had lost them.
    pub(crate) async fn pipe<T: redis::FromRedisValue>(&self, pipe: &Pipeline) -> Result<T> {
        Ok(scripts::query_pipe(&mut self.c(), pipe).await?)
    }
}

/// True when Redis answered NOSCRIPT (scripts flushed, e.g. by a restart).
pub fn is_noscript(e: &RedisError) -> bool {
    scripts::is_noscript(e)
}

/// Loads every script (used after NOSCRIPT).
pub async fn load_scripts(conn: &mut ConnectionManager) -> Result<()> {
    Broker::new(conn.clone()).load_scripts().await
}

/// Runs `pipe`, loading the scripts and retrying once if Redis had lost them.
pub async fn query_pipe<T: redis::FromRedisValue>(
    conn: &mut ConnectionManager,
    pipe: &Pipeline,
) -> Result<T> {
    Broker::new(conn.clone()).pipe(pipe).await
}

/// Creates `group` on `stream` (and the stream) if missing, on any connection (the
/// group reader uses its exclusive one). BUSYGROUP (it exists) is fine.
pub(crate) async fn create_group(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    group: &str,
) -> redis::RedisResult<()> {
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match r {
        Err(e) if e.code() == Some("BUSYGROUP") || e.to_string().contains("BUSYGROUP") => Ok(()),
        r => r,
    }
}

/// Creates `group` on `stream` (and the stream) if missing. The group starts at id 0 so
/// it sees tasks enqueued before any worker ran; an existing group is fine.
pub async fn ensure_group(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    stream: &str,
    group: &str,
) -> Result<()> {
    Ok(create_group(conn, stream, group).await?)
}

/// Creates every group of a queue on both lanes and records the queue in the registry.
pub async fn ensure_queue(
    conn: &mut ConnectionManager,
    keys: &QueueKeys,
    groups: &[String],
) -> Result<()> {
    Broker::new(conn.clone()).ensure_queue(keys, groups).await
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
