//! Redis Sentinel (issue 11, item 5): one master with replicas, no sharding, and the
//! connections follow a failover to the promoted replica.
//!
//! With `redis.sentinels` and `redis.sentinel_master` set, nothing connects to a fixed
//! address. A [`Follow`] owns the connection to the current master — the command
//! connection's `ConnectionManager` ([`SentinelConn`]) or the blocking readers' pool
//! ([`SentinelReaders`]) — and decides when it must be replaced:
//!
//! - **Finding the master.** Every sentinel is asked `SENTINEL MASTER <name>` at once. A
//!   sentinel that has not heard of the failover yet (partitioned, or simply slower) still
//!   names the old master, so the answers are not taken in list order: of the sentinels
//!   that name a master they consider up, the one with the highest configuration epoch
//!   wins (a failover bumps the epoch), then the address most of them name
//!   ([`pick_master`], pure and unit-tested). The redis crate's `sentinel` module takes
//!   the first sentinel that answers and uses its own fixed timeouts, which is why it is
//!   not used here.
//! - **Checking it.** Sentinels lag: right after a `kill -9` they still name the dead
//!   master for `down-after-milliseconds`, and a demoted master that comes back is named
//!   until they reconfigure it. So the named node must answer `ROLE` (or, when `ROLE` is
//!   refused, `INFO replication`) with `master` before anything connects to it.
//! - **Noticing a failover.** A reply that points at one — an I/O error or timeout (the
//!   master died), `READONLY` (a demoted master: a sentinel turned it into a replica and
//!   our connection reconnected to it), `MASTERDOWN`, `LOADING` — marks the connection
//!   *stale* ([`failover_sign`]). The next command re-resolves the master: if the
//!   sentinels name another verified master, a new connection to it replaces the old one
//!   (logged at info); if they name the same one, it is kept (the manager reconnects by
//!   itself). Replies are not enough, though: after `SENTINEL FAILOVER`, or when the old
//!   master is cut off from the sentinels but not from us, the old master stays a
//!   writable master for seconds (Sentinel waits before it reconfigures a master that
//!   came back) and every reply is fine — the first test run of a manual failover lost
//!   every enqueue of those seconds. So the process also subscribes to `+switch-master`
//!   on every sentinel and asks them every [`WATCH_EVERY`] as a fallback (a subscription
//!   cannot tell a silent sentinel from a quiet one); the master they name is published
//!   to every follower, which switches as soon as it differs from its own. One
//!   [`Sentinels`] per configuration is shared by all the connections of a process
//!   ([`Sentinels::shared`]), so a worker holds one subscription and one query
//!   connection per sentinel, not one per connection object.
//! - **During the failover.** The command that met the failure returns its error, and so
//!   do the commands sent until a new master is verified (they go to the old one, or fail
//!   with "no master" when there is none yet): the callers' loops already retry with
//!   backoff, as for one server that restarts. Re-resolving is single-flight and spaced
//!   by a short backoff ([`resolve_delay`], 50 ms doubling to 500 ms), so a burst of
//!   failing commands asks the sentinels a few times a second, not once per command.
//!   `/ready` says Redis is down while the sentinels name no usable master.
//!   If the sentinels themselves cannot be reached, the current master is kept: losing
//!   the sentinels must not stop a healthy master from being used.
//! - **What following cannot fix.** Between the promotion of the replica and the moment
//!   the sentinels announce it, the old master may still acknowledge writes that the new
//!   master never sees (asynchronous replication; a demoted master drops its data). Only
//!   `redis.wait_replicas` turns those into errors the producer sees; tests/sentinel.rs
//!   counts what is lost without it.
//!
//! Credentials and TLS (kept simple on purpose): the sentinel URLs' user and password
//! (the first URL's, as for `cluster_nodes`) authenticate to the sentinels, and to the
//! data nodes too unless `redis.master_username` / `redis.master_password` are set (a
//! common setup has unauthenticated sentinels and `requirepass` on the data nodes).
//! `rediss://` sentinels mean TLS to the data nodes as well, with the same
//! `redis.tls_ca_file` and client certificate. Data nodes are used with database 0 (a
//! sentinel URL may not carry a database: sentinels have none).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline,
    RedisConnectionInfo, RedisError, RedisFuture, RedisResult, Value,
};

use crate::config::{redact_url, RedisConfig};
use crate::error::{Error, Result};

/// How often the sentinels are asked whether the master moved, besides the
/// `+switch-master` subscription (see the module docs).
pub(crate) const WATCH_EVERY: Duration = Duration::from_secs(2);

/// The channel on which a sentinel announces a failover: `<name> <old ip> <old port>
/// <new ip> <new port>`.
const SWITCH_MASTER: &str = "+switch-master";

/// A master's address as the sentinels give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MasterAddr {
    /// Host or IP, as the sentinels announce it.
    pub(crate) host: String,
    /// Port.
    pub(crate) port: u16,
}

impl std::fmt::Display for MasterAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// What one sentinel said about the master (`SENTINEL MASTER <name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// It names a master it considers up, seen in configuration epoch `epoch`.
    Up {
        /// The master.
        addr: MasterAddr,
        /// The sentinel's configuration epoch for this master (bumped by each failover).
        epoch: u64,
    },
    /// It considers the master down or a failover under way (`flags` say which).
    Down {
        /// The master it still names.
        addr: MasterAddr,
        /// Its flags, e.g. `s_down,master` or `master,failover_in_progress`.
        flags: String,
    },
    /// It does not monitor a master of that name.
    Unknown,
    /// It could not be asked: unreachable, refused, or not a sentinel.
    Unreachable(String),
}

/// Reads a `SENTINEL MASTER <name>` reply (field/value pairs).
pub(crate) fn parse_master_reply(fields: &HashMap<String, String>) -> Answer {
    let addr = match (
        fields.get("ip"),
        fields.get("port").and_then(|p| p.parse::<u16>().ok()),
    ) {
        (Some(host), Some(port)) => MasterAddr {
            host: host.clone(),
            port,
        },
        _ => return Answer::Unreachable("its reply names no ip and port".into()),
    };
    let flags = fields.get("flags").cloned().unwrap_or_default();
    // Not `disconnected`: right after `+switch-master` every sentinel flags the new
    // master so until its link to it is up (up to a second here), and the ROLE check
    // verifies the node anyway.
    let down = flags
        .split(',')
        .any(|f| matches!(f, "s_down" | "o_down" | "failover_in_progress"));
    let master = flags.split(',').any(|f| f == "master");
    if down || !master {
        return Answer::Down { addr, flags };
    }
    let epoch = fields
        .get("config-epoch")
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    Answer::Up { addr, epoch }
}

/// Why no master could be chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NoMaster {
    /// True when at least one sentinel answered (the master is down or failing over);
    /// false when none could be asked (then the current master is kept).
    pub(crate) sentinels_answered: bool,
    /// One sentence per sentinel.
    pub(crate) why: String,
}

/// Chooses the master from every sentinel's answer (`(sentinel url, answer)`): of those
/// that name an up master, the highest configuration epoch wins, then the address most
/// of them name, then the first listed.
pub(crate) fn pick_master(
    name: &str,
    answers: &[(String, Answer)],
) -> std::result::Result<MasterAddr, NoMaster> {
    let best_epoch = answers
        .iter()
        .filter_map(|(_, a)| match a {
            Answer::Up { epoch, .. } => Some(*epoch),
            _ => None,
        })
        .max();
    if let Some(best) = best_epoch {
        let mut votes: Vec<(&MasterAddr, usize)> = Vec::new();
        for (_, a) in answers {
            if let Answer::Up { addr, epoch } = a {
                if *epoch == best {
                    match votes.iter_mut().find(|(x, _)| *x == addr) {
                        Some(v) => v.1 += 1,
                        None => votes.push((addr, 1)),
                    }
                }
            }
        }
        // max_by_key keeps the last of equal maxima; reversed, the first listed wins.
        let (addr, _) = votes
            .into_iter()
            .rev()
            .max_by_key(|(_, n)| *n)
            .expect("an answer has the best epoch");
        return Ok(addr.clone());
    }
    let why: Vec<String> = answers
        .iter()
        .map(|(url, a)| match a {
            Answer::Up { .. } => unreachable!("no sentinel names an up master"),
            Answer::Down { addr, flags } => {
                format!("{url}: master {addr} is down or failing over (flags {flags})")
            }
            Answer::Unknown => format!(
                "{url}: monitors no master named {name:?} (check redis.sentinel_master against `sentinel monitor`)"
            ),
            Answer::Unreachable(e) => format!("{url}: cannot be asked: {e}"),
        })
        .collect();
    Err(NoMaster {
        sentinels_answered: answers
            .iter()
            .any(|(_, a)| !matches!(a, Answer::Unreachable(_))),
        why: format!(
            "no sentinel names a usable master {name:?}: {}",
            why.join("; ")
        ),
    })
}

/// True when a reply says the master this connection uses may no longer be the master:
/// the connection broke or timed out, the node answers as a replica (`READONLY`,
/// `MASTERDOWN`) or is loading its data (`LOADING`). Pipelines are looked at item by item.
pub(crate) fn failover_sign<T: AsValues>(r: &RedisResult<T>) -> bool {
    match r {
        Err(e) => error_sign(e),
        Ok(v) => v.values().iter().any(|v| match v {
            Value::ServerError(e) => e.kind().is_some_and(server_sign),
            _ => false,
        }),
    }
}

fn error_sign(e: &RedisError) -> bool {
    e.is_io_error()
        || matches!(e.kind(), redis::ErrorKind::Server(k) if server_sign(k))
        || matches!(
            e.code(),
            Some("READONLY") | Some("MASTERDOWN") | Some("LOADING")
        )
}

/// `READONLY` and `MASTERDOWN`: a replica answered. `LOADING`: the node restarted (a
/// demoted master loads the new master's data before it answers `READONLY`).
fn server_sign(k: redis::ServerErrorKind) -> bool {
    matches!(
        k,
        redis::ServerErrorKind::ReadOnly
            | redis::ServerErrorKind::MasterDown
            | redis::ServerErrorKind::BusyLoading
    )
}

/// The replies of one command or of a pipeline, for [`failover_sign`].
pub(crate) trait AsValues {
    /// The replies.
    fn values(&self) -> &[Value];
}

impl AsValues for Value {
    fn values(&self) -> &[Value] {
        std::slice::from_ref(self)
    }
}

impl AsValues for Vec<Value> {
    fn values(&self) -> &[Value] {
        self
    }
}

/// The delay before resolving again after `failures` failed resolutions: 50 ms doubling
/// to 500 ms, so a failover is noticed within half a second of the promotion.
pub(crate) fn resolve_delay(failures: u32) -> Duration {
    crate::backoff::Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(500),
    }
    .ceiling(failures)
}

/// One sentinel.
struct SentinelNode {
    /// Its URL, password redacted (for logs and errors).
    url: String,
    /// Its client.
    client: redis::Client,
    /// The connection to it, once opened (dropped after an error).
    conn: Mutex<Option<MultiplexedConnection>>,
}

/// The sentinels of `redis.sentinels` and how to reach the master they name.
pub(crate) struct Sentinels {
    /// The master's name (`redis.sentinel_master`).
    master: String,
    /// Every sentinel.
    nodes: Vec<Arc<SentinelNode>>,
    /// The data nodes' connection info, but for the address: credentials, protocol.
    data: ConnectionInfo,
    /// TLS to the data nodes: `Some(insecure)` when the sentinels are `rediss://`.
    tls: Option<bool>,
    /// The CA and client certificate of `redis.tls_*`, for sentinels and data nodes.
    certs: Option<redis::TlsCertificates>,
    /// Timeouts of the connections to sentinels and of the `ROLE` check.
    conn_cfg: AsyncConnectionConfig,
    /// The connect timeout, for the subscriptions.
    connect_timeout: Duration,
    /// The master the sentinels last named, published by the watch to every follower.
    named: tokio::sync::watch::Sender<Option<MasterAddr>>,
    /// Set once the watch runs.
    watching: AtomicBool,
}

/// The [`Sentinels`] of each configuration in use in this process (see
/// [`Sentinels::shared`]).
static SHARED: Mutex<Vec<(String, Weak<Sentinels>)>> = Mutex::new(Vec::new());

impl std::fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinels")
            .field("master", &self.master)
            .field(
                "nodes",
                &self
                    .nodes
                    .iter()
                    .map(|n| n.url.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn open(
    info: ConnectionInfo,
    certs: &Option<redis::TlsCertificates>,
) -> RedisResult<redis::Client> {
    match certs {
        Some(c) if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) => {
            redis::Client::build_with_tls(info, c.clone())
        }
        _ => redis::Client::open(info),
    }
}

impl Sentinels {
    /// The sentinels of `cfg`, shared with every other connection of this process that
    /// uses the same settings (one subscription and one query connection per sentinel).
    pub(crate) fn shared(cfg: &RedisConfig) -> Result<Arc<Sentinels>> {
        let key = format!(
            "{:?}",
            (
                &cfg.sentinels,
                &cfg.sentinel_master,
                &cfg.master_username,
                &cfg.master_password,
                (&cfg.tls_ca_file, &cfg.tls_cert_file, &cfg.tls_key_file),
                (cfg.connect_timeout_ms, cfg.response_timeout_ms),
            )
        );
        let mut shared = SHARED.lock().expect("poisoned");
        shared.retain(|(_, w)| w.strong_count() > 0);
        if let Some(s) = shared
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(s);
        }
        let s = Arc::new(Sentinels::new(cfg)?);
        shared.push((key, Arc::downgrade(&s)));
        Ok(s)
    }

    /// The sentinels of `cfg` (validated by `Config::validate`); errors name the key.
    fn new(cfg: &RedisConfig) -> Result<Sentinels> {
        let certs = super::conn::tls_certificates(cfg)?;
        let master = cfg.sentinel_master.clone().ok_or_else(|| {
            Error::Config("redis.sentinel_master must be set with redis.sentinels".into())
        })?;
        let mut nodes = Vec::new();
        let mut first: Option<ConnectionInfo> = None;
        for (i, url) in cfg.sentinels.iter().enumerate() {
            let bad = |e: &dyn std::fmt::Display| {
                Error::Config(format!(
                    "redis.sentinels[{i}] {:?} is not usable: {e}",
                    redact_url(url)
                ))
            };
            let info = url.as_str().into_connection_info().map_err(|e| bad(&e))?;
            let client = open(info.clone(), &certs).map_err(|e| bad(&e))?;
            first.get_or_insert(info);
            nodes.push(Arc::new(SentinelNode {
                url: redact_url(url),
                client,
                conn: Mutex::new(None),
            }));
        }
        let first =
            first.ok_or_else(|| Error::Config("redis.sentinels lists no sentinel".into()))?;
        let tls = match first.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => Some(*insecure),
            _ => None,
        };
        let s = first.redis_settings();
        let mut data = RedisConnectionInfo::default().set_protocol(s.protocol());
        if let Some(u) = cfg.master_username.as_deref().or(s.username()) {
            data = data.set_username(u);
        }
        if let Some(p) = cfg.master_password.as_deref().or(s.password()) {
            data = data.set_password(p);
        }
        super::noperm::configured_user(data.username());
        Ok(Sentinels {
            master,
            nodes,
            data: first.set_redis_settings(data),
            tls,
            certs,
            conn_cfg: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)))
                .set_response_timeout(Some(Duration::from_millis(cfg.response_timeout_ms))),
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            named: tokio::sync::watch::Sender::new(None),
            watching: AtomicBool::new(false),
        })
    }

    /// The master the sentinels name, as the watch last saw it; starts the watch at the
    /// first call.
    fn named(self: &Arc<Self>) -> tokio::sync::watch::Receiver<Option<MasterAddr>> {
        if !self.watching.swap(true, Ordering::Relaxed) {
            let kick = Arc::new(tokio::sync::Notify::new());
            for i in 0..self.nodes.len() {
                tokio::spawn(subscribe(Arc::downgrade(self), i, kick.clone()));
            }
            tokio::spawn(watch(Arc::downgrade(self), kick));
        }
        self.named.subscribe()
    }

    /// The master's name.
    pub(crate) fn master_name(&self) -> &str {
        &self.master
    }

    /// Asks every sentinel at once and picks the master ([`pick_master`]).
    pub(crate) async fn resolve(&self) -> std::result::Result<MasterAddr, NoMaster> {
        let mut set = tokio::task::JoinSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let (n, master, cfg) = (n.clone(), self.master.clone(), self.conn_cfg.clone());
            set.spawn(async move { (i, ask(&n, &master, &cfg).await) });
        }
        let mut answers: Vec<(usize, String, Answer)> = Vec::with_capacity(self.nodes.len());
        while let Some(r) = set.join_next().await {
            if let Ok((i, a)) = r {
                answers.push((i, self.nodes[i].url.clone(), a));
            }
        }
        answers.sort_by_key(|a| a.0);
        let answers: Vec<(String, Answer)> = answers.into_iter().map(|(_, u, a)| (u, a)).collect();
        pick_master(&self.master, &answers)
    }

    /// A client for the data node at `addr` (credentials and TLS of the module docs).
    pub(crate) fn client_for(&self, addr: &MasterAddr) -> RedisResult<redis::Client> {
        let a = match self.tls {
            None => ConnectionAddr::Tcp(addr.host.clone(), addr.port),
            Some(insecure) => ConnectionAddr::TcpTls {
                host: addr.host.clone(),
                port: addr.port,
                insecure,
                tls_params: None,
            },
        };
        open(self.data.clone().set_addr(a), &self.certs)
    }

    /// Checks that the node of `client` is a master; the error says what it is instead.
    pub(crate) async fn verify_master(
        &self,
        client: &redis::Client,
    ) -> std::result::Result<(), String> {
        let mut c = client
            .get_multiplexed_async_connection_with_config(&self.conn_cfg)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let role = match redis::cmd("ROLE").query_async::<Value>(&mut c).await {
            Ok(Value::Array(items)) => items
                .first()
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                .unwrap_or_default(),
            Ok(other) => return Err(format!("ROLE answered {other:?}")),
            Err(e) if e.is_io_error() => return Err(format!("ROLE failed: {e}")),
            // ROLE refused (an ACL without it): INFO replication says the same.
            Err(_) => {
                let info: RedisResult<String> = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await;
                match info {
                    Ok(text) => crate::preflight::info_field(&text, "role")
                        .unwrap_or("")
                        .to_string(),
                    Err(e) if e.is_io_error() => return Err(format!("INFO failed: {e}")),
                    Err(e) => {
                        tracing::debug!(error = %e, "ROLE and INFO replication refused; trusting the sentinels");
                        return Ok(());
                    }
                }
            }
        };
        match role.as_str() {
            "master" | "primary" => Ok(()),
            "" => Err("its role cannot be read".into()),
            other => Err(format!(
                "it is a {other} (the sentinels have not finished reconfiguring it yet)"
            )),
        }
    }
}

/// Asks one sentinel about `master`, reusing its connection while it works.
async fn ask(n: &SentinelNode, master: &str, cfg: &AsyncConnectionConfig) -> Answer {
    let cached = n.conn.lock().expect("poisoned").clone();
    let mut c = match cached {
        Some(c) => c,
        None => match n
            .client
            .get_multiplexed_async_connection_with_config(cfg)
            .await
        {
            Ok(c) => {
                *n.conn.lock().expect("poisoned") = Some(c.clone());
                c
            }
            Err(e) => return Answer::Unreachable(e.to_string()),
        },
    };
    let r: RedisResult<HashMap<String, String>> = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(master)
        .query_async(&mut c)
        .await;
    match r {
        Ok(fields) => parse_master_reply(&fields),
        Err(e) if e.to_string().contains("No such master") => Answer::Unknown,
        Err(e) => {
            *n.conn.lock().expect("poisoned") = None;
            if e.to_string().to_lowercase().contains("unknown command") {
                Answer::Unreachable(format!("not a sentinel ({e})"))
            } else {
                Answer::Unreachable(e.to_string())
            }
        }
    }
}

/// Builds the connection object `T` (a manager, a pool) for a verified master.
pub(crate) type MakeNode<T> = Box<
    dyn Fn(redis::Client) -> Pin<Box<dyn Future<Output = RedisResult<T>> + Send>> + Send + Sync,
>;

/// The connection object in use, and to which master.
struct Current<T> {
    /// Bumped at each switch; replies tell [`Follow::suspect`] which one they came from.
    generation: u64,
    /// The master it connects to.
    addr: MasterAddr,
    /// The manager or pool.
    node: T,
}

/// What [`Follow`] knows.
struct State<T> {
    /// The connection object in use (None until the first master is verified).
    current: Option<Current<T>>,
    /// A reply pointed at a failover: re-resolve before trusting `current` again.
    stale: bool,
    /// Consecutive failed resolutions.
    failures: u32,
    /// No new resolution before this.
    retry_at: Option<Instant>,
    /// Why the last resolution failed.
    last_error: Option<String>,
}

/// Follows the master the sentinels name with a connection object `T` (see the module
/// docs).
pub(crate) struct Follow<T> {
    /// The sentinels.
    sentinels: Arc<Sentinels>,
    /// What follows, for logs (`command connection`, `readers`).
    what: &'static str,
    /// Builds `T` for a new master.
    make: MakeNode<T>,
    /// Current connection and failure bookkeeping.
    state: Mutex<State<T>>,
    /// Held by the one resolution in flight.
    resolving: tokio::sync::Mutex<()>,
    /// Set once the watch task runs.
    watching: AtomicBool,
}

/// The error of a command sent while no master is known.
fn no_master(why: &str) -> RedisError {
    RedisError::from((
        redis::ErrorKind::Io,
        "no redis master known to the sentinels yet",
        why.to_string(),
    ))
}

impl<T: Clone + Send + Sync + 'static> Follow<T> {
    /// Follows the master of `sentinels`, building `T` with `make`.
    pub(crate) fn new(
        sentinels: Arc<Sentinels>,
        what: &'static str,
        make: MakeNode<T>,
    ) -> Arc<Self> {
        Arc::new(Follow {
            sentinels,
            what,
            make,
            state: Mutex::new(State {
                current: None,
                stale: false,
                failures: 0,
                retry_at: None,
                last_error: None,
            }),
            resolving: tokio::sync::Mutex::new(()),
            watching: AtomicBool::new(false),
        })
    }

    /// The current connection object (and its generation) when it can be trusted as is,
    /// else the current one with `true` (stale), or None.
    fn snapshot(&self) -> Option<(u64, T, bool)> {
        let st = self.state.lock().expect("poisoned");
        st.current
            .as_ref()
            .map(|c| (c.generation, c.node.clone(), st.stale))
    }

    /// The connection object to the master, re-resolving first when a reply said the
    /// master may have moved. While no master was ever found, waits for the resolution
    /// in flight and fails with "no master" (spaced by [`resolve_delay`]); afterwards a
    /// failed resolution leaves the current object in use.
    pub(crate) async fn node(self: &Arc<Self>) -> RedisResult<(u64, T)> {
        self.watch();
        match self.snapshot() {
            Some((g, n, false)) => Ok((g, n)),
            Some((g, n, true)) => {
                if self.backing_off() {
                    return Ok((g, n));
                }
                // Someone is resolving: go on with the current one meanwhile.
                let Ok(_guard) = self.resolving.try_lock() else {
                    return Ok((g, n));
                };
                if let Some((g, n, false)) = self.snapshot() {
                    return Ok((g, n));
                }
                if self.backing_off() {
                    return Ok((g, n));
                }
                match self.resolve_and_switch().await {
                    Ok(x) => Ok(x),
                    Err(_) => Ok(self.snapshot().map(|(g, n, _)| (g, n)).unwrap_or((g, n))),
                }
            }
            None => {
                let _guard = self.resolving.lock().await;
                if let Some((g, n, _)) = self.snapshot() {
                    return Ok((g, n));
                }
                if self.backing_off() {
                    let st = self.state.lock().expect("poisoned");
                    return Err(no_master(st.last_error.as_deref().unwrap_or("")));
                }
                self.resolve_and_switch()
                    .await
                    .map_err(|why| no_master(&why))
            }
        }
    }

    /// True while the last failed resolution's delay runs.
    fn backing_off(&self) -> bool {
        let st = self.state.lock().expect("poisoned");
        st.retry_at.is_some_and(|at| Instant::now() < at)
    }

    /// Records that a reply of generation `generation` pointed at a failover.
    pub(crate) fn suspect(&self, generation: u64) {
        let mut st = self.state.lock().expect("poisoned");
        if let Some(c) = &st.current {
            if c.generation == generation && !st.stale {
                tracing::debug!(what = self.what, master = %c.addr, "reply points at a failover; asking the sentinels");
                st.stale = true;
            }
        }
    }

    /// Asks the sentinels, verifies the master and switches to it when it moved. Holds
    /// no lock but [`Follow::resolving`] (taken by the caller).
    async fn resolve_and_switch(&self) -> std::result::Result<(u64, T), String> {
        let r = self.resolve_verified().await;
        let mut st = self.state.lock().expect("poisoned");
        match r {
            Ok((addr, node)) => {
                st.failures = 0;
                st.retry_at = None;
                st.last_error = None;
                st.stale = false;
                crate::health::set_redis_up(true);
                let Some(node) = node else {
                    return st
                        .current
                        .as_ref()
                        .map(|c| (c.generation, c.node.clone()))
                        .ok_or_else(|| "no connection was built".to_string());
                };
                let generation = st.current.as_ref().map_or(1, |c| c.generation + 1);
                match st.current.as_ref() {
                    Some(old) => tracing::info!(
                        what = self.what,
                        master_name = self.sentinels.master_name(),
                        master = %addr,
                        was = %old.addr,
                        "following a failover to the new redis master"
                    ),
                    None => tracing::info!(
                        what = self.what,
                        master_name = self.sentinels.master_name(),
                        master = %addr,
                        "redis master found through the sentinels"
                    ),
                }
                st.current = Some(Current {
                    generation,
                    addr,
                    node: node.clone(),
                });
                Ok((generation, node))
            }
            Err((why, master_down)) => {
                st.failures += 1;
                let delay = resolve_delay(st.failures);
                st.retry_at = Some(Instant::now() + delay);
                st.last_error = Some(why.clone());
                if master_down || st.current.is_none() {
                    crate::health::set_redis_up(false);
                }
                tracing::warn!(
                    what = self.what,
                    master_name = self.sentinels.master_name(),
                    current = %st.current.as_ref().map(|c| c.addr.to_string()).unwrap_or_else(|| "none".into()),
                    attempt = st.failures,
                    retry_in_ms = delay.as_millis() as u64,
                    error = %why,
                    "no usable redis master yet, asking the sentinels again"
                );
                Err(why)
            }
        }
    }

    /// The master the sentinels name, verified, with a new connection object when it is
    /// not the current one (None: keep the current one). The error says why, and whether
    /// the master is down (true) rather than the sentinels unreachable.
    async fn resolve_verified(
        &self,
    ) -> std::result::Result<(MasterAddr, Option<T>), (String, bool)> {
        let addr = self
            .sentinels
            .resolve()
            .await
            .map_err(|e| (e.why, e.sentinels_answered))?;
        let client = self
            .sentinels
            .client_for(&addr)
            .map_err(|e| (format!("master {addr} cannot be reached: {e}"), true))?;
        self.sentinels
            .verify_master(&client)
            .await
            .map_err(|e| (format!("the sentinels name {addr}, but {e}"), true))?;
        let same = self
            .state
            .lock()
            .expect("poisoned")
            .current
            .as_ref()
            .is_some_and(|c| c.addr == addr);
        if same {
            return Ok((addr, None));
        }
        let node = (self.make)(client)
            .await
            .map_err(|e| (format!("cannot connect to master {addr}: {e}"), true))?;
        Ok((addr, Some(node)))
    }

    /// Starts, once, the task that switches as soon as the master the sentinels name
    /// ([`Sentinels::named`]) differs from the current one, without waiting for a command
    /// to fail. It ends with the last handle on the follower.
    fn watch(self: &Arc<Self>) {
        // A load first: this runs on every command, and a swap would write the flag's
        // cache line on every one of them.
        if self.watching.load(Ordering::Relaxed) || self.watching.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut named = self.sentinels.named();
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                // Woken by a change, or at least every WATCH_EVERY to see if it is still used.
                if let Ok(Err(_)) = tokio::time::timeout(WATCH_EVERY, named.changed()).await {
                    break;
                }
                let Some(f) = weak.upgrade() else { break };
                let Some(addr) = named.borrow_and_update().clone() else {
                    continue;
                };
                let moved = {
                    let mut st = f.state.lock().expect("poisoned");
                    let moved = st.current.as_ref().is_some_and(|c| c.addr != addr);
                    if moved {
                        st.stale = true;
                        st.retry_at = None;
                    }
                    moved
                };
                if moved {
                    let _ = f.node().await;
                }
            }
        });
    }
}

/// The watch of [`Sentinels::named`]: asks the sentinels when a subscription says a
/// failover happened, and every [`WATCH_EVERY`] anyway; publishes the master they name
/// when it changed. Ends when the sentinels are no longer used.
async fn watch(sentinels: Weak<Sentinels>, kick: Arc<tokio::sync::Notify>) {
    loop {
        tokio::select! {
            _ = kick.notified() => {}
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
        let Some(s) = sentinels.upgrade() else { break };
        if let Ok(addr) = s.resolve().await {
            s.named.send_if_modified(|v| {
                let changed = v.as_ref() != Some(&addr);
                if changed {
                    tracing::debug!(master_name = %s.master, master = %addr, "the sentinels name a master");
                    *v = Some(addr);
                }
                changed
            });
        }
    }
}

/// Subscribes to `+switch-master` on sentinel `i`, re-subscribing with backoff after a
/// lost connection, and kicks the watch when a failover of our master is announced.
async fn subscribe(sentinels: Weak<Sentinels>, i: usize, kick: Arc<tokio::sync::Notify>) {
    use futures_util::StreamExt;
    let mut failures: u32 = 0;
    loop {
        let Some(s) = sentinels.upgrade() else { return };
        let (client, url, master, timeout) = (
            s.nodes[i].client.clone(),
            s.nodes[i].url.clone(),
            s.master.clone(),
            s.connect_timeout,
        );
        drop(s);
        let connected = tokio::time::timeout(timeout, async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(SWITCH_MASTER).await?;
            RedisResult::Ok(ps)
        })
        .await;
        match connected {
            Ok(Ok(mut ps)) => {
                failures = 0;
                let mut messages = ps.on_message();
                loop {
                    tokio::select! {
                        m = messages.next() => match m {
                            Some(m) => {
                                let text: String = m.get_payload().unwrap_or_default();
                                if text.split(' ').next() == Some(master.as_str()) {
                                    tracing::info!(sentinel = %url, announcement = %text, "a sentinel announces a failover");
                                    kick.notify_one();
                                }
                            }
                            None => break,
                        },
                        _ = tokio::time::sleep(WATCH_EVERY) => {
                            if sentinels.strong_count() == 0 {
                                return;
                            }
                        }
                    }
                }
                tracing::debug!(sentinel = %url, "subscription to +switch-master lost, subscribing again");
            }
            Ok(Err(e)) => {
                failures += 1;
                tracing::debug!(sentinel = %url, error = %e, "cannot subscribe to +switch-master");
            }
            Err(_) => {
                failures += 1;
                tracing::debug!(sentinel = %url, "cannot subscribe to +switch-master: connect timed out");
            }
        }
        tokio::time::sleep(super::conn::reconnect_delay(failures.max(1))).await;
    }
}

/// The command connection under Sentinel: the current master's `ConnectionManager`,
/// replaced when the master moves. Cheap to clone (clones share it).
#[derive(Clone)]
pub struct SentinelConn {
    /// The follower of the master.
    follow: Arc<Follow<ConnectionManager>>,
}

impl SentinelConn {
    /// A command connection that follows the master of `sentinels` with managers built by
    /// `make`.
    pub(crate) fn new(sentinels: Arc<Sentinels>, make: MakeNode<ConnectionManager>) -> Self {
        SentinelConn {
            follow: Follow::new(sentinels, "command connection", make),
        }
    }

    /// Resolves and connects the master now; the error says why it could not.
    pub(crate) async fn ready(&self) -> RedisResult<()> {
        self.follow.node().await.map(|_| ())
    }

    /// A handle that does not keep the connection (and its sentinel subscriptions) alive.
    pub(crate) fn downgrade(&self) -> Weak<Follow<ConnectionManager>> {
        Arc::downgrade(&self.follow)
    }

    /// The connection of a handle from [`SentinelConn::downgrade`], while it is in use.
    pub(crate) fn upgrade(weak: &Weak<Follow<ConnectionManager>>) -> Option<SentinelConn> {
        weak.upgrade().map(|follow| SentinelConn { follow })
    }
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut c) = self.follow.node().await?;
            let r = c.req_packed_command(cmd).await;
            if failover_sign(&r) {
                self.follow.suspect(generation);
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut c) = self.follow.node().await?;
            let r = c.req_packed_commands(pipeline, offset, count).await;
            if failover_sign(&r) {
                self.follow.suspect(generation);
            }
            r
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// Where the blocking readers' connections come from under Sentinel: a pool of
/// connections to the current master, replaced by a new pool when the master moves.
#[derive(Clone)]
pub struct SentinelReaders {
    /// The follower of the master.
    follow: Arc<Follow<deadpool_redis::Pool>>,
}

impl SentinelReaders {
    /// Readers that follow the master of `sentinels` with pools built by `make`.
    pub(crate) fn new(sentinels: Arc<Sentinels>, make: MakeNode<deadpool_redis::Pool>) -> Self {
        SentinelReaders {
            follow: Follow::new(sentinels, "readers", make),
        }
    }

    /// An exclusive connection to the current master.
    pub(crate) async fn get(&self) -> std::result::Result<SentinelReaderConn, String> {
        let (generation, pool) = self.follow.node().await.map_err(|e| e.to_string())?;
        match pool.get().await {
            Ok(conn) => Ok(SentinelReaderConn {
                conn,
                follow: self.follow.clone(),
                generation,
            }),
            Err(e) => {
                self.follow.suspect(generation);
                Err(e.to_string())
            }
        }
    }
}

/// One exclusive connection from [`SentinelReaders`].
pub struct SentinelReaderConn {
    /// The pooled connection.
    conn: deadpool_redis::Connection,
    /// Told when a reply points at a failover.
    follow: Arc<Follow<deadpool_redis::Pool>>,
    /// The pool generation it came from.
    generation: u64,
}

impl SentinelReaderConn {
    /// Closes the connection instead of returning it to its pool.
    pub(crate) fn discard(self) {
        drop(deadpool_redis::Connection::take(self.conn));
    }
}

impl ConnectionLike for SentinelReaderConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let r = self.conn.req_packed_command(cmd).await;
            if failover_sign(&r) {
                self.follow.suspect(self.generation);
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let r = self.conn.req_packed_commands(pipeline, offset, count).await;
            if failover_sign(&r) {
                self.follow.suspect(self.generation);
            }
            r
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn up(port: u16, epoch: u64) -> Answer {
        Answer::Up {
            addr: MasterAddr {
                host: "127.0.0.1".into(),
                port,
            },
            epoch,
        }
    }

    #[test]
    fn master_reply_is_up_only_when_flagged_master_and_not_down() {
        let base = [
            ("name", "m"),
            ("ip", "10.0.0.1"),
            ("port", "6379"),
            ("config-epoch", "3"),
        ];
        let with = |flags: &str| {
            let mut r = reply(&base);
            r.insert("flags".into(), flags.into());
            parse_master_reply(&r)
        };
        assert_eq!(
            with("master"),
            Answer::Up {
                addr: MasterAddr {
                    host: "10.0.0.1".into(),
                    port: 6379
                },
                epoch: 3
            }
        );
        for down in [
            "s_down,master",
            "master,o_down,s_down",
            "master,failover_in_progress",
            "slave",
        ] {
            assert!(matches!(with(down), Answer::Down { .. }), "{down}");
        }
        // A sentinel whose link to a just-promoted master is not up yet still names it.
        assert!(matches!(with("master,disconnected"), Answer::Up { .. }));
        assert!(matches!(
            parse_master_reply(&reply(&[("flags", "master")])),
            Answer::Unreachable(_)
        ));
    }

    #[test]
    fn the_highest_epoch_wins_then_the_majority_then_the_first() {
        let s = |i: u8| format!("redis://s{i}");
        // A lagging sentinel still names the old master in the old epoch.
        let a = [(s(1), up(1, 1)), (s(2), up(2, 2)), (s(3), up(2, 2))];
        assert_eq!(pick_master("m", &a).unwrap().port, 2);
        let a = [
            (s(1), up(2, 2)),
            (s(2), up(1, 1)),
            (s(3), Answer::Unreachable("x".into())),
        ];
        assert_eq!(pick_master("m", &a).unwrap().port, 2);
        // Same epoch, different addresses: the majority, then the first listed.
        let a = [(s(1), up(3, 5)), (s(2), up(4, 5)), (s(3), up(4, 5))];
        assert_eq!(pick_master("m", &a).unwrap().port, 4);
        let a = [(s(1), up(3, 5)), (s(2), up(4, 5))];
        assert_eq!(pick_master("m", &a).unwrap().port, 3);
        // One up answer is enough.
        let a = [
            (s(1), Answer::Unreachable("refused".into())),
            (s(2), up(7, 0)),
        ];
        assert_eq!(pick_master("m", &a).unwrap().port, 7);
    }

    #[test]
    fn no_master_says_why_per_sentinel_and_whether_any_answered() {
        let down = Answer::Down {
            addr: MasterAddr {
                host: "127.0.0.1".into(),
                port: 1,
            },
            flags: "s_down,master".into(),
        };
        let e = pick_master(
            "mymaster",
            &[
                ("redis://s1".into(), down),
                ("redis://s2".into(), Answer::Unknown),
                ("redis://s3".into(), Answer::Unreachable("refused".into())),
            ],
        )
        .unwrap_err();
        assert!(e.sentinels_answered);
        for want in [
            "redis://s1: master 127.0.0.1:1 is down",
            "redis://s2: monitors no master named \"mymaster\"",
            "redis://s3: cannot be asked: refused",
        ] {
            assert!(e.why.contains(want), "{}", e.why);
        }
        let e = pick_master(
            "m",
            &[("redis://s1".into(), Answer::Unreachable("refused".into()))],
        )
        .unwrap_err();
        assert!(!e.sentinels_answered);
        assert!(pick_master("m", &[]).is_err());
    }

    #[test]
    fn failover_signs() {
        let io: RedisResult<Value> = Err(RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(failover_sign(&io));
        let timeout: RedisResult<Value> = Err(RedisError::from(std::io::Error::from(
            std::io::ErrorKind::TimedOut,
        )));
        assert!(failover_sign(&timeout));
        let readonly =
            redis::parse_redis_value(b"-READONLY You can't write against a read only replica.\r\n")
                .unwrap();
        assert!(failover_sign(&Ok(vec![Value::Okay, readonly.clone()])));
        let as_err: RedisResult<Value> = readonly.extract_error();
        assert!(failover_sign(&as_err));
        let loading =
            redis::parse_redis_value(b"-LOADING Redis is loading the dataset in memory\r\n")
                .unwrap();
        assert!(failover_sign(&loading.extract_error()));
        let wrongtype =
            redis::parse_redis_value(b"-WRONGTYPE Operation against a key\r\n").unwrap();
        assert!(!failover_sign(&Ok(vec![wrongtype.clone()])));
        assert!(!failover_sign(&wrongtype.extract_error()));
        assert!(!failover_sign(&Ok(Value::Okay)));
    }

    #[test]
    fn resolve_delay_is_short_and_capped() {
        assert_eq!(resolve_delay(1), Duration::from_millis(50));
        assert_eq!(resolve_delay(2), Duration::from_millis(100));
        assert_eq!(resolve_delay(30), Duration::from_millis(500));
    }
}
