//! Handlers of the built-in `demo` saga ([`super::definition::demo_saga`]):
//! `reasoning → codegen → ml → backtest`, with compensations for the first three.
//!
//! They do no real work, but they behave the way real saga handlers must, which is why
//! the demo, the test suite and the load test use them:
//!
//! | input field | effect |
//! |---|---|
//! | `sleep_ms` (default 5) | every handler sleeps that long (stops early when cancelled) |
//! | `fail_at` | the step of that name fails permanently (`"ml"` shows a rollback) |
//! | `fail_compensation_at` | the compensation of that step fails permanently (saga `failed`) |
//! | `log_key` | compensations `RPUSH` their task type to that Redis list, once per saga |
//!
//! Each action returns the saga input's fields plus `step` and `saga_id`, and refuses
//! (permanently) outputs of earlier steps that carry another saga's id, so a leak
//! between concurrent sagas cannot go unnoticed. Compensations are idempotent: the list
//! entry and a marker keyed by the task's idempotency key are written in one script, so
//! a redelivered compensation records nothing twice.

use std::time::Duration;

use crate::rdb::Conn;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::handler::{handler_fn, HandlerError, HandlerResult, Registry, TaskContext};
use crate::rdb::Broker;

/// The action task types, in step order.
pub const ACTIONS: [&str; 4] = ["demo.reasoning", "demo.codegen", "demo.ml", "demo.backtest"];

/// The compensation task types.
pub const COMPENSATIONS: [&str; 3] = [
    "demo.clear_reasoning_cache",
    "demo.delete_generated_code",
    "demo.discard_model",
];

/// How long the "undone" markers of compensations are kept.
const MARKER_TTL: Duration = Duration::from_secs(86_400);

#[derive(Deserialize)]
struct StepPayload {
    saga_id: String,
    step: String,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    outputs: Map<String, Value>,
}

#[derive(Deserialize)]
struct CompPayload {
    saga_id: String,
    step: String,
    #[serde(default)]
    input: Value,
}

fn text<'a>(input: &'a Value, key: &str) -> Option<&'a str> {
    input.get(key).and_then(Value::as_str)
}

async fn pause(ctx: &TaskContext, input: &Value) -> Result<(), HandlerError> {
    let ms = input
        .get("sleep_ms")
        .and_then(Value::as_u64)
        .unwrap_or(5)
        .min(60_000);
    if ms == 0 {
        return Ok(());
    }
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(()),
        _ = ctx.cancellation().cancelled() => Err(HandlerError::retryable("cancelled")),
    }
}

async fn action(ctx: TaskContext) -> HandlerResult {
    let p: StepPayload = ctx.payload()?;
    for (name, out) in &p.outputs {
        if let Some(other) = out.get("saga_id").and_then(Value::as_str) {
            if other != p.saga_id {
                return Err(HandlerError::permanent(format!(
                    "output of step {name:?} belongs to saga {other}, not {}: data leaked between sagas",
                    p.saga_id
                )));
            }
        }
    }
    pause(&ctx, &p.input).await?;
    if text(&p.input, "fail_at") == Some(p.step.as_str()) {
        return Err(HandlerError::permanent(format!(
            "{} failed: the input asked step {:?} to fail (fail_at)",
            ctx.task_type(),
            p.step
        )));
    }
    let mut out = match &p.input {
        Value::Object(m) => m.clone(),
        Value::Null => Map::new(),
        other => Map::from_iter([("input".to_string(), other.clone())]),
    };
    out.insert("step".into(), Value::String(p.step));
    out.insert("saga_id".into(), Value::String(p.saga_id));
    Ok(Value::Object(out))
}

async fn compensation(ctx: TaskContext, broker: Broker) -> HandlerResult {
    let p: CompPayload = ctx.payload()?;
    pause(&ctx, &p.input).await?;
    if text(&p.input, "fail_compensation_at") == Some(p.step.as_str()) {
        return Err(HandlerError::permanent(format!(
            "{} failed: the input asked the compensation of {:?} to fail (fail_compensation_at)",
            ctx.task_type(),
            p.step
        )));
    }
    if let Some(log_key) = text(&p.input, "log_key") {
        let idem = ctx.task().idempotency_key.as_deref().unwrap_or(ctx.id());
        // The marker hashes like the log list (its name, or its hash tag), so the
        // script's two keys share a slot on a cluster too.
        let marker = format!("ts:demo:undone:{{{}}}:{idem}", hash_part(log_key));
        broker
            .demo_record_undo(&marker, log_key, ctx.task_type(), MARKER_TTL)
            .await
            .map_err(|e| HandlerError::retryable(format!("recording the compensation: {e}")))?;
    }
    Ok(serde_json::json!({"undone": p.step, "saga_id": p.saga_id}))
}

/// The part of `key` Redis Cluster hashes: its hash tag, or the whole name.
fn hash_part(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// Registers the seven demo handlers; compensations record themselves through `conn`.
pub fn register(reg: &mut Registry, conn: Conn) {
    for t in ACTIONS {
        reg.register(t, handler_fn(action));
    }
    let broker = Broker::new(conn);
    for t in COMPENSATIONS {
        let broker = broker.clone();
        reg.register(
            t,
            handler_fn(move |ctx: TaskContext| compensation(ctx, broker.clone())),
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_undo_marker_shares_the_slot_of_the_log_list() {
        for log in ["log:k:1", "a{b}c"] {
            let m = format!("ts:demo:undone:{{{}}}:S:1:comp", super::hash_part(log));
            assert_eq!(crate::keys::slot(&m), crate::keys::slot(log), "{log}");
        }
    }

    use super::*;
    use crate::keys::Lane;
    use crate::saga::definition::demo_saga;
    use crate::task::Task;
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    fn ctx(task_type: &str, payload: Value) -> TaskContext {
        let t = Task::new("t", task_type, payload.to_string());
        TaskContext::new(
            t,
            "default",
            Lane::Bulk,
            "1-0",
            1,
            1,
            CancellationToken::new(),
        )
    }

    #[test]
    fn types_match_the_demo_saga() {
        let d = demo_saga();
        let mut mine: Vec<&str> = ACTIONS
            .iter()
            .chain(COMPENSATIONS.iter())
            .copied()
            .collect();
        let mut theirs: Vec<&str> = d.task_types().collect();
        mine.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(mine, theirs);
    }

    #[tokio::test]
    async fn actions_echo_the_input_fail_on_request_and_catch_leaks() {
        let input = json!({"n": 7, "sleep_ms": 0, "fail_at": "ml"});
        let out = action(ctx(
            "demo.codegen",
            json!({"saga_id": "A", "step": "codegen", "input": input, "outputs": {"reasoning": {"saga_id": "A"}}}),
        ))
        .await
        .unwrap();
        assert_eq!(out["n"], 7);
        assert_eq!(out["saga_id"], "A");
        assert_eq!(out["step"], "codegen");
        let err = action(ctx(
            "demo.ml",
            json!({"saga_id": "A", "step": "ml", "input": input, "outputs": {}}),
        ))
        .await
        .unwrap_err();
        assert!(
            !err.is_retryable() && err.message().contains("fail_at"),
            "{err}"
        );
        let err = action(ctx(
            "demo.codegen",
            json!({"saga_id": "A", "step": "codegen", "input": input, "outputs": {"reasoning": {"saga_id": "B"}}}),
        ))
        .await
        .unwrap_err();
        assert!(err.message().contains("leaked"), "{err}");
    }
}
