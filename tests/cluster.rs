//! taskstream on a real Redis Cluster (issue 11): `redis-server --cluster-enabled yes` × 6
//! (3 masters, 3 replicas) joined by `redis-cli --cluster create`, spawned per test.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::cluster::Cluster;
use common::{poll, WorkerProc};
use taskstream::producer::{NewTask, Producer};

fn record(queue: &str, key: &str, payload: serde_json::Value) -> NewTask {
    let mut p = payload;
    p["key"] = key.into();
    NewTask::new(queue, "builtin.record", &p).unwrap()
}

/// The SHA1 digest of every script of the broker, by file name, as the cluster computes it.
fn script_digests(cluster: &Cluster) -> HashMap<String, String> {
    let port = cluster.masters()[0];
    let mut out = HashMap::new();
    for (name, src) in taskstream::rdb::script_sources() {
        let sha = cluster
            .query(port, &["SCRIPT", "LOAD", src])
            .expect("SCRIPT LOAD");
        out.insert(sha.to_lowercase(), name.to_string());
    }
    out
}

/// Every Lua script and MULTI of a queue's life touches one slot: a worker on a cluster
/// runs plain, express, delayed, idempotent, retried, dead-lettered, requeued, cancelled,
/// rate-limited, paused and recovered tasks, and `stats`; the nodes' slow logs (every
/// command is logged) show which scripts ran, and `INFO errorstats` that no node answered
/// CROSSSLOT. The saga scripts are not run here: sagas on a cluster are issue 11.3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_script_of_a_queue_runs_within_one_slot_on_a_cluster() {
    let _g = common::heavy().await;
    let cluster = Cluster::start(3, 1);
    let q = "alpha";
    let hits = "{rec}:alpha";
    let hits_beta = "{rec}:beta";
    assert_ne!(
        taskstream::keys::slot("alpha"),
        taskstream::keys::slot("beta"),
        "the two queues must live on different slots"
    );
    let toml = cluster.worker_toml(
        q,
        "recovery_interval_ms = 200\nheartbeat_interval_ms = 100\nheartbeat_lapse_ms = 800\nmin_idle_ms = 3000",
        "fanout_groups = [\"audit\"]\n[queues.types.\"builtin.record\"]\nrate_per_sec = 2000\nburst = 50\n[[queues]]\nname = \"beta\"\nconcurrency = 8\n",
    );
    let mut w1 = WorkerProc::spawn_named(&toml, "c1");
    let producer = Producer::connect(&cluster.config()).await.unwrap();
    let mut conn = producer.connection();

    // (task, runs it should get): failing once means 2 runs; a permanent failure runs,
    // is dead-lettered, requeued below and runs (and dies) once more.
    let mut batch: Vec<(NewTask, u64)> = Vec::new();
    for _ in 0..100 {
        batch.push((record(q, hits, serde_json::json!({})), 1));
    }
    for _ in 0..10 {
        batch.push((record(q, hits, serde_json::json!({})).express(), 1));
    }
    for _ in 0..5 {
        let t = record(q, hits, serde_json::json!({})).delay(Duration::from_millis(300));
        batch.push((t, 1));
    }
    for i in 0..5 {
        for _ in 0..2 {
            let t = record(q, hits, serde_json::json!({})).idempotency_key(format!("k{i}"));
            batch.push((t, 1));
        }
    }
    for _ in 0..5 {
        batch.push((
            record(q, hits, serde_json::json!({"fail_until_attempt": 2})),
            2,
        ));
    }
    for _ in 0..3 {
        let t = record(q, hits, serde_json::json!({"permanent": true})).max_attempts(1);
        batch.push((t, 2));
    }
    let cancelled = producer
        .enqueue(record(q, hits, serde_json::json!({})).delay(Duration::from_millis(1500)))
        .await
        .unwrap()
        .task_id;
    taskstream::signals::cancel_task(&mut conn, q, &cancelled)
        .await
        .unwrap();
    // A second queue of the same process, on another slot (heartbeats and counters of
    // both go out together).
    for _ in 0..10 {
        batch.push((record("beta", hits_beta, serde_json::json!({})), 1));
    }
    let (tasks, runs): (Vec<NewTask>, Vec<u64>) = batch.into_iter().unzip();
    let sent = producer.enqueue_batch(tasks).await.unwrap();
    assert_eq!(sent.iter().filter(|e| e.duplicate).count(), 5);
    let mut expected: HashMap<String, u64> = HashMap::new();
    for (e, n) in sent.iter().zip(runs) {
        if !e.duplicate {
            expected.insert(e.task_id.clone(), n);
        }
    }
    let expect_ok = 100 + 10 + 5 + 5 + 5;
    poll("the first tasks done", Duration::from_secs(30), || async {
        let ran = cluster.executions(hits);
        (ran.len() >= expect_ok + 3 && cluster.executions(hits_beta).len() >= 10).then_some(())
    })
    .await;
    poll("3 dead letters", Duration::from_secs(20), || {
        let mut conn = conn.clone();
        async move {
            let s = taskstream::stats::queue_stats(&mut conn, q, 800)
                .await
                .ok()?;
            (s.dead_letters >= 3).then_some(())
        }
    })
    .await;
    let s = taskstream::stats::queue_stats(&mut conn, q, 800)
        .await
        .unwrap();
    assert_eq!(s.dead_letters, 3, "only the permanent failures are dead");
    let (requeued, _) = taskstream::dlq::requeue_all(&mut conn, q).await.unwrap();
    assert_eq!(requeued, 3);

    taskstream::signals::pause(&mut conn, q).await.unwrap();
    taskstream::signals::resume(&mut conn, q).await.unwrap();

    // Long tasks in flight when the worker is killed: a second one recovers them.
    let long: Vec<String> = producer
        .enqueue_batch(
            (0..8)
                .map(|_| record(q, hits, serde_json::json!({"ms": 1500})))
                .collect(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.task_id)
        .collect();
    poll("long tasks started", Duration::from_secs(20), || async {
        let ran = cluster.executions(hits);
        long.iter().all(|id| ran.contains_key(id)).then_some(())
    })
    .await;
    w1.kill9();
    let _w2 = WorkerProc::spawn_named(&toml, "c2");
    poll(
        "long tasks recovered and finished",
        Duration::from_secs(30),
        || async {
            let ran = cluster.executions(hits);
            long.iter().all(|id| ran.get(id) == Some(&2)).then_some(())
        },
    )
    .await;
    poll(
        "nothing pending for the worker group",
        Duration::from_secs(30),
        || {
            let mut conn = conn.clone();
            async move {
                let s = taskstream::stats::queue_stats(&mut conn, q, 800)
                    .await
                    .ok()?;
                let busy: u64 = s
                    .groups
                    .iter()
                    .filter(|g| g.name == "taskstream")
                    .map(|g| g.pending + g.lag.unwrap_or(0))
                    .sum();
                (busy == 0 && s.scheduled == 0).then_some(())
            }
        },
    )
    .await;
    for id in &long {
        expected.insert(id.clone(), 2);
    }
    let mut ran = cluster.executions(hits);
    ran.extend(cluster.executions(hits_beta));
    let done = taskstream::stats::completed_counts(&mut conn, &["alpha".into(), "beta".into()])
        .await
        .unwrap();
    assert_eq!(done[1], ("beta".to_string(), 10), "{done:?}");
    assert!(!ran.contains_key(&cancelled), "the cancelled task ran");
    let wrong: Vec<(&String, u64, Option<&u64>)> = expected
        .iter()
        .filter(|(id, n)| ran.get(*id) != Some(n))
        .map(|(id, n)| (id, *n, ran.get(id)))
        .collect();
    assert!(
        wrong.is_empty(),
        "tasks that ran a wrong number of times (id, expected, ran): {wrong:?}"
    );
    assert_eq!(
        ran.len(),
        expected.len(),
        "tasks ran that were never enqueued"
    );

    let (shas, errors) = cluster.scripts_and_errors();
    let digests = script_digests(&cluster);
    let ran: BTreeSet<&str> = shas
        .iter()
        .filter_map(|s| digests.get(s).map(String::as_str))
        .collect();
    let not_here: BTreeSet<&str> = [
        "saga_apply.lua",
        "saga_prune_consumers.lua",
        "demo_record_undo.lua",
    ]
    .into_iter()
    .collect();
    let missing: Vec<&str> = digests
        .values()
        .map(String::as_str)
        .filter(|n| !ran.contains(n) && !not_here.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "scripts that never ran: {missing:?}; ran {ran:?}"
    );
    assert!(
        !errors.contains_key("CROSSSLOT"),
        "a command spanned slots: {errors:?}"
    );
    println!("scripts run on the cluster: {ran:?}; server errors: {errors:?}");
}
