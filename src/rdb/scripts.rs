//! The table of every Lua script taskstream runs, and how they are loaded.
//!
//! One row per script: an id, the file it comes from, and its source (embedded at build
//! time). Loading iterates the table, so a script added to it cannot be forgotten by the
//! NOSCRIPT recovery path (a restarted or failed-over Redis has an empty script cache).

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisError, Script};

/// A script of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum ScriptId {
    /// Idempotent enqueue (`enqueue_idem.lua`).
    EnqueueIdem,
    /// Scheduled set → stream (`forward.lua`).
    Forward,
    /// ACK + delete + retry/dead-letter/move/reply (`settle.lua`).
    Settle,
    /// Claim a dead consumer's entries (`claim_dead.lua`).
    ClaimDead,
    /// Claim long-idle entries (`claim_idle.lua`).
    ClaimIdle,
    /// Remove a dead consumer whose pending lists are empty (`remove_consumer.lua`).
    RemoveConsumer,
    /// Refresh the idle time of running entries (`touch.lua`).
    Touch,
    /// Trim a fan-out stream behind its slowest group (`trim_fanout.lua`).
    TrimFanout,
    /// Dead letter → queue (`requeue.lua`).
    Requeue,
    /// GCRA rate limiter (`rate_limit.lua`).
    RateLimit,
    /// Record a demo saga compensation once (`demo_record_undo.lua`).
    DemoRecordUndo,
    /// One saga transition, revision-guarded (`saga_apply.lua`).
    SagaApply,
    /// Remove dead orchestrator consumers (`saga_prune_consumers.lua`).
    SagaPruneConsumers,
    /// Outbox → queue stream, once per dispatch (`saga_relay.lua`, cluster only).
    SagaRelay,
    /// Oldest id and entries-added of a stream, without entry fields (`stream_meta.lua`).
    StreamMeta,
    /// Entries of a stream that match criteria, scanned in Redis (`scan_entries.lua`).
    ScanEntries,
    /// Claim a schedule's tick and add its task (`schedule_tick.lua`).
    ScheduleTick,
    /// Pause or resume a schedule (`schedule_pause.lua`).
    SchedulePause,
    /// Per-key concurrency: admit, release, sweep (`keylimit.lua`).
    KeyLimit,
    /// Circuit breaker: allow, record (`breaker.lua`).
    Breaker,
}

/// `(id, file, source)` of every script, in [`ScriptId`] order.
pub(crate) const TABLE: &[(ScriptId, &str, &str)] = &[
    (
        ScriptId::EnqueueIdem,
        "enqueue_idem.lua",
        include_str!("lua/enqueue_idem.lua"),
    ),
    (
        ScriptId::Forward,
        "forward.lua",
        include_str!("lua/forward.lua"),
    ),
    (
        ScriptId::Settle,
        "settle.lua",
        include_str!("lua/settle.lua"),
    ),
    (
        ScriptId::ClaimDead,
        "claim_dead.lua",
        include_str!("lua/claim_dead.lua"),
    ),
    (
        ScriptId::ClaimIdle,
        "claim_idle.lua",
        include_str!("lua/claim_idle.lua"),
    ),
    (
        ScriptId::RemoveConsumer,
        "remove_consumer.lua",
        include_str!("lua/remove_consumer.lua"),
    ),
    (ScriptId::Touch, "touch.lua", include_str!("lua/touch.lua")),
    (
        ScriptId::TrimFanout,
        "trim_fanout.lua",
        include_str!("lua/trim_fanout.lua"),
    ),
    (
        ScriptId::Requeue,
        "requeue.lua",
        include_str!("lua/requeue.lua"),
    ),
    (
        ScriptId::RateLimit,
        "rate_limit.lua",
        include_str!("lua/rate_limit.lua"),
    ),
    (
        ScriptId::DemoRecordUndo,
        "demo_record_undo.lua",
        include_str!("lua/demo_record_undo.lua"),
    ),
    (
        ScriptId::SagaApply,
        "saga_apply.lua",
        include_str!("lua/saga_apply.lua"),
    ),
    (
        ScriptId::SagaPruneConsumers,
        "saga_prune_consumers.lua",
        include_str!("lua/saga_prune_consumers.lua"),
    ),
    (
        ScriptId::SagaRelay,
        "saga_relay.lua",
        include_str!("lua/saga_relay.lua"),
    ),
    (
        ScriptId::StreamMeta,
        "stream_meta.lua",
        include_str!("lua/stream_meta.lua"),
    ),
    (
        ScriptId::ScanEntries,
        "scan_entries.lua",
        include_str!("lua/scan_entries.lua"),
    ),
    (
        ScriptId::ScheduleTick,
        "schedule_tick.lua",
        include_str!("lua/schedule_tick.lua"),
    ),
    (
        ScriptId::SchedulePause,
        "schedule_pause.lua",
        include_str!("lua/schedule_pause.lua"),
    ),
    (
        ScriptId::KeyLimit,
        "keylimit.lua",
        include_str!("lua/keylimit.lua"),
    ),
    (
        ScriptId::Breaker,
        "breaker.lua",
        include_str!("lua/breaker.lua"),
    ),
];

static COMPILED: LazyLock<Vec<Script>> =
    LazyLock::new(|| TABLE.iter().map(|(_, _, src)| Script::new(src)).collect());

/// The compiled script `id` (its SHA1 is computed once).
pub(crate) fn script(id: ScriptId) -> &'static Script {
    &COMPILED[id as usize]
}

/// True when Redis answered NOSCRIPT (scripts flushed, e.g. by a restart). A pipeline's
/// failures come back as one error that lists them, spelled `NoScript` by the redis crate.
pub(crate) fn is_noscript(e: &RedisError) -> bool {
    e.code() == Some("NOSCRIPT") || e.to_string().to_ascii_uppercase().contains("NOSCRIPT")
}

/// An `EVALSHA` of script `id` with `keys` and `args`, for pipelines.
pub(crate) fn evalsha<A: redis::ToRedisArgs>(
    id: ScriptId,
    keys: &[&str],
    args: impl IntoIterator<Item = A>,
) -> Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(script(id).get_hash()).arg(keys.len());
    for k in keys {
        c.arg(*k);
    }
    for a in args {
        c.arg(a);
    }
    c
}

/// Loads every script of the table (at start and after NOSCRIPT). One command per script,
/// not a pipeline: on a Redis Cluster a lone `SCRIPT LOAD` goes to every node, while a
/// pipeline without keys would go to one random node and leave the others without the
/// scripts (the first cluster test caught that).
pub(crate) async fn load_all(conn: &mut impl ConnectionLike) -> redis::RedisResult<()> {
    for (_, _, src) in TABLE {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(*src)
            .query_async::<()>(conn)
            .await?;
    }
    Ok(())
}

/// Runs `pipe`, loading the scripts and retrying once if Redis had lost them.
pub(crate) async fn query_pipe<T: redis::FromRedisValue>(
    conn: &mut impl ConnectionLike,
    pipe: &Pipeline,
) -> redis::RedisResult<T> {
    match pipe.query_async::<T>(conn).await {
        Err(e) if is_noscript(&e) => {
            load_all(conn).await?;
            pipe.query_async::<T>(conn).await
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_are_in_id_order() {
        for (i, (id, _, _)) in TABLE.iter().enumerate() {
            assert_eq!(
                *id as usize, i,
                "row {i} of the script table is out of order"
            );
        }
        assert_eq!(TABLE.len(), ScriptId::Breaker as usize + 1);
    }

    #[test]
    fn every_lua_file_is_in_the_table() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/rdb/lua");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".lua"))
            .collect();
        files.sort();
        let mut rows: Vec<String> = TABLE.iter().map(|(_, f, _)| f.to_string()).collect();
        rows.sort();
        assert_eq!(files, rows, "src/rdb/lua and the script table disagree");
    }
}
