//! The REST API of `taskstream serve` (issue 12), tested as a client sees it: a real
//! server process on a private redis-server, a real HTTP client, effects checked in Redis.
//!
//! - `every_refusal_is_a_problem_document`: no token, a wrong token, a read token on each
//!   mutation, bad JSON, a wrong media type, unknown queues and routes, oversized
//!   payloads, bad cursors and parameters — each a 4xx problem document, never a 5xx.
//! - `tasks_queues_and_workers`: enqueue (one, batch, idempotent, express, delayed),
//!   lookup in every state a task can be found in, cancel, pause/resume in Redis, workers.
//! - `dead_letter_search_and_bulk_actions`: one letter among 3,000 found by its error text
//!   (and by `taskstream dlq search` and `task show`, alike);
//!   the scan in Redis agrees with the filter stated in Rust; dry runs count; requeue and
//!   delete act on exactly the matches.
//! - `sagas_start_list_show_abort`: pagination by cursor visits each saga once.
//! - `schedules_list_show_pause_resume_trigger`: the next tick in the schedule's time
//!   zone, pause state in Redis, a trigger's task in the stream, and the refusals.
//! - `serve_refuses_to_start_exposed_or_without_its_secrets`.
//! - `openapi_document_is_valid_and_matches_the_router`: the document validates
//!   (openapi-spec-validator), every route it names is served, and a schema-driven fuzzer
//!   (schemathesis) finds no 5xx and no response outside the schema.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::serve::{client, serve_toml, ServeProc, ADMIN, READ};
use common::{poll, run_cli, write_file, RedisServer, WorkerProc};
use redis::Commands;
use serde_json::{json, Value};

/// The status and JSON body of a response (problem documents checked for their shape).
async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = r.text().await.unwrap();
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("status {status}: body is not JSON: {text:?}"));
    if status >= 400 {
        assert_eq!(ct, "application/problem+json", "{status} {text}");
        for k in ["type", "title", "status", "detail"] {
            assert!(body.get(k).is_some(), "problem without {k}: {text}");
        }
        assert_eq!(body["status"], status, "{text}");
    }
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_a_problem_document() {
    let redis = RedisServer::start();
    let api = ServeProc::start(&serve_toml(
        &redis.url(),
        &["q"],
        "[api]\nmax_body_bytes = 2097152",
    ))
    .await;
    let c = client();
    let u = |p: &str| api.url(p);

    // Reads and mutations without a token, and with a wrong one: 401.
    let routes: Vec<(&str, String, Value)> = vec![
        ("GET", u("/api/v1/queues"), Value::Null),
        ("GET", u("/api/v1/queues/q"), Value::Null),
        ("GET", u("/api/v1/queues/q/workers"), Value::Null),
        ("GET", u("/api/v1/queues/q/tasks/x"), Value::Null),
        ("GET", u("/api/v1/queues/q/dead-letters"), Value::Null),
        ("GET", u("/api/v1/sagas"), Value::Null),
        ("GET", u("/api/v1/sagas/x"), Value::Null),
        ("POST", u("/api/v1/queues/q/pause"), Value::Null),
        ("POST", u("/api/v1/queues/q/resume"), Value::Null),
        (
            "POST",
            u("/api/v1/queues/q/tasks"),
            json!({"type": "builtin.noop"}),
        ),
        (
            "POST",
            u("/api/v1/queues/q/tasks/batch"),
            json!({"tasks": [{"type": "builtin.noop"}]}),
        ),
        ("POST", u("/api/v1/queues/q/tasks/x/cancel"), Value::Null),
        (
            "POST",
            u("/api/v1/queues/q/dead-letters/requeue"),
            json!({}),
        ),
        ("POST", u("/api/v1/queues/q/dead-letters/delete"), json!({})),
        ("POST", u("/api/v1/sagas"), json!({"saga": "demo"})),
        ("POST", u("/api/v1/sagas/x/abort"), json!({})),
    ];
    let req = |m: &str, url: &str, body: &Value| {
        let b = if m == "GET" { c.get(url) } else { c.post(url) };
        if body.is_null() {
            b
        } else {
            b.json(body)
        }
    };
    for (m, url, body) in &routes {
        let (s, p) = send(req(m, url, body)).await;
        assert_eq!(s, 401, "{m} {url} without a token: {p}");
        let (s, _) = send(req(m, url, body).bearer_auth("not-a-token-at-all-0000")).await;
        assert_eq!(s, 401, "{m} {url} with a wrong token");
        let (s, _) =
            send(req(m, url, body).header("authorization", format!("Basic {ADMIN}"))).await;
        assert_eq!(s, 401, "{m} {url} with a non-bearer scheme");
    }
    // A read token reads, but every mutation is a 403 that changes nothing.
    for (m, url, body) in &routes {
        let (s, p) = send(req(m, url, body).bearer_auth(READ)).await;
        if *m == "GET" {
            assert!(
                s == 200 || s == 404,
                "{m} {url} with the read token: {s} {p}"
            );
        } else {
            assert_eq!(s, 403, "{m} {url} with the read token: {p}");
            assert!(p["detail"].as_str().unwrap().contains("viewer"), "{p}");
        }
    }
    let mut r = redis.sync_conn();
    let len: u64 = r.xlen("ts:{q}:stream").unwrap();
    assert_eq!(len, 0, "a refused enqueue wrote nothing");
    assert!(!r.exists::<_, bool>("ts:{q}:paused").unwrap());
    // …but may ask for a dry run.
    let (s, p) = send(
        c.post(u("/api/v1/queues/q/dead-letters/requeue"))
            .bearer_auth(READ)
            .json(&json!({"dry_run": true})),
    )
    .await;
    assert_eq!((s, p["dry_run"].as_bool()), (200, Some(true)), "{p}");

    // Bad input, with the admin token: each a 4xx problem.
    let admin = |b: reqwest::RequestBuilder| b.bearer_auth(ADMIN);
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            admin(c.post(u("/api/v1/queues/q/tasks")))
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "not JSON",
        ),
        (
            admin(c.post(u("/api/v1/queues/q/tasks"))).json(&json!(["builtin.noop"])),
            400,
            "must be a JSON object",
        ),
        (
            admin(c.post(u("/api/v1/queues/q/tasks")))
                .header("content-type", "text/plain")
                .body("{}"),
            415,
            "application/json",
        ),
        (
            admin(c.post(u("/api/v1/queues/q/tasks"))).json(&json!({"payload": {}})),
            400,
            "missing field `type`",
        ),
        (
            admin(c.post(u("/api/v1/queues/q/tasks"))).json(&json!({"type": "bad type!"})),
            400,
            "task type",
        ),
        (
            admin(c.post(u("/api/v1/queues/q/tasks")))
                .json(&json!({"type": "t", "max_attempts": 0})),
            400,
            "max_attempts",
        ),
        (
            admin(c.post(u("/api/v1/queues/q/tasks"))).json(&json!({"type": "t", "delay_ms": 1.5})),
            400,
            "whole number",
        ),
        (
            admin(c.post(u("/api/v1/queues/q/tasks"))).json(&json!({"type": "t", "surprise": 1})),
            400,
            "unknown field",
        ),
        (
            admin(c.post(u("/api/v1/queues/nope/tasks"))).json(&json!({"type": "t"})),
            404,
            "unknown",
        ),
        (
            admin(c.post(u("/api/v1/queues/bad%7Bname/tasks"))).json(&json!({"type": "t"})),
            400,
            "queue name",
        ),
        (
            admin(c.post(u("/api/v1/queues/q/tasks")))
                .json(&json!({"type": "t", "payload": "x".repeat(1_100_000)})),
            413,
            "above the 1048576-byte limit",
        ),
        (
            admin(c.post(u("/api/v1/queues/q/tasks/batch")))
                .header("content-type", "application/json")
                .body(vec![b' '; (2 << 20) + 8192]),
            413,
            "api.max_body_bytes",
        ),
        (
            admin(c.post(u("/api/v1/queues/q/tasks/batch"))).json(&json!({"tasks": []})),
            400,
            "1 to 1000 tasks",
        ),
        (
            admin(c.post(u("/api/v1/queues/q/tasks/batch")))
                .json(&json!({"tasks": [{"type": "ok"}, {"type": "t", "max_attempts": 0}]})),
            400,
            "tasks[1]",
        ),
        (
            admin(c.get(u("/api/v1/queues/q/dead-letters?cursor=garbage"))),
            400,
            "cursor",
        ),
        (
            admin(c.get(u("/api/v1/sagas?cursor=garbage"))),
            400,
            "cursor",
        ),
        (
            admin(c.get(u("/api/v1/sagas?state=sleeping"))),
            400,
            "saga state",
        ),
        (admin(c.get(u("/api/v1/queues?limit=0"))), 400, "limit"),
        (admin(c.get(u("/api/v1/queues?limit=5000"))), 400, "limit"),
        (
            admin(c.get(u("/api/v1/queues?frobnicate=1"))),
            400,
            "unknown query parameter",
        ),
        (
            admin(c.get(u("/api/v1/queues?limit=1&limit=2"))),
            400,
            "twice",
        ),
        (admin(c.get(u("/api/v1/queues/nope"))), 404, "unknown"),
        (
            admin(c.get(u("/api/v1/queues/q/tasks/never-enqueued"))),
            404,
            "not waiting",
        ),
        (
            admin(c.get(u("/api/v1/sagas/no-such-saga"))),
            404,
            "never started",
        ),
        (
            admin(c.post(u("/api/v1/sagas"))).json(&json!({"saga": "nope"})),
            404,
            "saga definition",
        ),
        (admin(c.get(u("/api/v1/nowhere"))), 404, "no route"),
        (admin(c.delete(u("/api/v1/queues"))), 405, "method"),
    ];
    for (rq, want, needle) in cases {
        let (s, p) = send(rq).await;
        assert_eq!(s, want, "{p}");
        let d = p["detail"].as_str().unwrap();
        assert!(d.contains(needle), "{want}: detail {d:?} lacks {needle:?}");
    }
    // Nothing above crashed the server or reached Redis, and it reports itself ready.
    let (s, _) = send(admin(c.get(u("/api/v1/queues")))).await;
    assert_eq!(s, 200);
    let ready = c.get(u("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    let len: u64 = r.xlen("ts:{q}:stream").unwrap();
    assert_eq!(len, 0);
    assert!(!api.log_text().contains("panicked"), "{}", api.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_queues_and_workers() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let api = ServeProc::start(&serve_toml(&redis.url(), &["jobs"], "")).await;
    let c = client();
    let mut r = redis.sync_conn();
    let post = |p: &str, body: Value| c.post(api.url(p)).bearer_auth(ADMIN).json(&body);
    let get = |p: &str| c.get(api.url(p)).bearer_auth(READ);

    // Paused first, so what is enqueued stays queued while it is looked up.
    let (s, p) = send(post("/api/v1/queues/jobs/pause", Value::Null)).await;
    assert_eq!(s, 202, "{p}");
    assert!(r.exists::<_, bool>("ts:{jobs}:paused").unwrap());

    let (s, one) = send(post(
        "/api/v1/queues/jobs/tasks",
        json!({"type": "builtin.noop", "payload": {"n": 1}, "id": "t-1"}),
    ))
    .await;
    assert_eq!(s, 201, "{one}");
    assert_eq!(one["task_id"], "t-1");
    let (s, ex) = send(post(
        "/api/v1/queues/jobs/tasks",
        json!({"type": "builtin.noop", "express": true}),
    ))
    .await;
    assert_eq!(s, 201);
    let (s, later) = send(post(
        "/api/v1/queues/jobs/tasks",
        json!({"type": "builtin.noop", "delay_ms": 600000, "id": "t-later"}),
    ))
    .await;
    assert_eq!((s, later["scheduled"].as_bool()), (201, Some(true)));
    let body = json!({"type": "builtin.noop", "idempotency_key": "once"});
    let (s, first) = send(post("/api/v1/queues/jobs/tasks", body.clone())).await;
    assert_eq!(s, 201);
    let (s, dup) = send(post("/api/v1/queues/jobs/tasks", body)).await;
    assert_eq!((s, dup["duplicate"].as_bool()), (200, Some(true)), "{dup}");
    assert_eq!(dup["task_id"], first["task_id"]);
    let tasks: Vec<Value> = (0..50)
        .map(|i| json!({"type": "builtin.noop", "payload": {"i": i}, "id": format!("b-{i}")}))
        .collect();
    let (s, batch) = send(post(
        "/api/v1/queues/jobs/tasks/batch",
        json!({ "tasks": tasks }),
    ))
    .await;
    assert_eq!(s, 201);
    assert_eq!(batch["results"].as_array().unwrap().len(), 50);
    assert_eq!(batch["results"][49]["task_id"], "b-49");

    // In Redis: 1 + 1 + 50 bulk entries, 1 express, 1 scheduled.
    let bulk: u64 = r.xlen("ts:{jobs}:stream").unwrap();
    let express: u64 = r.xlen("ts:{jobs}:express").unwrap();
    let sched: u64 = r.zcard("ts:{jobs}:scheduled").unwrap();
    assert_eq!((bulk, express, sched), (52, 1, 1));
    let (s, q) = send(get("/api/v1/queues/jobs")).await;
    assert_eq!(s, 200);
    assert_eq!(
        (
            q["bulk_length"].as_u64(),
            q["express_length"].as_u64(),
            q["scheduled"].as_u64()
        ),
        (Some(52), Some(1), Some(1))
    );
    assert_eq!(q["paused"], true);

    // Lookups: queued (bulk and express), scheduled.
    let (s, t) = send(get("/api/v1/queues/jobs/tasks/t-1")).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(
        (t["state"].as_str(), t["lane"].as_str()),
        (Some("queued"), Some("bulk"))
    );
    assert_eq!(t["payload"], r#"{"n":1}"#);
    assert_eq!(t["task_type"], "builtin.noop");
    let ex_id = ex["task_id"].as_str().unwrap();
    let (_, t) = send(get(&format!("/api/v1/queues/jobs/tasks/{ex_id}"))).await;
    assert_eq!(
        (t["state"].as_str(), t["lane"].as_str()),
        (Some("queued"), Some("express"))
    );
    let (_, t) = send(get("/api/v1/queues/jobs/tasks/t-later")).await;
    assert_eq!(t["state"], "scheduled");
    assert!(t["due_at"].as_u64().unwrap() > t["enqueued_at"].as_u64().unwrap() + 599_000);
    // A raw producer's task without an id is found by its default id (the entry id).
    let raw: String = r
        .xadd(
            "ts:{jobs}:stream",
            "*",
            &[("type", "builtin.noop"), ("payload", "{}")],
        )
        .unwrap();
    let (s, t) = send(get(&format!("/api/v1/queues/jobs/tasks/{raw}"))).await;
    assert_eq!((s, t["state"].as_str()), (200, Some("queued")), "{t}");

    // A worker: running (a long sleep), dead (an unknown type), retrying (an HTTP
    // handler whose endpoint refuses connections, with a long backoff).
    let toml = common::worker_toml(&redis.url(), "jobs", "", "max_attempts = 3")
        .replace("backoff_base_ms = 20\n", "backoff_base_ms = 600000\n")
        .replace("backoff_cap_ms = 200\n", "backoff_cap_ms = 600000\n")
        + "[[http_handlers]]\ntype = \"remote.call\"\nurl = \"http://127.0.0.1:1/\"\n";
    let worker = WorkerProc::spawn(&toml);
    let (s, p) = send(post("/api/v1/queues/jobs/resume", Value::Null)).await;
    assert_eq!(s, 202, "{p}");
    for (id, ty, payload) in [
        ("t-sleep", "builtin.sleep", json!({"ms": 120000})),
        ("t-dead", "no.such.type", json!({})),
        ("t-retry", "remote.call", json!({})),
    ] {
        let (s, _) = send(post(
            "/api/v1/queues/jobs/tasks",
            json!({"type": ty, "payload": payload, "id": id}),
        ))
        .await;
        assert_eq!(s, 201);
    }
    let state_of = |id: &'static str| {
        let c = c.clone();
        let url = api.url(&format!("/api/v1/queues/jobs/tasks/{id}"));
        async move {
            let r = c.get(&url).bearer_auth(READ).send().await.ok()?;
            let v: Value = r.json().await.ok()?;
            Some(v)
        }
    };
    let wait_state = |id: &'static str, want: &'static str| {
        let state_of = &state_of;
        let worker = &worker;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let v = state_of(id).await;
                if let Some(v) = v.as_ref().filter(|v| v["state"] == want) {
                    return v.clone();
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{id} never {want}; last {v:?}\nworker log:\n{}",
                    worker.log_text()
                );
                tokio::time::sleep(Duration::from_millis(20)).await; // poll
            }
        }
    };
    let t = wait_state("t-sleep", "running").await;
    assert!(t["consumer"].as_str().is_some_and(|c| !c.is_empty()), "{t}");
    assert_eq!(t["deliveries"], 1);
    let t = wait_state("t-dead", "dead").await;
    assert!(
        t["dead_reason"]
            .as_str()
            .unwrap()
            .contains("unknown task type"),
        "{t}"
    );
    let t = wait_state("t-retry", "retrying").await;
    assert_eq!(t["attempt"], 2, "{t}");
    assert!(
        t["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{t}"
    );
    // The noop tasks of the batch ran and are gone: a finished task is a 404.
    poll("b-0 finished", Duration::from_secs(20), || async {
        let v = state_of("b-0").await?;
        (v["status"] == 404).then_some(())
    })
    .await;

    // Workers: the live process with what it reported.
    let w = poll("the worker listed", Duration::from_secs(20), || async {
        let (s, v) = send(get("/api/v1/queues/jobs/workers")).await;
        let w = v["workers"].as_array()?.first()?.clone();
        (s == 200 && w["running"].as_u64() == Some(1)).then_some(w)
    })
    .await;
    assert_eq!(w["concurrency"], 32, "{w}");
    assert_eq!(
        w["pid"].as_u64().map(|p| p as u32),
        Some(worker.pid()),
        "{w}"
    );
    assert!(w["pending_bulk"].as_u64().unwrap() >= 1, "{w}");

    // Cancel the running task: its handler stops, and it is no longer running.
    let (s, p) = send(post(
        "/api/v1/queues/jobs/tasks/t-sleep/cancel",
        Value::Null,
    ))
    .await;
    assert_eq!(s, 202, "{p}");
    poll(
        "t-sleep no longer running",
        Duration::from_secs(20),
        || async {
            let v = state_of("t-sleep").await?;
            (v["state"] != "running").then_some(())
        },
    )
    .await;

    // The queue list pages by cursor and visits each queue once.
    r.sadd::<_, _, ()>("ts:queues", &["a1", "a2", "a3"])
        .unwrap();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/api/v1/queues?limit=2".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (s, v) = send(get(&path)).await;
        assert_eq!(s, 200);
        for q in v["queues"].as_array().unwrap() {
            seen.push(q["queue"].as_str().unwrap().to_string());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, vec!["a1", "a2", "a3", "jobs"]);
    let log = api.log_text();
    assert!(
        log.contains("api: task enqueued") && log.contains("token=ops"),
        "{log}"
    );
}

/// Results and progress (issue 13.2) as an API client sees them: a running task's progress
/// reported by POST (admin only; 404 for a task that is not running), and a finished task
/// shown as succeeded with its result instead of a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_and_progress() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let api = ServeProc::start(&serve_toml(&redis.url(), &["res"], "")).await;
    let _worker = WorkerProc::spawn(&common::worker_toml(
        &redis.url(),
        "res",
        "",
        "result_ttl_secs = 60",
    ));
    let c = client();
    let post = |p: &str, body: Value| c.post(api.url(p)).bearer_auth(ADMIN).json(&body);
    let get = |p: &str| c.get(api.url(p)).bearer_auth(READ);
    for (id, ty, payload) in [
        ("p-1", "builtin.sleep", json!({"ms": 120000})),
        ("ok-1", "builtin.echo", json!({"a": 1})),
    ] {
        let (s, v) = send(post(
            "/api/v1/queues/res/tasks",
            json!({"type": ty, "payload": payload, "id": id}),
        ))
        .await;
        assert_eq!(s, 201, "{v}");
    }
    let ok = poll("ok-1 succeeded", Duration::from_secs(20), || async {
        let (s, v) = send(get("/api/v1/queues/res/tasks/ok-1")).await;
        (s == 200 && v["state"] == "succeeded").then_some(v)
    })
    .await;
    assert_eq!(ok["result"], r#"{"a":1}"#, "{ok}");
    assert!(ok["finished_at"].as_u64().is_some(), "{ok}");
    poll("p-1 running", Duration::from_secs(20), || async {
        let (s, v) = send(get("/api/v1/queues/res/tasks/p-1")).await;
        (s == 200 && v["state"] == "running").then_some(())
    })
    .await;
    let (s, v) = send(
        c.post(api.url("/api/v1/queues/res/tasks/p-1/progress"))
            .bearer_auth(READ)
            .json(&json!({"pct": 50})),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = send(post(
        "/api/v1/queues/res/tasks/p-1/progress",
        json!({"pct": 50}),
    ))
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["progress"], r#"{"pct":50}"#);
    let (s, v) = send(get("/api/v1/queues/res/tasks/p-1")).await;
    assert_eq!(
        (s, v["progress"].as_str()),
        (200, Some(r#"{"pct":50}"#)),
        "{v}"
    );
    let (s, v) = send(post(
        "/api/v1/queues/res/tasks/ok-1/progress",
        json!({"n": 1}),
    ))
    .await;
    assert_eq!(s, 404, "an ended task takes no progress: {v}");
    assert_eq!(v["status"], 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_search_and_bulk_actions() {
    let redis = RedisServer::start();
    let api = ServeProc::start(&serve_toml(&redis.url(), &["dl"], "")).await;
    let c = client();
    let mut r = redis.sync_conn();
    // 3,000 dead letters: three types, two reasons, errors of a few kinds, one unique.
    let mut p = redis::pipe();
    for i in 0..3000u32 {
        let ty = ["email.send", "pdf.render", "sms.send"][(i % 3) as usize];
        let reason = if i % 5 == 0 {
            "poison: delivered 4 times without completion".to_string()
        } else {
            "exhausted: 3 of 3 attempts failed".to_string()
        };
        let error = if i == 1234 {
            "Upstream said: QUOTA EXCEEDED for tenant 77".to_string()
        } else {
            format!("timeout after {}s", i % 7)
        };
        p.cmd("XADD").arg("ts:{dl}:dlq").arg("*").arg(&[
            ("v", "1".to_string()),
            ("id", format!("task-{i}")),
            ("type", ty.to_string()),
            ("payload", format!("{{\"i\":{i}}}")),
            ("dlq_reason", reason),
            ("dlq_error", error),
            ("dlq_attempts", "3".to_string()),
            (
                "dlq_lane",
                if i % 10 == 0 { "express" } else { "bulk" }.to_string(),
            ),
        ]);
    }
    p.query::<()>(&mut r).unwrap();
    let search = |q: String| {
        let c = c.clone();
        let base = api.url("/api/v1/queues/dl/dead-letters");
        async move {
            // Every match, following cursors.
            let mut out: Vec<Value> = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut url = format!("{base}?{q}");
                if let Some(c) = &cursor {
                    url.push_str(&format!("&cursor={c}"));
                }
                let (s, v) = send(c.get(&url).bearer_auth(READ)).await;
                assert_eq!(s, 200, "{v}");
                out.extend(v["letters"].as_array().unwrap().iter().cloned());
                match v["next_cursor"].as_str() {
                    Some(n) => cursor = Some(n.to_string()),
                    None => return out,
                }
            }
        }
    };
    let hit = search("error=quota%20exceeded&limit=10".into()).await;
    assert_eq!(hit.len(), 1, "{hit:?}");
    let fields = hit[0]["fields"].as_array().unwrap();
    assert!(fields.contains(&json!(["id", "task-1234"])), "{fields:?}");
    // The CLI's search and lookup are the same library calls, and say the same.
    let url = redis.url();
    let (code, out, err) = run_cli(
        &[
            "--redis-url",
            &url,
            "dlq",
            "search",
            "-q",
            "dl",
            "--error",
            "QUOTA",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let cli: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cli["letters"], json!(hit), "{out}");
    let (code, out, err) = run_cli(
        &[
            "--redis-url",
            &url,
            "task",
            "show",
            "task-1234",
            "-q",
            "dl",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    let (_, api_view) = send(
        c.get(api.url("/api/v1/queues/dl/tasks/task-1234"))
            .bearer_auth(READ),
    )
    .await;
    assert_eq!(shown, api_view);
    assert_eq!(shown["state"], "dead");
    let (code, _, err) = run_cli(
        &["--redis-url", &url, "task", "show", "nope", "-q", "dl"],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("keeps no results"), "{err}");
    // The scan in Redis agrees with the filter as stated in Rust, on several filters.
    let all: Vec<taskstream::dlq::DeadLetter> = {
        let v: Vec<(String, Vec<(String, String)>)> = {
            let raw: redis::streams::StreamRangeReply = r.xrange_all("ts:{dl}:dlq").unwrap();
            raw.ids
                .into_iter()
                .map(|e| {
                    let f = e
                        .map
                        .into_iter()
                        .map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap()))
                        .collect();
                    (e.id, f)
                })
                .collect()
        };
        v.into_iter()
            .map(|(dlq_id, fields)| taskstream::dlq::DeadLetter { dlq_id, fields })
            .collect()
    };
    for (q, f) in [
        (
            "type=pdf.render&reason=POISON",
            taskstream::dlq::DeadLetterFilter {
                task_type: Some("pdf.render".into()),
                reason: Some("POISON".into()),
                ..Default::default()
            },
        ),
        (
            "error=after%203s&limit=1000",
            taskstream::dlq::DeadLetterFilter {
                error: Some("after 3s".into()),
                ..Default::default()
            },
        ),
        (
            "task_id=task-7",
            taskstream::dlq::DeadLetterFilter {
                task_id: Some("task-7".into()),
                ..Default::default()
            },
        ),
    ] {
        let want: Vec<&str> = all
            .iter()
            .filter(|d| f.matches(d))
            .map(|d| d.dlq_id.as_str())
            .collect();
        let got = search(q.to_string()).await;
        let got: Vec<&str> = got.iter().map(|l| l["dlq_id"].as_str().unwrap()).collect();
        assert!(!want.is_empty(), "{q} should match something");
        assert_eq!(got, want, "{q}");
    }
    // A time range: only what died at or after the 2,000th letter.
    let since = all[2000].dlq_id.split('-').next().unwrap().to_string();
    let n = search(format!("since_ms={since}&limit=1000")).await.len();
    let want = all
        .iter()
        .filter(|d| d.dlq_id.split('-').next().unwrap() >= since.as_str())
        .count();
    assert_eq!(n, want);

    // Dry runs count and change nothing; then requeue exactly the sms poison letters.
    let bulk = |action: &str, body: Value| {
        c.post(api.url(&format!("/api/v1/queues/dl/dead-letters/{action}")))
            .bearer_auth(ADMIN)
            .json(&body)
    };
    let filter = json!({"type": "sms.send", "reason": "poison"});
    let want = all
        .iter()
        .filter(|d| {
            d.get("type") == Some("sms.send") && d.get("dlq_reason").unwrap().starts_with("poison")
        })
        .count() as u64;
    let (s, o) = send(bulk("requeue", json!({"filter": filter, "dry_run": true}))).await;
    assert_eq!(s, 200);
    assert_eq!(
        (o["matched"].as_u64(), o["applied"].as_u64()),
        (Some(want), Some(0))
    );
    let dlq_len: u64 = r.xlen("ts:{dl}:dlq").unwrap();
    assert_eq!(dlq_len, 3000);
    let (s, o) = send(bulk("requeue", json!({"filter": filter}))).await;
    assert_eq!(s, 200, "{o}");
    assert_eq!(
        (o["matched"].as_u64(), o["applied"].as_u64()),
        (Some(want), Some(want))
    );
    let dlq_len: u64 = r.xlen("ts:{dl}:dlq").unwrap();
    let back: u64 = r.xlen("ts:{dl}:stream").unwrap();
    let back_ex: u64 = r.xlen("ts:{dl}:express").unwrap();
    assert_eq!(dlq_len, 3000 - want);
    assert_eq!(back + back_ex, want);
    // Express letters went back to the express lane, each with attempt 1.
    let ex_want = all
        .iter()
        .filter(|d| {
            d.get("type") == Some("sms.send")
                && d.get("dlq_reason").unwrap().starts_with("poison")
                && d.get("dlq_lane") == Some("express")
        })
        .count() as u64;
    assert_eq!(back_ex, ex_want);
    let entries: redis::streams::StreamRangeReply = r.xrange_all("ts:{dl}:stream").unwrap();
    for e in &entries.ids {
        assert_eq!(e.get::<String>("type").as_deref(), Some("sms.send"));
        assert_eq!(e.get::<String>("attempt").as_deref(), Some("1"));
        assert!(e.get::<String>("dlq_reason").is_none());
    }
    // Delete the one quota letter by id; everything else stays.
    let (s, o) = send(bulk("delete", json!({"filter": {"task_id": "task-1234"}}))).await;
    assert_eq!((s, o["applied"].as_u64()), (200, Some(1)), "{o}");
    assert!(search("error=quota".into()).await.is_empty());
    let after: u64 = r.xlen("ts:{dl}:dlq").unwrap();
    assert_eq!(after, dlq_len - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_start_list_show_abort() {
    let redis = RedisServer::start();
    let api = ServeProc::start(&serve_toml(&redis.url(), &["default"], "")).await;
    let c = client();
    let mut ids = HashSet::new();
    for i in 0..5 {
        let (s, v) = send(
            c.post(api.url("/api/v1/sagas"))
                .bearer_auth(ADMIN)
                .json(&json!({"saga": "demo", "input": {"n": i}})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        ids.insert(v["saga_id"].as_str().unwrap().to_string());
    }
    // Pages of 2 visit each running saga once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = api.url("/api/v1/sagas?state=running&limit=2");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={}", urlencode(c)));
        }
        let (s, v) = send(c.get(&url).bearer_auth(READ)).await;
        assert_eq!(s, 200, "{v}");
        for x in v["sagas"].as_array().unwrap() {
            seen.push(x["id"].as_str().unwrap().to_string());
        }
        match v["next_cursor"].as_str() {
            Some(n) => cursor = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), ids);
    let id = seen[0].clone();
    let (s, v) = send(
        c.get(api.url(&format!("/api/v1/sagas/{id}")))
            .bearer_auth(READ),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        (v["status"].as_str(), v["saga"].as_str()),
        (Some("running"), Some("demo"))
    );
    assert_eq!(v["history"][0]["event"], "start");
    let abort = || {
        c.post(api.url(&format!("/api/v1/sagas/{id}/abort")))
            .bearer_auth(ADMIN)
            .json(&json!({"reason": "test abort"}))
    };
    let (s, v) = send(abort()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "compensating");
    let (_, v) = send(
        c.get(api.url(&format!("/api/v1/sagas/{id}")))
            .bearer_auth(READ),
    )
    .await;
    let last = v["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event"], "abort", "{v}");
    assert!(last["detail"].as_str().unwrap().contains("test abort"));
    // Aborting a rollback changes nothing; the list by state moved it.
    let (s, v) = send(abort()).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("compensating")), "{v}");
    let (_, v) = send(
        c.get(api.url("/api/v1/sagas?state=compensating"))
            .bearer_auth(READ),
    )
    .await;
    assert_eq!(v["sagas"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_list_show_pause_resume_trigger() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [("TASKSTREAM_REDIS_URL", url.as_str())];
    for args in [
        &[
            "schedule",
            "set",
            "nightly",
            "--cron",
            "0 3 * * *",
            "--timezone",
            "Europe/Berlin",
            "--queue",
            "q",
            "--type",
            "report.build",
        ][..],
        &[
            "schedule", "set", "beat", "--every", "1h", "--queue", "q", "--type", "t",
        ][..],
    ] {
        let (code, out, err) = run_cli(args, &env);
        assert_eq!(code, 0, "{out}{err}");
    }
    let api = ServeProc::start(&serve_toml(&url, &["q"], "")).await;
    let c = client();
    // Pages of one visit both, by name.
    let (s, v) = send(
        c.get(api.url("/api/v1/schedules?limit=1"))
            .bearer_auth(READ),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["schedules"][0]["name"], "beat");
    assert_eq!(v["next_cursor"], "beat");
    let (_, v) = send(
        c.get(api.url("/api/v1/schedules?limit=1&cursor=beat"))
            .bearer_auth(READ),
    )
    .await;
    assert_eq!(v["schedules"][0]["name"], "nightly");
    assert_eq!(v["next_cursor"], Value::Null);
    // 03:00 in Berlin in December is 02:00 UTC.
    let show = || {
        c.get(api.url("/api/v1/schedules/nightly"))
            .bearer_auth(READ)
    };
    let (s, v) = send(show()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["definition"]["timezone"], "Europe/Berlin");
    let next = v["next_fire_ms"].as_u64().unwrap();
    assert!(next > taskstream::task::now_ms());
    assert_eq!(next / 1000 % 86_400, 2 * 3600, "{v}");
    assert_eq!(v["problems"], json!([]));

    let post = |path: &str, token: &str| {
        c.post(api.url(&format!("/api/v1/schedules/{path}")))
            .bearer_auth(token)
    };
    for path in ["nightly/pause", "nightly/resume", "nightly/trigger"] {
        let (s, v) = send(post(path, READ)).await;
        assert_eq!(s, 403, "read token on {path}: {v}");
    }
    let (s, v) = send(post("nightly/pause", ADMIN)).await;
    assert_eq!(
        (s, &v["paused"], &v["changed"]),
        (200, &json!(true), &json!(true)),
        "{v}"
    );
    let (_, v) = send(post("nightly/pause", ADMIN)).await;
    assert_eq!(v["changed"], false, "already paused");
    let mut conn = redis.sync_conn();
    let paused: Option<String> = conn.hget("ts:{q}:schedule:nightly", "paused").unwrap();
    assert_eq!(paused.as_deref(), Some("1"));
    let (_, v) = send(show()).await;
    assert_eq!(
        (&v["paused"], &v["next_fire_ms"]),
        (&json!(true), &Value::Null),
        "{v}"
    );
    let (s, v) = send(post("nightly/resume", ADMIN)).await;
    assert_eq!(
        (s, &v["paused"], &v["changed"]),
        (200, &json!(false), &json!(true)),
        "{v}"
    );

    let (s, v) = send(post("nightly/trigger", ADMIN)).await;
    assert_eq!(s, 202, "{v}");
    let task = v["task_id"].as_str().unwrap().to_string();
    assert!(task.starts_with("nightly@manual-"), "{v}");
    let (s, t) = send(
        c.get(api.url(&format!("/api/v1/queues/q/tasks/{}", urlencode(&task))))
            .bearer_auth(READ),
    )
    .await;
    assert_eq!(
        (s, &t["task_type"], &t["state"]),
        (200, &json!("report.build"), &json!("queued")),
        "{t}"
    );

    for (path, status) in [("nope", 404), ("bad%20name", 400), ("nope/pause", 404)] {
        let rq = if path.ends_with("pause") {
            post(path, ADMIN)
        } else {
            c.get(api.url(&format!("/api/v1/schedules/{path}")))
                .bearer_auth(READ)
        };
        let (s, v) = send(rq).await;
        assert_eq!(s, status, "{path}: {v}");
    }
    let (s, _) = send(c.get(api.url("/api/v1/schedules"))).await;
    assert_eq!(s, 401, "no token");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn serve_refuses_to_start_exposed_or_without_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let open = write_file(
        dir.path(),
        "open.toml",
        "[redis]\nurl = \"redis://127.0.0.1:1\"\n[api]\nlisten = \"0.0.0.0:0\"\n",
    );
    let (code, _, err) = run_cli(&["serve", "-c", open.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not a loopback address") && err.contains("[[api.tokens]]"),
        "{err}"
    );
    let missing = write_file(
        dir.path(),
        "missing.toml",
        "[redis]\nurl = \"redis://127.0.0.1:1\"\n[[api.tokens]]\nname = \"deployer\"\ntoken_env = \"TS_NOT_SET_ANYWHERE\"\nrole = \"admin\"\n",
    );
    let (code, _, err) = run_cli(&["serve", "-c", missing.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("\"deployer\"") && err.contains("TS_NOT_SET_ANYWHERE is not set"),
        "{err}"
    );
    let short = write_file(
        dir.path(),
        "short.toml",
        "[redis]\nurl = \"redis://127.0.0.1:1\"\n[[api.tokens]]\nname = \"d\"\ntoken_env = \"TS_SHORT\"\n",
    );
    let (code, _, err) = run_cli(
        &["serve", "-c", short.to_str().unwrap()],
        &[("TS_SHORT", "abc")],
    );
    assert_eq!(code, 1);
    assert!(err.contains("16-byte minimum"), "{err}");
    let both = write_file(
        dir.path(),
        "both.toml",
        "[[api.tokens]]\nname = \"d\"\ntoken_env = \"A\"\ntoken_file = \"/x\"\n",
    );
    let (code, _, err) = run_cli(&["config", "check", both.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("api.tokens[0]") && err.contains("exactly one"),
        "{err}"
    );
}

/// Runs `program args`; `None` when it cannot be started.
fn run_tool(program: &str, args: &[&str]) -> Option<std::process::Output> {
    std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .ok()
}

/// True when python3 can import `module`; under `CI=true` its absence fails the test.
fn python_has(module: &str) -> bool {
    let ok = run_tool("python3", &["-c", &format!("import {module}")])
        .is_some_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 module {module} is missing (pip install {}); .ci/run installs it",
            module.replace('_', "-")
        );
        eprintln!("SKIP: python3 module {module} is missing");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_is_valid_and_matches_the_router() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let api = ServeProc::start(&serve_toml(&redis.url(), &["q"], "")).await;
    let c = client();
    // The served document is the embedded one, and every route it names is routed.
    let (s, doc) = send(c.get(api.url("/api/v1/openapi.json"))).await;
    assert_eq!(s, 200);
    let embedded: Value = serde_json::from_str(taskstream::api::OPENAPI).unwrap();
    assert_eq!(doc, embedded);
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 16);
    for (path, ops) in paths {
        let concrete = path
            .replace("{queue}", "q")
            .replace("{task_id}", "t")
            .replace("{saga_id}", "s")
            .replace("{name}", "n");
        for method in ops.as_object().unwrap().keys() {
            let rq = match method.as_str() {
                "get" => c.get(api.url(&concrete)),
                "post" => c.post(api.url(&concrete)).json(&json!({})),
                m => panic!("undocumented method {m}"),
            };
            let r = rq.bearer_auth(READ).send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            assert!(
                status != 405 && !text.contains("no route"),
                "{method} {path} is documented but not routed: {status} {text}"
            );
            let documented = ops[method]["responses"].as_object().unwrap();
            assert!(
                documented.contains_key(&status.to_string()),
                "{method} {path} answered {status}, which its responses do not list: {text}"
            );
        }
    }

    // A real validator, then a schema-driven fuzzer against the live server.
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "openapi.json", taskstream::api::OPENAPI);
    if python_has("openapi_spec_validator") {
        let o = run_tool(
            "python3",
            &["-m", "openapi_spec_validator", file.to_str().unwrap()],
        )
        .unwrap();
        assert!(
            o.status.success(),
            "openapi-spec-validator: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    if python_has("schemathesis") {
        // Something to find: letters, tasks and a saga.
        let mut r = redis.sync_conn();
        for i in 0..20 {
            let _: String = r
                .xadd(
                    "ts:{q}:dlq",
                    "*",
                    &[
                        ("type", "t"),
                        ("payload", "{}"),
                        ("id", &format!("d{i}")),
                        ("dlq_reason", "exhausted"),
                        ("dlq_error", "boom"),
                    ],
                )
                .unwrap();
        }
        let url = api.url("/api/v1/openapi.json");
        let auth = format!("Authorization: Bearer {ADMIN}");
        let o = tokio::task::spawn_blocking(move || {
            // `timeout` bounds a hung run; the run itself takes ~20 s.
            run_tool(
                "timeout",
                &[
                    "300",
                    "python3",
                    "-m",
                    "schemathesis.cli",
                    "run",
                    &url,
                    "-H",
                    &auth,
                    "--checks",
                    "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection,positive_data_acceptance,unsupported_method,ignored_auth",
                    "--phases",
                    "fuzzing,stateful",
                    "--max-examples",
                    "40",
                    "--workers",
                    "1",
                    "--seed",
                    "12",
                ],
            )
        })
        .await
        .unwrap()
        .expect("run schemathesis");
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "schemathesis found problems:\n{out}");
        assert!(!api.log_text().contains("panicked"), "{}", api.log_text());
    }
}
