//! The SLA loop of a real worker process: it adapts concurrency to the latency objective
//! and exports the replicas the queue needs (read from its /metrics).
#![cfg(all(feature = "cli", feature = "http"))]

mod common;

use std::time::Duration;

use common::{free_port, poll, run_cli, worker_toml, RedisServer, WorkerProc};

/// The value of the first sample of `name` with `label` in a Prometheus text page.
fn sample(page: &str, name: &str, label: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn scrape(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    match reqwest::get(&url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[tokio::test]
async fn a_worker_adapts_concurrency_to_its_objective_and_exports_desired_replicas() {
    let _g = common::heavy().await;
    let redis = RedisServer::start();
    let port = free_port();
    let q = "sla";
    let toml = worker_toml(
        &redis.url(),
        q,
        "",
        "min_concurrency = 8\nsla_p95_wait_ms = 1000",
    )
    .replace(
        "[http]\nlisten = \"\"",
        &format!("[http]\nlisten = \"127.0.0.1:{port}\""),
    );
    let mut w = WorkerProc::spawn(&toml);
    let url = redis.url();
    // Light load: a trickle of instant tasks, so waits are far below the objective and the
    // slots sit idle. The controller gives back a tenth of the slots each second.
    let shrunk = poll(
        "concurrency shrinks below the configured 32",
        Duration::from_secs(30),
        || {
            let url = url.clone();
            async move {
                let (code, _, err) = run_cli(
                    &[
                        "--redis-url",
                        &url,
                        "enqueue",
                        "-q",
                        "sla",
                        "-t",
                        "builtin.noop",
                        "--count",
                        "20",
                    ],
                    &[],
                );
                assert_eq!(code, 0, "{err}");
                let page = scrape(port).await;
                sample(&page, "taskstream_concurrency_target", "queue=\"sla\"")
                    .filter(|c| *c < 32.0)
            }
        },
    )
    .await;
    assert!(shrunk >= 8.0, "never below min_concurrency: {shrunk}");
    // Now a backlog of 1 s tasks: waits break the objective with every slot busy, so the
    // controller grows concurrency again; and one replica (32 slots at 80%: ~26 tasks/s)
    // cannot drain ~2,000+ waiting 1 s tasks within the 60 s horizon, so it asks for more.
    let (code, _, err) = run_cli(
        &[
            "--redis-url",
            &url,
            "enqueue",
            "-q",
            q,
            "-t",
            "builtin.sleep",
            "-p",
            r#"{"ms":1000}"#,
            "--count",
            "3000",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (grown, desired) = loop {
        let page = scrape(port).await;
        let c = sample(&page, "taskstream_concurrency_target", "queue=\"sla\"").unwrap_or(0.0);
        let d = sample(&page, "taskstream_desired_replicas", "queue=\"sla\"").unwrap_or(0.0);
        if c > shrunk && d >= 2.0 {
            break (c, d);
        }
        if std::time::Instant::now() > deadline {
            let lines: Vec<&str> = page
                .lines()
                .filter(|l| l.contains("desired") || l.contains("lag") || l.contains("concurrency"))
                .collect();
            panic!("no growth / desired replicas after 30 s (concurrency {c}, desired {d}); metrics:\n{}\nworker log:\n{}", lines.join("\n"), w.log_text());
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // poll
    };
    assert!(
        grown <= 32.0,
        "never above the configured concurrency: {grown}"
    );
    eprintln!("concurrency shrank to {shrunk} when idle, grew back to {grown} under a backlog; desired replicas {desired}");
    // Pausing holds the answer: a held-back backlog is no reason to add replicas.
    let (code, _, err) = run_cli(&["--redis-url", &url, "queue", "pause", q], &[]);
    assert_eq!(code, 0, "{err}");
    let mut conn = redis.sync_conn();
    poll(
        "the worker applied the pause",
        Duration::from_secs(15),
        || {
            let acks: Vec<String> = redis::cmd("HVALS")
                .arg(taskstream::keys::QueueKeys::new(q).pause_acks)
                .query(&mut conn)
                .unwrap_or_default();
            async move { (acks == ["paused"]).then_some(()) }
        },
    )
    .await;
    let held = sample(
        &scrape(port).await,
        "taskstream_desired_replicas",
        "queue=\"sla\"",
    )
    .expect("desired replicas exported");
    // A much larger backlog arrives while paused: unpaused, it would raise the answer
    // (~20,000 waiting 1 s tasks need about 13 replicas of 32 slots to drain in 60 s).
    let (code, _, err) = run_cli(
        &[
            "--redis-url",
            &url,
            "enqueue",
            "-q",
            q,
            "-t",
            "builtin.sleep",
            "-p",
            r#"{"ms":1000}"#,
            "--count",
            "20000",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    // Desired replicas are recomputed every 5 s: watch two rounds' worth.
    let watch_until = std::time::Instant::now() + Duration::from_secs(11);
    while std::time::Instant::now() < watch_until {
        let d = sample(
            &scrape(port).await,
            "taskstream_desired_replicas",
            "queue=\"sla\"",
        );
        assert_eq!(d, Some(held), "desired replicas held while paused");
        tokio::time::sleep(Duration::from_millis(250)).await; // poll
    }
    // Resumed, the same backlog does raise it: the hold above was the pause's doing.
    let (code, _, err) = run_cli(&["--redis-url", &url, "queue", "resume", q], &[]);
    assert_eq!(code, 0, "{err}");
    poll(
        "desired replicas grow for the backlog once resumed",
        Duration::from_secs(30),
        || async {
            sample(
                &scrape(port).await,
                "taskstream_desired_replicas",
                "queue=\"sla\"",
            )
            .filter(|d| *d > held)
        },
    )
    .await;
    assert_eq!(w.terminate(Duration::from_secs(30)), Some(0));
}
