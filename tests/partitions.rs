//! Partitioned queues on one Redis (issue 11.2; on a cluster: tests/cluster.rs): raising
//! the partition count on a live queue, and the operator's view adding partitions up.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{executions, poll, run_cli, worker_toml, RedisServer, WorkerProc};
use taskstream::config::Config;
use taskstream::keys::QueueKeys;
use taskstream::producer::{NewTask, Producer};

fn producer_cfg(url: &str) -> Config {
    let mut c = Config::default();
    c.redis.url = url.to_string();
    c
}

fn record(queue: &str, key: &str, permanent: bool) -> NewTask {
    NewTask::new(
        queue,
        "builtin.record",
        &serde_json::json!({"key": key, "permanent": permanent}),
    )
    .unwrap()
    .max_attempts(1)
}

fn done_per_partition(c: &mut redis::Connection, q: &str, n: u32) -> Vec<u64> {
    (0..n)
        .map(|p| {
            let d: Option<u64> = redis::cmd("HGET")
                .arg(QueueKeys::partition(q, p).counters)
                .arg("done")
                .query(c)
                .unwrap();
            d.unwrap_or(0)
        })
        .collect()
}

async fn enqueue(p: &Producer, q: &str, key: &str, n: usize) -> Vec<String> {
    let batch: Vec<NewTask> = (0..n).map(|_| record(q, key, false)).collect();
    p.enqueue_batch(batch)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.task_id)
        .collect()
}

/// A queue of 2 partitions raised to 4 while it runs: the new worker records 4, a producer
/// spreads over 4, the old worker stops, and every task of both phases runs, in every
/// partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_partitions_of_a_live_queue_loses_nothing() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let url = redis.url();
    let q = "grow";
    let hits = "grow:hits";
    let mut old = WorkerProc::spawn(&worker_toml(&url, q, "", "partitions = 2"));
    let mut c = redis.sync_conn();
    let key = QueueKeys::new(q).partitions_key();
    let recorded = |c: &mut redis::Connection| -> Option<String> {
        redis::cmd("GET").arg(&key).query(c).unwrap()
    };
    poll("2 partitions recorded", Duration::from_secs(20), || {
        let v = recorded(&mut c);
        async move { (v.as_deref() == Some("2")).then_some(()) }
    })
    .await;
    let p = Producer::connect(&producer_cfg(&url)).await.unwrap();
    let mut ids = enqueue(&p, q, hits, 1000).await;

    let _new = WorkerProc::spawn(&worker_toml(&url, q, "", "partitions = 4"));
    poll("4 partitions recorded", Duration::from_secs(20), || {
        let v = recorded(&mut c);
        async move { (v.as_deref() == Some("4")).then_some(()) }
    })
    .await;
    assert!(
        old.terminate(Duration::from_secs(20)).is_some(),
        "the old worker stops"
    );
    let p = Producer::connect(&producer_cfg(&url)).await.unwrap();
    ids.extend(enqueue(&p, q, hits, 1000).await);
    poll("every task ran", Duration::from_secs(60), || {
        let ran = executions(&mut c, hits);
        let all = ids.iter().all(|id| ran.contains_key(id));
        async move { all.then_some(()) }
    })
    .await;
    let done = done_per_partition(&mut c, q, 4);
    assert!(
        done.iter().all(|d| *d > 0),
        "every partition served: {done:?}"
    );
    assert_eq!(done.iter().sum::<u64>(), 2000, "{done:?}");
    let ran: HashMap<String, u64> = executions(&mut c, hits);
    assert_eq!(ran.len(), 2000);
}

/// `stats`, `dlq` and `queue pause` see a partitioned queue whole: dead letters of every
/// partition are listed and requeued, `stats` adds the partitions up, and a pause is
/// confirmed only once every partition's readers hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_dead_letters_and_pause_cover_every_partition() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let url = redis.url();
    let q = "wide";
    let http = format!("127.0.0.1:{}", common::free_port());
    let _w = WorkerProc::spawn(
        &worker_toml(&url, q, "", "partitions = 4")
            .replace("listen = \"\"", &format!("listen = \"{http}\"")),
    );
    let mut c = redis.sync_conn();
    let key = QueueKeys::new(q).partitions_key();
    poll("4 partitions recorded", Duration::from_secs(20), || {
        let v: Option<String> = redis::cmd("GET").arg(&key).query(&mut c).unwrap();
        async move { (v.as_deref() == Some("4")).then_some(()) }
    })
    .await;
    let p = Producer::connect(&producer_cfg(&url)).await.unwrap();
    // Round-robin: the 8 failing tasks land 2 in each partition.
    let batch: Vec<NewTask> = (0..8).map(|_| record(q, "wide:hits", true)).collect();
    p.enqueue_batch(batch).await.unwrap();
    let mut conn = p.connection();
    poll(
        "8 dead letters over 4 partitions",
        Duration::from_secs(30),
        || {
            let mut conn = conn.clone();
            async move {
                let s = taskstream::stats::queue_stats(&mut conn, q, 2000)
                    .await
                    .ok()?;
                (s.dead_letters == 8).then_some(s)
            }
        },
    )
    .await;
    let s = taskstream::stats::queue_stats(&mut conn, q, 2000)
        .await
        .unwrap();
    assert_eq!(s.partitions, 4);
    for part in 0..4 {
        let n: u64 = redis::cmd("XLEN")
            .arg(QueueKeys::partition(q, part).dlq)
            .query(&mut c)
            .unwrap();
        assert_eq!(n, 2, "partition {part} holds its share of the dead letters");
    }
    let listed = taskstream::dlq::list(&mut conn, q, 100).await.unwrap();
    assert_eq!(listed.len(), 8, "the list covers every partition");
    let (requeued, _) = taskstream::dlq::requeue_all(&mut conn, q).await.unwrap();
    assert_eq!(requeued, 8);
    poll("requeued tasks dead again", Duration::from_secs(30), || {
        let mut conn = conn.clone();
        async move {
            let s = taskstream::stats::queue_stats(&mut conn, q, 2000)
                .await
                .ok()?;
            (s.dead_letters == 8).then_some(())
        }
    })
    .await;

    let (code, out, err) = run_cli(
        &["--redis-url", &url, "queue", "pause", q, "--wait", "10s"],
        &[],
    );
    assert_eq!(code, 0, "pause confirmed by every partition: {out}{err}");
    for part in 0..4 {
        let paused: bool = redis::cmd("EXISTS")
            .arg(QueueKeys::partition(q, part).paused)
            .query(&mut c)
            .unwrap();
        assert!(paused, "partition {part} is paused");
    }
    // Tasks sent while paused wait in their partitions' streams (2 each, round-robin):
    // the collector exports each partition's backlog (no master on one server).
    enqueue(&p, q, "wide:later", 8).await;
    poll(
        "the backlog of every partition in /metrics",
        Duration::from_secs(20),
        || {
            let page = common::http_get(&http, "/metrics").map(|(_, b)| b);
            async move {
                let page = page?;
                (0..4)
                    .all(|part| {
                        let part = part.to_string();
                        common::prom_value(
                            &page,
                            "taskstream_partition_stream_length",
                            &[
                                ("queue", q),
                                ("partition", &part),
                                ("lane", "bulk"),
                                ("node", ""),
                            ],
                        ) == Some(2.0)
                    })
                    .then_some(())
            }
        },
    )
    .await;
    // `queue keys` lists the streams of every recorded partition.
    let (code, out, err) = run_cli(&["--redis-url", &url, "queue", "keys", q], &[]);
    assert_eq!(code, 0, "{out}{err}");
    for part in 0..4 {
        let k = QueueKeys::partition(q, part);
        assert!(out.contains(&k.stream) && out.contains(&k.express), "{out}");
    }
    let (code, out, err) = run_cli(&["--redis-url", &url, "queue", "resume", q], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let s = taskstream::stats::queue_stats(&mut conn, q, 2000)
        .await
        .unwrap();
    assert!(!s.paused);
}
