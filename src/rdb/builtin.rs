//! The Redis writes of the built-in test handlers (`crate::builtin`): `builtin.record`
//! leaves its mark in Redis before it can be killed, so tests count executions per task
//! across processes.

use redis::Pipeline;

use super::Broker;
use crate::error::Result;

impl Broker {
    /// `HINCRBY key task_id 1`, and with `log` also `RPUSH log line`, in one round trip.
    pub(crate) async fn record_execution(
        &self,
        key: &str,
        task_id: &str,
        log: Option<(&str, String)>,
    ) -> Result<()> {
        let mut p = Pipeline::new();
        p.cmd("HINCRBY").arg(key).arg(task_id).arg(1).ignore();
        if let Some((l, line)) = log {
            p.cmd("RPUSH").arg(l).arg(line).ignore();
        }
        self.pipe::<()>(&p).await
    }

    /// Counts a run of group key `gk` under way: `SADD set id`, then the set's size into
    /// `peak` (`ZADD GT`), so `peak` keeps each key's highest concurrency.
    pub(crate) async fn record_running(
        &self,
        set: &str,
        peak: &str,
        gk: &str,
        task_id: &str,
    ) -> Result<()> {
        let (_, n): (u64, u64) = redis::pipe()
            .atomic()
            .cmd("SADD")
            .arg(set)
            .arg(task_id)
            .cmd("SCARD")
            .arg(set)
            .query_async(&mut self.c())
            .await?;
        redis::cmd("ZADD")
            .arg(peak)
            .arg("GT")
            .arg(n)
            .arg(gk)
            .query_async::<()>(&mut self.c())
            .await?;
        Ok(())
    }

    /// The end of a run counted by [`Broker::record_running`].
    pub(crate) async fn record_stopped(&self, set: &str, task_id: &str) -> Result<()> {
        redis::cmd("SREM")
            .arg(set)
            .arg(task_id)
            .query_async::<()>(&mut self.c())
            .await?;
        Ok(())
    }
}
