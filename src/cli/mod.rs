//! The `taskstream` binary's command line, in the library behind the `cli` feature so
//! every command is one file and `src/main.rs` is one call to [`main`].
//!
//! This module only parses (clap), loads the configuration, sets up logging and
//! dispatches; each command lives in its own file and, where it talks to Redis, is a thin
//! layer over [`crate::inspect::Inspector`] (or the saga ops), so a REST API can offer
//! the same operations. Output goes through [`output`] (broken pipes end quietly,
//! producer-written text is escaped).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat};

mod alerts;
mod alloc;
pub use alloc::{return_large_blocks_promptly, Allocator};
mod config_check;
mod demo;
mod dlq;
mod enqueue;
#[cfg(feature = "http")]
mod mcp;
mod orchestrator;
mod output;
mod parse;
mod process;
mod queue;
mod saga;
mod schedule;
#[cfg(feature = "http")]
mod serve;
mod stats;
mod task;
mod worker;

/// taskstream: background tasks on Redis Streams.
#[derive(Debug, Parser)]
#[command(name = "taskstream", version, about, propagate_version = true)]
struct Cli {
    /// Configuration file (TOML). Without it: built-in defaults plus TASKSTREAM_* variables.
    #[arg(long, short = 'c', global = true, env = "TASKSTREAM_CONFIG")]
    config: Option<PathBuf>,
    /// Redis URL; overrides the file and TASKSTREAM_REDIS_URL.
    #[arg(long, global = true)]
    redis_url: Option<String>,
    /// The command.
    #[command(subcommand)]
    command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a worker process: consume the configured queues until SIGINT/SIGTERM.
    Worker(worker::Args),
    /// Enqueue a task.
    Enqueue(enqueue::Args),
    /// Show per-queue statistics (length, pending, lag, oldest age, dead letters).
    Stats(stats::Args),
    /// Manage a queue's dead-letter stream.
    Dlq {
        /// What to do.
        #[command(subcommand)]
        action: dlq::Action,
    },
    /// Configuration tools.
    Config {
        /// What to do.
        #[command(subcommand)]
        action: config_check::Action,
    },
    /// Run a saga orchestrator process (drives sagas; several may run at once).
    Orchestrator(worker::Args),
    /// Start, inspect and abort sagas.
    Saga {
        /// What to do.
        #[command(subcommand)]
        action: saga::Action,
    },
    /// Signals to one task.
    Task {
        /// What to do.
        #[command(subcommand)]
        action: task::Action,
    },
    /// Periodic tasks: list, show, set, remove, pause, resume, trigger.
    Schedule {
        /// What to do.
        #[command(subcommand)]
        action: schedule::Action,
    },
    /// Pause or resume delivery of a queue on every replica.
    Queue {
        /// What to do.
        #[command(subcommand)]
        action: queue::Action,
    },
    /// Serve the control plane: the REST API under /api/v1 on api.listen (default
    /// 127.0.0.1:8080), until SIGINT/SIGTERM.
    #[cfg(feature = "http")]
    Serve(serve::Args),
    /// Serve MCP (Model Context Protocol) on stdin/stdout for an AI assistant: queue
    /// stats, task lookup, dead letters, sagas; read-only unless --admin.
    #[cfg(feature = "http")]
    Mcp(mcp::Args),
    /// Print the Prometheus alert rules with every runbook_url set to
    /// <--runbook-base-url>/<AlertName> (needs no configuration and no Redis).
    Alerts(alerts::Args),
    /// Run a self-contained showcase on a local Redis (starts a private redis-server if
    /// none answers at the configured URL).
    Demo(demo::Args),
}

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

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Config { action } = &cli.command {
        return config_check::run(action);
    }
    if let Command::Alerts(a) = &cli.command {
        return alerts::run(a);
    }
    let mut cfg = load_config(&cli)?;
    if matches!(cli.command, Command::Demo(_)) && std::env::var("RUST_LOG").is_err() {
        // The demo prints its own story; only errors should interrupt it.
        cfg.log.level = "error".into();
    }
    init_logging(&cfg);
    // Span export ([tracing] otlp_endpoint): started before the command, flushed after
    // it, whatever it returned, so the spans of a failed enqueue leave too.
    let exporting = crate::telemetry::init(&cfg.tracing)
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let r = dispatch(cli.command, cfg).await;
    if let Some(e) = exporting {
        e.shutdown().await;
    }
    r
}

async fn dispatch(command: Command, cfg: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Worker(a) => worker::run(cfg, a).await?,
        Command::Orchestrator(a) => orchestrator::run(cfg, a).await?,
        Command::Saga { action } => saga::run(cfg, action).await?,
        Command::Enqueue(a) => enqueue::run(cfg, a).await?,
        Command::Stats(a) => stats::run(cfg, a).await?,
        Command::Dlq { action } => dlq::run(cfg, action).await?,
        Command::Demo(a) => demo::run(cfg, a).await?,
        Command::Task { action } => task::run(cfg, action).await?,
        Command::Queue { action } => queue::run(cfg, action).await?,
        Command::Schedule { action } => schedule::run(cfg, action).await?,
        #[cfg(feature = "http")]
        Command::Serve(a) => serve::run(cfg, a).await?,
        #[cfg(feature = "http")]
        Command::Mcp(a) => mcp::run(cfg, a).await?,
        Command::Config { .. } | Command::Alerts(_) => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The `taskstream` binary: parses the command line and runs the command. Errors are
/// printed as `error: …` with exit code 1; a closed stdout (`… | head`) ends quietly.
pub fn main() -> ExitCode {
    alloc::return_large_blocks_promptly();
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
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
