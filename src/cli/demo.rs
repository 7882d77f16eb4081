//! `taskstream demo`: a self-contained showcase on a local Redis.
//!
//! It uses the Redis at the configured URL when one answers, and otherwise starts a private
//! `redis-server` on a free port (and says what to install when there is none). Then it
//! runs a worker in-process with demo handlers, enqueues a realistic mix (bulk image
//! resizes, e-mails of which some fail once and are retried, express card charges enqueued
//! behind the bulk backlog, delayed reminders, tasks that fail for good, a malformed entry
//! and an unknown type written by "another language"), shows live progress and prints a
//! summary: outcomes, dead letters with their reasons, and express vs bulk wait times.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, QueueConfig};
use crate::handler::{handler_fn, HandlerError, Registry, TaskContext};
use crate::local_redis::{answers, LocalRedis};
use crate::producer::{NewTask, Producer};
use crate::rdb::Broker;
use crate::task::now_ms;

use super::output::{escape_controls, flush, out, outln};

/// `demo` options.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Bulk tasks to enqueue.
    #[arg(long, default_value_t = 3000)]
    tasks: usize,
}

const QUEUE: &str = "demo";

async fn find_redis(cfg: &Config) -> anyhow::Result<(String, Option<LocalRedis>)> {
    let url = cfg.redis.url.clone();
    if tokio::task::spawn_blocking(move || answers(&url)).await? {
        outln!(
            "• using the Redis at {}",
            crate::config::redact_url(&cfg.redis.url)
        );
        return Ok((cfg.redis.url.clone(), None));
    }
    let server = tokio::task::spawn_blocking(|| LocalRedis::start("demo", true))
        .await?
        .map_err(|e| {
            anyhow::anyhow!(
                "no Redis answers at {} and {e}; or point the demo at a Redis with TASKSTREAM_REDIS_URL=redis://host:port",
                crate::config::redact_url(&cfg.redis.url)
            )
        })?;
    outln!(
        "• no Redis at {}: started a private redis-server on port {}",
        crate::config::redact_url(&cfg.redis.url),
        server.port
    );
    Ok((server.url.clone(), Some(server)))
}

#[derive(Default)]
struct Waits {
    bulk: Vec<f64>,
    express: Vec<f64>,
    reminder_late_ms: Vec<i64>,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn record_wait(waits: &Arc<Mutex<Waits>>, ctx: &TaskContext) {
    let wait = now_ms().saturating_sub(ctx.enqueued_at()) as f64;
    let mut w = waits.lock().expect("poisoned");
    match ctx.lane() {
        crate::keys::Lane::Bulk => w.bulk.push(wait),
        crate::keys::Lane::Express => w.express.push(wait),
    }
}

fn demo_registry(waits: Arc<Mutex<Waits>>, conn: crate::rdb::Conn) -> Registry {
    let mut reg = Registry::new();
    crate::saga::demo_handlers::register(&mut reg, conn);
    let w = waits.clone();
    reg.register(
        "demo.resize_image",
        handler_fn(move |ctx: TaskContext| {
            record_wait(&w, &ctx);
            async move {
                let ms = 1 + (ctx.id().as_bytes().last().copied().unwrap_or(0) % 4) as u64;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(serde_json::json!({"resized": true}))
            }
        }),
    );
    let w = waits.clone();
    reg.register(
        "demo.send_email",
        handler_fn(move |ctx: TaskContext| {
            record_wait(&w, &ctx);
            async move {
                #[derive(serde::Deserialize)]
                struct P {
                    flaky: bool,
                }
                let p: P = ctx.payload()?;
                if p.flaky && ctx.attempt() == 1 {
                    return Err(HandlerError::retryable("smtp 421: try again later"));
                }
                Ok(serde_json::json!({"sent": true}))
            }
        }),
    );
    let w = waits.clone();
    reg.register(
        "demo.charge_card",
        handler_fn(move |ctx: TaskContext| {
            record_wait(&w, &ctx);
            async move { Ok(serde_json::json!({"charged": true})) }
        }),
    );
    let w = waits.clone();
    reg.register(
        "demo.send_reminder",
        handler_fn(move |ctx: TaskContext| {
            let w = w.clone();
            async move {
                #[derive(serde::Deserialize)]
                struct P {
                    due_ms: u64,
                }
                let p: P = ctx.payload()?;
                w.lock()
                    .expect("poisoned")
                    .reminder_late_ms
                    .push(now_ms() as i64 - p.due_ms as i64);
                Ok(serde_json::Value::Null)
            }
        }),
    );
    reg.register(
        "demo.sync_crm",
        handler_fn(|_ctx: TaskContext| async {
            Err(HandlerError::permanent(
                "crm rejected the record: account 42 is closed",
            ))
        }),
    );
    reg
}

pub(crate) async fn run(mut cfg: Config, a: Args) -> anyhow::Result<()> {
    outln!("taskstream demo\n");
    let (url, private) = find_redis(&cfg).await?;
    cfg.redis.url = url;
    cfg.http.listen = String::new();
    cfg.queues = vec![QueueConfig {
        name: QUEUE.into(),
        concurrency: 64,
        express_concurrency: 8,
        max_attempts: 3,
        timeout_ms: 5_000,
        backoff_base_ms: 200,
        backoff_cap_ms: 2_000,
        ..Default::default()
    }];
    let never = CancellationToken::new();
    let mut conn = crate::rdb::connect(
        &cfg.redis,
        &never,
        crate::rdb::ClientName::process(crate::rdb::Role::Demo),
    )
    .await?;
    let broker = Broker::new(conn.clone());
    // Start from a clean demo queue.
    broker.wipe_queue(QUEUE).await?;
    let waits = Arc::new(Mutex::new(Waits::default()));
    let reg = demo_registry(waits.clone(), conn.clone());
    let shutdown = CancellationToken::new();
    let worker = crate::worker::Worker::new(cfg.clone(), reg);
    outln!(
        "• worker {} serving queue {QUEUE:?} (64 slots, 8 reserved for express)",
        worker.consumer_name()
    );
    let wh = tokio::spawn(worker.run(shutdown.clone()));

    let producer = Producer::new(conn.clone(), cfg.producer.clone());
    let started = Instant::now();
    let n_bulk = a.tasks;
    let mut tasks = Vec::new();
    for i in 0..n_bulk {
        tasks.push(NewTask::new(
            QUEUE,
            "demo.resize_image",
            &serde_json::json!({"image": format!("img-{i}.png")}),
        )?);
    }
    let n_email = (n_bulk / 5).max(10);
    for i in 0..n_email {
        tasks.push(NewTask::new(
            QUEUE,
            "demo.send_email",
            &serde_json::json!({"to": format!("user{i}@example.com"), "flaky": i % 10 == 0}),
        )?);
    }
    let mut enqueued = 0;
    for chunk in tasks.chunks(500) {
        enqueued += producer.enqueue_batch(chunk.to_vec()).await?.len();
    }
    outln!(
        "• enqueued {enqueued} bulk tasks (image resizes, e-mails; every 10th e-mail fails once)"
    );
    let n_express = 20;
    for i in 0..n_express {
        producer
            .enqueue(
                NewTask::new(QUEUE, "demo.charge_card", &serde_json::json!({"order": i}))?
                    .express(),
            )
            .await?;
    }
    outln!("• enqueued {n_express} express card charges behind that backlog");
    for i in 0..3 {
        let due = now_ms() + 1_500;
        producer
            .enqueue(
                NewTask::new(
                    QUEUE,
                    "demo.send_reminder",
                    &serde_json::json!({"n": i, "due_ms": due}),
                )?
                .delay(Duration::from_millis(1_500)),
            )
            .await?;
    }
    outln!("• scheduled 3 reminders 1.5 s from now");
    for i in 0..3 {
        producer
            .enqueue(NewTask::new(
                QUEUE,
                "demo.sync_crm",
                &serde_json::json!({"account": 42, "n": i}),
            )?)
            .await?;
    }
    let first = producer
        .enqueue(
            NewTask::new(
                QUEUE,
                "demo.charge_card",
                &serde_json::json!({"order": "A-1"}),
            )?
            .idempotency_key("order-A-1"),
        )
        .await?;
    let again = producer
        .enqueue(
            NewTask::new(
                QUEUE,
                "demo.charge_card",
                &serde_json::json!({"order": "A-1"}),
            )?
            .idempotency_key("order-A-1"),
        )
        .await?;
    outln!("• enqueued order A-1 twice with one idempotency key: second answer is a duplicate of {} ({})", first.task_id, again.duplicate);
    broker
        .xadd_raw(QUEUE, &[("v", "1"), ("payload", "{}")])
        .await?;
    broker
        .xadd_raw(
            QUEUE,
            &[
                ("v", "1"),
                ("type", "video.transcode"),
                ("payload", "{\"id\":7}"),
            ],
        )
        .await?;
    outln!("• a producer in another language wrote a malformed entry and an unknown task type with raw XADD");
    outln!("• 3 CRM syncs will fail for good\n");
    let total = (enqueued + n_express + 3 + 3 + 1 + 2) as u64;

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let c = broker.counters(&[QUEUE.to_string()]).await?;
        let (done, retried, dead) = c
            .first()
            .map(|c| (c.done, c.retried, c.dead))
            .unwrap_or_default();
        let backlog = broker.queue_stats(QUEUE, 1_500).await?.bulk_length;
        let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001);
        out!("\r  progress: {:>6}/{total} done, {retried:>4} retried, {dead:>2} dead-lettered, backlog {backlog:>6}, {rate:>7.0} tasks/s   ", done + dead);
        flush()?;
        if done + dead >= total {
            break;
        }
        if Instant::now() > deadline {
            outln!();
            bail!("the demo did not finish within 120 s; `taskstream stats --queue {QUEUE}` shows where it stands");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();
    outln!("\n");

    // Sagas: the 4-step reasoning → codegen → ml → backtest workflow, once completing and
    // once failing at `ml`, rolled back in reverse order.
    outln!("sagas (reasoning → codegen → ml → backtest, compensated in reverse on failure):");
    let mut def = crate::saga::definition::demo_saga();
    for step in &mut def.steps {
        step.queue = QUEUE.into();
    }
    let defs = vec![def];
    let orch = crate::saga::Orchestrator::new(&cfg, defs.clone());
    let oh = tokio::spawn(orch.run(shutdown.clone()));
    let ok = crate::saga::ops::start(
        &mut conn,
        &defs,
        "demo",
        serde_json::json!({"strategy": "momentum", "queue": QUEUE}),
    )
    .await?;
    let bad = crate::saga::ops::start(
        &mut conn,
        &defs,
        "demo",
        serde_json::json!({"strategy": "mean-reversion", "fail_at": "ml"}),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in [&ok, &bad] {
        loop {
            let v = crate::saga::ops::show(&mut conn, id).await?;
            if v.finished_at.is_some() {
                outln!("\n{}", escape_controls(&v.render(), true));
                break;
            }
            if Instant::now() > deadline {
                bail!("saga {id} did not finish within 60 s: `taskstream saga show {id}`");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    shutdown.cancel();
    wh.await??;
    oh.await??;

    let dl = crate::inspect::Inspector::new(broker.clone())
        .dead_letters(QUEUE, 100)
        .await?
        .letters;
    let mut w = std::mem::take(&mut *waits.lock().expect("poisoned"));
    outln!(
        "summary: {total} tasks in {:.2} s of wall time (the 1.5 s reminder delay included)",
        elapsed.as_secs_f64()
    );
    outln!(
        "  express wait  p50 {:>7.1} ms  p99 {:>7.1} ms  ({} tasks, enqueued behind the backlog)",
        pct(&mut w.express, 0.5),
        pct(&mut w.express, 0.99),
        w.express.len()
    );
    outln!(
        "  bulk wait     p50 {:>7.1} ms  p99 {:>7.1} ms  ({} runs)",
        pct(&mut w.bulk, 0.5),
        pct(&mut w.bulk, 0.99),
        w.bulk.len()
    );
    if let Some(late) = w.reminder_late_ms.iter().max() {
        outln!(
            "  delayed reminders ran {} ms after their due time at most (never before)",
            late
        );
    }
    outln!("  dead letters ({}):", dl.len());
    for d in &dl {
        outln!(
            "    {:<20} {:<18} {}",
            d.dlq_id,
            escape_controls(d.get("type").unwrap_or("-"), false),
            escape_controls(d.get("dlq_reason").unwrap_or("-"), false)
        );
    }
    outln!(
        "\nInspect with: taskstream stats --redis-url {} ; taskstream dlq list --queue {QUEUE}",
        if private.is_some() {
            "<private redis, stopped now>"
        } else {
            cfg.redis.url.as_str()
        }
    );
    drop(private);
    Ok(())
}
