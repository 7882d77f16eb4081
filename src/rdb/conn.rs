//! Connections to Redis: the multiplexed command connection (reconnects by itself) and
//! the pool of exclusive connections that blocking reads need.
//!
//! redis-rs times a reply out after 500 ms by default, and a blocking `XREADGROUP … BLOCK`
//! on the multiplexed connection would stall every other command behind it; so blocking
//! reads get exclusive connections whose reply timeout is the block time plus the normal
//! response timeout.
//!
//! TLS (issue 8): `rediss://` trusted only the bundled web roots, so a Redis with a
//! certificate from a private CA could not be reached, and mutual TLS was impossible.
//! `redis.tls_ca_file` replaces the trust store with that CA; `redis.tls_cert_file` +
//! `redis.tls_key_file` present a client certificate. The command connection and the
//! reader pool are built from the same [`client`], so they share one TLS setup.
//!
//! Names (issue 14): every connection is named `taskstream:<consumer>:<role>` with
//! `CLIENT SETNAME`, so `CLIENT LIST` tells blocking readers, command connections,
//! producers and orchestrators apart. redis-rs 1.8 has no client name in its connection
//! info, and `ConnectionManager` replays nothing but subscriptions on reconnect, so a
//! name set once would be lost at the first reconnect: the command connection re-sends
//! its name every [`NAME_REFRESH`] until the caller's cancel token fires. Pool
//! connections are named by a post-create hook, which runs for every new connection.
//! A server that refuses `CLIENT SETNAME` (an ACL without `+client|setname`) costs the
//! name only, never the connection.
//!
//! Redis Cluster (issue 11): with `redis.cluster_nodes` set, [`Conn`] is the redis
//! crate's cluster connection instead of one manager. It learns the slot map from the
//! seed nodes, routes each command by its first key, follows `MOVED`/`ASK`, retries
//! `TRYAGAIN` and refreshes the map after a failover; a command that still fails (a master
//! down until its replica is promoted) comes back as an error and the caller's loop
//! retries it with backoff, as for one server. Blocking reads get a cluster connection of
//! their own per reader ([`ReaderPool::Cluster`]): a reader reads one queue, whose keys
//! share one slot, so its connection's traffic all goes to the shard that holds that
//! queue — a dedicated connection per shard — and a reshard or failover that moves the
//! slot is followed by the same routing. Cluster connections carry no client name:
//! `CLIENT SETNAME` would name one node's connection only.
//!
//! Redis Sentinel (issue 11): with `redis.sentinels` set, [`Conn::Sentinel`] and
//! [`ReaderPool::Sentinel`] connect to the master the sentinels name, check that it is one,
//! and move to the promoted replica after a failover; how and why is in
//! [`super::sentinel`]. Their connections are named as for one server.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::sentinel::{SentinelConn, SentinelReaderConn, SentinelReaders, Sentinels};
use crate::config::RedisConfig;
use crate::error::{Error, Result};

/// What a connection is for; the last part of its client name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The multiplexed command connection of a worker (acks, heartbeats, scripts).
    Cmd,
    /// An exclusive connection for blocking reads (`XREADGROUP … BLOCK`).
    Reader,
    /// A producer's connection.
    Producer,
    /// A saga orchestrator's command connection.
    Orchestrator,
    /// A one-shot command-line call (`taskstream stats`, `dlq`, …).
    Cli,
    /// The demo.
    Demo,
    /// The control plane (`taskstream serve`: API, dashboard, MCP).
    Api,
}

impl Role {
    /// The role as it appears in the client name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Cmd => "cmd",
            Role::Reader => "reader",
            Role::Producer => "producer",
            Role::Orchestrator => "orchestrator",
            Role::Cli => "cli",
            Role::Demo => "demo",
            Role::Api => "api",
        }
    }
}

/// A connection's name in `CLIENT LIST`: `taskstream:<consumer>:<role>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientName(String);

impl ClientName {
    /// The name of `consumer`'s connection for `role`. Characters Redis refuses in a
    /// name (spaces, control characters) become `_`.
    pub fn new(consumer: &str, role: Role) -> ClientName {
        let consumer: String = consumer
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect();
        ClientName(format!("taskstream:{consumer}:{}", role.as_str()))
    }

    /// For processes without a consumer name (producers, the CLI): `<host>-<pid>`.
    pub fn process(role: Role) -> ClientName {
        ClientName::new(&format!("{}-{}", hostname(), std::process::id()), role)
    }

    /// The full name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How often the command connection re-sends its name (see the module docs).
pub const NAME_REFRESH: Duration = Duration::from_secs(2);

/// Reads the TLS files of `cfg`: None when none is set. Errors name the key and file.
pub fn tls_certificates(cfg: &RedisConfig) -> Result<Option<redis::TlsCertificates>> {
    if cfg.tls_ca_file.is_none() && cfg.tls_cert_file.is_none() && cfg.tls_key_file.is_none() {
        return Ok(None);
    }
    let read = |key: &str, path: &Option<String>| -> Result<Option<Vec<u8>>> {
        let Some(path) = path else { return Ok(None) };
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Config(format!("redis.{key} {path:?} cannot be read: {e}")))?;
        if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
            return Err(Error::Config(format!(
                "redis.{key} {path:?} is not a PEM file (no -----BEGIN line)"
            )));
        }
        Ok(Some(bytes))
    };
    let root_cert = read("tls_ca_file", &cfg.tls_ca_file)?;
    let client_tls = match (
        read("tls_cert_file", &cfg.tls_cert_file)?,
        read("tls_key_file", &cfg.tls_key_file)?,
    ) {
        (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig {
            client_cert,
            client_key,
        }),
        (None, None) => None,
        _ => {
            return Err(Error::Config(
                "redis.tls_cert_file and redis.tls_key_file must be set together".into(),
            ))
        }
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// `ConnectionLike` for an enum of connections with the variants `Single`, `Cluster` and
/// `Sentinel`: every call goes to the connection inside.
macro_rules! delegate_connection_like {
    ($t:ident) => {
        impl ConnectionLike for $t {
            fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
                match self {
                    $t::Single(c) => c.req_packed_command(cmd),
                    $t::Cluster(c) => c.req_packed_command(cmd),
                    $t::Sentinel(c) => c.req_packed_command(cmd),
                }
            }

            fn req_packed_commands<'a>(
                &'a mut self,
                pipeline: &'a Pipeline,
                offset: usize,
                count: usize,
            ) -> RedisFuture<'a, Vec<Value>> {
                match self {
                    $t::Single(c) => c.req_packed_commands(pipeline, offset, count),
                    $t::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
                    $t::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
                }
            }

            fn get_db(&self) -> i64 {
                match self {
                    $t::Single(c) => c.get_db(),
                    $t::Cluster(c) => c.get_db(),
                    $t::Sentinel(c) => c.get_db(),
                }
            }
        }
    };
}

/// The command connection: to one Redis server, or to a Redis Cluster. Cheap to clone
/// (clones share the underlying connections).
#[derive(Clone)]
pub enum Conn {
    /// One server, through a manager that reconnects by itself.
    Single(ConnectionManager),
    /// A Redis Cluster (`redis.cluster_nodes`): routed by key, following `MOVED`/`ASK`.
    Cluster(ClusterConnection),
    /// The master named by Redis Sentinel (`redis.sentinels`), followed across failovers.
    Sentinel(SentinelConn),
}

impl Conn {
    /// True on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}

impl From<ConnectionManager> for Conn {
    fn from(c: ConnectionManager) -> Self {
        Conn::Single(c)
    }
}

impl From<ClusterConnection> for Conn {
    fn from(c: ClusterConnection) -> Self {
        Conn::Cluster(c)
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Single(_) => "Conn::Single",
            Conn::Cluster(_) => "Conn::Cluster",
            Conn::Sentinel(_) => "Conn::Sentinel",
        })
    }
}

delegate_connection_like!(Conn);

/// What the log and errors call the Redis of `cfg`: its URL, its seed nodes, or its
/// sentinels.
pub fn describe(cfg: &RedisConfig) -> String {
    if !cfg.sentinels.is_empty() {
        let nodes: Vec<String> = cfg
            .sentinels
            .iter()
            .map(|n| crate::config::redact_url(n))
            .collect();
        format!(
            "master {:?} of sentinels {}",
            cfg.sentinel_master.as_deref().unwrap_or(""),
            nodes.join(",")
        )
    } else if cfg.cluster_nodes.is_empty() {
        crate::config::redact_url(&cfg.url)
    } else {
        let nodes: Vec<String> = cfg
            .cluster_nodes
            .iter()
            .map(|n| crate::config::redact_url(n))
            .collect();
        format!("cluster {}", nodes.join(","))
    }
}

/// Builds the cluster client for `cfg.cluster_nodes`, whose replies may take `response`.
/// Same TLS setup as [`client`]; user and password come from the first seed URL.
fn cluster_client(cfg: &RedisConfig, response: Duration) -> Result<ClusterClient> {
    let first = cfg.cluster_nodes.first().map(String::as_str).unwrap_or("");
    if let Ok(info) = redis::IntoConnectionInfo::into_connection_info(first) {
        super::noperm::configured_user(info.redis_settings().username());
    }
    let mut b = ClusterClientBuilder::new(cfg.cluster_nodes.iter().map(String::as_str))
        .response_timeout(response)
        // A request may be redirected or retried while a slot moves or a replica takes
        // over; the whole of it gets a few reply times before it fails to the caller.
        .overall_response_timeout(Some(response * 3))
        .connection_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .retries(6)
        .min_retry_wait(50)
        .max_retry_wait(2_000);
    if let Some(certs) = tls_certificates(cfg)? {
        b = b.certs(certs);
    }
    b.build().map_err(|e| {
        Error::Config(format!(
            "redis.cluster_nodes {} is not usable: {e}",
            describe(cfg)
        ))
    })
}

/// Builds the client for `cfg.url`, with the CA and client certificate of `cfg` when set.
pub fn client(cfg: &RedisConfig) -> Result<redis::Client> {
    let c = build_client(cfg)?;
    super::noperm::configured_user(c.get_connection_info().redis_settings().username());
    Ok(c)
}

fn build_client(cfg: &RedisConfig) -> Result<redis::Client> {
    let url = crate::config::redact_url(&cfg.url);
    match tls_certificates(cfg)? {
        None => redis::Client::open(cfg.url.as_str())
            .map_err(|e| Error::Config(format!("redis.url {url:?} is not usable: {e}"))),
        Some(certs) => redis::Client::build_with_tls(cfg.url.as_str(), certs).map_err(|e| {
            Error::Config(format!(
                "redis.url {url:?} with redis.tls_* files is not usable: {e}"
            ))
        }),
    }
}

/// Sends `CLIENT SETNAME`; a refusal is logged, never fatal.
async fn set_name<C: redis::aio::ConnectionLike + Send>(conn: &mut C, name: &ClientName) -> bool {
    let r: redis::RedisResult<()> = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(name.as_str())
        .query_async(conn)
        .await;
    if let Err(e) = &r {
        tracing::debug!(name = name.as_str(), error = %e, "CLIENT SETNAME failed");
    }
    r.is_ok()
}

/// A hint for errors that retrying will not fix: a certificate the client does not trust.
fn tls_hint(e: &redis::RedisError, cfg: &RedisConfig) -> Option<&'static str> {
    let text = e.to_string().to_lowercase();
    if !(text.contains("certificate") || text.contains("unknownissuer") || text.contains("tls")) {
        return None;
    }
    Some(if cfg.tls_ca_file.is_some() {
        "TLS handshake failed: the server's certificate is not signed by redis.tls_ca_file (or names another host), or the server refused our client certificate"
    } else {
        "TLS handshake failed: the server's certificate is not signed by a public CA; set redis.tls_ca_file (TASKSTREAM_REDIS_TLS_CA_FILE) to the CA that signed it"
    })
}

/// Connects the multiplexed command connection named `name`, retrying with exponential
/// backoff and jitter (and saying so in the log) until Redis answers or `cancel` fires.
/// The name is kept across reconnects until `cancel` fires (see the module docs).
pub async fn connect(
    cfg: &RedisConfig,
    cancel: &tokio_util::sync::CancellationToken,
    name: ClientName,
) -> Result<Conn> {
    if !cfg.sentinels.is_empty() {
        return connect_sentinel(cfg, cancel, name).await;
    }
    if !cfg.cluster_nodes.is_empty() {
        return connect_cluster(cfg, cancel).await;
    }
    let client = client(cfg)?;
    let mcfg = manager_config(cfg);
    let mut attempt: u32 = 0;
    loop {
        match ConnectionManager::new_with_config(client.clone(), mcfg.clone()).await {
            Ok(mut c) => {
                set_name(&mut c, &name).await;
                keep_name(c.clone(), name, cancel.clone());
                if attempt > 0 {
                    tracing::info!(
                        url = %crate::config::redact_url(&cfg.url),
                        attempts = attempt + 1,
                        "connected to redis"
                    );
                }
                crate::health::set_redis_up(true);
                return Ok(Conn::Single(c));
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
                    hint = tls_hint(&e, cfg).unwrap_or(""),
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

/// The command connection's manager settings.
fn manager_config(cfg: &RedisConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_millis(cfg.response_timeout_ms)))
        .set_connection_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2))
}

/// [`connect`] under Sentinel: retries with backoff until the sentinels name a master
/// that answers as one (the sentinel module logs each failed attempt and why).
async fn connect_sentinel(
    cfg: &RedisConfig,
    cancel: &tokio_util::sync::CancellationToken,
    name: ClientName,
) -> Result<Conn> {
    let sentinels = Sentinels::shared(cfg)?;
    let mcfg = manager_config(cfg);
    let manager_name = name.clone();
    let conn = SentinelConn::new(
        sentinels,
        Box::new(move |client| {
            let (mcfg, name) = (mcfg.clone(), manager_name.clone());
            Box::pin(async move {
                let mut c = ConnectionManager::new_with_config(client, mcfg).await?;
                set_name(&mut c, &name).await;
                Ok(c)
            })
        }),
    );
    let mut attempt: u32 = 0;
    loop {
        match conn.ready().await {
            Ok(()) => {
                keep_sentinel_name(conn.downgrade(), name, cancel.clone());
                if attempt > 0 {
                    tracing::info!(redis = %describe(cfg), attempts = attempt + 1, "connected to redis");
                }
                crate::health::set_redis_up(true);
                return Ok(Conn::Sentinel(conn));
            }
            Err(e) => {
                attempt += 1;
                crate::health::set_redis_up(false);
                tokio::select! {
                    _ = cancel.cancelled() => return Err(Error::Redis(e)),
                    _ = tokio::time::sleep(reconnect_delay(attempt)) => {}
                }
            }
        }
    }
}

/// [`connect`] for a cluster: retries with backoff until the seed nodes give a slot map.
async fn connect_cluster(
    cfg: &RedisConfig,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Conn> {
    let client = cluster_client(cfg, Duration::from_millis(cfg.response_timeout_ms))?;
    let mut attempt: u32 = 0;
    loop {
        match client.get_async_connection().await {
            Ok(c) => {
                if attempt > 0 {
                    tracing::info!(redis = %describe(cfg), attempts = attempt + 1, "connected to redis cluster");
                }
                crate::health::set_redis_up(true);
                return Ok(Conn::Cluster(c));
            }
            Err(e) => {
                attempt += 1;
                crate::health::set_redis_up(false);
                let delay = reconnect_delay(attempt);
                tracing::warn!(
                    redis = %describe(cfg),
                    attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    error = %e,
                    hint = tls_hint(&e, cfg).unwrap_or(""),
                    "redis cluster unreachable, retrying with backoff"
                );
                tokio::select! {
                    _ = cancel.cancelled() => return Err(Error::Redis(e)),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Re-sends `name` on `conn` every [`NAME_REFRESH`] until `cancel` fires, so the name
/// survives the manager's reconnects.
fn keep_name(
    mut conn: ConnectionManager,
    name: ClientName,
    cancel: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(NAME_REFRESH) => {}
            }
            set_name(&mut conn, &name).await;
        }
    });
}

/// [`keep_name`] under Sentinel, on whichever master the connection uses; it also ends
/// when the connection is dropped, so a dropped producer does not keep its sentinel
/// subscriptions open.
fn keep_sentinel_name(
    conn: std::sync::Weak<super::sentinel::Follow<ConnectionManager>>,
    name: ClientName,
    cancel: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(NAME_REFRESH) => {}
            }
            let Some(mut c) = SentinelConn::upgrade(&conn) else {
                break;
            };
            set_name(&mut c, &name).await;
        }
    });
}

/// Backoff for reconnects: 100 ms doubling to 5 s, full jitter on the upper half.
pub fn reconnect_delay(attempt: u32) -> Duration {
    crate::backoff::Backoff {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(5),
    }
    .delay_random(attempt)
}

/// Where exclusive connections for blocking reads come from.
#[derive(Clone)]
pub enum ReaderPool {
    /// One server: a pool of plain connections.
    Single(deadpool_redis::Pool),
    /// A cluster: every [`ReaderPool::get`] opens a cluster connection of its own, which
    /// its reader keeps (see the module docs).
    Cluster(Box<ClusterClient>),
    /// Under Sentinel: a pool of connections to the current master, replaced when the
    /// master moves.
    Sentinel(SentinelReaders),
}

impl std::fmt::Debug for ReaderPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReaderPool::Single(_) => "ReaderPool::Single",
            ReaderPool::Cluster(_) => "ReaderPool::Cluster",
            ReaderPool::Sentinel(_) => "ReaderPool::Sentinel",
        })
    }
}

impl ReaderPool {
    /// An exclusive connection. The error says why none could be had.
    pub async fn get(&self) -> std::result::Result<ReaderConn, String> {
        match self {
            ReaderPool::Single(p) => p
                .get()
                .await
                .map(ReaderConn::Single)
                .map_err(|e| e.to_string()),
            ReaderPool::Cluster(c) => c
                .get_async_connection()
                .await
                .map(ReaderConn::Cluster)
                .map_err(|e| e.to_string()),
            ReaderPool::Sentinel(r) => r.get().await.map(ReaderConn::Sentinel),
        }
    }
}

/// One exclusive connection from a [`ReaderPool`].
pub enum ReaderConn {
    /// A pooled connection to one server (back to the pool when dropped).
    Single(deadpool_redis::Connection),
    /// A cluster connection of its own (closed when dropped).
    Cluster(ClusterConnection),
    /// A pooled connection to the master the sentinels named.
    Sentinel(SentinelReaderConn),
}

impl ReaderConn {
    /// Closes the connection instead of returning it to the pool (after a failure it may
    /// hold a half-read reply).
    pub fn discard(self) {
        match self {
            ReaderConn::Single(c) => drop(deadpool_redis::Connection::take(c)),
            ReaderConn::Cluster(c) => drop(c),
            ReaderConn::Sentinel(c) => c.discard(),
        }
    }
}

delegate_connection_like!(ReaderConn);

/// Builds the pool of blocking-read connections, each named `name`; replies may take
/// `block` plus the normal response timeout. Same TLS setup as [`client`].
pub fn reader_pool(
    cfg: &RedisConfig,
    block: Duration,
    size: usize,
    name: ClientName,
) -> Result<ReaderPool> {
    if !cfg.cluster_nodes.is_empty() {
        let response = block + Duration::from_millis(cfg.response_timeout_ms);
        return Ok(ReaderPool::Cluster(Box::new(cluster_client(
            cfg, response,
        )?)));
    }
    let conn_cfg = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(block + Duration::from_millis(cfg.response_timeout_ms)))
        .set_connection_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)));
    if !cfg.sentinels.is_empty() {
        let sentinels = Sentinels::shared(cfg)?;
        return Ok(ReaderPool::Sentinel(SentinelReaders::new(
            sentinels,
            Box::new(move |client| {
                let pool = pool_for(
                    client.get_connection_info().clone(),
                    conn_cfg.clone(),
                    size,
                    name.clone(),
                );
                Box::pin(async move {
                    pool.map_err(|e| {
                        redis::RedisError::from((
                            redis::ErrorKind::Client,
                            "reader pool",
                            e.to_string(),
                        ))
                    })
                })
            }),
        )));
    }
    // The connection info of the TLS-aware client carries the CA and client certificate.
    let info = client(cfg)?.get_connection_info().clone();
    pool_for(info, conn_cfg, size, name).map(ReaderPool::Single)
}

/// A pool of up to `size` connections to `info`, each named `name`.
fn pool_for(
    info: redis::ConnectionInfo,
    conn_cfg: redis::AsyncConnectionConfig,
    size: usize,
    name: ClientName,
) -> Result<deadpool_redis::Pool> {
    let manager = deadpool_redis::Manager::new_with_config(info, conn_cfg)?;
    deadpool_redis::Pool::builder(manager)
        .post_create(deadpool_redis::Hook::async_fn(move |conn, _| {
            let name = name.clone();
            Box::pin(async move {
                set_name(conn, &name).await;
                Ok(())
            })
        }))
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

/// This host's name for consumer and connection names: `$HOSTNAME`, else `/etc/hostname`,
/// else `host`.
pub(crate) fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}
