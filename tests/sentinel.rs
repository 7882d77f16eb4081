//! Redis Sentinel (issue 11, item 5) with real processes: a master, its replicas and three
//! `redis-server --sentinel` processes (tests/common/sentinel.rs), a real `taskstream
//! worker` and a library producer that reach Redis through the sentinels only.
//!
//! The failover tests take the master away while the producer enqueues and the worker
//! works — SIGKILL, or `SENTINEL FAILOVER` (the old master stays up and is demoted) —,
//! wait for the sentinels to promote a replica, keep enqueueing, and then count on the new
//! master: every enqueue the producer saw succeed must have been executed.
//!
//! Replication is asynchronous, so an enqueue the old master acknowledged may never reach
//! the promoted replica: just before a kill, and — the larger window — between the
//! promotion and the sentinels' announcement of it while a demoted master still takes
//! writes. With `redis.wait_replicas = 1` (issue 11, item 4) such an enqueue is reported
//! to the producer as an error instead, and the tests assert zero loss; without it the
//! loss is counted and printed, never hidden. `wait_replicas = 1` needs a replica to
//! acknowledge after the failover too: the kill test runs two replicas (one is promoted,
//! the other follows it), the demotion test one (the demoted master becomes the new
//! master's replica, about 10 s later, and enqueues fail until then).
#![cfg(feature = "cli")]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::sentinel::Sentinel;
use common::{poll, run_cli, worker_toml, write_file, WorkerProc};
use taskstream::config::Config;
use taskstream::producer::{NewTask, Producer};

/// Tasks per enqueue batch in the failover test.
const BATCH: usize = 20;

/// How soon after the sentinels announce a failover the processes must have followed it
/// (measured: under 10 ms; the sentinels are also polled every 2 s as a fallback).
const FOLLOW_WITHIN: Duration = Duration::from_millis(500);

fn record(queue: &str, key: &str) -> NewTask {
    NewTask::new(
        queue,
        "builtin.record",
        &serde_json::json!({"key": key, "ms": 1}),
    )
    .unwrap()
}

fn producer_cfg(s: &Sentinel, wait: Option<u32>) -> Config {
    let mut c = Config::default();
    c.redis.sentinels = s.urls();
    c.redis.sentinel_master = Some(s.name.clone());
    c.redis.response_timeout_ms = 1000;
    c.redis.wait_replicas = wait.unwrap_or(0);
    c.redis.wait_timeout_ms = 500;
    c.validate("test").unwrap();
    c
}

/// A worker configuration that reaches Redis through the sentinels of `s`.
fn sentinel_worker_toml(s: &Sentinel, queue: &str, wait: Option<u32>, extra_queue: &str) -> String {
    let mut redis = s.redis_toml();
    if let Some(n) = wait {
        redis.push_str(&format!("\nwait_replicas = {n}\nwait_timeout_ms = 500"));
    }
    worker_toml("X", queue, "", extra_queue).replace("url = \"X\"", &redis)
}

/// Seconds since midnight of a log line's RFC 3339 timestamp (`…THH:MM:SS.ffffffZ`).
fn seconds_of_day(ts: &str) -> Option<f64> {
    let time = ts.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let (h, m, s): (f64, f64, f64) = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Waits until the queue is settled on the master the sentinels name (nothing in the
/// stream or scheduled), and returns that master's port and the executions recorded
/// under `key`.
///
/// The master is looked up again on every poll and a failed query only means "not yet":
/// on this loaded 2-core machine, with `down-after-milliseconds` at 1 s, the sentinels
/// may fail over a second time, and a sentinel reconfiguring a node sends it `CLIENT KILL
/// TYPE normal`, which closed this check's connection once (CI, "unexpected end of file").
async fn drained(
    s: &Sentinel,
    queue: &str,
    key: &str,
    timeout: Duration,
) -> (u16, HashMap<String, u64>) {
    poll("the queue drained on the master", timeout, || {
        let settled = s.master().and_then(|port| {
            let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                .ok()?
                .get_connection()
                .ok()?;
            let len: u64 = redis::cmd("XLEN")
                .arg(format!("ts:{{{queue}}}:stream"))
                .query(&mut conn)
                .ok()?;
            let sched: u64 = redis::cmd("ZCARD")
                .arg(format!("ts:{{{queue}}}:scheduled"))
                .query(&mut conn)
                .ok()?;
            if len != 0 || sched != 0 {
                return None;
            }
            let ex: HashMap<String, u64> = redis::cmd("HGETALL").arg(key).query(&mut conn).ok()?;
            Some((port, ex))
        });
        async move { settled }
    })
    .await
}

/// How the master goes away.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL: it is gone, the sentinels fail it over after `down-after-milliseconds`.
    Kill,
    /// `SENTINEL FAILOVER`: it stays up and is demoted to a replica of the promoted one,
    /// so connections that reconnect to it meet `READONLY`.
    Demote,
}

/// Runs a worker and a producer through the sentinels of a fresh setup with `replicas`
/// replicas and `wait_replicas = wait`, applies `fault` to the master after 3,000
/// acknowledged enqueues, keeps enqueueing until 3,000 more are acknowledged after the
/// promotion, and checks every acknowledged enqueue on the new master.
async fn through_a_failover(fault: Fault, replicas: usize, wait: Option<u32>) {
    let mut s = Sentinel::start("tsmaster", replicas);
    let old = s.nodes[0].port;
    let q = "failover";
    // Handlers' own writes (builtin.record's HINCRBY) fail during the failover too and
    // are retried like any other failure: enough attempts to outlast it.
    let addr = format!("127.0.0.1:{}", common::free_port());
    let toml = sentinel_worker_toml(&s, q, wait, "max_attempts = 50")
        .replace("listen = \"\"", &format!("listen = \"{addr}\""));
    let mut worker = WorkerProc::spawn(&toml);
    let ready = || common::http_get(&addr, "/ready").map(|(status, _)| status);
    poll("the worker is ready", Duration::from_secs(30), || {
        let r = ready();
        async move { (r == Some(200)).then_some(()) }
    })
    .await;
    let p = Producer::connect(&producer_cfg(&s, wait)).await.unwrap();

    let mut acked: Vec<String> = Vec::new();
    // When each acknowledgement came: (instant, acked.len() after it).
    let mut acked_at: Vec<(Instant, usize)> = Vec::new();
    let mut refused = 0usize;
    let mut not_replicated = 0usize;
    let mut faulted: Option<(Instant, usize)> = None;
    let mut promoted: Option<(Instant, usize, u16)> = None;
    let mut first_ok_after_promotion: Option<Instant> = None;
    // /ready answers seen between the fault and the promotion.
    let mut ready_during: Vec<Option<u16>> = Vec::new();
    let mut last_check = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "{fault:?}: the producer did not get through the failover: {} acknowledged, {refused} batches refused, fault {:?} ago, promotion {:?} ago",
            acked.len(),
            faulted.map(|k| k.0.elapsed()),
            promoted.map(|p| p.0.elapsed())
        );
        let batch: Vec<_> = (0..BATCH).map(|_| record(q, "exec")).collect();
        match p.enqueue_batch(batch).await {
            Ok(r) => {
                acked.extend(r.into_iter().map(|e| e.task_id));
                acked_at.push((Instant::now(), acked.len()));
                if promoted.is_some() && first_ok_after_promotion.is_none() {
                    first_ok_after_promotion = Some(Instant::now());
                }
                // Paced, so the worker has a backlog in flight when the master goes.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(e) => {
                refused += 1;
                if matches!(e, taskstream::Error::NotReplicated { .. }) {
                    not_replicated += 1;
                }
                // What a caller does with a refused enqueue: back off, try again.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if faulted.is_none() && acked.len() >= 3_000 {
            match fault {
                Fault::Kill => s.nodes[0].kill(),
                Fault::Demote => {
                    let ok: Option<String> =
                        s.sentinels[0].query(&["SENTINEL", "FAILOVER", &s.name]);
                    assert_eq!(ok.as_deref(), Some("OK"), "SENTINEL FAILOVER");
                }
            }
            faulted = Some((Instant::now(), acked.len()));
        }
        if faulted.is_some()
            && promoted.is_none()
            && last_check.elapsed() > Duration::from_millis(100)
        {
            last_check = Instant::now();
            ready_during.push(ready());
            if let Some(port) = s.promoted(old) {
                promoted = Some((Instant::now(), acked.len(), port));
            }
        }
        if let Some((_, at, _)) = promoted {
            if acked.len() >= at + 3_000 {
                break;
            }
        }
    }
    let (faulted_at, acked_before_fault) = faulted.unwrap();
    let (promoted_at, _, new) = promoted.unwrap();
    let (now, ex) = drained(&s, q, "exec", Duration::from_secs(60)).await;
    let lost: Vec<&String> = acked.iter().filter(|id| !ex.contains_key(*id)).collect();
    let twice = ex.values().filter(|n| **n > 1).count();
    // When the last lost enqueue was acknowledged, relative to the fault.
    let last_lost = acked
        .iter()
        .rposition(|id| !ex.contains_key(id))
        .and_then(|i| acked_at.iter().find(|(_, n)| *n > i))
        .map(|(t, _)| t.saturating_duration_since(faulted_at));
    eprintln!(
        "sentinel {fault:?}, {replicas} replica(s), wait_replicas = {wait:?}: {} enqueues acknowledged ({acked_before_fault} before the fault), \
         {refused} batches refused ({not_replicated} not replicated); promotion seen {:?} after the fault, \
         the producer's first success {:?} after it; {} acknowledged enqueues lost, the last one acknowledged {last_lost:?} \
         after the fault; {twice} tasks ran twice",
        acked.len(),
        promoted_at - faulted_at,
        first_ok_after_promotion.map(|t| t - promoted_at),
        lost.len()
    );
    if wait.is_some() {
        // On failure, say which masters the worker followed: CI saw 1,279 lost once (not
        // reproduced in 13 runs since, loaded or not); a second failover, or a promoted
        // replica that lacked what the other had acknowledged, would show here.
        assert!(
            lost.is_empty(),
            "{fault:?}: acknowledged enqueues lost with wait_replicas: {} (promoted {new}, drained on {now}); the worker's failover lines:\n{}",
            lost.len(),
            worker
                .log_text()
                .lines()
                .filter(|l| l.contains("failover"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // What following must guarantee, with or without wait_replicas. A killed master
    // acknowledges nothing after the kill, so every enqueue acknowledged after it ran. A
    // demoted master keeps acknowledging until the sentinels announce the failover (those
    // writes are lost without wait_replicas: see above); the processes follow the
    // announcement within milliseconds (the worker's lag is printed), so everything
    // acknowledged later than FOLLOW_WITHIN after every sentinel named the new master ran.
    let must_have_run = match fault {
        Fault::Kill => acked_before_fault,
        Fault::Demote => acked_at
            .iter()
            .find(|(t, _)| *t > promoted_at + FOLLOW_WITHIN)
            .map_or(acked.len(), |(_, n)| *n - BATCH),
    };
    let missing = acked[must_have_run..]
        .iter()
        .filter(|id| !ex.contains_key(*id))
        .count();
    assert_eq!(
        missing,
        0,
        "{fault:?}: enqueues acknowledged after the {} were lost",
        match fault {
            Fault::Kill => "kill",
            Fault::Demote => "announcement",
        }
    );
    let mut conn = s.node(now).sync_conn();
    let dlq: u64 = redis::cmd("XLEN")
        .arg(format!("ts:{{{q}}}:dlq"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(dlq, 0, "{fault:?}: nothing dead-lettered");
    assert!(
        worker.alive(),
        "{fault:?}: the worker survives the failover"
    );
    // A killed master leaves no master for about two seconds: /ready says so meanwhile,
    // and is 200 again once the worker runs on the promoted replica.
    if matches!(fault, Fault::Kill) {
        assert!(
            ready_during.contains(&Some(503)),
            "/ready during the failover: {ready_during:?}"
        );
    }
    poll("the worker ready again", Duration::from_secs(30), || {
        let r = ready();
        async move { (r == Some(200)).then_some(()) }
    })
    .await;
    let log = worker.log_text();
    let at = |what: &str| {
        log.lines()
            .find(|l| l.contains(what))
            .and_then(|l| seconds_of_day(l.split_whitespace().next()?))
    };
    if let (Some(a), Some(f)) = (
        at("a sentinel announces a failover"),
        at("following a failover"),
    ) {
        eprintln!(
            "sentinel {fault:?}: the worker followed {:.1} ms after the first announcement it received",
            (f - a) * 1000.0
        );
    }
    assert!(
        log.contains("following a failover to the new redis master")
            && log.contains(&format!("master=127.0.0.1:{new} was=127.0.0.1:{old}")),
        "{fault:?}: the worker says it followed the failover from {old} to {new}; log:\n{log}"
    );
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}

#[tokio::test]
async fn a_killed_master_is_followed_and_wait_replicas_loses_no_acknowledged_enqueue() {
    let _g = common::heavy().await;
    through_a_failover(Fault::Kill, 2, Some(1)).await;
}

#[tokio::test]
async fn a_demoted_master_is_left_and_wait_replicas_loses_no_acknowledged_enqueue() {
    let _g = common::heavy().await;
    through_a_failover(Fault::Demote, 1, Some(1)).await;
}

#[tokio::test]
async fn a_demoted_master_without_wait_replicas_loses_the_window_and_it_is_counted() {
    let _g = common::heavy().await;
    through_a_failover(Fault::Demote, 1, None).await;
}

#[tokio::test]
async fn sentinel_settings_come_from_the_file_or_the_environment() {
    let _g = common::heavy().await;
    let s = Sentinel::start("envmaster", 1);
    let dir = tempfile::tempdir().unwrap();
    // The file form passes `config check`; combined with redis.url it is refused.
    let file = write_file(
        dir.path(),
        "s.toml",
        &format!("[redis]\n{}\n", s.redis_toml()),
    );
    let (code, out, err) = run_cli(&["config", "check", file.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let both = write_file(
        dir.path(),
        "both.toml",
        &format!(
            "[redis]\nurl = \"redis://127.0.0.1:1\"\n{}\n",
            s.redis_toml()
        ),
    );
    let (code, _, err) = run_cli(&["config", "check", both.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("redis.sentinels") && err.contains("not both"),
        "{err}"
    );

    // The environment form, with a dead sentinel listed first: the others answer.
    let dead = common::free_port();
    let mut sentinels = vec![format!("redis://127.0.0.1:{dead}")];
    sentinels.extend(s.urls());
    let sentinels = sentinels.join(",");
    let q = "envq";
    let toml = worker_toml("X", q, "", "").replace("url = \"X\"\n", "");
    let mut worker = WorkerProc::spawn_env(
        &toml,
        &[
            ("TASKSTREAM_REDIS_SENTINELS", sentinels.as_str()),
            ("TASKSTREAM_REDIS_SENTINEL_MASTER", "envmaster"),
        ],
    );
    let mut cfg = Config::default();
    cfg.apply_env(|k| match k {
        "TASKSTREAM_REDIS_SENTINELS" => Some(sentinels.clone()),
        "TASKSTREAM_REDIS_SENTINEL_MASTER" => Some("envmaster".into()),
        _ => None,
    })
    .unwrap();
    cfg.validate("environment").unwrap();
    let p = Producer::connect(&cfg).await.unwrap();
    let ids: Vec<String> = p
        .enqueue_batch((0..200).map(|_| record(q, "envexec")).collect())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.task_id)
        .collect();
    let (_, ex) = drained(&s, q, "envexec", Duration::from_secs(30)).await;
    assert!(
        ids.iter().all(|id| ex.contains_key(id)),
        "every task ran on the master"
    );
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));

    // A master name the sentinels do not monitor: the worker keeps retrying and says why.
    let mut wrong = WorkerProc::spawn_env(
        &toml,
        &[
            ("TASKSTREAM_REDIS_SENTINELS", sentinels.as_str()),
            ("TASKSTREAM_REDIS_SENTINEL_MASTER", "nosuchmaster"),
        ],
    );
    poll(
        "the worker names the unknown master",
        Duration::from_secs(20),
        || {
            let log = wrong.log_text();
            async move {
                log.contains("monitors no master named \"nosuchmaster\"")
                    .then_some(())
            }
        },
    )
    .await;
    assert!(wrong.alive(), "it retries instead of exiting");
    wrong.kill9();
}
