//! Issue 10.6: a Redis user without a permission the worker needs. Each refusal (`NOPERM`)
//! is logged at error level with the command and the `ACL SETUSER` that grants it (once
//! per command per 30 s), `/ready` answers 503 naming it, and the worker keeps retrying —
//! so once the permission is granted at runtime every task enqueued meanwhile runs and is
//! acknowledged, and `/ready` turns 200, with no restart.
//!
//! Real `redis-server`, real worker processes, the documented `ts-worker` role minus one
//! permission.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::{free_port, http_get, poll, worker_toml, RedisServer, WorkerProc};
use taskstream::config::Config;
use taskstream::producer::{NewTask, Producer};

/// Tasks enqueued while the permission is missing.
const N: usize = 40;

/// The README's `ACL SETUSER ts-worker …` line (between the acl markers).
fn worker_role() -> String {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = text
        .find("<!-- acl:begin")
        .expect("README has an acl block");
    text[start..]
        .lines()
        .find(|l| l.starts_with("ACL SETUSER ts-worker "))
        .expect("README documents the ts-worker role")
        .to_string()
}

/// Runs an `ACL SETUSER …` line (words separated by spaces) as the admin.
fn acl(admin: &mut redis::Connection, line: &str) {
    let args: Vec<&str> = line.split_whitespace().collect();
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    let _: () = c.query(admin).unwrap_or_else(|e| panic!("{line}: {e}"));
}

/// How many times Redis refused `object` to `user` (ACL LOG counts repeats in one entry).
fn refusals(admin: &mut redis::Connection, user: &str, object: &str) -> i64 {
    let log: Vec<HashMap<String, redis::Value>> =
        redis::cmd("ACL").arg("LOG").arg(100).query(admin).unwrap();
    let s = |m: &HashMap<String, redis::Value>, k: &str| {
        m.get(k)
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            .unwrap_or_default()
    };
    log.iter()
        .filter(|m| s(m, "username") == user && s(m, "object") == object)
        .map(|m| {
            m.get("count")
                .and_then(|v| redis::from_redis_value_ref::<i64>(v).ok())
                .unwrap_or(0)
        })
        .sum()
}

/// Pending entries of the default group on both lanes of `q`.
fn pending(admin: &mut redis::Connection, q: &str) -> i64 {
    ["stream", "express"]
        .iter()
        .map(|lane| {
            let v: redis::RedisResult<Vec<redis::Value>> = redis::cmd("XPENDING")
                .arg(format!("ts:{{{q}}}:{lane}"))
                .arg("taskstream")
                .query(admin);
            v.ok()
                .and_then(|v| v.into_iter().next())
                .and_then(|v| redis::from_redis_value::<i64>(v).ok())
                .unwrap_or(0)
        })
        .sum()
}

/// A worker for `q` as `ts-worker`, serving `/ready` on a free port; returns it and the
/// address.
fn worker(redis: &RedisServer, q: &str) -> (WorkerProc, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let url = format!("redis://ts-worker:WORKER_PASSWORD@127.0.0.1:{}", redis.port);
    let w = WorkerProc::spawn_env(
        &worker_toml(&url, q, "", ""),
        &[("TASKSTREAM_HTTP_LISTEN", &addr)],
    );
    (w, addr)
}

/// Enqueues `N` record tasks on `q` as the admin (the producer is not what is tested).
async fn enqueue(redis: &RedisServer, q: &str) {
    let mut cfg = Config::default();
    cfg.redis.url = redis.url();
    let p = Producer::connect(&cfg).await.unwrap();
    for i in 0..N {
        let key = format!("ts:{q}:exec");
        p.enqueue(
            NewTask::new(
                q,
                "builtin.record",
                &serde_json::json!({"key": key, "i": i}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    }
}

/// Polls `/ready` until it answers `status` with a body that satisfies `ok`.
async fn ready_until(
    w: &WorkerProc,
    addr: &str,
    what: &str,
    status: u16,
    ok: impl Fn(&str) -> bool,
) -> String {
    poll(what, Duration::from_secs(60), || {
        let r = http_get(addr, "/ready");
        let log = w.log_text();
        assert!(!log.contains("panicked"), "the worker panicked:\n{log}");
        let hit = r.filter(|(code, body)| *code == status && ok(body));
        async move { hit.map(|(_, body)| body) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_scripting_the_refusal_is_said_and_the_grant_resumes_the_worker() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let mut admin = redis.sync_conn();
    acl(&mut admin, &format!("{} -@scripting", worker_role()));
    let q = "np_script";
    let (mut w, addr) = worker(&redis, q);

    let body = ready_until(
        &w,
        &addr,
        "/ready is 503 and names the refused SCRIPT LOAD with its fix",
        503,
        |b| b.contains("SCRIPT LOAD"),
    )
    .await;
    assert!(body.contains("NOPERM"), "{body}");
    assert!(
        body.contains(r#"Redis refused SCRIPT LOAD for user "ts-worker" (NOPERM)"#),
        "{body}"
    );
    assert!(
        body.contains("ACL SETUSER ts-worker +script|load") && body.contains("+@scripting"),
        "the fix is on /ready: {body}"
    );
    assert!(
        !body.contains("consumer groups not created yet"),
        "the real reason, not the symptom: {body}"
    );

    // Enqueued while the worker cannot run them.
    enqueue(&redis, q).await;

    // It keeps retrying; the log says it at error level, once (not once per retry). One
    // attempt sends one SCRIPT LOAD per script and stops at the first refusal.
    poll(
        "the worker was refused SCRIPT LOAD in three attempts",
        Duration::from_secs(30),
        || {
            let n = refusals(&mut admin, "ts-worker", "script|load");
            async move { (n >= 3).then_some(()) }
        },
    )
    .await;
    let log = w.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Redis refused SCRIPT LOAD"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one error line per command per 30 s, however often it is retried:\n{log}"
    );
    assert!(lines[0].contains("ERROR"), "{}", lines[0]);
    assert!(
        lines[0].contains("ACL SETUSER ts-worker +script|load"),
        "{}",
        lines[0]
    );
    assert!(w.alive(), "the worker does not exit for it:\n{log}");
    assert!(
        common::executions(&mut admin, &format!("ts:{q}:exec")).is_empty(),
        "nothing could run yet"
    );

    // The grant, at runtime: everything enqueued meanwhile runs, and /ready turns 200.
    acl(&mut admin, "ACL SETUSER ts-worker +@scripting");
    poll(
        "every task enqueued without the permission ran",
        Duration::from_secs(60),
        || {
            let ex = common::executions(&mut admin, &format!("ts:{q}:exec"));
            async move { (ex.len() == N).then_some(()) }
        },
    )
    .await;
    ready_until(&w, &addr, "/ready turns 200 after the grant", 200, |_| true).await;
    poll(
        "every task is acknowledged",
        Duration::from_secs(30),
        || {
            let p = pending(&mut admin, q);
            async move { (p == 0).then_some(()) }
        },
    )
    .await;
    let log = w.log_text();
    assert!(log.contains("the refusal is cleared"), "{log}");
    assert!(w.alive(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_multi_exec_acks_are_refused_not_temporary_and_all_land_after_the_grant() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let mut admin = redis.sync_conn();
    acl(&mut admin, &format!("{} -multi -exec", worker_role()));
    let q = "np_multi";
    let (mut w, addr) = worker(&redis, q);
    // Nothing needs MULTI before the first ack: the worker starts and is ready.
    ready_until(&w, &addr, "the worker is ready", 200, |_| true).await;

    enqueue(&redis, q).await;
    let body = ready_until(
        &w,
        &addr,
        "/ready is 503 and names the refused MULTI with its fix",
        503,
        |b| b.contains("MULTI"),
    )
    .await;
    assert!(
        body.contains(r#"Redis refused MULTI for user "ts-worker" (NOPERM)"#),
        "{body}"
    );
    assert!(
        body.contains("ACL SETUSER ts-worker +multi") && body.contains("+@transaction"),
        "the fix is on /ready: {body}"
    );
    assert!(
        !body.contains("redis unreachable"),
        "a refusal is not an outage: {body}"
    );
    poll(
        "the worker's acks were refused a few times",
        Duration::from_secs(30),
        || {
            let n = refusals(&mut admin, "ts-worker", "multi");
            async move { (n >= 3).then_some(()) }
        },
    )
    .await;
    let log = w.log_text();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Redis refused MULTI"))
        .collect();
    assert_eq!(refused.len(), 1, "one error line per 30 s:\n{log}");
    assert!(refused[0].contains("ERROR"), "{}", refused[0]);
    assert!(
        !log.contains("ack failed, retrying") && !log.contains("ack gave up"),
        "a refused ack is not a passing Redis fault, and is not given up on:\n{log}"
    );

    acl(&mut admin, "ACL SETUSER ts-worker +multi +exec");
    ready_until(&w, &addr, "/ready turns 200 after the grant", 200, |_| true).await;
    poll(
        "every task ran and is acknowledged",
        Duration::from_secs(60),
        || {
            let ex = common::executions(&mut admin, &format!("ts:{q}:exec"));
            let p = pending(&mut admin, q);
            async move { (ex.len() == N && p == 0).then_some(ex) }
        },
    )
    .await;
    let ex = common::executions(&mut admin, &format!("ts:{q}:exec"));
    assert_eq!(
        ex.values().sum::<u64>(),
        N as u64,
        "each task ran once: {ex:?}"
    );
    let log = w.log_text();
    assert!(log.contains("the refusal is cleared"), "{log}");
    assert!(w.alive(), "{log}");
}
