//! A producer: enqueues tasks from Rust.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example producer -- emails 10
//! ```
//! Enqueues 10 `send` tasks to queue `emails` (one of them express, one delayed by a
//! second, one under an idempotency key sent twice) and prints one line per task.

use std::time::Duration;

use taskstream::config::{Config, RedisConfig};
use taskstream::producer::{NewTask, Producer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let queue = args.next().unwrap_or_else(|| "emails".into());
    let count: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(10);
    let cfg = Config {
        redis: RedisConfig {
            url: std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let producer = Producer::connect(&cfg).await?;

    // Many tasks in one round trip.
    let batch: Vec<NewTask> = (0..count.saturating_sub(3))
        .map(|i| NewTask::new(&queue, "send", &format!("user{i}@example.com")))
        .collect::<Result<_, _>>()?;
    for e in producer.enqueue_batch(batch).await? {
        println!("enqueued {}", e.task_id);
    }
    // Express: read before any bulk backlog, on reserved capacity.
    let e = producer
        .enqueue(NewTask::new(&queue, "send", &"vip@example.com")?.express())
        .await?;
    println!("enqueued {} (express)", e.task_id);
    // Delayed: due in one second.
    let e = producer
        .enqueue(NewTask::new(&queue, "send", &"later@example.com")?.delay(Duration::from_secs(1)))
        .await?;
    println!("enqueued {} (delayed)", e.task_id);
    // Idempotent: the second enqueue with the same key adds nothing.
    let task = NewTask::new(&queue, "send", &"once@example.com")?.idempotency_key("signup-42");
    let first = producer.enqueue(task.clone()).await?;
    let again = producer.enqueue(task).await?;
    assert!(again.duplicate && again.task_id == first.task_id);
    println!(
        "enqueued {} (idempotent; the repeat was a duplicate)",
        first.task_id
    );
    Ok(())
}
