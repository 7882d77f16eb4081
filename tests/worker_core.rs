//! The worker core's rules that black-box use found broken (issue 10, items 1–5), each on
//! a real `redis-server` with real `taskstream worker` processes:
//! - default task ids are unique across the lanes of a queue;
//! - once a replica confirms a pause, nothing starts on it — not even what a read already
//!   blocked in Redis returns — and `queue pause` names the replicas that did not confirm;
//! - attempts count handler failures only: a run cut off by shutdown or a crash keeps its
//!   attempt, and a handed-back task is due at once;
//! - per-task numeric fields out of range are dead-lettered with the reason;
//! - a re-delivered entry settled before it runs drops its start marker.

mod common;

use std::time::Duration;

use common::*;
use taskstream::keys::QueueKeys;

fn xadd(c: &mut redis::Connection, stream: &str, id: &str, fields: &[(&str, &str)]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg(id);
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    cmd.query(c).unwrap()
}

fn record(key: &str, extra: &str) -> String {
    format!(r#"{{"key":"{key}"{extra}}}"#)
}

fn pending(c: &mut redis::Connection, stream: &str) -> u64 {
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg("taskstream")
        .query(c)
        .unwrap();
    match v {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            other => panic!("XPENDING summary: {other:?}"),
        },
        other => panic!("XPENDING: {other:?}"),
    }
}

fn dead_letters(
    c: &mut redis::Connection,
    q: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    let v: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(QueueKeys::new(q).dlq)
        .arg("-")
        .arg("+")
        .query(c)
        .unwrap();
    v.into_iter().map(|(_, f)| f).collect()
}

fn log_lines(c: &mut redis::Connection, key: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query(c)
        .unwrap()
}

/// Issue 10.1: a bulk and an express entry with the same entry id (as one MULTI writes
/// them in one millisecond) used to get the same default task id.
#[tokio::test]
async fn default_task_ids_are_unique_across_lanes() {
    let _g = heavy().await;
    let redis = RedisServer::start();
    let mut c = redis.sync_conn();
    let q = "ids";
    let k = QueueKeys::new(q);
    let id = format!("{}-7", taskstream::task::now_ms());
    let p = record("runs", "");
    let fields = [("type", "builtin.record"), ("payload", p.as_str())];
    xadd(&mut c, &k.stream, &id, &fields);
    xadd(&mut c, &k.express, &id, &fields);
    let w = WorkerProc::spawn(&worker_toml(&redis.url(), q, "", ""));
    let runs = poll("both tasks ran", Duration::from_secs(20), || {
        let e = executions(&mut c, "runs");
        async move { (e.values().sum::<u64>() >= 2).then_some(e) }
    })
    .await;
    let mut ids: Vec<_> = runs.keys().cloned().collect();
    ids.sort();
    let mut want = vec![id.clone(), format!("express:{id}")];
    want.sort();
    assert_eq!(ids, want, "{runs:?}");
    assert!(runs.values().all(|n| *n == 1), "{runs:?}");
    drop(w);
}

/// Issue 10.2: a read already blocked in Redis when the pause arrives must not start what
/// it returns once the replica confirmed the pause.
#[tokio::test]
async fn nothing_starts_after_a_replica_confirms_the_pause() {
    let _g = heavy().await;
    let redis = RedisServer::start();
    let mut c = redis.sync_conn();
    let url = redis.url();
    let q = "gate";
    let k = QueueKeys::new(q);
    // Long blocking reads: both lane readers sit in XREADGROUP BLOCK through the pause.
    let toml = worker_toml(&url, q, "", "").replace("block_ms = 200\n", "block_ms = 20000\n");
    let w = WorkerProc::spawn_named(&toml, "gate");
    let consumer = w.consumer();
    poll(
        "both lane readers blocked in XREADGROUP",
        Duration::from_secs(20),
        || {
            let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut c).unwrap();
            let blocked = list
                .lines()
                .filter(|l| l.contains(&format!("name=taskstream:{consumer}:reader")))
                .filter(|l| l.contains("cmd=xreadgroup"))
                .count();
            async move { (blocked >= 2).then_some(()) }
        },
    )
    .await;
    let (code, out, err) = run_cli(&["--redis-url", &url, "queue", "pause", q], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 live consumer(s) confirmed"), "{out}");
    let p = record("runs", "");
    for i in 0..3 {
        let id = format!("b{i}");
        xadd(
            &mut c,
            &k.stream,
            "*",
            &[("id", &id), ("type", "builtin.record"), ("payload", &p)],
        );
        let id = format!("e{i}");
        xadd(
            &mut c,
            &k.express,
            "*",
            &[("id", &id), ("type", "builtin.record"), ("payload", &p)],
        );
    }
    // The blocked reads return an entry each, to the paused replica.
    poll(
        "the blocked reads delivered",
        Duration::from_secs(20),
        || {
            let n = pending(&mut c, &k.stream) + pending(&mut c, &k.express);
            async move { (n >= 2).then_some(()) }
        },
    )
    .await;
    // Watch for half a second: a start would take a millisecond.
    let until = std::time::Instant::now() + Duration::from_millis(500);
    while std::time::Instant::now() < until {
        let e = executions(&mut c, "runs");
        assert!(
            e.is_empty(),
            "started on a replica that confirmed the pause: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // poll
    }
    let (code, out, err) = run_cli(&["--redis-url", &url, "queue", "resume", q], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let runs = poll(
        "every task ran after the resume",
        Duration::from_secs(20),
        || {
            let e = executions(&mut c, "runs");
            async move { (e.len() == 6).then_some(e) }
        },
    )
    .await;
    assert!(runs.values().all(|n| *n == 1), "{runs:?}");
    drop(w);
}

/// Issue 10.2: `queue pause` waits for every live replica and names those that did not
/// confirm (here one stopped with SIGSTOP), exiting with status 2.
#[tokio::test]
async fn queue_pause_names_replicas_that_did_not_confirm() {
    let _g = heavy().await;
    let redis = RedisServer::start();
    let mut c = redis.sync_conn();
    let url = redis.url();
    let q = "confirm";
    let toml = worker_toml(&url, q, "heartbeat_lapse_ms = 30000", "");
    let a = WorkerProc::spawn_named(&toml, "alive");
    let b = WorkerProc::spawn_named(&toml, "stopped");
    let key = QueueKeys::new(q).pause_acks;
    poll(
        "both replicas report their state",
        Duration::from_secs(20),
        || {
            let m: std::collections::HashMap<String, String> =
                redis::cmd("HGETALL").arg(&key).query(&mut c).unwrap();
            async move { (m.len() == 2).then_some(()) }
        },
    )
    .await;
    signal(b.pid(), "STOP");
    let (code, out, err) = run_cli(
        &["--redis-url", &url, "queue", "pause", q, "--wait", "1500ms"],
        &[],
    );
    signal(b.pid(), "CONT");
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains(&b.consumer()), "{err}");
    assert!(!err.contains(&a.consumer()), "{err}");
    assert!(
        err.contains("1 of 2 live consumer(s) did not confirm"),
        "{err}"
    );
    // Once it runs again it applies the pause.
    let (code, out, err) = run_cli(&["--redis-url", &url, "queue", "pause", q], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 live consumer(s) confirmed"), "{out}");
    let (code, out, _) = run_cli(
        &["--redis-url", &url, "queue", "pause", q, "--no-wait"],
        &[],
    );
    assert_eq!(code, 0);
    assert!(out.contains("not waiting"), "{out}");
}

/// Issue 10.3: a task longer than the grace period, cut off by three deploys in a row and
/// then by a crash, keeps its first attempt (max_attempts is 2), is handed back due at
/// once, and is never dead-lettered.
#[tokio::test]
async fn interrupted_runs_do_not_use_up_attempts() {
    let _g = heavy().await;
    let redis = RedisServer::start();
    let mut c = redis.sync_conn();
    let q = "deploys";
    let k = QueueKeys::new(q);
    let toml = worker_toml(
        &redis.url(),
        q,
        "shutdown_grace_ms = 200",
        "max_attempts = 2",
    );
    let p = record("runs", r#","ms":600000,"log":"starts""#);
    xadd(
        &mut c,
        &k.stream,
        "*",
        &[("id", "long"), ("type", "builtin.record"), ("payload", &p)],
    );
    let mut w = WorkerProc::spawn_named(&toml, "deploy");
    for run in 1..=3usize {
        if run > 1 {
            w.start();
        }
        poll("the long task started", Duration::from_secs(20), || {
            let n = log_lines(&mut c, "starts").len();
            async move { (n == run).then_some(()) }
        })
        .await;
        let before = taskstream::task::now_ms();
        assert_eq!(w.terminate(Duration::from_secs(20)), Some(0));
        // Handed back: in the schedule, due at once, on the same attempt.
        let back: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&k.scheduled)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query(&mut c)
            .unwrap();
        assert_eq!(
            back.len(),
            1,
            "handed back once: {back:?}\n{}",
            w.log_text()
        );
        let (member, due) = &back[0];
        assert!(member.contains(r#""attempt":"1""#), "{member}");
        assert!(
            *due as u64 <= taskstream::task::now_ms(),
            "no backoff: due {due}, stopped at {before}"
        );
        assert!(dead_letters(&mut c, q).is_empty());
    }
    // A crash: the next worker recovers the run, still on attempt 1.
    w.start();
    poll(
        "the long task started a fourth time",
        Duration::from_secs(20),
        || {
            let n = log_lines(&mut c, "starts").len();
            async move { (n == 4).then_some(()) }
        },
    )
    .await;
    w.kill9();
    w.start();
    poll("recovered after the crash", Duration::from_secs(30), || {
        let n = log_lines(&mut c, "starts").len();
        async move { (n == 5).then_some(()) }
    })
    .await;
    let attempts: Vec<String> = log_lines(&mut c, "starts")
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(attempts, vec!["1"; 5], "every run was attempt 1");
    assert!(dead_letters(&mut c, q).is_empty());
    let log = w.log_text();
    assert!(log.contains("handed back at once"), "{log}");
}

/// Issue 10.4: `backoff_cap_ms = 2^64-1` used to put a retry 10^19 ms away, silently.
#[tokio::test]
async fn out_of_range_numeric_fields_are_dead_lettered_with_the_reason() {
    let _g = heavy().await;
    let redis = RedisServer::start();
    let mut c = redis.sync_conn();
    let q = "bounds";
    let k = QueueKeys::new(q);
    let p = record("runs", "");
    let max = u64::MAX.to_string();
    let t = |id: &'static str, extra: (&'static str, &str)| {
        vec![
            ("id", id.to_string()),
            ("type", "builtin.record".to_string()),
            ("payload", p.clone()),
            (extra.0, extra.1.to_string()),
        ]
    };
    for fields in [
        t("huge-backoff", ("backoff_cap_ms", &max)),
        t("huge-base", ("backoff_base_ms", &max)),
        t("huge-timeout", ("timeout_ms", &max)),
        t("huge-attempts", ("max_attempts", "4294967295")),
        t("a-day", ("backoff_cap_ms", "86400000")),
    ] {
        let f: Vec<(&str, &str)> = fields.iter().map(|(a, b)| (*a, b.as_str())).collect();
        xadd(&mut c, &k.stream, "*", &f);
    }
    let w = WorkerProc::spawn(&worker_toml(&redis.url(), q, "", ""));
    let dead = poll("four dead letters", Duration::from_secs(20), || {
        let d = dead_letters(&mut c, q);
        async move { (d.len() == 4).then_some(d) }
    })
    .await;
    for (id, field) in [
        ("huge-backoff", "backoff_cap_ms"),
        ("huge-base", "backoff_base_ms"),
        ("huge-timeout", "timeout_ms"),
        ("huge-attempts", "max_attempts"),
    ] {
        let d = dead
            .iter()
            .find(|d| d.get("id").map(String::as_str) == Some(id))
            .unwrap_or_else(|| panic!("{id} not dead-lettered: {dead:?}"));
        let reason = &d["dlq_reason"];
        assert!(
            reason.contains(field) && reason.contains("outside"),
            "{id}: {reason}"
        );
    }
    poll("the in-range task ran", Duration::from_secs(20), || {
        let e = executions(&mut c, "runs");
        async move { (e.get("a-day") == Some(&1)).then_some(()) }
    })
    .await;
    assert_eq!(executions(&mut c, "runs").len(), 1);
    drop(w);
}

/// Issue 10.5: a re-delivered entry that is settled without running (cancelled, or
/// deleted while pending) left its `ts:{q}:starts` marker behind. The state a crashed
/// worker leaves is written by hand: entries in a dead consumer's pending list, each
/// with a start recorded by an earlier recovered run.
#[tokio::test]
async fn recovered_entries_settled_before_running_drop_their_start_marker() {
    let _g = heavy().await;
    let redis = RedisServer::start();
    let mut c = redis.sync_conn();
    let url = redis.url();
    let q = "markers";
    let k = QueueKeys::new(q);
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&k.stream)
        .arg("taskstream")
        .arg("0")
        .arg("MKSTREAM")
        .query(&mut c)
        .unwrap();
    let p = record("runs", "");
    let cancelled = xadd(
        &mut c,
        &k.stream,
        "*",
        &[
            ("id", "cancel-me"),
            ("type", "builtin.record"),
            ("payload", &p),
        ],
    );
    let deleted = xadd(
        &mut c,
        &k.stream,
        "*",
        &[
            ("id", "delete-me"),
            ("type", "builtin.record"),
            ("payload", &p),
        ],
    );
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("taskstream")
        .arg("ghost")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(&k.stream)
        .arg(">")
        .query(&mut c)
        .unwrap();
    for e in [&cancelled, &deleted] {
        let _: () = redis::cmd("HSET")
            .arg(&k.starts)
            .arg(e)
            .arg(1)
            .query(&mut c)
            .unwrap();
    }
    let _: () = redis::cmd("XDEL")
        .arg(&k.stream)
        .arg(&deleted)
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("ZADD")
        .arg(&k.heartbeats)
        .arg(1)
        .arg("ghost")
        .query(&mut c)
        .unwrap();
    let (code, out, err) = run_cli(
        &["--redis-url", &url, "task", "cancel", "cancel-me", "-q", q],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let w = WorkerProc::spawn(&worker_toml(&url, q, "", ""));
    poll("both entries settled", Duration::from_secs(20), || {
        let n = pending(&mut c, &k.stream);
        async move { (n == 0).then_some(()) }
    })
    .await;
    let left: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg(&k.starts).query(&mut c).unwrap();
    assert!(
        left.is_empty(),
        "start markers left behind: {left:?}\n{}",
        w.log_text()
    );
    assert!(executions(&mut c, "runs").is_empty(), "nothing ran");
}
