//! A real `taskstream serve` process for the control-plane tests, with an admin and a
//! read token given through environment variables, and a reqwest client for it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The admin token's secret in every [`ServeProc`].
pub const ADMIN: &str = "admin-secret-0123456789abcdef";
/// The read token's secret.
pub const READ: &str = "read-secret-0123456789abcdef";

/// A `taskstream serve` child process (killed on drop).
pub struct ServeProc {
    child: Option<Child>,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The configuration file.
    pub config: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The configuration of a served deployment on `redis_url`, with queues `queues` and
/// `extra` TOML appended (before the token tables).
pub fn serve_toml(redis_url: &str, queues: &[&str], extra: &str) -> String {
    let mut t = format!(
        "[redis]\nurl = \"{redis_url}\"\nresponse_timeout_ms = 2000\n[worker]\nbuiltin_handlers = true\n[http]\nlisten = \"\"\n{extra}\n"
    );
    for q in queues {
        t.push_str(&format!("[[queues]]\nname = \"{q}\"\n"));
    }
    t.push_str(
        "[[api.tokens]]\nname = \"ops\"\ntoken_env = \"TS_TEST_ADMIN\"\nrole = \"admin\"\n[[api.tokens]]\nname = \"viewer\"\ntoken_env = \"TS_TEST_READ\"\nrole = \"read\"\n",
    );
    t
}

impl ServeProc {
    /// Starts `taskstream serve -c <toml> --listen 127.0.0.1:<free port>` and waits until
    /// it answers with Redis connected.
    pub async fn start(toml: &str) -> ServeProc {
        let dir = tempfile::tempdir().unwrap();
        let config = super::write_file(dir.path(), "serve.toml", toml);
        let log = dir.path().join("serve.log");
        let port = super::free_port();
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(super::bin())
            .args(["serve", "-c"])
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("TS_TEST_ADMIN", ADMIN)
            .env("TS_TEST_READ", READ)
            .env_remove("TASKSTREAM_REDIS_URL")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn taskstream serve");
        let s = ServeProc {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            config,
            log,
            _dir: dir,
        };
        let c = client();
        let url = format!("{}/api/v1/queues", s.base);
        super::poll(
            "taskstream serve answering with Redis connected",
            Duration::from_secs(20),
            || {
                let c = c.clone();
                let url = url.clone();
                async move {
                    let r = c.get(&url).bearer_auth(ADMIN).send().await.ok()?;
                    (r.status() == 200).then_some(())
                }
            },
        )
        .await;
        s
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything the process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServeProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A client with short timeouts and keep-alive.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}
