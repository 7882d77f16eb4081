//! `taskstream task cancel ID`: a cancel signal to every replica of the task's queue.
//! `taskstream task show ID`: where the task is and its state — the API's lookup
//! (`GET /api/v1/queues/{q}/tasks/{id}`), by the same library call.

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
    /// Where a task is and its state: scheduled, queued, running, retrying, dead, and on a
    /// queue that keeps results (result_ttl_secs) succeeded or cancelled, with its result.
    Show {
        /// Task id.
        id: String,
        /// Queue of the task.
        #[arg(long, short = 'q', default_value = "default")]
        queue: String,
        /// Print JSON (as the API answers).
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(cfg: Config, action: Action) -> anyhow::Result<()> {
    let insp = Inspector::connect(&cfg.redis, &CancellationToken::new()).await?;
    match action {
        Action::Cancel { id, queue } => {
            insp.cancel(&queue, &id).await?;
            outln!("cancel signal sent for task {id} in queue {queue:?}");
        }
        Action::Show { id, queue, json } => {
            let Some(t) = insp.task(&queue, &id).await? else {
                anyhow::bail!(
                    "task {id:?} is not waiting, running or dead in queue {queue:?}: it finished (and the queue keeps no results, or its record expired: result_ttl_secs), was never enqueued there, or sits beyond the first {} entries of a stream",
                    crate::lookup::LOOKUP_SCAN
                );
            };
            if json {
                outln!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                let esc = |s: &Option<String>| {
                    s.as_deref()
                        .map(|v| super::output::escape_controls(v, false).into_owned())
                        .unwrap_or_else(|| "-".into())
                };
                outln!(
                    "task      {}",
                    super::output::escape_controls(&t.task_id, false)
                );
                outln!(
                    "queue     {} (partition {}, lane {})",
                    t.queue,
                    t.partition,
                    t.lane
                );
                outln!(
                    "state     {}",
                    serde_json::to_value(t.state)?.as_str().unwrap_or("?")
                );
                outln!("type      {}", esc(&t.task_type));
                outln!(
                    "attempt   {}{}",
                    t.attempt,
                    t.max_attempts
                        .map(|m| format!(" of {m}"))
                        .unwrap_or_default()
                );
                if let Some(c) = &t.consumer {
                    outln!(
                        "consumer  {c} (delivered {} times)",
                        t.deliveries.unwrap_or(0)
                    );
                }
                if let Some(d) = t.due_at {
                    outln!("due at    {d} (Unix ms)");
                }
                if t.last_error.is_some() {
                    outln!("error     {}", esc(&t.last_error));
                }
                if t.dead_reason.is_some() {
                    outln!("reason    {}", esc(&t.dead_reason));
                }
                if let Some(ms) = t.started_at {
                    outln!("started   {ms} (Unix ms)");
                }
                if let Some(ms) = t.finished_at {
                    outln!("finished  {ms} (Unix ms)");
                }
                if t.progress.is_some() {
                    outln!("progress  {}", esc(&t.progress));
                }
                if t.result.is_some() {
                    outln!("result    {}", esc(&t.result));
                }
                if t.result_error.is_some() {
                    outln!("result    not kept: {}", esc(&t.result_error));
                }
                outln!("payload   {}", esc(&t.payload));
            }
        }
    }
    Ok(())
}
