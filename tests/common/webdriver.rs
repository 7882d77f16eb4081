//! A tiny W3C WebDriver client (just what the dashboard test needs) for Debian's
//! `chromium` driven by `chromedriver`, over HTTP with `reqwest`.
//!
//! [`tools`] finds both programs; when one is missing a test fails under `CI=true` and
//! prints a SKIP line otherwise. [`Browser::start`] runs chromedriver on a free port (killed
//! on drop, after the session is deleted so no chromium is left behind) and opens one
//! headless session.
//!
//! Included only by the test binaries that drive a browser (`#[path = "common/webdriver.rs"]
//! mod webdriver;` beside `mod common;`), so the others do not build it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where `chromium` and `chromedriver` are.
pub struct Tools {
    /// The browser.
    pub chromium: PathBuf,
    /// Its driver.
    pub chromedriver: PathBuf,
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Both programs, or `None` after printing a SKIP line; panics when one is missing and
/// `CI=true` (CI installs them: `.ci/run`).
pub fn tools(test: &str) -> Option<Tools> {
    let chromium = which("chromium");
    let chromedriver = which("chromedriver");
    match (chromium, chromedriver) {
        (Some(chromium), Some(chromedriver)) => Some(Tools {
            chromium,
            chromedriver,
        }),
        (a, b) => {
            let missing: Vec<&str> = [("chromium", a.is_none()), ("chromedriver", b.is_none())]
                .iter()
                .filter(|(_, m)| *m)
                .map(|(n, _)| *n)
                .collect();
            let msg = format!(
                "{} not found in PATH (apt-get install chromium chromium-driver)",
                missing.join(" and ")
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: {msg}; CI must run this test");
            }
            eprintln!("SKIP {test}: {msg}");
            None
        }
    }
}

/// Errors of the driver, as text (the test panics with them).
pub type Result<T> = std::result::Result<T, String>;

/// An element of the page.
#[derive(Debug, Clone)]
pub struct Element(pub String);

/// chromedriver and one headless chromium session.
pub struct Browser {
    driver: Option<Child>,
    port: u16,
    session: String,
    http: reqwest::Client,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless session at `width`x`height`.
    pub async fn start(tools: &Tools, width: u32, height: u32) -> Browser {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("chromedriver.log");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        for _ in 0..5 {
            let port = crate::common::free_port();
            let child = Command::new(&tools.chromedriver)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn chromedriver");
            let mut b = Browser {
                driver: Some(child),
                port,
                session: String::new(),
                http: http.clone(),
                log: log.clone(),
                _dir: tempfile::tempdir().unwrap(),
            };
            if !b.wait_ready(Duration::from_secs(20)).await {
                b.kill_driver();
                continue;
            }
            let caps = json!({
                "capabilities": {
                    "alwaysMatch": {
                        "browserName": "chrome",
                        "goog:chromeOptions": {
                            "binary": tools.chromium.to_string_lossy(),
                            "args": [
                                "--headless=new",
                                "--no-sandbox",
                                "--disable-gpu",
                                "--disable-dev-shm-usage",
                                "--no-first-run",
                                "--hide-scrollbars",
                                format!("--window-size={width},{height}"),
                            ]
                        }
                    }
                }
            });
            let v = b
                .raw("POST", "/session", Some(caps))
                .await
                .unwrap_or_else(|e| panic!("new session: {e}; log:\n{}", b.driver_log()));
            b.session = v["sessionId"]
                .as_str()
                .unwrap_or_else(|| panic!("no sessionId in {v}"))
                .to_string();
            b._dir = dir;
            return b;
        }
        panic!(
            "chromedriver did not start; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    async fn wait_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.driver.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            if let Ok(v) = self.raw("GET", "/status", None).await {
                if v["ready"].as_bool() == Some(true) {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await; // poll
        }
        false
    }

    /// The driver's log so far.
    pub fn driver_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One command: the response's `value`, or the driver's error.
    async fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self
                .http
                .post(&url)
                .json(&body.unwrap_or_else(|| json!({}))),
        };
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .await
            .map_err(|e| format!("{method} {path}: not JSON: {e}"))?;
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(format!(
                "{method} {path}: {status}: {} {}",
                value["error"].as_str().unwrap_or(""),
                value["message"].as_str().unwrap_or("")
            ));
        }
        Ok(value)
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        self.raw(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    /// Navigates to `url` (waits for the load event).
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.cmd("POST", "/url", Some(json!({ "url": url })))
            .await?;
        Ok(())
    }

    /// The first element matching the CSS `selector`.
    pub async fn find(&self, selector: &str) -> Result<Element> {
        let v = self
            .cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": selector})),
            )
            .await?;
        element_of(&v).ok_or_else(|| format!("no element reference in {v}"))
    }

    /// Every element matching `selector`.
    pub async fn find_all(&self, selector: &str) -> Result<Vec<Element>> {
        let v = self
            .cmd(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": selector})),
            )
            .await?;
        Ok(v.as_array()
            .map(|a| a.iter().filter_map(element_of).collect())
            .unwrap_or_default())
    }

    /// Clicks `e` (as a user would: scrolled into view, at its centre).
    pub async fn click(&self, e: &Element) -> Result<()> {
        self.cmd("POST", &format!("/element/{}/click", e.0), None)
            .await?;
        Ok(())
    }

    /// Clears a text field.
    pub async fn clear(&self, e: &Element) -> Result<()> {
        self.cmd("POST", &format!("/element/{}/clear", e.0), None)
            .await?;
        Ok(())
    }

    /// Types `text` into `e`.
    pub async fn send_keys(&self, e: &Element, text: &str) -> Result<()> {
        self.cmd(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        )
        .await?;
        Ok(())
    }

    /// The rendered text of `e`.
    pub async fn text(&self, e: &Element) -> Result<String> {
        let v = self
            .cmd("GET", &format!("/element/{}/text", e.0), None)
            .await?;
        Ok(v.as_str().unwrap_or("").to_string())
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its value.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Clicks the first element matching `selector` once it exists (polls until `within`).
    pub async fn click_when_present(&self, selector: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let last = match self.find(selector).await {
                Ok(e) => match self.click(&e).await {
                    Ok(()) => return Ok(()),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(format!("clicking {selector}: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await; // poll
        }
    }

    /// Polls `script` until it returns something truthy (not null/false/0/""), which is
    /// returned; fails with `what` and the last value after `within`.
    pub async fn wait_for(&self, what: &str, within: Duration, script: &str) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.execute(script, vec![]).await;
            if let Ok(v) = &v {
                let truthy = match v {
                    Value::Null => false,
                    Value::Bool(b) => *b,
                    Value::Number(n) => n.as_f64() != Some(0.0),
                    Value::String(s) => !s.is_empty(),
                    _ => true,
                };
                if truthy {
                    return v.clone();
                }
            }
            if Instant::now() > deadline {
                panic!("timed out after {within:?} waiting for: {what} (last: {v:?})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await; // poll
        }
    }

    /// Sets the window's size; then makes the viewport exactly `width`x`height` (a phone
    /// is emulated through the DevTools protocol when `mobile`).
    pub async fn resize(&self, width: u32, height: u32, mobile: bool) -> Result<()> {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await?;
        self.cmd(
            "POST",
            "/goog/cdp/execute",
            Some(json!({
                "cmd": "Emulation.setDeviceMetricsOverride",
                "params": {
                    "width": width, "height": height, "deviceScaleFactor": if mobile { 2 } else { 1 },
                    "mobile": mobile
                }
            })),
        )
        .await?;
        Ok(())
    }

    /// Saves a PNG of the viewport to `path` (creating its directory).
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let v = self.cmd("GET", "/screenshot", None).await?;
        let png = base64_decode(v.as_str().ok_or("screenshot: not a string")?)?;
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn kill_driver(&mut self) {
        if let Some(mut c) = self.driver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Delete the session first (chromedriver then ends its chromium), over a plain
        // socket: Drop cannot await.
        if !self.session.is_empty() {
            use std::io::{Read, Write};
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = write!(
                    s,
                    "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                    self.session
                );
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
            }
        }
        self.kill_driver();
    }
}

fn element_of(v: &Value) -> Option<Element> {
    v.get(ELEMENT)?.as_str().map(|s| Element(s.to_string()))
}

/// Standard base64 (with or without padding).
fn base64_decode(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => return Err(format!("bad base64 byte {c}")),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
    assert_eq!(base64_decode("aGVsbG8gd29ybGQ").unwrap(), b"hello world");
    assert_eq!(base64_decode("").unwrap(), b"");
}
