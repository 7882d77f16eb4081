//! A worker whose handler is an HTTP endpoint in any language: each task of type `render`
//! is POSTed to `HANDLER_URL` as JSON; a 2xx answer completes it, a 5xx (or a timeout)
//! retries it honouring `Retry-After`, a 4xx dead-letters it. See "HTTP handlers" in the
//! README for the request and the headers (`X-Taskstream-Task-Id`, `traceparent`, …).
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 HANDLER_URL=http://127.0.0.1:9000/render \
//!     cargo run --example http_worker -- renders 5
//! ```
//! Runs until 5 tasks succeeded (or Ctrl-C).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use taskstream::config::{HttpHandlerConfig, QueueConfig, RedisConfig};
use taskstream::http_handler::{self, HttpHandler};
use taskstream::{Handler, HandlerResult, TaskContext, Worker};
use tokio_util::sync::CancellationToken;

/// Counts successes of the wrapped handler and stops the worker after `limit`.
struct Counting {
    inner: HttpHandler,
    done: Arc<AtomicUsize>,
    limit: usize,
    stop: CancellationToken,
}

#[async_trait::async_trait]
impl Handler for Counting {
    async fn handle(&self, ctx: TaskContext) -> HandlerResult {
        let id = ctx.id().to_string();
        let r = self.inner.handle(ctx).await;
        if r.is_ok() {
            println!("handled {id}");
            if self.done.fetch_add(1, Ordering::SeqCst) + 1 >= self.limit {
                self.stop.cancel();
            }
        }
        r
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let queue = args.next().unwrap_or_else(|| "renders".into());
    let limit: usize = args
        .next()
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(usize::MAX);
    let url = std::env::var("HANDLER_URL").map_err(|_| "set HANDLER_URL to the endpoint")?;

    let endpoint = HttpHandler::new(
        &HttpHandlerConfig {
            task_type: "render".into(),
            url,
            timeout_ms: Some(10_000),
            max_response_bytes: None,
            headers: Default::default(),
        },
        Duration::from_secs(30),
        http_handler::client(),
    )?;
    let stop = CancellationToken::new();
    let done = Arc::new(AtomicUsize::new(0));
    let worker = Worker::builder(RedisConfig {
        url: std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        ..Default::default()
    })
    .queue(QueueConfig {
        name: queue,
        ..Default::default()
    })
    .handler(
        "render",
        Counting {
            inner: endpoint,
            done: done.clone(),
            limit,
            stop: stop.clone(),
        },
    )
    .build()?;
    worker.run(stop).await?;
    println!("stopped after {} tasks", done.load(Ordering::SeqCst));
    Ok(())
}
