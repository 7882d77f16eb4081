//! The programs in `examples/` run against a real Redis: a producer, a worker with a Rust
//! handler, and a worker whose handler is an HTTP endpoint. They are the library's
//! documentation, so a change that breaks them fails here.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::RedisServer;

/// Path of an example binary: `cargo test` builds examples beside the binaries.
fn example(name: &str) -> PathBuf {
    let bin = common::bin();
    let p = bin.parent().unwrap().join("examples").join(name);
    assert!(
        p.exists(),
        "example binary {} is missing; `cargo test` builds examples, so this means the \
         example was renamed or the build skipped it",
        p.display()
    );
    p
}

/// Runs `name` with `args` to completion (bounded), returning (exit code, stdout).
fn run_example(name: &str, args: &[&str], env: &[(&str, &str)], limit: Duration) -> (i32, String) {
    let mut cmd = Command::new(example(name));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn example");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut out = String::new();
            for l in BufReader::new(child.stdout.take().unwrap()).lines() {
                out.push_str(&l.unwrap());
                out.push('\n');
            }
            let mut err = String::new();
            for l in BufReader::new(child.stderr.take().unwrap()).lines() {
                err.push_str(&l.unwrap());
                err.push('\n');
            }
            assert!(st.success(), "example {name} failed ({st}):\n{out}\n{err}");
            return (st.code().unwrap_or(-1), out);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("example {name} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20)); // poll the child
    }
}

#[test]
fn the_producer_and_worker_examples_move_tasks_end_to_end() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let (_, produced) = run_example(
        "producer",
        &["ex_emails", "10"],
        &env,
        Duration::from_secs(60),
    );
    let ids: Vec<&str> = produced
        .lines()
        .filter_map(|l| l.strip_prefix("enqueued "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        10,
        "the producer reports one line per task:\n{produced}"
    );
    // The worker handles all ten (the delayed one after its second) and stops.
    let (_, worked) = run_example(
        "worker",
        &["ex_emails", "10"],
        &env,
        Duration::from_secs(60),
    );
    assert!(worked.contains("stopped after 10 tasks"), "{worked}");
    for id in ids {
        assert!(
            worked.contains(&format!("handled {id} ")),
            "task {id} not handled:\n{worked}"
        );
    }
    // Nothing left behind: the streams are empty and nothing is pending.
    let mut c = redis.sync_conn();
    let len: u64 = redis::cmd("XLEN")
        .arg("ts:{ex_emails}:stream")
        .query(&mut c)
        .unwrap();
    let scheduled: u64 = redis::cmd("ZCARD")
        .arg("ts:{ex_emails}:scheduled")
        .query(&mut c)
        .unwrap();
    assert_eq!((len, scheduled), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_worker_example_posts_each_task_to_the_endpoint() {
    use axum::routing::post;
    let redis = RedisServer::start();
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = hits.clone();
    let app = axum::Router::new().route(
        "/render",
        post(move |headers: axum::http::HeaderMap| {
            let h = h2.clone();
            async move {
                assert!(headers.contains_key("x-taskstream-task-id"));
                h.fetch_add(1, Ordering::SeqCst);
                axum::Json(serde_json::json!({"ok": true}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let cfg = taskstream::config::Config {
        redis: taskstream::config::RedisConfig {
            url: redis.url(),
            ..Default::default()
        },
        ..Default::default()
    };
    let p = taskstream::producer::Producer::connect(&cfg).await.unwrap();
    for i in 0..5 {
        p.enqueue(taskstream::producer::NewTask::new("ex_renders", "render", &i).unwrap())
            .await
            .unwrap();
    }
    let url = redis.url();
    let handler_url = format!("http://{addr}/render");
    let out = tokio::task::spawn_blocking(move || {
        run_example(
            "http_worker",
            &["ex_renders", "5"],
            &[
                ("REDIS_URL", url.as_str()),
                ("HANDLER_URL", handler_url.as_str()),
            ],
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap()
    .1;
    assert!(out.contains("stopped after 5 tasks"), "{out}");
    assert_eq!(hits.load(Ordering::SeqCst), 5, "one POST per task");
}

#[test]
fn the_saga_example_completes_one_booking_and_rolls_the_other_back() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (_, out) = run_example(
        "saga",
        &[],
        &[("REDIS_URL", url.as_str())],
        Duration::from_secs(90),
    );
    let ends: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("saga "))
        .map(|l| l.rsplit(": ").next().unwrap())
        .collect();
    assert_eq!(ends, vec!["completed", "rolled_back"], "{out}");
    // The declined booking released its seat and never sent a ticket: compensations ran.
    assert!(out.contains("step release"), "{out}");
    assert_eq!(out.matches("step ticket").count(), 1, "{out}");
    assert!(
        !out.contains("step refund"),
        "a failed step is not compensated:\n{out}"
    );
}
