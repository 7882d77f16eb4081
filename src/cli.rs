//! Command-line interface of the `taskstream` binary (clap definitions only; the commands
//! run in `main.rs`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// taskstream: background tasks on Redis Streams.
#[derive(Debug, Parser)]
#[command(name = "taskstream", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file (TOML). Without it: built-in defaults plus TASKSTREAM_* variables.
    #[arg(long, short = 'c', global = true, env = "TASKSTREAM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Redis URL; overrides the file and TASKSTREAM_REDIS_URL.
    #[arg(long, global = true)]
    pub redis_url: Option<String>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a worker process: consume the configured queues until SIGINT/SIGTERM.
    Worker(WorkerArgs),
    /// Enqueue a task.
    Enqueue(EnqueueArgs),
    /// Show per-queue statistics (length, pending, lag, oldest age, dead letters).
    Stats(StatsArgs),
    /// Manage a queue's dead-letter stream.
    Dlq {
        /// What to do.
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Configuration tools.
    Config {
        /// What to do.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Run a saga orchestrator process (drives sagas; several may run at once).
    Orchestrator(WorkerArgs),
    /// Start, inspect and abort sagas.
    Saga {
        /// What to do.
        #[command(subcommand)]
        action: SagaAction,
    },
    /// Signals to one task.
    Task {
        /// What to do.
        #[command(subcommand)]
        action: TaskAction,
    },
    /// Pause or resume delivery of a queue on every replica.
    Queue {
        /// What to do.
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Run a self-contained showcase on a local Redis (starts a private redis-server if
    /// none answers at the configured URL).
    Demo(DemoArgs),
}

/// `worker` options.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Exit after this long (for tests and batch jobs); default: run until signalled.
    #[arg(long, value_parser = parse_duration)]
    pub run_for: Option<Duration>,
}

/// `enqueue` options.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Queue name.
    #[arg(long, short = 'q', default_value = "default")]
    pub queue: String,
    /// Task type.
    #[arg(long = "type", short = 't')]
    pub task_type: String,
    /// JSON payload.
    #[arg(long, short = 'p', default_value = "{}")]
    pub payload: String,
    /// Use the express lane.
    #[arg(long)]
    pub express: bool,
    /// Run no sooner than this delay (e.g. 30s, 500ms, 5m).
    #[arg(long, value_parser = parse_duration)]
    pub delay: Option<Duration>,
    /// Attempts allowed in all.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Handler time limit (e.g. 10s).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Idempotency key: repeated enqueues with it within the window are answered with the
    /// first task's id.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Enqueue this many copies (pipelined), e.g. for a quick load.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `stats` options.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Only this queue.
    #[arg(long, short = 'q')]
    pub queue: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Refresh in place until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Refresh period with --watch.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub interval: Duration,
}

/// `dlq` actions.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List dead letters, oldest first.
    List {
        /// Queue name.
        #[arg(long, short = 'q')]
        queue: String,
        /// Most entries to show.
        #[arg(long, default_value_t = 50)]
        count: usize,
        /// Print JSON (includes payloads).
        #[arg(long)]
        json: bool,
    },
    /// Move dead letters back into their queue with a fresh attempt count.
    Requeue {
        /// Queue name.
        #[arg(long, short = 'q')]
        queue: String,
        /// The dead-letter entry id to requeue.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        id: Option<String>,
        /// Requeue every dead letter.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete every dead letter of a queue.
    Purge {
        /// Queue name.
        #[arg(long, short = 'q')]
        queue: String,
        /// Confirm: purging cannot be undone.
        #[arg(long)]
        yes: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `saga` actions.
#[derive(Debug, Subcommand)]
pub enum SagaAction {
    /// Start a saga; prints its id.
    Start {
        /// Saga definition name (from `[[sagas]]`, or `demo` with builtin handlers).
        name: String,
        /// Input JSON every step receives.
        #[arg(long, default_value = "{}")]
        input: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a saga: state, steps, timings, attempts, errors, history.
    Show {
        /// Saga id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List sagas, most recently changed first.
    List {
        /// Only this state (pending, running, compensating, completed, rolled_back,
        /// failed, or active).
        #[arg(long)]
        state: Option<String>,
        /// Most sagas to list.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Abort a saga: it stops and compensates its completed steps in reverse order.
    Abort {
        /// Saga id.
        id: String,
        /// Why (recorded in its history).
        #[arg(long, default_value = "aborted by an operator")]
        reason: String,
    },
}

/// `task` actions.
#[derive(Debug, Subcommand)]
pub enum TaskAction {
    /// Cancel a task: skipped if still queued, its handler's cancellation fired if running.
    Cancel {
        /// Task id (as printed by `enqueue`).
        id: String,
        /// Queue of the task.
        #[arg(long, short = 'q', default_value = "default")]
        queue: String,
    },
}

/// `queue` actions.
#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// Stop delivering tasks of the queue (tasks wait in Redis; nothing is lost).
    Pause {
        /// Queue name.
        queue: String,
    },
    /// Deliver tasks of the queue again.
    Resume {
        /// Queue name.
        queue: String,
    },
}

/// `config` actions.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate a configuration file; prints every problem as `file: key: reason`.
    Check {
        /// The file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `demo` options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Bulk tasks to enqueue.
    #[arg(long, default_value_t = 3000)]
    pub tasks: usize,
}

/// Parses `500ms`, `30s`, `5m`, `2h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 500ms, 30s, 5m, 2h)"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1_000.0,
        "m" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !ms.is_finite() || ms < 0.0 {
        return Err(format!("{s:?} is not a valid duration"));
    }
    Ok(Duration::from_millis(ms as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3 parsecs").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
