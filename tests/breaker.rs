//! Circuit breakers (issue 13.4) with two real worker processes, a real Redis and a real
//! HTTP endpoint that starts failing for 10 s under a steady stream of tasks: the breaker
//! opens on every replica, no task is dead-lettered for it (held tasks keep their
//! attempt), the calls made into the endpoint while it is down and the breaker open are
//! bounded by the probes, and every task runs once the endpoint is back.
#![cfg(all(feature = "cli", feature = "http", feature = "http-handler"))]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use common::{poll, worker_toml, RedisServer, WorkerProc};
use serde_json::json;
use taskstream::config::Config;
use taskstream::producer::{NewTask, Producer};

/// The downstream: answers 503 while `failing`, else 200; remembers what it saw.
#[derive(Default)]
struct Endpoint {
    failing: AtomicBool,
    /// When each call made while failing arrived.
    failed_calls: Mutex<Vec<Instant>>,
    /// Task ids answered with 200.
    served: Mutex<HashSet<String>>,
}

async fn serve(ep: Arc<Endpoint>) -> SocketAddr {
    let app = Router::new().route(
        "/charge",
        post(move |body: Bytes| {
            let ep = ep.clone();
            async move {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if ep.failing.load(Ordering::SeqCst) {
                    ep.failed_calls.lock().unwrap().push(Instant::now());
                    return (StatusCode::SERVICE_UNAVAILABLE, "down".to_string());
                }
                let id = v["id"].as_str().unwrap_or_default().to_string();
                ep.served.lock().unwrap().insert(id);
                (StatusCode::OK, json!({"charged": true}).to_string())
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

fn breaker_state(conn: &mut redis::Connection) -> Option<String> {
    redis::cmd("HGET")
        .arg("ts:breaker:{payments}")
        .arg("state")
        .query(conn)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_opens_the_breaker_everywhere_and_loses_no_task() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let ep = Arc::new(Endpoint::default());
    let addr = serve(ep.clone()).await;
    let toml = worker_toml(
        &redis.url(),
        "pay",
        "",
        "concurrency = 8\nexpress_concurrency = 1\nmax_attempts = 8",
    )
    .replace("concurrency = 32\nexpress_concurrency = 4\n", "")
    .replace("backoff_base_ms = 20\nbackoff_cap_ms = 200", "backoff_base_ms = 500\nbackoff_cap_ms = 2000")
        + &format!(
            "[[http_handlers]]\ntype = \"charge\"\nurl = \"http://{addr}/charge\"\ntimeout_ms = 2000\n\
             [[breakers]]\ntarget = \"payments\"\ntypes = [\"charge\"]\nwindow_secs = 2\nmin_calls = 5\n\
             failure_ratio = 0.5\nopen_ms = 1500\nclose_after = 2\n"
        );
    let mut workers: Vec<WorkerProc> = (0..2).map(|_| WorkerProc::spawn(&toml)).collect();
    let cfg = Config::parse("w.toml", &toml).unwrap();
    let p = Producer::connect(&cfg).await.unwrap();
    let mut conn = redis.sync_conn();

    // A steady stream, 20 tasks a second: 1 s healthy, 10 s down, 2 s healthy again.
    let t0 = Instant::now();
    let mut ids = Vec::new();
    let mut first_open: Option<Instant> = None;
    let mut outage: Option<(Instant, Instant)> = None;
    let mut i = 0;
    // The producer's pace (and how often the outage switch and the state are looked at).
    let mut pace = tokio::time::interval(Duration::from_millis(10));
    while t0.elapsed() < Duration::from_secs(13) {
        pace.tick().await;
        let now = t0.elapsed();
        let down = now >= Duration::from_secs(1) && now < Duration::from_secs(11);
        if down && outage.is_none() {
            outage = Some((Instant::now(), Instant::now()));
            ep.failing.store(true, Ordering::SeqCst);
        }
        if !down && ep.failing.load(Ordering::SeqCst) {
            ep.failing.store(false, Ordering::SeqCst);
            if let Some(o) = &mut outage {
                o.1 = Instant::now();
            }
        }
        if first_open.is_none() && breaker_state(&mut conn).as_deref() == Some("open") {
            first_open = Some(Instant::now());
        }
        if (i as u128) < now.as_millis() / 50 {
            let id = format!("c{i}");
            p.enqueue(NewTask::raw("pay", "charge", json!({"n": i}).to_string()).id(&id))
                .await
                .unwrap();
            ids.push(id);
            i += 1;
        }
    }
    let (down_from, down_until) = outage.expect("the outage happened");
    let first_open = first_open.expect("the breaker never opened during the outage");

    // Every task runs once the endpoint is back, none dead-lettered.
    poll("every task was served", Duration::from_secs(60), || {
        let n = ep.served.lock().unwrap().len();
        let want = ids.len();
        async move { (n == want).then_some(()) }
    })
    .await;
    {
        let served = ep.served.lock().unwrap();
        for id in &ids {
            assert!(served.contains(id), "{id} was never served");
        }
    }
    let dlq: u64 = redis::cmd("XLEN")
        .arg("ts:{pay}:dlq")
        .query(&mut conn)
        .unwrap();
    assert_eq!(dlq, 0, "tasks were dead-lettered during the outage");

    // Calls into the endpoint while it was down: those after the breaker opened (plus the
    // other replica's cache time) are the probes, one per open period at most, per replica.
    let calls = ep.failed_calls.lock().unwrap().clone();
    let settle = first_open + Duration::from_millis(500);
    let after_open = calls.iter().filter(|t| **t > settle).count();
    let outage_ms = down_until.duration_since(down_from).as_millis() as usize;
    let bound = 2 * (outage_ms / 1_500 + 2);
    eprintln!(
        "breaker: {} tasks, {} calls into the endpoint while down ({} before it opened, {} after; bound {bound}), opened {:?} into the outage",
        ids.len(),
        calls.len(),
        calls.len() - after_open,
        after_open,
        first_open.duration_since(down_from)
    );
    assert!(
        after_open <= bound,
        "{after_open} calls reached the endpoint after the breaker opened (probes allow {bound})"
    );
    assert!(after_open >= 1, "no probe was ever sent while it was down");
    // Closed again, and both replicas saw it open (each logs the state it learns).
    assert_eq!(breaker_state(&mut conn).as_deref(), Some("closed"));
    for w in &workers {
        let log = w.log_text();
        assert!(
            log.contains("circuit breaker opened") || log.contains("state=\"open\""),
            "a replica never saw the breaker open:\n{log}"
        );
    }
    for w in &mut workers {
        w.terminate(Duration::from_secs(30));
    }
}

#[test]
fn bad_breakers_are_refused_with_the_key() {
    let text = "[[queues]]\nname = \"q\"\n[[breakers]]\ntarget = \"x\"\ntypes = []\nfailure_ratio = 2.0\n\
                [[breakers]]\ntarget = \"y\"\ntypes = [\"t\"]\n[[breakers]]\ntarget = \"z\"\ntypes = [\"t\"]\n";
    let e = Config::parse("w.toml", text)
        .unwrap()
        .validate("w.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("breakers[0].types"), "{e}");
    assert!(e.contains("breakers[0].failure_ratio"), "{e}");
    assert!(
        e.contains("breakers[2].types") && e.contains("already"),
        "{e}"
    );
}
