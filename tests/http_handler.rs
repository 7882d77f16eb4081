//! HTTP handler protocol tests against a local axum server (no Redis needed).
#![cfg(all(feature = "http", feature = "http-handler"))]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use taskstream::config::HttpHandlerConfig;
use taskstream::http_handler::{self, parse_retry_after, HttpHandler};
use taskstream::keys::Lane;
use taskstream::task::Task;
use taskstream::{Handler, HandlerError, TaskContext};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_millis(200);
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Signals the test when the `/hang` route has received its request (and when that
/// request was dropped), and counts requests to `/ok`.
#[derive(Default)]
struct Shared {
    hang_started: Notify,
    hang_dropped: Notify,
    ok_requests: std::sync::atomic::AtomicUsize,
}

/// Notifies `hang_dropped` when the `/hang` handler is dropped (its connection closed).
struct DropSignal(Arc<Shared>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        self.0.hang_dropped.notify_one();
    }
}

async fn serve() -> (SocketAddr, Arc<Shared>) {
    let shared = Arc::new(Shared::default());
    let s2 = shared.clone();
    let s3 = shared.clone();
    let app = Router::new()
        .route(
            "/ok",
            post(move || {
                s3.ok_requests
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { Json(json!({"sent": true, "n": 3})) }
            }),
        )
        .route("/empty", post(|| async { StatusCode::OK }))
        .route("/no-content", post(|| async { StatusCode::NO_CONTENT }))
        .route("/text", post(|| async { "plain words" }))
        .route(
            "/bad",
            post(|| async { (StatusCode::BAD_REQUEST, "field `to` is missing") }),
        )
        .route("/missing", post(|| async { StatusCode::NOT_FOUND }))
        .route(
            "/long-error",
            post(|| async { (StatusCode::UNPROCESSABLE_ENTITY, "é".repeat(2000)) }),
        )
        .route(
            "/req-timeout",
            post(|| async { StatusCode::REQUEST_TIMEOUT }),
        )
        .route(
            "/limited",
            post(|| async {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "7")],
                    "slow down",
                )
            }),
        )
        .route(
            "/boom",
            post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "kaput") }),
        )
        .route(
            "/unavailable",
            post(|| async { (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "120")]) }),
        )
        .route(
            "/unavailable-date",
            post(|| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")],
                )
            }),
        )
        .route(
            "/moved",
            post(|| async { (StatusCode::FOUND, [("location", "/ok?token=hunter2")]) }),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "too late"
            }),
        )
        .route(
            "/hang",
            post(move || {
                let s = s2.clone();
                async move {
                    let _dropped = DropSignal(s.clone());
                    s.hang_started.notify_one();
                    std::future::pending::<()>().await;
                    "never"
                }
            }),
        )
        .route("/echo", post(echo))
        .route(
            "/4k",
            post(|| async { format!("\"{}\"", "x".repeat(4094)) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, shared)
}

/// Returns the raw body, the body parsed, and every header (lower-case names).
async fn echo(headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let hs: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    let raw = String::from_utf8_lossy(&body).into_owned();
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Json(json!({"raw": raw, "body": parsed, "headers": hs}))
}

fn task(saga: Option<&str>, traceparent: Option<&str>) -> Task {
    Task {
        attempt: 2,
        max_attempts: Some(5),
        enqueued_at: 1_700_000_000_123,
        saga_id: saga.map(Into::into),
        traceparent: traceparent.map(Into::into),
        // Key order "b" before "a" shows the payload is embedded as written.
        ..Task::new(
            "task-42",
            "send_email",
            r#"{"b":1,"a":{"to":"x@example.com"},"big":12345678901234567890}"#,
        )
    }
}

fn ctx_with(t: Task, cancel: CancellationToken) -> TaskContext {
    TaskContext::new(t, "emails", Lane::Bulk, "1700000000123-0", 2, 5, cancel)
}

fn ctx() -> TaskContext {
    ctx_with(task(None, Some(TRACEPARENT)), CancellationToken::new())
}

fn cfg(url: String) -> HttpHandlerConfig {
    HttpHandlerConfig {
        task_type: "send_email".into(),
        url,
        timeout_ms: None,
        max_response_bytes: None,
        headers: BTreeMap::new(),
    }
}

fn handler_for(addr: SocketAddr, path: &str) -> HttpHandler {
    HttpHandler::new(
        &cfg(format!("http://{addr}{path}")),
        TIMEOUT,
        http_handler::client(),
    )
    .unwrap()
}

async fn run(addr: SocketAddr, path: &str) -> Result<Value, HandlerError> {
    handler_for(addr, path).handle(ctx()).await
}

fn expect_permanent(r: Result<Value, HandlerError>) -> String {
    match r {
        Err(HandlerError::Permanent { message }) => message,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

fn expect_retryable(r: Result<Value, HandlerError>) -> (String, Option<Duration>) {
    match r {
        Err(HandlerError::Retryable {
            message,
            retry_after,
        }) => (message, retry_after),
        other => panic!("expected a retryable failure, got {other:?}"),
    }
}

#[tokio::test]
async fn success_bodies_become_results() {
    let (addr, _) = serve().await;
    assert_eq!(
        run(addr, "/ok").await.unwrap(),
        json!({"sent": true, "n": 3})
    );
    assert_eq!(run(addr, "/empty").await.unwrap(), Value::Null);
    assert_eq!(run(addr, "/no-content").await.unwrap(), Value::Null);
    assert_eq!(run(addr, "/text").await.unwrap(), json!("plain words"));
}

#[tokio::test]
async fn client_errors_are_permanent_with_status_and_body() {
    let (addr, _) = serve().await;
    let m = expect_permanent(run(addr, "/bad").await);
    assert!(m.contains("400 Bad Request"), "{m}");
    assert!(m.contains("field `to` is missing"), "{m}");
    assert!(m.contains("send_email"), "{m}");
    assert!(m.contains(&format!("http://{addr}/bad")), "{m}");

    let m = expect_permanent(run(addr, "/missing").await);
    assert!(m.contains("404 Not Found"), "{m}");
}

#[tokio::test]
async fn error_body_is_cut_at_512_bytes() {
    let (addr, _) = serve().await;
    let m = expect_permanent(run(addr, "/long-error").await);
    assert!(m.contains("422"), "{m}");
    let quoted = m.matches('é').count();
    // 512 bytes of two-byte characters, never a broken one.
    assert_eq!(quoted, 256, "{m}");
    assert!(!m.contains('\u{FFFD}'), "{m}");
}

#[tokio::test]
async fn request_timeout_and_too_many_requests_are_retryable() {
    let (addr, _) = serve().await;
    let (m, after) = expect_retryable(run(addr, "/req-timeout").await);
    assert!(m.contains("408"), "{m}");
    assert_eq!(after, None);

    let (m, after) = expect_retryable(run(addr, "/limited").await);
    assert!(m.contains("429 Too Many Requests"), "{m}");
    assert!(m.contains("slow down"), "{m}");
    assert_eq!(after, Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn server_errors_are_retryable_and_honour_retry_after() {
    let (addr, _) = serve().await;
    let (m, after) = expect_retryable(run(addr, "/boom").await);
    assert!(m.contains("500 Internal Server Error: kaput"), "{m}");
    assert_eq!(after, None);

    let (m, after) = expect_retryable(run(addr, "/unavailable").await);
    assert!(m.contains("503"), "{m}");
    assert_eq!(after, Some(Duration::from_secs(120)));

    // An HTTP date in the past: retry without an extra wait.
    let (_, after) = expect_retryable(run(addr, "/unavailable-date").await);
    assert_eq!(after, Some(Duration::ZERO));
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (addr, _) = serve().await;
    let m = expect_permanent(run(addr, "/moved").await);
    assert!(m.contains("302"), "{m}");
    assert!(m.contains("not followed"), "{m}");
    assert!(m.contains(&format!("http://{addr}/ok")), "{m}");
    assert!(
        !m.contains("hunter2"),
        "query strings stay out of errors: {m}"
    );
}

#[tokio::test]
async fn slow_endpoint_times_out_retryably() {
    let (addr, _) = serve().await;
    let started = Instant::now();
    let (m, after) = expect_retryable(run(addr, "/slow").await);
    assert!(m.contains("timed out after 200 ms"), "{m}");
    assert_eq!(after, None);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn configured_timeout_wins_over_default() {
    let (addr, _) = serve().await;
    let mut c = cfg(format!("http://{addr}/slow"));
    c.timeout_ms = Some(150);
    let h = HttpHandler::new(&c, Duration::from_secs(60), http_handler::client()).unwrap();
    assert_eq!(h.timeout(), Duration::from_millis(150));
    let started = Instant::now();
    let (m, _) = expect_retryable(h.handle(ctx()).await);
    assert!(m.contains("timed out after 150 ms"), "{m}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn request_body_and_headers_follow_the_contract() {
    let (addr, _) = serve().await;
    let mut c = cfg(format!("http://{addr}/echo"));
    c.headers
        .insert("Authorization".into(), "Bearer s3cret".into());
    c.headers.insert("X-Tenant".into(), "acme".into());
    let h = HttpHandler::new(&c, TIMEOUT, http_handler::client()).unwrap();
    assert!(!format!("{h:?}").contains("s3cret"), "{h:?}");

    let out = h.handle(ctx()).await.unwrap();
    assert_eq!(
        out["body"],
        json!({
            "id": "task-42",
            "queue": "emails",
            "type": "send_email",
            "payload": {"b": 1, "a": {"to": "x@example.com"}, "big": 12345678901234567890u64},
            "attempt": 2,
            "max_attempts": 5,
            "enqueued_at": 1_700_000_000_123u64,
        })
    );
    // Embedded as JSON, exactly as the producer wrote it (not a string, not re-encoded).
    let raw = out["raw"].as_str().unwrap();
    assert!(
        raw.contains(r#""payload":{"b":1,"a":{"to":"x@example.com"},"big":12345678901234567890}"#),
        "{raw}"
    );
    assert!(
        !raw.contains("saga_id"),
        "saga_id is omitted when absent: {raw}"
    );

    let hs = &out["headers"];
    assert_eq!(hs["x-taskstream-task-id"], "task-42");
    assert_eq!(hs["x-taskstream-attempt"], "2");
    assert_eq!(hs["x-taskstream-queue"], "emails");
    assert_eq!(hs["content-type"], "application/json");
    assert_eq!(hs["traceparent"], TRACEPARENT);
    assert_eq!(hs["authorization"], "Bearer s3cret");
    assert_eq!(hs["x-tenant"], "acme");
}

#[tokio::test]
async fn saga_id_is_sent_and_traceparent_only_when_present() {
    let (addr, _) = serve().await;
    let h = handler_for(addr, "/echo");
    let c = ctx_with(task(Some("saga-9"), None), CancellationToken::new());
    let out = h.handle(c).await.unwrap();
    assert_eq!(out["body"]["saga_id"], "saga-9");
    assert!(out["headers"].get("traceparent").is_none(), "{out}");
}

#[tokio::test]
async fn cancellation_aborts_the_request_promptly() {
    let (addr, shared) = serve().await;
    let mut c = cfg(format!("http://{addr}/hang"));
    c.timeout_ms = Some(60_000);
    let h = HttpHandler::new(&c, TIMEOUT, http_handler::client()).unwrap();
    let cancel = CancellationToken::new();
    let ctx = ctx_with(task(None, None), cancel.clone());
    let arrived = shared.hang_started.notified();
    let dropped = shared.hang_dropped.notified();
    let call = tokio::spawn(async move { h.handle(ctx).await });
    arrived.await;
    let started = Instant::now();
    cancel.cancel();
    // Far below the handler's 60 s timeout: the call ends because of the cancellation
    // (its message says so), not because time ran out.
    let r = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("cancellation must end the call long before its 60 s timeout")
        .unwrap();
    let (m, after) = expect_retryable(r);
    assert!(m.ends_with("cancelled"), "{m}");
    assert_eq!(after, None);
    eprintln!(
        "cancelled call returned {:?} after the cancel",
        started.elapsed()
    );
    // And the request itself was abandoned: the server saw its connection go.
    tokio::time::timeout(Duration::from_secs(30), dropped)
        .await
        .expect("the cancelled request's connection was closed");
}

#[tokio::test]
async fn already_cancelled_task_sends_nothing() {
    let (addr, shared) = serve().await;
    let cancel = CancellationToken::new();
    cancel.cancel();
    let r = handler_for(addr, "/ok")
        .handle(ctx_with(task(None, None), cancel))
        .await;
    let (m, _) = expect_retryable(r);
    assert!(m.ends_with("cancelled"), "{m}");
    assert_eq!(
        shared.ok_requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing was sent"
    );
    // The counter works: the same handler without the cancellation does send.
    let r = handler_for(addr, "/ok")
        .handle(ctx_with(task(None, None), CancellationToken::new()))
        .await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(
        shared.ok_requests.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// A port nothing listens on: bind one, then close it.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn connection_refused_is_retryable_and_hides_query() {
    let port = closed_port().await;
    let h = HttpHandler::new(
        &cfg(format!(
            "http://user:pw@127.0.0.1:{port}/hook?token=hunter2"
        )),
        TIMEOUT,
        http_handler::client(),
    )
    .unwrap();
    let (m, after) = expect_retryable(h.handle(ctx()).await);
    assert!(m.contains("connection failed"), "{m}");
    assert!(m.contains(&format!("http://127.0.0.1:{port}/hook")), "{m}");
    assert!(m.contains("send_email"), "{m}");
    assert!(!m.contains("hunter2") && !m.contains("pw@"), "{m}");
    assert_eq!(after, None);
}

#[tokio::test]
async fn https_client_builds_without_installing_a_crypto_provider() {
    // Building the client sets up rustls; a refused https connection must be an
    // ordinary retryable failure, not a panic about a missing crypto provider.
    let port = closed_port().await;
    let h = HttpHandler::new(
        &cfg(format!("https://127.0.0.1:{port}/hook")),
        TIMEOUT,
        http_handler::client(),
    )
    .unwrap();
    let (m, _) = expect_retryable(h.handle(ctx()).await);
    assert!(m.contains("connection failed"), "{m}");
}

#[tokio::test]
async fn invalid_payload_is_permanent() {
    let (addr, _) = serve().await;
    let mut t = task(None, None);
    t.payload = "{not json".into();
    let r = handler_for(addr, "/ok")
        .handle(ctx_with(t, CancellationToken::new()))
        .await;
    let m = expect_permanent(r);
    assert!(m.contains("payload is not valid JSON"), "{m}");
}

#[test]
fn bad_configurations_are_rejected_without_showing_header_values() {
    let client = http_handler::client();
    let new = |c: HttpHandlerConfig| {
        HttpHandler::new(&c, TIMEOUT, client.clone())
            .unwrap_err()
            .to_string()
    };
    let e = new(cfg("ftp://example.com/x".into()));
    assert!(
        e.contains("send_email") && e.contains("http:// or https://"),
        "{e}"
    );
    let e = new(cfg("not a url".into()));
    assert!(e.contains("not a valid URL"), "{e}");

    let mut c = cfg("http://example.com/x".into());
    c.timeout_ms = Some(0);
    assert!(new(c).contains("timeout"));

    for (name, value) in [
        ("Content-Type", "text/plain"),
        ("X-Taskstream-Attempt", "1"),
        ("traceparent", "x"),
        ("bad header", "v"),
        ("X-Key", "line\nbreak-s3cret"),
    ] {
        let mut c = cfg("http://example.com/x".into());
        c.headers.insert(name.into(), value.into());
        let e = new(c);
        assert!(e.contains(name), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    let mut c = cfg("http://example.com/x".into());
    c.headers.insert("Authorization".into(), "a".into());
    c.headers.insert("authorization".into(), "b".into());
    assert!(new(c).contains("listed twice"));
}

#[test]
fn retry_after_parsing() {
    let now = UNIX_EPOCH + Duration::from_secs(784_111_777 - 10);
    assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
    assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
    // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example).
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
        Some(Duration::from_secs(10))
    );
    assert_eq!(
        parse_retry_after(
            "Sun, 06 Nov 1994 08:49:37 GMT",
            now + Duration::from_secs(60)
        ),
        Some(Duration::ZERO)
    );
    assert_eq!(
        parse_retry_after("Thu, 29 Feb 2024 00:00:00 GMT", UNIX_EPOCH),
        Some(Duration::from_secs(1_709_164_800))
    );
    for bad in [
        "",
        "-1",
        "1.5",
        "soon",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
    ] {
        assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
    }
}

fn with_limit(url: String, limit: Option<usize>) -> HttpHandler {
    let mut c = cfg(url);
    c.max_response_bytes = limit;
    HttpHandler::new(&c, Duration::from_secs(30), http_handler::client()).unwrap()
}

#[tokio::test]
async fn a_body_at_the_limit_is_the_result_and_one_byte_more_fails_retryably() {
    let (addr, _) = serve().await;
    let url = format!("http://{addr}/4k");
    let out = with_limit(url.clone(), Some(4096))
        .handle(ctx())
        .await
        .unwrap();
    assert_eq!(out.as_str().map(str::len), Some(4094));
    let (m, after) = expect_retryable(with_limit(url, Some(4095)).handle(ctx()).await);
    assert!(
        m.contains("announces 4096 bytes (Content-Length), above max_response_bytes (4095 bytes)"),
        "{m}"
    );
    assert!(
        m.contains(
            "raise max_response_bytes of the [[http_handlers]] entry of type \"send_email\""
        ),
        "{m}"
    );
    assert_eq!(after, None);
}

#[tokio::test]
async fn large_bodies_are_refused_without_being_downloaded() {
    const BIG: usize = 100 << 20;
    let server = common::BigBodyServer::start(BIG).await;
    // The default limit (1 MiB) applies when none is configured.
    let h = |path: &str| with_limit(format!("http://{}{path}", server.addr), None);
    assert_eq!(
        h("/chunked").max_response_bytes(),
        taskstream::config::DEFAULT_MAX_RESPONSE_BYTES
    );

    let (m, _) = expect_retryable(h("/length").handle(ctx()).await);
    assert!(
        m.contains(
            "announces 104857600 bytes (Content-Length), above max_response_bytes (1048576 bytes)"
        ),
        "{m}"
    );

    // No Content-Length: read up to the limit, then the connection is dropped.
    let (m, _) = expect_retryable(h("/chunked").handle(ctx()).await);
    assert!(m.contains("was still going at"), "{m}");
    assert!(
        m.contains("above max_response_bytes (1048576 bytes)"),
        "{m}"
    );
    // The server could write only what the socket buffers held past the first MiB; the
    // 100 MB were never transferred (hyper closes the connection without draining it).
    common::poll(
        "the server to see both connections close",
        Duration::from_secs(30),
        || {
            let ended = server.ended();
            async move { (ended == 2).then_some(()) }
        },
    )
    .await;
    let written = server.written();
    eprintln!("server wrote {written} of {BIG} body bytes before the client hung up");
    assert!(written < BIG / 4, "{written} of {BIG} bytes were sent");

    // A small response from the same server still works.
    assert_eq!(h("/small").handle(ctx()).await.unwrap(), json!("small"));
}
