//! `taskstream queue pause|resume Q`: stop or restart delivery on every replica.
//!
//! `pause` waits (10 s by default, `--wait`; `--no-wait` not at all) until every live
//! consumer of the queue reports the pause applied — a replica reports it only once
//! nothing more can start on it — and names the consumers that did not. Those exit with
//! status 2: the pause is in force in Redis, but a replica that is stopped or cut off
//! may still be running what it had, and will apply the pause when it reads its signals.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::output::outln;
use super::parse::parse_duration;
use crate::config::Config;
use crate::inspect::Inspector;

/// `queue` actions.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Action {
    /// Stop delivering tasks of the queue (tasks wait in Redis; nothing is lost).
    Pause {
        /// Queue name.
        queue: String,
        /// How long to wait for every live replica to confirm (e.g. 10s, 500ms).
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        wait: Duration,
        /// Return once the pause is written, without waiting for confirmations.
        #[arg(long)]
        no_wait: bool,
    },
    /// Deliver tasks of the queue again.
    Resume {
        /// Queue name.
        queue: String,
    },
}

pub(crate) async fn run(cfg: Config, action: Action) -> anyhow::Result<()> {
    let insp = Inspector::connect(&cfg.redis, &CancellationToken::new())
        .await?
        .with_heartbeat_lapse(cfg.worker.heartbeat_lapse_ms);
    match action {
        Action::Pause { queue, no_wait, .. } if no_wait => {
            insp.pause(&queue).await?;
            outln!(
                "queue {queue:?} paused (not waiting for replicas to confirm; tasks wait in Redis)"
            );
        }
        Action::Pause { queue, wait, .. } => {
            let r = insp.pause_and_wait(&queue, wait).await?;
            if r.missing.is_empty() {
                outln!(
                    "queue {queue:?} paused: {} live consumer(s) confirmed, nothing new starts (tasks wait in Redis)",
                    r.applied.len()
                );
            } else {
                eprintln!(
                    "queue {queue:?} is paused in Redis, but {} of {} live consumer(s) did not confirm within {} ms: {}\n\
                     They may be stopped, cut off from Redis or stalled; they apply the pause when they next read their signals. \
                     Check them with `taskstream stats` and their logs.",
                    r.missing.len(),
                    r.missing.len() + r.applied.len(),
                    wait.as_millis(),
                    r.missing.join(", ")
                );
                std::process::exit(2);
            }
        }
        Action::Resume { queue } => {
            insp.resume(&queue).await?;
            outln!("queue {queue:?} resumed");
        }
    }
    Ok(())
}
