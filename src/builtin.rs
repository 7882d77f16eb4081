//! Built-in handlers of the `taskstream` binary, enabled with `worker.builtin_handlers`.
//!
//! They make the binary useful on its own for smoke tests, load tests and fault tests
//! (the test suite drives real `taskstream worker` processes with them):
//!
//! | type | payload | does |
//! |---|---|---|
//! | `builtin.noop` | anything | succeeds at once |
//! | `builtin.echo` | anything | succeeds with the payload as result |
//! | `builtin.sleep` | `{"ms": N, "progress"?: J}` | reports progress J (any JSON) first if given, sleeps N ms (stops early when cancelled), succeeds |
//! | `builtin.crash` | anything | aborts the whole worker process (fault drills: poison tasks) |
//! | `builtin.record` | `{"key": K, "ms"?: N, "fail_until_attempt"?: A, "permanent"?: bool, "log"?: L, "running"?: R}` | `HINCRBY K <task id> 1` in Redis (and, with `log`, `RPUSH L "<task id> <attempt> <unix ms>"`), then sleeps N ms, then fails (retryable) while attempt < A, or permanently when asked, else succeeds |
//!
//! `builtin.record` is how tests count executions per task across processes: every run
//! leaves a mark in Redis before it can be killed. With `"running": R` it also counts the
//! runs of each group key under way: `SADD R:<group key> <task id>` when it starts (the
//! set's size then goes into the sorted set `R:peak` with `ZADD GT`, so `R:peak` holds the
//! highest concurrency each key reached) and `SREM` when it ends. A run killed with its
//! process stays in the set until its re-run ends: a re-run holds the same place.

use std::time::Duration;

use crate::rdb::Conn;
use serde::Deserialize;

use crate::handler::{handler_fn, HandlerError, Registry, TaskContext};
use crate::rdb::Broker;

#[derive(Deserialize, Default)]
struct RecordPayload {
    key: String,
    #[serde(default)]
    ms: u64,
    #[serde(default)]
    fail_until_attempt: u32,
    #[serde(default)]
    permanent: bool,
    #[serde(default)]
    log: Option<String>,
    #[serde(default)]
    running: Option<String>,
}

#[derive(Deserialize, Default)]
struct SleepPayload {
    #[serde(default)]
    ms: u64,
    #[serde(default)]
    progress: Option<serde_json::Value>,
}

async fn sleep_cancellable(ctx: &TaskContext, ms: u64) -> Result<(), HandlerError> {
    if ms == 0 {
        return Ok(());
    }
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(()),
        _ = ctx.cancellation().cancelled() => Err(HandlerError::retryable("cancelled")),
    }
}

/// Registers the `builtin.*` handlers; `builtin.record` writes through `conn`.
pub fn register(reg: &mut Registry, conn: Conn) {
    let broker = Broker::new(conn);
    reg.register(
        "builtin.noop",
        handler_fn(|_ctx: TaskContext| async { Ok(serde_json::Value::Null) }),
    );
    reg.register(
        "builtin.echo",
        handler_fn(|ctx: TaskContext| async move {
            serde_json::from_str(ctx.payload_str())
                .map_err(|e| HandlerError::permanent(e.to_string()))
        }),
    );
    reg.register(
        "builtin.sleep",
        handler_fn(|ctx: TaskContext| async move {
            let p: SleepPayload = ctx.payload()?;
            if let Some(v) = p.progress {
                ctx.progress(v);
            }
            sleep_cancellable(&ctx, p.ms).await?;
            Ok(serde_json::Value::Null)
        }),
    );
    reg.register(
        "builtin.crash",
        handler_fn(|_ctx: TaskContext| async {
            tracing::error!("builtin.crash: aborting the process on purpose (fault drill)");
            std::process::abort();
        }),
    );
    reg.register(
        "builtin.record",
        handler_fn(move |ctx: TaskContext| {
            let broker = broker.clone();
            async move {
                let p: RecordPayload = ctx.payload()?;
                if p.key.is_empty() {
                    return Err(HandlerError::permanent(
                        "builtin.record needs a non-empty \"key\"",
                    ));
                }
                let log = p.log.as_deref().map(|l| {
                    (
                        l,
                        format!("{} {} {}", ctx.id(), ctx.attempt(), crate::task::now_ms()),
                    )
                });
                broker
                    .record_execution(&p.key, ctx.id(), log)
                    .await
                    .map_err(|e| HandlerError::retryable(format!("record: {e}")))?;
                let running = p.running.as_deref().map(|r| {
                    let gk = ctx.task().group_key.as_deref().unwrap_or("");
                    (format!("{r}:{gk}"), format!("{r}:peak"), gk.to_string())
                });
                if let Some((set, peak, gk)) = &running {
                    broker
                        .record_running(set, peak, gk, ctx.id())
                        .await
                        .map_err(|e| HandlerError::retryable(format!("record: {e}")))?;
                }
                let slept = sleep_cancellable(&ctx, p.ms).await;
                if let Some((set, _, _)) = &running {
                    broker
                        .record_stopped(set, ctx.id())
                        .await
                        .map_err(|e| HandlerError::retryable(format!("record: {e}")))?;
                }
                slept?;
                if p.permanent {
                    return Err(HandlerError::permanent("asked to fail permanently"));
                }
                if ctx.attempt() < p.fail_until_attempt {
                    return Err(HandlerError::retryable(format!(
                        "asked to fail until attempt {}",
                        p.fail_until_attempt
                    )));
                }
                Ok(serde_json::json!({"attempt": ctx.attempt()}))
            }
        }),
    );
}
