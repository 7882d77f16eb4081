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
}
