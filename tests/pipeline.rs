//! The core pipeline against real Redis: enqueue → process → ACK, retries, dead letters,
//! delays, idempotency, fan-out, graceful shutdown, raw wire-format producers.
#![cfg(feature = "cli")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{poll, RedisServer};
use redis::AsyncCommands;
use taskstream::config::{Config, QueueConfig};
use taskstream::handler::{handler_fn, HandlerError, Registry, TaskContext};
use taskstream::keys::QueueKeys;
use taskstream::producer::{NewTask, Producer};
use taskstream::task::now_ms;
use tokio_util::sync::CancellationToken;

fn config(url: &str, queue: &str) -> Config {
    let mut c = Config::default();
    c.redis.url = url.to_string();
    c.http.listen = String::new();
    c.worker.block_ms = 200;
    c.queues = vec![QueueConfig {
        name: queue.into(),
        concurrency: 16,
        express_concurrency: 2,
        backoff_base_ms: 40,
        backoff_cap_ms: 400,
        max_attempts: 3,
        ..Default::default()
    }];
    c
}

struct Running {
    stop: CancellationToken,
    join: tokio::task::JoinHandle<taskstream::Result<()>>,
}

impl Running {
    async fn shutdown(self) {
        common::stop_within("the worker", &self.stop, self.join)
            .await
            .unwrap();
    }
}

fn start(cfg: Config, reg: Registry) -> Running {
    let stop = CancellationToken::new();
    let w = taskstream::worker::Worker::new(cfg, reg);
    let join = tokio::spawn(w.run(stop.clone()));
    Running { stop, join }
}

/// Records (task id, attempt, start ms) of each execution.
type Log = Arc<Mutex<Vec<(String, u32, u64)>>>;

fn recording(log: &Log, fail_until: u32, permanent: bool) -> impl taskstream::Handler {
    let log = log.clone();
    handler_fn(move |ctx: TaskContext| {
        let log = log.clone();
        async move {
            log.lock()
                .unwrap()
                .push((ctx.id().to_string(), ctx.attempt(), now_ms()));
            if permanent {
                return Err(HandlerError::permanent("bad input"));
            }
            if ctx.attempt() < fail_until {
                return Err(HandlerError::retryable(format!(
                    "flaky on attempt {}",
                    ctx.attempt()
                )));
            }
            Ok(serde_json::json!({"ok": ctx.attempt()}))
        }
    })
}

async fn pending(conn: &mut taskstream::rdb::Conn, stream: &str) -> u64 {
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg("taskstream")
        .query_async(conn)
        .await
        .unwrap();
    match v {
        redis::Value::Array(a) => match a.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    }
}

#[tokio::test]
async fn enqueue_process_ack_leaves_nothing_behind() {
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), "q1");
    let log: Log = Default::default();
    let mut reg = Registry::new();
    reg.register("work", recording(&log, 0, false));
    let w = start(cfg.clone(), reg);
    let p = Producer::connect(&cfg).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(
            p.enqueue(NewTask::new("q1", "work", &serde_json::json!({"i": i})).unwrap())
                .await
                .unwrap()
                .task_id,
        );
    }
    let l = log.clone();
    poll("200 executions", Duration::from_secs(20), || {
        let n = l.lock().unwrap().len();
        async move { (n >= 200).then_some(()) }
    })
    .await;
    let mut conn = redis.conn().await;
    let k = QueueKeys::new("q1");
    poll(
        "stream empty and nothing pending",
        Duration::from_secs(10),
        || {
            let mut c = conn.clone();
            let s = k.stream.clone();
            async move {
                let len: u64 = c.xlen(&s).await.unwrap();
                (len == 0 && pending(&mut c, &s).await == 0).then_some(())
            }
        },
    )
    .await;
    w.shutdown().await;
    let got: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _, _)| id.clone())
        .collect();
    let mut sorted = got.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 200, "each task exactly once");
    assert_eq!(got.len(), 200, "no task twice");
    ids.sort();
    assert_eq!(ids, sorted);
    let done: u64 = conn.hget(&k.counters, "done").await.unwrap();
    assert_eq!(done, 200);
}

#[tokio::test]
async fn retries_back_off_then_succeed() {
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), "q2");
    let log: Log = Default::default();
    let mut reg = Registry::new();
    reg.register("flaky", recording(&log, 3, false));
    let w = start(cfg.clone(), reg);
    let p = Producer::connect(&cfg).await.unwrap();
    let id = p
        .enqueue(NewTask::new("q2", "flaky", &1).unwrap())
        .await
        .unwrap()
        .task_id;
    let l = log.clone();
    poll("3 attempts", Duration::from_secs(20), || {
        let n = l.lock().unwrap().len();
        async move { (n >= 3).then_some(()) }
    })
    .await;
    let mut conn = redis.conn().await;
    let k = QueueKeys::new("q2");
    poll("success acknowledged", Duration::from_secs(10), || {
        let mut c = conn.clone();
        let key = k.counters.clone();
        async move {
            (c.hget::<_, _, Option<u64>>(&key, "done").await.unwrap() == Some(1)).then_some(())
        }
    })
    .await;
    w.shutdown().await;
    let runs = log.lock().unwrap().clone();
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert!(runs.iter().all(|(i, _, _)| i == &id));
    assert_eq!(runs.iter().map(|r| r.1).collect::<Vec<_>>(), vec![1, 2, 3]);
    // Backoff: base 40 ms, jittered within [half, full] of base·2^(n-1).
    assert!(
        runs[1].2 - runs[0].2 >= 20,
        "first retry too early: {runs:?}"
    );
    assert!(
        runs[2].2 - runs[1].2 >= 40,
        "second retry too early: {runs:?}"
    );
    let dlq: u64 = conn.xlen(&k.dlq).await.unwrap();
    assert_eq!(dlq, 0);
}

#[tokio::test]
async fn exhausted_and_permanent_failures_are_dead_lettered_with_reasons() {
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), "q3");
    let log: Log = Default::default();
    let mut reg = Registry::new();
    reg.register("always_fails", recording(&log, 99, false));
    reg.register("bad_input", recording(&log, 0, true));
    reg.register("ok", recording(&log, 0, false));
    let w = start(cfg.clone(), reg);
    let p = Producer::connect(&cfg).await.unwrap();
    let a = p
        .enqueue(NewTask::new("q3", "always_fails", &serde_json::json!({"x": 1})).unwrap())
        .await
        .unwrap();
    let b = p
        .enqueue(NewTask::new("q3", "bad_input", &serde_json::json!({"y": 2})).unwrap())
        .await
        .unwrap();
    let mut conn = redis.conn().await;
    let k = QueueKeys::new("q3");
    poll("two dead letters", Duration::from_secs(20), || {
        let mut c = conn.clone();
        let d = k.dlq.clone();
        async move { (c.xlen::<_, u64>(&d).await.unwrap() == 2).then_some(()) }
    })
    .await;
    // The worker keeps going.
    p.enqueue(NewTask::new("q3", "ok", &0).unwrap())
        .await
        .unwrap();
    let l = log.clone();
    poll("the next task runs", Duration::from_secs(10), || {
        let n = l
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 != a.task_id && r.0 != b.task_id)
            .count();
        async move { (n == 1).then_some(()) }
    })
    .await;
    w.shutdown().await;
    let dl = taskstream::dlq::list(&mut conn, "q3", 10).await.unwrap();
    let ex = dl
        .iter()
        .find(|d| d.get("id") == Some(a.task_id.as_str()))
        .expect("exhausted task in DLQ");
    assert_eq!(
        ex.get("dlq_reason"),
        Some("exhausted: 3 of 3 attempts failed")
    );
    assert_eq!(ex.get("dlq_attempts"), Some("3"));
    assert_eq!(ex.get("dlq_error"), Some("flaky on attempt 3"));
    assert_eq!(ex.get("payload"), Some("{\"x\":1}"), "original fields kept");
    assert_eq!(ex.get("type"), Some("always_fails"));
    let pe = dl
        .iter()
        .find(|d| d.get("id") == Some(b.task_id.as_str()))
        .expect("permanent failure in DLQ");
    assert_eq!(pe.get("dlq_reason"), Some("failed: permanent error"));
    assert_eq!(pe.get("dlq_error"), Some("bad input"));
    assert_eq!(pe.get("dlq_attempts"), Some("1"));
    let runs_of_a = log
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.0 == a.task_id)
        .count();
    assert_eq!(runs_of_a, 3);
    // Requeue puts it back with a fresh attempt count.
    let id = ex.dlq_id.clone();
    assert_eq!(
        taskstream::dlq::requeue(&mut conn, "q3", &id)
            .await
            .unwrap(),
        1
    );
    let len: u64 = conn.xlen(&k.stream).await.unwrap();
    assert_eq!(len, 1);
    let e = taskstream::rdb::parse_entries(
        conn.xrange_all::<_, redis::Value>(&k.stream).await.unwrap(),
    );
    let t =
        taskstream::task::Task::decode(&e[0].id, e[0].fields.clone().unwrap(), 1 << 20).unwrap();
    assert_eq!((t.id.as_str(), t.attempt), (a.task_id.as_str(), 1));
    assert_eq!(taskstream::dlq::purge(&mut conn, "q3").await.unwrap(), 1);
}

#[tokio::test]
async fn malformed_entries_and_unknown_types_go_to_the_dlq_and_the_worker_carries_on() {
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), "q4");
    let log: Log = Default::default();
    let mut reg = Registry::new();
    reg.register("ok", recording(&log, 0, false));
    let w = start(cfg.clone(), reg);
    let mut conn = redis.conn().await;
    let k = QueueKeys::new("q4");
    let raw: &[&[(&str, &str)]] = &[
        &[("payload", "{}")],                             // no type
        &[("type", "ok")],                                // no payload
        &[("type", "ok"), ("payload", "{not json")],      // bad JSON
        &[("type", "ok"), ("payload", "1"), ("v", "99")], // future version
        &[("type", "has space"), ("payload", "1")],       // bad type
        &[("type", "ok"), ("payload", "1"), ("attempt", "-1")],
        &[("type", "nobody.serves.this"), ("payload", "{}")], // unknown type
    ];
    for fields in raw {
        let _: String = conn.xadd(&k.stream, "*", fields).await.unwrap();
    }
    let _: String = conn
        .xadd(
            &k.stream,
            "*",
            &[("type", "ok"), ("payload", "{\"fine\":true}")],
        )
        .await
        .unwrap();
    poll("7 dead letters", Duration::from_secs(20), || {
        let mut c = conn.clone();
        let d = k.dlq.clone();
        async move { (c.xlen::<_, u64>(&d).await.unwrap() == 7).then_some(()) }
    })
    .await;
    let l = log.clone();
    poll("the valid entry runs", Duration::from_secs(10), || {
        let n = l.lock().unwrap().len();
        async move { (n == 1).then_some(()) }
    })
    .await;
    w.shutdown().await;
    let dl = taskstream::dlq::list(&mut conn, "q4", 10).await.unwrap();
    let reasons: Vec<&str> = dl.iter().map(|d| d.get("dlq_reason").unwrap()).collect();
    assert!(reasons[0].contains("`type` is missing"), "{reasons:?}");
    assert!(reasons[1].contains("`payload` is missing"), "{reasons:?}");
    assert!(reasons[2].contains("not valid JSON"), "{reasons:?}");
    assert!(reasons[3].contains("version"), "{reasons:?}");
    assert!(reasons[4].contains("`type`"), "{reasons:?}");
    assert!(reasons[5].contains("`attempt`"), "{reasons:?}");
    assert!(
        reasons[6].contains("unknown task type \"nobody.serves.this\""),
        "{reasons:?}"
    );
    assert_eq!(dl[0].get("payload"), Some("{}"), "original fields kept");
    let len: u64 = conn.xlen(&k.stream).await.unwrap();
    assert_eq!(len, 0);
    assert_eq!(pending(&mut conn, &k.stream).await, 0);
}

#[tokio::test]
async fn raw_xadd_as_documented_is_processed() {
    // docs/wire-format.md, "Enqueue from any language": the minimal entry.
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), "orders");
    let seen: Arc<Mutex<Vec<(String, String, u32)>>> = Default::default();
    let s2 = seen.clone();
    let mut reg = Registry::new();
    reg.register(
        "send_email",
        handler_fn(move |ctx: TaskContext| {
            s2.lock().unwrap().push((
                ctx.id().to_string(),
                ctx.payload_str().to_string(),
                ctx.attempt(),
            ));
            async { Ok(serde_json::Value::Null) }
        }),
    );
    let w = start(cfg, reg);
    let mut sync = redis.sync_conn();
    let _: String = redis::cmd("XADD")
        .arg("ts:{orders}:stream")
        .arg("*")
        .arg("v")
        .arg("1")
        .arg("id")
        .arg("order-1001-email")
        .arg("type")
        .arg("send_email")
        .arg("payload")
        .arg(r#"{"to":"ada@example.com"}"#)
        .query(&mut sync)
        .unwrap();
    let s = seen.clone();
    poll("raw entry processed", Duration::from_secs(10), || {
        let n = s.lock().unwrap().len();
        async move { (n == 1).then_some(()) }
    })
    .await;
    w.shutdown().await;
    assert_eq!(
        seen.lock().unwrap()[0],
        (
            "order-1001-email".to_string(),
            r#"{"to":"ada@example.com"}"#.to_string(),
            1
        )
    );
}

#[tokio::test]
async fn delayed_task_does_not_run_before_its_time() {
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), "q5");
    let log: Log = Default::default();
    let mut reg = Registry::new();
    reg.register("later", recording(&log, 0, false));
    let w = start(cfg.clone(), reg);
    let p = Producer::connect(&cfg).await.unwrap();
    let before = now_ms();
    let e = p
        .enqueue(
            NewTask::new("q5", "later", &1)
                .unwrap()
                .delay(Duration::from_millis(800)),
        )
        .await
        .unwrap();
    assert!(e.scheduled && e.entry_id.is_none());
    let mut conn = redis.conn().await;
    let sched: u64 = conn.zcard(QueueKeys::new("q5").scheduled).await.unwrap();
    assert_eq!(sched, 1);
    let l = log.clone();
    poll("delayed task runs", Duration::from_secs(10), || {
        let n = l.lock().unwrap().len();
        async move { (n == 1).then_some(()) }
    })
    .await;
    w.shutdown().await;
    let ran = log.lock().unwrap()[0].2;
    assert!(
        ran >= before + 800,
        "ran {} ms after enqueue, before the 800 ms delay",
        ran - before
    );
}

#[tokio::test]
async fn idempotency_key_dedupes_within_the_window() {
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), "q6");
    let p = Producer::connect(&cfg).await.unwrap();
    let t = || {
        NewTask::new("q6", "charge", &serde_json::json!({"order": 7}))
            .unwrap()
            .idempotency_key("order-7")
    };
    let a = p.enqueue(t()).await.unwrap();
    let b = p.enqueue(t()).await.unwrap();
    let batch = p
        .enqueue_batch(vec![
            t(),
            t(),
            NewTask::new("q6", "charge", &1)
                .unwrap()
                .idempotency_key("order-8"),
        ])
        .await
        .unwrap();
    assert!(!a.duplicate && a.entry_id.is_some());
    assert!(b.duplicate);
    assert_eq!(
        b.task_id, a.task_id,
        "a duplicate answers with the first task's id"
    );
    assert!(batch[0].duplicate && batch[1].duplicate && !batch[2].duplicate);
    let mut conn = redis.conn().await;
    let len: u64 = conn.xlen(QueueKeys::new("q6").stream).await.unwrap();
    assert_eq!(len, 2, "two distinct keys, two entries");
    // Delayed enqueues dedupe too.
    let d1 = p
        .enqueue(
            NewTask::new("q6", "x", &1)
                .unwrap()
                .idempotency_key("k9")
                .delay(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let d2 = p
        .enqueue(
            NewTask::new("q6", "x", &1)
                .unwrap()
                .idempotency_key("k9")
                .delay(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert!(d1.scheduled && d2.duplicate);
    let ttl: i64 = conn
        .pttl(QueueKeys::new("q6").idem("order-7"))
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl <= 86_400_000,
        "key expires with the window: {ttl}"
    );
}

#[tokio::test]
async fn oversized_and_invalid_enqueues_are_refused_clearly() {
    let redis = RedisServer::start();
    let mut cfg = config(&redis.url(), "q7");
    cfg.producer.max_payload_bytes = 1024;
    let p = Producer::connect(&cfg).await.unwrap();
    let big = "x".repeat(2000);
    let e = p
        .enqueue(NewTask::new("q7", "t", &big).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("2002 bytes, above the 1024-byte limit"), "{e}");
    let e = p
        .enqueue(NewTask::raw("q7", "t", "{oops"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not valid JSON"), "{e}");
    let e = p
        .enqueue(NewTask::raw("bad{queue}", "t", "1"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("queue name"), "{e}");
    let e = p
        .enqueue(NewTask::raw("q7", "bad type", "1"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("task type"), "{e}");
    let mut conn = redis.conn().await;
    let n: u64 = conn.xlen(QueueKeys::new("q7").stream).await.unwrap();
    assert_eq!(n, 0, "nothing refused was written");
}

#[tokio::test]
async fn fan_out_groups_each_receive_every_task() {
    let redis = RedisServer::start();
    let mut main_cfg = config(&redis.url(), "q8");
    main_cfg.queues[0].fanout_groups = vec!["audit".into()];
    let mut audit_cfg = main_cfg.clone();
    audit_cfg.queues[0].group = "audit".into();
    let (main_log, audit_log): (Log, Log) = Default::default();
    let mut r1 = Registry::new();
    r1.register("evt", recording(&main_log, 0, false));
    let mut r2 = Registry::new();
    r2.register("evt", recording(&audit_log, 2, false)); // the audit group retries once
    let w1 = start(main_cfg.clone(), r1);
    let w2 = start(audit_cfg, r2);
    let p = Producer::connect(&main_cfg).await.unwrap();
    let n = 100;
    let batch: Vec<_> = (0..n)
        .map(|i| NewTask::new("q8", "evt", &i).unwrap())
        .collect();
    p.enqueue_batch(batch).await.unwrap();
    let (a, b) = (main_log.clone(), audit_log.clone());
    poll("both groups got all tasks", Duration::from_secs(20), || {
        let ma = a.lock().unwrap().len();
        let au = b.lock().unwrap().iter().filter(|r| r.1 == 2).count();
        async move { (ma >= n && au >= n).then_some(()) }
    })
    .await;
    let conn = redis.conn().await;
    let k = QueueKeys::new("q8");
    poll(
        "stream trimmed behind both groups",
        Duration::from_secs(10),
        || {
            let mut c = conn.clone();
            let s = k.stream.clone();
            async move { (c.xlen::<_, u64>(&s).await.unwrap() == 0).then_some(()) }
        },
    )
    .await;
    w1.shutdown().await;
    w2.shutdown().await;
    assert_eq!(
        main_log.lock().unwrap().len(),
        n,
        "main group: each once (the audit retry is not re-delivered to it)"
    );
    assert_eq!(
        audit_log.lock().unwrap().len(),
        2 * n,
        "audit group: each twice (one retry)"
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_and_acks_running_tasks() {
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), "q9");
    let done: Arc<Mutex<Vec<String>>> = Default::default();
    let started: Arc<Mutex<usize>> = Default::default();
    let (d2, s2) = (done.clone(), started.clone());
    let mut reg = Registry::new();
    reg.register(
        "slow",
        handler_fn(move |ctx: TaskContext| {
            let (d, s) = (d2.clone(), s2.clone());
            async move {
                *s.lock().unwrap() += 1;
                tokio::time::sleep(Duration::from_millis(400)).await;
                d.lock().unwrap().push(ctx.id().to_string());
                Ok(serde_json::Value::Null)
            }
        }),
    );
    let w = start(cfg.clone(), reg);
    let p = Producer::connect(&cfg).await.unwrap();
    let batch: Vec<_> = (0..10)
        .map(|i| NewTask::new("q9", "slow", &i).unwrap())
        .collect();
    p.enqueue_batch(batch).await.unwrap();
    let s = started.clone();
    poll("all 10 running", Duration::from_secs(10), || {
        let n = *s.lock().unwrap();
        async move { (n == 10).then_some(()) }
    })
    .await;
    let t0 = Instant::now();
    w.shutdown().await;
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(
        done.lock().unwrap().len(),
        10,
        "in-flight tasks finished before exit"
    );
    let mut conn = redis.conn().await;
    let k = QueueKeys::new("q9");
    assert_eq!(
        pending(&mut conn, &k.stream).await,
        0,
        "and were acknowledged"
    );
    let len: u64 = conn.xlen(&k.stream).await.unwrap();
    assert_eq!(len, 0);
    let consumers: redis::Value = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&k.stream)
        .arg("taskstream")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        consumers,
        redis::Value::Array(vec![]),
        "a clean exit removes its consumer"
    );
}

#[tokio::test]
async fn handler_timeout_and_panic_are_retryable_failures() {
    let redis = RedisServer::start();
    let mut cfg = config(&redis.url(), "q10");
    cfg.queues[0].timeout_ms = 100;
    cfg.queues[0].max_attempts = 2;
    let mut reg = Registry::new();
    reg.register(
        "hang",
        handler_fn(|ctx: TaskContext| async move {
            ctx.cancellation().cancelled().await;
            Err(HandlerError::retryable("saw cancellation"))
        }),
    );
    reg.register(
        "boom",
        handler_fn(|_ctx: TaskContext| async move { panic!("kaboom") }),
    );
    let w = start(cfg.clone(), reg);
    let p = Producer::connect(&cfg).await.unwrap();
    p.enqueue(NewTask::new("q10", "hang", &1).unwrap())
        .await
        .unwrap();
    p.enqueue(NewTask::new("q10", "boom", &1).unwrap())
        .await
        .unwrap();
    let mut conn = redis.conn().await;
    let k = QueueKeys::new("q10");
    poll(
        "both dead-lettered after 2 attempts",
        Duration::from_secs(20),
        || {
            let mut c = conn.clone();
            let d = k.dlq.clone();
            async move { (c.xlen::<_, u64>(&d).await.unwrap() == 2).then_some(()) }
        },
    )
    .await;
    w.shutdown().await;
    let dl = taskstream::dlq::list(&mut conn, "q10", 10).await.unwrap();
    let errs: Vec<&str> = dl.iter().map(|d| d.get("dlq_error").unwrap()).collect();
    assert!(
        errs.iter().any(|e| e.contains("timed out after 100 ms")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("handler panicked: kaboom")),
        "{errs:?}"
    );
}

/// The producer's connections named `…:producer` in `CLIENT LIST`.
fn producer_clients(c: &mut redis::Connection) -> usize {
    let list: String = redis::cmd("CLIENT").arg("LIST").query(c).unwrap();
    list.lines().filter(|l| l.contains(":producer ")).count()
}

/// A dropped producer closes its connection: its name-refresh loop used to hold a handle
/// on it forever, so an application that made a producer per request leaked a
/// connection and a task each time.
#[tokio::test]
async fn a_dropped_producer_closes_its_connection() {
    let redis = RedisServer::start();
    let mut c = redis.sync_conn();
    let mut cfg = Config::default();
    cfg.redis.url = redis.url();
    for _ in 0..3 {
        let p = Producer::connect(&cfg).await.unwrap();
        p.enqueue(NewTask::raw("drop", "t", "{}")).await.unwrap();
        let clone = p.clone();
        drop(p);
        clone
            .enqueue(NewTask::raw("drop", "t", "{}"))
            .await
            .unwrap();
        assert_eq!(producer_clients(&mut c), 1, "a clone keeps the connection");
        drop(clone);
        poll(
            "the producer's connection closed",
            Duration::from_secs(10),
            || {
                let n = producer_clients(&mut c);
                async move { (n == 0).then_some(()) }
            },
        )
        .await;
    }
}
