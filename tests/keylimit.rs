//! Per-key concurrency limits and fairness (issue 13.3) with real worker processes on a
//! real Redis: the concurrency each key reaches, counted by the handlers themselves, never
//! exceeds `max_per_key` across three replicas, one of them killed with leases in hand (its
//! tasks come back and every task runs); one key's backlog of 100,000 does not make ten
//! other keys wait behind it, and not one of its tasks is lost while it waits; a lease left
//! behind by a crash between an ACK and its release is pruned rather than leaked; bad
//! settings are refused with the key.
#![cfg(feature = "cli")]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{executions, poll, worker_toml, RedisServer, WorkerProc};
use serde_json::json;
use taskstream::config::Config;
use taskstream::producer::{NewTask, Producer};

/// A `builtin.record` task of `key` with id `id`, counting its runs in `runs` and the
/// runs of each key under way in `conc`.
fn counted(queue: &str, id: &str, key: &str, ms: u64, log: Option<&str>) -> NewTask {
    let mut p = json!({"key": "runs", "running": "conc", "ms": ms});
    if let Some(l) = log {
        p["log"] = json!(l);
    }
    NewTask::raw(queue, "builtin.record", p.to_string())
        .id(id)
        .group_key(key)
}

/// The highest concurrency each key reached, as the handlers counted it.
fn peaks(conn: &mut redis::Connection) -> HashMap<String, u64> {
    let v: Vec<(String, u64)> = redis::cmd("ZRANGE")
        .arg("conc:peak")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(conn)
        .unwrap();
    v.into_iter().collect()
}

/// Lease fields still held and tasks still parked on queue `q` (one partition).
fn leftovers(conn: &mut redis::Connection, q: &str) -> (u64, u64, u64) {
    let mut held = 0;
    let leases: Vec<String> = redis::cmd("KEYS")
        .arg(format!("ts:{{{q}}}:lease:*"))
        .query(conn)
        .unwrap();
    for l in leases {
        held += redis::cmd("HLEN").arg(&l).query::<u64>(conn).unwrap();
    }
    let mut parked = 0;
    let lists: Vec<String> = redis::cmd("KEYS")
        .arg(format!("ts:{{{q}}}:parked:*"))
        .query(conn)
        .unwrap();
    for l in lists {
        parked += redis::cmd("LLEN").arg(&l).query::<u64>(conn).unwrap();
    }
    let keyed: u64 = redis::cmd("ZCARD")
        .arg(format!("ts:{{{q}}}:keyed"))
        .query(conn)
        .unwrap();
    (held, parked, keyed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_hold_across_replicas_and_a_kill_releases_nothing_it_should_not() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let toml = worker_toml(&redis.url(), "keyed", "", "max_per_key = 2");
    let mut workers: Vec<WorkerProc> = (0..3)
        .map(|i| WorkerProc::spawn_named(&toml, &format!("kl{i}")))
        .collect();
    let cfg = Config::parse("w.toml", &toml).unwrap();
    let p = Producer::connect(&cfg).await.unwrap();
    let mut conn = redis.sync_conn();

    const TASKS: usize = 10_000;
    const KEYS: usize = 50;
    let ids: Vec<String> = (0..TASKS).map(|i| format!("t{i}")).collect();
    for chunk in ids.chunks(1_000) {
        let batch = chunk
            .iter()
            .map(|id| {
                let n: usize = id[1..].parse().unwrap();
                counted("keyed", id, &format!("k{}", n % KEYS), 3, None)
            })
            .collect();
        p.enqueue_batch(batch).await.unwrap();
    }

    // Kill one replica while it holds leases: its runs stay counted in `conc:<key>` (as
    // their leases stay with their entries) until recovery re-runs them elsewhere.
    poll("a third of the tasks ran", Duration::from_secs(60), || {
        let n = executions(&mut redis.sync_conn(), "runs").len();
        async move { (n >= TASKS / 3).then_some(()) }
    })
    .await;
    let killed_at = Instant::now();
    workers[0].kill9();
    // What the dead replica held: its pending entries, each under a lease of its key.
    let victim = workers[0].consumer();
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg("ts:{keyed}:stream")
        .arg("taskstream")
        .arg("-")
        .arg("+")
        .arg(1_000)
        .arg(&victim)
        .query(&mut conn)
        .unwrap();
    let mut leased = 0;
    for (entry, ..) in &pending {
        let e: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg("ts:{keyed}:stream")
            .arg(entry)
            .arg(entry)
            .query(&mut conn)
            .unwrap();
        let Some((_, f)) = e.first() else { continue };
        let held: bool = redis::cmd("HEXISTS")
            .arg(format!("ts:{{keyed}}:lease:#{}", f["group_key"]))
            .arg(format!("ts:{{keyed}}:stream {entry}"))
            .query(&mut conn)
            .unwrap();
        leased += held as usize;
    }
    assert!(
        leased > 0,
        "the killed replica held no lease ({} pending entries)",
        pending.len()
    );
    let running_at_kill: Vec<String> = {
        let mut v = Vec::new();
        for k in 0..KEYS {
            let m: Vec<String> = redis::cmd("SMEMBERS")
                .arg(format!("conc:k{k}"))
                .query(&mut conn)
                .unwrap();
            v.extend(m);
        }
        v
    };

    let runs = poll("every task ran", Duration::from_secs(120), || {
        let r = executions(&mut redis.sync_conn(), "runs");
        async move { (r.len() == TASKS).then_some(r) }
    })
    .await;
    let all_done = killed_at.elapsed();
    for id in &ids {
        assert!(runs.get(id).copied().unwrap_or(0) >= 1, "{id} never ran");
    }

    // The cap held on every key, and was reached (a limit of 1 would also pass "≤ 2").
    let peaks = peaks(&mut conn);
    assert_eq!(peaks.len(), KEYS, "{peaks:?}");
    for (k, n) in &peaks {
        assert!(*n <= 2, "key {k} ran {n} tasks at once (max_per_key = 2)");
    }
    assert!(
        peaks.values().any(|n| *n == 2),
        "no key ever ran 2 at once: {peaks:?}"
    );
    // Nothing was left behind: no lease, no parked task, no scope waiting.
    let left = poll(
        "leases and parked lists empty",
        Duration::from_secs(30),
        || {
            let l = leftovers(&mut redis.sync_conn(), "keyed");
            async move { (l == (0, 0, 0)).then_some(l) }
        },
    )
    .await;
    assert_eq!(left, (0, 0, 0));
    let stats = taskstream::inspect::Inspector::new(taskstream::rdb::Broker::new(p.connection()))
        .stats(&["keyed".to_string()])
        .await
        .unwrap();
    assert_eq!((stats[0].parked, stats[0].parked_keys), (0, 0));
    eprintln!(
        "{TASKS} tasks over {KEYS} keys, cap 2, 3 replicas: the killed one held {leased} leases ({} runs under way in all at the kill); all done {all_done:?} after it; peaks {:?}",
        running_at_kill.len(),
        {
            let mut h: HashMap<u64, usize> = HashMap::new();
            for n in peaks.values() {
                *h.entry(*n).or_default() += 1;
            }
            h
        }
    );
    for w in &mut workers[1..] {
        w.terminate(Duration::from_secs(30));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keys_backlog_does_not_starve_ten_others_and_loses_nothing() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let toml = worker_toml(
        &redis.url(),
        "fair",
        "",
        "max_per_key = 4\nconcurrency = 64\nexpress_concurrency = 4",
    )
    .replace("concurrency = 32\nexpress_concurrency = 4\n", "");
    let cfg = Config::parse("w.toml", &toml).unwrap();
    let p = Producer::connect(&cfg).await.unwrap();
    let mut conn = redis.sync_conn();

    // The backlog first, then ten keys of 100: all queued before any worker runs.
    const BIG: usize = 100_000;
    for start in (0..BIG).step_by(5_000) {
        let batch = (start..start + 5_000)
            .map(|i| counted("fair", &format!("big-{i}"), "big", 0, Some("order")))
            .collect();
        p.enqueue_batch(batch).await.unwrap();
    }
    let mut small = Vec::new();
    for k in 0..10 {
        for i in 0..100 {
            small.push(counted(
                "fair",
                &format!("k{k}-{i}"),
                &format!("k{k}"),
                1,
                Some("order"),
            ));
        }
    }
    p.enqueue_batch(small).await.unwrap();

    let mut w = WorkerProc::spawn(&toml);
    poll("the ten keys' 1000 tasks ran", Duration::from_secs(120), || {
        let r = executions(&mut redis.sync_conn(), "runs");
        async move { (r.keys().filter(|id| id.starts_with('k')).count() == 1_000).then_some(()) }
    })
    .await;
    w.terminate(Duration::from_secs(30));

    // Start order, as the handlers logged it.
    let log: Vec<String> = redis::cmd("LRANGE")
        .arg("order")
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    let order: Vec<&str> = log.iter().map(|l| l.split(' ').next().unwrap()).collect();
    let last_small = order.iter().rposition(|id| id.starts_with('k')).unwrap();
    let big_before = order[..last_small]
        .iter()
        .filter(|id| id.starts_with("big-"))
        .collect::<HashSet<_>>()
        .len();
    eprintln!(
        "fairness: {big_before} of the {BIG} backlog tasks started before the ten keys' last (of {} starts logged)",
        order.len()
    );
    assert!(
        big_before < BIG / 4,
        "the ten keys waited behind the backlog: {big_before} of its tasks started first"
    );
    // In turn: when the first of the ten keys has started all its tasks, every other key
    // has started a good share of its own.
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for id in order.iter().filter(|id| id.starts_with('k')) {
        let k = id.split('-').next().unwrap();
        let n = per_key.entry(k).or_default();
        *n += 1;
        if *n == 100 {
            break;
        }
    }
    assert_eq!(per_key.len(), 10, "{per_key:?}");
    for (k, n) in &per_key {
        assert!(
            *n >= 25,
            "key {k} had started {n} of 100 when another had started all: {per_key:?}"
        );
    }

    // Nothing of the backlog is lost: every task ran, waits parked, or is still in the
    // stream (handed back at shutdown, or moved back for its turn).
    let mut seen: HashSet<String> = executions(&mut conn, "runs").into_keys().collect();
    let parked: Vec<String> = redis::cmd("LRANGE")
        .arg("ts:{fair}:parked:#big")
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    for item in &parked {
        let v: serde_json::Value = serde_json::from_str(item).unwrap();
        seen.insert(v["id"].as_str().unwrap().to_string());
    }
    let entries: Vec<(String, HashMap<String, String>)> = {
        let v: redis::Value = redis::cmd("XRANGE")
            .arg("ts:{fair}:stream")
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .unwrap();
        redis::from_redis_value(v).unwrap()
    };
    for (_, fields) in &entries {
        if let Some(id) = fields.get("id") {
            seen.insert(id.clone());
        }
    }
    let scheduled: Vec<String> = redis::cmd("ZRANGE")
        .arg("ts:{fair}:scheduled")
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    for m in &scheduled {
        let v: serde_json::Value = serde_json::from_str(m).unwrap();
        seen.insert(v["id"].as_str().unwrap().to_string());
    }
    let missing: Vec<String> = (0..BIG)
        .map(|i| format!("big-{i}"))
        .filter(|id| !seen.contains(id))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "backlog tasks neither ran, nor wait parked or queued: {missing:?}…"
    );
    assert!(
        parked.len() > BIG / 2,
        "the backlog should mostly still wait: {} parked",
        parked.len()
    );
    let dlq: u64 = redis::cmd("XLEN")
        .arg("ts:{fair}:dlq")
        .query(&mut conn)
        .unwrap();
    assert_eq!(dlq, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_left_behind_are_pruned_and_parked_tasks_swept_back() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let toml = worker_toml(&redis.url(), "heal", "", "max_per_key = 1");
    let mut conn = redis.sync_conn();
    // A crash between an ACK and its release left a lease whose entry is gone, on key a;
    // on key b it also left a parked task with nobody running to give it a turn.
    for scope in ["#a", "#b"] {
        let _: () = redis::cmd("HSET")
            .arg(format!("ts:{{heal}}:lease:{scope}"))
            .arg("ts:{heal}:stream 1-0")
            .arg(1)
            .query(&mut conn)
            .unwrap();
    }
    let parked = json!({
        "v": "1", "id": "stranded", "type": "builtin.record", "attempt": "1",
        "payload": json!({"key": "runs"}).to_string(), "group_key": "b",
        "enqueued_at": "1", "stream": "ts:{heal}:stream"
    });
    let _: () = redis::cmd("RPUSH")
        .arg("ts:{heal}:parked:#b")
        .arg(parked.to_string())
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("ZADD")
        .arg("ts:{heal}:keyed")
        .arg(1)
        .arg("#b")
        .query(&mut conn)
        .unwrap();

    let mut w = WorkerProc::spawn(&toml);
    let cfg = Config::parse("w.toml", &toml).unwrap();
    let p = Producer::connect(&cfg).await.unwrap();
    p.enqueue(
        NewTask::raw("heal", "builtin.record", json!({"key": "runs"}).to_string())
            .id("fresh")
            .group_key("a"),
    )
    .await
    .unwrap();
    let runs = poll(
        "the new task on key a and the stranded one on key b ran",
        Duration::from_secs(30),
        || {
            let r = executions(&mut redis.sync_conn(), "runs");
            async move { (r.contains_key("fresh") && r.contains_key("stranded")).then_some(r) }
        },
    )
    .await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    let left = poll("nothing left behind", Duration::from_secs(10), || {
        let l = leftovers(&mut redis.sync_conn(), "heal");
        async move { (l == (0, 0, 0)).then_some(l) }
    })
    .await;
    assert_eq!(left, (0, 0, 0));
    w.terminate(Duration::from_secs(30));
}

/// The problems `config check` reports for `text`, as one string.
fn refused(text: &str) -> String {
    let c = Config::parse("w.toml", text).expect("parses");
    c.validate("w.toml").expect_err("refused").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancelled_while_parked_gives_its_turn_back() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let toml = worker_toml(&redis.url(), "cxl", "", "max_per_key = 1");
    let mut w = WorkerProc::spawn(&toml);
    let cfg = Config::parse("w.toml", &toml).unwrap();
    let p = Producer::connect(&cfg).await.unwrap();
    let mut conn = p.connection();
    let task = |id: &str, ms: u64| {
        NewTask::raw(
            "cxl",
            "builtin.record",
            json!({"key": "runs", "ms": ms}).to_string(),
        )
        .id(id)
        .group_key("c")
    };
    // c1 runs for a while; c2 parks behind it and is cancelled there.
    p.enqueue(task("c1", 1_500)).await.unwrap();
    poll("c1 started", Duration::from_secs(10), || {
        let r = executions(&mut redis.sync_conn(), "runs");
        async move { r.contains_key("c1").then_some(()) }
    })
    .await;
    p.enqueue(task("c2", 0)).await.unwrap();
    poll("c2 parked", Duration::from_secs(10), || {
        let l = leftovers(&mut redis.sync_conn(), "cxl");
        async move { (l.1 == 1).then_some(()) }
    })
    .await;
    taskstream::signals::cancel_task(&mut conn, "cxl", "c2")
        .await
        .unwrap();
    // When c1 ends, c2 gets its turn, is found cancelled, and hands the turn on to c3 (its
    // settlement releases the lease; without that the sweep would prune the dead lease).
    p.enqueue(task("c3", 0)).await.unwrap();
    poll("c3 ran", Duration::from_secs(20), || {
        let r = executions(&mut redis.sync_conn(), "runs");
        async move { r.contains_key("c3").then_some(()) }
    })
    .await;
    let runs = executions(&mut redis.sync_conn(), "runs");
    assert!(!runs.contains_key("c2"), "the cancelled task ran: {runs:?}");
    // And no lease is left behind by the cancelled task's turn.
    let left = poll("nothing left behind", Duration::from_secs(10), || {
        let l = leftovers(&mut redis.sync_conn(), "cxl");
        async move { (l == (0, 0, 0)).then_some(l) }
    })
    .await;
    assert_eq!(left, (0, 0, 0));
    w.terminate(Duration::from_secs(30));
}

#[test]
fn bad_limits_are_refused_with_the_key() {
    let base = "[[queues]]\nname = \"q\"\n";
    let e = refused(&format!("{base}max_per_key = 0\n"));
    assert!(
        e.contains("queues[0].max_per_key") && e.contains("must be 1 to"),
        "{e}"
    );
    let e = refused(&format!(
        "{base}fanout_groups = [\"audit\"]\n[queues.types.t]\nmax_per_key = 2\n"
    ));
    assert!(
        e.contains("queues[0].max_per_key") && e.contains("fanout_groups"),
        "{e}"
    );
    let e = refused(&format!("{base}[queues.types.t]\nmax_per_key = 100000\n"));
    assert!(e.contains("queues[0].types.t.max_per_key"), "{e}");
    let ok = Config::parse("w.toml", &format!("{base}max_per_key = 3\n")).unwrap();
    assert!(ok.validate("w.toml").is_ok());
}
