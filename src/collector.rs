//! The collector: samples queue-level gauges from Redis (stream length, pending, lag,
//! oldest age, scheduled, dead letters, live workers) every `collect_interval`, so every
//! replica exports the same truth and dashboards aggregate with `max by (queue)`.
//! It also keeps `taskstream_redis_up` honest with a PING when nothing else talks.

use std::collections::HashMap;
use std::time::Duration;

use crate::rdb::Conn;
use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::stats;

/// The master each partition's series was last exported under: (queue, partition) →
/// node. When a reshard or failover moves a partition, the old series is set to 0, so
/// `max by (queue, partition)` stays right and the old node shows nothing.
pub type PartitionNodes = HashMap<(String, u32), String>;

/// Samples once: one pipelined read per queue (and partition).
pub async fn sample(
    conn: &mut Conn,
    queues: &[String],
    lapse_ms: u64,
    nodes: &mut PartitionNodes,
) -> crate::Result<Vec<stats::QueueStats>> {
    let mut out = Vec::new();
    for q in queues {
        // Ids only: a large entry at the head of a lane must not cross the wire every
        // interval (the shared connection would keep a read buffer its size).
        let s = crate::rdb::Broker::new(conn.clone())
            .queue_stats_ids_only(q, lapse_ms)
            .await?;
        let name = s.queue.clone();
        metrics::gauge!(m::STREAM_LENGTH, "queue" => name.clone(), "lane" => "bulk")
            .set(s.bulk_length as f64);
        metrics::gauge!(m::STREAM_LENGTH, "queue" => name.clone(), "lane" => "express")
            .set(s.express_length as f64);
        metrics::gauge!(m::SCHEDULED, "queue" => name.clone()).set(s.scheduled as f64);
        metrics::gauge!(m::DLQ_LENGTH, "queue" => name.clone()).set(s.dead_letters as f64);
        metrics::gauge!(m::PARKED, "queue" => name.clone()).set(s.parked as f64);
        metrics::gauge!(m::OLDEST_AGE_SECONDS, "queue" => name.clone(), "lane" => "bulk")
            .set(s.oldest_bulk_age_seconds);
        metrics::gauge!(m::OLDEST_AGE_SECONDS, "queue" => name.clone(), "lane" => "express")
            .set(s.oldest_express_age_seconds);
        metrics::gauge!(m::ACTIVE_WORKERS, "queue" => name.clone()).set(s.live_workers as f64);
        for g in &s.groups {
            metrics::gauge!(m::PENDING, "queue" => name.clone(), "lane" => g.lane.clone(), "group" => g.name.clone()).set(g.pending as f64);
            if let Some(lag) = g.lag {
                metrics::gauge!(m::LAG, "queue" => name.clone(), "lane" => g.lane.clone(), "group" => g.name.clone()).set(lag as f64);
            }
        }
        for p in &s.by_partition {
            let node = p.node.clone().unwrap_or_default();
            let part = p.partition.to_string();
            if let Some(old) = nodes.insert((name.clone(), p.partition), node.clone()) {
                if old != node {
                    for lane in ["bulk", "express"] {
                        metrics::gauge!(m::PARTITION_STREAM_LENGTH, "queue" => name.clone(), "partition" => part.clone(), "lane" => lane, "node" => old.clone()).set(0.0);
                    }
                }
            }
            metrics::gauge!(m::PARTITION_STREAM_LENGTH, "queue" => name.clone(), "partition" => part.clone(), "lane" => "bulk", "node" => node.clone())
                .set(p.bulk_length as f64);
            metrics::gauge!(m::PARTITION_STREAM_LENGTH, "queue" => name.clone(), "partition" => part, "lane" => "express", "node" => node)
                .set(p.express_length as f64);
        }
        out.push(s);
    }
    // Circuit breakers: every replica exports the state Redis holds (crate::breaker).
    for b in crate::rdb::Broker::new(conn.clone()).breakers().await? {
        if let Some(st) = crate::breaker::State::parse(&b.state) {
            metrics::gauge!(m::BREAKER_STATE, "target" => b.target).set(st.gauge());
        }
    }
    Ok(out)
}

/// Runs until `stop` fires.
pub async fn run(
    conn: Conn,
    queues: Vec<String>,
    interval: Duration,
    lapse_ms: u64,
    stop: CancellationToken,
) {
    let mut conn = conn;
    let mut nodes = PartitionNodes::new();
    while !stop.is_cancelled() {
        match sample(&mut conn, &queues, lapse_ms, &mut nodes).await {
            Ok(_) => crate::health::set_redis_up(true),
            Err(e) => {
                if !e.is_no_permission() {
                    crate::health::set_redis_up(false);
                }
                metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => "collect").increment(1);
                tracing::debug!(error = %e, "collector: redis error");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
