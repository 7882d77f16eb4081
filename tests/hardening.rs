//! Hardening of issue 10 outside the worker core, against real Redis and real sockets:
//! `config check` refuses what the worker refuses (9, 15), TLS with a private CA and
//! mutual TLS (8), the HTTP server's header-read timeout and connection cap (13), named
//! connections (14) and least-privilege ACL users (7).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::tls::{certificates, require, tls_lines};
use common::{free_port, poll, run_cli, worker_toml, write_file, RedisServer, WorkerProc};
use taskstream::config::Config;
use taskstream::producer::{NewTask, Producer};

fn done(conn: &mut redis::Connection, q: &str) -> u64 {
    redis::cmd("HGET")
        .arg(format!("ts:{{{q}}}:counters"))
        .arg("done")
        .query::<Option<u64>>(conn)
        .unwrap()
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// 9 / 15: config check refuses what the worker refuses
// ---------------------------------------------------------------------------------------

#[test]
fn config_check_refuses_http_handler_headers_the_worker_would_refuse() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    for (header, reason) in [
        (
            r#""X-Taskstream-Attempt" = "9""#,
            "set by the http handler protocol",
        ),
        (
            r#""X-Tenant" = "a\r\nX-Evil: 1""#,
            "not a valid header value",
        ),
    ] {
        let toml = format!(
            "{}\n[[http_handlers]]\ntype = \"hook\"\nurl = \"http://127.0.0.1:1/hook\"\n[http_handlers.headers]\n{header}\n",
            worker_toml(&redis.url(), "cc", "", "")
        );
        let file = write_file(dir.path(), "bad.toml", &toml);
        let f = file.to_str().unwrap();
        let (code, out, err) = run_cli(&["config", "check", f], &[]);
        assert_ne!(
            code, 0,
            "config check passed a header the worker refuses: {out}{err}"
        );
        let all = format!("{out}{err}");
        assert!(
            all.contains(&format!("{f}: http_handlers[0].headers.")) && all.contains(reason),
            "names file, key and reason: {all}"
        );
        // The worker refuses it the same way: at load, naming the file and key.
        let (code, out, err) = run_cli(&["worker", "--config", f], &[]);
        assert_ne!(code, 0, "{out}{err}");
        assert!(
            err.contains(&format!("{f}: http_handlers[0].headers.")),
            "the worker names file and key: {err}"
        );
    }
}

#[tokio::test]
async fn a_small_queue_without_express_concurrency_is_valid_and_runs() {
    let redis = RedisServer::start();
    let q = "small";
    // concurrency 4 and no express_concurrency: the old fixed default (8) made it invalid.
    let toml = worker_toml(&redis.url(), q, "", "").replace(
        "concurrency = 32\nexpress_concurrency = 4\n",
        "concurrency = 4\n",
    );
    assert!(!toml.contains("express_concurrency"), "{toml}");
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "small.toml", &toml);
    let (code, out, err) = run_cli(&["config", "check", file.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let mut w = WorkerProc::spawn(&toml);
    let mut cfg = Config::default();
    cfg.redis.url = redis.url();
    let p = Producer::connect(&cfg).await.unwrap();
    for i in 0..20 {
        let t = NewTask::new(q, "builtin.noop", &i).unwrap();
        p.enqueue(if i % 2 == 0 { t.express() } else { t })
            .await
            .unwrap();
    }
    let mut conn = redis.sync_conn();
    poll("20 tasks done on 4 slots", Duration::from_secs(30), || {
        let n = done(&mut conn, q);
        async move { (n == 20).then_some(()) }
    })
    .await;
    assert_eq!(
        w.terminate(Duration::from_secs(20)),
        Some(0),
        "{}",
        w.log_text()
    );
}

// ---------------------------------------------------------------------------------------
// 8: TLS with a private CA, mutual TLS
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_client_certificates() {
    if !require("openssl") {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    certificates(d);
    let tls_port = free_port();
    let path = |f: &str| d.join(f).display().to_string();
    // The plain port is for the test's own setup and counting; the worker uses TLS only.
    let redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &path("server.pem"),
        "--tls-key-file",
        &path("server.key"),
        "--tls-ca-cert-file",
        &path("ca.pem"),
        "--tls-auth-clients",
        "yes",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let q = "tls";
    let with_tls_for = |queue: &str, lines: String| {
        worker_toml(&url, queue, "", "").replace("[redis]\n", &format!("[redis]\n{lines}"))
    };
    let with_tls = |lines: String| with_tls_for(q, lines);

    // Mutual TLS with the private CA: tasks flow, produced and consumed over TLS.
    let good = with_tls(tls_lines(d, "ca", Some("client")));
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "tls.toml", &good);
    let (code, out, err) = run_cli(&["config", "check", file.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let mut w = WorkerProc::spawn(&good);
    let cfg = Config::parse("tls.toml", &good).unwrap();
    cfg.validate("tls.toml").unwrap();
    let p = Producer::connect(&cfg).await.unwrap();
    for i in 0..50 {
        p.enqueue(NewTask::new(q, "builtin.noop", &i).unwrap())
            .await
            .unwrap();
    }
    let mut conn = redis.sync_conn();
    poll("50 tasks done over TLS", Duration::from_secs(30), || {
        let n = done(&mut conn, q);
        async move { (n == 50).then_some(()) }
    })
    .await;
    assert_eq!(
        w.terminate(Duration::from_secs(20)),
        Some(0),
        "{}",
        w.log_text()
    );

    // The same worker trusting another CA refuses the server's certificate, clearly.
    let q2 = "tls_refused";
    let wrong = with_tls_for(q2, tls_lines(d, "other-ca", Some("client")));
    let mut w = WorkerProc::spawn(&wrong);
    let log = w
        .wait_for_log(
            "the worker refuses a server certificate from another CA",
            "not signed by redis.tls_ca_file",
        )
        .await;
    assert!(
        log.contains("redis unreachable") && log.to_lowercase().contains("certificate"),
        "the log says what failed: {log}"
    );
    assert!(w.alive(), "it keeps retrying rather than exiting");
    w.kill9();

    // And a client certificate from another CA is refused by the server (mutual TLS).
    let stranger = with_tls_for(q2, tls_lines(d, "ca", Some("stranger")));
    let mut w = WorkerProc::spawn(&stranger);
    w.wait_for_log(
        "the server refuses a client certificate from another CA",
        "redis unreachable, retrying with backoff",
    )
    .await;
    // Nothing of the refused workers reached Redis: their queue has no consumer group.
    let groups: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(format!("ts:{{{q2}}}:stream"))
        .query(&mut conn);
    assert!(groups.is_err(), "no group was created: {groups:?}");
    w.kill9();

    // A CA file that is not PEM is refused by config check, naming the key.
    std::fs::write(d.join("junk.pem"), "not a certificate").unwrap();
    let junk = with_tls(format!("tls_ca_file = \"{}\"\n", path("junk.pem")));
    let file = write_file(dir.path(), "junk.toml", &junk);
    let (code, out, err) = run_cli(&["config", "check", file.to_str().unwrap()], &[]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("redis.tls_ca_file"),
        "{out}{err}"
    );
}

// ---------------------------------------------------------------------------------------
// 13: header-read timeout and connection cap of the HTTP server
// ---------------------------------------------------------------------------------------

/// True once the server closed `s` (EOF or reset); false while it is open.
fn closed(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    let mut reader = s;
    let r = loop {
        match reader.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue, // e.g. a 408 before the close
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    s.set_nonblocking(false).unwrap();
    r
}

const HALF: &[u8] = b"GET /ready HTTP/1.1\r\nHost: x\r\nX-Slow: ";

#[tokio::test]
async fn half_sent_requests_are_closed_and_idle_connections_cannot_starve_ready() {
    let redis = RedisServer::start();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // A long header timeout, so the cap (not the timeout) is what keeps /ready served.
    let toml = worker_toml(&redis.url(), "httpq", "", "").replace(
        "[http]\nlisten = \"\"",
        &format!(
            "[http]\nlisten = \"{addr}\"\nheader_read_timeout_ms = 3000\nmax_connections = 16"
        ),
    );
    let mut w = WorkerProc::spawn(&toml);
    poll("/ready answers 200", Duration::from_secs(30), || {
        let ok = common::http_get(&addr, "/ready").is_some_and(|(s, _)| s == 200);
        async move { ok.then_some(()) }
    })
    .await;

    // A half-sent request and a connection that sends nothing are both closed.
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(HALF).unwrap();
    let silent = TcpStream::connect(&addr).unwrap();
    let opened = Instant::now();
    for (what, s) in [("half-sent request", &half), ("silent connection", &silent)] {
        poll(
            &format!("the server closes a {what}"),
            Duration::from_secs(30),
            || {
                let c = closed(s);
                async move { c.then_some(()) }
            },
        )
        .await;
    }
    eprintln!(
        "half-sent and silent connections closed {:?} after opening",
        opened.elapsed()
    );

    // 500 half-sent requests: only the cap's worth stays open, and /ready is answered.
    let idle: Vec<TcpStream> = (0..500)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(HALF).unwrap();
            s
        })
        .collect();
    let (status, body) = common::http_get(&addr, "/ready").expect("/ready answers");
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let open = idle.iter().filter(|s| !closed(s)).count();
    assert!(
        open <= 16,
        "{open} idle connections still open above the cap of 16"
    );
    // And every one of them is closed in the end.
    poll(
        "all idle connections closed",
        Duration::from_secs(30),
        || {
            let open = idle.iter().filter(|s| !closed(s)).count();
            async move { (open == 0).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        common::http_get(&addr, "/health").map(|r| r.0),
        Some(200),
        "still serving"
    );
    assert_eq!(
        w.terminate(Duration::from_secs(20)),
        Some(0),
        "{}",
        w.log_text()
    );
}

// ---------------------------------------------------------------------------------------
// 14: every connection is named taskstream:<consumer>:<role>
// ---------------------------------------------------------------------------------------

fn client_names(conn: &mut redis::Connection) -> Vec<String> {
    let list: String = redis::cmd("CLIENT").arg("LIST").query(conn).unwrap();
    list.lines()
        .filter_map(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("name="))
                .filter(|n| !n.is_empty())
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_named_by_consumer_and_role_and_keep_their_names() {
    let redis = RedisServer::start();
    let q = "named";
    let mut w = WorkerProc::spawn_named(&worker_toml(&redis.url(), q, "", ""), "nm");
    let consumer = w.consumer();
    let mut cfg = Config::default();
    cfg.redis.url = redis.url();
    let p = Producer::connect(&cfg).await.unwrap();
    p.enqueue(NewTask::new(q, "builtin.noop", &1).unwrap())
        .await
        .unwrap();
    cfg.orchestrator.consumer_name = Some("orch-nm".into());
    let stop = tokio_util::sync::CancellationToken::new();
    let orch = tokio::spawn(taskstream::saga::Orchestrator::new(&cfg, vec![]).run(stop.clone()));
    // This process is the producer: `taskstream:<host>-<pid>:producer`.
    let producer_name = taskstream::rdb::ClientName::process(taskstream::rdb::Role::Producer)
        .as_str()
        .to_string();
    assert!(
        producer_name.starts_with("taskstream:")
            && producer_name.ends_with(&format!("-{}:producer", std::process::id())),
        "{producer_name}"
    );
    let want = [
        format!("taskstream:{consumer}:cmd"),
        format!("taskstream:{consumer}:reader"),
        producer_name.clone(),
        "taskstream:orch-nm:orchestrator".to_string(),
        "taskstream:orch-nm:reader".to_string(),
    ];
    let mut conn = redis.sync_conn();
    let check = |conn: &mut redis::Connection| {
        let names = client_names(conn);
        want.iter().all(|n| names.contains(n)).then_some(names)
    };
    let names = poll(
        "every role's connection named",
        Duration::from_secs(20),
        || {
            let r = check(&mut conn);
            async move { r }
        },
    )
    .await;
    eprintln!("client names: {names:?}");
    // Dropped connections come back under the same names (the manager reconnects).
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut conn)
        .unwrap();
    assert!(killed >= 5, "killed {killed} connections");
    // The producer reconnects on its next command (the first may see the broken pipe).
    poll(
        "the producer enqueues again",
        Duration::from_secs(20),
        || {
            let p = p.clone();
            async move {
                p.enqueue(NewTask::new(q, "builtin.noop", &2).unwrap())
                    .await
                    .ok()
            }
        },
    )
    .await;
    poll(
        "every role's connection named again after CLIENT KILL",
        Duration::from_secs(20),
        || {
            let r = check(&mut conn);
            async move { r }
        },
    )
    .await;
    common::stop_within("the orchestrator", &stop, orch)
        .await
        .unwrap();
    assert_eq!(
        w.terminate(Duration::from_secs(20)),
        Some(0),
        "{}",
        w.log_text()
    );
}

// ---------------------------------------------------------------------------------------
// 19: taskstream-load needs no file of the build machine and leaves no keys behind
// ---------------------------------------------------------------------------------------

#[test]
fn the_load_runner_embeds_its_bound_script_and_cleans_up() {
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_taskstream-load"));
    // No path of the build machine is compiled in as a default.
    let bytes = std::fs::read(&bin).unwrap();
    let needle = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/bench").as_bytes();
    assert!(
        !bytes.windows(needle.len()).any(|w| w == needle),
        "the binary still names a script path of the build machine"
    );
    let redis = RedisServer::start();
    let mut conn = redis.sync_conn();
    // A key of someone else's survives the cleanup.
    let _: () = redis::cmd("SET")
        .arg("ts:theirs")
        .arg(1)
        .query(&mut conn)
        .unwrap();
    let cwd = tempfile::tempdir().unwrap(); // nothing beside it
    let mut child = Command::new(&bin)
        .args([
            "--redis-url",
            &redis.url(),
            "throughput",
            "--tasks",
            "2000",
            "--concurrency",
            "64",
        ])
        .current_dir(cwd.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait_within(&mut child, Duration::from_secs(120))
        .expect("taskstream-load throughput finished within 120 s");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("RESULT throughput_tasks_per_s="), "{out}");
    assert!(out.contains("bound_tasks_per_s="), "{out}");
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert_eq!(keys, ["ts:theirs"], "keys left behind: {keys:?}\n{out}");
}

// ---------------------------------------------------------------------------------------
// 7: least-privilege ACL users, exactly as documented
// ---------------------------------------------------------------------------------------

/// The `ACL SETUSER` lines between the acl markers of `file` (README.md, runbooks/README.md).
fn documented_acl(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    let start = text
        .find("<!-- acl:begin")
        .unwrap_or_else(|| panic!("{file}: no acl block"));
    let end = text[start..].find("<!-- acl:end -->").unwrap() + start;
    text[start..end]
        .lines()
        .filter(|l| l.starts_with("ACL SETUSER "))
        .map(str::to_string)
        .collect()
}

/// ACL LOG entries (username, object) of denied commands/keys.
fn acl_denials(conn: &mut redis::Connection) -> Vec<(String, String, String)> {
    let log: Vec<std::collections::HashMap<String, redis::Value>> =
        redis::cmd("ACL").arg("LOG").arg(100).query(conn).unwrap();
    let s = |m: &std::collections::HashMap<String, redis::Value>, k: &str| {
        m.get(k)
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            .unwrap_or_default()
    };
    log.iter()
        .map(|m| (s(m, "username"), s(m, "reason"), s(m, "object")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_runs_as_its_least_privilege_user() {
    let lines = documented_acl("README.md");
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(
        lines,
        documented_acl("runbooks/README.md"),
        "both copies agree"
    );
    let redis = RedisServer::start();
    let mut admin = redis.sync_conn();
    for l in &lines {
        let args: Vec<&str> = l.split_whitespace().collect();
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        let _: () = c.query(&mut admin).unwrap_or_else(|e| panic!("{l}: {e}"));
    }
    let _: () = redis::cmd("ACL")
        .arg("LOG")
        .arg("RESET")
        .query(&mut admin)
        .unwrap();
    let url = |user: &str, pw: &str| format!("redis://{user}:{pw}@127.0.0.1:{}", redis.port);
    let q = "acl";

    // The worker, as ts-worker (its record handler writes under ts:, inside its keys).
    let mut w = WorkerProc::spawn(&worker_toml(
        &url("ts-worker", "WORKER_PASSWORD"),
        q,
        "",
        "",
    ));
    // The producer, as ts-producer: plain, delayed, express and idempotent enqueues.
    let mut pcfg = Config::default();
    pcfg.redis.url = url("ts-producer", "PRODUCER_PASSWORD");
    let p = Producer::connect(&pcfg).await.unwrap();
    let rec = |i: u32| {
        NewTask::new(
            q,
            "builtin.record",
            &serde_json::json!({"key": "ts:acl:exec", "i": i}),
        )
        .unwrap()
    };
    for i in 0..20 {
        p.enqueue(rec(i)).await.unwrap();
    }
    p.enqueue(rec(20).express()).await.unwrap();
    p.enqueue(rec(21).delay(Duration::from_millis(200)))
        .await
        .unwrap();
    let a = p.enqueue(rec(22).idempotency_key("k-1")).await.unwrap();
    let b = p.enqueue(rec(22).idempotency_key("k-1")).await.unwrap();
    assert_eq!(
        a.task_id, b.task_id,
        "idempotent enqueue as the producer user"
    );
    p.enqueue(
        NewTask::new(
            q,
            "builtin.record",
            &serde_json::json!({"key": "ts:acl:exec", "permanent": true}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    poll(
        "the worker user ran every task",
        Duration::from_secs(30),
        || {
            let ex = common::executions(&mut admin, "ts:acl:exec");
            let dead: u64 = redis::cmd("XLEN")
                .arg("ts:{acl}:dlq")
                .query(&mut admin)
                .unwrap();
            async move { (ex.len() == 24 && dead == 1).then_some(()) }
        },
    )
    .await;

    // A saga, orchestrated as ts-orchestrator; its step runs on the worker.
    let mut ocfg = Config::default();
    ocfg.redis.url = url("ts-orchestrator", "ORCHESTRATOR_PASSWORD");
    ocfg.orchestrator.consumer_name = Some("orch-acl".into());
    let defs = vec![taskstream::saga::definition::SagaDef::builder("acl")
        .step(taskstream::saga::definition::StepDef::new("only", "builtin.noop").queue(q))
        .build()
        .unwrap()];
    let stop = tokio_util::sync::CancellationToken::new();
    let orch =
        tokio::spawn(taskstream::saga::Orchestrator::new(&ocfg, defs.clone()).run(stop.clone()));
    let mut oconn = taskstream::rdb::connect(
        &ocfg.redis,
        &stop,
        taskstream::rdb::ClientName::process(taskstream::rdb::Role::Cli),
    )
    .await
    .unwrap();
    let id = taskstream::saga::ops::start(&mut oconn, &defs, "acl", serde_json::json!({}))
        .await
        .unwrap();
    poll("the saga completes", Duration::from_secs(30), || {
        let mut c = oconn.clone();
        let id = id.clone();
        async move {
            let v = taskstream::saga::ops::show(&mut c, &id).await.ok()?;
            (v.status == "completed").then_some(())
        }
    })
    .await;

    // The operator, as ts-operator: reads work, changes are refused.
    let op = url("ts-operator", "OPERATOR_PASSWORD");
    let (code, out, err) = run_cli(&["--redis-url", &op, "stats", "--json"], &[]);
    assert_eq!(code, 0, "stats as the operator: {out}{err}");
    assert!(out.contains("\"acl\""), "{out}");
    let (code, out, err) = run_cli(&["--redis-url", &op, "dlq", "list", "--queue", q], &[]);
    assert_eq!(code, 0, "dlq list as the operator: {out}{err}");
    let (code, out, err) = run_cli(
        &["--redis-url", &op, "dlq", "purge", "--queue", q, "--yes"],
        &[],
    );
    assert_ne!(code, 0, "the operator cannot purge: {out}{err}");
    assert!(
        format!("{out}{err}").to_lowercase().contains("noperm"),
        "{out}{err}"
    );
    let dead: u64 = redis::cmd("XLEN")
        .arg("ts:{acl}:dlq")
        .query(&mut admin)
        .unwrap();
    assert_eq!(dead, 1, "the dead letter is still there");

    // Nothing a role needs was refused along the way (not even a swallowed error)...
    let denied = acl_denials(&mut admin);
    assert!(
        denied.iter().all(|(u, _, _)| u == "ts-operator"),
        "a documented role was refused something it needs: {denied:?}\nworker log:\n{}",
        w.log_text()
    );
    // ...and the producer cannot consume, acknowledge or flush.
    let mut pc = redis::Client::open(url("ts-producer", "PRODUCER_PASSWORD"))
        .unwrap()
        .get_connection()
        .unwrap();
    for (what, cmd) in [
        (
            "XREADGROUP",
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("taskstream")
                .arg("thief")
                .arg("COUNT")
                .arg(1)
                .arg("STREAMS")
                .arg("ts:{acl}:stream")
                .arg(">")
                .clone(),
        ),
        (
            "XACK",
            redis::cmd("XACK")
                .arg("ts:{acl}:stream")
                .arg("taskstream")
                .arg("0-1")
                .clone(),
        ),
        ("FLUSHALL", redis::cmd("FLUSHALL").clone()),
        ("KEYS", redis::cmd("KEYS").arg("*").clone()),
        (
            "XADD outside ts:",
            redis::cmd("XADD")
                .arg("other")
                .arg("*")
                .arg("a")
                .arg(1)
                .clone(),
        ),
    ] {
        let r: redis::RedisResult<redis::Value> = cmd.query(&mut pc);
        let e = r.expect_err(what);
        assert!(
            e.to_string().to_lowercase().contains("noperm"),
            "{what} as the producer: {e}"
        );
    }
    let n: u64 = redis::cmd("DBSIZE").query(&mut admin).unwrap();
    assert!(n > 0, "FLUSHALL was refused");
    common::stop_within("the orchestrator", &stop, orch)
        .await
        .unwrap();
    assert_eq!(
        w.terminate(Duration::from_secs(20)),
        Some(0),
        "{}",
        w.log_text()
    );
}
