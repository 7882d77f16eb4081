//! Readiness is per component: a second worker in one process that stops must not make
//! the process read as "shutting down" while the first still serves (the first release kept
//! one process-wide flag). Its own test binary, so no other test's workers share the state.
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
