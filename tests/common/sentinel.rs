//! A real Redis Sentinel setup for tests: a master, its replicas (`--replicaof`) and three
//! `redis-server <conf> --sentinel` processes monitoring it with quorum 2, on free
//! loopback ports, with a short `down-after-milliseconds` so a failover takes a few
//! seconds. Each sentinel's config file lives in its own tempdir (sentinel rewrites it).
//! Everything is killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, server_bin, write_file, RedisServer};

/// How long a master may be silent before the sentinels call it down, in ms.
pub const DOWN_AFTER_MS: u64 = 1000;

/// One `redis-server --sentinel` process.
pub struct SentinelProc {
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl SentinelProc {
    /// Starts a sentinel monitoring `name` at `127.0.0.1:master_port` (quorum 2).
    fn start(name: &str, master_port: u16) -> SentinelProc {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let conf = write_file(
                dir.path(),
                "sentinel.conf",
                &format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {name} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {name} {DOWN_AFTER_MS}\n\
                     sentinel failover-timeout {name} 3000\n\
                     sentinel parallel-syncs {name} 1\n",
                    dir = dir.path().display()
                ),
            );
            let log = std::fs::File::create(dir.path().join("sentinel.log")).unwrap();
            let child = Command::new(server_bin())
                .arg(&conf)
                .arg("--sentinel")
                .stdout(log)
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "{} must be installed (apt-get install redis-server): {e}",
                        server_bin()
                    )
                });
            let mut s = SentinelProc {
                port,
                dir,
                child: Some(child),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some(Ok(Some(_))) = s.child.as_mut().map(|c| c.try_wait()) {
                    s.child = None;
                    break; // port taken: try another
                }
                if s.query::<String>(&["PING"]).is_some() {
                    return s;
                }
                std::thread::sleep(Duration::from_millis(20)); // poll
            }
        }
        panic!("could not start a sentinel ({} --sentinel)", server_bin());
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// True while its process runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Runs one command; None when it cannot be reached or refuses.
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> Option<T> {
        query(self.port, args)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for SentinelProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One command to the server on `port` with short timeouts; None on any failure.
fn query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> Option<T> {
    let c = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = c
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut conn).ok()
}

/// A master, its replicas and three sentinels.
pub struct Sentinel {
    /// The master name the sentinels monitor.
    pub name: String,
    /// The data nodes: `[0]` starts as master, the others as its replicas.
    pub nodes: Vec<RedisServer>,
    /// The sentinels.
    pub sentinels: Vec<SentinelProc>,
}

impl Sentinel {
    /// Starts a master with `replicas` replicas and three sentinels, and waits until every
    /// sentinel knows the replicas and the two other sentinels (a failover needs both),
    /// and every replica is in sync.
    pub fn start(name: &str, replicas: usize) -> Sentinel {
        // Diskless sync without its default 5 s delay: the replica syncs at once.
        let base = [
            "--save",
            "",
            "--appendonly",
            "no",
            "--repl-diskless-sync-delay",
            "0",
        ];
        let master = RedisServer::start_with(&base);
        let mport = master.port.to_string();
        let mut replica_args = base.to_vec();
        replica_args.extend(["--replicaof", "127.0.0.1", mport.as_str()]);
        let mut nodes = vec![master];
        for _ in 0..replicas {
            nodes.push(RedisServer::start_with(&replica_args));
        }
        let sentinels = (0..3)
            .map(|_| SentinelProc::start(name, nodes[0].port))
            .collect();
        let s = Sentinel {
            name: name.to_string(),
            nodes,
            sentinels,
        };
        s.wait_ready(Duration::from_secs(30));
        s
    }

    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let replica_up = self.nodes[1..].iter().all(|n| {
                query::<String>(n.port, &["INFO", "replication"])
                    .is_some_and(|i| i.contains("master_link_status:up"))
            });
            let want = (self.nodes.len() - 1).to_string();
            let sentinels_up = self.sentinels.iter().all(|s| {
                let m: Option<std::collections::HashMap<String, String>> =
                    s.query(&["SENTINEL", "MASTER", &self.name]);
                m.is_some_and(|m| {
                    m.get("num-slaves") == Some(&want)
                        && m.get("num-other-sentinels").map(String::as_str) == Some("2")
                })
            });
            if replica_up && sentinels_up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sentinel setup not ready after {timeout:?} (replica in sync: {replica_up}); sentinel log:\n{}",
                self.sentinels[0].log_text()
            );
            std::thread::sleep(Duration::from_millis(50)); // poll
        }
    }

    /// The sentinels' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels.iter().map(SentinelProc::url).collect()
    }

    /// The master port each live sentinel names.
    pub fn named_masters(&self) -> Vec<Option<u16>> {
        self.sentinels
            .iter()
            .filter(|s| s.running())
            .map(|s| {
                let a: Option<(String, String)> =
                    s.query(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.name]);
                a.and_then(|(_, p)| p.parse().ok())
            })
            .collect()
    }

    /// The port of the node every live sentinel names, once they agree on one other than
    /// `old` and it says it is a master.
    pub fn promoted(&self, old: u16) -> Option<u16> {
        self.master().filter(|p| *p != old)
    }

    /// The port of the node every live sentinel names, once they agree and it says it is
    /// a master.
    pub fn master(&self) -> Option<u16> {
        let named = self.named_masters();
        let port = (*named.first()?)?;
        let agreed = named.iter().all(|p| *p == Some(port));
        let master = query::<redis::Value>(port, &["ROLE"]).is_some_and(|v| {
            matches!(v, redis::Value::Array(ref a) if a.first().is_some_and(|r| {
                redis::from_redis_value_ref::<String>(r).is_ok_and(|r| r == "master")
            }))
        });
        (agreed && master).then_some(port)
    }

    /// The data node on `port`.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("a node of this setup")
    }

    /// `[redis]` lines that reach this setup through its sentinels.
    pub fn redis_toml(&self) -> String {
        let urls: Vec<String> = self.urls().iter().map(|u| format!("{u:?}")).collect();
        format!(
            "sentinels = [{}]\nsentinel_master = {:?}",
            urls.join(", "),
            self.name
        )
    }
}
