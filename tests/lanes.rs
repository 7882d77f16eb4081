//! Express lane, rate limits, cancel and pause/resume against real Redis.
#![cfg(feature = "cli")]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{poll, worker_toml, RedisServer, WorkerProc};
use taskstream::config::{Config, QueueConfig};
use taskstream::handler::{handler_fn, HandlerError, Registry, TaskContext};
use taskstream::keys::{Lane, QueueKeys};
use taskstream::producer::{NewTask, Producer};
use tokio_util::sync::CancellationToken;

fn config(url: &str, queue: &str, concurrency: usize, express: usize) -> Config {
    let mut c = Config::default();
    c.redis.url = url.to_string();
    c.http.listen = String::new();
    c.worker.block_ms = 200;
    c.worker.shutdown_grace_ms = 10_000;
    c.queues = vec![QueueConfig {
        name: queue.into(),
        concurrency,
        express_concurrency: express,
        backoff_base_ms: 20,
        backoff_cap_ms: 100,
        ..Default::default()
    }];
    c
}

fn start(
    cfg: Config,
    reg: Registry,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<taskstream::Result<()>>,
) {
    let stop = CancellationToken::new();
    let j = tokio::spawn(taskstream::worker::Worker::new(cfg, reg).run(stop.clone()));
    (stop, j)
}

#[tokio::test]
async fn express_tasks_start_before_any_further_bulk_task_behind_a_100k_backlog() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let q = "lanes";
    // 8 slots, 2 reserved for express: 6 bulk slots, all kept busy by bulk tasks that run
    // until the test releases them (no time window: a bulk slot frees only when we say so,
    // so any bulk start while express work waits means bulk took a reserved slot).
    let cfg = config(&redis.url(), q, 8, 2);
    let seq = Arc::new(AtomicU64::new(0));
    let starts: Arc<Mutex<Vec<(u64, Lane, String)>>> = Default::default();
    let release = CancellationToken::new();
    let mut reg = Registry::new();
    for (t, ms) in [("bulk.slow", None), ("urgent", Some(5u64))] {
        let (seq, starts, release) = (seq.clone(), starts.clone(), release.clone());
        reg.register(
            t,
            handler_fn(move |ctx: TaskContext| {
                let n = seq.fetch_add(1, Ordering::SeqCst);
                starts
                    .lock()
                    .unwrap()
                    .push((n, ctx.lane(), ctx.id().to_string()));
                let release = release.clone();
                async move {
                    let done = async {
                        match ms {
                            Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                            None => release.cancelled().await,
                        }
                    };
                    tokio::select! {
                        _ = done => {}
                        _ = ctx.cancellation().cancelled() => {}
                    }
                    Ok(serde_json::Value::Null)
                }
            }),
        );
    }
    let p = Producer::connect(&cfg).await.unwrap();
    for _ in 0..100 {
        let batch: Vec<_> = (0..1000)
            .map(|i| NewTask::new(q, "bulk.slow", &i).unwrap())
            .collect();
        p.enqueue_batch(batch).await.unwrap();
    }
    let (stop, j) = start(cfg.clone(), reg);
    let s = starts.clone();
    poll("all 6 bulk slots busy", Duration::from_secs(20), || {
        let n = s.lock().unwrap().len();
        async move { (n >= 6).then_some(()) }
    })
    .await;
    let bulk_before = starts.lock().unwrap().len();
    let enqueued_at = Instant::now();
    let mut express_ids = Vec::new();
    for i in 0..20 {
        express_ids.push(
            p.enqueue(NewTask::new(q, "urgent", &i).unwrap().express())
                .await
                .unwrap()
                .task_id,
        );
    }
    let s = starts.clone();
    let all_express_started = poll(
        "all 20 express tasks started",
        Duration::from_secs(20),
        || {
            let v = s.lock().unwrap().clone();
            async move { (v.iter().filter(|x| x.1 == Lane::Express).count() == 20).then_some(v) }
        },
    )
    .await;
    let express_latency = enqueued_at.elapsed();
    release.cancel();
    common::stop_within("the worker", &stop, j).await.unwrap();
    let last_express = all_express_started
        .iter()
        .filter(|x| x.1 == Lane::Express)
        .map(|x| x.0)
        .max()
        .unwrap();
    let bulk_between: Vec<_> = all_express_started
        .iter()
        .filter(|x| x.1 == Lane::Bulk && x.0 >= bulk_before as u64 && x.0 < last_express)
        .collect();
    assert!(
        bulk_between.is_empty(),
        "bulk tasks started while express work waited: {bulk_between:?}"
    );
    let mut conn = redis.conn().await;
    let backlog: u64 = redis::cmd("XLEN")
        .arg(QueueKeys::new(q).stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        backlog >= 99_000,
        "the bulk backlog was still there: {backlog}"
    );
    eprintln!("20 express tasks all started {express_latency:?} after enqueue, behind {backlog} bulk tasks");
}

#[tokio::test]
async fn rate_limit_holds_across_two_worker_processes() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let q = "rated";
    let toml = worker_toml(
        &redis.url(),
        q,
        "",
        "[queues.types.\"builtin.record\"]\nrate_per_sec = 20\nburst = 5\n",
    );
    let mut a = WorkerProc::spawn_named(&toml, "rate-a");
    let mut b = WorkerProc::spawn_named(&toml, "rate-b");
    let mut cfg = Config::default();
    cfg.redis.url = redis.url();
    let mut conn = redis.sync_conn();
    // Both replicas beat (so both read) before any work arrives.
    poll("both replicas are up", Duration::from_secs(30), || {
        let beats: Vec<String> = redis::cmd("ZRANGE")
            .arg(QueueKeys::new(q).heartbeats)
            .arg(0)
            .arg(-1)
            .query(&mut conn)
            .unwrap_or_default();
        let up = beats.contains(&a.consumer()) && beats.contains(&b.consumer());
        async move { up.then_some(()) }
    })
    .await;
    let p = Producer::connect(&cfg).await.unwrap();
    let n = 100;
    let batch: Vec<_> = (0..n)
        .map(|_| {
            NewTask::new(
                q,
                "builtin.record",
                &serde_json::json!({"key": "exec", "log": "starts"}),
            )
            .unwrap()
        })
        .collect();
    p.enqueue_batch(batch).await.unwrap();
    // Throttled tasks wait in their slots, so each replica's share shows as its pending
    // entries while the run goes on.
    let mut holders = std::collections::BTreeSet::new();
    let log: Vec<String> = poll(
        "all rate-limited tasks ran",
        Duration::from_secs(30),
        || {
            let summary: Vec<redis::Value> = redis::cmd("XPENDING")
                .arg(QueueKeys::new(q).stream)
                .arg("taskstream")
                .query(&mut conn)
                .expect("XPENDING summary");
            if let Some(redis::Value::Array(per_consumer)) = summary.get(3) {
                for c in per_consumer {
                    let (name, _n): (String, String) =
                        redis::from_redis_value_ref(c).expect("XPENDING consumer row");
                    holders.insert(name);
                }
            }
            let v: Vec<String> = redis::cmd("LRANGE")
                .arg("starts")
                .arg(0)
                .arg(-1)
                .query(&mut conn)
                .unwrap();
            async move { (v.len() >= n).then_some(v) }
        },
    )
    .await;
    let mut times: Vec<u64> = log
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    times.sort();
    // In any 1 s window at most rate + burst starts (+1 for window edges).
    let mut worst = 0;
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..].iter().take_while(|x| **x < t + 1000).count();
        worst = worst.max(in_window);
    }
    let span = times.last().unwrap() - times.first().unwrap();
    eprintln!("rate limit 20/s burst 5 over 2 processes: worst 1 s window {worst}, {n} tasks over {span} ms");
    assert!(worst <= 20 + 5 + 1, "worst 1 s window had {worst} starts");
    assert!(
        span >= (n as u64 - 5) * 1000 / 20 - 300,
        "100 tasks at 20/s cannot finish in {span} ms"
    );
    // Both replicas took part, and throttled tasks waited instead of failing.
    assert!(
        holders.contains(&a.consumer()) && holders.contains(&b.consumer()),
        "both replicas held work: {holders:?}"
    );
    let dlq: u64 = redis::cmd("XLEN")
        .arg("ts:{rated}:dlq")
        .query(&mut conn)
        .unwrap();
    assert_eq!(dlq, 0);
    assert_eq!(
        a.terminate(Duration::from_secs(20)),
        Some(0),
        "graceful exit"
    );
    assert_eq!(
        b.terminate(Duration::from_secs(20)),
        Some(0),
        "graceful exit"
    );
}

#[tokio::test]
async fn cancel_skips_queued_tasks_and_stops_running_ones() {
    let redis = RedisServer::start();
    let q = "cancel";
    let cfg = config(&redis.url(), q, 4, 1);
    let ran: Arc<Mutex<Vec<String>>> = Default::default();
    let saw_cancel: Arc<Mutex<Vec<String>>> = Default::default();
    let (r2, s2) = (ran.clone(), saw_cancel.clone());
    let mut reg = Registry::new();
    reg.register(
        "long",
        handler_fn(move |ctx: TaskContext| {
            let (r, s) = (r2.clone(), s2.clone());
            async move {
                r.lock().unwrap().push(ctx.id().to_string());
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(30)) => Ok(serde_json::Value::Null),
                    _ = ctx.cancellation().cancelled() => {
                        s.lock().unwrap().push(ctx.id().to_string());
                        Err(HandlerError::retryable("stopped"))
                    }
                }
            }
        }),
    );
    let p = Producer::connect(&cfg).await.unwrap();
    let mut conn = redis.conn().await;
    // Queued: cancelled before any worker runs.
    let queued = p
        .enqueue(NewTask::new(q, "long", &1).unwrap())
        .await
        .unwrap()
        .task_id;
    taskstream::signals::cancel_task(&mut conn, q, &queued)
        .await
        .unwrap();
    let (stop, j) = start(cfg.clone(), reg);
    let running = p
        .enqueue(NewTask::new(q, "long", &2).unwrap())
        .await
        .unwrap()
        .task_id;
    let r = ran.clone();
    let id = running.clone();
    poll(
        "the second task is running",
        Duration::from_secs(10),
        || {
            let ok = r.lock().unwrap().contains(&id);
            async move { ok.then_some(()) }
        },
    )
    .await;
    taskstream::signals::cancel_task(&mut conn, q, &running)
        .await
        .unwrap();
    let k = QueueKeys::new(q);
    poll("both settled as cancelled", Duration::from_secs(10), || {
        let mut c = conn.clone();
        let key = k.counters.clone();
        async move {
            let n: Option<u64> = redis::cmd("HGET")
                .arg(&key)
                .arg("cancelled")
                .query_async(&mut c)
                .await
                .unwrap();
            (n == Some(2)).then_some(())
        }
    })
    .await;
    common::stop_within("the worker", &stop, j).await.unwrap();
    assert!(
        !ran.lock().unwrap().contains(&queued),
        "a cancelled queued task never runs"
    );
    assert_eq!(
        saw_cancel.lock().unwrap().as_slice(),
        std::slice::from_ref(&running),
        "the running handler saw its cancellation"
    );
    let len: u64 = redis::cmd("XLEN")
        .arg(&k.stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    let sched: u64 = redis::cmd("ZCARD")
        .arg(&k.scheduled)
        .query_async(&mut conn)
        .await
        .unwrap();
    let dlq: u64 = redis::cmd("XLEN")
        .arg(&k.dlq)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        (len, sched, dlq),
        (0, 0, 0),
        "cancelled, not retried or dead-lettered"
    );
}

#[tokio::test]
async fn pause_and_resume_lose_nothing() {
    let redis = RedisServer::start();
    let q = "pausable";
    let mut cfg = config(&redis.url(), q, 8, 1);
    cfg.worker.consumer_name = Some("pausable-1".into());
    let done = Arc::new(AtomicU64::new(0));
    let d2 = done.clone();
    let mut reg = Registry::new();
    reg.register(
        "t",
        handler_fn(move |_ctx: TaskContext| {
            d2.fetch_add(1, Ordering::SeqCst);
            async { Ok(serde_json::Value::Null) }
        }),
    );
    let (stop, j) = start(cfg.clone(), reg);
    let p = Producer::connect(&cfg).await.unwrap();
    let mut conn = redis.conn().await;
    p.enqueue_batch(
        (0..100)
            .map(|i| NewTask::new(q, "t", &i).unwrap())
            .collect(),
    )
    .await
    .unwrap();
    let d = done.clone();
    poll("first 100 done", Duration::from_secs(10), || {
        let n = d.load(Ordering::SeqCst);
        async move { (n == 100).then_some(()) }
    })
    .await;
    taskstream::signals::pause(&mut conn, q).await.unwrap();
    let k = QueueKeys::new(q);
    poll(
        "the worker applied the pause",
        Duration::from_secs(10),
        || {
            let mut c = conn.clone();
            let key = k.pause_acks.clone();
            async move {
                let s: Option<String> = redis::cmd("HGET")
                    .arg(&key)
                    .arg("pausable-1")
                    .query_async(&mut c)
                    .await
                    .unwrap();
                (s.as_deref() == Some("paused")).then_some(())
            }
        },
    )
    .await;
    p.enqueue_batch(
        (0..500)
            .map(|i| NewTask::new(q, "t", &i).unwrap())
            .collect(),
    )
    .await
    .unwrap();
    // Give the paused worker time to misbehave: wait until it has beaten for a second past
    // the enqueue (five of its 200 ms read blocks), so a reader that ignored the pause
    // would have taken work by now.
    let enqueued_ms = taskstream::task::now_ms();
    poll(
        "the paused worker keeps beating for a second after the enqueue",
        Duration::from_secs(20),
        || {
            let mut c = conn.clone();
            let key = k.heartbeats.clone();
            async move {
                let beat: Option<f64> = redis::cmd("ZSCORE")
                    .arg(&key)
                    .arg("pausable-1")
                    .query_async(&mut c)
                    .await
                    .unwrap();
                beat.filter(|b| *b as u64 >= enqueued_ms + 1_000)
                    .map(|_| ())
            }
        },
    )
    .await;
    let len: u64 = redis::cmd("XLEN")
        .arg(&k.stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    let at_pause = done.load(Ordering::SeqCst);
    assert!(
        at_pause <= 101,
        "paused: at most the one entry of a read already in flight runs ({at_pause})"
    );
    assert!(len >= 499, "tasks wait in the stream while paused ({len})");
    let st = taskstream::stats::queue_stats(&mut conn, q, 1500)
        .await
        .unwrap();
    assert!(st.paused);
    taskstream::signals::resume(&mut conn, q).await.unwrap();
    let d = done.clone();
    poll("all 600 done after resume", Duration::from_secs(20), || {
        let n = d.load(Ordering::SeqCst);
        async move { (n == 600).then_some(()) }
    })
    .await;
    common::stop_within("the worker", &stop, j).await.unwrap();
}
