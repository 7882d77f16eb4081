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

/// Waits until the workers recorded `n` partitions for queue `q` (`ts:{q}:partitions`),
/// so a producer spreads over all of them.
async fn partitions_recorded(cluster: &Cluster, q: &str, n: u32) {
    let mut conn = cluster.sync_conn();
    let key = taskstream::keys::QueueKeys::new(q).partitions_key();
    let want = n.to_string();
    poll(
        &format!("the workers recorded {n} partitions of {q}"),
        Duration::from_secs(20),
        || {
            let got: Option<String> = redis::cmd("GET").arg(&key).query(&mut conn).unwrap_or(None);
            let done = got.as_deref() == Some(want.as_str());
            async move { done.then_some(()) }
        },
    )
    .await;
}

/// Enqueues `tasks` in one batch and returns their ids.
async fn enqueue_ids(producer: &Producer, tasks: Vec<NewTask>) -> Vec<String> {
    producer
        .enqueue_batch(tasks)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.task_id)
        .collect()
}

/// Enqueues `n` `builtin.record` tasks on `q` (recording into `hits`) and waits (`what`)
/// until each has run; returns their ids.
async fn run_records(
    cluster: &Cluster,
    producer: &Producer,
    q: &str,
    hits: &str,
    n: usize,
    what: &str,
) -> Vec<String> {
    let ids = enqueue_ids(
        producer,
        (0..n)
            .map(|_| record(q, hits, serde_json::json!({})))
            .collect(),
    )
    .await;
    poll(what, Duration::from_secs(30), || {
        let ran = cluster.executions(hits);
        let all = ids.iter().all(|id| ran.contains_key(id));
        async move { all.then_some(()) }
    })
    .await;
    ids
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
/// CROSSSLOT. The saga scripts run in
/// `a_thousand_sagas_on_a_cluster_survive_an_orchestrator_kill_and_compensate_in_reverse`.
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
        "result_ttl_secs = 60\nfanout_groups = [\"audit\"]\n[queues.types.\"builtin.record\"]\nrate_per_sec = 2000\nburst = 50\n[[queues]]\nname = \"beta\"\nconcurrency = 8\nmax_per_key = 1\n\
         [[breakers]]\ntarget = \"rec\"\ntypes = [\"builtin.record\"]\nmin_calls = 1000\nfailure_ratio = 1.0\n\
         [[schedules]]\nname = \"tick\"\nevery = \"1s\"\nqueue = \"alpha\"\ntype = \"builtin.record\"\npayload = { key = \"{rec}:ticks\" }\n",
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
    // Replies asked for on another slot (a raw producer's reply_to): posted apart from
    // the settle, which would otherwise span slots and fail for ever.
    let foreign_replies = "{elsewhere}:replies";
    assert_ne!(
        taskstream::keys::slot(foreign_replies),
        taskstream::keys::slot(q)
    );
    let replied_from = batch.len();
    for _ in 0..5 {
        let mut t = record(q, hits, serde_json::json!({}));
        t.reply_to = Some(foreign_replies.to_string());
        batch.push((t, 1));
    }
    // A second queue of the same process, on another slot (heartbeats and counters of
    // both go out together).
    for _ in 0..10 {
        batch.push((record("beta", hits_beta, serde_json::json!({})), 1));
    }
    // Per-key limits (keylimit.lua: admit, park, release) on beta's slot; the breaker on
    // builtin.record (breaker.lua, a slot of its own) sees every run but never opens.
    for _ in 0..5 {
        batch.push((
            record("beta", hits_beta, serde_json::json!({})).group_key("g"),
            1,
        ));
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
    let asked_replies: BTreeSet<String> = sent[replied_from..replied_from + 5]
        .iter()
        .map(|e| e.task_id.clone())
        .collect();
    let expect_ok = 100 + 10 + 5 + 5 + 5 + 5;
    poll("the first tasks done", Duration::from_secs(30), || async {
        let ran = cluster.executions(hits);
        (ran.len() >= expect_ok + 3 && cluster.executions(hits_beta).len() >= 15).then_some(())
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
    // The control plane's search and lookup scan within the queue's slot too.
    let insp = taskstream::inspect::Inspector::new(taskstream::rdb::Broker::new(conn.clone()));
    let found = insp
        .search_dead_letters(q, &taskstream::dlq::DeadLetterFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(found.letters.len(), 3, "{found:?}");
    let dead_id = found.letters[0].get("id").unwrap().to_string();
    let t = insp
        .task(q, &dead_id)
        .await
        .unwrap()
        .expect("the dead task");
    assert_eq!(t.state, taskstream::lookup::TaskState::Dead);
    let (requeued, _) = taskstream::dlq::requeue_all(&mut conn, q).await.unwrap();
    assert_eq!(requeued, 3);

    taskstream::signals::pause(&mut conn, q).await.unwrap();
    taskstream::signals::resume(&mut conn, q).await.unwrap();

    // Long tasks in flight when the worker is killed: a second one recovers them.
    let long: Vec<String> = enqueue_ids(
        &producer,
        (0..8)
            .map(|_| record(q, hits, serde_json::json!({"ms": 1500})))
            .collect(),
    )
    .await;
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
    let replies: Vec<(String, HashMap<String, String>)> = {
        let mut c = cluster.sync_conn();
        redis::cmd("XRANGE")
            .arg(foreign_replies)
            .arg("-")
            .arg("+")
            .query(&mut c)
            .unwrap()
    };
    let replied: BTreeSet<String> = replies
        .iter()
        .filter(|(_, f)| f.get("outcome").map(String::as_str) == Some("succeeded"))
        .filter_map(|(_, f)| f.get("task_id").cloned())
        .collect();
    assert_eq!(
        replied, asked_replies,
        "replies on another slot: {replies:?}"
    );
    let mut ran = cluster.executions(hits);
    ran.extend(cluster.executions(hits_beta));
    let done = taskstream::stats::completed_counts(&mut conn, &["alpha".into(), "beta".into()])
        .await
        .unwrap();
    assert_eq!(done[1], ("beta".to_string(), 15), "{done:?}");
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

    // A schedule's ticks (schedule_tick.lua) and its pause and resume (schedule_pause.lua).
    poll(
        "two schedule ticks ran",
        Duration::from_secs(30),
        || async { (cluster.executions("{rec}:ticks").len() >= 2).then_some(()) },
    )
    .await;
    let insp =
        taskstream::inspect::Inspector::new(taskstream::rdb::Broker::new(producer.connection()));
    assert_eq!(insp.pause_schedule("tick", true).await.unwrap(), Some(true));
    assert_eq!(
        insp.pause_schedule("tick", false).await.unwrap(),
        Some(true)
    );
    // A blocking wait for a result (the record and its doorbell in the task's slot; the
    // XREAD on a cluster connection of its own).
    let f = producer
        .enqueue_and_wait(
            record(q, "{rec}:waited", serde_json::json!({})),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(f.state, taskstream::results::RecordState::Succeeded);
    let shown = insp.task(q, &f.task_id).await.unwrap().unwrap();
    assert_eq!(shown.state, taskstream::lookup::TaskState::Succeeded);

    let (shas, errors) = cluster.scripts_and_errors();
    let digests = script_digests(&cluster);
    let ran: BTreeSet<&str> = shas
        .iter()
        .filter_map(|s| digests.get(s).map(String::as_str))
        .collect();
    let not_here: BTreeSet<&str> = [
        "saga_apply.lua",
        "saga_relay.lua",
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

/// A queue name (from `prefix0`, `prefix1`, …) whose slot lives on `master`.
fn queue_on(cluster: &Cluster, prefix: &str, master: u16) -> String {
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .find(|q| cluster.master_of(&format!("{{{q}}}")) == master)
        .expect("a name on that master")
}

/// Enqueues `record` tasks in batches of 20 until `stop`, retrying after any error (a
/// batch that failed is not counted: its tasks may or may not exist). Returns the ids of
/// every task whose enqueue the producer saw succeed.
async fn enqueue_until(
    producer: Producer,
    queue: String,
    hits: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pace: Option<Duration>,
) -> (u64, u64) {
    let (mut ok, mut failed) = (0, 0);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let batch: Vec<NewTask> = (0..20)
            .map(|_| record(&queue, &hits, serde_json::json!({})))
            .collect();
        match producer.enqueue_batch(batch).await {
            Ok(sent) => {
                ok += 1;
                if let Some(p) = pace {
                    tokio::time::sleep(p).await; // pacing the producer, not waiting for an event
                }
                acked
                    .lock()
                    .unwrap()
                    .extend(sent.into_iter().map(|e| e.task_id));
            }
            Err(_) => {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(50)).await; // back off after an error
            }
        }
    }
    (ok, failed)
}

/// A producer enqueueing in the background ([`enqueue_until`]) and the ids it saw succeed.
struct Enqueuer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    run: tokio::task::JoinHandle<(u64, u64)>,
}

impl Enqueuer {
    fn start(producer: Producer, queue: &str, hits: &str, pace: Option<Duration>) -> Enqueuer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let run = tokio::spawn(enqueue_until(
            producer,
            queue.to_string(),
            hits.to_string(),
            stop.clone(),
            acked.clone(),
            pace,
        ));
        Enqueuer { stop, acked, run }
    }

    /// Enqueues acknowledged so far.
    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `n` enqueues were acknowledged in all.
    async fn reach(&self, n: usize, what: &str) {
        poll(what, Duration::from_secs(60), || {
            let got = self.count();
            async move { (got >= n).then_some(()) }
        })
        .await;
    }

    /// Stops; returns the acknowledged ids and the number of failed batches.
    async fn finish(self) -> (Vec<String>, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (_, failed) = self.run.await.unwrap();
        let acked = self.acked.lock().unwrap().clone();
        (acked, failed)
    }
}

/// One failover drill: a worker and a producer on `queue`, the queue's master killed with
/// SIGKILL once 1,000 enqueues were acknowledged, enqueueing on until 3,000 more were;
/// returns (acknowledged, acknowledged but never executed, failed batches).
async fn failover_drill(
    cluster: &mut Cluster,
    queue: &str,
    hits: &str,
    wait: bool,
) -> (usize, Vec<String>, u64) {
    let extra = if wait {
        "[redis]\nwait_replicas = 1\nwait_timeout_ms = 500\n"
    } else {
        ""
    };
    let toml = cluster
        .worker_toml(
            queue,
            "recovery_interval_ms = 200\nheartbeat_interval_ms = 100\nheartbeat_lapse_ms = 800",
            "",
        )
        .replace(
            "response_timeout_ms = 1000",
            &format!(
                "response_timeout_ms = 1000\n{}",
                extra.trim_start_matches("[redis]\n")
            ),
        );
    let _w = WorkerProc::spawn_named(&toml, &format!("{queue}-w"));
    let mut cfg = cluster.config();
    if wait {
        cfg.redis.wait_replicas = 1;
        cfg.redis.wait_timeout_ms = 500;
    }
    let producer = Producer::connect(&cfg).await.unwrap();
    let enq = Enqueuer::start(producer, queue, hits, None);
    enq.reach(1000, "1,000 enqueues acknowledged").await;
    let victim = cluster.master_of(&format!("{{{queue}}}"));
    cluster.kill(victim);
    // The replica is promoted; the old master comes back as its replica (with
    // `wait_replicas = 1` a master without a replica refuses every enqueue, by design).
    let tag = format!("{{{queue}}}");
    // Promoted once a live node reports three masters without the victim and the slot
    // map (CLUSTER SLOTS, which can lag CLUSTER NODES) names another master for the tag.
    poll("the replica promoted", Duration::from_secs(30), || {
        let masters = cluster.masters();
        let done = !masters.contains(&victim)
            && masters.len() == 3
            && cluster.try_master_of(&tag).is_some_and(|m| m != victim);
        async move { done.then_some(()) }
    })
    .await;
    cluster.restart(victim);
    let before = enq.count();
    enq.reach(
        before + 3000,
        "3,000 more enqueues acknowledged after the failover",
    )
    .await;
    let (acked, failed) = enq.finish().await;
    // Everything acknowledged that still exists is executed; what a failover lost never
    // will be. Wait for the first, then count the second.
    let lost = |ran: &HashMap<String, u64>| -> Vec<String> {
        acked
            .iter()
            .filter(|id| !ran.contains_key(*id))
            .cloned()
            .collect()
    };
    let mut conn = cluster.sync_conn();
    let stream = taskstream::keys::QueueKeys::new(queue).stream;
    poll("the backlog drained", Duration::from_secs(60), || {
        let n: u64 = redis::cmd("XLEN")
            .arg(&stream)
            .query(&mut conn)
            .unwrap_or(u64::MAX);
        async move { (n == 0).then_some(()) }
    })
    .await;
    let missing = lost(&cluster.executions(hits));
    (acked.len(), missing, failed)
}

/// A master killed mid-run: its replica is promoted, the worker and the producer carry
/// on. With `wait_replicas = 1` every acknowledged enqueue is executed; without it the
/// test counts and prints what the failover lost (asynchronous replication may lose the
/// last writes: the difference is the point of the setting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_run_loses_no_acknowledged_enqueue_with_wait_replicas() {
    let _g = common::heavy().await;
    let mut cluster = Cluster::start(3, 1);
    let masters = cluster.masters();
    let rec = (0..1000)
        .map(|i| format!("{{rec{i}}}:hits"))
        .find(|k| cluster.master_of(k) == masters[2])
        .unwrap();
    let safe = queue_on(&cluster, "safe", masters[0]);
    let (acked, missing, failed) = failover_drill(&mut cluster, &safe, &rec, true).await;
    println!("wait_replicas = 1: {acked} acknowledged, {} lost, {failed} batches refused during the failover", missing.len());
    assert!(
        missing.is_empty(),
        "acknowledged with wait_replicas = 1 and lost: {missing:?}"
    );
    cluster.wait_healthy(3, Duration::from_secs(30));

    let fast = queue_on(&cluster, "fast", masters[1]);
    let (acked, missing, failed) = failover_drill(&mut cluster, &fast, &rec, false).await;
    println!("wait_replicas = 0: {acked} acknowledged, {} lost, {failed} batches refused during the failover", missing.len());
}

/// One hot queue over the whole cluster: 50,000 tasks into a queue of 6 partitions, read
/// by 3 worker processes (each reads every partition). Every task runs exactly once, and
/// every master served some (the partitions' hash tags are spread over the slot ring).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_of_six_partitions_spreads_over_every_master_and_runs_each_task_once() {
    let _g = common::heavy().await;
    let cluster = Cluster::start(3, 1);
    let q = "hot";
    let hits = "{rec}:hot";
    let toml = cluster.worker_toml(q, "", "partitions = 6");
    let http = format!("127.0.0.1:{}", common::free_port());
    let workers: Vec<WorkerProc> = (0..3)
        .map(|i| {
            let toml = match i {
                0 => toml.replace("listen = \"\"", &format!("listen = \"{http}\"")),
                _ => toml.clone(),
            };
            WorkerProc::spawn_named(&toml, &format!("p{i}"))
        })
        .collect();
    let producer = Producer::connect(&cluster.config()).await.unwrap();
    // The workers record the partition count; the producer learns it before it sends.
    partitions_recorded(&cluster, q, 6).await;
    let mut ids = Vec::with_capacity(50_000);
    for _ in 0..50 {
        let batch: Vec<NewTask> = (0..1000)
            .map(|_| record(q, hits, serde_json::json!({})))
            .collect();
        ids.extend(
            producer
                .enqueue_batch(batch)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.task_id),
        );
    }
    poll("50,000 tasks run", Duration::from_secs(120), || {
        let n = cluster.executions(hits).len();
        async move { (n >= 50_000).then_some(()) }
    })
    .await;
    let ran = cluster.executions(hits);
    let twice: Vec<_> = ran.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "tasks that ran more than once: {}",
        twice.len()
    );
    assert!(ids.iter().all(|id| ran.contains_key(id)));
    // Which master served which partition (each partition's `done` counter).
    let mut served = BTreeSet::new();
    let mut per_partition = Vec::new();
    for p in 0..6 {
        let k = taskstream::keys::QueueKeys::partition(q, p);
        let done: Option<u64> = redis::cmd("HGET")
            .arg(&k.counters)
            .arg("done")
            .query(&mut cluster.sync_conn())
            .unwrap();
        let master = cluster.master_of(&k.stream);
        per_partition.push((p, master, done.unwrap_or(0)));
        if done.unwrap_or(0) > 0 {
            served.insert(master);
        }
    }
    println!("partition, master, tasks done: {per_partition:?}");
    assert!(
        per_partition.iter().all(|(_, _, d)| *d > 0),
        "a partition got nothing: {per_partition:?}"
    );
    let masters: BTreeSet<u16> = cluster.masters().into_iter().collect();
    assert_eq!(served, masters, "every master serves part of the queue");
    let s = taskstream::stats::queue_stats(&mut producer.connection(), q, 2000)
        .await
        .unwrap();
    assert_eq!(s.partitions, 6);
    // `stats` names the master of each partition.
    assert_eq!(s.by_partition.len(), 6);
    for (p, master, _) in &per_partition {
        assert_eq!(
            s.by_partition[*p as usize].node.as_deref(),
            Some(format!("127.0.0.1:{master}").as_str()),
            "{:?}",
            s.by_partition
        );
    }
    // So does /metrics, for the dashboards' per-partition panels.
    poll(
        "each partition's backlog under its master in /metrics",
        Duration::from_secs(20),
        || {
            let page = common::http_get(&http, "/metrics").map(|(_, b)| b);
            let want: Vec<(String, String)> = per_partition
                .iter()
                .map(|(p, m, _)| (p.to_string(), format!("127.0.0.1:{m}")))
                .collect();
            async move {
                let page = page?;
                want.iter()
                    .all(|(p, node)| {
                        common::prom_value(
                            &page,
                            "taskstream_partition_stream_length",
                            &[
                                ("queue", q),
                                ("partition", p),
                                ("lane", "bulk"),
                                ("node", node),
                            ],
                        )
                        .is_some()
                    })
                    .then_some(())
            }
        },
    )
    .await;
    drop(workers);
}

/// Pending entries of `consumer` in the default group of `stream`.
fn pending_of(conn: &mut redis::cluster::ClusterConnection, stream: &str, consumer: &str) -> u64 {
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg("taskstream")
        .arg("-")
        .arg("+")
        .arg(10_000)
        .arg(consumer)
        .query(conn)
        .unwrap_or(redis::Value::Nil);
    match v {
        redis::Value::Array(a) => a.len() as u64,
        _ => 0,
    }
}

/// A worker killed with SIGKILL on a cluster while it holds tasks in every partition: the
/// survivor takes them over in every partition, each killed task runs again, nothing stays
/// pending for the dead consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_on_a_cluster_gets_its_tasks_recovered_in_every_partition() {
    let _g = common::heavy().await;
    let cluster = Cluster::start(3, 1);
    let q = "crash";
    let hits = "{rec}:crash";
    let toml = cluster.worker_toml(
        q,
        "recovery_interval_ms = 200\nheartbeat_interval_ms = 100\nheartbeat_lapse_ms = 800",
        "partitions = 3",
    );
    let mut a = WorkerProc::spawn_named(&toml, "crash-a");
    let producer = Producer::connect(&cluster.config()).await.unwrap();
    let mut conn = cluster.sync_conn();
    partitions_recorded(&cluster, q, 3).await;
    let ids: Vec<String> = enqueue_ids(
        &producer,
        (0..24)
            .map(|_| record(q, hits, serde_json::json!({"ms": 1500})))
            .collect(),
    )
    .await;
    poll(
        "all 24 started on worker a",
        Duration::from_secs(20),
        || {
            let ran = cluster.executions(hits);
            let all = ids.iter().all(|id| ran.contains_key(id));
            async move { all.then_some(()) }
        },
    )
    .await;
    let streams: Vec<String> = (0..3)
        .map(|p| taskstream::keys::QueueKeys::partition(q, p).stream)
        .collect();
    let held: Vec<u64> = streams
        .iter()
        .map(|s| pending_of(&mut conn, s, &a.consumer()))
        .collect();
    assert!(
        held.iter().all(|n| *n > 0),
        "worker a holds tasks in every partition: {held:?}"
    );
    a.kill9();
    let _b = WorkerProc::spawn_named(&toml, "crash-b");
    poll(
        "every killed task ran again",
        Duration::from_secs(30),
        || {
            let ran = cluster.executions(hits);
            let all = ids.iter().all(|id| ran.get(id) == Some(&2));
            async move { all.then_some(()) }
        },
    )
    .await;
    poll(
        "nothing left pending for the dead consumer",
        Duration::from_secs(30),
        || {
            let left: u64 = streams
                .iter()
                .map(|s| pending_of(&mut conn, s, &a.consumer()))
                .sum();
            async move { (left == 0).then_some(()) }
        },
    )
    .await;
}

/// `redis-cli --cluster reshard` moves every slot of the master that holds partition 0 to
/// another master while a producer enqueues and a worker runs: nothing acknowledged is
/// lost, nothing stays stuck, and the moved partition is read on its new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_during_a_run_loses_nothing_and_leaves_nothing_stuck() {
    let _g = common::heavy().await;
    let cluster = Cluster::start(3, 1);
    let q = "moving";
    let hits = "{rec}:moving";
    let toml = cluster.worker_toml(q, "", "partitions = 3");
    let _w = WorkerProc::spawn_named(&toml, "mover");
    let producer = Producer::connect(&cluster.config()).await.unwrap();
    let enq = Enqueuer::start(producer, q, hits, Some(Duration::from_millis(5)));
    enq.reach(1000, "1,000 enqueues acknowledged").await;
    let tag = format!("{{{q}}}");
    let from = cluster.master_of(&tag);
    let to = *cluster.masters().iter().find(|m| **m != from).unwrap();
    let id = |port: u16| cluster.query(port, &["CLUSTER", "MYID"]).unwrap();
    let (from_id, to_id) = (id(from), id(to));
    let seed = format!("127.0.0.1:{from}");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("redis-cli")
            .args(["--cluster", "reshard", &seed])
            .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
            .args(["--cluster-slots", "16384", "--cluster-yes"])
            .output()
            .expect("redis-cli")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "reshard failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cluster.master_of(&tag), to, "partition 0 moved");
    let before = enq.count();
    enq.reach(
        before + 1000,
        "1,000 more enqueues acknowledged after the reshard",
    )
    .await;
    let (acked, failed) = enq.finish().await;
    poll(
        "every acknowledged task ran",
        Duration::from_secs(60),
        || {
            let ran = cluster.executions(hits);
            let missing = acked.iter().filter(|id| !ran.contains_key(*id)).count();
            async move { (missing == 0).then_some(()) }
        },
    )
    .await;
    let mut conn = cluster.sync_conn();
    for p in 0..3 {
        let k = taskstream::keys::QueueKeys::partition(q, p);
        let stuck: u64 = redis::cmd("XLEN").arg(&k.stream).query(&mut conn).unwrap();
        assert_eq!(stuck, 0, "partition {p} left entries behind");
    }
    println!(
        "reshard: {} acknowledged, {failed} batches refused while slots moved",
        acked.len()
    );
}

/// ACL on a cluster, as for one server: the user and password of the first seed URL
/// authenticate every node connection (commands and blocking readers alike), and a wrong
/// password is said in the log and retried, never a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_of_the_seed_urls_reaches_every_node() {
    let _g = common::heavy().await;
    let cluster = Cluster::start_with(
        3,
        0,
        &["--user", "ts", "on", ">s3cret", "~*", "&*", "+@all"],
    );
    let seeds = |password: &str| -> String {
        let urls: Vec<String> = cluster
            .nodes
            .keys()
            .map(|p| format!("\"redis://ts:{password}@127.0.0.1:{p}\""))
            .collect();
        format!("cluster_nodes = [{}]", urls.join(", "))
    };
    let q = "acl";
    let hits = "{rec}:acl";
    let toml = common::worker_toml("URL", q, "", "partitions = 3")
        .replace("url = \"URL\"", &seeds("s3cret"));
    let _w = WorkerProc::spawn_named(&toml, "acl");
    let mut cfg = cluster.config();
    cfg.redis.cluster_nodes = cluster
        .nodes
        .keys()
        .map(|p| format!("redis://ts:s3cret@127.0.0.1:{p}"))
        .collect();
    let producer = Producer::connect(&cfg).await.unwrap();
    partitions_recorded(&cluster, q, 3).await;
    run_records(&cluster, &producer, q, hits, 60, "60 tasks run as user ts").await;
    for m in cluster.masters() {
        let list = cluster.query(m, &["CLIENT", "LIST"]).unwrap();
        assert!(
            list.lines().any(|l| l.contains(" user=ts ")),
            "master {m} has no connection of user ts:\n{list}"
        );
    }

    let bad =
        common::worker_toml("URL", "acl-bad", "", "").replace("url = \"URL\"", &seeds("wrong"));
    let mut w = WorkerProc::spawn_named(&bad, "acl-bad");
    let log = w
        .wait_for_log(
            "the wrong password is said and retried",
            "redis cluster unreachable, retrying with backoff",
        )
        .await;
    assert!(
        log.to_lowercase().contains("wrongpass") || log.to_lowercase().contains("auth"),
        "the log names the authentication failure: {log}"
    );
    assert!(w.alive(), "it keeps retrying rather than exiting");
}

/// The demo saga as `[[sagas]]` TOML, after the orchestrator settings of a fast test and
/// `orchestrator` (more lines of that table).
fn demo_saga_toml(orchestrator: &str) -> String {
    use taskstream::saga::definition::{demo_saga, SagaDefToml};
    let demo = toml::to_string(&SagaDefToml::from(&demo_saga())).unwrap();
    format!(
        "[orchestrator]\nblock_ms = 200\nclaim_idle_ms = 500\ndeadline_interval_ms = 50\n{orchestrator}\n[[sagas]]\n{}",
        demo.replace("[[steps]]", "[[sagas.steps]]")
    )
}

/// What the demo saga's compensations record when step `fail_at` fails (`None`: no
/// failure): the compensations of the steps completed before it, in reverse.
fn expected_undo_log(fail_at: Option<usize>) -> Vec<&'static str> {
    let comps = [
        "demo.clear_reasoning_cache",
        "demo.delete_generated_code",
        "demo.discard_model",
    ];
    match fail_at {
        None => Vec::new(),
        Some(k) => comps[..k.min(3)].iter().rev().copied().collect(),
    }
}

/// Sagas on a real cluster (issue 11.3): 1,000 concurrent demo sagas over a queue of 3
/// partitions, a failure at each step position (and none) compensated in reverse, with
/// two worker+orchestrator processes of which one is killed with SIGKILL mid-run. The
/// first 100 are started by an ACL user that may not run `SET`, so its relays of their
/// first steps fail and the dispatches wait in the buckets' outboxes: the orchestrators'
/// outbox sweep must relay them. Every saga ends as its input asks, each transition once
/// (revisions 1..=k), each compensation recorded once; no node ever answered CROSSSLOT,
/// and the outboxes and reply streams are left empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sagas_on_a_cluster_survive_an_orchestrator_kill_and_compensate_in_reverse() {
    use taskstream::saga::keys::{cluster_replies, BucketKeys, BUCKETS, GROUP};
    use taskstream::saga::ops;
    let _g = common::heavy().await;
    let cluster = Cluster::start_with(
        3,
        1,
        &[
            "--user", "starter", "on", ">pw", "~*", "&*", "+@all", "-set",
        ],
    );
    let q = "default";
    let toml = format!(
        "{}\n{}",
        cluster.worker_toml(
            q,
            "orchestrator = true\nheartbeat_interval_ms = 100\nheartbeat_lapse_ms = 800\nrecovery_interval_ms = 200",
            "partitions = 3"
        ),
        demo_saga_toml("")
    );
    let mut a = WorkerProc::spawn_named(&toml, "saga-a");
    let b = WorkerProc::spawn_named(&toml, "saga-b");
    partitions_recorded(&cluster, q, 3).await;

    let defs = vec![taskstream::saga::definition::demo_saga()];
    let steps = ["reasoning", "codegen", "ml", "backtest"];
    // n % 5: 0 succeeds, 1..=4 fails at step n % 5 - 1.
    let fail_at = |n: usize| (!n.is_multiple_of(5)).then(|| n % 5 - 1);
    let input = |n: usize| {
        let mut i = serde_json::json!({"n": n, "sleep_ms": 10, "log_key": format!("log:c:{n}")});
        if let Some(k) = fail_at(n) {
            i["fail_at"] = steps[k].into();
        }
        i
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let name = || taskstream::rdb::ClientName::new("test", taskstream::rdb::Role::Cli);
    let mut restricted = cluster.config();
    restricted.redis.cluster_nodes = cluster
        .nodes
        .keys()
        .map(|p| format!("redis://starter:pw@127.0.0.1:{p}"))
        .collect();
    let mut starter = taskstream::rdb::connect(&restricted.redis, &stop, name())
        .await
        .unwrap();
    let mut conn = taskstream::rdb::connect(&cluster.config().redis, &stop, name())
        .await
        .unwrap();
    let mut ids = ops::start_many(&mut starter, &defs, "demo", (0..100).map(input).collect())
        .await
        .unwrap();
    ids.extend(
        ops::start_many(&mut conn, &defs, "demo", (100..1000).map(input).collect())
            .await
            .unwrap(),
    );

    // Kill one process (worker and orchestrator) once some sagas have ended.
    poll("100 sagas ended", Duration::from_secs(60), || {
        let mut c = conn.clone();
        async move {
            let counts = ops::counts(&mut c).await.ok()?;
            let ended: u64 = counts
                .by_state
                .iter()
                .filter(|(s, _)| *s == "completed" || *s == "rolled_back")
                .map(|(_, n)| n)
                .sum();
            (ended >= 100).then_some(())
        }
    })
    .await;
    a.kill9();
    eprintln!("worker+orchestrator saga-a killed mid-run");

    for (n, id) in ids.iter().enumerate() {
        let what = format!("saga {n} ({id}) to end");
        let v = poll(&what, Duration::from_secs(90), || {
            let mut c = conn.clone();
            let id = id.clone();
            async move {
                let v = ops::show(&mut c, &id).await.ok()?;
                ["completed", "rolled_back", "failed"]
                    .contains(&v.status.as_str())
                    .then_some(v)
            }
        })
        .await;
        let want = if fail_at(n).is_some() {
            "rolled_back"
        } else {
            "completed"
        };
        assert_eq!(
            v.status,
            want,
            "saga {n} {id}; survivor's log:\n{}",
            b.log_text()
        );
        let revs: Vec<u64> = v.history.iter().map(|h| h.rev).collect();
        assert_eq!(
            revs,
            (1..=revs.len() as u64).collect::<Vec<_>>(),
            "saga {n}"
        );
        for s in v.steps.iter().filter_map(|s| s.output.as_ref()) {
            if s.get("n").is_some() {
                assert_eq!(
                    (&s["n"], &s["saga_id"]),
                    (&serde_json::json!(n), &serde_json::json!(id))
                );
            }
        }
        let log_key = format!("log:c:{n}");
        let mut c = cluster.sync_conn();
        let log: Vec<String> = redis::cmd("LRANGE")
            .arg(&log_key)
            .arg(0)
            .arg(-1)
            .query(&mut c)
            .unwrap();
        assert_eq!(log, expected_undo_log(fail_at(n)), "saga {n} {id}");
    }

    // Nothing left behind: outboxes empty, nothing pending on any reply stream.
    let mut c = cluster.sync_conn();
    for b in 0..BUCKETS {
        let outbox = BucketKeys::cluster(b).outbox.unwrap();
        let n: u64 = redis::cmd("XLEN").arg(&outbox).query(&mut c).unwrap();
        assert_eq!(n, 0, "{outbox} still holds dispatches");
    }
    for p in 0..3 {
        let stream = taskstream::keys::QueueKeys::partition(q, p).stream;
        let replies = cluster_replies(&stream).unwrap();
        let summary: redis::Value = redis::cmd("XPENDING")
            .arg(&replies)
            .arg(GROUP)
            .query(&mut c)
            .unwrap();
        let pending = match summary {
            redis::Value::Array(v) => redis::from_redis_value::<u64>(v[0].clone()).unwrap(),
            other => panic!("XPENDING {replies}: {other:?}"),
        };
        assert_eq!(pending, 0, "{replies} holds pending replies");
    }
    assert!(
        [a.log_text(), b.log_text()]
            .iter()
            .any(|l| l.contains("relayed saga dispatches left in an outbox")),
        "no orchestrator swept an outbox (the restricted starter's relays should have \
         failed); survivor's log:\n{}",
        b.log_text()
    );
    let (shas, errors) = cluster.scripts_and_errors();
    let digests = script_digests(&cluster);
    let ran: BTreeSet<&str> = shas
        .iter()
        .filter_map(|s| digests.get(s).map(String::as_str))
        .collect();
    for s in ["saga_apply.lua", "saga_relay.lua", "demo_record_undo.lua"] {
        assert!(ran.contains(s), "{s} never ran; ran {ran:?}");
    }
    assert!(
        !errors.contains_key("CROSSSLOT"),
        "a command spanned slots: {errors:?}"
    );
    stop.cancel();
    drop(b);
}

/// TLS on a cluster, as on one server (issue 11.1): nodes that listen on TLS ports only to
/// taskstream (the plain ports are the harness's), with a certificate from a private CA,
/// client certificates required and TLS on the cluster bus. A worker and a producer given
/// the `rediss://` seeds, `tls_ca_file` and a client certificate run 300 tasks over 3
/// partitions on the 3 masters, each once, and every master shows their connections on its
/// TLS port; a worker trusting another CA says the certificate is not signed by
/// `redis.tls_ca_file` and keeps retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_client_certificates_reaches_every_node() {
    use common::tls::{certificates, require, tls_lines};
    if !require("openssl") {
        return;
    }
    let _g = common::heavy().await;
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    certificates(d);
    let cluster = Cluster::start_tls(3, d);
    let seeds: Vec<String> = cluster
        .tls_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect();
    let with_tls = |queue: &str, ca: &str| {
        common::worker_toml("URL", queue, "", "partitions = 3").replace(
            "url = \"URL\"",
            &format!(
                "cluster_nodes = [{}]\n{}",
                seeds.join(", "),
                tls_lines(d, ca, Some("client"))
            ),
        )
    };
    let q = "tlsq";
    let hits = "{rec}:tls";
    let toml = with_tls(q, "ca");
    let _w = WorkerProc::spawn_named(&toml, "tls");
    let cfg = taskstream::config::Config::parse("tls.toml", &toml).unwrap();
    let producer = Producer::connect(&cfg).await.unwrap();
    partitions_recorded(&cluster, q, 3).await;
    let ids = run_records(&cluster, &producer, q, hits, 300, "300 tasks run over TLS").await;
    let ran = cluster.executions(hits);
    assert!(
        ids.iter().all(|id| ran.get(id) == Some(&1)),
        "each once: {ran:?}"
    );
    for (plain, tls) in &cluster.tls_ports {
        let list = cluster.query(*plain, &["CLIENT", "LIST"]).unwrap();
        let on_tls = format!("laddr=127.0.0.1:{tls} ");
        assert!(
            list.lines().any(|l| l.contains(&on_tls)),
            "node {plain} has no client on its TLS port {tls}:\n{list}"
        );
    }

    let mut w = WorkerProc::spawn_named(&with_tls("tls_refused", "other-ca"), "tls-bad");
    let log = w
        .wait_for_log(
            "the worker refuses a node certificate from another CA",
            "not signed by redis.tls_ca_file",
        )
        .await;
    assert!(
        log.contains("unreachable"),
        "the log says what failed: {log}"
    );
    assert!(w.alive(), "it keeps retrying rather than exiting");
    w.kill9();
}

/// A step timeout and an abort keep their guarantees on a cluster (issue 11.3): the
/// deadline of a step whose task nobody runs fires from its bucket's deadline set and rolls
/// the saga back (compensating the step before it), and an abort of a running saga
/// compensates the step in flight; each compensation runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_timeouts_and_aborts_roll_back_on_a_cluster() {
    use taskstream::saga::ops;
    let _g = common::heavy().await;
    let cluster = Cluster::start(3, 0);
    let stuck = r#"
[[sagas]]
name = "stuck"
[[sagas.steps]]
name = "a"
action = "demo.reasoning"
compensation = "demo.clear_reasoning_cache"
[[sagas.steps]]
name = "b"
action = "demo.codegen"
queue = "nobody"
timeout_ms = 300
max_attempts = 1
"#;
    let toml = format!(
        "{}\n{}\n{}",
        cluster.worker_toml("default", "orchestrator = true", ""),
        demo_saga_toml("step_grace_ms = 300"),
        stuck
    );
    let _w = WorkerProc::spawn_named(&toml, "deadlines");
    let cfg = taskstream::config::Config::parse("w.toml", &toml).unwrap();
    let defs = taskstream::saga::configured(&cfg).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut conn = taskstream::rdb::connect(
        &cfg.redis,
        &stop,
        taskstream::rdb::ClientName::new("test", taskstream::rdb::Role::Cli),
    )
    .await
    .unwrap();
    let watch = conn.clone();
    let ended = |id: String| {
        let conn = watch.clone();
        async move {
            poll(
                &format!("saga {id} to end"),
                Duration::from_secs(30),
                || {
                    let mut c = conn.clone();
                    let id = id.clone();
                    async move {
                        let v = ops::show(&mut c, &id).await.ok()?;
                        ["completed", "rolled_back", "failed"]
                            .contains(&v.status.as_str())
                            .then_some(v)
                    }
                },
            )
            .await
        }
    };
    let log = |key: &str| -> Vec<String> {
        redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query(&mut cluster.sync_conn())
            .unwrap()
    };

    let timed_out = ops::start(
        &mut conn,
        &defs,
        "stuck",
        serde_json::json!({"log_key": "log:t:stuck"}),
    )
    .await
    .unwrap();
    // Abort while the first step runs (it sleeps 1.5 s).
    let aborted = ops::start(
        &mut conn,
        &defs,
        "demo",
        serde_json::json!({"sleep_ms": 1500, "log_key": "log:t:abort"}),
    )
    .await
    .unwrap();
    poll(
        "the demo saga's first step running",
        Duration::from_secs(20),
        || {
            let mut c = conn.clone();
            let id = aborted.clone();
            async move {
                let v = ops::show(&mut c, &id).await.ok()?;
                (v.steps[0].status == "running").then_some(())
            }
        },
    )
    .await;
    let state = ops::abort(&mut conn, &defs, &aborted, "test")
        .await
        .unwrap();
    assert_eq!(state, "compensating");

    let v = ended(timed_out.clone()).await;
    assert_eq!(v.status, "rolled_back", "{v:?}");
    assert!(
        v.history
            .iter()
            .any(|h| h.event.contains("timed") || h.event.contains("deadline")),
        "the rollback came from the step deadline: {:?}",
        v.history
    );
    assert_eq!(log("log:t:stuck"), ["demo.clear_reasoning_cache"]);
    let v = ended(aborted.clone()).await;
    assert_eq!(v.status, "rolled_back", "{v:?}");
    assert_eq!(log("log:t:abort"), ["demo.clear_reasoning_cache"]);
    stop.cancel();
}
