//! A real Redis Cluster for tests: `redis-server --cluster-enabled yes` × N on free
//! loopback ports (each with its bus port, port + 10000, free too), joined by
//! `redis-cli --cluster create … --cluster-yes`, with a short node timeout so a failover
//! takes a few seconds. Killed on drop.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use super::RedisServer;

/// How long a node may be silent before the cluster fails it over, in ms.
pub const NODE_TIMEOUT_MS: u64 = 2000;

/// A running cluster.
pub struct Cluster {
    /// Every node, masters and replicas, by port.
    pub nodes: BTreeMap<u16, RedisServer>,
    /// The TLS port of each node, by plain port (empty unless [`Cluster::start_tls`]).
    pub tls_ports: BTreeMap<u16, u16>,
}

/// A port whose bus port (port + 10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let p = super::free_port();
        if p < 55000 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
}

impl Cluster {
    /// `masters` masters with `replicas` replicas each, all slots assigned, replicas in
    /// sync, every node agreeing the cluster is ok.
    pub fn start(masters: usize, replicas: usize) -> Cluster {
        Cluster::start_with(masters, replicas, &[])
    }

    /// [`Cluster::start`] with extra `redis-server` arguments on every node.
    pub fn start_with(masters: usize, replicas: usize, extra: &[&str]) -> Cluster {
        Cluster::start_nodes(masters, replicas, extra, |_| Vec::new())
    }

    /// A cluster of `masters` masters (no replicas) whose nodes also listen on a TLS port
    /// with the certificate `server.pem` signed by `ca.pem` in `certs`, requiring client
    /// certificates from that CA, with TLS on the cluster bus too (`tls-cluster yes`, so
    /// `CLUSTER SLOTS` names the TLS ports to TLS clients). The plain ports stay for the
    /// harness's own commands.
    pub fn start_tls(masters: usize, certs: &std::path::Path) -> Cluster {
        let path = |f: &str| certs.join(f).display().to_string();
        let tls_args = vec![
            "--tls-cert-file".to_string(),
            path("server.pem"),
            "--tls-key-file".to_string(),
            path("server.key"),
            "--tls-ca-cert-file".to_string(),
            path("ca.pem"),
            "--tls-auth-clients".to_string(),
            "yes".to_string(),
            "--tls-cluster".to_string(),
            "yes".to_string(),
        ];
        let ports = std::sync::Mutex::new(BTreeMap::new());
        let mut c = Cluster::start_nodes(masters, 0, &[], |port| {
            let tls = super::free_port();
            ports.lock().unwrap().insert(port, tls);
            let mut a = vec!["--tls-port".to_string(), tls.to_string()];
            a.extend(tls_args.iter().cloned());
            a
        });
        let mut ports = ports.into_inner().unwrap();
        ports.retain(|p, _| c.nodes.contains_key(p));
        c.tls_ports = ports;
        c
    }

    /// The `rediss://` seed URLs of every node's TLS port.
    pub fn tls_urls(&self) -> Vec<String> {
        self.tls_ports
            .values()
            .map(|t| format!("rediss://127.0.0.1:{t}"))
            .collect()
    }

    fn start_nodes(
        masters: usize,
        replicas: usize,
        extra: &[&str],
        per_node: impl Fn(u16) -> Vec<String>,
    ) -> Cluster {
        let timeout = NODE_TIMEOUT_MS.to_string();
        let mut args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            timeout.as_str(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--slowlog-log-slower-than",
            "0",
            "--slowlog-max-len",
            "100000",
        ];
        args.extend_from_slice(extra);
        let mut nodes = BTreeMap::new();
        let mut failed = 0;
        while nodes.len() < masters * (1 + replicas) {
            let port = cluster_port();
            let own = per_node(port);
            let mut all = args.clone();
            all.extend(own.iter().map(String::as_str));
            match RedisServer::try_start_on(port, &all) {
                Some(s) => {
                    nodes.insert(port, s);
                }
                None => {
                    failed += 1;
                    assert!(failed < 20, "a cluster node does not start with {all:?}");
                }
            }
        }
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for p in nodes.keys() {
            cmd.arg(format!("127.0.0.1:{p}"));
        }
        let out = cmd
            .arg("--cluster-replicas")
            .arg(replicas.to_string())
            .arg("--cluster-yes")
            .output()
            .expect("redis-cli must be installed (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = Cluster {
            nodes,
            tls_ports: BTreeMap::new(),
        };
        c.wait_healthy(masters, Duration::from_secs(30));
        c
    }

    /// Waits until every live node says `cluster_state:ok`, knows `masters` masters with
    /// slots, and every replica's link to its master is up.
    pub fn wait_healthy(&self, masters: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.healthy(masters) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not healthy after {timeout:?}: {}",
                self.cluster_nodes_text()
            );
            std::thread::sleep(Duration::from_millis(50)); // poll
        }
    }

    fn healthy(&self, masters: usize) -> bool {
        for (port, _) in self.live() {
            let Some(info) = self.query(port, &["CLUSTER", "INFO"]) else {
                return false;
            };
            if !info.contains("cluster_state:ok") {
                return false;
            }
            let Some(repl) = self.query(port, &["INFO", "replication"]) else {
                return false;
            };
            if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
                return false;
            }
        }
        self.masters().len() == masters
    }

    /// Nodes whose process runs.
    fn live(&self) -> impl Iterator<Item = (u16, &RedisServer)> {
        self.nodes
            .iter()
            .filter(|(_, s)| s.running())
            .map(|(p, s)| (*p, s))
    }

    /// Runs `args` on node `port`; the reply as text, None when it does not answer.
    pub fn query(&self, port: u16, args: &[&str]) -> Option<String> {
        let c = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
        let mut conn = c
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let v: redis::Value = cmd.query(&mut conn).ok()?;
        Some(value_text(&v))
    }

    fn cluster_nodes_text(&self) -> String {
        self.live()
            .find_map(|(p, _)| self.query(p, &["CLUSTER", "NODES"]))
            .unwrap_or_default()
    }

    /// Ports of the masters that hold slots and are not failed, as a live node sees them.
    pub fn masters(&self) -> Vec<u16> {
        let text = self.cluster_nodes_text();
        let mut ports: Vec<u16> = text
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 8 && f[2].contains("master") && !f[2].contains("fail")
            })
            .filter_map(|l| {
                let addr = l.split_whitespace().nth(1)?;
                addr.split(['@', ':']).nth(1)?.parse().ok()
            })
            .filter(|p| self.nodes.get(p).is_some_and(|s| s.running()))
            .collect();
        ports.sort();
        ports
    }

    /// The seed URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.values().map(|s| s.url()).collect()
    }

    /// `cluster_nodes = [...]` for a `[redis]` table.
    pub fn toml_nodes(&self) -> String {
        let urls: Vec<String> = self.urls().iter().map(|u| format!("\"{u}\"")).collect();
        format!("cluster_nodes = [{}]", urls.join(", "))
    }

    /// The comma-separated seeds, as `TASKSTREAM_REDIS_CLUSTER_NODES` takes them.
    pub fn env_nodes(&self) -> String {
        self.urls().join(",")
    }

    /// [`super::worker_toml`] with the cluster instead of one server.
    pub fn worker_toml(&self, queue: &str, extra_worker: &str, extra_queue: &str) -> String {
        super::worker_toml("URL", queue, extra_worker, extra_queue)
            .replace("url = \"URL\"", &self.toml_nodes())
    }

    /// A library configuration on the cluster.
    pub fn config(&self) -> taskstream::config::Config {
        let mut cfg = taskstream::config::Config::default();
        cfg.redis.cluster_nodes = self.urls();
        cfg.redis.response_timeout_ms = 1000;
        cfg
    }

    /// The port of the master that holds `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        self.try_master_of(key)
            .unwrap_or_else(|| panic!("no master holds the slot of {key}"))
    }

    /// [`Cluster::master_of`], or None while the cluster cannot tell (a failover).
    pub fn try_master_of(&self, key: &str) -> Option<u16> {
        let port = *self.masters().first()?;
        let slot = self
            .query(port, &["CLUSTER", "KEYSLOT", key])?
            .parse::<u16>()
            .ok()?;
        let redis::Value::Array(ranges) = self.query_value(port, &["CLUSTER", "SLOTS"])? else {
            return None;
        };
        for r in ranges {
            let redis::Value::Array(r) = r else { continue };
            let lo: u16 = redis::from_redis_value(r.first()?.clone()).ok()?;
            let hi: u16 = redis::from_redis_value(r.get(1)?.clone()).ok()?;
            if (lo..=hi).contains(&slot) {
                let redis::Value::Array(node) = r.get(2)?.clone() else {
                    return None;
                };
                return redis::from_redis_value(node.get(1)?.clone()).ok();
            }
        }
        None
    }

    /// Runs `args` on node `port` and returns the raw reply.
    pub fn query_value(&self, port: u16, args: &[&str]) -> Option<redis::Value> {
        let c = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
        let mut conn = c
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn).ok()
    }

    /// Every EVALSHA digest any node ran since it started (the nodes log every command
    /// in their slow log), and every error count of `INFO errorstats`, summed over nodes.
    pub fn scripts_and_errors(
        &self,
    ) -> (std::collections::BTreeSet<String>, BTreeMap<String, u64>) {
        let mut shas = std::collections::BTreeSet::new();
        let mut errors = BTreeMap::new();
        for (port, _) in self.live() {
            if let Some(redis::Value::Array(entries)) =
                self.query_value(port, &["SLOWLOG", "GET", "-1"])
            {
                for e in entries {
                    let redis::Value::Array(f) = e else { continue };
                    let Some(redis::Value::Array(args)) = f.get(3) else {
                        continue;
                    };
                    let args: Vec<String> = args
                        .iter()
                        .filter_map(|a| redis::from_redis_value(a.clone()).ok())
                        .collect();
                    if args
                        .first()
                        .is_some_and(|a| a.eq_ignore_ascii_case("evalsha"))
                    {
                        if let Some(sha) = args.get(1) {
                            shas.insert(sha.to_lowercase());
                        }
                    }
                }
            }
            if let Some(text) = self.query(port, &["INFO", "commandstats"]) {
                for line in text.lines() {
                    let Some((name, stats)) = line.split_once(':') else {
                        continue;
                    };
                    for part in stats.split(',') {
                        if let Some(n) = part
                            .strip_prefix("failed_calls=")
                            .or(part.strip_prefix("rejected_calls="))
                        {
                            let n: u64 = n.trim().parse().unwrap_or(0);
                            if n > 0 {
                                *errors.entry(format!("{name}({part})")).or_default() += n;
                            }
                        }
                    }
                }
            }
            if let Some(text) = self.query(port, &["INFO", "errorstats"]) {
                for line in text.lines() {
                    let Some(rest) = line.strip_prefix("errorstat_") else {
                        continue;
                    };
                    let Some((name, count)) = rest.split_once(":count=") else {
                        continue;
                    };
                    *errors.entry(name.to_string()).or_default() +=
                        count.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
        (shas, errors)
    }

    /// The total number of keys on each live master.
    pub fn keys_per_master(&self) -> BTreeMap<u16, u64> {
        self.masters()
            .into_iter()
            .map(|p| {
                let n = self
                    .query(p, &["DBSIZE"])
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                (p, n)
            })
            .collect()
    }
}

/// A reply as text (integers and strings as themselves, arrays line by line).
fn value_text(v: &redis::Value) -> String {
    match v {
        redis::Value::Array(a) => a.iter().map(value_text).collect::<Vec<_>>().join("\n"),
        v => redis::from_redis_value::<String>(v.clone()).unwrap_or_default(),
    }
}

impl Cluster {
    /// A synchronous cluster connection (for assertions).
    pub fn sync_conn(&self) -> redis::cluster::ClusterConnection {
        redis::cluster::ClusterClient::new(self.urls())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// `HGETALL key` on the cluster: the executions `builtin.record` counted.
    pub fn executions(&self, key: &str) -> std::collections::HashMap<String, u64> {
        redis::cmd("HGETALL")
            .arg(key)
            .query(&mut self.sync_conn())
            .unwrap_or_default()
    }

    /// Starts killed node `port` again (same port and `nodes.conf`: it rejoins the
    /// cluster, as a replica when its slots were failed over meanwhile).
    pub fn restart(&mut self, port: u16) {
        self.nodes.get_mut(&port).expect("a node").restart();
    }

    /// Kills node `port` with SIGKILL.
    pub fn kill(&mut self, port: u16) {
        self.nodes.get_mut(&port).expect("a node").kill();
    }
}
