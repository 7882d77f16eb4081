//! Schedules: their definitions (`ts:schedules`), their claim state beside the target
//! queue, and the one script that claims a tick and adds its task (`schedule_tick.lua`;
//! why one script and no leader: see [`crate::schedule`]).

use std::collections::HashMap;

use redis::{Pipeline, Value};

use super::{Broker, ScriptId};
use crate::error::{Error, Result};

/// What claiming a tick did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tick {
    /// Another scheduler (or an earlier run) claimed it, or a later one: the last claimed.
    Taken(u64),
    /// This call claimed it and added the task: its stream entry id.
    Fired(String),
    /// Claimed while the schedule is paused: no task.
    Paused,
    /// Claimed as skipped (a missed tick under `missed = "skip"`): no task.
    Skipped,
}

/// A schedule's claim state as stored (`ts:{q}:schedule:<name>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TickState {
    /// The newest claimed tick, Unix ms.
    pub last: Option<u64>,
    /// When a scheduler first saw the schedule: no tick before it fires.
    pub since: Option<u64>,
    /// Paused by an operator.
    pub paused: bool,
    /// Ticks fired.
    pub fired: u64,
    /// Missed ticks claimed without a task.
    pub skipped: u64,
    /// Ticks fired more than 1 s late.
    pub late: u64,
    /// Ticks consumed while paused.
    pub paused_ticks: u64,
    /// Id of the last task fired.
    pub last_task: Option<String>,
    /// When the last task was fired, Unix ms.
    pub last_fired_ms: Option<u64>,
}

impl TickState {
    fn of(h: HashMap<String, String>) -> TickState {
        let n = |k: &str| h.get(k).and_then(|v| v.parse::<u64>().ok());
        TickState {
            last: h
                .get("last")
                .and_then(|v| v.parse::<i64>().ok())
                .and_then(|v| u64::try_from(v).ok()),
            since: n("since"),
            paused: h.get("paused").is_some_and(|v| v == "1"),
            fired: n("fired").unwrap_or(0),
            skipped: n("skipped").unwrap_or(0),
            late: n("late").unwrap_or(0),
            paused_ticks: n("paused_ticks").unwrap_or(0),
            last_task: h.get("last_task").cloned(),
            last_fired_ms: n("last_fired_ms"),
        }
    }

    /// Where planning starts: the last claimed tick, or the moment it was first seen.
    pub(crate) fn start(&self) -> Option<u64> {
        match (self.last, self.since) {
            (Some(l), Some(s)) => Some(l.max(s)),
            (l, s) => l.or(s),
        }
    }
}

impl Broker {
    /// Every stored definition: name → JSON text.
    pub(crate) async fn schedule_defs(&self) -> Result<HashMap<String, String>> {
        Ok(redis::cmd("HGETALL")
            .arg(crate::keys::schedules_registry())
            .query_async(&mut self.c())
            .await?)
    }

    /// Writes definitions (name, JSON text), replacing those of the same names.
    pub(crate) async fn put_schedules(&self, defs: &[(String, String)]) -> Result<()> {
        if defs.is_empty() {
            return Ok(());
        }
        let mut c = redis::cmd("HSET");
        c.arg(crate::keys::schedules_registry());
        for (name, json) in defs {
            c.arg(name).arg(json);
        }
        c.query_async::<()>(&mut self.c()).await?;
        Ok(())
    }

    /// Removes a definition (its claim state stays, so adding it back cannot re-fire a
    /// claimed tick). True when it existed.
    pub(crate) async fn remove_schedule(&self, name: &str) -> Result<bool> {
        let n: u64 = redis::cmd("HDEL")
            .arg(crate::keys::schedules_registry())
            .arg(name)
            .query_async(&mut self.c())
            .await?;
        Ok(n == 1)
    }

    /// The claim state at `state_key`, recording `now_ms` as the moment the schedule was
    /// first seen if no scheduler saw it before.
    pub(crate) async fn schedule_state(
        &self,
        state_key: &str,
        now_ms: Option<u64>,
    ) -> Result<TickState> {
        let mut p = Pipeline::new();
        if let Some(now) = now_ms {
            p.cmd("HSETNX")
                .arg(state_key)
                .arg("since")
                .arg(now)
                .ignore();
        }
        p.cmd("HGETALL").arg(state_key);
        let (h,): (HashMap<String, String>,) = p.query_async(&mut self.c()).await?;
        Ok(TickState::of(h))
    }

    /// Claims `tick` of the schedule at `state_key` (`skipped` missed ticks before it
    /// go with it) and, with `task = Some((id, fields))`, adds the task to `stream` in the
    /// same step (`schedule_tick.lua`). With `redis.wait_replicas`, a fired tick is
    /// acknowledged by the replicas before this returns.
    pub(crate) async fn claim_tick(
        &self,
        state_key: &str,
        stream: &str,
        tick: u64,
        now: u64,
        skipped: u64,
        task: Option<(&str, &[(&'static str, String)])>,
    ) -> Result<Tick> {
        let (tick_s, now_s, skipped_s) = (tick.to_string(), now.to_string(), skipped.to_string());
        let mut args: Vec<&[u8]> = vec![tick_s.as_bytes(), now_s.as_bytes(), skipped_s.as_bytes()];
        match task {
            Some((id, fields)) => {
                args.push(b"x");
                args.push(id.as_bytes());
                for (k, v) in fields {
                    args.push(k.as_bytes());
                    args.push(v.as_bytes());
                }
            }
            None => args.push(b"s"),
        }
        let mut p = Pipeline::new();
        p.add_command(super::evalsha(
            ScriptId::ScheduleTick,
            &[state_key, stream],
            args,
        ));
        if let Some(w) = &self.wait {
            p.add_command(w.cmd());
        }
        let mut replies: Vec<Value> = self.pipe(&p).await?;
        if let (Some(w), true) = (self.wait, replies.len() > 1) {
            let got: u64 = redis::from_redis_value(replies.pop().expect("two replies"))
                .map_err(|e| Error::Redis(e.into()))?;
            w.judge(got)?;
        }
        let reply: Vec<Value> =
            redis::from_redis_value(replies.swap_remove(0)).map_err(|e| Error::Redis(e.into()))?;
        let code: i64 = reply
            .first()
            .map(redis::from_redis_value_ref)
            .transpose()
            .map_err(|e| Error::Redis(e.into()))?
            .unwrap_or(-1);
        let text = |i: usize| -> Result<String> {
            reply
                .get(i)
                .map(|v| {
                    redis::from_redis_value_ref::<String>(v).map_err(|e| Error::Redis(e.into()))
                })
                .unwrap_or_else(|| Err(Error::Pool("schedule_tick.lua: short reply".into())))
        };
        Ok(match code {
            0 => Tick::Taken(text(1)?.parse::<i64>().unwrap_or(0).max(0) as u64),
            1 => Tick::Fired(text(1)?),
            2 => Tick::Paused,
            3 => Tick::Skipped,
            other => {
                return Err(Error::Pool(format!(
                    "schedule_tick.lua: unexpected reply {other}"
                )))
            }
        })
    }

    /// Pauses (`true`) or resumes the schedule at `state_key`; resuming claims every tick
    /// up to `now_ms`. True when the state changed.
    pub(crate) async fn pause_schedule(
        &self,
        state_key: &str,
        paused: bool,
        now_ms: u64,
    ) -> Result<bool> {
        let mut p = Pipeline::new();
        p.add_command(super::evalsha(
            ScriptId::SchedulePause,
            &[state_key],
            [
                if paused {
                    "1".to_string()
                } else {
                    "0".to_string()
                },
                now_ms.to_string(),
            ],
        ));
        let (changed,): (i64,) = self.pipe(&p).await?;
        Ok(changed == 1)
    }
}
