//! The dashboard (issue 12.3) in a real headless Chromium, driven through chromedriver's
//! W3C WebDriver protocol, against a real `taskstream serve` process and a private
//! redis-server: the page shows a queue's live counts (equal to Redis'), a search finds one
//! dead letter among 3,000, requeue from the page moves it back to the queue's stream,
//! pause and resume from the page set and clear `ts:{Q}:paused`, a schedule paused from
//! the page is paused in Redis and a trigger adds its task (issue 13.1), and a read token's
//! page has no mutating button in its DOM. Screenshots go to `target/test-output/dashboard/`.
//!
//! Needs `chromium` and `chromedriver` (Debian: `apt-get install chromium chromium-driver`):
//! without them the test fails when `CI=true` and prints a SKIP line otherwise.

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{write_file, RedisServer};
use serde_json::{json, Value};
use webdriver::Browser;

const Q: &str = "dash";
const ADMIN_SECRET: &str = "admin-0123456789abcdef-secret";
const READ_SECRET: &str = "read-fedcba9876543210-secret";
const LETTERS: usize = 3000;
const NEEDLE: &str = "needle-7f3a9: card issuer refused the charge";
const NEEDLE_TASK: &str = "task-needle-0001";
const WAIT: Duration = Duration::from_secs(30);

/// A saga whose second step fails (`builtin.record` refuses a saga step's payload, which
/// has no `key`), so its first step is compensated: a timeline with a compensation.
const SAGAS: &str = r#"
[[sagas]]
name = "checkout"
timeout_ms = 60000
[[sagas.steps]]
name = "reserve"
action = "builtin.echo"
compensation = "builtin.noop"
queue = "dash"
[[sagas.steps]]
name = "charge"
action = "builtin.record"
queue = "dash"
max_attempts = 1
"#;

/// A `taskstream orchestrator` process, killed on drop.
struct Orchestrator {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Orchestrator {
    fn start(redis_url: &str) -> Orchestrator {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_file(
            dir.path(),
            "orch.toml",
            &format!(
                "[redis]\nurl = \"{redis_url}\"\n[http]\nlisten = \"\"\n[orchestrator]\nblock_ms = 200\nclaim_idle_ms = 500\ndeadline_interval_ms = 50\n{SAGAS}"
            ),
        );
        let child = Command::new(common::bin())
            .arg("orchestrator")
            .arg("--config")
            .arg(&cfg)
            .env_remove("TASKSTREAM_REDIS_URL")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("orch.log")).unwrap())
            .spawn()
            .expect("spawn taskstream orchestrator");
        Orchestrator { child, _dir: dir }
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `taskstream serve` as a child process, killed on drop.
struct Serve {
    child: Option<Child>,
    addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Serve {
    fn start(redis_url: &str) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let addr = format!("127.0.0.1:{port}");
        let cfg = write_file(
            dir.path(),
            "serve.toml",
            &format!(
                r#"
[redis]
url = "{redis_url}"
[log]
level = "info"
[api]
listen = "{addr}"
[[api.tokens]]
name = "ops"
token_env = "TS_DASH_ADMIN_TOKEN"
role = "admin"
[[api.tokens]]
name = "viewer"
token_env = "TS_DASH_READ_TOKEN"
role = "read"
{SAGAS}"#
            ),
        );
        let log = dir.path().join("serve.log");
        let child = Command::new(common::bin())
            .arg("--config")
            .arg(&cfg)
            .arg("serve")
            .env_remove("TASKSTREAM_REDIS_URL")
            .env_remove("TASKSTREAM_API_LISTEN")
            .env("TS_DASH_ADMIN_TOKEN", ADMIN_SECRET)
            .env("TS_DASH_READ_TOKEN", READ_SECRET)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn taskstream serve");
        Serve {
            child: Some(child),
            addr,
            log,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let d = target.join("test-output").join("dashboard");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(b: &Browser, name: &str) {
    let p = out_dir().join(name);
    b.screenshot(&p).await.unwrap();
    let png = std::fs::read(&p).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
        "{name} is not a PNG"
    );
    eprintln!("screenshot: {}", p.display());
}

/// Seeds `LETTERS` dead letters (one with the unique error) and registers the queue.
fn seed(redis: &RedisServer) {
    let mut c = redis.sync_conn();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let dlq = format!("ts:{{{Q}}}:dlq");
    let mut p = redis::pipe();
    for i in 0..LETTERS {
        let (id, err, ty) = if i == LETTERS / 2 {
            (
                NEEDLE_TASK.to_string(),
                NEEDLE.to_string(),
                "payments.charge",
            )
        } else {
            (
                format!("task-{i:05}"),
                format!("timeout after 30s talking to upstream #{}", i % 97),
                if i % 3 == 0 {
                    "emails.send"
                } else {
                    "reports.build"
                },
            )
        };
        p.cmd("XADD")
            .arg(&dlq)
            .arg("*")
            .arg("type")
            .arg(ty)
            .arg("payload")
            .arg(format!(r#"{{"n":{i},"note":"<b>not markup</b>"}}"#))
            .arg("id")
            .arg(id)
            .arg("attempt")
            .arg("3")
            .arg("max_attempts")
            .arg("3")
            .arg("enqueued_at")
            .arg(&now)
            .arg("dlq_reason")
            .arg("attempts exhausted")
            .arg("dlq_error")
            .arg(err)
            .arg("dlq_attempts")
            .arg("3")
            .arg("dlq_at")
            .arg(&now)
            .arg("dlq_lane")
            .arg("bulk")
            .arg("dlq_entry_id")
            .arg(format!("1-{i}"))
            .ignore();
    }
    p.cmd("SADD").arg("ts:queues").arg(Q).ignore();
    p.query::<()>(&mut c).unwrap();
}

async fn api(
    http: &reqwest::Client,
    serve: &Serve,
    method: &str,
    path: &str,
    body: Value,
) -> Value {
    let url = serve.url(&format!("/api/v1{path}"));
    let req = if method == "GET" {
        http.get(&url)
    } else {
        http.post(&url).json(&body)
    };
    let r = req
        .header("Authorization", format!("Bearer {ADMIN_SECRET}"))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert!(status.is_success(), "{method} {path}: {status}: {v}");
    v
}

async fn enqueue(http: &reqwest::Client, serve: &Serve, n: usize, express: bool) {
    let tasks: Vec<Value> = (0..n)
        .map(|i| json!({"type": "builtin.noop", "payload": {"i": i}, "express": express}))
        .collect();
    api(
        http,
        serve,
        "POST",
        &format!("/queues/{Q}/tasks/batch"),
        json!({ "tasks": tasks }),
    )
    .await;
}

/// 2999 → "2,999" (as the page writes counts).
fn thousands(n: u64) -> String {
    let d = n.to_string();
    let mut out = String::new();
    for (i, c) in d.chars().enumerate() {
        if i > 0 && (d.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn redis_u64(c: &mut redis::Connection, cmd: &str, key: &str) -> u64 {
    redis::cmd(cmd).arg(key).query(c).unwrap()
}

/// Waits until the queue card shows exactly Redis' lengths.
async fn counts_match_redis(b: &Browser, redis: &RedisServer, what: &str) {
    let mut c = redis.sync_conn();
    let want = [
        (
            "bulk_length",
            redis_u64(&mut c, "XLEN", &format!("ts:{{{Q}}}:stream")),
        ),
        (
            "express_length",
            redis_u64(&mut c, "XLEN", &format!("ts:{{{Q}}}:express")),
        ),
        (
            "scheduled",
            redis_u64(&mut c, "ZCARD", &format!("ts:{{{Q}}}:scheduled")),
        ),
        (
            "dead_letters",
            redis_u64(&mut c, "XLEN", &format!("ts:{{{Q}}}:dlq")),
        ),
    ];
    let checks: Vec<String> = want
        .iter()
        .map(|(f, n)| {
            format!(
                "(document.querySelector('[data-queue=\"{Q}\"] [data-field=\"{f}\"]') || {{}}).getAttribute && document.querySelector('[data-queue=\"{Q}\"] [data-field=\"{f}\"]').getAttribute('data-value') === '{n}'"
            )
        })
        .collect();
    b.wait_for(
        &format!("{what}: the card shows Redis' counts {want:?}"),
        WAIT,
        &format!("return {};", checks.join(" && ")),
    )
    .await;
}

/// The selector of every mutating control.
const MUTATING: &str = "[data-mutating], [data-action=pause], [data-action=resume], [data-action=requeue], [data-action=delete], [data-action^=bulk-], [data-action=abort], [data-action$=-schedule]";

async fn count(b: &Browser, selector: &str) -> usize {
    b.find_all(selector).await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let Some(tools) = webdriver::tools("dashboard_in_headless_chromium") else {
        return;
    };
    let redis = RedisServer::start();
    seed(&redis);
    let serve = Serve::start(&redis.url());
    let http = reqwest::Client::new();
    // Up and connected: /api/v1/queues answers 200 (503 until Redis answered).
    // (`/ready` speaks of worker consumer groups, which a serve process never creates.)
    let queues_url = serve.url("/api/v1/queues");
    common::poll("taskstream serve answers /api/v1/queues", WAIT, || {
        let req = http
            .get(&queues_url)
            .header("Authorization", format!("Bearer {READ_SECRET}"))
            .send();
        async move { req.await.ok().filter(|r| r.status() == 200).map(|_| ()) }
    })
    .await;
    // The page and its assets are served without a token, with the policy.
    let r = http.get(serve.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("default-src 'self'"));
    assert_eq!(h["cache-control"], "no-cache");
    let r = http.get(serve.url("/assets/app.js")).send().await.unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let r = http.get(serve.url("/assets/app.css")).send().await.unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/css"));

    enqueue(&http, &serve, 12, false).await;
    enqueue(&http, &serve, 3, true).await;
    api(
        &http,
        &serve,
        "POST",
        &format!("/queues/{Q}/tasks"),
        json!({"type": "builtin.noop", "delay_ms": 3_600_000}),
    )
    .await;

    let b = Browser::start(&tools, 1280, 900).await;
    b.resize(1280, 900, false).await.unwrap();
    b.goto(&serve.url("/")).await.unwrap();

    // Sign in with the admin token.
    b.wait_for(
        "the login form",
        WAIT,
        "return !document.getElementById('login').hidden;",
    )
    .await;
    let token = b.find("#token").await.unwrap();
    b.send_keys(&token, ADMIN_SECRET).await.unwrap();
    b.click(&b.find("#login-submit").await.unwrap())
        .await
        .unwrap();
    b.wait_for(
        "signed in as ops (admin)",
        WAIT,
        "return document.getElementById('who-name').textContent === 'ops' && document.getElementById('who-role').textContent === 'admin';",
    )
    .await;
    counts_match_redis(&b, &redis, "after sign-in").await;

    // Live: more tasks arrive, the page follows without a reload.
    let marker: Value = b
        .execute("window.__noReload = 42; return window.__noReload;", vec![])
        .await
        .unwrap();
    assert_eq!(marker, 42);
    enqueue(&http, &serve, 7, false).await;
    counts_match_redis(&b, &redis, "after 7 more tasks").await;
    assert_eq!(
        b.execute("return window.__noReload;", vec![])
            .await
            .unwrap(),
        42,
        "the page was reloaded"
    );

    // The workers list: a real worker process, with a throughput to draw.
    let worker = common::WorkerProc::spawn(&common::worker_toml(&redis.url(), Q, "", ""));
    let details = b
        .find(&format!("[data-queue=\"{Q}\"] .workers-details summary"))
        .await
        .unwrap();
    b.click(&details).await.unwrap();
    b.wait_for(
        "the worker in the workers list",
        WAIT,
        &format!("return document.querySelectorAll('[data-queue=\"{Q}\"] .workers-table [data-consumer]').length === 1;"),
    )
    .await;
    enqueue(&http, &serve, 300, false).await;
    enqueue(&http, &serve, 60, true).await;
    b.wait_for(
        "tasks done, and a throughput drawn",
        WAIT,
        &format!(
            "const q = document.querySelector('[data-queue=\"{Q}\"]'); \
             return Number(q.querySelector('[data-field=\"done\"]').getAttribute('data-value')) >= 382 \
               && Number(q.querySelector('[data-field=\"bulk_length\"]').getAttribute('data-value')) === 0 \
               && q.querySelectorAll('[data-chart=\"throughput\"] polyline').length === 1;"
        ),
    )
    .await;
    shot(&b, "01-overview-laptop.png").await;

    // A saga that rolls back: its timeline shows the action bars and the compensation.
    let _orch = Orchestrator::start(&redis.url());
    let started = api(
        &http,
        &serve,
        "POST",
        "/sagas",
        json!({"saga": "checkout", "input": {"order": 42}}),
    )
    .await;
    let saga_id = started["saga_id"].as_str().unwrap().to_string();
    let saga_path = format!("/sagas/{saga_id}");
    common::poll("the saga rolls back", WAIT, || {
        let f = api(&http, &serve, "GET", &saga_path, json!({}));
        async move { (f.await["status"] == "rolled_back").then_some(()) }
    })
    .await;
    drop(worker);
    b.click(&b.find("#tabs a[data-tab=\"sagas\"]").await.unwrap())
        .await
        .unwrap();
    b.send_keys(&b.find("#saga-id").await.unwrap(), &saga_id)
        .await
        .unwrap();
    b.click(&b.find("#saga-go").await.unwrap()).await.unwrap();
    b.wait_for(
        "the saga's timeline with a compensation",
        WAIT,
        &format!(
            "const d = document.querySelector('#saga-detail [data-saga-id=\"{saga_id}\"]'); \
             return !!d && d.querySelectorAll('.tl-action').length === 2 && d.querySelectorAll('.tl-comp').length === 1 \
               && d.querySelectorAll('[data-action=abort]').length === 0;"
        ),
    )
    .await;
    shot(&b, "02-saga-timeline.png").await;
    // One that cannot progress (no worker now): the admin can abort it from the page.
    let started = api(
        &http,
        &serve,
        "POST",
        "/sagas",
        json!({"saga": "checkout", "input": {"order": 43}}),
    )
    .await;
    let stuck = started["saga_id"].as_str().unwrap().to_string();
    let id_box = b.find("#saga-id").await.unwrap();
    b.clear(&id_box).await.unwrap();
    b.send_keys(&id_box, &stuck).await.unwrap();
    b.click(&b.find("#saga-go").await.unwrap()).await.unwrap();
    b.click_when_present(
        &format!("#saga-detail [data-saga-id=\"{stuck}\"] [data-action=abort]"),
        WAIT,
    )
    .await
    .unwrap();
    b.wait_for(
        "the abort confirmation",
        WAIT,
        "return !document.getElementById('confirm').hidden;",
    )
    .await;
    b.click(&b.find("#confirm-ok").await.unwrap())
        .await
        .unwrap();
    let stuck_path = format!("/sagas/{stuck}");
    common::poll("the aborted saga compensates", WAIT, || {
        let f = api(&http, &serve, "GET", &stuck_path, json!({}));
        async move {
            let st = f.await["status"].as_str().unwrap_or("").to_string();
            (st == "compensating" || st == "rolled_back").then_some(())
        }
    })
    .await;
    // Its first step's task is in the stream (no worker took it): leave it there, the
    // counts below are Redis' own.

    // Dead letters: one among 3,000 by its error text.
    b.click(&b.find("#tabs a[data-tab=\"dead-letters\"]").await.unwrap())
        .await
        .unwrap();
    b.wait_for(
        "the queue in the dead-letter form",
        WAIT,
        &format!("return !document.getElementById('view-dead-letters').hidden && document.getElementById('dl-queue').value === '{Q}';"),
    )
    .await;
    let err = b.find("#dl-error").await.unwrap();
    b.send_keys(&err, "NEEDLE-7f3a9").await.unwrap();
    b.click(&b.find("#dl-search").await.unwrap()).await.unwrap();
    b.wait_for(
        "the search is complete",
        WAIT,
        "return document.getElementById('dl-summary').getAttribute('data-done') === 'true';",
    )
    .await;
    let letters = b.find_all("#dl-results .letter").await.unwrap();
    assert_eq!(
        letters.len(),
        1,
        "exactly one letter matches the unique error"
    );
    let tid = b
        .execute(
            "return document.querySelector('#dl-results .letter').getAttribute('data-task-id');",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(tid, NEEDLE_TASK);
    let text = b.text(&letters[0]).await.unwrap();
    assert!(text.contains(NEEDLE), "{text}");
    shot(&b, "03-dead-letter-search.png").await;

    // Requeue it from the page: a dry-run count, a confirmation, then the move. (The
    // rolled-back saga's failed step is a dead letter too, so count what is there now.)
    let dead_before = redis_u64(&mut redis.sync_conn(), "XLEN", &format!("ts:{{{Q}}}:dlq"));
    b.click(
        &b.find("#dl-results .letter [data-action=requeue]")
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let confirm = b
        .wait_for(
            "the confirmation",
            WAIT,
            "return !document.getElementById('confirm').hidden && document.getElementById('confirm-text').textContent;",
        )
        .await;
    assert!(
        confirm
            .as_str()
            .unwrap()
            .starts_with("Requeue 1 dead letter?"),
        "{confirm}"
    );
    shot(&b, "04-confirm-requeue.png").await;
    b.click(&b.find("#confirm-ok").await.unwrap())
        .await
        .unwrap();
    b.wait_for(
        "the letter leaves the list",
        WAIT,
        "return document.querySelectorAll('#dl-results .letter').length === 0 && document.getElementById('status').textContent.startsWith('requeued 1 of 1');",
    )
    .await;
    let mut c = redis.sync_conn();
    common::poll("the letter is back in the stream", WAIT, || {
        let entries: Vec<redis::Value> = redis::cmd("XRANGE")
            .arg(format!("ts:{{{Q}}}:stream"))
            .arg("-")
            .arg("+")
            .query(&mut c)
            .unwrap();
        let found = format!("{entries:?}").contains(NEEDLE_TASK);
        async move { found.then_some(()) }
    })
    .await;
    assert_eq!(
        redis_u64(&mut c, "XLEN", &format!("ts:{{{Q}}}:dlq")),
        dead_before - 1
    );

    // A bulk action shows the dry-run count and does nothing when cancelled.
    let err = b.find("#dl-error").await.unwrap();
    b.clear(&err).await.unwrap();
    b.send_keys(&b.find("#dl-reason").await.unwrap(), "exhausted")
        .await
        .unwrap();
    b.click(&b.find("#dl-search").await.unwrap()).await.unwrap();
    b.wait_for(
        "a page of letters",
        WAIT,
        "return document.querySelectorAll('#dl-results .letter').length >= 50 && !document.getElementById('dl-more').hidden;",
    )
    .await;
    let exhausted = api(
        &http,
        &serve,
        "POST",
        &format!("/queues/{Q}/dead-letters/requeue"),
        json!({"filter": {"reason": "exhausted"}, "dry_run": true}),
    )
    .await["matched"]
        .as_u64()
        .unwrap();
    assert_eq!(
        exhausted,
        LETTERS as u64 - 1,
        "the seeded letters but the requeued one"
    );
    b.click(&b.find("[data-action=bulk-requeue]").await.unwrap())
        .await
        .unwrap();
    let confirm = b
        .wait_for(
            "the bulk confirmation",
            WAIT,
            "return !document.getElementById('confirm').hidden && document.getElementById('confirm-text').textContent;",
        )
        .await;
    assert!(
        confirm
            .as_str()
            .unwrap()
            .starts_with(&format!("Requeue {} dead letters?", thousands(exhausted))),
        "{confirm}"
    );
    b.click(&b.find("#confirm-cancel").await.unwrap())
        .await
        .unwrap();
    b.wait_for(
        "cancelled",
        WAIT,
        "return document.getElementById('confirm').hidden && document.getElementById('status').textContent === 'requeue cancelled';",
    )
    .await;
    assert_eq!(
        redis_u64(&mut c, "XLEN", &format!("ts:{{{Q}}}:dlq")),
        dead_before - 1
    );

    // Pause and resume from the page.
    b.click(&b.find("#tabs a[data-tab=\"queues\"]").await.unwrap())
        .await
        .unwrap();
    let paused_key = format!("ts:{{{Q}}}:paused");
    b.click_when_present(&format!("[data-queue=\"{Q}\"] [data-action=pause]"), WAIT)
        .await
        .unwrap();
    common::poll("ts:{Q}:paused exists", WAIT, || {
        let n = redis_u64(&mut c, "EXISTS", &paused_key);
        async move { (n == 1).then_some(()) }
    })
    .await;
    b.wait_for(
        "the card says paused",
        WAIT,
        &format!("return document.querySelector('[data-queue=\"{Q}\"] [data-field=state]').textContent === 'paused' && !!document.querySelector('[data-queue=\"{Q}\"] [data-action=resume]');"),
    )
    .await;
    shot(&b, "05-paused.png").await;
    b.click_when_present(&format!("[data-queue=\"{Q}\"] [data-action=resume]"), WAIT)
        .await
        .unwrap();
    common::poll("ts:{Q}:paused is gone", WAIT, || {
        let n = redis_u64(&mut c, "EXISTS", &paused_key);
        async move { (n == 0).then_some(()) }
    })
    .await;
    b.wait_for(
        "the card says running",
        WAIT,
        &format!("return document.querySelector('[data-queue=\"{Q}\"] [data-field=state]').textContent === 'running';"),
    )
    .await;

    // Schedules: the page lists one, pauses it (its claim state in Redis says so) and
    // triggers it (a task with the manual id lands in the stream).
    let (code, out, err) = common::run_cli(
        &[
            "--redis-url",
            &redis.url(),
            "schedule",
            "set",
            "nightly",
            "--every",
            "1h",
            "--queue",
            Q,
            "--type",
            "builtin.noop",
            "--payload",
            "{}",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    b.click(&b.find("#tabs a[data-tab=\"schedules\"]").await.unwrap())
        .await
        .unwrap();
    let sched_state = "document.querySelector('[data-schedule=\"nightly\"] [data-field=state]')";
    b.wait_for(
        "the schedule's card, running",
        WAIT,
        &format!("const e = {sched_state}; return !!e && e.textContent === 'running';"),
    )
    .await;
    b.click_when_present(
        "[data-schedule=\"nightly\"] [data-action=pause-schedule]",
        WAIT,
    )
    .await
    .unwrap();
    let state_key = format!("ts:{{{Q}}}:schedule:nightly");
    common::poll("the schedule paused in Redis", WAIT, || {
        let p: Option<String> = redis::cmd("HGET")
            .arg(&state_key)
            .arg("paused")
            .query(&mut c)
            .unwrap();
        async move { (p.as_deref() == Some("1")).then_some(()) }
    })
    .await;
    b.wait_for(
        "the card says paused",
        WAIT,
        &format!("const e = {sched_state}; return !!e && e.textContent === 'paused' && !!document.querySelector('[data-schedule=\"nightly\"] [data-action=resume-schedule]');"),
    )
    .await;
    b.click_when_present(
        "[data-schedule=\"nightly\"] [data-action=trigger-schedule]",
        WAIT,
    )
    .await
    .unwrap();
    let stream = format!("ts:{{{Q}}}:stream");
    common::poll("the triggered task in the stream", WAIT, || {
        let v: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .query(&mut c)
            .unwrap();
        let found = v.iter().any(|(_, f)| {
            f.get("id")
                .is_some_and(|id| id.starts_with("nightly@manual-"))
        });
        async move { found.then_some(()) }
    })
    .await;
    shot(&b, "05b-schedules.png").await;

    // A read token: the same page without a single mutating control.
    b.click(&b.find("#logout").await.unwrap()).await.unwrap();
    b.wait_for(
        "the login form again",
        WAIT,
        "return !document.getElementById('login').hidden && sessionStorage.getItem('taskstream.token') === null;",
    )
    .await;
    assert_eq!(count(&b, MUTATING).await, 0, "signed out: no controls left");
    b.send_keys(&b.find("#token").await.unwrap(), READ_SECRET)
        .await
        .unwrap();
    b.click(&b.find("#login-submit").await.unwrap())
        .await
        .unwrap();
    b.wait_for(
        "signed in as viewer (read)",
        WAIT,
        "return document.getElementById('who-name').textContent === 'viewer' && document.getElementById('who-role').textContent === 'read';",
    )
    .await;
    counts_match_redis(&b, &redis, "read token").await;
    assert_eq!(count(&b, MUTATING).await, 0, "read token, queues");
    b.click(&b.find("#tabs a[data-tab=\"dead-letters\"]").await.unwrap())
        .await
        .unwrap();
    b.click_when_present("#dl-search", WAIT).await.unwrap();
    b.wait_for(
        "letters for the read token",
        WAIT,
        "return document.querySelectorAll('#dl-results .letter').length >= 50;",
    )
    .await;
    assert_eq!(count(&b, MUTATING).await, 0, "read token, dead letters");
    let words: Value = b
        .execute(
            "return [...document.querySelectorAll('button')].map(b => b.textContent.trim()).filter(t => /^(Pause|Resume|Requeue|Delete|Abort)/.test(t));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(words, json!([]), "read token: no mutating button by label");
    shot(&b, "06-read-token-dead-letters.png").await;
    b.click(&b.find("#tabs a[data-tab=\"sagas\"]").await.unwrap())
        .await
        .unwrap();
    b.send_keys(&b.find("#saga-id").await.unwrap(), &stuck)
        .await
        .unwrap();
    b.click(&b.find("#saga-go").await.unwrap()).await.unwrap();
    b.wait_for(
        "the saga for the read token",
        WAIT,
        &format!("return !!document.querySelector('#saga-detail [data-saga-id=\"{stuck}\"]');"),
    )
    .await;
    assert_eq!(count(&b, MUTATING).await, 0, "read token, sagas");
    b.click(&b.find("#tabs a[data-tab=\"schedules\"]").await.unwrap())
        .await
        .unwrap();
    b.wait_for(
        "the schedule for the read token",
        WAIT,
        "return !!document.querySelector('[data-schedule=\"nightly\"] [data-field=state]');",
    )
    .await;
    assert_eq!(count(&b, MUTATING).await, 0, "read token, schedules");

    // A phone: 390 px wide, nothing wider than the screen.
    b.click(&b.find("#tabs a[data-tab=\"queues\"]").await.unwrap())
        .await
        .unwrap();
    b.resize(390, 844, true).await.unwrap();
    b.wait_for(
        "a 390 px viewport without horizontal scrolling",
        WAIT,
        "return window.innerWidth === 390 && document.documentElement.scrollWidth <= 390 && !document.getElementById('view-queues').hidden;",
    )
    .await;
    counts_match_redis(&b, &redis, "phone").await;
    shot(&b, "07-phone-queues.png").await;
    b.click(&b.find("#tabs a[data-tab=\"dead-letters\"]").await.unwrap())
        .await
        .unwrap();
    b.wait_for(
        "dead letters on the phone",
        WAIT,
        "return !document.getElementById('view-dead-letters').hidden && document.documentElement.scrollWidth <= 390;",
    )
    .await;
    shot(&b, "08-phone-dead-letters.png").await;

    let log = serve.log_text();
    assert!(
        log.contains("token=ops") || log.contains("\"token\":\"ops\""),
        "the mutations are logged with the token's name:\n{log}"
    );
}
