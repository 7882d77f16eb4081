//! `taskstream stats [--watch] [--json]`: per-queue statistics read from Redis.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::inspect::Inspector;

use super::output::{escape_controls, out, outln};
use super::parse::parse_duration;

/// `stats` options.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Only this queue.
    #[arg(long, short = 'q')]
    queue: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Refresh in place until interrupted.
    #[arg(long)]
    watch: bool,
    /// Refresh period with --watch.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    interval: Duration,
}

pub(crate) async fn run(cfg: Config, a: Args) -> anyhow::Result<()> {
    let never = CancellationToken::new();
    let insp = tokio::time::timeout(
        Duration::from_secs(10),
        Inspector::connect(&cfg.redis, &never),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "redis at {} does not answer",
            crate::rdb::describe(&cfg.redis)
        )
    })??
    .with_heartbeat_lapse(cfg.worker.heartbeat_lapse_ms);
    let configured: Vec<String> = cfg.queues.iter().map(|q| q.name.clone()).collect();
    let mut prev: Option<(std::time::Instant, Vec<(String, u64)>)> = None;
    loop {
        let names = match &a.queue {
            Some(q) => vec![q.clone()],
            None => insp.queues(&configured).await?,
        };
        let all = insp.stats(&names).await?;
        let done: Vec<(String, u64)> = insp
            .counters(&names)
            .await?
            .into_iter()
            .map(|c| (c.queue, c.done))
            .collect();
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
            outln!("{}", serde_json::to_string_pretty(&all)?);
        } else {
            if a.watch {
                out!("\x1b[2J\x1b[H");
                outln!(
                    "taskstream stats — {} — every {:?} (Ctrl-C to quit)\n",
                    crate::rdb::describe(&cfg.redis),
                    a.interval
                );
            }
            let table = crate::stats::render_table(&all, rates.as_deref());
            out!("{}", escape_controls(&table, true));
            // Circuit breakers (`[[breakers]]`): one line each while not closed.
            for b in insp.broker().breakers().await? {
                if b.state != "closed" {
                    let until = b
                        .until_ms
                        .map(|u| {
                            format!(
                                " for {} s more",
                                u.saturating_sub(crate::task::now_ms()) / 1000
                            )
                        })
                        .unwrap_or_default();
                    outln!(
                        "{}",
                        escape_controls(
                            &format!(
                                "breaker {}: {}{until} (tasks of its types wait, same attempt)",
                                b.target, b.state
                            ),
                            true
                        )
                    );
                }
            }
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
