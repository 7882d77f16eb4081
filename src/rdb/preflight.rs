//! The server facts the preflight judges (`INFO server`, `INFO replication`, `CONFIG
//! GET`). A `CONFIG GET` that a managed service refuses yields `None` (unknown), never an
//! error, so a locked-down server is reported as "could not check", not as broken.
//!
//! On a Redis Cluster `INFO` goes to every master and comes back as one text per node;
//! the facts are then the weakest node's (the lowest version, the fewest replicas), since
//! any queue may live on any master.

use super::Broker;
use crate::error::Result;
use crate::preflight::{info_field, ServerFacts};

impl Broker {
    /// `CONFIG GET key`, or `None` when refused.
    async fn config_get(&self, key: &str) -> Option<String> {
        let v: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(key)
            .query_async(&mut self.raw())
            .await;
        v.ok().and_then(|v| v.get(1).cloned())
    }

    /// Reads what the preflight checks from the server.
    pub(crate) async fn server_facts(&self) -> Result<ServerFacts> {
        let mut c = self.c();
        let info: redis::Value = redis::cmd("INFO").arg("server").query_async(&mut c).await?;
        let repl: redis::Value = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await?;
        let info = per_node(info);
        let repl = per_node(repl);
        let version = info
            .iter()
            .filter_map(|i| info_field(i, "redis_version"))
            .min_by_key(|v| crate::preflight::parse_version(v))
            .unwrap_or("")
            .to_string();
        Ok(ServerFacts {
            version,
            replicas: repl
                .iter()
                .filter_map(|r| info_field(r, "connected_slaves").and_then(|s| s.parse().ok()))
                .min(),
            maxmemory_policy: self.config_get("maxmemory-policy").await,
            appendonly: self.config_get("appendonly").await,
        })
    }
}

/// The texts of an `INFO` reply: one from one server, one per master from a cluster.
fn per_node(v: redis::Value) -> Vec<String> {
    match v {
        redis::Value::Map(nodes) => nodes
            .into_iter()
            .filter_map(|(_, t)| redis::from_redis_value(t).ok())
            .collect(),
        v => redis::from_redis_value(v).into_iter().collect(),
    }
}
