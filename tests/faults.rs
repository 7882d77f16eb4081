//! Fault tests with real processes and a real Redis; every task is counted.
//!
//! Each scenario asserts that every enqueue the producer saw succeed was executed (or
//! dead-lettered with a reason), that nothing is left in the stream or pending, and that
//! duplicates happen only to tasks that were in flight on a killed process.
#![cfg(feature = "cli")]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{executions, poll, worker_toml, RedisServer, WorkerProc};
use taskstream::config::Config;
use taskstream::producer::{NewTask, Producer};

fn producer_cfg(url: &str) -> Config {
    let mut c = Config::default();
    c.redis.url = url.to_string();
    c.redis.response_timeout_ms = 1000;
    c
}

fn record(queue: &str, key: &str, ms: u64) -> NewTask {
    NewTask::new(
        queue,
        "builtin.record",
        &serde_json::json!({"key": key, "ms": ms}),
    )
    .unwrap()
}

async fn enqueue_all(p: &Producer, queue: &str, key: &str, n: usize, ms: u64) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<_> = chunk.iter().map(|_| record(queue, key, ms)).collect();
        ids.extend(
            p.enqueue_batch(batch)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.task_id),
        );
    }
    ids
}

fn counter(conn: &mut redis::Connection, queue: &str, field: &str) -> u64 {
    redis::cmd("HGET")
        .arg(format!("ts:{{{queue}}}:counters"))
        .arg(field)
        .query::<Option<u64>>(conn)
        .unwrap_or(None)
        .unwrap_or(0)
}

/// Task ids of the entries pending for `consumer` (read right after killing it, before
/// recovery claims them: the heartbeat lapse leaves more than a second).
fn pending_task_ids(conn: &mut redis::Connection, queue: &str, consumer: &str) -> HashSet<String> {
    let stream = format!("ts:{{{queue}}}:stream");
    let pend: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("taskstream")
        .arg("-")
        .arg("+")
        .arg(100_000)
        .arg(consumer)
        .query(conn)
        .unwrap();
    let mut out = HashSet::new();
    for (id, ..) in pend {
        let v: redis::Value = redis::cmd("XRANGE")
            .arg(&stream)
            .arg(&id)
            .arg(&id)
            .query(conn)
            .unwrap();
        for e in taskstream::rdb::parse_entries(v) {
            if let Some(f) = e.fields {
                if let Some((_, v)) = f.iter().find(|(k, _)| k == b"id") {
                    out.insert(String::from_utf8_lossy(v).into_owned());
                }
            }
        }
    }
    out
}

/// Waits until every id ran and the queue is empty (stream, pending, schedule).
async fn wait_all_done(
    redis: &RedisServer,
    queue: &str,
    key: &str,
    ids: &[String],
    timeout: Duration,
) -> HashMap<String, u64> {
    let mut conn = redis.sync_conn();
    let want: HashSet<&String> = ids.iter().collect();
    poll(
        "every acknowledged enqueue executed and the queue drained",
        timeout,
        || {
            let ex = executions(&mut conn, key);
            let all = want.iter().all(|id| ex.contains_key(*id));
            let len: u64 = redis::cmd("XLEN")
                .arg(format!("ts:{{{queue}}}:stream"))
                .query(&mut conn)
                .unwrap();
            let sched: u64 = redis::cmd("ZCARD")
                .arg(format!("ts:{{{queue}}}:scheduled"))
                .query(&mut conn)
                .unwrap();
            async move { (all && len == 0 && sched == 0).then_some(ex) }
        },
    )
    .await
}

fn assert_no_dead_letters(conn: &mut redis::Connection, queue: &str) {
    let n: u64 = redis::cmd("XLEN")
        .arg(format!("ts:{{{queue}}}:dlq"))
        .query(conn)
        .unwrap();
    assert_eq!(n, 0, "nothing dead-lettered");
}

#[tokio::test]
async fn worker_crashes_lose_nothing_and_duplicate_only_in_flight_tasks() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let q = "crash";
    let toml = worker_toml(&redis.url(), q, "", "");
    let mut workers: Vec<WorkerProc> = (0..3)
        .map(|i| WorkerProc::spawn_named(&toml, &format!("w{i}")))
        .collect();
    let p = Producer::connect(&producer_cfg(&redis.url()))
        .await
        .unwrap();
    let ids = enqueue_all(&p, q, "exec", 20_000, 1).await;
    let mut conn = redis.sync_conn();
    let mut in_flight_at_kill: HashSet<String> = HashSet::new();
    for k in 0..5 {
        let target = (k as u64 + 1) * 3_000;
        poll(
            "progress before the next kill",
            Duration::from_secs(60),
            || {
                let n = counter(&mut conn, q, "done");
                async move { (n >= target).then_some(()) }
            },
        )
        .await;
        let w = &mut workers[k % 3];
        let name = w.consumer();
        w.kill9();
        in_flight_at_kill.extend(pending_task_ids(&mut conn, q, &name));
        w.start();
    }
    let ex = wait_all_done(&redis, q, "exec", &ids, Duration::from_secs(120)).await;
    assert_eq!(ex.len(), 20_000);
    let dups: Vec<&String> = ex
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    let unexplained: Vec<&&String> = dups
        .iter()
        .filter(|id| !in_flight_at_kill.contains(**id))
        .collect();
    assert!(
        unexplained.is_empty(),
        "{} duplicates of tasks that were not in flight on a killed worker: {:?}",
        unexplained.len(),
        &unexplained[..unexplained.len().min(5)]
    );
    eprintln!(
        "crash test: {} duplicates, all among {} tasks in flight at the 5 kills",
        dups.len(),
        in_flight_at_kill.len()
    );
    assert_no_dead_letters(&mut conn, q);
    for w in &mut workers {
        assert_eq!(w.terminate(Duration::from_secs(20)), Some(0));
    }
}

#[tokio::test]
async fn long_tasks_on_a_live_worker_are_never_claimed_away() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let q = "long";
    // Handlers run 2.5 s, five times min_idle (500 ms).
    let toml = worker_toml(&redis.url(), q, "min_idle_ms = 500", "");
    let mut a = WorkerProc::spawn(&toml);
    let mut b = WorkerProc::spawn(&toml);
    let p = Producer::connect(&producer_cfg(&redis.url()))
        .await
        .unwrap();
    let ids = enqueue_all(&p, q, "exec", 40, 2_500).await;
    let ex = wait_all_done(&redis, q, "exec", &ids, Duration::from_secs(60)).await;
    let dups: Vec<_> = ex.iter().filter(|(_, n)| **n != 1).collect();
    assert!(dups.is_empty(), "live long tasks ran twice: {dups:?}");
    assert!(
        !a.log_text().contains("claimed long-idle entries")
            && !b.log_text().contains("claimed long-idle entries")
    );
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
async fn redis_killed_and_restarted_loses_no_acknowledged_enqueue() {
    let _g = common::heavy().await;
    let mut redis = RedisServer::start_durable();
    let q = "restart";
    let toml = worker_toml(&redis.url(), q, "", "");
    let mut workers: Vec<WorkerProc> = (0..2).map(|_| WorkerProc::spawn(&toml)).collect();
    let p = Producer::connect(&producer_cfg(&redis.url()))
        .await
        .unwrap();
    let mut acked: Vec<String> = Vec::new();
    let mut failed_batches = 0;
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(90);
    while acked.len() < 6_000 {
        assert!(Instant::now() < deadline, "producer could not finish");
        let batch: Vec<_> = (0..100).map(|_| record(q, "exec", 2)).collect();
        match p.enqueue_batch(batch).await {
            Ok(r) => acked.extend(r.into_iter().map(|e| e.task_id)),
            Err(_) => failed_batches += 1,
        }
        if !killed && acked.len() >= 3_000 {
            redis.kill();
            killed = true;
            // Enqueues fail while it is down (not acknowledged, so not counted).
            let r = p.enqueue(record(q, "exec", 2)).await;
            assert!(r.is_err());
            redis.restart();
        }
    }
    let ex = wait_all_done(&redis, q, "exec", &acked, Duration::from_secs(120)).await;
    let lost: Vec<_> = acked.iter().filter(|id| !ex.contains_key(*id)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged enqueues lost: {}",
        lost.len()
    );
    eprintln!(
        "redis restart: {} acknowledged, {failed_batches} batches refused while down",
        acked.len()
    );
    let mut conn = redis.sync_conn();
    assert_no_dead_letters(&mut conn, q);
    for w in &mut workers {
        assert!(w.alive(), "workers survive a Redis restart");
        assert_eq!(w.terminate(Duration::from_secs(30)), Some(0));
    }
}

#[tokio::test]
async fn dropped_connections_every_second_lose_nothing() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let q = "drops";
    let toml = worker_toml(&redis.url(), q, "", "");
    let mut workers: Vec<WorkerProc> = (0..2)
        .map(|i| WorkerProc::spawn_named(&toml, &format!("d{i}")))
        .collect();
    let p = Producer::connect(&producer_cfg(&redis.url()))
        .await
        .unwrap();
    // ~64 slots × 10 ms tasks: about 10 s of work on this machine.
    let ids = enqueue_all(&p, q, "exec", 30_000, 10).await;
    let mut conn = redis.sync_conn();
    let mut kills = 0;
    let mut rounds_that_hit = 0;
    let mut dropped = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let t = Instant::now();
        // SKIPME is on by default: our own connection survives; the reply counts the
        // workers' connections actually dropped.
        let n: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .query(&mut conn)
            .expect("CLIENT KILL TYPE normal");
        kills += 1;
        dropped += n;
        if n > 0 {
            rounds_that_hit += 1;
        }
        while t.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(50)); // poll: pacing the fault injector
        }
    }
    assert!(kills >= 9, "{kills} rounds of CLIENT KILL");
    // The fault really happened, again and again: the workers reconnected between rounds
    // and lost those connections too.
    assert!(
        rounds_that_hit >= kills / 2,
        "only {rounds_that_hit} of {kills} CLIENT KILL rounds found a worker connection to drop"
    );
    let ex = wait_all_done(&redis, q, "exec", &ids, Duration::from_secs(120)).await;
    assert_eq!(ex.len(), ids.len());
    let dups = ex.values().filter(|n| **n > 1).count();
    eprintln!("dropped connections: {kills} rounds of CLIENT KILL ({rounds_that_hit} hit, {dropped} connections), {dups} duplicate executions");
    let mut conn = redis.sync_conn();
    assert_no_dead_letters(&mut conn, q);
    for w in &mut workers {
        assert!(w.alive());
        assert_eq!(w.terminate(Duration::from_secs(30)), Some(0));
    }
}

#[tokio::test]
async fn redis_paused_for_ten_seconds_workers_wait_and_resume() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let q = "pause";
    let toml = worker_toml(&redis.url(), q, "", "");
    let mut workers: Vec<WorkerProc> = (0..2)
        .map(|i| WorkerProc::spawn_named(&toml, &format!("p{i}")))
        .collect();
    let p = Producer::connect(&producer_cfg(&redis.url()))
        .await
        .unwrap();
    let ids = enqueue_all(&p, q, "exec", 20_000, 5).await;
    let mut conn = redis.sync_conn();
    poll("work under way", Duration::from_secs(30), || {
        let n = counter(&mut conn, q, "done");
        async move { (n >= 2_000).then_some(()) }
    })
    .await;
    common::signal(redis.pid(), "STOP");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100)); // poll: the partition lasts 10 s
        for w in &mut workers {
            assert!(
                w.alive(),
                "worker exited during the partition:\n{}",
                w.log_text()
            );
        }
    }
    common::signal(redis.pid(), "CONT");
    let ex = wait_all_done(&redis, q, "exec", &ids, Duration::from_secs(120)).await;
    assert_eq!(ex.len(), ids.len());
    let dups = ex.values().filter(|n| **n > 1).count();
    eprintln!("partition: {dups} duplicate executions after a 10 s SIGSTOP");
    let mut conn = redis.sync_conn();
    assert_no_dead_letters(&mut conn, q);
    for w in &mut workers {
        assert!(!w.log_text().contains("panicked"));
        assert_eq!(w.terminate(Duration::from_secs(30)), Some(0));
    }
}

#[tokio::test]
async fn backlog_of_100k_drains_with_flat_worker_memory() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let q = "backlog";
    let p = Producer::connect(&producer_cfg(&redis.url()))
        .await
        .unwrap();
    let ids = enqueue_all(&p, q, "exec", 100_000, 0).await;
    let toml = worker_toml(&redis.url(), q, "", "");
    let mut workers: Vec<WorkerProc> = (0..2).map(|_| WorkerProc::spawn(&toml)).collect();
    let mut conn = redis.sync_conn();
    poll("10% drained", Duration::from_secs(60), || {
        let n = counter(&mut conn, q, "done");
        async move { (n >= 10_000).then_some(()) }
    })
    .await;
    let early: Vec<u64> = workers.iter().map(|w| w.rss_kib()).collect();
    let mut peak = early.clone();
    let mut conn2 = redis.sync_conn();
    poll("backlog drained", Duration::from_secs(120), || {
        for (i, w) in workers.iter().enumerate() {
            peak[i] = peak[i].max(w.rss_kib());
        }
        let n = counter(&mut conn2, q, "done");
        async move { (n >= 100_000).then_some(()) }
    })
    .await;
    let ex = wait_all_done(&redis, q, "exec", &ids, Duration::from_secs(60)).await;
    assert_eq!(ex.len(), 100_000);
    assert!(ex.values().all(|n| *n == 1), "no duplicates while healthy");
    for (i, (e, p)) in early.iter().zip(&peak).enumerate() {
        eprintln!("worker {i}: RSS {e} KiB at 10% drained, peak {p} KiB");
        assert!(
            *p <= e + 20 * 1024,
            "worker {i} memory grew from {e} KiB to {p} KiB while draining"
        );
    }
    for w in &mut workers {
        assert_eq!(w.terminate(Duration::from_secs(30)), Some(0));
    }
}

#[tokio::test]
async fn a_task_that_keeps_killing_workers_becomes_poison() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let q = "poison";
    let toml = worker_toml(&redis.url(), q, "max_deliveries = 3", "");
    let mut w = WorkerProc::spawn(&toml);
    let mut helper = WorkerProc::spawn(&toml);
    let p = Producer::connect(&producer_cfg(&redis.url()))
        .await
        .unwrap();
    let bad = p
        .enqueue(NewTask::new(q, "builtin.crash", &0).unwrap())
        .await
        .unwrap()
        .task_id;
    let good = enqueue_all(&p, q, "exec", 20, 0).await;
    let mut conn = redis.sync_conn();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: u64 = redis::cmd("XLEN")
            .arg(format!("ts:{{{q}}}:dlq"))
            .query(&mut conn)
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "poison task never dead-lettered\n--- worker 1:\n{}\n--- worker 2:\n{}",
            w.log_text(),
            helper.log_text()
        );
        // Restart whichever worker the task killed.
        for x in [&mut w, &mut helper] {
            if !x.alive() {
                x.kill9();
                x.start();
            }
        }
        std::thread::sleep(Duration::from_millis(50)); // poll
    }
    let dl = taskstream::dlq::list(&mut redis.conn().await, q, 10)
        .await
        .unwrap();
    assert_eq!(dl[0].get("id"), Some(bad.as_str()));
    assert_eq!(
        dl[0].get("dlq_reason"),
        Some("poison: delivered 3 times without completion")
    );
    wait_all_done(&redis, q, "exec", &good, Duration::from_secs(60)).await;
    let n: u64 = redis::cmd("XLEN")
        .arg(format!("ts:{{{q}}}:dlq"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        n, 1,
        "tasks that shared a worker with the poison task are not blamed for it"
    );
    for x in [&mut w, &mut helper] {
        if x.alive() {
            assert_eq!(
                x.terminate(Duration::from_secs(20)),
                Some(0),
                "graceful exit"
            );
        }
    }
}

#[tokio::test]
async fn a_dead_consumer_is_recovered_even_when_survivors_are_busy_at_first() {
    // Found by chaining kills: the dead consumer's express lane was empty, so it was
    // forgotten (heartbeat dropped) while its bulk entry still waited for a free slot, and
    // only the 60 s idle net could bring that entry back.
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let q = "busy";
    // One bulk slot per worker.
    let toml = worker_toml(&redis.url(), q, "min_idle_ms = 60000", "").replace(
        "concurrency = 32\nexpress_concurrency = 4",
        "concurrency = 2\nexpress_concurrency = 1",
    );
    assert!(toml.contains("concurrency = 2"), "{toml}");
    let mut victim = WorkerProc::spawn_named(&toml, "victim");
    let p = Producer::connect(&producer_cfg(&redis.url()))
        .await
        .unwrap();
    let mut conn = redis.sync_conn();
    let llen =
        |c: &mut redis::Connection, k: &str| -> u64 { redis::cmd("LLEN").arg(k).query(c).unwrap() };
    p.enqueue(
        NewTask::new(
            q,
            "builtin.record",
            &serde_json::json!({"key": "exec", "ms": 30_000, "log": "LV"}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    poll(
        "the victim runs the long task",
        Duration::from_secs(10),
        || {
            let n = llen(&mut conn, "LV");
            async move { (n == 1).then_some(()) }
        },
    )
    .await;
    let survivor = WorkerProc::spawn_named(&toml, "survivor");
    // Keep the survivor's only bulk slot busy for 3 s.
    p.enqueue(
        NewTask::new(
            q,
            "builtin.record",
            &serde_json::json!({"key": "exec", "ms": 3_000, "log": "LS"}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    poll("the survivor is busy", Duration::from_secs(10), || {
        let n = llen(&mut conn, "LS");
        async move { (n == 1).then_some(()) }
    })
    .await;
    let killed = Instant::now();
    victim.kill9();
    poll(
        "the long task re-delivered once the survivor has a free slot",
        Duration::from_secs(20),
        || {
            let n = llen(&mut conn, "LV");
            async move { (n == 2).then_some(()) }
        },
    )
    .await;
    let took = killed.elapsed();
    eprintln!("re-delivered {took:?} after the kill (the idle net would take 60 s)");
    // Brought back by the dead-consumer recovery, not by the 60 s idle net.
    let log = survivor.log_text();
    assert!(
        log.lines().any(
            |l| l.contains("recovered orphaned tasks of a dead consumer") && l.contains("victim-1")
        ),
        "the survivor recovered the victim's task as a dead consumer's; log:\n{log}"
    );
    assert!(
        !log.contains("claimed long-idle entries"),
        "the idle net did not fire; log:\n{log}"
    );
}
