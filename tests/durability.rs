//! `redis.wait_replicas` (issue 11.4): enqueues and settles wait for replicas with `WAIT`,
//! on a real master with a real replica (`redis-server --replicaof`).

mod common;

use std::time::Duration;

use common::{poll, signal, worker_toml, RedisServer, WorkerProc};
use taskstream::config::Config;
use taskstream::producer::{NewTask, Producer};

/// A master and a replica in sync.
fn master_and_replica() -> (RedisServer, RedisServer) {
    let master = RedisServer::start();
    let port = master.port.to_string();
    let replica = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--replicaof",
        "127.0.0.1",
        port.as_str(),
    ]);
    let mut c = replica.sync_conn();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info: String = redis::cmd("INFO").arg("replication").query(&mut c).unwrap();
        if info.contains("master_link_status:up") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replica never synced: {info}"
        );
        std::thread::sleep(Duration::from_millis(20)); // poll
    }
    (master, replica)
}

fn cfg(url: &str, wait: u32) -> Config {
    let mut c = Config::default();
    c.redis.url = url.to_string();
    c.redis.response_timeout_ms = 2000;
    c.redis.wait_replicas = wait;
    c.redis.wait_timeout_ms = 300;
    c
}

fn xlen(conn: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("XLEN").arg(key).query(conn).unwrap()
}

/// Each enqueue that returned is on the replica already; with the replica stopped the
/// enqueue fails as not replicated (while one without `wait_replicas` succeeds, which is
/// exactly the write a failover would lose), and succeeds again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_returns_once_the_replica_has_it_and_fails_when_none_does() {
    let (master, replica) = master_and_replica();
    let q = "durable";
    let stream = taskstream::keys::QueueKeys::new(q).stream;
    let p = Producer::connect(&cfg(&master.url(), 1)).await.unwrap();
    let plain = Producer::connect(&cfg(&master.url(), 0)).await.unwrap();
    let mut rc = replica.sync_conn();
    for i in 1..=50u64 {
        p.enqueue(NewTask::raw(q, "t", "{}")).await.unwrap();
        assert_eq!(
            xlen(&mut rc, &stream),
            i,
            "enqueue {i} returned before the replica had it"
        );
    }
    // A batch, idempotent adds included.
    let batch: Vec<NewTask> = (0..20)
        .map(|i| NewTask::raw(q, "t", "{}").idempotency_key(format!("k{i}")))
        .collect();
    p.enqueue_batch(batch).await.unwrap();
    assert_eq!(xlen(&mut rc, &stream), 70);

    signal(replica.pid(), "STOP");
    let r = p.enqueue(NewTask::raw(q, "t", "{}")).await;
    let unreplicated = plain.enqueue(NewTask::raw(q, "t", "{}")).await;
    signal(replica.pid(), "CONT");
    match r {
        Err(taskstream::Error::NotReplicated {
            got: 0,
            wanted: 1,
            timeout_ms: 300,
        }) => {}
        other => panic!("expected NotReplicated, got {other:?}"),
    }
    assert!(
        unreplicated.is_ok(),
        "without wait_replicas the enqueue does not wait"
    );
    p.enqueue(NewTask::raw(q, "t", "{}")).await.unwrap();
    assert_eq!(
        xlen(&mut rc, &stream),
        73,
        "the replica caught up with all three"
    );
}

/// A worker with `wait_replicas = 1` sends `WAIT` with its settles: with the replica
/// stopped, settles are reported as not replicated — and the worker goes on settling
/// (a lost ack means a task runs again, never a lost task, so acks are not held back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_settles_through_wait_and_carries_on_when_the_replica_is_away() {
    let _g = common::heavy().await;
    let (master, replica) = master_and_replica();
    let q = "durable-w";
    let keys = taskstream::keys::QueueKeys::new(q);
    let toml = worker_toml(&master.url(), q, "", "").replace(
        "response_timeout_ms = 1000",
        "response_timeout_ms = 2000\nwait_replicas = 1\nwait_timeout_ms = 300",
    );
    let w = WorkerProc::spawn(&toml);
    let p = Producer::connect(&cfg(&master.url(), 0)).await.unwrap();
    let done = |n: u64| {
        let mut mc = master.sync_conn();
        let key = keys.counters.clone();
        async move {
            let d: Option<u64> = redis::cmd("HGET")
                .arg(&key)
                .arg("done")
                .query(&mut mc)
                .unwrap();
            (d == Some(n)).then_some(())
        }
    };
    let tasks = |n| {
        (0..n)
            .map(|_| NewTask::raw(q, "builtin.noop", "{}"))
            .collect::<Vec<_>>()
    };
    p.enqueue_batch(tasks(100)).await.unwrap();
    poll("100 tasks done", Duration::from_secs(30), || done(100)).await;
    assert!(
        !w.log_text().contains("settle not replicated"),
        "settles were reported unreplicated with the replica up"
    );
    let mut rc = replica.sync_conn();
    poll("the replica has every ack", Duration::from_secs(10), || {
        let n = xlen(&mut rc, &keys.stream);
        async move { (n == 0).then_some(()) }
    })
    .await;

    signal(replica.pid(), "STOP");
    p.enqueue_batch(tasks(20)).await.unwrap();
    poll(
        "20 more done with the replica stopped",
        Duration::from_secs(30),
        || done(120),
    )
    .await;
    poll(
        "the unreplicated settles reported",
        Duration::from_secs(10),
        || {
            let seen = w.log_text().contains("settle not replicated");
            async move { seen.then_some(()) }
        },
    )
    .await;
    signal(replica.pid(), "CONT");
}
