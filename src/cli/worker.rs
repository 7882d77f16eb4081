//! `taskstream worker`: consume the configured queues until SIGINT/SIGTERM (or
//! `--run-for`), with the collector and, with `worker.orchestrator`, a saga orchestrator
//! in the same process.

use std::time::Duration;

use crate::config::Config;

use super::parse::parse_duration;
use super::process::{registry, shutdown_token, start_http};

/// `worker` and `orchestrator` options.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Exit after this long (for tests and batch jobs); default: run until signalled.
    #[arg(long, value_parser = parse_duration)]
    pub(crate) run_for: Option<Duration>,
}

pub(crate) async fn run(mut cfg: Config, a: Args) -> anyhow::Result<()> {
    if cfg.queues.is_empty() {
        cfg.queues.push(crate::config::QueueConfig {
            name: "default".into(),
            ..Default::default()
        });
    }
    let shutdown = shutdown_token(a.run_for);
    start_http(&cfg, &shutdown).await?;
    let conn = crate::rdb::connect(
        &cfg.redis,
        &shutdown,
        crate::rdb::ClientName::process(crate::rdb::Role::Cmd),
    )
    .await?;
    let reg = registry(&cfg, conn.clone())?;
    if reg.is_empty() {
        tracing::warn!("no handlers registered: every task will be dead-lettered as unknown type (set worker.builtin_handlers or http_handlers)");
    }
    let queues: Vec<String> = cfg.queues.iter().map(|q| q.name.clone()).collect();
    let collect_stop = shutdown.child_token();
    tokio::spawn(crate::collector::run(
        conn.clone(),
        queues,
        Duration::from_millis(cfg.worker.collect_interval_ms),
        cfg.worker.heartbeat_lapse_ms,
        collect_stop,
    ));
    let orchestrator = if cfg.worker.orchestrator {
        let defs = crate::saga::configured(&cfg)?;
        let o = crate::saga::Orchestrator::new(&cfg, defs);
        Some(tokio::spawn(o.run(shutdown.clone())))
    } else {
        None
    };
    crate::worker::Worker::new(cfg, reg).run(shutdown).await?;
    if let Some(o) = orchestrator {
        o.await??;
    }
    Ok(())
}
