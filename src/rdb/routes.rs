//! Broker operations on a queue's routes table (`ts:{q}:routes`: task type → pool).

use std::collections::HashMap;

use super::Broker;
use crate::error::Result;
use crate::keys::QueueKeys;

impl Broker {
    /// The routes of each of `queues` (task type → pool), one map per queue, in order.
    pub(crate) async fn routes_of(
        &self,
        queues: &[String],
    ) -> Result<Vec<HashMap<String, String>>> {
        let keys: Vec<String> = queues.iter().map(|q| QueueKeys::new(q).routes).collect();
        let cmds = keys.iter().map(|k| {
            let mut c = redis::cmd("HGETALL");
            c.arg(k);
            (k.as_str(), c)
        });
        self.pipe_per_slot(cmds.collect())
            .await?
            .into_iter()
            .map(|v| redis::from_redis_value(v).map_err(|e| crate::Error::Redis(e.into())))
            .collect()
    }

    /// How many partitions each of `queues` has (`ts:{q}:partitions`, 1 when unset), in
    /// order, in one round trip per slot.
    pub(crate) async fn partitions_of(&self, queues: &[String]) -> Result<Vec<u32>> {
        let keys: Vec<String> = queues
            .iter()
            .map(|q| QueueKeys::new(q).partitions_key())
            .collect();
        let cmds = keys.iter().map(|k| {
            let mut c = redis::cmd("GET");
            c.arg(k);
            (k.as_str(), c)
        });
        Ok(self
            .pipe_per_slot(cmds.collect())
            .await?
            .into_iter()
            .map(|v| {
                redis::from_redis_value::<Option<String>>(v)
                    .ok()
                    .flatten()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                    .filter(|n| (1..=crate::keys::MAX_PARTITIONS).contains(n))
                    .unwrap_or(1)
            })
            .collect())
    }

    /// The pool that serves `task_type` in the queue of `keys`, if one registered it.
    #[allow(dead_code)] // no caller yet (everything reads routes through `RouteCache`)
    pub(crate) async fn route_of(
        &self,
        keys: &QueueKeys,
        task_type: &str,
    ) -> Result<Option<String>> {
        Ok(redis::cmd("HGET")
            .arg(&keys.routes)
            .arg(task_type)
            .query_async(&mut self.c())
            .await?)
    }

    /// Records that `pool` serves `types`; returns, per type, the pool that served it before
    /// (if another one did). The last pool to start wins, as with a deploy that moves a type.
    pub(crate) async fn claim_routes(
        &self,
        keys: &QueueKeys,
        types: &[String],
        pool: &str,
    ) -> Result<Vec<(String, String)>> {
        let mut moved = Vec::new();
        for t in types {
            let prev: Option<String> = redis::cmd("HGET")
                .arg(&keys.routes)
                .arg(t)
                .query_async(&mut self.c())
                .await?;
            if let Some(p) = prev.filter(|p| p != pool) {
                moved.push((t.clone(), p));
            }
            redis::cmd("HSET")
                .arg(&keys.routes)
                .arg(t)
                .arg(pool)
                .query_async::<()>(&mut self.c())
                .await?;
        }
        Ok(moved)
    }
}
