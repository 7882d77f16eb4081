//! A saga: three steps with compensations, run by a worker that also runs the orchestrator
//! (one process; in production run as many of each as you like).
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example saga
//! ```
//! Starts one booking that completes and one whose payment step fails for good, which rolls
//! back: the reserved seat is released (compensations run in reverse order), and prints the
//! final state of both.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use taskstream::config::{QueueConfig, RedisConfig};
use taskstream::saga::definition::{SagaDef, StepDef};
use taskstream::saga::ops;
use taskstream::{handler_fn, HandlerError, TaskContext, Worker};
use tokio_util::sync::CancellationToken;

fn booking() -> SagaDef {
    SagaDef::builder("booking")
        .timeout(Duration::from_secs(60))
        .step(StepDef::new("reserve_seat", "book.reserve").compensate("book.release"))
        .step(
            StepDef::new("charge_card", "book.charge")
                .compensate("book.refund")
                .max_attempts(2),
        )
        .step(StepDef::new("send_ticket", "book.ticket"))
        .build()
        .expect("a valid saga")
}

/// A step handler that logs and succeeds, or fails for good when the input says so.
fn step(name: &'static str) -> impl taskstream::Handler {
    handler_fn(move |ctx: TaskContext| async move {
        let input: Value = serde_json::from_str(ctx.payload_str()).unwrap_or(Value::Null);
        if name == "charge" && input.to_string().contains("declined") {
            println!("step {name}: card declined");
            return Err(HandlerError::permanent("card declined"));
        }
        println!("step {name}");
        Ok(json!({ "done": name }))
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let redis = RedisConfig {
        url: std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        ..Default::default()
    };
    let mut builder = Worker::builder(redis.clone())
        .queue(QueueConfig {
            name: "default".into(),
            concurrency: 16,
            express_concurrency: 4,
            ..Default::default()
        })
        .orchestrator(vec![booking()]);
    for (t, n) in [
        ("book.reserve", "reserve"),
        ("book.release", "release"),
        ("book.charge", "charge"),
        ("book.refund", "refund"),
        ("book.ticket", "ticket"),
    ] {
        builder = builder.handler(t, step(n));
    }
    let worker = builder.build()?;
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));

    let never = CancellationToken::new();
    let mut conn = taskstream::rdb::connect(
        &redis,
        &never,
        taskstream::rdb::ClientName::process(taskstream::rdb::Role::Cli),
    )
    .await?;
    let defs = [booking()];
    let ok = ops::start(&mut conn, &defs, "booking", json!({"seat": "12A"})).await?;
    let bad = ops::start(
        &mut conn,
        &defs,
        "booking",
        json!({"seat": "12B", "card": "declined"}),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in [ok, bad] {
        loop {
            let v = ops::show(&mut conn, &id).await?;
            if matches!(v.status.as_str(), "completed" | "rolled_back" | "failed") {
                println!("saga {id}: {}", v.status);
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("saga {id} still {} after 60 s", v.status).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await; // poll the saga's state
        }
    }
    stop.cancel();
    running.await??;
    Ok(())
}
