//! Observability of real `taskstream` processes on a private Redis: `/metrics` scraped
//! during and after a run (counters match the work done, histograms carry buckets, the
//! collector's gauges match Redis), `/health` and `/ready` while Redis goes away and comes
//! back, a producer's `traceparent` arriving at an HTTP handler, `taskstream stats --watch`
//! and `--json`, and JSON logs that never show task payloads.
#![cfg(all(feature = "cli", feature = "http", feature = "http-handler"))]

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use common::{free_port, poll, run_cli, worker_toml, RedisServer, WorkerProc};
use serde_json::Value;
use taskstream::config::Config;
use taskstream::keys::QueueKeys;
use taskstream::metrics as m;
use taskstream::producer::{NewTask, Producer};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text exposition format line by line (comments skipped).
fn parse_prom(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match (line.find('{'), line.rfind('}')) {
            (Some(open), Some(close)) if open < close => (
                &line[..open],
                parse_labels(&line[open + 1..close])
                    .unwrap_or_else(|| panic!("bad labels in metrics line {line:?}")),
                &line[close + 1..],
            ),
            _ => {
                let sp = line
                    .find(char::is_whitespace)
                    .unwrap_or_else(|| panic!("metrics line without value: {line:?}"));
                (&line[..sp], BTreeMap::new(), &line[sp..])
            }
        };
        let value = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("metrics line without a numeric value: {line:?}"));
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

/// Parses `k="v",k2="v2"` (with `\"`, `\\` and `\n` escapes).
fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(',') | Some(' ')) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(map);
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if chars.next()? != '"' {
            return None;
        }
        let mut val = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => val.push('\n'),
                    c => val.push(c),
                },
                '"' => break,
                c => val.push(c),
            }
        }
        map.insert(key.trim().to_string(), val);
    }
}

/// Samples named `name` whose labels include all of `want`.
fn select<'a>(samples: &'a [Sample], name: &str, want: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// Sum of the matching samples; `None` when none match.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let v = select(samples, name, want);
    (!v.is_empty()).then(|| v.iter().map(|s| s.value).sum())
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .expect("http client")
}

/// GET `url`: (status, body), or `None` when the server does not answer.
async fn get(client: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let r = client.get(url).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// The `/metrics` text of the worker at `base`.
async fn scrape(client: &reqwest::Client, base: &str) -> String {
    let (status, body) = get(client, &format!("{base}/metrics"))
        .await
        .expect("/metrics answers");
    assert_eq!(status, 200, "/metrics status; body:\n{body}");
    body
}

/// A worker configuration with the HTTP server on `127.0.0.1:port` and a 200 ms collector.
fn http_toml(url: &str, queue: &str, port: u16, extra_worker: &str, extra_queue: &str) -> String {
    let t = worker_toml(url, queue, extra_worker, extra_queue);
    assert!(t.contains("listen = \"\"") && t.contains("collect_interval_ms = 500"));
    t.replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""))
        .replace("collect_interval_ms = 500", "collect_interval_ms = 200")
}

/// Waits until the worker's `/ready` answers 200 (the worker has started).
async fn wait_ready(client: &reqwest::Client, base: &str, w: &mut WorkerProc) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some((200, _)) = get(client, &format!("{base}/ready")).await {
            return;
        }
        assert!(
            w.alive(),
            "worker exited while starting; log:\n{}",
            tail(&w.log_text())
        );
        assert!(
            Instant::now() < deadline,
            "worker not ready within 15 s; log:\n{}",
            tail(&w.log_text())
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // poll
    }
}

/// The end of a (possibly huge) log, for failure messages.
fn tail(log: &str) -> &str {
    let mut start = log.len().saturating_sub(6000);
    while !log.is_char_boundary(start) {
        start += 1;
    }
    &log[start..]
}

async fn producer(url: &str) -> Producer {
    let mut cfg = Config::default();
    cfg.redis.url = url.to_string();
    Producer::connect(&cfg).await.expect("producer connects")
}

/// The acker's running totals of `queue` (`done`, `dead`, ...), as Redis has them.
fn counters(conn: &mut redis::Connection, queue: &str) -> BTreeMap<String, u64> {
    redis::cmd("HGETALL")
        .arg(QueueKeys::new(queue).counters)
        .query(conn)
        .unwrap_or_default()
}

fn xlen(conn: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("XLEN").arg(key).query(conn).unwrap()
}

/// Checks one histogram series: explicit `le` buckets (cumulative, ending in +Inf = count).
fn check_histogram(samples: &[Sample], name: &str, want: &[(&str, &str)], count: f64) {
    let buckets = select(samples, &format!("{name}_bucket"), want);
    assert!(
        buckets.len() > 1,
        "{name}{want:?} has `le` buckets (got {} bucket lines)",
        buckets.len()
    );
    let mut bounds: Vec<(f64, f64)> = buckets
        .iter()
        .map(|b| {
            let le = b
                .labels
                .get("le")
                .unwrap_or_else(|| panic!("{name}_bucket without le: {b:?}"));
            (le.parse::<f64>().expect("numeric le"), b.value)
        })
        .collect();
    bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(
        bounds.len(),
        m::LATENCY_BUCKETS.len() + 1,
        "{name}: the configured buckets plus +Inf"
    );
    for (got, want) in bounds.iter().zip(m::LATENCY_BUCKETS) {
        assert!(
            (got.0 - want).abs() < 1e-12,
            "{name}: bucket {} vs {want}",
            got.0
        );
    }
    assert!(
        bounds.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name}: cumulative buckets"
    );
    let inf = bounds.last().unwrap();
    assert!(inf.0.is_infinite(), "{name}: last bucket is +Inf");
    assert_eq!(
        inf.1, count,
        "{name}{want:?}: +Inf bucket counts every observation"
    );
    assert_eq!(
        value(samples, &format!("{name}_count"), want),
        Some(count),
        "{name}{want:?}_count"
    );
    assert!(
        value(samples, &format!("{name}_sum"), want).is_some(),
        "{name}{want:?}_sum present"
    );
}

// ---------------------------------------------------------------------------------------
// 1. /metrics during and after a real run
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scraped_from_a_worker_match_the_work_done() {
    const Q: &str = "obs_metrics";
    const N: usize = 500;
    const DEAD: usize = 5;
    const DELAYED: usize = 3;
    let redis = RedisServer::start();
    let port = free_port();
    let mut w = WorkerProc::spawn(&http_toml(&redis.url(), Q, port, "", ""));
    let base = format!("http://127.0.0.1:{port}");
    let client = http_client();
    wait_ready(&client, &base, &mut w).await;

    let p = producer(&redis.url()).await;
    let later: Vec<NewTask> = (0..DELAYED)
        .map(|_| NewTask::raw(Q, "builtin.noop", "{}").delay(Duration::from_secs(3600)))
        .collect();
    p.enqueue_batch(later).await.unwrap();
    let noops: Vec<NewTask> = (0..N)
        .map(|i| NewTask::raw(Q, "builtin.noop", format!(r#"{{"i":{i}}}"#)))
        .collect();
    p.enqueue_batch(noops).await.unwrap();
    let failing: Vec<NewTask> = (0..DEAD)
        .map(|_| {
            NewTask::raw(
                Q,
                "builtin.record",
                r#"{"key":"obs_dead","permanent":true}"#,
            )
        })
        .collect();
    p.enqueue_batch(failing).await.unwrap();

    // Scrape while the run goes on, until the scraped success counter reaches N: it only
    // grows on the way there and never overshoots.
    let ok_labels = [
        ("queue", Q),
        ("type", "builtin.noop"),
        ("outcome", "succeeded"),
    ];
    let mut conn = redis.sync_conn();
    let mut last = 0.0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = parse_prom(&scrape(&client, &base).await);
        let ok = value(&s, m::COMPLETED_TOTAL, &ok_labels).unwrap_or(0.0);
        assert!(ok >= last, "counter went backwards: {last} -> {ok}");
        assert!(ok <= N as f64, "more successes ({ok}) than tasks ({N})");
        last = ok;
        let c = counters(&mut conn, Q);
        if ok == N as f64
            && c.get("done").copied().unwrap_or(0) >= N as u64
            && c.get("dead").copied().unwrap_or(0) >= DEAD as u64
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "run not finished in 30 s: counters {c:?}, scraped successes {ok}; log:\n{}",
            tail(&w.log_text())
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // poll
    }
    assert_eq!(
        last, N as f64,
        "the scraped counter climbed to every success"
    );

    // The collector samples every 200 ms: wait for a sample taken after the run.
    let keys = QueueKeys::new(Q);
    let text = poll(
        "collector gauges match Redis",
        Duration::from_secs(10),
        || {
            let client = client.clone();
            let base = base.clone();
            async move {
                let text = scrape(&client, &base).await;
                let s = parse_prom(&text);
                let dlq = value(&s, m::DLQ_LENGTH, &[("queue", Q)]);
                let bulk = value(&s, m::STREAM_LENGTH, &[("queue", Q), ("lane", "bulk")]);
                let sched = value(&s, m::SCHEDULED, &[("queue", Q)]);
                (dlq == Some(DEAD as f64) && bulk == Some(0.0) && sched == Some(DELAYED as f64))
                    .then_some(text)
            }
        },
    )
    .await;
    let s = parse_prom(&text);

    // Counters equal exactly the work done, as Redis recorded it.
    let c = counters(&mut conn, Q);
    assert_eq!(
        c.get("done").copied(),
        Some(N as u64),
        "redis counters {c:?}"
    );
    assert_eq!(
        c.get("dead").copied(),
        Some(DEAD as u64),
        "redis counters {c:?}"
    );
    assert_eq!(
        value(&s, m::COMPLETED_TOTAL, &ok_labels),
        Some(N as f64),
        "succeeded = tasks processed"
    );
    assert_eq!(
        value(
            &s,
            m::COMPLETED_TOTAL,
            &[
                ("queue", Q),
                ("type", "builtin.record"),
                ("outcome", "dead")
            ]
        ),
        Some(DEAD as f64),
        "dead = permanently failed tasks"
    );
    assert_eq!(
        value(&s, m::COMPLETED_TOTAL, &[("queue", Q), ("outcome", "dead")]),
        Some(DEAD as f64),
        "no other dead outcomes"
    );
    assert_eq!(
        value(
            &s,
            m::COMPLETED_TOTAL,
            &[("queue", Q), ("outcome", "retried")]
        )
        .unwrap_or(0.0),
        0.0,
        "permanent failures are not retried"
    );
    assert_eq!(
        value(&s, m::COMPLETED_TOTAL, &[("queue", Q)]),
        Some((N + DEAD) as f64),
        "every execution counted once"
    );
    assert_eq!(
        value(
            &s,
            m::DEAD_LETTERED_TOTAL,
            &[("queue", Q), ("reason", "failed")]
        ),
        Some(DEAD as f64)
    );
    let ran: BTreeMap<String, u64> = redis::cmd("HGETALL")
        .arg("obs_dead")
        .query(&mut conn)
        .unwrap();
    assert_eq!(ran.len(), DEAD, "each failing task ran");
    assert!(ran.values().all(|n| *n == 1), "and ran once: {ran:?}");

    // Histograms with explicit buckets, never summaries.
    assert!(
        text.contains(&format!("# TYPE {} histogram", m::WAIT_SECONDS)),
        "wait time is a histogram:\n{text}"
    );
    assert!(
        text.contains(&format!("# TYPE {} histogram", m::HANDLER_DURATION_SECONDS)),
        "handler duration is a histogram:\n{text}"
    );
    assert!(!text.contains("quantile="), "no summaries:\n{text}");
    assert!(!text.contains(" summary"), "no summaries:\n{text}");
    check_histogram(
        &s,
        m::WAIT_SECONDS,
        &[("queue", Q), ("lane", "bulk")],
        (N + DEAD) as f64,
    );
    check_histogram(
        &s,
        m::HANDLER_DURATION_SECONDS,
        &[("queue", Q), ("type", "builtin.noop")],
        N as f64,
    );
    check_histogram(
        &s,
        m::HANDLER_DURATION_SECONDS,
        &[("queue", Q), ("type", "builtin.record")],
        DEAD as f64,
    );

    // Build info and process-level gauges.
    assert_eq!(
        value(&s, m::BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))]),
        Some(1.0),
        "build info:\n{text}"
    );
    assert_eq!(value(&s, m::REDIS_UP, &[]), Some(1.0), "redis up");
    assert_eq!(value(&s, m::CONCURRENCY, &[("queue", Q)]), Some(32.0));
    assert_eq!(value(&s, m::IN_FLIGHT, &[("queue", Q)]).unwrap_or(0.0), 0.0);

    // Collector gauges reflect Redis.
    assert_eq!(xlen(&mut conn, &keys.dlq), DEAD as u64);
    assert_eq!(xlen(&mut conn, &keys.stream), 0);
    let zcard: u64 = redis::cmd("ZCARD")
        .arg(&keys.scheduled)
        .query(&mut conn)
        .unwrap();
    assert_eq!(zcard, DELAYED as u64);
    assert_eq!(
        value(&s, m::STREAM_LENGTH, &[("queue", Q), ("lane", "express")]),
        Some(0.0)
    );
    assert_eq!(value(&s, m::ACTIVE_WORKERS, &[("queue", Q)]), Some(1.0));
    assert_eq!(
        value(&s, m::PENDING, &[("queue", Q), ("lane", "bulk")]),
        Some(0.0),
        "nothing pending after the run"
    );
    assert!(
        value(&s, m::OLDEST_AGE_SECONDS, &[("queue", Q), ("lane", "bulk")]).is_some(),
        "oldest age gauge present"
    );
    assert!(w.alive());
}

// ---------------------------------------------------------------------------------------
// 2. /health and /ready while Redis goes away and comes back
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_flips_when_redis_stops_and_health_stays_ok() {
    // Redis as deployed (AOF on): streams and consumer groups survive the restart.
    ready_flip_scenario("obs_ready", RedisServer::start_durable()).await;
}

/// Regression test: when Redis comes back *empty* (no persistence, or a failover to an
/// empty replica) the consumer groups are gone. The reader's own-history read after
/// reconnecting used to fail with NOGROUP and be retried at once, forever, so the worker
/// never processed again while `/ready` said 200; `src/worker/reader.rs` now re-creates
/// the group on that path too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_resumes_after_redis_restarts_empty() {
    ready_flip_scenario("obs_ready_empty", RedisServer::start()).await;
}

async fn ready_flip_scenario(q: &'static str, mut redis: RedisServer) {
    let port = free_port();
    let mut w = WorkerProc::spawn(&http_toml(&redis.url(), q, port, "", ""));
    let base = format!("http://127.0.0.1:{port}");
    let client = http_client();
    wait_ready(&client, &base, &mut w).await;
    assert_eq!(
        get(&client, &format!("{base}/health")).await.map(|r| r.0),
        Some(200)
    );

    redis.kill();
    let t0 = Instant::now();
    let reason = {
        let (c, b) = (client.clone(), base.clone());
        poll(
            "/ready answers 503 after redis stopped",
            Duration::from_secs(10),
            move || {
                let (c, b) = (c.clone(), b.clone());
                async move {
                    match get(&c, &format!("{b}/ready")).await {
                        Some((503, body)) => Some(body),
                        _ => None,
                    }
                }
            },
        )
        .await
    };
    let flipped_after = t0.elapsed();
    assert!(
        reason.to_lowercase().contains("redis"),
        "the reason names redis: {reason:?}"
    );
    // Alive while Redis is down: /health stays 200 and the process keeps running.
    for _ in 0..3 {
        assert_eq!(
            get(&client, &format!("{base}/health")).await.map(|r| r.0),
            Some(200),
            "/health while redis is down"
        );
        assert!(
            w.alive(),
            "worker exited while redis was down:\n{}",
            tail(&w.log_text())
        );
        let (st, _) = get(&client, &format!("{base}/ready")).await.unwrap();
        assert_eq!(st, 503, "/ready stays 503 while redis is down");
        tokio::time::sleep(Duration::from_millis(100)).await; // let time pass while down
    }
    let metrics = parse_prom(&scrape(&client, &base).await);
    assert_eq!(
        value(&metrics, m::REDIS_UP, &[]),
        Some(0.0),
        "taskstream_redis_up is 0 while redis is down"
    );

    redis.restart();
    let (c, b) = (client.clone(), base.clone());
    poll("/ready answers 200 after redis restarted", Duration::from_secs(15), move || {
        let (c, b) = (c.clone(), b.clone());
        async move { matches!(get(&c, &format!("{b}/ready")).await, Some((200, _))).then_some(()) }
    })
    .await;
    assert!(w.alive());
    eprintln!("/ready flipped to 503 {flipped_after:?} after redis stopped");
    let metrics = parse_prom(&scrape(&client, &base).await);
    assert_eq!(
        value(&metrics, m::REDIS_UP, &[]),
        Some(1.0),
        "taskstream_redis_up is 1 again once /ready says 200"
    );
    // And the worker works again.
    let p = producer(&redis.url()).await;
    p.enqueue(NewTask::raw(q, "builtin.noop", "{}"))
        .await
        .unwrap();
    let mut conn = redis.sync_conn();
    let deadline = Instant::now() + Duration::from_secs(15);
    while counters(&mut conn, q).get("done").copied().unwrap_or(0) < 1 {
        assert!(
            Instant::now() < deadline,
            "no task ran within 15 s after the restart; log:\n{}",
            tail(&w.log_text())
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // poll
    }
}

// ---------------------------------------------------------------------------------------
// 3. traceparent from producer to an HTTP handler
// ---------------------------------------------------------------------------------------

type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

async fn hook_server() -> (u16, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push((headers, body));
                Json(serde_json::json!({"ok": true}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (port, seen)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, ids not all zeros (W3C trace context).
fn is_w3c_traceparent(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    };
    parts.len() == 4
        && parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [2, 32, 16, 2]
        && parts.iter().all(|p| hex(p))
        && parts[0] != "ff"
        && parts[1].chars().any(|c| c != '0')
        && parts[2].chars().any(|c| c != '0')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_travels_from_producer_to_http_handler() {
    const Q: &str = "obs_trace";
    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let redis = RedisServer::start();
    let (hook_port, seen) = hook_server().await;
    let mut toml = worker_toml(&redis.url(), Q, "", "");
    toml.push_str(&format!(
        "\n[[http_handlers]]\ntype = \"hook\"\nurl = \"http://127.0.0.1:{hook_port}/hook\"\n"
    ));
    let mut w = WorkerProc::spawn(&toml);
    let p = producer(&redis.url()).await;
    let with_tp = p
        .enqueue(NewTask::raw(Q, "hook", "{\"a\":1}").traceparent(TP))
        .await
        .unwrap();
    let without_tp = p
        .enqueue(NewTask::raw(Q, "hook", "{\"a\":2}"))
        .await
        .unwrap();
    let s = seen.clone();
    let reqs = poll("two requests at the hook", Duration::from_secs(15), || {
        let v = s.lock().unwrap().clone();
        async move { (v.len() >= 2).then_some(v) }
    })
    .await;
    assert!(w.alive(), "{}", tail(&w.log_text()));
    assert_eq!(reqs.len(), 2, "one request per task");
    let find = |id: &str| {
        reqs.iter()
            .find(|(h, _)| header(h, "x-taskstream-task-id") == Some(id))
            .unwrap_or_else(|| panic!("no request with X-Taskstream-Task-Id {id}: {reqs:?}"))
    };

    // The explicit trace context arrives unchanged.
    let (h, body) = find(&with_tp.task_id);
    assert_eq!(header(h, "traceparent"), Some(TP));
    assert_eq!(h.get_all("traceparent").iter().count(), 1);
    assert_eq!(header(h, "x-taskstream-attempt"), Some("1"));
    assert_eq!(header(h, "x-taskstream-queue"), Some(Q));
    assert_eq!(header(h, "content-type"), Some("application/json"));
    assert!(
        header(h, "user-agent").is_some_and(|u| u.starts_with("taskstream/")),
        "{h:?}"
    );
    let text = std::str::from_utf8(body).unwrap();
    let v: Value = serde_json::from_str(text).unwrap();
    assert_eq!(v["id"], with_tp.task_id.as_str());
    assert_eq!(v["queue"], Q);
    assert_eq!(v["type"], "hook");
    assert_eq!(
        v["payload"],
        serde_json::json!({"a": 1}),
        "payload embedded as JSON"
    );
    assert_eq!(v["attempt"], 1);
    assert!(v["max_attempts"].as_u64().is_some_and(|n| n >= 1), "{v}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let at = v["enqueued_at"].as_u64().expect("enqueued_at integer ms");
    assert!(
        at <= now && now - at < 60_000,
        "enqueued_at {at} vs now {now}"
    );
    assert!(
        v.get("saga_id").is_none(),
        "saga_id absent for plain tasks: {v}"
    );
    // Documented field order.
    let order: Vec<usize> = [
        "\"id\":",
        "\"queue\":",
        "\"type\":",
        "\"payload\":",
        "\"attempt\":",
        "\"max_attempts\":",
        "\"enqueued_at\":",
    ]
    .iter()
    .map(|k| text.find(k).unwrap_or_else(|| panic!("{k} in {text}")))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "field order: {text}");

    // Without one, the producer starts a trace: a well-formed W3C traceparent arrives.
    let (h, body) = find(&without_tp.task_id);
    let tp = header(h, "traceparent").expect("producer-generated traceparent header");
    assert!(is_w3c_traceparent(tp), "well-formed traceparent: {tp:?}");
    assert_ne!(tp, TP);
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["id"], without_tp.task_id.as_str());
    assert_eq!(v["payload"], serde_json::json!({"a": 2}));

    // Both tasks succeeded.
    let mut conn = redis.sync_conn();
    poll(
        "both hook tasks acknowledged",
        Duration::from_secs(10),
        || {
            let done = counters(&mut conn, Q).get("done").copied().unwrap_or(0);
            async move { (done == 2).then_some(()) }
        },
    )
    .await;
    // The validator used above rejects what it must (else the check of the generated
    // traceparent proves nothing).
    assert!(is_w3c_traceparent(TP));
    for bad in [
        "",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
    ] {
        assert!(
            !is_w3c_traceparent(bad),
            "accepted a bad traceparent {bad:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 4. taskstream stats --watch and --json
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_watch_refreshes_in_place_and_json_parses() {
    const Q: &str = "obs_stats";
    const CLEAR: &str = "\x1b[2J\x1b[H";
    let redis = RedisServer::start();
    let p = producer(&redis.url()).await;
    let batch: Vec<NewTask> = (0..7)
        .map(|_| NewTask::raw(Q, "builtin.noop", "{}"))
        .collect();
    p.enqueue_batch(batch).await.unwrap();

    // --json: parses, one object per queue with the documented fields.
    let url = redis.url();
    let (code, out, err) = run_cli(&["--redis-url", &url, "stats", "--json"], &[]);
    assert_eq!(code, 0, "stats --json failed: {out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let q = v
        .as_array()
        .expect("a JSON array")
        .iter()
        .find(|s| s["queue"] == Q)
        .unwrap_or_else(|| panic!("queue {Q} in {out}"));
    for f in [
        "queue",
        "bulk_length",
        "express_length",
        "scheduled",
        "dead_letters",
        "oldest_bulk_age_seconds",
        "oldest_express_age_seconds",
        "live_workers",
        "paused",
        "groups",
    ] {
        assert!(q.get(f).is_some(), "field {f} in {q}");
    }
    assert_eq!(q["bulk_length"], 7, "{q}");
    assert_eq!(q["express_length"], 0, "{q}");
    assert_eq!(q["dead_letters"], 0, "{q}");
    assert_eq!(q["scheduled"], 0, "{q}");
    assert_eq!(q["paused"], false, "{q}");
    assert!(
        q["oldest_bulk_age_seconds"]
            .as_f64()
            .is_some_and(|a| a >= 0.0),
        "{q}"
    );
    assert!(q["groups"].is_array(), "{q}");

    // --watch: frames that each start by clearing the screen.
    let mut child = Command::new(common::bin())
        .args([
            "--redis-url",
            &url,
            "stats",
            "--watch",
            "--interval",
            "200ms",
        ])
        .env_remove("TASKSTREAM_REDIS_URL")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn taskstream stats --watch");
    let mut stdout = child.stdout.take().unwrap();
    let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
    let b = buf.clone();
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    let complete_frames = |text: &str| -> Vec<String> {
        // A frame is complete once the next one has started.
        let parts: Vec<&str> = text.split(CLEAR).collect();
        parts[1..parts.len().saturating_sub(1).max(1)]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let b = buf.clone();
    let frames = poll(
        "two complete stats --watch frames",
        Duration::from_secs(15),
        || {
            let text = String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
            let f = complete_frames(&text);
            async move { (f.len() >= 2).then_some(f) }
        },
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap();
    let all = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    assert!(
        all.starts_with(CLEAR),
        "output starts with a clear screen: {all:?}"
    );
    let mut rates = Vec::new();
    for f in &frames {
        assert!(f.contains("QUEUE"), "frame has the header: {f:?}");
        let row = f
            .lines()
            .find(|l| l.split_whitespace().next() == Some(Q))
            .unwrap_or_else(|| panic!("frame has a row for {Q}: {f:?}"));
        assert_eq!(
            row.split_whitespace().nth(1),
            Some("7"),
            "bulk backlog in the row: {row:?}"
        );
        rates.push(row.split_whitespace().last().unwrap().to_string());
    }
    // The first frame has no rate yet; later ones compute it from the previous frame.
    assert_eq!(rates[0], "-", "{frames:?}");
    assert!(
        rates[1..].iter().all(|r| r.parse::<f64>().is_ok()),
        "DONE/S is a number from the second frame on: {rates:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 5. JSON logs without payloads
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_and_never_show_payloads() {
    const Q: &str = "obs_log";
    const MARKER: &str = "SECRET-7f3a9c-do-not-log";
    let redis = RedisServer::start();
    let toml =
        worker_toml(&redis.url(), Q, "", "").replace("[log]\n", "[log]\nformat = \"json\"\n");
    assert!(toml.contains("format = \"json\""));
    let mut w = WorkerProc::spawn(&toml);
    let p = producer(&redis.url()).await;
    // Succeeds, fails permanently, has no handler: the payload of none may be logged.
    p.enqueue(NewTask::raw(
        Q,
        "builtin.noop",
        format!(r#"{{"password":"{MARKER}"}}"#),
    ))
    .await
    .unwrap();
    p.enqueue(NewTask::raw(
        Q,
        "builtin.record",
        format!(r#"{{"key":"obs_log_rec","permanent":true,"token":"{MARKER}"}}"#),
    ))
    .await
    .unwrap();
    p.enqueue(NewTask::raw(
        Q,
        "no.such.type",
        format!(r#"{{"token":"{MARKER}"}}"#),
    ))
    .await
    .unwrap();
    let mut conn = redis.sync_conn();
    poll("three tasks settled", Duration::from_secs(15), || {
        let c = counters(&mut conn, Q);
        let done = c.get("done").copied().unwrap_or(0);
        let dead = xlen(&mut conn, &QueueKeys::new(Q).dlq);
        async move { (done == 1 && dead == 2).then_some(()) }
    })
    .await;
    assert_eq!(w.terminate(Duration::from_secs(15)), Some(0), "clean exit");

    let log = w.log_text();
    assert!(!log.trim().is_empty(), "the worker logged something");
    let mut messages = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line:?}"));
        let o = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        assert!(
            o.get("level").is_some_and(Value::is_string),
            "level: {line}"
        );
        assert!(o.get("timestamp").is_some(), "timestamp: {line}");
        assert!(
            o.contains_key("message") || o.contains_key("fields"),
            "message: {line}"
        );
        if let Some(m) = o.get("message").and_then(Value::as_str) {
            messages.push(m.to_string());
        }
    }
    assert!(
        messages.iter().any(|m| m.contains("dead-lettered")),
        "the dead letters were logged: {messages:?}"
    );
    assert!(
        !log.contains(MARKER),
        "payload content appeared in the log:\n{log}"
    );
}

/// Regression test: a payload that does not fit a handler's type used to fail with
/// serde's message, which quotes the offending value (`invalid type: string "<value>",
/// expected u64`), and that message was logged ("task dead-lettered") — so payload content
/// reached the log. `TaskContext::payload` (src/handler.rs) now reports decode errors
/// without the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_values_never_leak_through_decode_errors() {
    const Q: &str = "obs_log_decode";
    const MARKER: &str = "SECRET-5b1e02-do-not-log";
    let redis = RedisServer::start();
    let mut w = WorkerProc::spawn(&worker_toml(&redis.url(), Q, "", ""));
    let p = producer(&redis.url()).await;
    // `ms` must be a number: the decode error names the string it got instead.
    p.enqueue(NewTask::raw(
        Q,
        "builtin.record",
        format!(r#"{{"key":"obs_log_decode","ms":"{MARKER}"}}"#),
    ))
    .await
    .unwrap();
    let mut conn = redis.sync_conn();
    poll("the task is dead-lettered", Duration::from_secs(15), || {
        let dead = xlen(&mut conn, &QueueKeys::new(Q).dlq);
        async move { (dead == 1).then_some(()) }
    })
    .await;
    assert_eq!(w.terminate(Duration::from_secs(15)), Some(0), "clean exit");
    let log = w.log_text();
    assert!(log.contains("dead-lettered"), "{log}");
    assert!(
        !log.contains(MARKER),
        "payload content appeared in the log:\n{log}"
    );
}
