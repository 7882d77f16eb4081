//! `taskstream dlq list|search|requeue|purge`: a queue's dead-letter stream. `search`
//! is the API's search (`GET /api/v1/queues/{q}/dead-letters`): the same filter, scanned
//! in Redis by the same library call, cursor and all.
//!
//! `list` prints producer-written text (task ids, types, reasons) with control characters
//! escaped (issue 10.16), and says when the stream holds more than it shows instead of
//! stopping at 50 without a word (issue 10.20).

use anyhow::bail;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::inspect::{DeadLetterPage, Inspector, Requeued};

use super::output::{escape_controls, outln};

/// `dlq` actions.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Action {
    /// List dead letters, oldest first.
    List {
        /// Queue name.
        #[arg(long, short = 'q')]
        queue: String,
        /// Most entries to show (the rest is counted on stderr).
        #[arg(long, visible_alias = "count", default_value_t = 50,
              value_parser = clap::value_parser!(u64).range(1..))]
        limit: u64,
        /// Print JSON (includes payloads).
        #[arg(long)]
        json: bool,
    },
    /// Search dead letters: every given filter must hold (as the API's search).
    Search {
        /// Queue name.
        #[arg(long, short = 'q')]
        queue: String,
        /// Task type, exactly.
        #[arg(long = "type")]
        task_type: Option<String>,
        /// Text the reason contains (any case): exhausted, poison, malformed, failed…
        #[arg(long)]
        reason: Option<String>,
        /// Text the last error contains (any case).
        #[arg(long)]
        error: Option<String>,
        /// Task id, exactly.
        #[arg(long)]
        task_id: Option<String>,
        /// Dead-lettered at or after this Unix ms.
        #[arg(long)]
        since_ms: Option<u64>,
        /// Dead-lettered at or before this Unix ms.
        #[arg(long)]
        until_ms: Option<u64>,
        /// Most matches to show.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: u64,
        /// Continue after an earlier search (the cursor it printed).
        #[arg(long)]
        cursor: Option<String>,
        /// Print JSON (the API's page: letters, next_cursor, scanned).
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

/// The text table of a page of dead letters, every producer-written cell escaped.
pub(crate) fn render(page: &DeadLetterPage) -> String {
    let mut out = format!(
        "{:<20} {:<38} {:<24} {:>8}  REASON\n",
        "DLQ_ID", "TASK_ID", "TYPE", "ATTEMPTS"
    );
    for d in &page.letters {
        let cell = |name: &str| escape_controls(d.get(name).unwrap_or("-"), false).into_owned();
        out.push_str(&format!(
            "{:<20} {:<38} {:<24} {:>8}  {}\n",
            d.dlq_id,
            cell("id"),
            cell("type"),
            cell("dlq_attempts"),
            cell("dlq_reason")
        ));
    }
    out
}

pub(crate) async fn run(cfg: Config, action: Action) -> anyhow::Result<()> {
    let insp = Inspector::connect(&cfg.redis, &CancellationToken::new()).await?;
    match action {
        Action::List { queue, limit, json } => {
            let page = insp
                .dead_letters(&queue, usize::try_from(limit).unwrap_or(usize::MAX))
                .await?;
            if json {
                let v: Vec<_> = page
                    .letters
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
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else if page.letters.is_empty() {
                outln!("no dead letters in queue {queue:?}");
            } else {
                super::output::out!("{}", render(&page));
            }
            if page.truncated() {
                eprintln!(
                    "showing the oldest {} of {} dead letters in queue {queue:?}; use --limit N to see more",
                    page.letters.len(),
                    page.total
                );
            }
        }
        Action::Search {
            queue,
            task_type,
            reason,
            error,
            task_id,
            since_ms,
            until_ms,
            limit,
            cursor,
            json,
        } => {
            let filter = crate::dlq::DeadLetterFilter {
                task_type,
                reason,
                error,
                task_id,
                since_ms,
                until_ms,
            };
            let cursor = cursor
                .as_deref()
                .map(crate::dlq::SearchCursor::parse)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let page = insp
                .search_dead_letters(&queue, &filter, cursor.as_ref(), limit as usize)
                .await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                let shown = DeadLetterPage {
                    total: page.letters.len() as u64,
                    letters: page.letters,
                };
                if shown.letters.is_empty() {
                    outln!(
                        "no matching dead letters in queue {queue:?} ({} looked at)",
                        page.scanned
                    );
                } else {
                    super::output::out!("{}", render(&shown));
                }
                if let Some(c) = page.next_cursor {
                    eprintln!("more may match: continue with --cursor {c}");
                }
            }
        }
        Action::Requeue {
            queue,
            id,
            all,
            json,
        } => {
            let (ok, skipped) = if all {
                let r = insp.requeue_all(&queue).await?;
                (r.requeued, r.skipped)
            } else {
                let id = id.expect("clap requires --id without --all");
                match insp.requeue(&queue, &id).await? {
                    Requeued::Requeued => (1, 0),
                    Requeued::NotFound => bail!("dead letter {id} not found in queue {queue:?}"),
                    Requeued::Malformed => bail!("dead letter {id} holds no task fields (malformed entry); inspect it with `taskstream dlq list --json`"),
                }
            };
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"requeued": ok, "skipped": skipped})
                );
            } else {
                outln!("requeued {ok} dead letters into {queue:?} ({skipped} skipped: malformed)");
            }
        }
        Action::Purge { queue, yes, json } => {
            if !yes {
                bail!(
                    "purging deletes every dead letter of {queue:?} for good; add --yes to confirm"
                );
            }
            let n = insp.purge(&queue).await?;
            if json {
                outln!("{}", serde_json::json!({"purged": n}));
            } else {
                outln!("purged {n} dead letters from {queue:?}");
            }
        }
    }
    Ok(())
}
