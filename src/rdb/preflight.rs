//! The server facts the preflight judges (`INFO server`, `INFO replication`, `CONFIG
//! GET`). A `CONFIG GET` that a managed service refuses yields `None` (unknown), never an
//! error, so a locked-down server is reported as "could not check", not as broken.

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
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut c).await?;
        let repl: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await?;
        Ok(ServerFacts {
            version: info_field(&info, "redis_version").unwrap_or("").to_string(),
            replicas: info_field(&repl, "connected_slaves").and_then(|s| s.parse().ok()),
            maxmemory_policy: self.config_get("maxmemory-policy").await,
            appendonly: self.config_get("appendonly").await,
        })
    }
}
