//! Saga orchestrator end to end: a private Redis, the library worker in-process with test
//! handlers, one or more orchestrators (in-process, or `taskstream orchestrator`
//! processes for the crash test). Waits are polls with deadlines, never fixed sleeps.
#![cfg(feature = "cli")]

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Map, Value};
use taskstream::rdb::Conn as ConnectionManager;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use common::{poll, RedisServer};
use taskstream::config::{Config, QueueConfig};
use taskstream::handler::{handler_fn, HandlerError, Registry, TaskContext};
use taskstream::saga::definition::{demo_saga, SagaDef, SagaDefToml, StepDef};
use taskstream::saga::{keys, ops, Orchestrator, OrchestratorConfig};
use taskstream::worker::Worker;

const WAIT: Duration = Duration::from_secs(20);

fn config(url: &str) -> Config {
    let mut cfg = Config::default();
    cfg.redis.url = url.to_string();
    cfg.http.listen = String::new();
    cfg.worker.block_ms = 100;
    cfg.worker.shutdown_grace_ms = 300;
    cfg.queues = vec![QueueConfig {
        name: "default".into(),
        concurrency: 64,
        express_concurrency: 16,
        backoff_base_ms: 10,
        backoff_cap_ms: 50,
        ..QueueConfig::default()
    }];
    cfg.orchestrator = OrchestratorConfig {
        block_ms: 100,
        claim_idle_ms: 500,
        deadline_interval_ms: 20,
        step_grace_ms: 200,
        sample_interval_ms: 200,
        ..OrchestratorConfig::default()
    };
    cfg
}

#[derive(Deserialize)]
struct StepPayload {
    saga_id: String,
    step: String,
    input: Value,
    #[serde(default)]
    outputs: Map<String, Value>,
}

fn asked(input: &Value, field: &str, step: &str) -> bool {
    input.get(field).and_then(Value::as_str) == Some(step)
}

async fn record(
    conn: &mut ConnectionManager,
    input: &Value,
    entry: String,
) -> Result<(), HandlerError> {
    if let Some(k) = input.get("log").and_then(Value::as_str) {
        redis::cmd("RPUSH")
            .arg(k)
            .arg(entry)
            .query_async::<()>(conn)
            .await
            .map_err(|e| HandlerError::retryable(e.to_string()))?;
    }
    Ok(())
}

/// `t.step` and `t.undo`, steered by the saga input: `fail_at`, `hang_at` (no reply for a
/// minute), `slow_at` + `slow_ms` (or, with `until_key`, until that key exists), `fail_undo_at`; they `RPUSH` `do:STEP` / `undo:STEP` to
/// the list named by `log`. Plus the demo saga's handlers.
fn registry(conn: &ConnectionManager) -> Registry {
    let mut reg = Registry::new();
    taskstream::saga::demo_handlers::register(&mut reg, conn.clone());
    let c = conn.clone();
    reg.register(
        "t.step",
        handler_fn(move |ctx: TaskContext| {
            let mut c = c.clone();
            async move {
                let p: StepPayload = ctx.payload()?;
                let i = &p.input;
                if asked(i, "hang_at", &p.step) {
                    return Err(HandlerError::retry_after("hanging", Duration::from_secs(60)));
                }
                if asked(i, "slow_at", &p.step) {
                    let ms = i["slow_ms"].as_u64().unwrap_or(1_000);
                    let until = i["until_key"].as_str().map(str::to_string);
                    let mut gate = c.clone();
                    let wait = async move {
                        match until {
                            // Held until the test says so: no time window to race.
                            Some(k) => loop {
                                let n: u64 = redis::cmd("EXISTS")
                                    .arg(&k)
                                    .query_async(&mut gate)
                                    .await
                                    .unwrap_or(0);
                                if n == 1 {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(20)).await; // poll
                            },
                            None => tokio::time::sleep(Duration::from_millis(ms)).await,
                        }
                    };
                    tokio::select! {
                        _ = wait => {}
                        _ = ctx.cancellation().cancelled() => return Err(HandlerError::retryable("cancelled")),
                    }
                }
                if asked(i, "fail_at", &p.step) {
                    return Err(HandlerError::permanent(format!("{} failed on purpose", p.step)));
                }
                record(&mut c, i, format!("do:{}", p.step)).await?;
                let seen: Vec<&String> = p.outputs.keys().collect();
                Ok(json!({"saga_id": p.saga_id, "n": i["n"], "step": p.step, "seen": seen}))
            }
        }),
    );
    let c = conn.clone();
    reg.register(
        "t.undo",
        handler_fn(move |ctx: TaskContext| {
            let mut c = c.clone();
            async move {
                let p: Value = ctx.payload()?;
                let step = p["step"].as_str().unwrap_or("").to_string();
                if asked(&p["input"], "fail_undo_at", &step) {
                    return Err(HandlerError::permanent(format!(
                        "undo of {step} failed on purpose"
                    )));
                }
                record(&mut c, &p["input"], format!("undo:{step}")).await?;
                Ok(json!({"undone": step, "output_was": p["output"]}))
            }
        }),
    );
    reg
}

/// Steps a, b, c, d on `t.step`; all compensable by `t.undo` but the last unless `comp_all`.
fn four(name: &str, comp_all: bool, tweak: impl Fn(&str, StepDef) -> StepDef) -> SagaDef {
    let mut b = SagaDef::builder(name).timeout(Duration::from_secs(20));
    for s in ["a", "b", "c", "d"] {
        let mut st = StepDef::new(s, "t.step")
            .max_attempts(2)
            .backoff(Duration::from_millis(10), Duration::from_millis(20));
        if s != "d" || comp_all {
            st = st.compensate("t.undo");
        }
        b = b.step(tweak(s, st));
    }
    b.build().unwrap()
}

struct Env {
    redis: RedisServer,
    conn: ConnectionManager,
    cfg: Config,
    defs: Vec<SagaDef>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<taskstream::Result<()>>>,
}

impl Env {
    /// Redis, an in-process worker and (with `orchestrator`) an in-process orchestrator.
    async fn start(defs: Vec<SagaDef>, orchestrator: bool) -> Env {
        let redis = RedisServer::start();
        let conn = redis.conn().await;
        let cfg = config(&redis.url());
        let mut env = Env {
            redis,
            conn,
            cfg,
            defs,
            stop: CancellationToken::new(),
            tasks: Vec::new(),
        };
        env.spawn_worker();
        if orchestrator {
            env.spawn_orchestrator(env.defs.clone());
        }
        env
    }

    fn spawn_worker(&mut self) {
        let w = Worker::new(self.cfg.clone(), registry(&self.conn));
        self.tasks.push(tokio::spawn(w.run(self.stop.clone())));
    }

    fn spawn_orchestrator(&mut self, defs: Vec<SagaDef>) {
        let o = Orchestrator::new(&self.cfg, defs);
        self.tasks.push(tokio::spawn(o.run(self.stop.clone())));
    }

    async fn start_saga(&mut self, name: &str, input: Value) -> String {
        ops::start(&mut self.conn, &self.defs, name, input)
            .await
            .unwrap()
    }

    /// Polls until saga `id` is in one of `states`.
    async fn wait_for(&self, id: &str, states: &[&str]) -> ops::SagaView {
        let what = format!("saga {id} to reach {states:?}");
        poll(&what, WAIT, || {
            let mut c = self.conn.clone();
            async move {
                let v = ops::show(&mut c, id).await.ok()?;
                states.contains(&v.status.as_str()).then_some(v)
            }
        })
        .await
    }

    async fn log(&self, key: &str) -> Vec<String> {
        let mut c = self.conn.clone();
        redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .unwrap()
    }

    async fn shutdown(self) {
        self.stop.cancel();
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("worker/orchestrator stops within 10 s")
                .unwrap()
                .unwrap();
        }
        drop(self.redis);
    }
}

fn statuses(v: &ops::SagaView) -> Vec<&str> {
    v.steps.iter().map(|s| s.status.as_str()).collect()
}

fn events(v: &ops::SagaView) -> Vec<String> {
    v.history
        .iter()
        .map(|h| match &h.step {
            Some(s) => format!("{} {s}", h.event),
            None => h.event.clone(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_runs_four_steps_with_earlier_outputs() {
    let mut env = Env::start(vec![four("four", false, |_, s| s)], true).await;
    let id = env
        .start_saga("four", json!({"n": 41, "log": "log:happy"}))
        .await;
    let v = env.wait_for(&id, &["completed"]).await;

    assert_eq!(statuses(&v), ["succeeded"; 4]);
    assert_eq!(env.log("log:happy").await, ["do:a", "do:b", "do:c", "do:d"]);
    // Each step saw the input and exactly the outputs of the steps before it.
    for (i, s) in v.steps.iter().enumerate() {
        let out = s.output.as_ref().unwrap();
        assert_eq!(out["saga_id"], json!(id));
        assert_eq!(out["n"], json!(41));
        let want: Vec<&str> = ["a", "b", "c", "d"][..i].to_vec();
        assert_eq!(out["seen"], json!(want), "step {}", s.name);
        assert_eq!(s.attempts, 1);
        assert!(s.started_at.unwrap() <= s.ended_at.unwrap());
    }
    assert_eq!(
        events(&v),
        [
            "start",
            "step_succeeded a",
            "step_succeeded b",
            "step_succeeded c",
            "step_succeeded d"
        ]
    );
    assert_eq!(
        v.history.iter().map(|h| h.rev).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(v.history.last().unwrap().to, "completed");
    assert_eq!(
        (v.rev, v.error.as_deref(), v.current_step.as_deref()),
        (5, None, None)
    );
    assert!(v.finished_at.is_some());
    // Finished: kept for the retention (7 days by default), out of the active indexes.
    let ttl = v.expires_in_secs.unwrap();
    assert!(ttl > 6 * 86_400 && ttl <= 7 * 86_400, "{ttl}");
    let mut c = env.conn.clone();
    let active: Option<f64> = redis::cmd("ZSCORE")
        .arg(keys::ACTIVE)
        .arg(&id)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(active, None);
    let deadlines: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys::DEADLINES)
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(deadlines.is_empty(), "{deadlines:?}");
    let hist_ttl: i64 = redis::cmd("TTL")
        .arg(keys::history(&id))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(hist_ttl > 6 * 86_400, "{hist_ttl}");
    // The tasks carried the saga's trace and stable idempotency keys; replies are consumed.
    assert!(v
        .traceparent
        .as_deref()
        .unwrap()
        .contains(&id.replace('-', "")));
    poll("replies acknowledged and deleted", WAIT, || {
        let mut c = env.conn.clone();
        async move {
            let n: u64 = redis::cmd("XLEN")
                .arg(keys::REPLIES)
                .query_async(&mut c)
                .await
                .ok()?;
            (n == 0).then_some(())
        }
    })
    .await;

    let done = ops::list(&mut c, Some("completed"), 10).await.unwrap();
    assert_eq!(
        done.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );
    assert_eq!(done[0].saga, "four");
    assert!(ops::list(&mut c, Some("running"), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(ops::list(&mut c, None, 10).await.unwrap().len(), 1);
    assert!(ops::list(&mut c, Some("bogus"), 10).await.is_err());
    let counts = ops::counts(&mut c).await.unwrap();
    assert_eq!(counts.by_state["completed"], 1);
    assert_eq!(counts.overdue, 0);
    let text = v.render();
    for want in [
        "status:   completed",
        "#3 d",
        "step_succeeded d",
        "running:d → completed",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    assert!(ops::render_list(&done, taskstream::task::now_ms()).contains(&id));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_at_each_position_compensates_exactly_the_completed_steps_in_reverse() {
    let mut env = Env::start(vec![four("all_comp", true, |_, s| s), demo_saga()], true).await;
    let mut ids = Vec::new();
    for step in ["a", "b", "c", "d"] {
        let log = format!("log:{step}");
        let id = env
            .start_saga("all_comp", json!({"fail_at": step, "log": log}))
            .await;
        ids.push((step, id, log));
    }
    let demo = env
        .start_saga(
            "demo",
            json!({"fail_at": "ml", "log_key": "log:demo", "sleep_ms": 1}),
        )
        .await;

    let expected: [(&[&str], &[&str]); 4] = [
        (&[], &["failed", "pending", "pending", "pending"]),
        (
            &["do:a", "undo:a"],
            &["compensated", "failed", "pending", "pending"],
        ),
        (
            &["do:a", "do:b", "undo:b", "undo:a"],
            &["compensated", "compensated", "failed", "pending"],
        ),
        (
            &["do:a", "do:b", "do:c", "undo:c", "undo:b", "undo:a"],
            &["compensated", "compensated", "compensated", "failed"],
        ),
    ];
    for ((step, id, log), (want_log, want_status)) in ids.iter().zip(expected) {
        let v = env.wait_for(id, &["rolled_back"]).await;
        assert_eq!(env.log(log).await, want_log, "fail at {step}");
        assert_eq!(statuses(&v), want_status, "fail at {step}");
        let err = v.error.as_deref().unwrap();
        assert!(
            err.contains(&format!("\"{step}\" failed: {step} failed on purpose")),
            "{err}"
        );
        let failed = v.steps.iter().find(|s| s.name == *step).unwrap();
        assert_eq!(failed.attempts, 1, "a permanent error is not retried");
        // Compensations were dispatched one at a time: each started after the last ended.
        let mut comps: Vec<(u64, u64)> = v
            .steps
            .iter()
            .filter_map(|s| Some((s.compensation_started_at?, s.compensation_ended_at?)))
            .collect();
        comps.sort_unstable();
        assert!(comps.windows(2).all(|w| w[0].1 <= w[1].0), "{comps:?}");
    }
    // The issue's example: the demo saga failing at `ml` undoes codegen, then reasoning;
    // backtest never ran, and ml itself failed without effect.
    let v = env.wait_for(&demo, &["rolled_back"]).await;
    assert_eq!(
        env.log("log:demo").await,
        ["demo.delete_generated_code", "demo.clear_reasoning_cache"]
    );
    assert_eq!(
        statuses(&v),
        ["compensated", "compensated", "failed", "pending"]
    );
    assert_eq!(
        events(&v),
        [
            "start",
            "step_succeeded reasoning",
            "step_succeeded codegen",
            "step_failed ml",
            "compensation_succeeded codegen",
            "compensation_succeeded reasoning"
        ]
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_timeouts_roll_back() {
    // `timed`: b may take 2 attempts of 100 ms (+10 ms backoff, +200 ms grace), but its
    // handler defers its retry by a minute, so no reply comes: the orchestrator's deadline
    // fires, b is in doubt and is compensated first.
    // `killed`: b's handler outlives its 100 ms time limit; the worker fails the task,
    // which fails the step (no lasting effect assumed), so only a is compensated.
    let timed = four("timed", false, |n, s| {
        if n == "b" {
            s.timeout(Duration::from_millis(100))
        } else {
            s
        }
    });
    let killed = four("killed", false, |n, s| {
        if n == "b" {
            s.timeout(Duration::from_millis(100)).max_attempts(1)
        } else {
            s
        }
    });
    let mut env = Env::start(vec![timed, killed], true).await;
    let t0 = Instant::now();
    let a = env
        .start_saga("timed", json!({"hang_at": "b", "log": "log:timed"}))
        .await;
    let b = env
        .start_saga(
            "killed",
            json!({"slow_at": "b", "slow_ms": 10_000, "log": "log:killed"}),
        )
        .await;

    let v = env.wait_for(&a, &["rolled_back"]).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "deadline fired early"
    );
    assert_eq!(env.log("log:timed").await, ["do:a", "undo:b", "undo:a"]);
    assert_eq!(
        statuses(&v),
        ["compensated", "compensated", "pending", "pending"]
    );
    assert!(
        events(&v).contains(&"step_timed_out b".to_string()),
        "{:?}",
        events(&v)
    );
    assert!(
        v.error
            .as_deref()
            .unwrap()
            .contains(r#"step #1 "b" timed out"#),
        "{:?}",
        v.error
    );
    assert_eq!(v.steps[1].error.as_deref(), Some("timed out"));

    let v = env.wait_for(&b, &["rolled_back"]).await;
    assert_eq!(env.log("log:killed").await, ["do:a", "undo:a"]);
    assert_eq!(
        statuses(&v),
        ["compensated", "failed", "pending", "pending"]
    );
    assert!(
        v.steps[1]
            .error
            .as_deref()
            .unwrap()
            .contains("timed out after 100 ms"),
        "{:?}",
        v.steps[1]
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_timeout_rolls_back_and_the_late_reply_is_ignored() {
    // Steps a and b must finish inside the limit while many saga tests run at once: 5 s
    // leaves them room; c is held until the saga has timed out, however long that takes.
    let mut def = four("short", false, |_, s| s);
    def.timeout = Duration::from_millis(5_000);
    let mut env = Env::start(vec![def], true).await;
    let id = env
        .start_saga(
            "short",
            json!({"slow_at": "c", "until_key": "release:short", "log": "log:short"}),
        )
        .await;
    let v = env.wait_for(&id, &["rolled_back"]).await;
    // c was running when time ran out: in doubt, so compensated first.
    assert_eq!(
        env.log("log:short").await,
        ["do:a", "do:b", "undo:c", "undo:b", "undo:a"]
    );
    assert!(
        events(&v).contains(&"saga_timed_out".to_string()),
        "{:?}",
        events(&v)
    );
    assert!(
        v.error
            .as_deref()
            .unwrap()
            .contains("saga timed out (limit 5000 ms)"),
        "{:?}",
        v.error
    );
    let finished = v.finished_at.unwrap();
    assert!(
        finished - v.created_at >= 5_000,
        "{}",
        finished - v.created_at
    );
    assert!(
        !env.log("log:short").await.contains(&"do:c".to_string()),
        "c is still held"
    );
    // c's handler finishes later and replies; the reply is stale and changes nothing.
    let _: () = redis::cmd("SET")
        .arg("release:short")
        .arg(1)
        .query_async(&mut env.conn)
        .await
        .unwrap();
    poll("the late step c to finish", WAIT, || async {
        env.log("log:short")
            .await
            .contains(&"do:c".to_string())
            .then_some(())
    })
    .await;
    poll("the late reply to be consumed", WAIT, || {
        let mut c = env.conn.clone();
        async move {
            let n: u64 = redis::cmd("XLEN")
                .arg(keys::REPLIES)
                .query_async(&mut c)
                .await
                .ok()?;
            (n == 0).then_some(())
        }
    })
    .await;
    let after = ops::show(&mut env.conn, &id).await.unwrap();
    assert_eq!((after.status.as_str(), after.rev), ("rolled_back", v.rev));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_that_fails_leaves_the_saga_failed() {
    let handle = taskstream::metrics::install();
    let mut env = Env::start(vec![four("undo_fails", false, |_, s| s)], true).await;
    let id = env
        .start_saga(
            "undo_fails",
            json!({"fail_at": "c", "fail_undo_at": "a", "log": "log:uf"}),
        )
        .await;
    let v = env.wait_for(&id, &["failed"]).await;
    // b was undone; a's undo failed and the rollback stopped there.
    assert_eq!(env.log("log:uf").await, ["do:a", "do:b", "undo:b"]);
    assert_eq!(
        statuses(&v),
        ["compensation_failed", "compensated", "failed", "pending"]
    );
    let err = v.error.as_deref().unwrap();
    assert!(
        err.contains(r#"compensation of step #0 "a" failed: undo of a failed on purpose"#),
        "{err}"
    );
    assert!(err.contains(r#"step #2 "c" failed"#), "{err}");
    assert!(v.render().contains("undo of a failed on purpose"));
    assert!(v.expires_in_secs.is_some());
    let failed = ops::list(&mut env.conn, Some("failed"), 5).await.unwrap();
    assert_eq!(failed[0].id, id);
    let text = handle.render();
    assert!(
        text.contains(r#"taskstream_compensation_failures_total{saga="undo_fails",step="a"} 1"#),
        "{text}"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_rolls_back_a_running_saga() {
    let mut env = Env::start(vec![four("abortable", false, |_, s| s)], true).await;
    let id = env
        .start_saga(
            "abortable",
            json!({"slow_at": "b", "slow_ms": 3_000, "log": "log:ab"}),
        )
        .await;
    poll("step b running", WAIT, || {
        let mut c = env.conn.clone();
        let id = id.clone();
        async move {
            let v = ops::show(&mut c, &id).await.ok()?;
            (v.current_step.as_deref() == Some("b")).then_some(())
        }
    })
    .await;
    let defs = env.defs.clone();
    let state = ops::abort(&mut env.conn, &defs, &id, "operator said so")
        .await
        .unwrap();
    assert_eq!(state, "compensating");
    let v = env.wait_for(&id, &["rolled_back"]).await;
    // b was running: in doubt, compensated first, then a.
    assert_eq!(env.log("log:ab").await, ["do:a", "undo:b", "undo:a"]);
    assert!(
        v.error.as_deref().unwrap().contains("operator said so"),
        "{:?}",
        v.error
    );
    let abort = v.history.iter().find(|h| h.event == "abort").unwrap();
    assert_eq!(abort.detail.as_deref(), Some("operator said so"));
    assert_eq!(
        (abort.from.as_str(), abort.to.as_str()),
        ("running:b", "compensating:b")
    );
    // An ended saga cannot be aborted; an unknown one is not found.
    let err = ops::abort(&mut env.conn, &defs, &id, "again")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ended"), "{err}");
    let err = ops::abort(&mut env.conn, &defs, "nope", "x")
        .await
        .unwrap_err();
    assert!(matches!(err, taskstream::Error::NotFound(_)), "{err}");
    env.shutdown().await;
}

// The guard serializes the heavy tests of this binary for their whole run; each test
// has its own runtime, so holding it across awaits blocks nothing else.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_sagas_complete_with_only_their_own_data() {
    let _heavy = common::heavy().await;
    let mut env = Env::start(vec![demo_saga()], true).await;
    let inputs: Vec<Value> = (0..1000).map(|n| json!({"n": n, "sleep_ms": 1})).collect();
    let t0 = Instant::now();
    let defs = env.defs.clone();
    let ids = ops::start_many(&mut env.conn, &defs, "demo", inputs)
        .await
        .unwrap();
    assert_eq!(ids.len(), 1000);
    poll("1000 sagas completed", Duration::from_secs(40), || {
        let mut c = env.conn.clone();
        async move {
            let n: u64 = redis::cmd("ZCARD")
                .arg(keys::state_index("completed"))
                .query_async(&mut c)
                .await
                .ok()?;
            (n == 1000).then_some(())
        }
    })
    .await;
    eprintln!("1000 sagas completed in {:?}", t0.elapsed());
    let mut p = redis::pipe();
    for id in &ids {
        p.cmd("HMGET")
            .arg(keys::saga(id))
            .arg("status")
            .arg("state")
            .arg("input")
            .arg("rev");
    }
    let rows: Vec<(String, String, String, u64)> = p.query_async(&mut env.conn).await.unwrap();
    for (n, (id, (status, state, input, rev))) in ids.iter().zip(rows).enumerate() {
        assert_eq!((status.as_str(), rev), ("completed", 5), "saga {id}");
        assert_eq!(
            serde_json::from_str::<Value>(&input).unwrap()["n"],
            json!(n)
        );
        let state: Value = serde_json::from_str(&state).unwrap();
        for step in state["steps"].as_array().unwrap() {
            let out = &step["output"];
            assert_eq!(
                (&out["n"], &out["saga_id"]),
                (&json!(n), &json!(id)),
                "saga {id}: {out}"
            );
        }
    }
    let counts = ops::counts(&mut env.conn).await.unwrap();
    assert_eq!(
        (counts.by_state["completed"], counts.by_state["running"]),
        (1000, 0)
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_whose_definition_is_unknown_ends_failed() {
    let mut env = Env::start(vec![four("orphan", false, |_, s| s)], false).await;
    // This orchestrator knows other sagas only.
    env.spawn_orchestrator(vec![demo_saga()]);
    let id = env.start_saga("orphan", json!({"log": "log:orphan"})).await;
    let v = env.wait_for(&id, &["failed"]).await;
    let err = v.error.as_deref().unwrap();
    assert!(
        err.contains(r#"saga definition "orphan" (version 1) is not known to this orchestrator"#),
        "{err}"
    );
    assert!(err.contains("known: demo"), "{err}");
    assert_eq!(env.log("log:orphan").await, ["do:a"]);
    let mut c = env.conn.clone();
    let deadlines: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys::DEADLINES)
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(deadlines.is_empty(), "{deadlines:?}");
    let err = ops::start(&mut c, &env.defs, "nope", json!({}))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(r#"saga definition "nope" (configured: orphan)"#),
        "{err}"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_forged_and_malformed_replies_change_nothing() {
    let mut env = Env::start(vec![four("dup", false, |_, s| s)], true).await;
    let id = env.start_saga("dup", json!({})).await;
    let v = env.wait_for(&id, &["completed"]).await;
    let mut c = env.conn.clone();
    let forged: [&[(&str, String)]; 4] = [
        // step a's reply delivered again (revision 1; the saga is at 5)
        &[
            ("correlation", format!("{id}|0|action|1")),
            ("outcome", "failed".into()),
            ("error", "late".into()),
        ],
        // a reply at the current revision, for a saga that has ended
        &[
            ("correlation", format!("{id}|3|action|5")),
            ("outcome", "succeeded".into()),
            ("result", "1".into()),
        ],
        // garbage
        &[
            ("correlation", "not-a-correlation".into()),
            ("outcome", "succeeded".into()),
        ],
        &[("outcome", "succeeded".into())],
    ];
    for f in forged {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(keys::REPLIES).arg("*");
        for (k, v) in f {
            cmd.arg(*k).arg(v);
        }
        cmd.query_async::<String>(&mut c).await.unwrap();
    }
    poll("forged replies consumed", WAIT, || {
        let mut c = c.clone();
        async move {
            let n: u64 = redis::cmd("XLEN")
                .arg(keys::REPLIES)
                .query_async(&mut c)
                .await
                .ok()?;
            (n == 0).then_some(())
        }
    })
    .await;
    let after = ops::show(&mut c, &id).await.unwrap();
    assert_eq!(
        (after.status.as_str(), after.rev, after.history.len()),
        ("completed", v.rev, 5)
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_left_by_a_dead_orchestrator_are_claimed_and_applied_once() {
    // The worker runs, no orchestrator yet: step a's replies pile up.
    let mut env = Env::start(vec![four("claimed", false, |_, s| s)], false).await;
    let defs = env.defs.clone();
    let inputs = (0..50).map(|n| json!({"n": n})).collect();
    let ids = ops::start_many(&mut env.conn, &defs, "claimed", inputs)
        .await
        .unwrap();
    let mut c = env.conn.clone();
    taskstream::rdb::ensure_group(&mut c, keys::REPLIES, keys::GROUP)
        .await
        .unwrap();
    poll("50 replies of step a", WAIT, || {
        let mut c = c.clone();
        async move {
            let n: u64 = redis::cmd("XLEN")
                .arg(keys::REPLIES)
                .query_async(&mut c)
                .await
                .ok()?;
            (n == 50).then_some(())
        }
    })
    .await;
    // An orchestrator reads them all and dies before applying any.
    let read =
        taskstream::rdb::read_group(&mut c, keys::GROUP, "dead-orch", keys::REPLIES, 100, None)
            .await
            .unwrap();
    assert_eq!(read.len(), 50);
    // A live one claims them once they have been idle for claim_idle_ms, and finishes all.
    env.spawn_orchestrator(defs);
    for id in &ids {
        let v = env.wait_for(id, &["completed"]).await;
        assert_eq!(
            v.history.iter().map(|h| h.rev).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5],
            "{id}"
        );
    }
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(keys::REPLIES)
        .arg(keys::GROUP)
        .query_async(&mut c)
        .await
        .unwrap();
    let pending = match summary {
        redis::Value::Array(a) => matches!(a.first(), Some(redis::Value::Int(0))),
        _ => false,
    };
    assert!(pending, "every reply acknowledged");
    env.shutdown().await;
}

#[test]
fn invalid_definitions_are_reported_with_their_keys() {
    let text = r#"
[[sagas]]
name = "s"
timeout_ms = 0
[[sagas.steps]]
name = "a"
action = "bad type"
[[sagas.steps]]
name = "a"
action = "t.b"
max_attempts = 0

[[sagas]]
name = "s"
[[sagas.steps]]
name = "x"
action = "t.x"

[[sagas]]
name = "empty"

[orchestrator]
read_count = 0
"#;
    let cfg = Config::parse("c.toml", text).unwrap();
    let err = cfg.validate("c.toml").unwrap_err();
    let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    for want in [
        "sagas[0].timeout_ms",
        "sagas[0].steps[0].action",
        "sagas[0].steps[1].name",
        "sagas[0].steps[1].max_attempts",
        "sagas[1].name",
        "sagas[2].steps",
        "orchestrator.read_count",
    ] {
        assert!(keys.contains(&want), "{want} missing from {keys:?}");
    }
    let text = err.to_string();
    assert!(
        text.contains(r#"c.toml: sagas[1].name: saga "s" is already defined by sagas[0]"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"sagas[0].steps[1].name: step "a": step name "a" is already used by step #0"#
        ),
        "{text}"
    );
    // A typo in a saga table is a parse error naming the key.
    let err = Config::parse("c.toml", "[[sagas]]\nname = \"s\"\ntimeout = 5\n").unwrap_err();
    assert!(err.to_string().contains("unknown field `timeout`"), "{err}");
    // Task types no handler serves are caught against a registry's types.
    let d = four("t", false, |_, s| s);
    let err = d.validate_against(&["t.step".to_string()]).unwrap_err();
    assert!(
        err.to_string()
            .contains(r#"no handler serves task type "t.undo""#),
        "{err}"
    );
    // A valid configuration: its sagas, plus the demo saga when the built-in handlers run.
    let mut cfg = Config {
        sagas: vec![SagaDefToml::from(&four("mine", false, |_, s| s))],
        ..Config::default()
    };
    cfg.validate("c.toml").unwrap();
    let names = |c: &Config| -> Vec<String> {
        taskstream::saga::configured(c)
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect()
    };
    assert_eq!(names(&cfg), ["mine"]);
    cfg.worker.builtin_handlers = true;
    assert_eq!(names(&cfg), ["mine", "demo"]);
}

// ---------------------------------------------------------------------------------------
// Crash recovery with real processes: two `taskstream orchestrator` processes share the
// work; one is SIGKILLed while it holds unacknowledged replies; the other finishes every
// saga, and no transition is applied twice.

struct OrchProc {
    child: Option<Child>,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl OrchProc {
    fn spawn(url: &str, consumer: &str) -> OrchProc {
        OrchProc::spawn_listening(url, consumer, "")
    }

    /// An orchestrator process whose HTTP server (`/ready`, `/metrics`) listens on
    /// `listen` (`""`: none).
    fn spawn_listening(url: &str, consumer: &str, listen: &str) -> OrchProc {
        let dir = tempfile::tempdir().unwrap();
        let demo = toml::to_string(&SagaDefToml::from(&demo_saga())).unwrap();
        let demo = demo.replace("[[steps]]", "[[sagas.steps]]");
        let text = format!(
            r#"
[redis]
url = "{url}"
[http]
listen = "{listen}"
[log]
level = "info"
[orchestrator]
consumer_name = "{consumer}"
block_ms = 200
claim_idle_ms = 500
deadline_interval_ms = 50
step_grace_ms = 5000

[[sagas]]
{demo}
"#
        );
        let config = common::write_file(dir.path(), "orch.toml", &text);
        let log = dir.path().join("orch.log");
        let child = Command::new(common::bin())
            .arg("orchestrator")
            .arg("--config")
            .arg(&config)
            .env_remove("TASKSTREAM_REDIS_URL")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn taskstream orchestrator");
        OrchProc {
            child: Some(child),
            log,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OrchProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Issue 10.11: a standalone `taskstream orchestrator` never became ready — `/ready`
/// stayed 503 "consumer groups not created yet", so a readiness probe never passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_orchestrator_becomes_ready_once_its_group_exists() {
    let redis = RedisServer::start();
    let port = common::free_port();
    let mut orch =
        OrchProc::spawn_listening(&redis.url(), "orch-ready", &format!("127.0.0.1:{port}"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/ready");
    let (status, body) = poll("/ready answers 200", WAIT, || {
        let (client, url) = (client.clone(), url.clone());
        let alive = orch
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none());
        let log = orch.log_text();
        async move {
            assert!(alive, "the orchestrator exited; log:\n{log}");
            let r = client.get(&url).send().await.ok()?;
            let status = r.status().as_u16();
            (status == 200).then_some((status, r.text().await.unwrap_or_default()))
        }
    })
    .await;
    assert_eq!(status, 200, "{body}");
    // Ready means its group exists on the reply stream.
    let mut c = redis.conn().await;
    let groups: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(keys::REPLIES)
        .query_async(&mut c)
        .await
        .unwrap();
    fn names(v: &redis::Value, out: &mut Vec<String>) {
        match v {
            redis::Value::BulkString(b) => out.push(String::from_utf8_lossy(b).into_owned()),
            redis::Value::SimpleString(s) => out.push(s.clone()),
            redis::Value::Array(a) => a.iter().for_each(|v| names(v, out)),
            redis::Value::Map(m) => m.iter().for_each(|(k, v)| {
                names(k, out);
                names(v, out)
            }),
            _ => {}
        }
    }
    let mut found = Vec::new();
    names(&groups, &mut found);
    assert!(
        found.iter().any(|n| n == keys::GROUP),
        "group {} missing: {found:?}",
        keys::GROUP
    );
    drop(orch);
}

/// The replies `consumer` holds; None while the replies group does not exist yet (any
/// other error fails the test rather than passing for "nothing pending").
async fn pending_of(conn: &mut ConnectionManager, consumer: &str) -> Option<usize> {
    let r: redis::RedisResult<redis::Value> = redis::cmd("XPENDING")
        .arg(keys::REPLIES)
        .arg(keys::GROUP)
        .arg("-")
        .arg("+")
        .arg(10_000)
        .arg(consumer)
        .query_async(conn)
        .await;
    match r {
        Ok(redis::Value::Array(a)) => Some(a.len()),
        Ok(other) => panic!("XPENDING answered {other:?}"),
        Err(e) if e.code() == Some("NOGROUP") => None,
        Err(e) => panic!("XPENDING {} failed: {e}", keys::REPLIES),
    }
}

/// Freezes `proc` (consumer `consumer`) with SIGSTOP at a moment it holds replies, kills
/// it, waits until the server has dropped its connections (so everything it sent has been
/// applied) and returns how many replies it left pending.
async fn freeze_and_kill(
    c: &mut ConnectionManager,
    proc: &mut OrchProc,
    consumer: &str,
    deadline: Instant,
) -> usize {
    loop {
        assert!(
            Instant::now() < deadline,
            "orchestrator {consumer} never held a reply; log:\n{}",
            proc.log_text()
        );
        if pending_of(c, consumer).await.unwrap_or(0) > 0 {
            common::signal(proc.pid(), "STOP");
            if pending_of(c, consumer).await.unwrap_or(0) > 0 {
                break;
            }
            common::signal(proc.pid(), "CONT");
        }
        tokio::task::yield_now().await;
    }
    proc.kill9();
    let prefix = format!("taskstream:{consumer}:");
    poll(
        &format!("the server to drop {consumer}'s connections"),
        WAIT,
        || {
            let mut c = c.clone();
            let prefix = prefix.clone();
            async move {
                let list: String = redis::cmd("CLIENT")
                    .arg("LIST")
                    .query_async(&mut c)
                    .await
                    .ok()?;
                (!list.contains(&prefix)).then_some(())
            }
        },
    )
    .await;
    pending_of(c, consumer).await.unwrap_or(0)
}

// The guard serializes the heavy tests of this binary for their whole run; each test
// has its own runtime, so holding it across awaits blocks nothing else.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_an_orchestrator_mid_run_loses_and_repeats_nothing() {
    let _heavy = common::heavy().await;
    let (code, _, err) = common::run_cli(&["orchestrator", "--help"], &[]);
    assert_eq!(
        code, 0,
        "this test needs the `taskstream orchestrator --config FILE` subcommand (running \
         taskstream::saga::Orchestrator); the binary says:\n{err}"
    );
    let mut env = Env::start(vec![demo_saga()], false).await;
    let url = env.redis.url();
    let mut a = OrchProc::spawn(&url, "orch-a0");
    let b = OrchProc::spawn(&url, "orch-b");
    // Every 5th saga fails at `ml` and rolls back.
    let inputs = (0..500)
        .map(|n| {
            let mut i = json!({"n": n, "sleep_ms": 20, "log_key": format!("log:k:{n}")});
            if n % 5 == 0 {
                i["fail_at"] = json!("ml");
            }
            i
        })
        .collect();
    let defs = env.defs.clone();
    let ids = ops::start_many(&mut env.conn, &defs, "demo", inputs)
        .await
        .unwrap();

    // Freeze an orchestrator at a moment it holds replies it has read but not
    // acknowledged, then kill it. What it held is counted once the server has dropped
    // its connections: an acknowledgement it sent just before the freeze can still be
    // applied after the XPENDING that saw the reply pending (the two arrive on different
    // connections), so only the count after its connections are gone is what B must
    // claim. A victim that turns out to have held nothing is replaced by a fresh one.
    let mut c = env.conn.clone();
    let deadline = Instant::now() + WAIT;
    let mut attempt = 0;
    let (victim, held) = loop {
        let held = freeze_and_kill(&mut c, &mut a, &format!("orch-a{attempt}"), deadline).await;
        if held > 0 {
            break (format!("orch-a{attempt}"), held);
        }
        attempt += 1;
        a = OrchProc::spawn(&url, &format!("orch-a{attempt}"));
    };
    eprintln!(
        "orchestrator {victim} killed holding {held} unacknowledged replies (attempt {attempt})"
    );

    let mut finished = HashMap::new();
    for (n, id) in ids.iter().enumerate() {
        let want = if n % 5 == 0 {
            "rolled_back"
        } else {
            "completed"
        };
        let v = env
            .wait_for(id, &["completed", "rolled_back", "failed"])
            .await;
        assert_eq!(v.status, want, "saga {n} {id}; B's log:\n{}", b.log_text());
        // Each transition exactly once: revisions 1..=k, k the length of a clean run.
        let k = if n % 5 == 0 { 6 } else { 5 };
        assert_eq!(
            v.history.iter().map(|h| h.rev).collect::<Vec<_>>(),
            (1..=k).collect::<Vec<_>>(),
            "saga {id}"
        );
        for s in v.steps.iter().filter_map(|s| s.output.as_ref()) {
            assert_eq!((&s["n"], &s["saga_id"]), (&json!(n), &json!(id)));
        }
        if n % 5 == 0 {
            assert_eq!(
                env.log(&format!("log:k:{n}")).await,
                ["demo.delete_generated_code", "demo.clear_reasoning_cache"]
            );
        }
        *finished.entry(v.status).or_insert(0) += 1;
    }
    assert_eq!(finished["completed"], 400);
    assert_eq!(finished["rolled_back"], 100);
    assert_eq!(
        pending_of(&mut c, &victim).await,
        Some(0),
        "{victim}'s replies were claimed"
    );
    assert!(
        b.log_text().contains("claimed saga replies"),
        "B's log:\n{}",
        b.log_text()
    );
    drop(b);
    env.shutdown().await;
}
