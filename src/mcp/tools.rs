//! The tools: their descriptions and JSON input schemas (`tools/list`) and what a call
//! does (`tools/call`).
//!
//! Every call goes through the same function as the REST API's handler for it (the
//! handler itself where it takes no query string, otherwise the core it shares with the
//! handler), so validation, the admin check, the unknown-queue 404 and the log line with
//! the token's name are the API's. The arguments are checked against the tool's schema
//! by the API's own request types (`deny_unknown_fields`), so the two cannot disagree on
//! what a task or a filter is.

use axum::extract::State;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::protocol::RpcError;
use crate::api::extract::Body;
use crate::api::{dead_letters, queues, sagas, tasks, ApiState, Caller, PathParams, Problem};
use crate::config::ApiRole;

/// Largest page a list tool returns.
pub const MAX_LIMIT: usize = 100;
/// Page size when a call gives no `limit`.
pub const DEFAULT_LIMIT: usize = 20;

/// Why a call did not produce a result.
#[derive(Debug)]
pub enum ToolError {
    /// Unknown tool, arguments that do not fit the schema, or a mutating tool in read-only
    /// mode: a JSON-RPC `-32602` error.
    Invalid(String),
    /// The operation failed (unknown queue, saga ended, Redis down…): an `isError` result.
    Failed(Problem),
}

impl From<Problem> for ToolError {
    fn from(p: Problem) -> Self {
        ToolError::Failed(p)
    }
}

/// One tool.
struct Spec {
    name: &'static str,
    title: &'static str,
    description: &'static str,
    /// Changes something (hidden and refused in read-only mode).
    mutating: bool,
    /// May undo or discard work (MCP `destructiveHint`).
    destructive: bool,
    /// Calling it twice does what calling it once does (MCP `idempotentHint`).
    idempotent: bool,
    /// Properties of the input schema.
    properties: Value,
    /// Required properties.
    required: &'static [&'static str],
}

fn queue() -> Value {
    json!({"type": "string", "minLength": 1, "description": "Queue name (see queue_stats for the known queues)."})
}
fn cursor() -> Value {
    json!({"type": "string", "description": "The next_cursor of the previous page; absent for the first page."})
}
fn limit() -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT, "description": "Most items to return."})
}
fn ms(what: &str) -> Value {
    json!({"type": "integer", "minimum": 0, "description": what})
}

/// The properties of a dead-letter filter (every given condition must hold).
fn filter_properties() -> Map<String, Value> {
    let p = json!({
        "type": {"type": "string", "description": "Task type, exactly."},
        "reason": {"type": "string", "description": "Text the dead-letter reason contains, ignoring case (e.g. exhausted, poison, unknown_type, malformed)."},
        "error": {"type": "string", "description": "Text the last error contains, ignoring case."},
        "task_id": {"type": "string", "description": "Task id, exactly."},
        "since_ms": ms("Dead-lettered at or after this Unix time in ms."),
        "until_ms": ms("Dead-lettered at or before this Unix time in ms."),
    });
    match p {
        Value::Object(m) => m,
        _ => unreachable!("an object literal"),
    }
}

fn specs() -> Vec<Spec> {
    let mut search = filter_properties();
    search.insert("queue".into(), queue());
    search.insert("cursor".into(), cursor());
    search.insert("limit".into(), limit());
    let filter = json!({
        "type": "object",
        "additionalProperties": false,
        "properties": Value::Object(filter_properties()),
        "description": "Which dead letters (every given condition must hold; {} or absent: all of them).",
    });
    let mut states: Vec<&str> = crate::saga::ops::STATES.to_vec();
    states.push("active");
    vec![
        Spec {
            name: "queue_stats",
            title: "Queue statistics",
            description: "Live figures of one queue, or of every known queue a page at a time: waiting and pending tasks per lane, consumer lag, age of the oldest task, scheduled and dead-letter counts, live workers, partitions, and the done / retried / dead counters.",
            mutating: false,
            destructive: false,
            idempotent: true,
            properties: json!({
                "queue": {"type": "string", "minLength": 1, "description": "One queue; absent for all known queues (by name, a page at a time)."},
                "cursor": cursor(),
                "limit": limit(),
            }),
            required: &[],
        },
        Spec {
            name: "task_get",
            title: "Look up a task",
            description: "Where a task is (scheduled, queued, running, retrying or dead) with its type, attempt, last error and timings; on a queue that keeps results (result_ttl_secs) also succeeded or cancelled, with its result, progress and start and end times. Elsewhere finished tasks are not retained.",
            mutating: false,
            destructive: false,
            idempotent: true,
            properties: json!({
                "queue": queue(),
                "task_id": {"type": "string", "minLength": 1, "maxLength": 128, "description": "Task id (as enqueue returned it)."},
            }),
            required: &["queue", "task_id"],
        },
        Spec {
            name: "enqueue",
            title: "Enqueue a task",
            description: "Enqueues one task on a known queue. Returns its task_id and entry_id; duplicate is true when the idempotency key was seen within the window (nothing new is enqueued).",
            mutating: true,
            destructive: false,
            idempotent: false,
            properties: json!({
                "queue": queue(),
                "type": {"type": "string", "minLength": 1, "description": "Task type (selects the handler)."},
                "payload": {"description": "Any JSON the handler receives; {} when absent."},
                "express": {"type": "boolean", "default": false, "description": "Use the express lane (latency-sensitive work)."},
                "delay_ms": {"type": "integer", "minimum": 0, "maximum": 31_622_400_000u64, "description": "Do not run before this many ms from now."},
                "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 256, "description": "Enqueues with the same key within the window are one task."},
                "id": {"type": "string", "minLength": 1, "maxLength": 128, "description": "Task id; a UUIDv7 when absent."},
                "max_attempts": {"type": "integer", "minimum": 1, "maximum": 1_000_000, "description": "Attempts in all before it is dead-lettered."},
                "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 604_800_000, "description": "Handler time limit in ms."},
                "partition_key": {"type": "string", "maxLength": 256, "description": "Same key, same partition of a partitioned queue."},
                "group_key": {"type": "string", "minLength": 1, "maxLength": 256, "description": "Group key (a tenant, an account): at most the queue's max_per_key tasks of one key run at once, and keys take turns."},
                "traceparent": {"type": "string", "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$", "description": "W3C trace context to continue."},
            }),
            required: &["queue", "type"],
        },
        Spec {
            name: "dead_letters_search",
            title: "Search dead letters",
            description: "Dead letters of a queue matching every given filter, oldest first, with their fields (values cut at 4 KiB). A page may hold fewer than limit letters and still have a next_cursor: each call looks at a bounded number of letters.",
            mutating: false,
            destructive: false,
            idempotent: true,
            properties: Value::Object(search),
            required: &["queue"],
        },
        Spec {
            name: "dead_letters_requeue",
            title: "Requeue dead letters",
            description: "Moves every dead letter of a queue that the filter matches back to its lane with a fresh attempt count. With dry_run, only counts them. Returns matched, applied and skipped.",
            mutating: true,
            destructive: false,
            idempotent: false,
            properties: json!({
                "queue": queue(),
                "filter": filter,
                "dry_run": {"type": "boolean", "default": false, "description": "Only count what would be requeued."},
            }),
            required: &["queue"],
        },
        Spec {
            name: "queue_pause",
            title: "Pause a queue",
            description: "No task of the queue starts on any worker replica until it is resumed (tasks wait in Redis; running ones finish).",
            mutating: true,
            destructive: false,
            idempotent: true,
            properties: json!({"queue": queue()}),
            required: &["queue"],
        },
        Spec {
            name: "queue_resume",
            title: "Resume a queue",
            description: "Resumes delivery of a paused queue on every worker replica.",
            mutating: true,
            destructive: false,
            idempotent: true,
            properties: json!({"queue": queue()}),
            required: &["queue"],
        },
        Spec {
            name: "saga_start",
            title: "Start a saga",
            description: "Starts a saga of a configured definition with an input every step receives; returns its saga_id. An orchestrator drives it from there.",
            mutating: true,
            destructive: false,
            idempotent: false,
            properties: json!({
                "saga": {"type": "string", "minLength": 1, "description": "Definition name ([[sagas]] name in the configuration)."},
                "input": {"description": "Any JSON every step receives; {} when absent."},
            }),
            required: &["saga"],
        },
        Spec {
            name: "saga_get",
            title: "Show a saga",
            description: "A saga's state, steps with status, attempts and timings, errors and history.",
            mutating: false,
            destructive: false,
            idempotent: true,
            properties: json!({"saga_id": {"type": "string", "minLength": 1, "description": "Saga id."}}),
            required: &["saga_id"],
        },
        Spec {
            name: "saga_list",
            title: "List sagas",
            description: "Sagas in a state (active: not ended), those that entered it most recently first, a page at a time.",
            mutating: false,
            destructive: false,
            idempotent: true,
            properties: json!({
                "state": {"type": "string", "enum": states, "description": "Only sagas in this state; absent for all."},
                "cursor": cursor(),
                "limit": limit(),
            }),
            required: &[],
        },
        Spec {
            name: "saga_abort",
            title: "Abort a saga",
            description: "Stops a running saga and rolls it back: the steps done so far are compensated in reverse order. Fails for a saga that already ended.",
            mutating: true,
            destructive: true,
            idempotent: true,
            properties: json!({
                "saga_id": {"type": "string", "minLength": 1, "description": "Saga id."},
                "reason": {"type": "string", "maxLength": 1024, "description": "Why (kept in the saga's history)."},
            }),
            required: &["saga_id"],
        },
    ]
}

fn describe(s: &Spec) -> Value {
    json!({
        "name": s.name,
        "title": s.title,
        "description": s.description,
        "inputSchema": {
            "type": "object",
            "properties": s.properties,
            "required": s.required,
            "additionalProperties": false,
        },
        "annotations": {
            "title": s.title,
            "readOnlyHint": !s.mutating,
            "destructiveHint": s.destructive,
            "idempotentHint": s.idempotent,
            "openWorldHint": false,
        },
    })
}

/// The tools offered: all of them, or the read-only ones.
pub fn list(read_only: bool) -> Vec<Value> {
    specs()
        .iter()
        .filter(|s| !(read_only && s.mutating))
        .map(describe)
        .collect()
}

/// Names of the tools that change something.
pub fn mutating() -> Vec<&'static str> {
    specs()
        .iter()
        .filter(|s| s.mutating)
        .map(|s| s.name)
        .collect()
}

/// The arguments of one call, taken apart field by field.
struct Args {
    tool: &'static str,
    map: Map<String, Value>,
}

impl Args {
    fn invalid(&self, why: impl std::fmt::Display) -> ToolError {
        ToolError::Invalid(format!(
            "invalid arguments for tool {}: {why} (see its inputSchema in tools/list)",
            self.tool
        ))
    }

    fn string(&mut self, name: &str) -> Result<Option<String>, ToolError> {
        match self.map.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.invalid(format!("{name} must be a string, got {v}"))),
        }
    }

    fn required(&mut self, name: &str) -> Result<String, ToolError> {
        match self.string(name)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(self.invalid(format!("{name} is required"))),
        }
    }

    fn limit(&mut self) -> Result<usize, ToolError> {
        let v = self.map.remove("limit");
        let n = match &v {
            None | Some(Value::Null) => return Ok(DEFAULT_LIMIT),
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as u64)),
            Some(_) => None,
        };
        match n {
            Some(n) if (1..=MAX_LIMIT as u64).contains(&n) => Ok(n as usize),
            _ => Err(self.invalid(format!(
                "limit must be a whole number from 1 to {MAX_LIMIT}, got {}",
                v.unwrap_or_default()
            ))),
        }
    }

    /// What is left, as one of the API's request types (which refuses unknown fields).
    fn rest<T: serde::de::DeserializeOwned>(self) -> Result<T, ToolError> {
        let Args { tool, map } = self;
        serde_json::from_value(Value::Object(map)).map_err(|e| {
            ToolError::Invalid(format!(
                "invalid arguments for tool {tool}: {e} (see its inputSchema in tools/list)"
            ))
        })
    }

    /// Nothing may be left.
    fn done(self) -> Result<(), ToolError> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(k) => Err(self.invalid(format!("unknown argument {k:?}"))),
        }
    }
}

fn out<T: Serialize>(v: T) -> Result<Value, ToolError> {
    serde_json::to_value(v).map_err(|e| {
        ToolError::Failed(Problem::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            format!("cannot encode the result: {e}"),
        ))
    })
}

/// Runs tool `name` with `args` for `caller`: the tool's result, or why not.
pub async fn run(
    name: &str,
    args: Value,
    state: &ApiState,
    caller: &Caller,
) -> Result<Value, ToolError> {
    let Some(spec) = specs().into_iter().find(|s| s.name == name) else {
        return Err(ToolError::Invalid(format!(
            "unknown tool {name:?}; tools/list names the tools"
        )));
    };
    if spec.mutating && caller.role != ApiRole::Admin {
        return Err(ToolError::Invalid(format!(
            "tool {name} changes state and is not available in read-only mode (token {:?} has the read role; use an admin token, or `taskstream mcp --admin`)",
            caller.name
        )));
    }
    let map = match args {
        Value::Null => Map::new(),
        Value::Object(m) => m,
        v => {
            return Err(ToolError::Invalid(format!(
                "the arguments of tool {name} are an object, got {v}"
            )))
        }
    };
    let mut a = Args {
        tool: spec.name,
        map,
    };
    if spec.mutating {
        tracing::info!(token = %caller.name, tool = name, "mcp: mutating tool called");
    }
    let st = || State(state.clone());
    let c = caller.clone();
    match spec.name {
        "queue_stats" => {
            let queue = a.string("queue")?;
            let cursor = a.string("cursor")?;
            let limit = a.limit()?;
            a.done()?;
            match queue {
                Some(q) => {
                    let v = queues::show(st(), c, PathParams(q)).await?.0;
                    out(json!({"queues": [out(v)?], "next_cursor": null}))
                }
                None => out(queues::page(state, cursor.as_deref(), limit).await?),
            }
        }
        "task_get" => {
            let queue = a.required("queue")?;
            let id = a.required("task_id")?;
            a.done()?;
            out(tasks::show(st(), c, PathParams((queue, id))).await?.0)
        }
        "enqueue" => {
            let queue = a.required("queue")?;
            let task = a.rest()?;
            out(
                tasks::enqueue(st(), c, PathParams(queue), Default::default(), Body(task))
                    .await?
                    .1
                     .0,
            )
        }
        "dead_letters_search" => {
            let queue = a.required("queue")?;
            let cursor = a.string("cursor")?;
            let limit = a.limit()?;
            let filter: dead_letters::FilterIn = a.rest()?;
            let filter = filter.into();
            dead_letters::check(&filter)?;
            out(dead_letters::search_page(state, &queue, &filter, cursor.as_deref(), limit).await?)
        }
        "dead_letters_requeue" => {
            let queue = a.required("queue")?;
            let body = a.rest()?;
            out(
                dead_letters::requeue(st(), c, PathParams(queue), Body(body))
                    .await?
                    .0,
            )
        }
        "queue_pause" | "queue_resume" => {
            let queue = a.required("queue")?;
            a.done()?;
            let r = if spec.name == "queue_pause" {
                queues::pause(st(), c, PathParams(queue)).await?
            } else {
                queues::resume(st(), c, PathParams(queue)).await?
            };
            out(r.1 .0)
        }
        "saga_start" => {
            let body = a.rest()?;
            out(sagas::start(st(), c, Default::default(), Body(body))
                .await?
                .1
                 .0)
        }
        "saga_get" => {
            let id = a.required("saga_id")?;
            a.done()?;
            out(sagas::show(st(), c, PathParams(id)).await?.0)
        }
        "saga_list" => {
            let saga_state = a.string("state")?;
            let cursor = a.string("cursor")?;
            let limit = a.limit()?;
            a.done()?;
            out(sagas::page(state, saga_state.as_deref(), limit, cursor.as_deref()).await?)
        }
        "saga_abort" => {
            let id = a.required("saga_id")?;
            if !a.map.contains_key("reason") {
                let why = format!("aborted through MCP by {}", caller.name);
                a.map.insert("reason".into(), Value::String(why));
            }
            let body = a.rest()?;
            out(sagas::abort(st(), c, PathParams(id), Body(body)).await?.0)
        }
        other => unreachable!("tool {other} has a spec but no implementation"),
    }
}

/// `tools/call`: the MCP result of running `name` (`isError` when the tool failed), or
/// the JSON-RPC error of a call that cannot be made.
pub async fn call(
    name: &str,
    args: Value,
    state: &ApiState,
    caller: &Caller,
) -> Result<Value, RpcError> {
    let (v, is_error) = match run(name, args, state, caller).await {
        Ok(v) => (v, false),
        Err(ToolError::Invalid(why)) => return Err(RpcError::invalid_params(why)),
        Err(ToolError::Failed(p)) => {
            let v = serde_json::to_value(&p).unwrap_or(Value::Null);
            (v, true)
        }
    };
    let text = if is_error {
        format!(
            "{}: {}",
            v["title"].as_str().unwrap_or("Error"),
            v["detail"].as_str().unwrap_or("")
        )
    } else {
        v.to_string()
    };
    Ok(json!({
        "content": [{"type": "text", "text": text}],
        "structuredContent": v,
        "isError": is_error,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_has_a_closed_object_schema_and_annotations() {
        let all = list(false);
        assert_eq!(all.len(), 11);
        for t in &all {
            let name = t["name"].as_str().unwrap();
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            let s = &t["inputSchema"];
            assert_eq!(s["type"], "object", "{name}");
            assert_eq!(s["additionalProperties"], false, "{name}");
            let props = s["properties"].as_object().unwrap();
            for r in s["required"].as_array().unwrap() {
                assert!(props.contains_key(r.as_str().unwrap()), "{name}: {r}");
            }
            assert!(t["annotations"]["readOnlyHint"].is_boolean(), "{name}");
            assert!(!t["description"].as_str().unwrap().is_empty());
        }
    }

    #[test]
    fn read_only_mode_lists_no_mutating_tool() {
        let ro: Vec<String> = list(true)
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            ro,
            [
                "queue_stats",
                "task_get",
                "dead_letters_search",
                "saga_get",
                "saga_list"
            ]
        );
        for t in list(true) {
            assert_eq!(t["annotations"]["readOnlyHint"], true);
        }
        assert_eq!(
            mutating(),
            [
                "enqueue",
                "dead_letters_requeue",
                "queue_pause",
                "queue_resume",
                "saga_start",
                "saga_abort"
            ]
        );
    }

    fn args(tool: &'static str, v: Value) -> Args {
        Args {
            tool,
            map: v.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn arguments_are_checked_against_the_schema() {
        let mut a = args("x", json!({"limit": 100.0, "queue": 5}));
        assert_eq!(a.limit().unwrap(), 100);
        assert!(matches!(a.string("queue"), Err(ToolError::Invalid(_))));
        for bad in [json!(0), json!(101), json!(2.5), json!("5")] {
            let mut a = args("x", json!({ "limit": bad }));
            assert!(matches!(a.limit(), Err(ToolError::Invalid(_))), "{bad}");
        }
        assert_eq!(args("x", json!({})).limit().unwrap(), DEFAULT_LIMIT);
        let Err(ToolError::Invalid(why)) = args("x", json!({"nope": 1})).done() else {
            panic!()
        };
        assert!(why.contains("nope") && why.contains("tool x"), "{why}");
        // The API's own types: unknown fields are refused, known ones are typed.
        let r: Result<tasks::TaskIn, _> = args("enqueue", json!({"type": "t", "colour": 1})).rest();
        assert!(matches!(r, Err(ToolError::Invalid(w)) if w.contains("colour")));
        let r: Result<tasks::TaskIn, _> = args(
            "enqueue",
            json!({"type": "t", "delay_ms": 5.0, "payload": [1]}),
        )
        .rest();
        assert!(r.is_ok());
        let r: Result<dead_letters::FilterIn, _> =
            args("dead_letters_search", json!({"type": "t", "since_ms": -1})).rest();
        assert!(r.is_err());
    }

    #[test]
    fn every_schema_property_is_accepted() {
        // Each tool's schema properties are exactly what its arguments take: a value of
        // the right type for every property parses (the state-free part of each call).
        let sample = |p: &Value| match p["type"].as_str() {
            Some("string") if p.get("pattern").is_some() => {
                json!("00-0123456789abcdef0123456789abcdef-0123456789abcdef-01")
            }
            Some("string") => p["enum"].get(0).cloned().unwrap_or(json!("x")),
            Some("integer") => p.get("minimum").cloned().unwrap_or(json!(1)),
            Some("boolean") => json!(true),
            Some("object") => json!({}),
            _ => json!({"any": "json"}),
        };
        for t in list(false) {
            let name = t["name"].as_str().unwrap();
            let props = t["inputSchema"]["properties"].as_object().unwrap();
            let all: Map<String, Value> =
                props.iter().map(|(k, p)| (k.clone(), sample(p))).collect();
            let tool: &'static str = specs().into_iter().find(|s| s.name == name).unwrap().name;
            let mut a = Args { tool, map: all };
            let ok = match name {
                "queue_stats" | "saga_list" => {
                    let _ = a.string("queue");
                    let _ = a.string("state");
                    a.string("cursor").unwrap();
                    a.limit().unwrap();
                    a.done().is_ok()
                }
                "task_get" => {
                    a.required("queue").unwrap();
                    a.required("task_id").unwrap();
                    a.done().is_ok()
                }
                "queue_pause" | "queue_resume" => {
                    a.required("queue").unwrap();
                    a.done().is_ok()
                }
                "saga_get" => {
                    a.required("saga_id").unwrap();
                    a.done().is_ok()
                }
                "enqueue" => {
                    a.required("queue").unwrap();
                    a.rest::<tasks::TaskIn>().is_ok()
                }
                "dead_letters_search" => {
                    a.required("queue").unwrap();
                    a.string("cursor").unwrap();
                    a.limit().unwrap();
                    a.rest::<dead_letters::FilterIn>().is_ok()
                }
                "dead_letters_requeue" => {
                    a.required("queue").unwrap();
                    a.rest::<dead_letters::BulkIn>().is_ok()
                }
                "saga_start" => a.rest::<sagas::StartIn>().is_ok(),
                "saga_abort" => {
                    a.required("saga_id").unwrap();
                    a.rest::<sagas::AbortIn>().is_ok()
                }
                other => panic!("untested tool {other}"),
            };
            assert!(ok, "{name}: its schema's properties do not all parse");
        }
    }
}
