//! Type routing: worker pools serve only their declared types, across 10,000 mixed tasks.
#![cfg(feature = "cli")]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{poll, RedisServer};
use taskstream::config::{Config, QueueConfig};
use taskstream::handler::{handler_fn, Registry, TaskContext};
use taskstream::keys::QueueKeys;
use taskstream::producer::{NewTask, Producer};
use tokio_util::sync::CancellationToken;

type Runs = Arc<Mutex<Vec<(String, String, String)>>>; // (task id, type, pool)

fn pool_config(url: &str, queue: &str, pool: Option<&str>, serves: &[&str]) -> Config {
    let mut c = Config::default();
    c.redis.url = url.to_string();
    c.http.listen = String::new();
    c.worker.block_ms = 200;
    c.queues = vec![QueueConfig {
        name: queue.into(),
        concurrency: 16,
        express_concurrency: 2,
        pool: pool.map(str::to_string),
        serves: serves.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }];
    c
}

fn pool_registry(pool: &str, types: &[&str], runs: &Runs) -> Registry {
    let mut reg = Registry::new();
    for t in types {
        let (runs, pool) = (runs.clone(), pool.to_string());
        reg.register(
            *t,
            handler_fn(move |ctx: TaskContext| {
                runs.lock().unwrap().push((
                    ctx.id().to_string(),
                    ctx.task_type().to_string(),
                    pool.clone(),
                ));
                async { Ok(serde_json::Value::Null) }
            }),
        );
    }
    reg
}

#[tokio::test]
async fn pools_only_receive_their_types_and_unknown_types_are_dead_lettered() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let q = "mixed";
    let runs: Runs = Default::default();
    let pools: [(&str, &[&str]); 3] = [
        ("images", &["a.resize", "a.crop"]),
        ("mail", &["b.send"]),
        ("billing", &["c.charge"]),
    ];
    let mut stops = Vec::new();
    for (pool, types) in pools {
        let stop = CancellationToken::new();
        let w = taskstream::worker::Worker::new(
            pool_config(&redis.url(), q, Some(pool), types),
            pool_registry(pool, types, &runs),
        );
        stops.push((stop.clone(), tokio::spawn(w.run(stop))));
    }
    // The default pool serves nothing itself: it forwards routed types and dead-letters
    // types nobody serves.
    let stop = CancellationToken::new();
    let w =
        taskstream::worker::Worker::new(pool_config(&redis.url(), q, None, &[]), Registry::new());
    stops.push((stop.clone(), tokio::spawn(w.run(stop))));
    let mut conn = redis.conn().await;
    let k = QueueKeys::new(q);
    poll(
        "all pools registered their routes",
        Duration::from_secs(10),
        || {
            let mut c = conn.clone();
            let key = k.routes.clone();
            async move {
                let n: u64 = redis::cmd("HLEN")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
                    .unwrap();
                (n == 4).then_some(())
            }
        },
    )
    .await;
    let p = Producer::connect(&pool_config(&redis.url(), q, None, &[]))
        .await
        .unwrap();
    let types = ["a.resize", "a.crop", "b.send", "c.charge"];
    let mut expected: HashMap<String, &str> = HashMap::new();
    for chunk in 0..10 {
        let batch: Vec<_> = (0..1000)
            .map(|i| NewTask::new(q, types[(i * 7 + chunk) % 4], &i).unwrap())
            .collect();
        for (e, t) in p
            .enqueue_batch(batch.clone())
            .await
            .unwrap()
            .into_iter()
            .zip(batch)
        {
            let ty: &str = types.iter().find(|x| **x == t.task_type).unwrap();
            expected.insert(e.task_id, ty);
        }
    }
    // A producer in another language knows nothing of pools: it writes to the default stream.
    for i in 0..10 {
        let id = format!("raw-{i}");
        let _: String = redis::cmd("XADD")
            .arg(&k.stream)
            .arg("*")
            .arg("id")
            .arg(&id)
            .arg("type")
            .arg("b.send")
            .arg("payload")
            .arg("{}")
            .query_async(&mut conn)
            .await
            .unwrap();
        expected.insert(id, "b.send");
    }
    let _: String = redis::cmd("XADD")
        .arg(&k.stream)
        .arg("*")
        .arg("type")
        .arg("z.nobody")
        .arg("payload")
        .arg("{}")
        .query_async(&mut conn)
        .await
        .unwrap();
    let r = runs.clone();
    let n = expected.len();
    poll("10,010 tasks ran", Duration::from_secs(60), || {
        let got = r.lock().unwrap().len();
        async move { (got >= n).then_some(()) }
    })
    .await;
    poll(
        "unknown type dead-lettered",
        Duration::from_secs(10),
        || {
            let mut c = conn.clone();
            let d = k.dlq.clone();
            async move {
                let n: u64 = redis::cmd("XLEN")
                    .arg(&d)
                    .query_async(&mut c)
                    .await
                    .unwrap();
                (n == 1).then_some(())
            }
        },
    )
    .await;
    for (s, j) in stops {
        common::stop_within("a pool's worker", &s, j).await.unwrap();
    }
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), n, "each task ran exactly once");
    let serving: HashMap<&str, &str> = pools
        .iter()
        .flat_map(|(p, ts)| ts.iter().map(move |t| (*t, *p)))
        .collect();
    let cross: Vec<_> = runs
        .iter()
        .filter(|(_, t, pool)| serving[t.as_str()] != pool)
        .collect();
    assert!(cross.is_empty(), "cross-type deliveries: {}", cross.len());
    for (id, t, _) in &runs {
        assert_eq!(expected.get(id).copied(), Some(t.as_str()));
    }
    let dl = taskstream::dlq::list(&mut conn, q, 10).await.unwrap();
    assert!(
        dl[0]
            .get("dlq_reason")
            .unwrap()
            .contains("unknown task type \"z.nobody\""),
        "{:?}",
        dl[0]
    );
    for pool in ["images", "mail", "billing"] {
        let len: u64 = redis::cmd("XLEN")
            .arg(k.pool_stream(pool, taskstream::keys::Lane::Bulk))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(len, 0, "pool {pool} drained");
    }
}

/// Issue 9: a saga step of a type that only a named pool serves went to the queue's
/// default stream and waited for the default pool to forward it (forever, with no default
/// pool). Here no default-pool worker runs at all: the sagas finish only if every step and
/// compensation task is written to the pool's own streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_steps_go_straight_to_the_pool_that_serves_their_type() {
    use serde_json::json;
    use taskstream::handler::HandlerError;
    use taskstream::saga::definition::{SagaDef, StepDef};
    use taskstream::saga::{ops, Orchestrator, OrchestratorConfig};

    let redis = RedisServer::start();
    let q = "sagaq";
    let runs: Runs = Default::default();
    let mut reg = Registry::new();
    for t in ["p.step", "p.undo"] {
        let runs = runs.clone();
        reg.register(
            t,
            handler_fn(move |ctx: TaskContext| {
                runs.lock().unwrap().push((
                    ctx.id().to_string(),
                    ctx.task_type().to_string(),
                    "gpu".to_string(),
                ));
                let fail = ctx.task_type() == "p.step"
                    && ctx
                        .payload::<serde_json::Value>()
                        .map(|p| p["input"]["fail_at"] == p["step"])
                        .unwrap_or(false);
                async move {
                    if fail {
                        Err(HandlerError::permanent("failed on purpose"))
                    } else {
                        Ok(json!({"ok": true}))
                    }
                }
            }),
        );
    }
    let stop = CancellationToken::new();
    let pool = taskstream::worker::Worker::new(
        pool_config(&redis.url(), q, Some("gpu"), &["p.step", "p.undo"]),
        reg,
    );
    let pool = tokio::spawn(pool.run(stop.clone()));
    let mut conn = redis.conn().await;
    let k = QueueKeys::new(q);
    poll(
        "the pool registered its routes",
        Duration::from_secs(10),
        || {
            let mut c = conn.clone();
            let key = k.routes.clone();
            async move {
                let n: u64 = redis::cmd("HLEN")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
                    .ok()?;
                (n == 2).then_some(())
            }
        },
    )
    .await;
    let def = SagaDef::builder("pooled")
        .step(StepDef::new("a", "p.step").queue(q).compensate("p.undo"))
        .step(StepDef::new("b", "p.step").queue(q).compensate("p.undo"))
        .build()
        .unwrap();
    let defs = vec![def];
    let mut cfg = pool_config(&redis.url(), q, None, &[]);
    cfg.orchestrator = OrchestratorConfig {
        block_ms: 100,
        claim_idle_ms: 500,
        deadline_interval_ms: 20,
        sample_interval_ms: 200,
        ..OrchestratorConfig::default()
    };
    let orch = tokio::spawn(Orchestrator::new(&cfg, defs.clone()).run(stop.clone()));
    let ok = ops::start(&mut conn, &defs, "pooled", json!({}))
        .await
        .unwrap();
    let bad = ops::start(&mut conn, &defs, "pooled", json!({"fail_at": "b"}))
        .await
        .unwrap();
    for (id, want) in [(&ok, "completed"), (&bad, "rolled_back")] {
        let what = format!("saga {id} {want} with no default-pool worker");
        let v = poll(&what, Duration::from_secs(20), || {
            let mut c = conn.clone();
            let id = id.clone();
            async move {
                let v = ops::show(&mut c, &id).await.ok()?;
                matches!(v.status.as_str(), "completed" | "rolled_back" | "failed").then_some(v)
            }
        })
        .await;
        assert_eq!(v.status, want, "{v:?}");
    }
    stop.cancel();
    pool.await.unwrap().unwrap();
    orch.await.unwrap().unwrap();
    // Steps a, b of the first saga; a, b (failed) and the compensation of a of the other.
    let runs = runs.lock().unwrap().clone();
    let types: Vec<&str> = runs.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(
        (
            types.iter().filter(|t| **t == "p.step").count(),
            types.iter().filter(|t| **t == "p.undo").count()
        ),
        (4, 1),
        "{runs:?}"
    );
    // Every task was added to the pool's own lanes; the queue's default lanes never
    // received one (nothing was forwarded).
    let added = |stream: String| {
        let mut c = conn.clone();
        async move {
            let v: redis::Value = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&stream)
                .query_async(&mut c)
                .await
                .unwrap_or(redis::Value::Nil);
            let items: Vec<redis::Value> = match v {
                redis::Value::Array(a) => a,
                redis::Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                _ => return 0,
            };
            items
                .chunks(2)
                .find(|kv| matches!(&kv[0], redis::Value::BulkString(b) if b == b"entries-added"))
                .and_then(|kv| match kv[1] {
                    redis::Value::Int(n) => Some(n),
                    _ => None,
                })
                .unwrap_or(0)
        }
    };
    use taskstream::keys::Lane;
    assert_eq!(added(k.pool_stream("gpu", Lane::Bulk)).await, 4);
    assert_eq!(added(k.pool_stream("gpu", Lane::Express)).await, 1);
    assert_eq!(added(k.stream.clone()).await, 0);
    assert_eq!(added(k.express.clone()).await, 0);
}
