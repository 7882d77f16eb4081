//! Test harness: private `redis-server` processes on free ports (never the shared 6379),
//! real `taskstream` worker processes, and polling helpers. Everything is killed on drop.
#![allow(dead_code)]

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod cluster;
pub mod sentinel;
pub mod serve;
pub mod tls;

/// Serializes the heavy tests of one test binary (many processes on a 2-core machine).
/// An async mutex: every `#[tokio::test]` runs its own runtime, and the guard is held
/// across awaits for the whole test.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static M: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    M.lock().await
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `sig` (e.g. "STOP", "CONT", "TERM", "KILL") to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(st.success(), "kill -{sig} {pid} failed");
}

/// Polls `f` every 20 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // poll
    }
}

/// The server binary the tests start: `redis-server`, or the one named by
/// `TASKSTREAM_TEST_SERVER` (e.g. `valkey-server`; `.ci/run` runs the pipeline, fault and
/// saga tests against Valkey this way).
pub fn server_bin() -> String {
    std::env::var("TASKSTREAM_TEST_SERVER")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "redis-server".into())
}

/// A private redis-server.
pub struct RedisServer {
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    args: Vec<String>,
}

impl RedisServer {
    /// Starts one without persistence.
    pub fn start() -> Self {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// Starts one with AOF on every write (for restart tests).
    pub fn start_durable() -> Self {
        Self::start_with(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
    }

    /// Starts one with extra arguments.
    pub fn start_with(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = RedisServer {
            port: 0,
            dir,
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        for _ in 0..5 {
            s.port = free_port();
            if s.spawn() {
                return s;
            }
        }
        panic!(
            "could not start {} (is it installed? apt-get install {})",
            server_bin(),
            server_bin()
        );
    }

    /// Starts one on `port`; None when it does not come up there (port taken).
    pub fn try_start_on(port: u16, args: &[&str]) -> Option<Self> {
        let mut s = RedisServer {
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        s.spawn().then_some(s)
    }

    /// True while its process runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts one on a port chosen now but not yet started (for "Redis down at start").
    pub fn reserve() -> Self {
        let mut s = Self::start();
        s.kill();
        s
    }

    fn spawn(&mut self) -> bool {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).unwrap();
        let child = Command::new(server_bin())
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--maxmemory-policy")
            .arg("noeviction")
            .args(&self.args)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} must be installed (apt-get install {}): {e}",
                    server_bin(),
                    server_bin()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            if self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20)); // poll
        }
        false
    }

    fn ping(&self) -> bool {
        let Ok(c) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut conn) = c.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        // A loading server answers LOADING; wait for a real PONG.
        redis::cmd("PING").query::<String>(&mut conn).is_ok()
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A synchronous connection (for setup and assertions).
    pub fn sync_conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// An async command connection (a connection manager).
    pub async fn conn(&self) -> taskstream::rdb::Conn {
        let c = redis::Client::open(self.url()).unwrap();
        redis::aio::ConnectionManager::new(c).await.unwrap().into()
    }

    /// Kills the server with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100)); // poll
        }
    }

    /// Starts the reserved server (see [`RedisServer::reserve`]).
    pub fn start_reserved(&mut self) {
        self.restart();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Path of the `taskstream` binary built for the tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_taskstream"))
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    p
}

/// A worker configuration for tests: built-in handlers on, HTTP off, fast timings.
pub fn worker_toml(url: &str, queue: &str, extra_worker: &str, extra_queue: &str) -> String {
    format!(
        r#"
[redis]
url = "{url}"
response_timeout_ms = 1000
[worker]
builtin_handlers = true
block_ms = 200
collect_interval_ms = 500
{extra_worker}
[http]
listen = ""
[log]
level = "info"
[[queues]]
name = "{queue}"
concurrency = 32
express_concurrency = 4
backoff_base_ms = 20
backoff_cap_ms = 200
{extra_queue}
"#
    )
}

/// A `taskstream worker` child process.
pub struct WorkerProc {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    /// How many times it was started.
    pub starts: usize,
    /// Consumer name prefix: start n runs as `<prefix>-<n>` (fresh name per process).
    pub name_prefix: Option<String>,
}

impl WorkerProc {
    /// Starts `taskstream worker --config <toml>`.
    pub fn spawn(toml: &str) -> Self {
        Self::spawn_env(toml, &[])
    }

    /// Same, with extra environment variables.
    pub fn spawn_env(toml: &str, env: &[(&str, &str)]) -> Self {
        Self::build(toml, env, None)
    }

    /// Starts a worker whose consumer names are `<prefix>-<start number>`.
    pub fn spawn_named(toml: &str, prefix: &str) -> Self {
        Self::build(toml, &[], Some(prefix))
    }

    fn build(toml: &str, env: &[(&str, &str)], prefix: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = write_file(dir.path(), "worker.toml", toml);
        let log = dir.path().join("worker.log");
        let mut w = WorkerProc {
            child: None,
            config,
            log,
            dir,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            starts: 0,
            name_prefix: prefix.map(str::to_string),
        };
        w.start();
        w
    }

    /// The consumer name of the current (or last) start.
    pub fn consumer(&self) -> String {
        format!(
            "{}-{}",
            self.name_prefix.as_deref().expect("spawn_named"),
            self.starts
        )
    }

    /// (Re)starts the process; its log is appended to.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("worker").arg("--config").arg(&self.config);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(p) = &self.name_prefix {
            cmd.env(
                "TASKSTREAM_CONSUMER_NAME",
                format!("{p}-{}", self.starts + 1),
            );
        }
        let child = cmd
            .env_remove("TASKSTREAM_REDIS_URL")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn taskstream worker");
        self.child = Some(child);
        self.starts += 1;
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for exit; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        signal(c.id(), "TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "worker did not exit within {timeout:?} after SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20)); // poll
        }
    }

    /// Resident memory in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS")
    }

    /// Peak resident memory since start in KiB (`VmHWM` from /proc).
    pub fn hwm_kib(&self) -> u64 {
        self.status_kib("VmHWM")
    }

    /// A `kB` line of /proc/<pid>/status (`VmRSS`, `VmHWM`, …); 0 when unreadable.
    pub fn status_kib(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls (30 s at most, failing with `what`) until the log contains `needle`; returns
    /// the log.
    pub async fn wait_for_log(&self, what: &str, needle: &str) -> String {
        poll(what, Duration::from_secs(30), || {
            let log = self.log_text();
            async move { log.contains(needle).then_some(log) }
        })
        .await
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// How long a CLI run may take before the test fails (a hang must not stall CI).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the binary to completion with `args`; returns (exit code, stdout, stderr).
/// Fails the test, killing the child, if it has not exited within [`CLI_TIMEOUT`].
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("TASKSTREAM_REDIS_URL")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run taskstream");
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let status = wait_within(&mut child, CLI_TIMEOUT);
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    match status {
        Some(st) => (st.code().unwrap_or(-1), out, err),
        None => panic!(
            "`taskstream {}` did not exit within {CLI_TIMEOUT:?}; killed it.\nstdout:\n{out}\nstderr:\n{err}",
            args.join(" ")
        ),
    }
}

/// Waits for `child` up to `timeout`; on timeout kills it and returns None.
pub fn wait_within(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20)); // poll
    }
}

/// How long an in-process worker may take to stop after its token fired.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Cancels `stop` and awaits `join` within [`STOP_TIMEOUT`]; a hang fails the test with
/// `what` instead of stalling CI (the task is aborted).
pub async fn stop_within<T>(
    what: &str,
    stop: &tokio_util::sync::CancellationToken,
    join: tokio::task::JoinHandle<T>,
) -> T {
    stop.cancel();
    let abort = join.abort_handle();
    match tokio::time::timeout(STOP_TIMEOUT, join).await {
        Ok(r) => r.unwrap_or_else(|e| panic!("{what} panicked: {e}")),
        Err(_) => {
            abort.abort();
            panic!("{what} did not stop within {STOP_TIMEOUT:?} after its shutdown token fired")
        }
    }
}

/// A plain HTTP/1.1 GET over a fresh TCP connection: (status, body), or None when the
/// server cannot be reached or answers garbage.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1.to_string())?;
    Some((status, body))
}

/// The value of the sample `name{labels}` (labels in any order, all must match).
pub fn prom_value(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `HGETALL key` as (task id, count) pairs: the executions recorded by `builtin.record`.
pub fn executions(
    conn: &mut redis::Connection,
    key: &str,
) -> std::collections::HashMap<String, u64> {
    redis::cmd("HGETALL").arg(key).query(conn).unwrap()
}

/// A plain HTTP/1.1 server on a raw socket (no framework in between, so the test decides
/// the framing byte for byte). Every request is answered with 200: `POST /small` with a
/// short JSON string; `/chunked` with `big` bytes of `a`, chunked, no `Content-Length`;
/// `/length` with the same announced by `Content-Length`. Big bodies are written in
/// 64 KiB pieces until the client hangs up; `written` counts the body bytes that went out.
pub struct BigBodyServer {
    /// `127.0.0.1:PORT`.
    pub addr: std::net::SocketAddr,
    /// Body bytes written so far, over all requests.
    pub written: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Big responses that ended: sent whole, or cut off by the client hanging up.
    pub ended: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl BigBodyServer {
    /// Starts it on a free port; it runs until the test's runtime ends.
    pub async fn start(big: usize) -> BigBodyServer {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let written = std::sync::Arc::new(AtomicUsize::new(0));
        let ended = std::sync::Arc::new(AtomicUsize::new(0));
        let (count, ends) = (written.clone(), ended.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (count, ends) = (count.clone(), ends.clone());
                tokio::spawn(async move {
                    // The request head, then as much of its body as it announces.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let want: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() - head_end < want {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    if path == "/small" {
                        let body = b"\"small\"";
                        let _ = s
                            .write_all(
                                format!(
                                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                                    body.len()
                                )
                                .as_bytes(),
                            )
                            .await;
                        let _ = s.write_all(body).await;
                        return;
                    }
                    struct End(std::sync::Arc<AtomicUsize>);
                    impl Drop for End {
                        fn drop(&mut self) {
                            self.0.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    let _end = End(ends);
                    let chunked = path == "/chunked";
                    let framing = if chunked {
                        "transfer-encoding: chunked".to_string()
                    } else {
                        format!("content-length: {big}")
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{framing}\r\n\r\n"
                    );
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let piece = vec![b'a'; 64 << 10];
                    let mut sent = 0;
                    while sent < big {
                        let n = piece.len().min(big - sent);
                        let mut out = Vec::with_capacity(n + 16);
                        if chunked {
                            out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                        }
                        out.extend_from_slice(&piece[..n]);
                        if chunked {
                            out.extend_from_slice(b"\r\n");
                        }
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                        sent += n;
                        count.fetch_add(n, Ordering::SeqCst);
                    }
                    if chunked {
                        let _ = s.write_all(b"0\r\n\r\n").await;
                    }
                });
            }
        });
        BigBodyServer {
            addr,
            written,
            ended,
        }
    }

    /// Body bytes written so far.
    pub fn written(&self) -> usize {
        self.written.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Big responses that ended.
    pub fn ended(&self) -> usize {
        self.ended.load(std::sync::atomic::Ordering::SeqCst)
    }
}
