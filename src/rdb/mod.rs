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
//! Connections ([`conn`]): commands go through a multiplexed [`Conn`] — a
//! `ConnectionManager`, which reconnects by itself, or on a Redis Cluster the cluster
//! connection, which routes by key, or under Redis Sentinel a manager to the master the
//! sentinels name, replaced when it moves ([`sentinel`]); blocking `XREADGROUP … BLOCK`
//! never runs on it (it
//! would stall every other command), but on an exclusive connection from a [`ReaderPool`]
//! whose reply timeout is longer than the block time (redis-rs times replies out after
//! 500 ms by default).
//!
//! Permission refusals ([`noperm`]): every reply of the command connection and of the
//! group readers is watched for `NOPERM`; a refusal is logged with the command and the
//! `ACL SETUSER` that grants it, shown by `/ready` until that command succeeds again, and
//! converted to [`crate::Error::NoPermission`] so the loops retry it.

pub mod breaker;
mod claim;
mod conn;
mod enqueue;
mod group_reader;
mod lifecycle;
mod noperm;
mod parse;
mod results;
mod routes;
pub(crate) mod scan;
pub(crate) mod schedule;
pub(crate) mod scripts;
mod sentinel;
mod settle;

#[cfg(feature = "cli")]
mod builtin;
#[cfg(feature = "cli")]
mod demo;
mod inspect;
pub(crate) mod keylimit;
mod preflight;
mod signals;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::{Pipeline, RedisError, Value};

pub(crate) use claim::ClaimScope;
pub(crate) use conn::hostname;
pub use conn::{
    answers_ping, client, connect, describe, reader_pool, reconnect_delay, tls_certificates,
    ClientName, Conn, ReaderConn, ReaderPool, Role, NAME_REFRESH,
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
    /// The multiplexed command connection (one server or a cluster).
    conn: Conn,
    /// Its ACL user, learned at the first permission refusal (see [`noperm`]).
    user: Arc<OnceLock<String>>,
    /// Replicas each enqueue and settle waits for (`redis.wait_replicas`), if any.
    wait: Option<WaitFor>,
}

/// `WAIT replicas timeout` after each write that must survive a failover
/// (`redis.wait_replicas`, `redis.wait_timeout_ms`).
///
/// Why: replication is asynchronous, so a master that fails right after acknowledging an
/// enqueue may take it with it — the promoted replica never saw it (sidekiq#3811, dapr#7291
/// lost a quarter of its messages on a Sentinel failover). `WAIT` in the same pipeline as
/// the write holds the reply until that many replicas have it; on a cluster the pipeline
/// goes to the slot's master, so it waits for that master's replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitFor {
    /// Replicas that must acknowledge.
    pub replicas: u32,
    /// How long to wait for them, in ms.
    pub timeout_ms: u64,
}

impl WaitFor {
    /// The setting of `cfg`: None when `wait_replicas` is 0.
    pub fn of(cfg: &crate::config::RedisConfig) -> Option<WaitFor> {
        (cfg.wait_replicas > 0).then_some(WaitFor {
            replicas: cfg.wait_replicas,
            timeout_ms: cfg.wait_timeout_ms,
        })
    }

    /// The `WAIT` command.
    pub(crate) fn cmd(&self) -> redis::Cmd {
        let mut c = redis::cmd("WAIT");
        c.arg(self.replicas).arg(self.timeout_ms);
        c
    }

    /// Ok when `got` replicas are enough.
    pub(crate) fn judge(&self, got: u64) -> Result<()> {
        if got >= self.replicas as u64 {
            Ok(())
        } else {
            Err(crate::Error::NotReplicated {
                got,
                wanted: self.replicas,
                timeout_ms: self.timeout_ms,
            })
        }
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker over an established command connection.
    pub fn new(conn: impl Into<Conn>) -> Self {
        Broker {
            conn: conn.into(),
            user: Arc::default(),
            wait: None,
        }
    }

    /// The same broker, waiting for `wait` replicas after each enqueue and settle.
    pub fn with_wait(mut self, wait: Option<WaitFor>) -> Self {
        self.wait = wait;
        self
    }

    /// Connects to `cfg`, retrying with backoff until Redis answers or `cancel` fires.
    pub async fn connect(
        cfg: &crate::config::RedisConfig,
        cancel: &tokio_util::sync::CancellationToken,
        name: ClientName,
    ) -> Result<Self> {
        Ok(Broker::new(connect(cfg, cancel, name).await?).with_wait(WaitFor::of(cfg)))
    }

    /// A handle on the command connection, for the methods of this module; its replies
    /// are watched for permission refusals ([`noperm`]).
    pub(crate) fn c(&self) -> Watched<Conn> {
        Watched::new(self.conn.clone(), self.user.clone())
    }

    /// True on a Redis Cluster (pipelines must then stay within one slot).
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    /// The command connection unwatched, for the few commands whose refusal costs nothing
    /// by design (`CONFIG GET` in the preflight, `XINFO STREAM` for the arrival counter).
    pub(crate) fn raw(&self) -> Conn {
        self.conn.clone()
    }

    /// Loads every script of the table.
    pub async fn load_scripts(&self) -> Result<()> {
        Ok(scripts::load_all(&mut self.c()).await?)
    }

    /// Runs independent commands, each named with the key it touches, and returns their
    /// replies in order: in one pipeline on one server; on a Redis Cluster in one pipeline
    /// per slot, all at once (a pipeline may not span slots there). For the few batches
    /// that span queues (heartbeats of every queue, counters of every queue) or saga
    /// buckets. Scripts lost by a restarted node are loaded and the pipeline resent once.
    pub(crate) async fn pipe_per_slot(&self, cmds: Vec<(&str, redis::Cmd)>) -> Result<Vec<Value>> {
        let mut groups: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
        if self.is_cluster() {
            for (i, (key, _)) in cmds.iter().enumerate() {
                groups.entry(crate::keys::slot(key)).or_default().push(i);
            }
        } else {
            groups.insert(0, (0..cmds.len()).collect());
        }
        let cmds: Vec<redis::Cmd> = cmds.into_iter().map(|(_, c)| c).collect();
        let mut set = tokio::task::JoinSet::new();
        for (_, idx) in groups {
            let mut p = Pipeline::with_capacity(idx.len());
            for &i in &idx {
                p.add_command(cmds[i].clone());
            }
            let mut c = self.c();
            set.spawn(async move { (idx, scripts::query_pipe::<Vec<Value>>(&mut c, &p).await) });
        }
        let mut out = vec![Value::Nil; cmds.len()];
        while let Some(r) = set.join_next().await {
            let (idx, replies) =
                r.map_err(|e| crate::Error::Pool(format!("pipeline task: {e}")))?;
            for (i, v) in idx.into_iter().zip(replies?) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Runs `pipe`, loading the scripts and retrying once if Redis had lost them.
    pub(crate) async fn pipe<T: redis::FromRedisValue>(&self, pipe: &Pipeline) -> Result<T> {
        Ok(scripts::query_pipe(&mut self.c(), pipe).await?)
    }
}

/// `(file, source)` of every Lua script the broker runs (for tests and audits that check
/// where the scripts run, e.g. that each stays within one cluster slot).
pub fn script_sources() -> impl Iterator<Item = (&'static str, &'static str)> {
    scripts::TABLE.iter().map(|(_, file, src)| (*file, *src))
}

/// True when Redis answered NOSCRIPT (scripts flushed, e.g. by a restart).
pub fn is_noscript(e: &RedisError) -> bool {
    scripts::is_noscript(e)
}

/// Loads every script (used after NOSCRIPT).
pub async fn load_scripts(conn: &mut Conn) -> Result<()> {
    Broker::new(conn.clone()).load_scripts().await
}

/// Runs `pipe`, loading the scripts and retrying once if Redis had lost them.
pub async fn query_pipe<T: redis::FromRedisValue>(conn: &mut Conn, pipe: &Pipeline) -> Result<T> {
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
pub async fn ensure_queue(conn: &mut Conn, keys: &QueueKeys, groups: &[String]) -> Result<()> {
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
