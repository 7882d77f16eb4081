//! A worker with a Rust handler, built with the validating builder.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example worker -- emails 10
//! ```
//! Serves task type `send` of queue `emails` until it has handled 10 tasks (or Ctrl-C),
//! then shuts down gracefully: running tasks finish and are acknowledged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use taskstream::config::{QueueConfig, RedisConfig};
use taskstream::{handler_fn, HandlerError, TaskContext, Worker};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let queue = args.next().unwrap_or_else(|| "emails".into());
    let stop_after: usize = args
        .next()
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(usize::MAX);

    let stop = CancellationToken::new();
    let handled = Arc::new(AtomicUsize::new(0));
    let send = {
        let (stop, handled) = (stop.clone(), handled.clone());
        handler_fn(move |ctx: TaskContext| {
            let (stop, handled) = (stop.clone(), handled.clone());
            async move {
                let to: String = ctx.payload()?;
                if !to.contains('@') {
                    // Retrying cannot fix this: straight to the dead-letter stream.
                    return Err(HandlerError::permanent(format!("{to:?} is not an address")));
                }
                println!("handled {} (attempt {}) for {to}", ctx.id(), ctx.attempt());
                if handled.fetch_add(1, Ordering::SeqCst) + 1 >= stop_after {
                    stop.cancel();
                }
                Ok(serde_json::json!({ "sent_to": to }))
            }
        })
    };
    let worker = Worker::builder(RedisConfig {
        url: std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        ..Default::default()
    })
    .queue(QueueConfig {
        name: queue,
        concurrency: 16,
        express_concurrency: 4,
        ..Default::default()
    })
    .handler("send", send)
    .build()?;
    let ctrl_c = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        ctrl_c.cancel();
    });
    worker.run(stop).await?;
    println!("stopped after {} tasks", handled.load(Ordering::SeqCst));
    Ok(())
}
