//! `taskstream enqueue`: one task, or `--count` copies pipelined.
//!
//! Before enqueueing it asks the inspector whether a live worker serves the queue: a typo
//! in `-q` used to succeed without a word and leave tasks in keys no worker reads (issue
//! 10.10). Now it warns on stderr, naming the queues that do have live workers, and
//! `--strict` refuses instead. `--json` always prints an array, one object per task, so
//! scripts need not care about `--count` (issue 10.18).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::inspect::{Inspector, QueueStatus};
use crate::producer::{NewTask, Producer};

use super::output::outln;
use super::parse::parse_duration;

/// `enqueue` options.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Queue name.
    #[arg(long, short = 'q', default_value = "default")]
    queue: String,
    /// Task type.
    #[arg(long = "type", short = 't')]
    task_type: String,
    /// JSON payload.
    #[arg(long, short = 'p', default_value = "{}")]
    payload: String,
    /// Use the express lane.
    #[arg(long)]
    express: bool,
    /// Run no sooner than this delay (e.g. 30s, 500ms, 5m).
    #[arg(long, value_parser = parse_duration)]
    delay: Option<Duration>,
    /// Attempts allowed in all.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Handler time limit (e.g. 10s).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Idempotency key: repeated enqueues with it within the window are answered with the
    /// first task's id.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Group key (a tenant, an account): at most the queue's `max_per_key` tasks of one
    /// key run at once.
    #[arg(long)]
    group_key: Option<String>,
    /// Enqueue this many copies (pipelined), e.g. for a quick load.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Refuse (exit 1, nothing enqueued) when no live worker serves the queue, instead of
    /// warning.
    #[arg(long)]
    strict: bool,
    /// Print JSON: always an array with one object per task (with `--wait`: the one
    /// task's end, as an object).
    #[arg(long)]
    json: bool,
    /// Wait for the task to end, at most this long (default 30s), and print its result;
    /// exits 1 when it was dead-lettered or cancelled, or did not end in time. Needs
    /// `result_ttl_secs` on the queue's workers (see "Results and progress" in the README).
    #[arg(long, value_parser = parse_duration, num_args = 0..=1, default_missing_value = "30s", value_name = "TIMEOUT")]
    wait: Option<Duration>,
}

impl Args {
    /// The task these options describe.
    fn task(&self) -> NewTask {
        let mut t = NewTask::raw(
            self.queue.clone(),
            self.task_type.clone(),
            self.payload.clone(),
        );
        t.express = self.express;
        t.delay = self.delay;
        t.max_attempts = self.max_attempts;
        t.timeout = self.timeout;
        t.idempotency_key = self.idempotency_key.clone();
        t.group_key = self.group_key.clone();
        t
    }
}

/// The warning for a queue no live worker serves, or `None` when one does.
pub(crate) fn unserved_warning(s: &QueueStatus) -> Option<String> {
    if s.live_workers > 0 {
        return None;
    }
    let served = if s.served_queues.is_empty() {
        "no queue has a live worker right now".to_string()
    } else {
        format!(
            "queues with live workers: {}",
            s.served_queues
                .iter()
                .map(|q| format!("{q:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let what = if s.registered {
        "has no live worker"
    } else {
        "is unknown: no worker or producer has used it before, and no live worker serves it"
    };
    Some(format!(
        "queue {:?} {what} ({served}); its tasks wait until a worker serves it — check --queue",
        s.queue
    ))
}

pub(crate) async fn run(cfg: Config, a: Args) -> anyhow::Result<()> {
    let conn = crate::rdb::connect(
        &cfg.redis,
        &CancellationToken::new(),
        crate::rdb::ClientName::process(crate::rdb::Role::Producer),
    )
    .await?;
    let p = Producer::new(conn.clone(), cfg.producer.clone());
    let insp = Inspector::new(crate::rdb::Broker::new(conn))
        .with_heartbeat_lapse(cfg.worker.heartbeat_lapse_ms);
    if let Some(w) = unserved_warning(&insp.queue_status(&a.queue).await?) {
        if a.strict {
            anyhow::bail!("{w}; nothing enqueued (--strict)");
        }
        eprintln!("warning: {w} (--strict refuses)");
    }
    if let Some(timeout) = a.wait {
        anyhow::ensure!(a.count <= 1, "--wait waits for one task; drop --count");
        let t = a.task();
        let waiter = Producer::connect(&cfg).await?;
        let f = waiter.enqueue_and_wait(t, timeout).await?;
        if a.json {
            outln!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "task_id": f.task_id, "state": f.state, "result": f.result, "record": f.record,
                }))?
            );
        } else {
            outln!("{} {}", f.state.as_str(), f.task_id);
            if let Some(r) = &f.record.result {
                outln!("{r}");
            }
        }
        match f.state {
            crate::results::RecordState::Succeeded => return Ok(()),
            s => anyhow::bail!(
                "task {} ended {}{}",
                f.task_id,
                s.as_str(),
                f.record
                    .last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        }
    }
    let mut tasks = Vec::with_capacity(a.count);
    for _ in 0..a.count.max(1) {
        tasks.push(a.task());
    }
    let mut out = Vec::new();
    for chunk in tasks.chunks(1000) {
        out.extend(p.enqueue_batch(chunk.to_vec()).await?);
    }
    if a.json {
        let v: Vec<_> = out
            .iter()
            .map(|e| serde_json::json!({"task_id": e.task_id, "entry_id": e.entry_id, "duplicate": e.duplicate, "scheduled": e.scheduled}))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else if out.len() == 1 {
        let e = &out[0];
        let what = if e.duplicate {
            "duplicate of"
        } else if e.scheduled {
            "scheduled"
        } else {
            "enqueued"
        };
        outln!("{what} {}", e.task_id);
    } else {
        let dups = out.iter().filter(|e| e.duplicate).count();
        outln!("enqueued {} tasks ({dups} duplicates)", out.len() - dups);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(registered: bool, live: u64, served: &[&str]) -> QueueStatus {
        QueueStatus {
            queue: "nosuchq".into(),
            registered,
            live_workers: live,
            served_queues: served.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn warns_only_without_live_workers_and_names_the_served_queues() {
        assert_eq!(unserved_warning(&status(true, 2, &["nosuchq"])), None);
        let w = unserved_warning(&status(false, 0, &["emails", "orders"])).unwrap();
        assert!(w.contains("\"nosuchq\" is unknown"), "{w}");
        assert!(w.contains("\"emails\", \"orders\""), "{w}");
        let w = unserved_warning(&status(true, 0, &[])).unwrap();
        assert!(w.contains("has no live worker"), "{w}");
        assert!(w.contains("no queue has a live worker"), "{w}");
    }
}
