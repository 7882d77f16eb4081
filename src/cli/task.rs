//! `taskstream task cancel ID`: a cancel signal to every replica of the task's queue.

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::inspect::Inspector;

use super::output::outln;

/// `task` actions.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Action {
    /// Cancel a task: skipped if still queued, its handler's cancellation fired if running.
    Cancel {
        /// Task id (as printed by `enqueue`).
        id: String,
        /// Queue of the task.
        #[arg(long, short = 'q', default_value = "default")]
        queue: String,
    },
}

pub(crate) async fn run(cfg: Config, action: Action) -> anyhow::Result<()> {
    let Action::Cancel { id, queue } = action;
    let insp = Inspector::connect(&cfg.redis, &CancellationToken::new()).await?;
    insp.cancel(&queue, &id).await?;
    outln!("cancel signal sent for task {id} in queue {queue:?}");
    Ok(())
}
