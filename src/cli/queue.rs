//! `taskstream queue pause|resume Q`: stop or restart delivery on every replica.

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::inspect::Inspector;

use super::output::outln;

/// `queue` actions.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Action {
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

pub(crate) async fn run(cfg: Config, action: Action) -> anyhow::Result<()> {
    let insp = Inspector::connect(&cfg.redis, &CancellationToken::new()).await?;
    match action {
        Action::Pause { queue } => {
            insp.pause(&queue).await?;
            outln!("queue {queue:?} paused on every replica (tasks wait in Redis)");
        }
        Action::Resume { queue } => {
            insp.resume(&queue).await?;
            outln!("queue {queue:?} resumed");
        }
    }
    Ok(())
}
