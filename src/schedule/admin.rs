//! What operators do with schedules — list, show, set, remove, pause, resume, trigger —
//! as methods of the [`Inspector`], so the CLI, the REST API and the dashboard share one
//! implementation (issue 12's rule: behaviour cannot drift between them).

use serde::Serialize;

use super::ScheduleDef;
use crate::error::{Error, Result};
use crate::inspect::Inspector;
use crate::producer::{Enqueued, NewTask, Producer};
use crate::task::now_ms;

/// One schedule as an operator sees it: the definition, whether it is valid, and what
/// the schedulers have done with it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScheduleView {
    /// Its name.
    pub name: String,
    /// The stored definition (absent when it does not parse at all).
    pub definition: Option<ScheduleDef>,
    /// What is wrong with the definition; schedulers skip it while this is not empty.
    pub problems: Vec<String>,
    /// Paused by an operator.
    pub paused: bool,
    /// The next tick, Unix ms (none when paused, invalid, or it never fires again).
    pub next_fire_ms: Option<u64>,
    /// The newest claimed tick, Unix ms.
    pub last_tick_ms: Option<u64>,
    /// The task the newest fired tick added.
    pub last_task: Option<String>,
    /// When the newest fired tick was fired, Unix ms.
    pub last_fired_ms: Option<u64>,
    /// Ticks fired.
    pub fired: u64,
    /// Ticks fired more than 1 s after their instant.
    pub late: u64,
    /// Missed ticks claimed without a task (`missed = "skip"`, or past `catch_up_limit`).
    pub skipped: u64,
    /// Ticks consumed while paused.
    pub paused_ticks: u64,
}

impl Inspector {
    fn producer(&self) -> Producer {
        Producer::new(self.broker().raw(), Default::default())
    }

    /// Every stored schedule, sorted by name.
    pub async fn schedules(&self) -> Result<Vec<ScheduleView>> {
        let mut defs: Vec<(String, String)> =
            self.broker().schedule_defs().await?.into_iter().collect();
        defs.sort();
        let mut out = Vec::with_capacity(defs.len());
        for (name, json) in defs {
            out.push(self.view(name, &json).await?);
        }
        Ok(out)
    }

    /// One schedule, if stored.
    pub async fn schedule(&self, name: &str) -> Result<Option<ScheduleView>> {
        let defs = self.broker().schedule_defs().await?;
        match defs.get(name) {
            Some(json) => Ok(Some(self.view(name.to_string(), json).await?)),
            None => Ok(None),
        }
    }

    async fn view(&self, name: String, json: &str) -> Result<ScheduleView> {
        let (def, spec, problems) = match serde_json::from_str::<ScheduleDef>(json) {
            Ok(d) => match d.compile() {
                Ok(s) => (Some(d), Some(s), vec![]),
                Err(p) => (
                    Some(d),
                    None,
                    p.into_iter().map(|(k, r)| format!("{k}: {r}")).collect(),
                ),
            },
            Err(e) => (None, None, vec![format!("definition: {e}")]),
        };
        let mut v = ScheduleView {
            name,
            definition: def.clone(),
            problems,
            paused: false,
            next_fire_ms: None,
            last_tick_ms: None,
            last_task: None,
            last_fired_ms: None,
            fired: 0,
            late: 0,
            skipped: 0,
            paused_ticks: 0,
        };
        if let Some(d) = &def {
            if crate::keys::validate_queue_name(&d.queue).is_ok()
                && crate::task::validate_type(&d.task_type).is_ok()
            {
                let key = self.producer().tick_task(d, 0).await?.state_key;
                let s = self.broker().schedule_state(&key, None).await?;
                v.paused = s.paused;
                v.last_tick_ms = s.last;
                v.last_task = s.last_task.clone();
                v.last_fired_ms = s.last_fired_ms;
                v.fired = s.fired;
                v.late = s.late;
                v.skipped = s.skipped;
                v.paused_ticks = s.paused_ticks;
                if let (Some(spec), false) = (&spec, s.paused) {
                    let from = s.start().unwrap_or(0).max(now_ms());
                    v.next_fire_ms = spec.next_after(from);
                }
            }
        }
        Ok(v)
    }

    /// Stores `def` (replacing a schedule of the same name); every scheduler follows it
    /// within a second. Refused with every problem when it is not valid.
    pub async fn set_schedule(&self, def: &ScheduleDef) -> Result<()> {
        if let Err(p) = def.compile() {
            return Err(Error::Invalid {
                what: "schedule",
                reason: p
                    .into_iter()
                    .map(|(k, r)| format!("{k}: {r}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
        let json = serde_json::to_string(def).expect("a definition serializes");
        self.broker()
            .put_schedules(&[(def.name.clone(), json)])
            .await
    }

    /// Removes a schedule; false when there was none. Its claim state stays, so setting it
    /// again cannot fire a tick twice.
    pub async fn remove_schedule(&self, name: &str) -> Result<bool> {
        self.broker().remove_schedule(name).await
    }

    /// Pauses (`true`) or resumes a schedule: `None` when there is no such schedule,
    /// otherwise whether its state changed. Resuming does not replay the ticks that fell
    /// while it was paused.
    pub async fn pause_schedule(&self, name: &str, paused: bool) -> Result<Option<bool>> {
        let Some(def) = self.stored(name).await? else {
            return Ok(None);
        };
        let key = self.producer().tick_task(&def, 0).await?.state_key;
        Ok(Some(
            self.broker().pause_schedule(&key, paused, now_ms()).await?,
        ))
    }

    /// Enqueues the schedule's task now, outside its ticks (id `<name>@manual-<ms>`);
    /// `None` when there is no such schedule. Works while paused: it is an operator's
    /// explicit request.
    pub async fn trigger_schedule(&self, name: &str) -> Result<Option<Enqueued>> {
        let Some(def) = self.stored(name).await? else {
            return Ok(None);
        };
        let mut t = NewTask::raw(&def.queue, &def.task_type, def.payload_text());
        t.express = def.express;
        t.id = Some(format!("{}@manual-{}", def.name, now_ms()));
        t.partition_key = Some(
            def.partition_key
                .clone()
                .unwrap_or_else(|| def.name.clone()),
        );
        Ok(Some(self.producer().enqueue(t).await?))
    }

    /// The stored definition of `name`, refused when it is invalid.
    async fn stored(&self, name: &str) -> Result<Option<ScheduleDef>> {
        let defs = self.broker().schedule_defs().await?;
        let Some(json) = defs.get(name) else {
            return Ok(None);
        };
        let def: ScheduleDef = serde_json::from_str(json).map_err(|e| Error::Invalid {
            what: "stored schedule",
            reason: format!(
                "{name:?} does not parse ({e}): store it again with `taskstream schedule set`"
            ),
        })?;
        if let Err(p) = def.compile() {
            // Pause and trigger need only the queue and type; refuse when those are bad.
            if p.iter()
                .any(|(k, _)| matches!(*k, "queue" | "type" | "name"))
            {
                return Err(Error::Invalid {
                    what: "stored schedule",
                    reason: p
                        .into_iter()
                        .map(|(k, r)| format!("{k}: {r}"))
                        .collect::<Vec<_>>()
                        .join("; "),
                });
            }
        }
        Ok(Some(def))
    }
}
