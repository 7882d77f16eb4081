//! `taskstream queue pause|resume Q`: stop or restart delivery on every replica.
//! `taskstream queue keys Q [--partitions N]`: the keys of each partition, for raw
//! producers and autoscalers (KEDA triggers name streams).
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
    /// Print the hash tag, cluster slot and lane streams of each partition of the queue.
    Keys {
        /// Queue name.
        queue: String,
        /// Partitions to list (default: as the workers recorded them in Redis).
        #[arg(long)]
        partitions: Option<u32>,
    },
}

/// The keys table of `queue` with `n` partitions.
fn keys_table(queue: &str, n: u32) -> String {
    let mut out = format!(
        "{:<9} {:<24} {:>5}  {:<34} express\n",
        "partition", "hash tag", "slot", "bulk stream"
    );
    for p in 0..n {
        let k = crate::keys::QueueKeys::partition(queue, p);
        let tag = crate::keys::partition_tag(queue, p);
        out.push_str(&format!(
            "{p:<9} {tag:<24} {:>5}  {:<34} {}\n",
            crate::keys::slot(&tag),
            k.stream,
            k.express
        ));
    }
    out
}

pub(crate) async fn run(cfg: Config, action: Action) -> anyhow::Result<()> {
    if let Action::Keys {
        queue,
        partitions: Some(n),
    } = &action
    {
        crate::keys::validate_queue_name(queue).map_err(|e| anyhow::anyhow!(e))?;
        if *n == 0 || *n > crate::keys::MAX_PARTITIONS {
            anyhow::bail!("--partitions must be 1 to {}", crate::keys::MAX_PARTITIONS);
        }
        super::output::out!("{}", keys_table(queue, *n));
        return Ok(());
    }
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
        Action::Keys { queue, .. } => {
            let n = insp.partitions(&queue).await?;
            super::output::out!("{}", keys_table(&queue, n));
        }
    }
    Ok(())
}
