//! The real `taskstream` binary as child processes: several workers sharing a queue,
//! Redis down at start, bad configuration, preflight, and the CLI's data commands.
#![cfg(feature = "cli")]

mod common;

use std::time::Duration;

use common::{executions, poll, run_cli, worker_toml, RedisServer, WorkerProc};

fn enqueue_records(url: &str, queue: &str, key: &str, n: usize, extra: &str) {
    let payload = format!(r#"{{"key":"{key}"{extra}}}"#);
    let (code, out, err) = run_cli(
        &[
            "--redis-url",
            url,
            "enqueue",
            "--queue",
            queue,
            "--type",
            "builtin.record",
            "--payload",
            &payload,
            "--count",
            &n.to_string(),
        ],
        &[],
    );
    assert_eq!(code, 0, "enqueue failed: {out}{err}");
    assert!(
        out.contains(&format!("enqueued {n} tasks")) || n == 1,
        "{out}"
    );
}

#[tokio::test]
async fn ten_thousand_tasks_over_three_workers_each_processed_once() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let toml = worker_toml(&redis.url(), "shared", "", "");
    // Each worker serves /metrics, so its own share of the work can be read back.
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", common::free_port()))
        .collect();
    let mut workers: Vec<WorkerProc> = addrs
        .iter()
        .map(|a| {
            WorkerProc::spawn(&toml.replace(
                "[http]\nlisten = \"\"",
                &format!("[http]\nlisten = \"{a}\""),
            ))
        })
        .collect();
    for a in &addrs {
        poll("every worker ready", Duration::from_secs(30), || {
            let ok = common::http_get(a, "/ready").is_some_and(|(s, _)| s == 200);
            async move { ok.then_some(()) }
        })
        .await;
    }
    enqueue_records(&redis.url(), "shared", "exec", 10_000, "");
    let mut conn = redis.sync_conn();
    poll("10,000 tasks processed", Duration::from_secs(60), || {
        let n: u64 = redis::cmd("HGET")
            .arg("ts:{shared}:counters")
            .arg("done")
            .query(&mut conn)
            .unwrap_or(0);
        async move { (n >= 10_000).then_some(()) }
    })
    .await;
    let mut conn = redis.sync_conn();
    let ex = executions(&mut conn, "exec");
    assert_eq!(ex.len(), 10_000, "every task ran");
    let twice: Vec<_> = ex.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "no task ran twice while all workers were healthy: {twice:?}"
    );
    // The work was shared: every worker consumed some of it.
    let info: redis::Value = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg("ts:{shared}:stream")
        .arg("taskstream")
        .query(&mut conn)
        .unwrap();
    let n_consumers = match info {
        redis::Value::Array(a) => a.len(),
        _ => 0,
    };
    assert_eq!(n_consumers, 3, "three consumers in the group");
    let shares: Vec<f64> = addrs
        .iter()
        .map(|a| {
            let (_, page) = common::http_get(a, "/metrics").expect("scrape a worker");
            common::prom_value(
                &page,
                "taskstream_tasks_completed_total",
                &[("queue", "shared"), ("outcome", "succeeded")],
            )
            .unwrap_or(0.0)
        })
        .collect();
    assert!(
        shares.iter().all(|n| *n > 0.0),
        "every worker consumed some: {shares:?}"
    );
    assert_eq!(
        shares.iter().sum::<f64>(),
        10_000.0,
        "the shares add up to the work: {shares:?}"
    );
    let len: u64 = redis::cmd("XLEN")
        .arg("ts:{shared}:stream")
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        len, 0,
        "stream memory bounded: only backlog and in-flight stay"
    );
    for w in &mut workers {
        assert_eq!(
            w.terminate(Duration::from_secs(20)),
            Some(0),
            "graceful exit code 0"
        );
    }
}

#[tokio::test]
async fn redis_down_at_start_retries_with_backoff_then_proceeds() {
    let mut redis = RedisServer::reserve();
    let toml = worker_toml(&redis.url(), "late", "", "");
    let mut w = WorkerProc::spawn(&toml);
    poll(
        "a clear log line about retrying",
        Duration::from_secs(20),
        || {
            let log = w.log_text();
            async move {
                log.contains("redis unreachable, retrying with backoff")
                    .then_some(())
            }
        },
    )
    .await;
    assert!(w.alive(), "the worker waits instead of exiting");
    redis.start_reserved();
    enqueue_records(&redis.url(), "late", "exec", 5, "");
    let mut conn = redis.sync_conn();
    poll(
        "tasks processed once Redis is up",
        Duration::from_secs(30),
        || {
            let n = executions(&mut conn, "exec").len();
            async move { (n == 5).then_some(()) }
        },
    )
    .await;
    assert!(w.log_text().contains("worker started"));
    assert_eq!(w.terminate(Duration::from_secs(20)), Some(0));
}

#[test]
fn bad_config_is_reported_with_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let typo = common::write_file(
        dir.path(),
        "typo.toml",
        "[worker]\nblock_ms = 100\nheartbeat_intervall_ms = 5\n",
    );
    let (code, _out, err) = run_cli(&["config", "check", typo.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("typo.toml:3:"), "{err}");
    assert!(err.contains("worker.heartbeat_intervall_ms"), "{err}");
    assert!(err.contains("unknown field"), "{err}");

    let bad = common::write_file(
        dir.path(),
        "bad.toml",
        "[redis]\nurl = \"http://x\"\n[[queues]]\nname = \"a:b\"\nconcurrency = 0\n",
    );
    let (code, out, _err) = run_cli(&["config", "check", bad.to_str().unwrap(), "--json"], &[]);
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let keys: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        vec!["redis.url", "queues[0].name", "queues[0].concurrency"]
    );
    assert!(v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["file"].as_str().unwrap().ends_with("bad.toml")));

    // The worker refuses the same file with the same report, and does not panic.
    let (code, _out, err) = run_cli(&["worker", "--config", bad.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("bad.toml: redis.url: must start with redis://"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let missing = dir.path().join("nope.toml");
    let (code, _out, err) = run_cli(&["config", "check", missing.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("nope.toml: -: cannot read the file"), "{err}");

    for good in [
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/taskstream.toml"),
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/taskstream-cluster.toml"
        ),
    ] {
        let (code, out, err) = run_cli(&["config", "check", good], &[]);
        assert_eq!(code, 0, "{good}: {out}{err}");
    }
}

#[test]
fn preflight_refuses_an_evicting_redis_when_asked() {
    let redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxmemory-policy",
        "allkeys-lru",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let toml = worker_toml(&redis.url(), "pf", "", "")
        .replace("[redis]\n", "[redis]\npreflight = \"refuse\"\n");
    let cfg = common::write_file(dir.path(), "pf.toml", &toml);
    let (code, _out, err) = run_cli(&["worker", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("maxmemory-policy is allkeys-lru"), "{err}");
    assert!(err.contains("appendonly is off"), "{err}");
}

#[tokio::test]
async fn cli_enqueue_stats_and_dlq_speak_json() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (code, out, err) = run_cli(
        &[
            "--redis-url",
            &url,
            "enqueue",
            "-q",
            "cli",
            "-t",
            "builtin.record",
            "-p",
            r#"{"key":"k","permanent":true}"#,
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // `enqueue --json` prints an array, one object per task, whatever `--count` is.
    let task_id = v[0]["task_id"].as_str().unwrap().to_string();
    let (code, out, _) = run_cli(
        &[
            "--redis-url",
            &url,
            "enqueue",
            "-q",
            "cli",
            "-t",
            "builtin.noop",
            "--delay",
            "1h",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()[0]["scheduled"],
        true
    );
    let (code, out, _) = run_cli(&["--redis-url", &url, "stats", "--json"], &[]);
    assert_eq!(code, 0);
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s[0]["queue"], "cli");
    assert_eq!(s[0]["bulk_length"], 1);
    assert_eq!(s[0]["scheduled"], 1);

    let toml = worker_toml(&url, "cli", "", "");
    let mut w = WorkerProc::spawn(&toml);
    let mut conn = redis.sync_conn();
    poll(
        "permanent failure dead-lettered",
        Duration::from_secs(20),
        || {
            let n: u64 = redis::cmd("XLEN")
                .arg("ts:{cli}:dlq")
                .query(&mut conn)
                .unwrap();
            async move { (n == 1).then_some(()) }
        },
    )
    .await;
    let (code, out, _) = run_cli(
        &["--redis-url", &url, "dlq", "list", "-q", "cli", "--json"],
        &[],
    );
    assert_eq!(code, 0);
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d[0]["id"], task_id.as_str());
    assert_eq!(d[0]["dlq_reason"], "failed: permanent error");
    let (code, _, err) = run_cli(&["--redis-url", &url, "dlq", "purge", "-q", "cli"], &[]);
    assert_ne!(code, 0, "purge needs --yes");
    assert!(err.contains("--yes"), "{err}");
    let (code, out, err) = run_cli(
        &[
            "--redis-url",
            &url,
            "dlq",
            "requeue",
            "-q",
            "cli",
            "--all",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["requeued"],
        1,
        "{out}{err}"
    );
    let mut conn = redis.sync_conn();
    poll(
        "requeued task ran again and died again",
        Duration::from_secs(20),
        || {
            let n: u64 = redis::cmd("HGET")
                .arg("k")
                .arg(&task_id)
                .query(&mut conn)
                .unwrap_or(0);
            let d: u64 = redis::cmd("XLEN")
                .arg("ts:{cli}:dlq")
                .query(&mut conn)
                .unwrap();
            async move { (n == 2 && d == 1).then_some(()) }
        },
    )
    .await;
    let (code, out, _) = run_cli(
        &[
            "--redis-url",
            &url,
            "dlq",
            "purge",
            "-q",
            "cli",
            "--yes",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["purged"],
        1
    );
    assert_eq!(w.terminate(Duration::from_secs(20)), Some(0));
}
