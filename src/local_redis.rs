//! A throwaway `redis-server` on a free loopback port, for `taskstream demo` and the load
//! runner: started with `noeviction` in its own temporary directory, waited for until it
//! answers PING, and killed (directory removed) when dropped. Tests have their own harness
//! (`tests/common`), which can also kill, restart and pause the server.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running private `redis-server`.
pub struct LocalRedis {
    /// `redis://127.0.0.1:PORT`.
    pub url: String,
    /// Its port.
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

/// Why a private server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalRedisError {
    /// The binary is missing (or could not be run).
    #[error("cannot run redis-server (install it: Debian/Ubuntu `apt-get install redis-server`, macOS `brew install redis`): {0}")]
    NotInstalled(std::io::Error),
    /// No free port or temporary directory.
    #[error("cannot prepare a private redis-server: {0}")]
    Io(#[from] std::io::Error),
    /// It did not answer in time.
    #[error("the private redis-server on port {0} did not answer within 10 s")]
    NoAnswer(u16),
}

impl LocalRedis {
    /// Starts one; `persistence` adds `--appendonly yes`, otherwise nothing is written to disk.
    pub fn start(name: &str, persistence: bool) -> Result<LocalRedis, LocalRedisError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir =
            std::env::temp_dir().join(format!("taskstream-{name}-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", if persistence { "yes" } else { "no" }])
            .args(["--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(LocalRedisError::NotInstalled)?;
        let server = LocalRedis {
            url: format!("redis://127.0.0.1:{port}"),
            port,
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !answers(&server.url) {
            if Instant::now() > deadline {
                return Err(LocalRedisError::NoAnswer(port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

/// True when a Redis at `url` answers PING within about a second.
pub fn answers(url: &str) -> bool {
    crate::rdb::answers_ping(url)
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
