//! The `taskstream` binary: worker, producer CLI, stats, dead-letter tools, demo.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use tokio_util::sync::CancellationToken;

use taskstream::cli::{
    Cli, Command, ConfigAction, DlqAction, EnqueueArgs, QueueAction, SagaAction, StatsArgs,
    TaskAction,
};
use taskstream::config::{Config, LogFormat};
use taskstream::producer::{NewTask, Producer};
use taskstream::{rdb, Registry};

mod demo;

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut cfg = match &cli.config {
        Some(p) => Config::load(p).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?,
        None => Config::from_env().map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?,
    };
    if let Some(u) = &cli.redis_url {
        cfg.redis.url = u.clone();
    }
    Ok(cfg)
}

fn init_logging(cfg: &Config) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cfg.log.level.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match cfg.log.format {
        LogFormat::Json => b.json().flatten_event(true).try_init(),
        LogFormat::Text => b.try_init(),
    };
}

/// First SIGINT/SIGTERM cancels `token` (graceful); a second one exits at once.
fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot install SIGTERM handler");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("signal received: shutting down gracefully (send it again to exit at once)");
        token.cancel();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::warn!(
            "second signal: exiting now; running tasks stay pending and will be recovered"
        );
        std::process::exit(130);
    });
}

/// The token a long-running command stops on: SIGINT/SIGTERM, or `--run-for` elapsing.
fn shutdown_token(run_for: Option<Duration>) -> CancellationToken {
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    if let Some(d) = run_for {
        let t = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            t.cancel();
        });
    }
    shutdown
}

/// The handlers the binary serves: built-ins (when enabled) and configured HTTP handlers.
pub(crate) fn registry(
    cfg: &Config,
    conn: redis::aio::ConnectionManager,
) -> anyhow::Result<Registry> {
    let mut reg = Registry::new();
    if cfg.worker.builtin_handlers {
        taskstream::builtin::register(&mut reg, conn.clone());
        taskstream::saga::demo_handlers::register(&mut reg, conn);
    }
    if !cfg.http_handlers.is_empty() {
        let client = taskstream::http_handler::client();
        for h in &cfg.http_handlers {
            // The worker enforces each task's own time limit; the request limit defaults to
            // the longest queue timeout so it never cuts a task shorter than its queue allows.
            let default_timeout = Duration::from_millis(
                cfg.queues
                    .iter()
                    .map(|q| q.timeout_ms)
                    .max()
                    .unwrap_or(30_000),
            );
            let handler =
                taskstream::http_handler::HttpHandler::new(h, default_timeout, client.clone())
                    .with_context(|| format!("http handler for task type {:?}", h.task_type))?;
            reg.register(h.task_type.clone(), handler);
        }
    }
    Ok(reg)
}

async fn start_http(cfg: &Config, stop: &CancellationToken) -> anyhow::Result<()> {
    if cfg.http.listen.is_empty() {
        return Ok(());
    }
    let addr: SocketAddr = cfg.http.listen.parse().context("http.listen")?;
    let handle = taskstream::metrics::install();
    taskstream::http::serve_with(addr, handle, stop.clone(), &cfg.http)
        .await
        .with_context(|| {
            format!("cannot listen on {addr} (http.listen); set another address or \"\" to disable")
        })?;
    Ok(())
}

async fn cmd_worker(mut cfg: Config, run_for: Option<Duration>) -> anyhow::Result<()> {
    if cfg.queues.is_empty() {
        cfg.queues.push(taskstream::config::QueueConfig {
            name: "default".into(),
            ..Default::default()
        });
    }
    let shutdown = shutdown_token(run_for);
    start_http(&cfg, &shutdown).await?;
    let conn = rdb::connect(
        &cfg.redis,
        &shutdown,
        rdb::ClientName::process(rdb::Role::Cmd),
    )
    .await?;
    let reg = registry(&cfg, conn.clone())?;
    if reg.is_empty() {
        tracing::warn!("no handlers registered: every task will be dead-lettered as unknown type (set worker.builtin_handlers or http_handlers)");
    }
    let queues: Vec<String> = cfg.queues.iter().map(|q| q.name.clone()).collect();
    let collect_stop = shutdown.child_token();
    tokio::spawn(taskstream::collector::run(
        conn.clone(),
        queues,
        Duration::from_millis(cfg.worker.collect_interval_ms),
        cfg.worker.heartbeat_lapse_ms,
        collect_stop,
    ));
    let orchestrator = if cfg.worker.orchestrator {
        let defs = taskstream::saga::configured(&cfg)?;
        let o = taskstream::saga::Orchestrator::new(&cfg, defs);
        Some(tokio::spawn(o.run(shutdown.clone())))
    } else {
        None
    };
    taskstream::worker::Worker::new(cfg, reg)
        .run(shutdown)
        .await?;
    if let Some(o) = orchestrator {
        o.await??;
    }
    Ok(())
}

async fn cmd_orchestrator(cfg: Config, run_for: Option<Duration>) -> anyhow::Result<()> {
    let shutdown = shutdown_token(run_for);
    start_http(&cfg, &shutdown).await?;
    let defs = taskstream::saga::configured(&cfg)?;
    if defs.is_empty() {
        tracing::warn!("no saga definitions: add [[sagas]] tables (or worker.builtin_handlers for the demo saga)");
    }
    taskstream::saga::Orchestrator::new(&cfg, defs)
        .run(shutdown)
        .await?;
    Ok(())
}

async fn cmd_saga(cfg: Config, action: SagaAction) -> anyhow::Result<()> {
    use taskstream::saga::ops;
    let mut conn = rdb::connect(
        &cfg.redis,
        &CancellationToken::new(),
        rdb::ClientName::process(rdb::Role::Cli),
    )
    .await?;
    let defs = taskstream::saga::configured(&cfg)?;
    match action {
        SagaAction::Start { name, input, json } => {
            let input: serde_json::Value =
                serde_json::from_str(&input).context("--input must be JSON")?;
            let id = ops::start(&mut conn, &defs, &name, input).await?;
            if json {
                println!("{}", serde_json::json!({"saga_id": id}));
            } else {
                println!("{id}");
            }
        }
        SagaAction::Show { id, json } => {
            let v = ops::show(&mut conn, &id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", v.render());
            }
        }
        SagaAction::List { state, limit, json } => {
            let v = ops::list(&mut conn, state.as_deref(), limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!(
                    "{}",
                    taskstream::saga::view::render_list(&v, taskstream::task::now_ms())
                );
            }
        }
        SagaAction::Abort { id, reason } => {
            let state = ops::abort(&mut conn, &defs, &id, &reason).await?;
            println!("saga {id}: {state}");
        }
    }
    Ok(())
}

async fn cmd_enqueue(cfg: Config, a: EnqueueArgs) -> anyhow::Result<()> {
    let p = Producer::connect(&cfg).await?;
    let mut tasks = Vec::with_capacity(a.count);
    for _ in 0..a.count.max(1) {
        let mut t = NewTask::raw(a.queue.clone(), a.task_type.clone(), a.payload.clone());
        t.express = a.express;
        t.delay = a.delay;
        t.max_attempts = a.max_attempts;
        t.timeout = a.timeout;
        t.idempotency_key = a.idempotency_key.clone();
        tasks.push(t);
    }
    let mut out = Vec::new();
    for chunk in tasks.chunks(1000) {
        out.extend(p.enqueue_batch(chunk.to_vec()).await?);
    }
    if a.json {
        let v: Vec<_> = out
            .iter()
            .map(|e| serde_json::json!({"task_id": e.task_id, "entry_id": e.entry_id, "duplicate": e.duplicate, "scheduled": e.scheduled}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&if v.len() == 1 {
                v[0].clone()
            } else {
                serde_json::Value::Array(v)
            })?
        );
    } else if out.len() == 1 {
        let e = &out[0];
        let what = if e.duplicate {
            "duplicate of"
        } else if e.scheduled {
            "scheduled"
        } else {
            "enqueued"
        };
        println!("{what} {}", e.task_id);
    } else {
        let dups = out.iter().filter(|e| e.duplicate).count();
        println!("enqueued {} tasks ({dups} duplicates)", out.len() - dups);
    }
    Ok(())
}

async fn cmd_stats(cfg: Config, a: StatsArgs) -> anyhow::Result<()> {
    let never = CancellationToken::new();
    let mut conn = tokio::time::timeout(
        Duration::from_secs(10),
        rdb::connect(&cfg.redis, &never, rdb::ClientName::process(rdb::Role::Cli)),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "redis at {} does not answer",
            taskstream::config::redact_url(&cfg.redis.url)
        )
    })??;
    let configured: Vec<String> = cfg.queues.iter().map(|q| q.name.clone()).collect();
    let mut prev: Option<(std::time::Instant, Vec<(String, u64)>)> = None;
    loop {
        let names = match &a.queue {
            Some(q) => vec![q.clone()],
            None => taskstream::stats::queue_names(&mut conn, &configured).await?,
        };
        let mut all = Vec::new();
        for n in &names {
            all.push(
                taskstream::stats::queue_stats(&mut conn, n, cfg.worker.heartbeat_lapse_ms).await?,
            );
        }
        let done = taskstream::stats::completed_counts(&mut conn, &names).await?;
        let rates: Option<Vec<f64>> = prev.as_ref().map(|(t, p)| {
            let dt = t.elapsed().as_secs_f64().max(0.001);
            done.iter()
                .map(|(q, n)| {
                    let before = p
                        .iter()
                        .find(|(pq, _)| pq == q)
                        .map(|(_, v)| *v)
                        .unwrap_or(*n);
                    n.saturating_sub(before) as f64 / dt
                })
                .collect()
        });
        if a.json {
            println!("{}", serde_json::to_string_pretty(&all)?);
        } else {
            if a.watch {
                print!("\x1b[2J\x1b[H");
                println!(
                    "taskstream stats — {} — every {:?} (Ctrl-C to quit)\n",
                    taskstream::config::redact_url(&cfg.redis.url),
                    a.interval
                );
            }
            print!(
                "{}",
                taskstream::stats::render_table(&all, rates.as_deref())
            );
        }
        if !a.watch {
            return Ok(());
        }
        prev = Some((std::time::Instant::now(), done));
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(a.interval) => {}
        }
    }
}

async fn cmd_dlq(cfg: Config, action: DlqAction) -> anyhow::Result<()> {
    let never = CancellationToken::new();
    let mut conn =
        rdb::connect(&cfg.redis, &never, rdb::ClientName::process(rdb::Role::Cli)).await?;
    match action {
        DlqAction::List { queue, count, json } => {
            let items = taskstream::dlq::list(&mut conn, &queue, count).await?;
            if json {
                let v: Vec<_> = items
                    .iter()
                    .map(|d| {
                        let mut m = serde_json::Map::new();
                        m.insert("dlq_id".into(), d.dlq_id.clone().into());
                        for (k, v) in &d.fields {
                            m.insert(k.clone(), v.clone().into());
                        }
                        serde_json::Value::Object(m)
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if items.is_empty() {
                println!("no dead letters in queue {queue:?}");
            } else {
                println!(
                    "{:<20} {:<38} {:<24} {:>8}  REASON",
                    "DLQ_ID", "TASK_ID", "TYPE", "ATTEMPTS"
                );
                for d in &items {
                    println!(
                        "{:<20} {:<38} {:<24} {:>8}  {}",
                        d.dlq_id,
                        d.get("id").unwrap_or("-"),
                        d.get("type").unwrap_or("-"),
                        d.get("dlq_attempts").unwrap_or("-"),
                        d.get("dlq_reason").unwrap_or("-")
                    );
                }
            }
        }
        DlqAction::Requeue {
            queue,
            id,
            all,
            json,
        } => {
            let (ok, skipped) = if all {
                taskstream::dlq::requeue_all(&mut conn, &queue).await?
            } else {
                let id = id.expect("clap requires --id without --all");
                match taskstream::dlq::requeue(&mut conn, &queue, &id).await? {
                    1 => (1, 0),
                    0 => bail!("dead letter {id} not found in queue {queue:?}"),
                    _ => bail!("dead letter {id} holds no task fields (malformed entry); inspect it with `taskstream dlq list --json`"),
                }
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({"requeued": ok, "skipped": skipped})
                );
            } else {
                println!(
                    "requeued {ok} dead letters into {queue:?} ({skipped} skipped: malformed)"
                );
            }
        }
        DlqAction::Purge { queue, yes, json } => {
            if !yes {
                bail!(
                    "purging deletes every dead letter of {queue:?} for good; add --yes to confirm"
                );
            }
            let n = taskstream::dlq::purge(&mut conn, &queue).await?;
            if json {
                println!("{}", serde_json::json!({"purged": n}));
            } else {
                println!("purged {n} dead letters from {queue:?}");
            }
        }
    }
    Ok(())
}

fn cmd_config_check(file: &std::path::Path, json: bool) -> anyhow::Result<bool> {
    match Config::load(file) {
        Ok(cfg) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"file": file.display().to_string(), "valid": true, "queues": cfg.queues.len()})
                );
            } else {
                println!(
                    "{}: ok ({} queues, {} http handlers)",
                    file.display(),
                    cfg.queues.len(),
                    cfg.http_handlers.len()
                );
            }
            Ok(true)
        }
        Err(e) => {
            if json {
                let v: Vec<_> = e
                    .problems
                    .iter()
                    .map(|p| serde_json::json!({"file": p.file, "key": p.key, "reason": p.reason}))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"file": file.display().to_string(), "valid": false, "problems": v})
                );
            } else {
                eprintln!("{e}");
            }
            Ok(false)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Config {
        action: ConfigAction::Check { file, json },
    } = &cli.command
    {
        return Ok(if cmd_config_check(file, *json)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        });
    }
    let mut cfg = load_config(&cli)?;
    if matches!(cli.command, Command::Demo(_)) && std::env::var("RUST_LOG").is_err() {
        // The demo prints its own story; only errors should interrupt it.
        cfg.log.level = "error".into();
    }
    init_logging(&cfg);
    match cli.command {
        Command::Worker(a) => cmd_worker(cfg, a.run_for).await?,
        Command::Orchestrator(a) => cmd_orchestrator(cfg, a.run_for).await?,
        Command::Saga { action } => cmd_saga(cfg, action).await?,
        Command::Enqueue(a) => cmd_enqueue(cfg, a).await?,
        Command::Stats(a) => cmd_stats(cfg, a).await?,
        Command::Dlq { action } => cmd_dlq(cfg, action).await?,
        Command::Demo(a) => demo::run(cfg, a).await?,
        Command::Task {
            action: TaskAction::Cancel { id, queue },
        } => {
            let mut conn = rdb::connect(
                &cfg.redis,
                &CancellationToken::new(),
                rdb::ClientName::process(rdb::Role::Cli),
            )
            .await?;
            taskstream::signals::cancel_task(&mut conn, &queue, &id).await?;
            println!("cancel signal sent for task {id} in queue {queue:?}");
        }
        Command::Queue { action } => {
            let mut conn = rdb::connect(
                &cfg.redis,
                &CancellationToken::new(),
                rdb::ClientName::process(rdb::Role::Cli),
            )
            .await?;
            match action {
                QueueAction::Pause { queue } => {
                    taskstream::signals::pause(&mut conn, &queue).await?;
                    println!("queue {queue:?} paused on every replica (tasks wait in Redis)");
                }
                QueueAction::Resume { queue } => {
                    taskstream::signals::resume(&mut conn, &queue).await?;
                    println!("queue {queue:?} resumed");
                }
            }
        }
        Command::Config { .. } => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
