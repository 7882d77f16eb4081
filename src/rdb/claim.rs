//! Claiming other consumers' work: the broker side of recovery (`worker/recovery.rs` holds
//! the policy). Each claim is one script, so two recoverers never take the same entry and a
//! consumer that beat again in between keeps its work.

use std::collections::HashMap;

use redis::{Pipeline, Value};

use super::{Broker, RawEntry, ScriptId};
use crate::error::Result;
use crate::keys::{Lane, QueueKeys};

/// Who claims, from which group, under which poison limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClaimScope<'a> {
    /// Keys of the queue (pool streams when the reader is a pool).
    pub keys: &'a QueueKeys,
    /// Consumer group.
    pub group: &'a str,
    /// Heartbeat set of the group.
    pub heartbeats: &'a str,
    /// The claiming consumer.
    pub consumer: &'a str,
    /// Executions after which an entry is poison (dead-lettered instead of claimed).
    pub max_deliveries: u32,
    /// XDEL poison entries (false on fan-out queues).
    pub delete_on_ack: bool,
}

/// What one claim returned.
#[derive(Debug, Default)]
pub(crate) struct Claimed {
    /// Entries now owned by the claiming consumer.
    pub entries: Vec<RawEntry>,
    /// Entries moved to the dead-letter stream as poison.
    pub poison: u64,
    /// Pending entries whose stream entry had been deleted meanwhile.
    pub gone: u64,
    /// Last heartbeat of the dead consumer, Unix ms (0 when unknown; dead-consumer claims).
    pub last_beat_ms: u64,
    /// Delivery count of each claimed entry after this claim.
    pub deliveries: HashMap<String, u32>,
    /// Where the next idle scan starts (idle claims).
    pub cursor: String,
}

fn to_u64(v: &Value) -> u64 {
    match v {
        Value::Int(i) => *i as u64,
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0) as u64,
        Value::SimpleString(s) => s.parse::<f64>().unwrap_or(0.0) as u64,
        _ => 0,
    }
}

fn counts(v: Value) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    if let Value::Array(a) = v {
        let mut it = a.into_iter();
        while let (Some(id), Some(n)) = (it.next(), it.next()) {
            if let Ok(id) = redis::from_redis_value::<String>(id) {
                out.insert(id, to_u64(&n) as u32);
            }
        }
    }
    out
}

fn flag(b: bool) -> &'static [u8] {
    if b {
        b"1"
    } else {
        b"0"
    }
}

impl Broker {
    /// Consumers of the heartbeat set whose last beat is older than `cutoff_ms` (at most 50).
    pub(crate) async fn lapsed_consumers(
        &self,
        heartbeats: &str,
        cutoff_ms: u64,
    ) -> Result<Vec<String>> {
        let dead: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(heartbeats)
            .arg("-inf")
            .arg(format!("({cutoff_ms}"))
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(50)
            .query_async(&mut self.c())
            .await?;
        Ok(dead.into_iter().map(|(c, _)| c).collect())
    }

    /// True when `consumer` has at least one pending entry on `stream`.
    pub(crate) async fn has_pending(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
    ) -> Result<bool> {
        let v: Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(consumer)
            .query_async(&mut self.c())
            .await?;
        Ok(matches!(v, Value::Array(a) if !a.is_empty()))
    }

    /// Claims up to `max` pending entries of `dead` on `lane` if its heartbeat is still older
    /// than `cutoff_ms` (re-checked inside the script); poison entries go to the dead-letter
    /// stream instead (`claim_dead.lua`).
    pub(crate) async fn claim_dead(
        &self,
        scope: ClaimScope<'_>,
        lane: Lane,
        dead: &str,
        cutoff_ms: u64,
        max: usize,
        now_ms: u64,
    ) -> Result<Claimed> {
        let k = scope.keys;
        let (cutoff, max, maxd, now) = (
            cutoff_ms.to_string(),
            max.to_string(),
            scope.max_deliveries.to_string(),
            now_ms.to_string(),
        );
        let mut p = Pipeline::new();
        p.add_command(super::evalsha(
            ScriptId::ClaimDead,
            &[k.lane_stream(lane), scope.heartbeats, &k.dlq, &k.starts],
            [
                scope.group.as_bytes(),
                dead.as_bytes(),
                scope.consumer.as_bytes(),
                cutoff.as_bytes(),
                max.as_bytes(),
                maxd.as_bytes(),
                now.as_bytes(),
                flag(scope.delete_on_ack),
            ],
        ));
        let (r,): (Vec<Value>,) = self.pipe(&p).await?;
        let mut it = r.into_iter();
        Ok(Claimed {
            entries: it.next().map(super::parse_entries).unwrap_or_default(),
            poison: it.next().map(|v| to_u64(&v)).unwrap_or(0),
            gone: it.next().map(|v| to_u64(&v)).unwrap_or(0),
            last_beat_ms: it.next().map(|v| to_u64(&v)).unwrap_or(0),
            deliveries: it.next().map(counts).unwrap_or_default(),
            cursor: String::new(),
        })
    }

    /// One page of the idle safety net on `lane`: claims up to `max` entries idle longer
    /// than `min_idle_ms`, from `cursor` (`claim_idle.lua`, XAUTOCLAIM).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn claim_idle(
        &self,
        scope: ClaimScope<'_>,
        lane: Lane,
        min_idle_ms: u64,
        cursor: &str,
        max: usize,
        now_ms: u64,
    ) -> Result<Claimed> {
        let k = scope.keys;
        let (idle, max, maxd, now) = (
            min_idle_ms.to_string(),
            max.to_string(),
            scope.max_deliveries.to_string(),
            now_ms.to_string(),
        );
        let mut p = Pipeline::new();
        p.add_command(super::evalsha(
            ScriptId::ClaimIdle,
            &[k.lane_stream(lane), &k.dlq, &k.starts],
            [
                scope.group.as_bytes(),
                scope.consumer.as_bytes(),
                idle.as_bytes(),
                cursor.as_bytes(),
                max.as_bytes(),
                maxd.as_bytes(),
                now.as_bytes(),
                flag(scope.delete_on_ack),
            ],
        ));
        let (r,): (Vec<Value>,) = self.pipe(&p).await?;
        let mut it = r.into_iter();
        let cursor: String = it
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or_else(|| "0-0".into());
        Ok(Claimed {
            cursor,
            entries: it.next().map(super::parse_entries).unwrap_or_default(),
            poison: it.next().map(|v| to_u64(&v)).unwrap_or(0),
            gone: it.next().map(|v| to_u64(&v)).unwrap_or(0),
            deliveries: it.next().map(counts).unwrap_or_default(),
            last_beat_ms: 0,
        })
    }

    /// Removes `consumer` from the group on both lanes and forgets its heartbeat, only if
    /// nothing of it is pending on either lane and its heartbeat is older than `cutoff_ms`
    /// (`remove_consumer.lua`; `XGROUP DELCONSUMER` alone drops pending entries: redis#9745).
    pub(crate) async fn remove_consumer(
        &self,
        keys: &QueueKeys,
        group: &str,
        heartbeats: &str,
        consumer: &str,
        cutoff_ms: u64,
    ) -> Result<bool> {
        let cutoff = cutoff_ms.to_string();
        let mut p = Pipeline::new();
        p.add_command(super::evalsha(
            ScriptId::RemoveConsumer,
            &[&keys.stream, &keys.express, heartbeats],
            [group.as_bytes(), consumer.as_bytes(), cutoff.as_bytes()],
        ));
        let (r,): (i64,) = self.pipe(&p).await?;
        if r == 1 && keys.partition == 0 {
            // Its line in the workers list goes with it (another slot on a cluster, so
            // not in the script; a line left by a failure here shows a stale beat time).
            let _: i64 = redis::cmd("HDEL")
                .arg(crate::keys::workers_info(&keys.queue))
                .arg(consumer)
                .query_async(&mut self.c())
                .await?;
        }
        Ok(r == 1)
    }

    /// Records that a recovered entry starts an execution (poison detection counts starts).
    pub(crate) async fn mark_start(&self, keys: &QueueKeys, entry_id: &str) -> Result<()> {
        redis::cmd("HINCRBY")
            .arg(&keys.starts)
            .arg(entry_id)
            .arg(1)
            .query_async::<()>(&mut self.c())
            .await?;
        Ok(())
    }
}
