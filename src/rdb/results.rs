//! Task records (`ts:{q}:result:<id>`) and their doorbells (`ts:{q}:done:<id>`): reading
//! a record back, waiting for a task to end, and a progress report from outside a worker.
//! The writes ride the settler's batches ([`crate::results::RecordWrite`]); why records
//! exist and what they promise: [`crate::results`].

use std::collections::HashMap;
use std::time::Duration;

use super::{Broker, ReaderPool};
use crate::error::{Error, Result};
use crate::keys::QueueKeys;
use crate::results::{RecordState, RecordWrite, TaskRecord};

/// Appends the commands of record write `w` to `p`: `HSET` and `PEXPIRE` of the record,
/// then the doorbell's ring (`RPUSH`, `LTRIM` to one, `PEXPIRE`) or, for a start, its
/// `DEL` (see [`RecordWrite`]).
pub(crate) fn append_record(p: &mut redis::Pipeline, w: &RecordWrite) {
    let ttl = w.ttl_ms.max(1);
    let c = p.cmd("HSET").arg(&w.key);
    for (k, v) in &w.fields {
        c.arg(*k).arg(v);
    }
    c.ignore();
    p.cmd("PEXPIRE").arg(&w.key).arg(ttl).ignore();
    match (&w.done, w.ring) {
        (Some(done), true) => {
            let state = w
                .fields
                .iter()
                .find(|(k, _)| *k == "state")
                .map_or("", |(_, v)| v.as_str());
            p.cmd("RPUSH").arg(done).arg(state).ignore();
            p.cmd("LTRIM").arg(done).arg(-1).arg(-1).ignore();
            p.cmd("PEXPIRE").arg(done).arg(ttl).ignore();
        }
        (Some(done), false) => {
            p.cmd("DEL").arg(done).ignore();
        }
        (None, _) => {}
    }
}

impl Broker {
    /// The record of `task_id` in any of the `parts` partitions of `queue` (the newest
    /// written, should two exist), with its partition; `None` without one.
    pub(crate) async fn task_record(
        &self,
        queue: &str,
        parts: u32,
        task_id: &str,
    ) -> Result<Option<(u32, TaskRecord)>> {
        let keys: Vec<String> = (0..parts.max(1))
            .map(|p| QueueKeys::partition(queue, p).result(task_id))
            .collect();
        let cmds = keys.iter().map(|k| {
            let mut c = redis::cmd("HGETALL");
            c.arg(k);
            (k.as_str(), c)
        });
        let mut best: Option<(u32, TaskRecord)> = None;
        for (p, v) in self
            .pipe_per_slot(cmds.collect())
            .await?
            .into_iter()
            .enumerate()
        {
            let m: HashMap<String, String> =
                redis::from_redis_value(v).map_err(|e| Error::Redis(e.into()))?;
            let fields: Vec<(String, String)> = m.into_iter().collect();
            if let Some(r) = TaskRecord::from_fields(&fields) {
                if best
                    .as_ref()
                    .is_none_or(|(_, b)| r.updated_at > b.updated_at)
                {
                    best = Some((p as u32, r));
                }
            }
        }
        Ok(best)
    }

    /// Blocks up to `block` on the doorbell `done` (an exclusive connection from `pool`):
    /// true once the task has ended, at once if it already had. `BLMOVE` onto the same list
    /// leaves the element for the other waiters.
    pub(crate) async fn wait_done(
        &self,
        pool: &ReaderPool,
        done: &str,
        block: Duration,
    ) -> Result<bool> {
        let mut c = pool.get().await.map_err(Error::Pool)?;
        let r: redis::RedisResult<Option<String>> = redis::cmd("BLMOVE")
            .arg(done)
            .arg(done)
            .arg("RIGHT")
            .arg("LEFT")
            .arg(format!("{:.3}", block.as_secs_f64().max(0.001)))
            .query_async(&mut c)
            .await;
        match r {
            Ok(v) => Ok(v.is_some()),
            Err(e) => {
                c.discard();
                Err(e.into())
            }
        }
    }

    /// Sets the progress of running task `task_id` of `queue` (its record in one of the
    /// `parts` partitions) to `json`; false when the task has no running record (unknown,
    /// ended, or the queue keeps no results). Progress is information: a report that
    /// races the run's end may land on the ended record, which is harmless.
    pub(crate) async fn report_progress(
        &self,
        queue: &str,
        parts: u32,
        task_id: &str,
        json: &str,
    ) -> Result<bool> {
        let Some((p, r)) = self.task_record(queue, parts, task_id).await? else {
            return Ok(false);
        };
        if r.state != RecordState::Running {
            return Ok(false);
        }
        let key = QueueKeys::partition(queue, p).result(task_id);
        redis::cmd("HSET")
            .arg(&key)
            .arg("progress")
            .arg(json)
            .arg("updated_at")
            .arg(crate::task::now_ms())
            .query_async::<()>(&mut self.c())
            .await?;
        Ok(true)
    }
}
