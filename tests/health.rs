//! Readiness is per component: a second worker in one process that stops must not make
//! the process read as "shutting down" while the first still serves (the first release kept
//! one process-wide flag). Its own test binary, so no other test's workers share the state.
//! Also: the HTTP server serves the runbooks (`/runbooks`, `/runbooks/<Alert>`).
#![cfg(feature = "cli")]

mod common;

use std::time::Duration;

use common::RedisServer;
use taskstream::config::{QueueConfig, RedisConfig};
use taskstream::{handler_fn, TaskContext, Worker};
use tokio_util::sync::CancellationToken;

fn worker(url: &str, queue: &str) -> Worker {
    Worker::builder(RedisConfig {
        url: url.into(),
        ..Default::default()
    })
    .queue(QueueConfig {
        name: queue.into(),
        concurrency: 4,
        express_concurrency: 1,
        ..Default::default()
    })
    .handler(
        "noop",
        handler_fn(|_ctx: TaskContext| async { Ok(serde_json::Value::Null) }),
    )
    .build()
    .expect("a valid setup")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_that_stops_does_not_take_the_process_out_of_rotation() {
    let redis = RedisServer::start();
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let a = tokio::spawn(worker(&redis.url(), "health_a").run(stop_a.clone()));
    let b = tokio::spawn(worker(&redis.url(), "health_b").run(stop_b.clone()));
    common::poll("the process is ready", Duration::from_secs(30), || async {
        taskstream::health::not_ready_reason()
            .is_none()
            .then_some(())
    })
    .await;
    stop_b.cancel();
    tokio::time::timeout(Duration::from_secs(30), b)
        .await
        .expect("worker b stops")
        .unwrap()
        .unwrap();
    assert_eq!(
        taskstream::health::not_ready_reason(),
        None,
        "worker a still serves, so the process is still ready"
    );
    stop_a.cancel();
    tokio::time::timeout(Duration::from_secs(30), a)
        .await
        .expect("worker a stops")
        .unwrap()
        .unwrap();
    assert_eq!(
        taskstream::health::not_ready_reason(),
        Some("shutting down"),
        "with no worker left the process reads as shutting down"
    );
}

#[test]
fn the_builder_refuses_an_invalid_setup_with_the_problems_config_check_reports() {
    let err = Worker::builder(RedisConfig {
        url: "http://nope".into(),
        ..Default::default()
    })
    .queue(QueueConfig {
        name: "bad name!".into(),
        ..Default::default()
    })
    .build()
    .err()
    .expect("refused");
    let text = err.to_string();
    assert!(text.contains("redis.url"), "{text}");
    assert!(text.contains("queues[0].name"), "{text}");
}

/// The runbooks an alert links to are served by the same HTTP server as /metrics, without
/// authentication (issue 12.5: the alerts' runbook_url pointed at a repository that does
/// not exist).
#[cfg(all(feature = "http", feature = "http-handler"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_server_serves_the_runbooks() {
    let stop = CancellationToken::new();
    let (addr, server) = taskstream::http::serve(
        "127.0.0.1:0".parse().unwrap(),
        taskstream::metrics::install(),
        stop.clone(),
    )
    .await
    .expect("listens");
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let get = |path: &str| {
        let req = client.get(format!("{base}{path}"));
        async move {
            let r = req.send().await.expect("the server answers");
            let status = r.status().as_u16();
            let ctype = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            (status, ctype, r.text().await.expect("a body"))
        }
    };

    let (status, ctype, body) = get("/runbooks/TaskstreamRedisDown").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ctype, "text/html; charset=utf-8");
    assert!(body.starts_with("<!doctype html>"), "{body}");
    assert!(body.contains("<h1>TaskstreamRedisDown</h1>"), "{body}");
    assert!(body.contains("<h2>Mitigation</h2>"), "{body}");

    // Old links to the markdown file keep working.
    let (status, _, body_md) = get("/runbooks/TaskstreamRedisDown.md").await;
    assert_eq!(status, 200);
    assert_eq!(body_md, body);

    let (status, ctype, body) = get("/runbooks/Nope").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(ctype, "text/html; charset=utf-8");
    assert!(body.contains("href=\"/runbooks\""), "{body}");

    let (status, ctype, index) = get("/runbooks").await;
    assert_eq!(status, 200, "{index}");
    assert_eq!(ctype, "text/html; charset=utf-8");
    let names: Vec<&str> = taskstream::runbooks::names().collect();
    assert!(names.len() >= 12, "{names:?}");
    assert!(names.contains(&"TaskstreamRedisDown"), "{names:?}");
    for name in names {
        assert!(
            index.contains(&format!("href=\"/runbooks/{name}\"")),
            "the index does not link {name}"
        );
    }

    // /metrics is still there next to them.
    let (status, _, _) = get("/metrics").await;
    assert_eq!(status, 200);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the server stops")
        .unwrap();
}
