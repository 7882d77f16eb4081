//! Every metric name in one place, with its labels and meaning.
//!
//! Names are prefixed `taskstream_` and carry their unit (`_seconds`, `_total`, `_bytes`).
//! The alert rules in `alerts/`, the dashboard in `dashboards/` and the runbooks refer to
//! these names; `tests/ops_contract.rs` checks that every name used there exists here.
//!
//! Counters and histograms are recorded by the process that does the work. Queue-level
//! gauges (stream length, pending, lag, oldest pending age, dead letters, sagas by state)
//! are sampled from Redis by the collector (`collector.rs`), so every replica reports the
//! same truth and `max by (queue)` is the right aggregation for them.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Tasks accepted by a producer. Labels: queue, lane.
pub const ENQUEUED_TOTAL: &str = "taskstream_tasks_enqueued_total";
/// Enqueues answered as duplicates of an earlier idempotency key. Labels: queue.
pub const ENQUEUE_DUPLICATES_TOTAL: &str = "taskstream_enqueue_duplicates_total";
/// Finished task executions. Labels: queue, type, outcome (succeeded, retried, dead, cancelled).
pub const COMPLETED_TOTAL: &str = "taskstream_tasks_completed_total";
/// Tasks sent to the dead-letter stream. Labels: queue, reason (failed, exhausted,
/// unknown_type, malformed, poison, timeout).
pub const DEAD_LETTERED_TOTAL: &str = "taskstream_tasks_dead_lettered_total";
/// Handler run time. Labels: queue, type. Histogram.
pub const HANDLER_DURATION_SECONDS: &str = "taskstream_handler_duration_seconds";
/// Time from the entry entering its stream to handler start. Labels: queue, lane. Histogram.
pub const WAIT_SECONDS: &str = "taskstream_wait_seconds";
/// ACK round trips. Labels: queue, result (ok, error).
pub const ACK_TOTAL: &str = "taskstream_ack_total";
/// ACK round trips retried after an error. Labels: queue.
pub const ACK_RETRIES_TOTAL: &str = "taskstream_ack_retries_total";
/// ACKs that could not be confirmed (left pending for recovery). Labels: queue.
pub const ACK_FAILURES_TOTAL: &str = "taskstream_ack_failures_total";
/// OTLP span export requests (`[tracing] otlp_endpoint`). Labels: result (ok, error).
pub const TRACE_EXPORTS_TOTAL: &str = "taskstream_trace_exports_total";
/// Spans in OTLP exports. Labels: result (exported, failed).
pub const TRACE_SPANS_TOTAL: &str = "taskstream_trace_spans_total";
/// Entries in a queue's stream (backlog + in flight). Labels: queue, lane. Gauge.
pub const STREAM_LENGTH: &str = "taskstream_stream_length";
/// Entries in one partition's stream of a partitioned queue (issue 11.6). Labels: queue,
/// partition, lane, node (the Redis Cluster master that holds the partition, `host:port`;
/// empty on one server). When a partition moves to another master, its series under the
/// old node is set to 0. Gauge.
pub const PARTITION_STREAM_LENGTH: &str = "taskstream_partition_stream_length";
/// Entries delivered and not yet acknowledged. Labels: queue, lane, group. Gauge.
pub const PENDING: &str = "taskstream_pending_entries";
/// Entries not yet delivered to a group (XINFO GROUPS lag). Labels: queue, lane, group. Gauge.
pub const LAG: &str = "taskstream_consumer_group_lag";
/// Age of the oldest waiting or pending entry. Labels: queue, lane. Gauge.
pub const OLDEST_AGE_SECONDS: &str = "taskstream_oldest_task_age_seconds";
/// Tasks waiting in the schedule (delayed or retrying). Labels: queue. Gauge.
pub const SCHEDULED: &str = "taskstream_scheduled_tasks";
/// Entries in the dead-letter stream. Labels: queue. Gauge.
pub const DLQ_LENGTH: &str = "taskstream_dead_letter_length";
/// Pending entries claimed from dead or stuck consumers. Labels: queue, reason (dead_consumer, idle).
pub const ORPHANS_RECOVERED_TOTAL: &str = "taskstream_orphans_recovered_total";
/// Time from the owner's last heartbeat to re-delivery. Labels: queue. Histogram.
pub const RECOVERY_DELAY_SECONDS: &str = "taskstream_recovery_delay_seconds";
/// Dead consumers removed from a group. Labels: queue.
pub const CONSUMERS_REMOVED_TOTAL: &str = "taskstream_dead_consumers_removed_total";
/// Tasks dead-lettered as poison (too many deliveries). Labels: queue.
pub const POISON_TOTAL: &str = "taskstream_poison_tasks_total";
/// Reconnects to Redis after a dropped connection. Labels: role (reader, commands).
pub const RECONNECTS_TOTAL: &str = "taskstream_redis_reconnects_total";
/// 1 while Redis answers, 0 while it does not. Gauge.
pub const REDIS_UP: &str = "taskstream_redis_up";
/// Redis commands that failed. Labels: op.
pub const REDIS_ERRORS_TOTAL: &str = "taskstream_redis_command_errors_total";
/// Live worker processes of a queue (fresh heartbeats). Labels: queue. Gauge.
pub const ACTIVE_WORKERS: &str = "taskstream_active_workers";
/// Configured concurrency of this process. Labels: queue. Gauge.
pub const CONCURRENCY: &str = "taskstream_worker_concurrency";
/// Tasks running now in this process. Labels: queue, lane. Gauge.
pub const IN_FLIGHT: &str = "taskstream_tasks_in_flight";
/// Replicas a queue needs to meet its latency objective. Labels: queue. Gauge.
pub const DESIRED_REPLICAS: &str = "taskstream_desired_replicas";
/// Tasks delivered to a pool that has no handler for them. Labels: queue, type.
pub const CROSS_TYPE_TOTAL: &str = "taskstream_cross_type_deliveries_total";
/// Saga state transitions. Labels: saga, from, to.
pub const SAGA_TRANSITIONS_TOTAL: &str = "taskstream_saga_transitions_total";
/// Sagas in each state. Labels: state. Gauge (sampled).
pub const SAGAS: &str = "taskstream_sagas";
/// Sagas past their deadline and not finished. Gauge (sampled).
pub const SAGAS_OVERDUE: &str = "taskstream_sagas_overdue";
/// Time from saga start to a final state. Labels: saga, state. Histogram.
pub const SAGA_DURATION_SECONDS: &str = "taskstream_saga_duration_seconds";
/// Compensations that exhausted their retries (saga left `failed`). Labels: saga, step.
pub const COMPENSATION_FAILURES_TOTAL: &str = "taskstream_compensation_failures_total";
/// 1 while a queue's delivery is paused, else 0. Labels: queue. Gauge.
pub const PAUSED: &str = "taskstream_queue_paused";
/// Runs cut off by shutdown (or held by a pause at shutdown) and handed back at once, on
/// the same attempt. Labels: queue. Counter.
pub const HANDED_BACK_TOTAL: &str = "taskstream_tasks_handed_back_total";
/// Settle batches that fewer than `redis.wait_replicas` replicas acknowledged in time: a
/// failover then may run those tasks again (never lose them). Labels: queue. Counter.
pub const SETTLES_NOT_REPLICATED_TOTAL: &str = "taskstream_settles_not_replicated_total";
/// Tasks that waited for a rate limit before starting. Labels: queue, type.
pub const THROTTLED_TOTAL: &str = "taskstream_tasks_throttled_total";
/// Concurrency the SLA controller currently allows. Labels: queue. Gauge.
pub const CONCURRENCY_TARGET: &str = "taskstream_concurrency_target";
/// Schedule ticks claimed by this process. Labels: schedule, outcome (fired, skipped,
/// paused). Each tick is counted once across all replicas: by the one that claimed it.
pub const SCHEDULE_TICKS_TOTAL: &str = "taskstream_schedule_ticks_total";
/// Ticks fired more than 1 s after their instant. Labels: schedule.
pub const SCHEDULE_LATE_TICKS_TOTAL: &str = "taskstream_schedule_late_ticks_total";
/// The next tick of a schedule, Unix seconds (every scheduler reports it). Labels:
/// schedule. Gauge.
pub const SCHEDULE_NEXT_FIRE: &str = "taskstream_schedule_next_fire_timestamp_seconds";
/// Tasks parked because their group key was at its `max_per_key` cap (each park counts;
/// a task can park again after a turn). Labels: queue.
pub const PARKED_TOTAL: &str = "taskstream_tasks_parked_total";
/// Tasks waiting in Redis for their group key's turn (`max_per_key`). Labels: queue. Gauge.
pub const PARKED: &str = "taskstream_parked_tasks";
/// A circuit breaker's state: 0 closed, 1 half-open, 2 open (sampled from Redis by every
/// replica). Labels: target. Gauge.
pub const BREAKER_STATE: &str = "taskstream_breaker_state";
/// Times a circuit breaker opened (counted by the replica whose call opened it). Labels:
/// target.
pub const BREAKER_OPENED_TOTAL: &str = "taskstream_breaker_opened_total";
/// Tasks held back (to the schedule, same attempt) by an open circuit breaker. Labels:
/// target.
pub const BREAKER_HELD_TOTAL: &str = "taskstream_breaker_held_total";
/// Build information: value 1. Labels: version.
pub const BUILD_INFO: &str = "taskstream_build_info";

/// Buckets of the latency histograms, in seconds: fine at the low end where the express
/// lane's objective sits, coarse up to minutes for slow handlers.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its handle.
/// Later calls return the same handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("static bucket list is non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. in tests); the handle then
            // renders only what was recorded through it, which is still well-formed.
            let _ = metrics::set_global_recorder(recorder);
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}
