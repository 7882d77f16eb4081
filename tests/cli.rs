//! The CLI's papercuts (issue 10) on the real binary and a private Redis: producer bytes
//! cannot drive the terminal, a closed stdout ends quietly, `enqueue --json` has one
//! shape, truncated dead-letter lists say so, and enqueueing to a queue no live worker
//! serves warns (or refuses with `--strict`). Plus the inspector's signal round trip on
//! the wire.
#![cfg(feature = "cli")]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, poll, run_cli, worker_toml, RedisServer, WorkerProc};
use taskstream::inspect::Inspector;
use taskstream::rdb::Broker;
use taskstream::signal::{Signal, SignalError};

/// Writes a dead letter by hand, as the settle script would, with `fields`.
fn dead_letter(conn: &mut redis::Connection, queue: &str, fields: &[(&str, &str)]) {
    let mut c = redis::cmd("XADD");
    c.arg(format!("ts:{{{queue}}}:dlq")).arg("*");
    for (k, v) in fields {
        c.arg(*k).arg(*v);
    }
    let _: String = c.query(conn).unwrap();
}

#[test]
fn dlq_list_escapes_terminal_control_sequences() {
    let redis = RedisServer::start();
    let mut conn = redis.sync_conn();
    dead_letter(
        &mut conn,
        "esc",
        &[
            ("id", "t-1\x1b[2J"),
            ("type", "evil\x1b]0;pwned\x07"),
            ("payload", "{}"),
            ("dlq_reason", "failed: \x1b[31mred\u{9b}0m\u{202e}txt"),
            ("dlq_attempts", "1"),
        ],
    );
    let (code, out, err) = run_cli(
        &["--redis-url", &redis.url(), "dlq", "list", "-q", "esc"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    for bad in ['\x1b', '\x07', '\u{9b}', '\u{202e}'] {
        assert!(
            !out.contains(bad),
            "raw control character {bad:?} printed: {out:?}"
        );
    }
    assert!(out.contains("evil\\x1b]0;pwned\\x07"), "{out}");
    assert!(
        out.contains("failed: \\x1b[31mred\\x9b0m\\u{202e}txt"),
        "{out}"
    );
    assert!(out.contains("t-1\\x1b[2J"), "{out}");
    // JSON keeps the exact text (serde_json escapes control characters itself).
    let (code, out, _) = run_cli(
        &[
            "--redis-url",
            &redis.url(),
            "dlq",
            "list",
            "-q",
            "esc",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0);
    assert!(!out.contains('\x1b'), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["type"], "evil\x1b]0;pwned\x07");
}

/// Runs the binary with a stdout whose reading end is already closed, so its first
/// write fails with EPIPE; returns (exit code, stderr).
fn run_into_closed_pipe(args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(bin())
        .args(args)
        .env_remove("TASKSTREAM_REDIS_URL")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_command_exits_quietly_when_stdout_is_closed() {
    let redis = RedisServer::start();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write_file(dir.path(), "t.toml", &worker_toml(&url, "pipe", "", ""));
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = run_cli(&["-c", cfg, "saga", "start", "demo"], &[]);
    assert_eq!(code, 0, "{err}");
    let saga = out.trim().to_string();
    let mut conn = redis.sync_conn();
    for i in 0..3 {
        dead_letter(
            &mut conn,
            "pipe",
            &[("id", &format!("t{i}")), ("type", "x"), ("payload", "{}")],
        );
    }
    let cases: Vec<Vec<&str>> = vec![
        vec!["-c", cfg, "saga", "show", &saga],
        vec!["-c", cfg, "saga", "show", &saga, "--json"],
        vec!["-c", cfg, "saga", "list"],
        vec!["-c", cfg, "stats"],
        vec!["-c", cfg, "stats", "--json"],
        vec!["-c", cfg, "dlq", "list", "-q", "pipe"],
        vec!["-c", cfg, "enqueue", "-q", "pipe", "-t", "builtin.noop"],
        vec!["-c", cfg, "queue", "resume", "pipe"],
        vec!["config", "check", cfg],
    ];
    for args in cases {
        let (code, err) = run_into_closed_pipe(&args);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?} complained about the closed pipe: {err}"
        );
        assert_eq!(code, Some(0), "{args:?}: {err}");
    }
}

#[test]
fn enqueue_json_is_always_an_array() {
    let redis = RedisServer::start();
    for n in ["1", "3"] {
        let (code, out, err) = run_cli(
            &[
                "--redis-url",
                &redis.url(),
                "enqueue",
                "-q",
                "shape",
                "-t",
                "builtin.noop",
                "--count",
                n,
                "--json",
            ],
            &[],
        );
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let a = v
            .as_array()
            .unwrap_or_else(|| panic!("not an array: {out}"));
        assert_eq!(a.len().to_string(), n);
        assert!(a.iter().all(|t| t["task_id"].is_string()), "{out}");
    }
}

#[test]
fn dlq_list_says_when_it_shows_only_part() {
    let redis = RedisServer::start();
    let mut conn = redis.sync_conn();
    for i in 0..5 {
        dead_letter(
            &mut conn,
            "many",
            &[
                ("id", &format!("task-{i}")),
                ("type", "x"),
                ("payload", "{}"),
                ("dlq_reason", "failed: boom"),
            ],
        );
    }
    let url = redis.url();
    let list = |extra: &[&str]| {
        let mut a = vec!["--redis-url", &url, "dlq", "list", "-q", "many"];
        a.extend_from_slice(extra);
        run_cli(&a, &[])
    };
    let (code, out, err) = list(&["--limit", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("task-1") && !out.contains("task-2"), "{out}");
    assert!(
        err.contains("showing the oldest 2 of 5") && err.contains("--limit"),
        "{err}"
    );
    // --count is still accepted, and --json keeps its shape while stderr says it.
    let (code, out, err) = list(&["--count", "3", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert!(err.contains("showing the oldest 3 of 5"), "{err}");
    // Everything shown: no note.
    let (code, out, err) = list(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("task-4"), "{out}");
    assert!(!err.contains("showing"), "{err}");
    let (code, _, err) = list(&["--limit", "0"]);
    assert_ne!(code, 0, "--limit 0 is refused: {err}");
}

#[tokio::test]
async fn enqueue_to_a_queue_without_live_workers_warns_or_refuses() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut w = WorkerProc::spawn(&worker_toml(&url, "served", "", ""));
    let mut conn = redis.sync_conn();
    poll("worker heartbeats", Duration::from_secs(20), || {
        let n: u64 = redis::cmd("ZCARD")
            .arg("ts:{served}:heartbeats")
            .query(&mut conn)
            .unwrap();
        async move { (n > 0).then_some(()) }
    })
    .await;
    let enqueue = |q: &str, extra: &[&str]| {
        let mut a = vec![
            "--redis-url",
            &url,
            "enqueue",
            "-q",
            q,
            "-t",
            "builtin.noop",
        ];
        a.extend_from_slice(extra);
        run_cli(&a, &[])
    };
    let (code, out, err) = enqueue("served", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("enqueued "), "{out}");
    assert!(
        !err.contains("warning"),
        "a served queue gets no warning: {err}"
    );

    let (code, out, err) = enqueue("nosuchq", &[]);
    assert_eq!(code, 0, "a warning, not a failure: {err}");
    assert!(out.starts_with("enqueued "), "{out}");
    assert!(
        err.contains("warning: queue \"nosuchq\" is unknown") && err.contains("\"served\""),
        "names the typo and the queues that have live workers: {err}"
    );
    let (code, _, err) = enqueue("typo", &["--strict"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("\"typo\"") && err.contains("\"served\"") && err.contains("nothing enqueued"),
        "{err}"
    );
    let n: u64 = redis::cmd("XLEN")
        .arg("ts:{typo}:stream")
        .query(&mut conn)
        .unwrap();
    assert_eq!(n, 0, "--strict enqueued nothing");
    // A known queue whose workers are gone is named as such.
    assert_eq!(w.terminate(Duration::from_secs(20)), Some(0));
    let (code, _, err) = enqueue("served", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("\"served\" has no live worker"), "{err}");
}

#[tokio::test]
async fn signals_written_by_the_cli_read_back_typed_and_byte_identical() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (code, _, err) = run_cli(&["--redis-url", &url, "queue", "pause", "sig"], &[]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_cli(
        &["--redis-url", &url, "task", "cancel", "T-9", "-q", "sig"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_cli(&["--redis-url", &url, "queue", "resume", "sig"], &[]);
    assert_eq!(code, 0, "{err}");
    let mut sync = redis.sync_conn();
    // The wire format the workers read: kind, at, (task_id).
    let raw: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg("ts:{sig}:signals")
        .arg("-")
        .arg("+")
        .query(&mut sync)
        .unwrap();
    let names: Vec<Vec<&str>> = raw
        .iter()
        .map(|(_, f)| f.iter().step_by(2).map(String::as_str).collect())
        .collect();
    assert_eq!(
        names,
        vec![
            vec!["kind", "at"],
            vec!["kind", "at", "task_id"],
            vec!["kind", "at"]
        ]
    );
    assert_eq!(raw[1].1[5], "T-9");
    let paused: bool = redis::cmd("EXISTS")
        .arg("ts:{sig}:paused")
        .query(&mut sync)
        .unwrap();
    assert!(!paused, "resume cleared the pause flag");
    let _: String = redis::cmd("XADD")
        .arg("ts:{sig}:signals")
        .arg("*")
        .arg("kind")
        .arg("drain")
        .query(&mut sync)
        .unwrap();

    let insp = Inspector::new(Broker::new(redis.conn().await));
    let all = insp.signals("sig", "0", 100).await.unwrap();
    let got: Vec<_> = all.iter().map(|e| e.signal.clone()).collect();
    assert_eq!(
        got,
        vec![
            Ok(Signal::Pause),
            Ok(Signal::Cancel {
                task_id: "T-9".into()
            }),
            Ok(Signal::Resume),
            Err(SignalError::UnknownKind("drain".into())),
        ]
    );
    assert!(all[0].at_ms.is_some());
    // Reading after an id continues from there.
    let rest = insp.signals("sig", &all[1].entry_id, 100).await.unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[0].signal, Ok(Signal::Resume));
    // Pausing through the inspector sets the flag the stats show.
    insp.pause("sig").await.unwrap();
    assert!(insp.queue_stats("sig").await.unwrap().paused);
}
