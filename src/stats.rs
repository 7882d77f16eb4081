//! Queue statistics read from Redis: what `taskstream stats` prints and what the collector
//! exports as gauges. Read from Redis, not from process memory, so any replica (or the CLI
//! on an operator's laptop) reports the same truth.

use redis::aio::ConnectionManager;
use redis::Value;
use serde::Serialize;

use crate::error::Result;
use crate::keys::{queues_registry, QueueKeys, DEFAULT_GROUP};
use crate::task::{entry_id_ms, now_ms};

/// One consumer group of one lane.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupStats {
    /// Group name.
    pub name: String,
    /// Lane ("bulk" or "express").
    pub lane: String,
    /// Consumers registered in the group.
    pub consumers: u64,
    /// Delivered, not acknowledged.
    pub pending: u64,
    /// Not yet delivered to the group (Redis ≥ 7); `None` when Redis cannot tell.
    pub lag: Option<u64>,
}

/// One queue.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueueStats {
    /// Queue name.
    pub queue: String,
    /// Entries in the bulk stream (waiting + in flight).
    pub bulk_length: u64,
    /// Entries in the express stream.
    pub express_length: u64,
    /// Delayed or retrying tasks in the schedule.
    pub scheduled: u64,
    /// Entries in the dead-letter stream.
    pub dead_letters: u64,
    /// Age in seconds of the oldest entry still in the bulk stream.
    pub oldest_bulk_age_seconds: f64,
    /// Age in seconds of the oldest entry still in the express stream.
    pub oldest_express_age_seconds: f64,
    /// Worker processes with a fresh heartbeat (default group).
    pub live_workers: u64,
    /// Whether delivery is paused.
    pub paused: bool,
    /// Consumer groups of both lanes.
    pub groups: Vec<GroupStats>,
}

impl QueueStats {
    /// Pending entries over all groups and lanes.
    pub fn pending(&self) -> u64 {
        self.groups.iter().map(|g| g.pending).sum()
    }
    /// Lag over all groups and lanes (unknown counts as 0).
    pub fn lag(&self) -> u64 {
        self.groups.iter().map(|g| g.lag.unwrap_or(0)).sum()
    }
    /// Consumers of the default group (bulk lane).
    pub fn consumers(&self) -> u64 {
        self.groups
            .iter()
            .filter(|g| g.name == DEFAULT_GROUP && g.lane == "bulk")
            .map(|g| g.consumers)
            .sum()
    }
}

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

/// Parses an `XINFO GROUPS` reply.
pub fn parse_groups(v: Value, lane: &str) -> Vec<GroupStats> {
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

/// Names of all known queues: the registry set plus `extra` (e.g. configured queues).
pub async fn queue_names(conn: &mut ConnectionManager, extra: &[String]) -> Result<Vec<String>> {
    let mut names: Vec<String> = redis::cmd("SMEMBERS")
        .arg(queues_registry())
        .query_async(conn)
        .await?;
    for e in extra {
        if !names.contains(e) {
            names.push(e.clone());
        }
    }
    names.sort();
    Ok(names)
}

/// Reads the statistics of `queue` in one pipelined round trip.
pub async fn queue_stats(
    conn: &mut ConnectionManager,
    queue: &str,
    lapse_ms: u64,
) -> Result<QueueStats> {
    let k = QueueKeys::new(queue);
    let now = now_ms();
    let mut p = redis::Pipeline::new();
    p.cmd("XLEN").arg(&k.stream);
    p.cmd("XLEN").arg(&k.express);
    p.cmd("ZCARD").arg(&k.scheduled);
    p.cmd("XLEN").arg(&k.dlq);
    p.cmd("XRANGE")
        .arg(&k.stream)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1);
    p.cmd("XRANGE")
        .arg(&k.express)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1);
    p.cmd("ZCOUNT")
        .arg(&k.heartbeats)
        .arg(now.saturating_sub(lapse_ms))
        .arg("+inf");
    p.cmd("EXISTS").arg(&k.paused);
    let (bl, el, sc, dl, ob, oe, live, paused): (u64, u64, u64, u64, Value, Value, u64, u64) =
        p.query_async(conn).await?;
    let age = |v: Value| -> f64 {
        crate::rdb::parse_entries(v)
            .first()
            .and_then(|e| entry_id_ms(&e.id))
            .map(|ms| now.saturating_sub(ms) as f64 / 1000.0)
            .unwrap_or(0.0)
    };
    let mut groups = Vec::new();
    for (lane, key) in [("bulk", &k.stream), ("express", &k.express)] {
        let r: redis::RedisResult<Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(key)
            .query_async(conn)
            .await;
        if let Ok(v) = r {
            groups.extend(parse_groups(v, lane));
        }
    }
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
    })
}

/// Renders stats as a fixed-width table.
pub fn render_table(stats: &[QueueStats], rates: Option<&[f64]>) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<20} {:>9} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9} {:>8} {:>7} {:>10}\n",
        "QUEUE",
        "BULK",
        "EXPRESS",
        "PENDING",
        "LAG",
        "SCHED",
        "DEAD",
        "OLDEST_S",
        "WORKERS",
        "PAUSED",
        "DONE/S"
    ));
    for (i, s) in stats.iter().enumerate() {
        let rate = rates
            .and_then(|r| r.get(i))
            .map(|r| format!("{r:.0}"))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<20} {:>9} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9.1} {:>8} {:>7} {:>10}\n",
            s.queue,
            s.bulk_length,
            s.express_length,
            s.pending(),
            s.lag(),
            s.scheduled,
            s.dead_letters,
            s.oldest_bulk_age_seconds.max(s.oldest_express_age_seconds),
            s.live_workers,
            if s.paused { "yes" } else { "no" },
            rate
        ));
    }
    out
}

/// Tasks finished per queue so far (`ts:{q}:counters` field `done`, kept by the ackers),
/// for the throughput column of `stats --watch` and the demo's progress line.
pub async fn completed_counts(
    conn: &mut ConnectionManager,
    queues: &[String],
) -> Result<Vec<(String, u64)>> {
    let mut p = redis::Pipeline::new();
    for q in queues {
        p.cmd("HGET").arg(QueueKeys::new(q).counters).arg("done");
    }
    let v: Vec<Option<u64>> = p.query_async(conn).await?;
    Ok(queues
        .iter()
        .cloned()
        .zip(v.into_iter().map(|x| x.unwrap_or(0)))
        .collect())
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
