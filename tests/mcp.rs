//! The MCP server (issue 12.4) driven by the official MCP Python SDK (PyPI `mcp`,
//! `tests/mcp_client.py`) over Streamable HTTP (a real `taskstream serve` with an admin
//! and a read token) and over stdio (`taskstream mcp`), against a private Redis: the
//! tools are listed (the read token and stdio without `--admin` see no mutating tool and
//! are refused enqueue), and what stats, enqueue, dead-letter search and requeue did is
//! checked in Redis. Plus the transport's HTTP answers (401, 405, 404 session, 400 parse
//! error, 202 notification, SSE-only Accept, batch) over a raw socket.
//!
//! Needs `python3` with `mcp` (`python3 -m pip install mcp`; `.ci/run` installs it).
//! Without it the tests print SKIP, or fail when `CI=true`.
#![cfg(feature = "cli")]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{bin, http_get, poll, wait_within, write_file, RedisServer};
use serde_json::{json, Value};

const ADMIN_SECRET: &str = "mcp-admin-secret-0123456789";
const READ_SECRET: &str = "mcp-read-secret-0123456789ab";
const QUEUE: &str = "orders";

/// True when python3 can import the SDK; otherwise SKIP (or fail under CI).
fn sdk_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import mcp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("python3 with the MCP SDK is required under CI (python3 -m pip install mcp)");
        }
        println!(
            "SKIP: python3 with the `mcp` package is not installed (python3 -m pip install mcp)"
        );
    }
    ok
}

fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp_client.py")
}

fn config(redis: &RedisServer, listen: &str) -> String {
    format!(
        r#"
[redis]
url = "{url}"
response_timeout_ms = 2000
[api]
listen = "{listen}"
[[api.tokens]]
name = "ops-admin"
token_env = "TS_TEST_MCP_ADMIN"
role = "admin"
[[api.tokens]]
name = "viewer"
token_env = "TS_TEST_MCP_READ"
role = "read"
[log]
level = "info"
[[queues]]
name = "{QUEUE}"
"#,
        url = redis.url()
    )
}

/// Runs the Python client with `args`; its JSON output.
fn client(args: &[&str]) -> Value {
    let mut child = Command::new("python3")
        .arg(client_script())
        .args(args)
        .env_remove("TASKSTREAM_REDIS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let st = wait_within(&mut child, Duration::from_secs(120));
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let st = st.unwrap_or_else(|| panic!("the MCP client hung; stderr:\n{err}"));
    assert!(st.success(), "the MCP client failed ({st}):\n{err}\n{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("client output {out:?}: {e}\n{err}"))
}

fn tool_names(v: &Value) -> Vec<String> {
    v["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

const MUTATING: [&str; 6] = [
    "enqueue",
    "dead_letters_requeue",
    "queue_pause",
    "queue_resume",
    "saga_start",
    "saga_abort",
];

/// The structured result of a successful call.
fn ok(call: &Value) -> &Value {
    assert_eq!(call["isError"], false, "the call failed: {call}");
    let sc = &call["structuredContent"];
    // The text content is the same JSON.
    let text: Value = serde_json::from_str(call["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(&text, sc);
    sc
}

/// Writes a dead letter as the settle script would.
fn dead_letter(conn: &mut redis::Connection, id: &str, ty: &str, reason: &str, error: &str) {
    let _: String = redis::cmd("XADD")
        .arg(format!("ts:{{{QUEUE}}}:dlq"))
        .arg("*")
        .arg(&[
            ("id", id),
            ("type", ty),
            ("payload", r#"{"n":1}"#),
            ("enqueued_at", "1700000000000"),
            ("dlq_reason", reason),
            ("dlq_error", error),
            ("dlq_attempts", "3"),
            ("dlq_lane", "bulk"),
        ])
        .query(conn)
        .unwrap();
}

type Entry = (String, Vec<(String, String)>);

/// The entries of `key` with their fields.
fn entries(conn: &mut redis::Connection, key: &str) -> Vec<Entry> {
    let v: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap();
    v
}

fn field<'a>(e: &'a Entry, name: &str) -> Option<&'a str> {
    e.1.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn stream(conn: &mut redis::Connection) -> Vec<Entry> {
    entries(conn, &format!("ts:{{{QUEUE}}}:stream"))
}

/// A `taskstream serve` process, killed on drop.
struct Serve {
    child: Child,
    log: PathBuf,
    addr: String,
}

impl Serve {
    async fn start(dir: &Path, redis: &RedisServer) -> Serve {
        let addr = format!("127.0.0.1:{}", common::free_port());
        let cfg = write_file(dir, "serve.toml", &config(redis, &addr));
        let log = dir.join("serve.log");
        let child = Command::new(bin())
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .env_remove("TASKSTREAM_REDIS_URL")
            .env("TS_TEST_MCP_ADMIN", ADMIN_SECRET)
            .env("TS_TEST_MCP_READ", READ_SECRET)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("taskstream serve");
        let s = Serve { child, log, addr };
        // Listening and connected (its /ready also waits for consumer groups, which a
        // control plane never creates).
        poll(
            "taskstream serve connected",
            Duration::from_secs(30),
            || {
                let log = s.log_text();
                let up = http_get(&s.addr, "/health").is_some();
                async move { (up && log.contains("api connected to redis")).then_some(()) }
            },
        )
        .await;
        s
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw HTTP/1.1 request: (status, lower-case headers, body).
fn raw(addr: &str, method: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} /mcp HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

const JSON_HEADERS: [(&str, &str); 3] = [
    ("Authorization", "Bearer mcp-admin-secret-0123456789"),
    ("Content-Type", "application/json"),
    ("Accept", "application/json, text/event-stream"),
];

fn check_http_transport(addr: &str) {
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    // No token, a bad token: 401 with the challenge.
    let (st, head, _) = raw(addr, "POST", &JSON_HEADERS[1..], init);
    assert_eq!(st, 401);
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    let bad = [("Authorization", "Bearer nope-nope-nope-nope")];
    let (st, _, _) = raw(addr, "POST", &[bad[0], JSON_HEADERS[1]], init);
    assert_eq!(st, 401);
    // initialize: the version echoed, a session id issued.
    let (st, head, body) = raw(addr, "POST", &JSON_HEADERS, init);
    assert_eq!(st, 200, "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["result"]["protocolVersion"], "2025-06-18");
    let sid = head
        .lines()
        .find_map(|l| l.strip_prefix("mcp-session-id: "))
        .expect("a session id")
        .trim()
        .to_string();
    // It is accepted afterwards; one never issued is a 404.
    let with_sid = |sid: &str, body: &str| {
        let h: Vec<(&str, &str)> = JSON_HEADERS
            .iter()
            .copied()
            .chain([("Mcp-Session-Id", sid)])
            .collect();
        raw(addr, "POST", &h, body)
    };
    let ping = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
    let (st, _, body) = with_sid(&sid, ping);
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["result"],
        json!({})
    );
    let (st, _, _) = with_sid("not-a-session", ping);
    assert_eq!(st, 404);
    // A notification: 202, no body.
    let (st, _, body) = with_sid(
        &sid,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!((st, body.as_str()), (202, ""));
    // Not JSON: 400 with the JSON-RPC parse error.
    let (st, _, body) = raw(addr, "POST", &JSON_HEADERS, "{oops");
    assert_eq!(st, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        -32700
    );
    // A batch: the answers in order; an unknown method is -32601.
    let (st, _, body) = raw(
        addr,
        "POST",
        &JSON_HEADERS,
        r#"[{"jsonrpc":"2.0","id":"a","method":"ping"},{"jsonrpc":"2.0","id":"b","method":"resources/list"}]"#,
    );
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v[0]["id"], "a");
    assert_eq!(
        (v[1]["id"].clone(), v[1]["error"]["code"].clone()),
        (json!("b"), json!(-32601))
    );
    // A client that accepts only an event stream gets one event.
    let sse = [
        JSON_HEADERS[0],
        JSON_HEADERS[1],
        ("Accept", "text/event-stream"),
    ];
    let (st, head, body) = raw(addr, "POST", &sse, ping);
    assert_eq!(st, 200);
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let data = body
        .strip_prefix("event: message\ndata: ")
        .and_then(|b| b.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("{body:?}"));
    assert_eq!(serde_json::from_str::<Value>(data).unwrap()["id"], 2);
    // No server-sent stream: GET is a 405.
    let (st, head, _) = raw(addr, "GET", &JSON_HEADERS[..1], "");
    assert_eq!(st, 405);
    assert!(head.contains("allow: post"), "{head}");
    // A page of another site cannot drive it from a browser.
    let evil = [
        JSON_HEADERS[0],
        JSON_HEADERS[1],
        ("Origin", "https://evil.example"),
    ];
    let (st, _, _) = raw(addr, "POST", &evil, ping);
    assert_eq!(st, 403);
}

#[tokio::test]
async fn python_sdk_over_streamable_http() {
    if !sdk_available() {
        return;
    }
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let mut conn = redis.sync_conn();
    dead_letter(
        &mut conn,
        "dead-1",
        "charge_card",
        "exhausted",
        "card declined",
    );
    dead_letter(
        &mut conn,
        "dead-2",
        "charge_card",
        "exhausted",
        "Card DECLINED twice",
    );
    dead_letter(&mut conn, "dead-3", "send_email", "poison", "bad address");
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &redis).await;
    let url = format!("http://{}/mcp", serve.addr);

    let calls = json!([
        {"tool": "queue_stats", "args": {}},
        {"tool": "enqueue", "args": {"queue": QUEUE, "type": "send_email", "id": "mcp-task-1",
                                     "payload": {"to": "ada@example.com"}}},
        {"tool": "task_get", "args": {"queue": QUEUE, "task_id": "mcp-task-1"}},
        {"tool": "dead_letters_search", "args": {"queue": QUEUE, "type": "charge_card"}},
        {"tool": "dead_letters_search", "args": {"queue": QUEUE, "error": "declined", "limit": 1}},
        {"tool": "dead_letters_requeue", "args": {"queue": QUEUE, "filter": {"task_id": "dead-2"}}},
        {"tool": "dead_letters_requeue", "args": {"queue": QUEUE, "filter": {"type": "send_email"}, "dry_run": true}},
        {"tool": "enqueue", "args": {"queue": "no-such-queue", "type": "x"}},
        {"tool": "enqueue", "args": {"queue": QUEUE}},
        {"tool": "dead_letters_search", "args": {"queue": QUEUE, "limit": 500}},
        {"tool": "no_such_tool", "args": {}},
    ]);
    let out = client(&["http", &url, ADMIN_SECRET, &calls.to_string()]);
    let log = serve.log_text();
    assert_eq!(out["server"]["serverInfo"]["name"], "taskstream", "{log}");
    let names = tool_names(&out);
    assert_eq!(names.len(), 11, "{names:?}");
    for m in MUTATING {
        assert!(names.contains(&m.to_string()), "{m} not listed for admin");
    }
    for t in out["tools"].as_array().unwrap() {
        assert_eq!(t["inputSchema"]["type"], "object");
        let ro = MUTATING.iter().all(|m| t["name"] != *m);
        assert_eq!(t["annotations"]["readOnlyHint"], ro, "{t}");
    }
    let c = out["calls"].as_array().unwrap();

    // Stats: the configured queue with the seeded dead letters.
    let q = &ok(&c[0])["queues"];
    let orders = q
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == QUEUE)
        .unwrap_or_else(|| panic!("{q}"));
    assert_eq!(orders["dead_letters"], 3, "{orders}");

    // Enqueue: in the stream with its type and payload.
    let e = ok(&c[1]);
    assert_eq!(e["task_id"], "mcp-task-1");
    assert_eq!(e["duplicate"], false);
    let s = stream(&mut conn);
    let task = s
        .iter()
        .find(|e| field(e, "id") == Some("mcp-task-1"))
        .unwrap_or_else(|| panic!("not in the stream: {s:?}"));
    assert_eq!(Some(task.0.as_str()), e["entry_id"].as_str());
    assert_eq!(field(task, "type"), Some("send_email"));
    let payload: Value = serde_json::from_str(field(task, "payload").unwrap()).unwrap();
    assert_eq!(payload, json!({"to": "ada@example.com"}));
    assert!(
        log.contains("mcp: mutating tool called") && log.contains("token=ops-admin"),
        "{log}"
    );
    // The lookup finds it queued.
    let t = ok(&c[2]);
    assert_eq!(
        (t["state"].as_str(), t["task_type"].as_str()),
        (Some("queued"), Some("send_email"))
    );

    // Search: by type, and by error text a page at a time.
    let ids = |v: &Value| -> Vec<String> {
        v["letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                l["fields"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|f| f[0] == "id")
                    .map(|f| f[1].as_str().unwrap().to_string())
                    .unwrap()
            })
            .collect()
    };
    let found = ok(&c[3]);
    assert_eq!(ids(found), ["dead-1", "dead-2"]);
    let page = ok(&c[4]);
    assert_eq!(ids(page), ["dead-1"]);
    assert!(page["next_cursor"].is_string(), "{page}");

    // Requeue: dead-2 is back in the stream with attempt 1 and out of the dead letters.
    let r = ok(&c[5]);
    assert_eq!(
        (r["matched"].as_u64(), r["applied"].as_u64()),
        (Some(1), Some(1)),
        "{r}"
    );
    let dlq = entries(&mut conn, &format!("ts:{{{QUEUE}}}:dlq"));
    let left: Vec<&str> = dlq.iter().filter_map(|e| field(e, "id")).collect();
    assert_eq!(left, ["dead-1", "dead-3"]);
    let s = stream(&mut conn);
    let back = s
        .iter()
        .find(|e| field(e, "id") == Some("dead-2"))
        .unwrap_or_else(|| panic!("dead-2 not requeued: {s:?}"));
    assert_eq!(
        (field(back, "type"), field(back, "attempt")),
        (Some("charge_card"), Some("1"))
    );
    // A dry run only counts.
    let d = ok(&c[6]);
    assert_eq!(
        (
            d["matched"].as_u64(),
            d["applied"].as_u64(),
            d["dry_run"].as_bool()
        ),
        (Some(1), Some(0), Some(true))
    );

    // A tool failure is a result with isError; bad arguments and unknown tools are errors.
    assert_eq!(c[7]["isError"], true, "{}", c[7]);
    assert!(c[7]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("no-such-queue"));
    assert_eq!(c[7]["structuredContent"]["status"], 404);
    assert!(c[8]["error"].as_str().unwrap().contains("type"), "{}", c[8]);
    assert!(
        c[9]["error"].as_str().unwrap().contains("limit"),
        "{}",
        c[9]
    );
    assert!(
        c[10]["error"].as_str().unwrap().contains("no_such_tool"),
        "{}",
        c[10]
    );
    let enqueued = stream(&mut conn).len();

    // The read token: no mutating tool listed, enqueue refused, reads work.
    let calls = json!([
        {"tool": "enqueue", "args": {"queue": QUEUE, "type": "send_email"}},
        {"tool": "queue_pause", "args": {"queue": QUEUE}},
        {"tool": "queue_stats", "args": {"queue": QUEUE}},
    ]);
    let out = client(&["http", &url, READ_SECRET, &calls.to_string()]);
    let names = tool_names(&out);
    assert_eq!(
        names,
        [
            "queue_stats",
            "task_get",
            "dead_letters_search",
            "saga_get",
            "saga_list"
        ]
    );
    let c = out["calls"].as_array().unwrap();
    for refused in &c[..2] {
        let why = refused["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{refused}"));
        assert!(
            why.contains("read-only mode") && why.contains("viewer"),
            "{why}"
        );
    }
    assert_eq!(ok(&c[2])["queues"][0]["queue"], QUEUE);
    assert_eq!(stream(&mut conn).len(), enqueued, "the read token enqueued");
    let signals: u64 = redis::cmd("XLEN")
        .arg(format!("ts:{{{QUEUE}}}:signals"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(signals, 0, "the read token paused the queue");

    check_http_transport(&serve.addr);
}

#[tokio::test]
async fn python_sdk_over_stdio() {
    if !sdk_available() {
        return;
    }
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let mut conn = redis.sync_conn();
    dead_letter(
        &mut conn,
        "dead-9",
        "resize",
        "exhausted",
        "timeout after 30s",
    );
    dead_letter(&mut conn, "dead-10", "resize", "exhausted", "out of memory");
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", common::free_port());
    let cfg = write_file(dir.path(), "mcp.toml", &config(&redis, &listen));
    let cfg = cfg.to_str().unwrap();
    let binary = bin();
    let binary = binary.to_str().unwrap();

    // --admin: every tool; stats, enqueue, search and requeue act on Redis.
    let calls = json!([
        {"tool": "queue_stats", "args": {"queue": QUEUE}},
        {"tool": "enqueue", "args": {"queue": QUEUE, "type": "resize", "payload": {"w": 640}, "express": true}},
        {"tool": "dead_letters_search", "args": {"queue": QUEUE, "error": "memory"}},
        {"tool": "dead_letters_requeue", "args": {"queue": QUEUE, "filter": {"error": "timeout"}}},
    ]);
    let out = client(&[
        "stdio",
        binary,
        &calls.to_string(),
        "mcp",
        "--config",
        cfg,
        "--admin",
        "--name",
        "desk",
    ]);
    assert_eq!(tool_names(&out).len(), 11);
    let c = out["calls"].as_array().unwrap();
    assert_eq!(ok(&c[0])["queues"][0]["dead_letters"], 2);
    let e = ok(&c[1]);
    let express = entries(&mut conn, &format!("ts:{{{QUEUE}}}:express"));
    let task = express
        .iter()
        .find(|x| Some(x.0.as_str()) == e["entry_id"].as_str())
        .unwrap_or_else(|| panic!("not in the express stream: {express:?}"));
    assert_eq!(field(task, "type"), Some("resize"));
    assert_eq!(field(task, "id"), e["task_id"].as_str());
    let payload: Value = serde_json::from_str(field(task, "payload").unwrap()).unwrap();
    assert_eq!(payload, json!({"w": 640}));
    let found = ok(&c[2]);
    assert_eq!(found["letters"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(ok(&c[3])["applied"], 1);
    let s = stream(&mut conn);
    assert!(s.iter().any(|e| field(e, "id") == Some("dead-9")), "{s:?}");
    let dlq = entries(&mut conn, &format!("ts:{{{QUEUE}}}:dlq"));
    assert_eq!(dlq.len(), 1);

    // Without --admin: read-only.
    let calls = json!([
        {"tool": "enqueue", "args": {"queue": QUEUE, "type": "resize"}},
        {"tool": "dead_letters_search", "args": {"queue": QUEUE}},
    ]);
    let out = client(&["stdio", binary, &calls.to_string(), "mcp", "--config", cfg]);
    let names = tool_names(&out);
    assert!(
        MUTATING.iter().all(|m| !names.contains(&m.to_string())),
        "{names:?}"
    );
    let c = out["calls"].as_array().unwrap();
    let why = c[0]["error"].as_str().unwrap_or_else(|| panic!("{}", c[0]));
    assert!(
        why.contains("read-only mode") && why.contains("--admin"),
        "{why}"
    );
    assert_eq!(ok(&c[1])["letters"].as_array().unwrap().len(), 1);
    assert_eq!(stream(&mut conn).len(), s.len(), "read-only stdio enqueued");
}
