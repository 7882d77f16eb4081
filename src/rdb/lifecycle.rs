//! Broker operations of a worker's background loops: heartbeats and touches, forwarding
//! due tasks, trimming fan-out streams, the rate limiter, queue set-up, the pause flag and
//! the signal stream, and the arrival counter the SLA loop reads.

use redis::{Pipeline, Value};

use super::{Broker, RawEntry, ScriptId};
use crate::error::Result;
use crate::keys::QueueKeys;

/// Result of one forwarder run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Forwarded {
    /// Tasks moved to their streams.
    pub moved: usize,
    /// Due time (Unix ms) of the next scheduled task, if any.
    pub next_due_ms: Option<u64>,
}

impl Broker {
    /// Records each `(heartbeat set, consumer)` as alive at `score` (Unix ms; 0 marks the
    /// consumer gone, so recoverers take its leftovers without waiting for the lapse).
    /// With each beat, `info` (workers hash, consumer, JSON) is written too, and removed
    /// with a score of 0.
    pub(crate) async fn beat(
        &self,
        members: &[(&str, &str)],
        info: &[(&str, &str, String)],
        score: u64,
    ) -> Result<()> {
        let mut cmds: Vec<(&str, redis::Cmd)> = members
            .iter()
            .map(|(set, consumer)| {
                let mut c = redis::cmd("ZADD");
                c.arg(*set).arg(score).arg(*consumer);
                (*set, c)
            })
            .collect();
        for (key, consumer, json) in info {
            let c = if score == 0 {
                let mut c = redis::cmd("HDEL");
                c.arg(*key).arg(*consumer);
                c
            } else {
                let mut c = redis::cmd("HSET");
                c.arg(*key).arg(*consumer).arg(json);
                c
            };
            cmds.push((*key, c));
        }
        self.pipe_per_slot(cmds).await?;
        Ok(())
    }

    /// Refreshes the idle time of `ids` on `stream` (still pending for `consumer`), so the
    /// idle safety net never takes a running task away (`touch.lua`). Returns how many.
    pub(crate) async fn touch(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        ids: &[String],
    ) -> Result<u64> {
        let mut args: Vec<&[u8]> = Vec::with_capacity(ids.len() + 2);
        args.push(group.as_bytes());
        args.push(consumer.as_bytes());
        args.extend(ids.iter().map(|i| i.as_bytes()));
        let mut p = Pipeline::new();
        p.add_command(super::evalsha(ScriptId::Touch, &[stream], args));
        let (n,): (u64,) = self.pipe(&p).await?;
        Ok(n)
    }

    /// Moves up to `page` due tasks of the scheduled set into their streams
    /// (`forward.lua`, asynq's forwarder).
    pub(crate) async fn forward_due(
        &self,
        keys: &QueueKeys,
        now_ms: u64,
        page: usize,
    ) -> Result<Forwarded> {
        let (now, page, prefix) = (now_ms.to_string(), page.to_string(), keys.pool_prefix());
        let mut p = Pipeline::new();
        p.add_command(super::evalsha(
            ScriptId::Forward,
            &[&keys.scheduled, &keys.stream, &keys.express, &keys.dlq],
            [now.as_bytes(), page.as_bytes(), prefix.as_bytes()],
        ));
        let ((moved, next),): ((usize, String),) = self.pipe(&p).await?;
        Ok(Forwarded {
            moved,
            next_due_ms: next
                .parse::<f64>()
                .ok()
                .filter(|n| *n >= 0.0)
                .map(|n| n as u64),
        })
    }

    /// Trims a fan-out stream behind the slowest of `groups` (`trim_fanout.lua`); returns
    /// how many entries went.
    pub(crate) async fn trim_fanout(&self, stream: &str, groups: &[String]) -> Result<i64> {
        let mut p = Pipeline::new();
        p.add_command(super::evalsha(
            ScriptId::TrimFanout,
            &[stream],
            groups.iter().map(|g| g.as_bytes()),
        ));
        let (n,): (i64,) = self.pipe(&p).await?;
        Ok(n)
    }

    /// One GCRA step of the rate limiter at `key`: 0 when a task may start now, else the
    /// µs to wait (`rate_limit.lua`).
    pub(crate) async fn rate_limit(&self, key: &str, interval_us: u64, burst: u32) -> Result<u64> {
        let (i, b) = (interval_us.to_string(), burst.to_string());
        let mut p = Pipeline::new();
        p.add_command(super::evalsha(
            ScriptId::RateLimit,
            &[key],
            [i.as_bytes(), b.as_bytes()],
        ));
        let (w,): (u64,) = self.pipe(&p).await?;
        Ok(w)
    }

    /// Creates `group` on `stream` (and the stream) if missing. The group starts at id 0 so
    /// it sees tasks enqueued before any worker ran; an existing group is fine.
    pub async fn ensure_group(&self, stream: &str, group: &str) -> Result<()> {
        Ok(super::create_group(&mut self.c(), stream, group).await?)
    }

    /// Creates every group of a queue on both lanes and records the queue in the registry.
    pub(crate) async fn ensure_queue(&self, keys: &QueueKeys, groups: &[String]) -> Result<()> {
        for stream in [&keys.stream, &keys.express] {
            for g in groups {
                self.ensure_group(stream, g).await?;
            }
        }
        redis::cmd("SADD")
            .arg(crate::keys::queues_registry())
            .arg(&keys.queue)
            .query_async::<()>(&mut self.c())
            .await?;
        Ok(())
    }

    /// How many partitions the queue of `keys` has (`ts:{q}:partitions`; 1 when unset or
    /// unreadable as a number in range).
    pub(crate) async fn partitions(&self, keys: &QueueKeys) -> Result<u32> {
        let v: Option<String> = redis::cmd("GET")
            .arg(keys.partitions_key())
            .query_async(&mut self.c())
            .await?;
        Ok(v.and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|n| (1..=crate::keys::MAX_PARTITIONS).contains(n))
            .unwrap_or(1))
    }

    /// Records that the queue of `keys` has `n` partitions.
    pub(crate) async fn set_partitions(&self, keys: &QueueKeys, n: u32) -> Result<()> {
        redis::cmd("SET")
            .arg(keys.partitions_key())
            .arg(n)
            .query_async::<()>(&mut self.c())
            .await?;
        Ok(())
    }

    /// Whether the queue is paused, and the signals after `after` (at most 1000).
    pub(crate) async fn poll_signals(
        &self,
        keys: &QueueKeys,
        after: &str,
    ) -> Result<(bool, Vec<RawEntry>)> {
        let mut p = Pipeline::new();
        p.cmd("EXISTS").arg(&keys.paused);
        p.cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("STREAMS")
            .arg(&keys.signals)
            .arg(after);
        let (paused, v): (u64, Value) = p.query_async(&mut self.c()).await?;
        Ok((paused > 0, super::parse_read_reply(v)))
    }

    /// Tells operators (and `queue pause`) which state this replica applied.
    pub(crate) async fn ack_pause_state(
        &self,
        keys: &QueueKeys,
        consumer: &str,
        paused: bool,
    ) -> Result<()> {
        redis::cmd("HSET")
            .arg(&keys.pause_acks)
            .arg(consumer)
            .arg(if paused { "paused" } else { "running" })
            .query_async::<()>(&mut self.c())
            .await?;
        Ok(())
    }

    /// `entries-added` of a stream (Redis ≥ 7), 0 when unknown. Through `stream_meta.lua`:
    /// `XINFO STREAM` itself would send the stream's first and last entries whole.
    pub(crate) async fn entries_added(&self, stream: &str) -> u64 {
        let mut p = Pipeline::new();
        p.add_command(super::evalsha(
            ScriptId::StreamMeta,
            &[stream],
            std::iter::empty::<&str>(),
        ));
        let v: Result<(Value,)> = self.pipe(&p).await;
        match v {
            Ok((Value::Array(meta),)) => match meta.get(1) {
                Some(Value::Int(n)) => (*n).max(0) as u64,
                _ => 0,
            },
            _ => 0,
        }
    }
}
