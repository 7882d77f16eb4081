//! What operators read and repair: queue statistics, the queue registry, live workers,
//! completion counters and the dead-letter stream. `stats`, the collector's gauges, the
//! inspector (and through it the CLI) all read through these methods, so every view of a
//! queue is computed the same way.

use redis::{Pipeline, Value};

use super::{parse, Broker};
use crate::dlq::DeadLetter;
use crate::error::Result;
use crate::keys::{queues_registry, QueueKeys};
use crate::stats::{GroupStats, QueueCounters, QueueStats};
use crate::task::{entry_id_ms, entry_order, now_ms};

fn field<'a>(flat: &'a [Value], name: &str) -> Option<&'a Value> {
    flat.chunks(2).find_map(|kv| match kv {
        [Value::BulkString(k), v] if k == name.as_bytes() => Some(v),
        [Value::SimpleString(k), v] if k == name => Some(v),
        _ => None,
    })
}

fn as_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Int(i) => Some(*i as u64),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn as_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Parses an `XINFO GROUPS` reply (RESP2 flat arrays or RESP3 maps).
pub(crate) fn parse_groups(v: Value, lane: &str) -> Vec<GroupStats> {
    let Value::Array(groups) = v else {
        return Vec::new();
    };
    groups
        .into_iter()
        .filter_map(|g| {
            let flat = match g {
                Value::Array(a) => a,
                Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                _ => return None,
            };
            Some(GroupStats {
                name: as_string(field(&flat, "name"))?,
                lane: lane.to_string(),
                consumers: as_u64(field(&flat, "consumers")).unwrap_or(0),
                pending: as_u64(field(&flat, "pending")).unwrap_or(0),
                lag: as_u64(field(&flat, "lag")),
            })
        })
        .collect()
}

impl Broker {
    /// The queue names in the registry (`ts:queues`), unsorted.
    pub(crate) async fn registered_queues(&self) -> Result<Vec<String>> {
        Ok(redis::cmd("SMEMBERS")
            .arg(queues_registry())
            .query_async(&mut self.c())
            .await?)
    }

    /// The groups of one lane stream (`XINFO GROUPS`); none when the stream is missing.
    async fn lane_groups(&self, stream: &str, lane: &str) -> Vec<GroupStats> {
        let r: redis::RedisResult<Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut self.c())
            .await;
        r.map(|v| parse_groups(v, lane)).unwrap_or_default()
    }

    /// Reads the statistics of `queue` (one pipelined round trip plus `XINFO GROUPS` of
    /// each lane). Workers count as live when they beat within `lapse_ms`. Read commands
    /// only (the operator role); the oldest entry of each lane crosses the wire whole.
    pub(crate) async fn queue_stats(&self, queue: &str, lapse_ms: u64) -> Result<QueueStats> {
        self.queue_stats_by(queue, lapse_ms, false).await
    }

    /// [`Broker::queue_stats`] for the worker's periodic samplers (collector, SLA loop):
    /// the oldest entries' ids come from `stream_meta.lua`, so a large entry at the head
    /// of a lane never crosses the wire (nor grows the shared connection's read buffer).
    /// Needs `EVALSHA` (the worker role has it).
    pub(crate) async fn queue_stats_ids_only(
        &self,
        queue: &str,
        lapse_ms: u64,
    ) -> Result<QueueStats> {
        self.queue_stats_by(queue, lapse_ms, true).await
    }

    /// The stats of every partition of `queue`, added up: lengths and counts summed,
    /// oldest ages the oldest, paused when any partition is, live workers as partition 0
    /// counts them (every worker reads every partition), groups merged by name and lane.
    async fn queue_stats_by(
        &self,
        queue: &str,
        lapse_ms: u64,
        ids_only: bool,
    ) -> Result<QueueStats> {
        let n = self.partitions(&QueueKeys::new(queue)).await?;
        let mut total = self
            .partition_stats(&QueueKeys::new(queue), lapse_ms, ids_only)
            .await?;
        let owners = if n > 1 {
            self.slot_owners().await.unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut by_partition = Vec::new();
        let mut add = |p: u32, s: &QueueStats| {
            if n > 1 {
                let tag = crate::keys::partition_tag(queue, p);
                let slot = crate::keys::slot(&tag);
                by_partition.push(crate::stats::PartitionStats {
                    partition: p,
                    node: owners
                        .iter()
                        .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))
                        .map(|(_, _, n)| n.clone()),
                    tag,
                    slot,
                    bulk_length: s.bulk_length,
                    express_length: s.express_length,
                    scheduled: s.scheduled,
                    dead_letters: s.dead_letters,
                });
            }
        };
        add(0, &total);
        for p in 1..n {
            let s = self
                .partition_stats(&QueueKeys::partition(queue, p), lapse_ms, ids_only)
                .await?;
            add(p, &s);
            total.bulk_length += s.bulk_length;
            total.express_length += s.express_length;
            total.scheduled += s.scheduled;
            total.dead_letters += s.dead_letters;
            total.parked += s.parked;
            total.parked_keys += s.parked_keys;
            total.oldest_bulk_age_seconds =
                total.oldest_bulk_age_seconds.max(s.oldest_bulk_age_seconds);
            total.oldest_express_age_seconds = total
                .oldest_express_age_seconds
                .max(s.oldest_express_age_seconds);
            total.paused |= s.paused;
            for g in s.groups {
                match total
                    .groups
                    .iter_mut()
                    .find(|t| t.name == g.name && t.lane == g.lane)
                {
                    Some(t) => {
                        t.consumers = t.consumers.max(g.consumers);
                        t.pending += g.pending;
                        t.lag = match (t.lag, g.lag) {
                            (Some(a), Some(b)) => Some(a + b),
                            _ => None,
                        };
                    }
                    None => total.groups.push(g),
                }
            }
        }
        total.partitions = n;
        total.by_partition = by_partition;
        Ok(total)
    }

    /// The slot ranges of a Redis Cluster and the master (`host:port`) of each; empty on
    /// one server (`CLUSTER SLOTS` refused there).
    pub(crate) async fn slot_owners(&self) -> Result<Vec<(u16, u16, String)>> {
        if !self.is_cluster() {
            return Ok(Vec::new());
        }
        let v: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut self.c())
            .await?;
        let mut out = Vec::new();
        if let Value::Array(ranges) = v {
            for r in ranges {
                let Value::Array(r) = r else { continue };
                let (Some(lo), Some(hi), Some(Value::Array(node))) =
                    (r.first(), r.get(1), r.get(2))
                else {
                    continue;
                };
                let lo: u16 = redis::from_redis_value(lo.clone()).unwrap_or(0);
                let hi: u16 = redis::from_redis_value(hi.clone()).unwrap_or(0);
                let host: String = node
                    .first()
                    .and_then(|h| redis::from_redis_value(h.clone()).ok())
                    .unwrap_or_default();
                let port: u16 = node
                    .get(1)
                    .and_then(|p| redis::from_redis_value(p.clone()).ok())
                    .unwrap_or(0);
                out.push((lo, hi, format!("{host}:{port}")));
            }
        }
        Ok(out)
    }

    async fn partition_stats(
        &self,
        k: &QueueKeys,
        lapse_ms: u64,
        ids_only: bool,
    ) -> Result<QueueStats> {
        let queue = k.queue.as_str();
        let now = now_ms();
        let mut p = Pipeline::new();
        p.cmd("XLEN").arg(&k.stream);
        p.cmd("XLEN").arg(&k.express);
        p.cmd("ZCARD").arg(&k.scheduled);
        p.cmd("XLEN").arg(&k.dlq);
        for lane in [&k.stream, &k.express] {
            if ids_only {
                p.add_command(super::evalsha(
                    super::ScriptId::StreamMeta,
                    &[lane],
                    std::iter::empty::<&str>(),
                ));
            } else {
                p.cmd("XRANGE")
                    .arg(lane)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1);
            }
        }
        p.cmd("ZCOUNT")
            .arg(&k.heartbeats)
            .arg(now.saturating_sub(lapse_ms))
            .arg("+inf");
        p.cmd("EXISTS").arg(&k.paused);
        p.cmd("ZCARD").arg(k.keyed());
        let (bl, el, sc, dl, ob, oe, live, paused, keyed): (
            u64,
            u64,
            u64,
            u64,
            Value,
            Value,
            u64,
            u64,
            u64,
        ) = self.pipe(&p).await?;
        let (parked, parked_keys) = match keyed {
            0 => (0, 0),
            _ => self.parked(k, 100).await?,
        };
        let age = |v: Value| -> f64 {
            let id = match v {
                // stream_meta.lua: [oldest id or nil, entries-added].
                Value::Array(meta) if ids_only => match meta.into_iter().next() {
                    Some(Value::BulkString(id)) => String::from_utf8(id).ok(),
                    _ => None,
                },
                entries => parse::entries(entries).into_iter().next().map(|e| e.id),
            };
            id.and_then(|id| entry_id_ms(&id))
                .map(|ms| now.saturating_sub(ms) as f64 / 1000.0)
                .unwrap_or(0.0)
        };
        let mut groups = self.lane_groups(&k.stream, "bulk").await;
        groups.extend(self.lane_groups(&k.express, "express").await);
        Ok(QueueStats {
            queue: queue.to_string(),
            bulk_length: bl,
            express_length: el,
            scheduled: sc,
            dead_letters: dl,
            oldest_bulk_age_seconds: age(ob),
            oldest_express_age_seconds: age(oe),
            live_workers: live,
            paused: paused > 0,
            groups,
            parked,
            parked_keys,
            partitions: 1,
            by_partition: Vec::new(),
        })
    }

    /// Worker processes of `queue` that beat within `lapse_ms`: those of every consumer
    /// group of its bulk stream (the default group's set is counted even without a
    /// stream) and those of every pool its routes name (`ts:{q}:heartbeats:pool:<p>`).
    pub(crate) async fn live_workers(&self, queue: &str, lapse_ms: u64) -> Result<u64> {
        let sets = self.heartbeat_sets(queue).await?;
        let since = now_ms().saturating_sub(lapse_ms);
        let mut p = Pipeline::new();
        for s in &sets {
            p.cmd("ZCOUNT").arg(s).arg(since).arg("+inf");
        }
        let counts: Vec<u64> = self.pipe(&p).await?;
        Ok(counts.into_iter().sum())
    }

    /// The names of the consumers of `queue` (every group and pool, as
    /// [`Broker::live_workers`] counts them) that beat within `lapse_ms`, sorted, each once.
    pub(crate) async fn live_consumers(&self, queue: &str, lapse_ms: u64) -> Result<Vec<String>> {
        let sets = self.heartbeat_sets(queue).await?;
        let since = now_ms().saturating_sub(lapse_ms);
        let mut p = Pipeline::new();
        for s in &sets {
            p.cmd("ZRANGEBYSCORE").arg(s).arg(since).arg("+inf");
        }
        let names: Vec<Vec<String>> = self.pipe(&p).await?;
        let mut names: Vec<String> = names.into_iter().flatten().collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// The consumers of `queue` that beat within `lapse_ms`, with what each reported of
    /// itself (`ts:{q}:workers`) and its pending entries on each lane (`XINFO CONSUMERS`),
    /// sorted by name.
    pub(crate) async fn workers(
        &self,
        queue: &str,
        lapse_ms: u64,
    ) -> Result<Vec<crate::inspect::WorkerInfo>> {
        let sets = self.heartbeat_sets(queue).await?;
        let since = now_ms().saturating_sub(lapse_ms);
        let mut p = Pipeline::new();
        for s in &sets {
            p.cmd("ZRANGEBYSCORE")
                .arg(s)
                .arg(since)
                .arg("+inf")
                .arg("WITHSCORES");
        }
        let beats: Vec<Vec<(String, u64)>> = self.pipe(&p).await?;
        let mut last: std::collections::BTreeMap<String, u64> = Default::default();
        for (c, t) in beats.into_iter().flatten() {
            let e = last.entry(c).or_insert(0);
            *e = (*e).max(t);
        }
        let info: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(crate::keys::workers_info(queue))
            .query_async(&mut self.c())
            .await?;
        let k = QueueKeys::new(queue);
        let mut pending: std::collections::HashMap<String, (u64, u64)> = Default::default();
        for (i, stream) in [&k.stream, &k.express].into_iter().enumerate() {
            let r: redis::RedisResult<Value> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(stream)
                .arg(crate::keys::DEFAULT_GROUP)
                .query_async(&mut self.c())
                .await;
            let Ok(Value::Array(list)) = r else { continue };
            for c in list {
                let flat = match c {
                    Value::Array(a) => a,
                    Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                    _ => continue,
                };
                let (Some(name), Some(n)) = (
                    as_string(field(&flat, "name")),
                    as_u64(field(&flat, "pending")),
                ) else {
                    continue;
                };
                let e = pending.entry(name).or_insert((0, 0));
                if i == 0 {
                    e.0 = n
                } else {
                    e.1 = n
                }
            }
        }
        Ok(last
            .into_iter()
            .map(|(consumer, beat)| {
                let v: serde_json::Value = info
                    .get(&consumer)
                    .and_then(|j| serde_json::from_str(j).ok())
                    .unwrap_or_default();
                let (pb, pe) = pending.get(&consumer).copied().unwrap_or((0, 0));
                crate::inspect::WorkerInfo::from_parts(consumer, beat, &v, pb, pe)
            })
            .collect())
    }

    /// Each consumer's applied pause state (`ts:{q}:pause_acks`): true where it reported
    /// `paused`.
    pub(crate) async fn pause_states(
        &self,
        queue: &str,
    ) -> Result<std::collections::HashMap<String, bool>> {
        // On a partitioned queue each partition's readers report on their own: a consumer
        // is paused once every partition says so.
        let n = self.partitions(&QueueKeys::new(queue)).await?;
        let mut out: std::collections::HashMap<String, bool> = Default::default();
        for part in 0..n {
            let m: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
                .arg(QueueKeys::partition(queue, part).pause_acks)
                .query_async(&mut self.c())
                .await?;
            if part == 0 {
                out = m.into_iter().map(|(k, v)| (k, v == "paused")).collect();
            } else {
                for (c, paused) in out.iter_mut() {
                    *paused &= m.get(c).is_some_and(|v| v == "paused");
                }
            }
        }
        Ok(out)
    }

    /// The heartbeat sets of `queue`: one per consumer group of its bulk stream (the
    /// default group's even without a stream) and one per pool its routes name.
    async fn heartbeat_sets(&self, queue: &str) -> Result<Vec<String>> {
        let k = QueueKeys::new(queue);
        let mut sets: Vec<String> = self
            .lane_groups(&k.stream, "bulk")
            .await
            .into_iter()
            .map(|g| k.heartbeats_for(&g.name))
            .collect();
        if !sets.contains(&k.heartbeats) {
            sets.push(k.heartbeats.clone());
        }
        let mut pools: Vec<String> = redis::cmd("HVALS")
            .arg(&k.routes)
            .query_async(&mut self.c())
            .await?;
        pools.sort();
        pools.dedup();
        sets.extend(
            pools
                .iter()
                .map(|p| QueueKeys::pooled(queue, Some(p)).heartbeats),
        );
        Ok(sets)
    }

    /// The completion counters of each queue (`ts:{q}:counters`, kept by the ackers).
    pub(crate) async fn counters(&self, queues: &[String]) -> Result<Vec<QueueCounters>> {
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = queues.iter().map(|q| QueueKeys::new(q).counters).collect();
        let cmds = keys.iter().map(|k| {
            let mut c = redis::cmd("HMGET");
            c.arg(k).arg("done").arg("retried").arg("dead");
            (k.as_str(), c)
        });
        let v = self.pipe_per_slot(cmds.collect()).await?;
        let v: Vec<(Option<u64>, Option<u64>, Option<u64>)> = v
            .into_iter()
            .map(redis::from_redis_value)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| crate::Error::Redis(e.into()))?;
        Ok(queues
            .iter()
            .zip(v)
            .map(|(q, (d, r, x))| QueueCounters {
                queue: q.clone(),
                done: d.unwrap_or(0),
                retried: r.unwrap_or(0),
                dead: x.unwrap_or(0),
            })
            .collect())
    }

    /// Up to `count` dead letters of `queue` with ids in `[start, end]` (`-`/`+` for the
    /// ends, `(id` for exclusive), oldest first, and the stream's total length.
    pub(crate) async fn dead_letters(
        &self,
        queue: &str,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<(Vec<DeadLetter>, u64)> {
        let n = self.partitions(&QueueKeys::new(queue)).await?;
        let (mut all, mut total) = (Vec::new(), 0);
        for part in 0..n {
            let (dl, t) = self
                .partition_dead_letters(&QueueKeys::partition(queue, part), start, end, count)
                .await?;
            all.extend(dl);
            total += t;
        }
        if n > 1 {
            // One page in id order over every partition: the next page's `(id` start
            // continues it in each partition alike.
            all.sort_by_key(|d: &DeadLetter| entry_order(&d.dlq_id));
            all.truncate(count);
        }
        Ok((all, total))
    }

    async fn partition_dead_letters(
        &self,
        k: &QueueKeys,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<(Vec<DeadLetter>, u64)> {
        let mut p = Pipeline::new();
        p.cmd("XRANGE")
            .arg(&k.dlq)
            .arg(start)
            .arg(end)
            .arg("COUNT")
            .arg(count);
        p.cmd("XLEN").arg(&k.dlq);
        let (v, total): (Value, u64) = self.pipe(&p).await?;
        Ok((
            parse::entries(v)
                .into_iter()
                .map(DeadLetter::from)
                .collect(),
            total,
        ))
    }

    /// The id of the newest dead letter of `queue`, if any.
    pub(crate) async fn newest_dead_letter_id(&self, queue: &str) -> Result<Option<String>> {
        let n = self.partitions(&QueueKeys::new(queue)).await?;
        let mut newest: Option<String> = None;
        for part in 0..n {
            let dlq = QueueKeys::partition(queue, part).dlq;
            if let Some(id) = self.newest_entry_id(&dlq).await? {
                if newest
                    .as_deref()
                    .is_none_or(|n| entry_order(&id) > entry_order(n))
                {
                    newest = Some(id);
                }
            }
        }
        Ok(newest)
    }

    /// Moves dead letter `dlq_id` back to its lane with attempt 1 (`requeue.lua`).
    /// Returns 1 when requeued, 0 when gone, -1 when it holds no task.
    /// On a partitioned queue each partition is tried in turn until one holds the id.
    pub(crate) async fn requeue_dead_letter(&self, queue: &str, dlq_id: &str) -> Result<i64> {
        let n = self.partitions(&QueueKeys::new(queue)).await?;
        for part in 0..n {
            let r = self
                .requeue_in(&QueueKeys::partition(queue, part), dlq_id)
                .await?;
            if r != 0 {
                return Ok(r);
            }
        }
        Ok(0)
    }

    async fn requeue_in(&self, k: &QueueKeys, dlq_id: &str) -> Result<i64> {
        let mut p = Pipeline::new();
        p.add_command(super::evalsha(
            super::ScriptId::Requeue,
            &[&k.dlq, &k.stream, &k.express],
            vec![
                dlq_id.as_bytes().to_vec(),
                now_ms().to_string().into_bytes(),
            ],
        ));
        let (r,): (i64,) = self.pipe(&p).await?;
        Ok(r)
    }

    /// Deletes the dead-letter stream of `queue` in one transaction; returns how many
    /// entries it held.
    pub(crate) async fn purge_dead_letters(&self, queue: &str) -> Result<u64> {
        let parts = self.partitions(&QueueKeys::new(queue)).await?;
        let mut purged = 0;
        for part in 0..parts {
            let k = QueueKeys::partition(queue, part);
            let mut p = Pipeline::new();
            p.atomic()
                .cmd("XLEN")
                .arg(&k.dlq)
                .cmd("DEL")
                .arg(&k.dlq)
                .ignore();
            let (n,): (u64,) = self.pipe(&p).await?;
            purged += n;
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_xinfo_groups() {
        let bs = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let v = Value::Array(vec![Value::Array(vec![
            bs("name"),
            bs("taskstream"),
            bs("consumers"),
            Value::Int(2),
            bs("pending"),
            Value::Int(5),
            bs("last-delivered-id"),
            bs("1-0"),
            bs("lag"),
            Value::Int(7),
        ])]);
        let g = parse_groups(v, "bulk");
        assert_eq!(
            g,
            vec![GroupStats {
                name: "taskstream".into(),
                lane: "bulk".into(),
                consumers: 2,
                pending: 5,
                lag: Some(7)
            }]
        );
    }
}
