//! OpenTelemetry export (issue 12.7), tested as a collector sees it: `taskstream serve`
//! and `taskstream worker` (with its orchestrator) on a private redis-server export over
//! OTLP/HTTP to a receiver in this test, which decodes every request with the official
//! protobuf definitions (`opentelemetry-proto`).
//!
//! - `one_trace_links_the_enqueue_the_handler_run_and_the_sagas_steps`: a caller's
//!   `traceparent` header on an enqueue and on a saga start; in that one trace the
//!   enqueue is the caller's child, wait / execute / settle the enqueue's, the HTTP
//!   handler is called with the execute span's context, the saga span is the caller's
//!   child and every transition and every step run (the failed one with its error) the
//!   saga's. A task without a traceparent starts a trace of its own; an unsampled one
//!   exports nothing and its handler sees the traceparent unchanged.
//! - `an_unreachable_collector_stalls_nothing`: with the endpoint on a closed port, every
//!   task of a `taskstream enqueue --count` still runs (counted in Redis), the worker logs
//!   the failed export, and the CLI exits.
//! - `a_bad_tracing_table_is_named`: `config check` names each bad key.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::serve::{client, serve_toml, ServeProc, ADMIN};
use common::{poll, run_cli, write_file, RedisServer, WorkerProc};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message;
use serde_json::{json, Value};

/// One received span, flattened.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    scope: String,
    trace: String,
    id: String,
    parent: String,
    name: String,
    kind: i32,
    /// 2 = error.
    status: i32,
    message: String,
    attrs: HashMap<String, String>,
    start: u64,
    end: u64,
}

/// What the receiver saw: spans, and the `traceparent` of each HTTP handler call.
#[derive(Default)]
struct Seen {
    spans: Vec<Got>,
    handler_calls: Vec<(String, String)>,
    bad_requests: Vec<String>,
}

fn text(kv: &[KeyValue], key: &str) -> Option<String> {
    kv.iter()
        .find(|k| k.key == key)
        .and_then(|k| match k.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            any_value::Value::IntValue(n) => Some(n.to_string()),
            v => Some(format!("{v:?}")),
        })
}

/// An OTLP/HTTP receiver at `/v1/traces` and an HTTP task handler at `/handle`.
async fn receiver() -> (u16, Arc<Mutex<Seen>>) {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s1 = seen.clone();
    let s2 = seen.clone();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let seen = s1.clone();
                async move {
                    let ct = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let req = match ExportTraceServiceRequest::decode(body) {
                        Ok(r) if ct == "application/x-protobuf" => r,
                        other => {
                            seen.lock()
                                .unwrap()
                                .bad_requests
                                .push(format!("{ct}: {other:?}"));
                            return (StatusCode::BAD_REQUEST, Vec::new());
                        }
                    };
                    let mut out = Vec::new();
                    for rs in req.resource_spans {
                        let service = rs
                            .resource
                            .as_ref()
                            .and_then(|r| text(&r.attributes, "service.name"))
                            .unwrap_or_default();
                        for ss in rs.scope_spans {
                            let scope = ss.scope.map(|s| s.name).unwrap_or_default();
                            for s in ss.spans {
                                let (status, message) =
                                    s.status.map(|st| (st.code, st.message)).unwrap_or_default();
                                out.push(Got {
                                    service: service.clone(),
                                    scope: scope.clone(),
                                    trace: hex(&s.trace_id),
                                    id: hex(&s.span_id),
                                    parent: hex(&s.parent_span_id),
                                    name: s.name,
                                    kind: s.kind,
                                    status,
                                    message,
                                    attrs: s
                                        .attributes
                                        .iter()
                                        .map(|kv| {
                                            (
                                                kv.key.clone(),
                                                text(std::slice::from_ref(kv), &kv.key)
                                                    .unwrap_or_default(),
                                            )
                                        })
                                        .collect(),
                                    start: s.start_time_unix_nano,
                                    end: s.end_time_unix_nano,
                                });
                            }
                        }
                    }
                    seen.lock().unwrap().spans.extend(out);
                    (
                        StatusCode::OK,
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        )
        .route(
            "/handle",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let seen = s2.clone();
                async move {
                    let task: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let tp = headers
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let id = task["id"].as_str().unwrap_or("").to_string();
                    seen.lock().unwrap().handler_calls.push((id, tp));
                    axum::Json(json!({"handled": true}))
                }
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (port, seen)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `00-<trace>-<span>-<flags>` split into its trace and span ids.
fn ids(tp: &str) -> (String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    (p[1].to_string(), p[2].to_string())
}

const KIND_INTERNAL: i32 = 1;
const KIND_PRODUCER: i32 = 4;
const KIND_CONSUMER: i32 = 5;
const STATUS_ERROR: i32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_links_the_enqueue_the_handler_run_and_the_sagas_steps() {
    let redis = RedisServer::start();
    let (port, seen) = receiver().await;
    let tracing = format!(
        "[tracing]\notlp_endpoint = \"http://127.0.0.1:{port}\"\nservice_name = \"ts-otel-test\"\nexport_interval_ms = 100\n"
    );
    let api = ServeProc::start(&serve_toml(&redis.url(), &["default"], &tracing)).await;
    let _worker = WorkerProc::spawn(&format!(
        "[redis]\nurl = \"{}\"\n[worker]\nbuiltin_handlers = true\norchestrator = true\n[http]\nlisten = \"\"\n{tracing}[[queues]]\nname = \"default\"\n[[http_handlers]]\ntype = \"traced.http\"\nurl = \"http://127.0.0.1:{port}/handle\"\n",
        redis.url()
    ));
    let c = client();
    let post = |path: &str, tp: Option<&str>, body: Value| {
        let mut r = c.post(api.url(path)).bearer_auth(ADMIN).json(&body);
        if let Some(tp) = tp {
            r = r.header("traceparent", tp);
        }
        r
    };
    let enqueue = |tp: Option<&str>| {
        post(
            "/api/v1/queues/default/tasks",
            tp,
            json!({"type": "traced.http"}),
        )
    };
    let task_id = |v: Value| v["task_id"].as_str().unwrap().to_string();

    // Unsampled first: its handler call (traceparent unchanged) comes before anything
    // sampled is enqueued, so had it exported spans, they would precede the others.
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let r = enqueue(Some(unsampled)).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let quiet_id = task_id(r.json().await.unwrap());
    let call = poll(
        "the unsampled task's handler call",
        Duration::from_secs(30),
        || async {
            let s = seen.lock().unwrap();
            s.handler_calls
                .iter()
                .find(|(id, _)| *id == quiet_id)
                .cloned()
        },
    )
    .await;
    assert_eq!(
        call.1, unsampled,
        "an unsampled run passes the producer's traceparent on"
    );

    // The caller's own span: one trace for a task and a saga.
    let (trace, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let caller = format!("00-{trace}-{caller_span}-01");
    let r = enqueue(Some(&caller)).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let traced_id = task_id(r.json().await.unwrap());
    let r = enqueue(None).send().await.unwrap();
    let root_id = task_id(r.json().await.unwrap());
    let r = post(
        "/api/v1/sagas",
        Some(&caller),
        json!({"saga": "demo", "input": {"sleep_ms": 1, "fail_at": "ml"}}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let saga_id = r.json::<Value>().await.unwrap()["saga_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Everything the trace should hold has arrived: the saga's last transition (rolled
    // back after ml failed and two compensations ran), the traced task's settle and its
    // enqueue.
    let spans = poll("the whole trace", Duration::from_secs(60), || async {
        let s = seen.lock().unwrap();
        assert!(s.bad_requests.is_empty(), "{:?}", s.bad_requests);
        let done =
            s.spans.iter().any(|g| {
                g.attrs.get("taskstream.saga.to").map(String::as_str) == Some("rolled_back")
            }) && s.spans.iter().any(|g| {
                g.name == "settle default"
                    && g.attrs.get("messaging.message.id") == Some(&traced_id)
            }) && s.spans.iter().any(|g| {
                g.name == "settle default" && g.attrs.get("messaging.message.id") == Some(&root_id)
            }) && s.spans.iter().any(|g| {
                // The enqueue spans come from the serve process, whose exporter flushes
                // on its own clock: the worker's settle can arrive first.
                g.name == "enqueue default"
                    && g.attrs.get("messaging.message.id") == Some(&traced_id)
            });
        done.then(|| s.spans.clone())
    })
    .await;

    for g in &spans {
        assert_eq!(
            (g.service.as_str(), g.scope.as_str()),
            ("ts-otel-test", "taskstream")
        );
        assert!(g.end >= g.start && g.start > 0, "{g:?}");
        assert_ne!(
            g.trace, "0af7651916cd43dd8448eb211c80319c",
            "an unsampled trace exported {g:?}"
        );
    }
    let in_trace: Vec<&Got> = spans.iter().filter(|g| g.trace == trace).collect();
    eprintln!(
        "{} spans received, {} in the trace",
        spans.len(),
        in_trace.len()
    );
    let one = |what: &str, f: &dyn Fn(&Got) -> bool| -> Got {
        let m: Vec<&&Got> = in_trace.iter().filter(|g| f(g)).collect();
        assert_eq!(m.len(), 1, "{what}: {m:#?}\nall: {in_trace:#?}");
        (*m[0]).clone()
    };
    let of_task =
        |g: &Got, id: &str| g.attrs.get("messaging.message.id").map(String::as_str) == Some(id);

    // The task: enqueue under the caller; wait, execute, settle under the enqueue.
    let enq = one("enqueue", &|g| {
        g.name == "enqueue default" && of_task(g, &traced_id)
    });
    assert_eq!(
        (enq.parent.as_str(), enq.kind),
        (caller_span, KIND_PRODUCER)
    );
    assert_eq!(enq.attrs["taskstream.task.type"], "traced.http");
    for (name, kind) in [
        ("wait default", KIND_INTERNAL),
        ("execute traced.http", KIND_CONSUMER),
        ("settle default", KIND_INTERNAL),
    ] {
        let s = one(name, &|g| g.name == name && of_task(g, &traced_id));
        assert_eq!(
            (s.parent.as_str(), s.kind),
            (enq.id.as_str(), kind),
            "{s:?}"
        );
        assert_eq!(s.attrs["taskstream.attempt"], "1");
        if name != "wait default" {
            assert_eq!(s.attrs["taskstream.outcome"], "succeeded");
        }
    }
    let exec = one("execute", &|g| {
        g.name == "execute traced.http" && of_task(g, &traced_id)
    });
    let calls = seen.lock().unwrap().handler_calls.clone();
    let tp = &calls.iter().find(|(id, _)| *id == traced_id).unwrap().1;
    assert_eq!(
        ids(tp),
        (trace.to_string(), exec.id.clone()),
        "the HTTP handler hangs under the run"
    );

    // A task without a traceparent: a trace of its own, rooted at its enqueue.
    let root = spans
        .iter()
        .find(|g| g.name == "enqueue default" && of_task(g, &root_id))
        .expect("the root enqueue");
    assert_eq!(root.parent, "", "{root:?}");
    assert_ne!(root.trace, trace);
    assert!(spans.iter().any(|g| g.name == "execute traced.http"
        && of_task(g, &root_id)
        && g.trace == root.trace
        && g.parent == root.id));

    // The saga: its span under the caller, every transition and every step run under it.
    let saga = one("saga", &|g| g.name == "saga demo");
    assert_eq!(saga.parent, caller_span);
    assert_eq!(saga.attrs["taskstream.saga.id"], saga_id);
    let transitions: Vec<&&Got> = in_trace
        .iter()
        .filter(|g| g.name.starts_with("saga demo "))
        .collect();
    for t in &transitions {
        assert_eq!(t.parent, saga.id, "{t:?}");
        assert_eq!(t.attrs["taskstream.saga.id"], saga_id);
    }
    let events: Vec<&str> = transitions
        .iter()
        .map(|t| t.attrs["taskstream.saga.event"].as_str())
        .collect();
    for e in [
        "start",
        "step_succeeded",
        "step_failed",
        "compensation_succeeded",
    ] {
        assert!(events.contains(&e), "no {e} transition in {events:?}");
    }
    let last = transitions
        .iter()
        .find(|t| t.attrs["taskstream.saga.to"] == "rolled_back")
        .unwrap();
    assert_eq!(last.status, STATUS_ERROR, "{last:?}");
    for ty in [
        "demo.reasoning",
        "demo.codegen",
        "demo.ml",
        "demo.delete_generated_code",
        "demo.clear_reasoning_cache",
    ] {
        let run = one(ty, &|g| g.name == format!("execute {ty}"));
        assert_eq!(run.parent, saga.id, "{run:?}");
        if ty == "demo.ml" {
            assert_eq!(run.status, STATUS_ERROR);
            assert!(run.message.contains("fail_at"), "{run:?}");
            assert_eq!(run.attrs["taskstream.outcome"], "dead");
        } else {
            assert_eq!(run.attrs["taskstream.outcome"], "succeeded");
        }
    }
    assert!(
        !in_trace.iter().any(|g| g.name == "execute demo.backtest"),
        "the step after the failure never ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_stalls_nothing() {
    let redis = RedisServer::start();
    // A port nobody listens on.
    let closed = common::free_port();
    let toml = format!(
        "[redis]\nurl = \"{}\"\n[worker]\nbuiltin_handlers = true\n[http]\nlisten = \"\"\n[tracing]\notlp_endpoint = \"http://127.0.0.1:{closed}\"\nexport_interval_ms = 50\ntimeout_ms = 1000\n[[queues]]\nname = \"default\"\n",
        redis.url()
    );
    let worker = WorkerProc::spawn(&toml);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(dir.path(), "cli.toml", &toml);
    let (code, out, err) = run_cli(
        &[
            "enqueue",
            "-c",
            cfg.to_str().unwrap(),
            "-t",
            "builtin.record",
            "-p",
            r#"{"key": "ran"}"#,
            "--count",
            "200",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let mut conn = redis.sync_conn();
    poll("all 200 tasks ran", Duration::from_secs(30), || {
        let n: u64 = redis::Commands::hlen(&mut conn, "ran").unwrap();
        async move { (n == 200).then_some(()) }
    })
    .await;
    worker
        .wait_for_log("the failed export in the log", "span export failed")
        .await;
}

#[test]
fn a_bad_tracing_table_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(
        dir.path(),
        "t.toml",
        "[tracing]\notlp_endpoint = \"collector:4318\"\nsample_ratio = 2.0\n",
    );
    let (code, _, err) = run_cli(&["config", "check", f.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("tracing.otlp_endpoint") && err.contains("http://"),
        "{err}"
    );
    assert!(
        err.contains("tracing.sample_ratio") && err.contains("between 0 and 1"),
        "{err}"
    );
}
