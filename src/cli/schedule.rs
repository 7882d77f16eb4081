//! `taskstream schedule list | show | set | remove | pause | resume | trigger`: periodic
//! tasks at run time (see [`crate::schedule`]). Definitions live in Redis, so a change
//! here reaches every worker's scheduler within a second; `[[schedules]]` in a worker's
//! config are written there when the worker starts (the config wins for its names).

use tokio_util::sync::CancellationToken;

use super::output::{escape_controls, outln};
use crate::config::Config;
use crate::inspect::Inspector;
use crate::schedule::{Missed, ScheduleDef, ScheduleView};

/// `schedule` actions.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Action {
    /// Every schedule with its next tick, last fire and counts.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One schedule in full (JSON).
    Show {
        /// Schedule name.
        name: String,
    },
    /// Add a schedule or replace the one of the same name.
    Set(SetArgs),
    /// Remove a schedule (its claim state stays, so adding it back cannot fire a tick twice).
    Remove {
        /// Schedule name.
        name: String,
    },
    /// Stop firing a schedule; the ticks meanwhile are not replayed on resume.
    Pause {
        /// Schedule name.
        name: String,
    },
    /// Fire a paused schedule again from its next tick.
    Resume {
        /// Schedule name.
        name: String,
    },
    /// Enqueue the schedule's task now, outside its ticks (also while paused).
    Trigger {
        /// Schedule name.
        name: String,
    },
}

/// `schedule set`: the fields of a `[[schedules]]` table as flags.
#[derive(Debug, clap::Args)]
pub(crate) struct SetArgs {
    /// Schedule name.
    name: String,
    /// Cron expression (5 or 6 fields, or @daily …); exclusive with --every.
    #[arg(long)]
    cron: Option<String>,
    /// Fixed interval (30s, 5m, 1h30m, 1d); exclusive with --cron.
    #[arg(long)]
    every: Option<String>,
    /// IANA time zone of the cron expression.
    #[arg(long, default_value = "UTC")]
    timezone: String,
    /// Queue the tasks go to.
    #[arg(long)]
    queue: String,
    /// Task type.
    #[arg(long = "type")]
    task_type: String,
    /// Payload (JSON).
    #[arg(long, default_value = "{}")]
    payload: String,
    /// Express lane.
    #[arg(long)]
    express: bool,
    /// Partition key (default: the schedule name).
    #[arg(long)]
    partition_key: Option<String>,
    /// Replay missed ticks (up to --catch-up-limit) instead of skipping them.
    #[arg(long)]
    catch_up: bool,
    /// Most missed ticks replayed with --catch-up.
    #[arg(long, default_value_t = 10)]
    catch_up_limit: u32,
    /// A tick this late (seconds) still fires; older ones are missed.
    #[arg(long, default_value_t = 60)]
    misfire_grace_secs: u64,
}

fn when(ms: Option<u64>) -> String {
    ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms as i64).ok())
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

fn table(all: &[ScheduleView]) -> String {
    let mut out = format!(
        "{:<24} {:<22} {:<16} {:<7} {:<21} {:<21} {:>7} {:>5} {:>7}\n",
        "schedule", "when", "queue", "state", "next", "last fired", "fired", "late", "skipped"
    );
    for v in all {
        let (rule, queue) = match &v.definition {
            Some(d) => (
                match (&d.cron, &d.every) {
                    (Some(c), _) if d.timezone != "UTC" => format!("{c} ({})", d.timezone),
                    (Some(c), _) => c.clone(),
                    (None, Some(e)) => format!("every {e}"),
                    (None, None) => "-".into(),
                },
                d.queue.clone(),
            ),
            None => ("-".into(), "-".into()),
        };
        let state = if !v.problems.is_empty() {
            "invalid"
        } else if v.paused {
            "paused"
        } else {
            "active"
        };
        out.push_str(&format!(
            "{:<24} {:<22} {:<16} {:<7} {:<21} {:<21} {:>7} {:>5} {:>7}\n",
            escape_controls(&v.name, false),
            escape_controls(&rule, false),
            escape_controls(&queue, false),
            state,
            when(v.next_fire_ms),
            when(v.last_fired_ms),
            v.fired,
            v.late,
            v.skipped
        ));
        for p in &v.problems {
            out.push_str(&format!("  problem: {}\n", escape_controls(p, false)));
        }
    }
    out
}

pub(crate) async fn run(cfg: Config, action: Action) -> anyhow::Result<()> {
    let insp = Inspector::connect(&cfg.redis, &CancellationToken::new()).await?;
    let unknown = |name: &str| {
        anyhow::anyhow!("no schedule named {name:?}: `taskstream schedule list` shows them")
    };
    match action {
        Action::List { json } => {
            let all = insp.schedules().await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                outln!("no schedules: add one with `taskstream schedule set` or [[schedules]] in a worker's config");
            } else {
                super::output::out!("{}", table(&all));
            }
        }
        Action::Show { name } => {
            let v = insp.schedule(&name).await?.ok_or_else(|| unknown(&name))?;
            outln!("{}", serde_json::to_string_pretty(&v)?);
        }
        Action::Set(a) => {
            let payload: serde_json::Value = serde_json::from_str(&a.payload)
                .map_err(|e| anyhow::anyhow!("--payload is not valid JSON: {e}"))?;
            let def = ScheduleDef {
                name: a.name,
                cron: a.cron,
                every: a.every,
                timezone: a.timezone,
                queue: a.queue,
                task_type: a.task_type,
                payload,
                express: a.express,
                partition_key: a.partition_key,
                missed: if a.catch_up {
                    Missed::CatchUp
                } else {
                    Missed::Skip
                },
                catch_up_limit: a.catch_up_limit,
                misfire_grace_secs: a.misfire_grace_secs,
            };
            insp.set_schedule(&def).await?;
            let v = insp
                .schedule(&def.name)
                .await?
                .ok_or_else(|| unknown(&def.name))?;
            outln!(
                "schedule {:?} set: next tick {} (every worker's scheduler follows within a second)",
                def.name,
                when(v.next_fire_ms)
            );
        }
        Action::Remove { name } => {
            if !insp.remove_schedule(&name).await? {
                return Err(unknown(&name));
            }
            outln!("schedule {name:?} removed");
        }
        Action::Pause { name } => match insp.pause_schedule(&name, true).await? {
            None => return Err(unknown(&name)),
            Some(true) => outln!("schedule {name:?} paused"),
            Some(false) => outln!("schedule {name:?} was already paused"),
        },
        Action::Resume { name } => match insp.pause_schedule(&name, false).await? {
            None => return Err(unknown(&name)),
            Some(true) => outln!("schedule {name:?} resumed: it fires from its next tick"),
            Some(false) => outln!("schedule {name:?} was not paused"),
        },
        Action::Trigger { name } => {
            let e = insp
                .trigger_schedule(&name)
                .await?
                .ok_or_else(|| unknown(&name))?;
            outln!("schedule {name:?} triggered: task {}", e.task_id);
        }
    }
    Ok(())
}
