//! Task results and state (issue 13.2) with a real worker process on a real Redis:
//! succeeded, retried, failed-then-dead, exhausted and cancelled tasks show the right
//! states, attempts and results through the library lookup, the CLI and a blocking wait;
//! progress reported by a running handler (and from outside, as the API does) is seen
//! while it runs; records expire after the TTL; a queue without `result_ttl_secs` writes
//! no record at all; bad settings are refused with the key.
#![cfg(feature = "cli")]

mod common;

use std::time::Duration;

use common::{executions, poll, run_cli, worker_toml, write_file, RedisServer, WorkerProc};
use serde_json::json;
use taskstream::config::Config;
use taskstream::inspect::Inspector;
use taskstream::lookup::TaskState;
use taskstream::producer::{NewTask, Producer};
use taskstream::results::RecordState;

fn task(queue: &str, ty: &str, payload: serde_json::Value) -> NewTask {
    NewTask::raw(queue, ty, payload.to_string())
}

/// Keys of `pattern` in Redis.
fn keys(conn: &mut redis::Connection, pattern: &str) -> Vec<String> {
    redis::cmd("KEYS").arg(pattern).query(conn).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_states_progress_waits_and_expiry() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let toml = worker_toml(&redis.url(), "res", "", "result_ttl_secs = 300")
        + "[[queues]]\nname = \"short\"\nconcurrency = 4\nexpress_concurrency = 1\nresult_ttl_secs = 2\n\
           [[queues]]\nname = \"nores\"\nconcurrency = 4\nexpress_concurrency = 1\nbackoff_base_ms = 20\nbackoff_cap_ms = 100\n";
    let _w = WorkerProc::spawn(&toml);
    let dir = tempfile::tempdir().unwrap();
    let cfg_file = write_file(dir.path(), "w.toml", &toml);
    let cfg = Config::parse("w.toml", &toml).unwrap();
    let p = Producer::connect(&cfg).await.unwrap();
    let insp = Inspector::new(taskstream::rdb::Broker::new(p.connection()));
    let mut conn = redis.sync_conn();
    let wait = Duration::from_secs(30);

    // Succeeded, with its result.
    let f = p
        .enqueue_and_wait(task("res", "builtin.echo", json!({"x": 1})), wait)
        .await
        .unwrap();
    assert_eq!(f.state, RecordState::Succeeded);
    assert_eq!(f.result, Some(json!({"x": 1})));
    assert_eq!(f.record.attempt, 1);
    let (enq, start, end) = (
        f.record.enqueued_at.unwrap(),
        f.record.started_at.unwrap(),
        f.record.finished_at.unwrap(),
    );
    assert!(enq <= start && start <= end, "{enq} {start} {end}");
    let info = insp.task("res", &f.task_id).await.unwrap().unwrap();
    assert_eq!(info.state, TaskState::Succeeded);
    assert_eq!(info.result.as_deref(), Some(r#"{"x":1}"#));
    assert_eq!(info.finished_at, Some(end));

    // Retried once, then succeeded: attempt 2, two executions.
    let f = p
        .enqueue_and_wait(
            task(
                "res",
                "builtin.record",
                json!({"key": "runs", "fail_until_attempt": 2}),
            ),
            wait,
        )
        .await
        .unwrap();
    assert_eq!(f.state, RecordState::Succeeded);
    assert_eq!(f.record.attempt, 2);
    assert_eq!(executions(&mut conn, "runs").get(&f.task_id), Some(&2));

    // A permanent failure is dead at once; a retryable one is dead when out of attempts.
    let f = p
        .enqueue_and_wait(
            task(
                "res",
                "builtin.record",
                json!({"key": "runs", "permanent": true}),
            ),
            wait,
        )
        .await
        .unwrap();
    assert_eq!(f.state, RecordState::Dead);
    assert_eq!(f.result, None);
    assert!(f
        .record
        .dead_reason
        .as_deref()
        .unwrap()
        .contains("permanent"));
    let info = insp.task("res", &f.task_id).await.unwrap().unwrap();
    assert_eq!(info.state, TaskState::Dead);
    assert!(info.entry_id.is_some(), "found in the dead-letter stream");
    assert!(info.finished_at.is_some(), "with the record's end time");
    let mut t = task(
        "res",
        "builtin.record",
        json!({"key": "runs", "fail_until_attempt": 99}),
    );
    t.max_attempts = Some(2);
    let f = p.enqueue_and_wait(t, wait).await.unwrap();
    assert_eq!(f.state, RecordState::Dead);
    assert_eq!(f.record.attempt, 2);
    assert!(f
        .record
        .dead_reason
        .as_deref()
        .unwrap()
        .contains("2 of 2 attempts"));
    assert_eq!(executions(&mut conn, "runs").get(&f.task_id), Some(&2));

    // A running task: its progress is seen while it runs (from the handler, then from
    // outside as the API reports it), two waiters (one by an idempotent duplicate) block
    // until it is cancelled, and both see the cancel.
    let sleeper = || {
        let mut t = task(
            "res",
            "builtin.sleep",
            json!({"ms": 60_000, "progress": {"step": 1}}),
        );
        t.idempotency_key = Some("sleeper".into());
        t
    };
    let (p1, p2) = (p.clone(), p.clone());
    let w1 = tokio::spawn(async move { p1.enqueue_and_wait(sleeper(), wait).await });
    let id = poll("the sleeper runs with its progress", wait, || {
        let insp = &insp;
        let mut conn = redis.sync_conn();
        async move {
            let id = keys(&mut conn, "ts:{res}:result:*")
                .into_iter()
                .filter_map(|k| k.strip_prefix("ts:{res}:result:").map(str::to_string))
                .find(|id| {
                    redis::cmd("HGET")
                        .arg(format!("ts:{{res}}:result:{id}"))
                        .arg("type")
                        .query::<Option<String>>(&mut conn)
                        .unwrap()
                        .as_deref()
                        == Some("builtin.sleep")
                })?;
            let i = insp.task("res", &id).await.unwrap()?;
            (i.state == TaskState::Running && i.progress.as_deref() == Some(r#"{"step":1}"#))
                .then_some(id)
        }
    })
    .await;
    let info = insp.task("res", &id).await.unwrap().unwrap();
    assert!(info.consumer.is_some() && info.started_at.is_some());
    assert!(insp
        .report_progress("res", &id, r#"{"step":2}"#)
        .await
        .unwrap());
    assert_eq!(
        insp.task("res", &id)
            .await
            .unwrap()
            .unwrap()
            .progress
            .as_deref(),
        Some(r#"{"step":2}"#)
    );
    assert!(!insp
        .report_progress("res", "no-such-task", "1")
        .await
        .unwrap());
    let w2 = tokio::spawn(async move { p2.enqueue_and_wait(sleeper(), wait).await });
    // Both waiters are blocked in BLMOVE before the cancel.
    poll("two blocked waiters", wait, || {
        let mut conn = redis.sync_conn();
        async move {
            let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
            (clients.matches("cmd=blmove").count() >= 2).then_some(())
        }
    })
    .await;
    assert!(
        !w1.is_finished(),
        "the first waiter returned before the end"
    );
    insp.cancel("res", &id).await.unwrap();
    for w in [w1, w2] {
        let f = w.await.unwrap().unwrap();
        assert_eq!(f.task_id, id);
        assert_eq!(f.state, RecordState::Cancelled);
    }
    assert_eq!(
        insp.task("res", &id).await.unwrap().unwrap().state,
        TaskState::Cancelled
    );

    // The CLI: enqueue --wait prints the result; task show prints state and result; a dead
    // task exits 1 with its error.
    let c = cfg_file.to_str().unwrap();
    let (code, out, err) = run_cli(
        &[
            "enqueue",
            "-c",
            c,
            "-q",
            "res",
            "-t",
            "builtin.echo",
            "-p",
            r#"{"y":2}"#,
            "--wait",
            "30s",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["result"], json!({"y": 2}));
    let tid = v["task_id"].as_str().unwrap().to_string();
    let (code, out, err) = run_cli(&["task", "show", &tid, "-q", "res", "-c", c], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("state     succeeded"), "{out}");
    assert!(out.contains(r#"result    {"y":2}"#), "{out}");
    let (code, out, err) = run_cli(
        &[
            "enqueue",
            "-c",
            c,
            "-q",
            "res",
            "-t",
            "builtin.record",
            "-p",
            r#"{"key":"runs","permanent":true}"#,
            "--wait",
        ],
        &[],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with("dead "), "{out}");
    assert!(err.contains("ended dead"), "{err}");

    // Records expire after the TTL (2 s on `short`), doorbell included.
    let f = p
        .enqueue_and_wait(task("short", "builtin.echo", json!(7)), wait)
        .await
        .unwrap();
    assert_eq!(f.result, Some(json!(7)));
    let rec = format!("ts:{{short}}:result:{}", f.task_id);
    let ttl: i64 = redis::cmd("PTTL").arg(&rec).query(&mut conn).unwrap();
    assert!(ttl > 0 && ttl <= 2000, "record TTL {ttl} ms");
    poll(
        "the record and doorbell expire",
        Duration::from_secs(15),
        || {
            let mut conn = redis.sync_conn();
            let done = format!("ts:{{short}}:done:{}", f.task_id);
            let rec = rec.clone();
            async move {
                let n: u64 = redis::cmd("EXISTS")
                    .arg(&rec)
                    .arg(&done)
                    .query(&mut conn)
                    .unwrap();
                (n == 0).then_some(())
            }
        },
    )
    .await;
    assert_eq!(insp.task("short", &f.task_id).await.unwrap(), None);

    // A queue without result_ttl_secs writes no record, and a wait on it times out with
    // an error that names the setting.
    let ids: Vec<String> = p
        .enqueue_batch(
            (0..50)
                .map(|_| task("nores", "builtin.record", json!({"key": "nores"})))
                .collect(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.task_id)
        .collect();
    poll("the nores tasks ran", wait, || {
        let mut conn = redis.sync_conn();
        let n = ids.len();
        async move { (executions(&mut conn, "nores").len() == n).then_some(()) }
    })
    .await;
    let e = p
        .enqueue_and_wait(
            task("nores", "builtin.echo", json!(1)),
            Duration::from_millis(1500),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, taskstream::Error::WaitTimeout { .. }), "{e:?}");
    assert!(e.to_string().contains("result_ttl_secs"), "{e}");
    assert_eq!(keys(&mut conn, "ts:{nores}:result:*"), Vec::<String>::new());
    assert_eq!(keys(&mut conn, "ts:{nores}:done:*"), Vec::<String>::new());
}

#[test]
fn bad_result_settings_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, needle) in [
        ("result_ttl_secs = 0", "queues[0].result_ttl_secs"),
        ("result_ttl_secs = 99999999", "queues[0].result_ttl_secs"),
        ("max_result_bytes = 0", "queues[0].max_result_bytes"),
    ] {
        let toml = worker_toml("redis://127.0.0.1:1", "q", "", extra);
        let f = write_file(dir.path(), "bad.toml", &toml);
        let (code, out, err) = run_cli(&["config", "check", f.to_str().unwrap()], &[]);
        assert_ne!(code, 0, "{extra}: {out}");
        assert!(err.contains(needle), "{extra}: {err}");
    }
}
