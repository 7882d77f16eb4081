//! Every Redis operation of the saga subsystem, as typed methods of [`Broker`].
//!
//! The saga code decides in pure Rust ([`super::decide`]) and talks to Redis only through
//! this file: it reads records ([`Record`]), runs the transition script
//! (`src/rdb/lua/saga_apply.lua`) for a [`Write`], reads the indexes for `saga list` and
//! the gauges, and moves replies and deadlines for the orchestrator. Callers pass and get
//! typed values, never [`redis::Value`]; `tests/broker_walls.rs` keeps every other saga
//! file free of hand-built commands, so a change of Redis topology (cluster slots, a
//! shared group reader) has this one file to touch.

use std::collections::HashMap;
use std::time::Duration;

use redis::Pipeline;

use super::decide::Write;
use super::keys;
use super::record::{f, is_terminal_name, Record, STATES};
use super::view::{HistoryEntry, SagaCounts, SagaSummary};
use crate::error::Result;
use crate::rdb::{Broker, RawEntry, ScriptId};

/// How long finished sagas are kept when no orchestrator published a setting (the
/// default of `orchestrator.retention_secs`).
pub(crate) const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 86_400);
/// Slack added to a step's own time budget before the orchestrator declares it timed
/// out, when no orchestrator published a setting (the default of
/// `orchestrator.step_grace_ms`): covers queueing and reply delivery.
pub(crate) const DEFAULT_STEP_GRACE: Duration = Duration::from_secs(5);

/// A saga as `saga show` reads it: record, history and time to expiry.
#[derive(Debug, Clone)]
pub(crate) struct SagaDump {
    /// The record.
    pub record: Record,
    /// Its history, oldest first (entries that do not parse are left out).
    pub history: Vec<HistoryEntry>,
    /// Time to expiry in ms; negative when the record does not expire (not ended).
    pub ttl_ms: i64,
}

/// Keys and arguments of one run of `saga_apply.lua` for `w` (layout documented in the
/// script's header).
fn script_args(w: &Write) -> (Vec<String>, Vec<Vec<u8>>) {
    let mut k = vec![
        keys::saga(&w.id),
        keys::history(&w.id),
        keys::DEADLINES.to_string(),
        keys::ACTIVE.to_string(),
        keys::state_index(w.from),
        keys::state_index(w.to),
        keys::SETTINGS.to_string(),
        crate::keys::queues_registry(),
    ];
    k.extend(w.dispatches.iter().map(|d| d.stream.clone()));
    let mut a: Vec<Vec<u8>> = Vec::with_capacity(32 + 2 * w.fields.len());
    let mut s = |v: String| a.push(v.into_bytes());
    s(w.expect_rev.to_string());
    s(w.new_rev.to_string());
    s(w.id.clone());
    s(w.now.to_string());
    s(DEFAULT_RETENTION.as_millis().to_string());
    s(DEFAULT_STEP_GRACE.as_millis().to_string());
    s(if w.finished() { "1" } else { "0" }.into());
    s(w.active_score.map(|v| v.to_string()).unwrap_or_default());
    s(serde_json::to_string(&w.history).unwrap_or_default());
    s(w.fields.len().to_string());
    for (name, v) in &w.fields {
        s(name.to_string());
        s(v.clone());
    }
    s(w.zrem.len().to_string());
    for m in &w.zrem {
        s(m.clone());
    }
    s(w.zadd.len().to_string());
    for (score, grace, m) in &w.zadd {
        s(score.to_string());
        s(if *grace { "1" } else { "0" }.into());
        s(m.clone());
    }
    s(w.dispatches.len().to_string());
    for d in &w.dispatches {
        let fields = d.task.encode();
        s(d.queue.clone());
        s(fields.len().to_string());
        for (name, v) in fields {
            s(name.to_string());
            s(v);
        }
    }
    (k, a)
}

impl Broker {
    /// Reads saga `id`; `None` when it does not exist (never did, or expired).
    pub(crate) async fn saga_record(&self, id: &str) -> Result<Option<Record>> {
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys::saga(id))
            .query_async(&mut self.c())
            .await?;
        Ok(Record::from_fields(id, h))
    }

    /// Runs the transition script for `w`: true when written, false when the record was
    /// not at `w.expect_rev` (another process moved it; decide again).
    pub(crate) async fn saga_apply(&self, w: &Write) -> Result<bool> {
        let (k, a) = script_args(w);
        let mut inv = crate::rdb::scripts::script(ScriptId::SagaApply).prepare_invoke();
        for key in &k {
            inv.key(key);
        }
        for arg in &a {
            inv.arg(arg.as_slice());
        }
        let (ok, _rev): (i64, String) = inv.invoke_async(&mut self.c()).await?;
        Ok(ok == 1)
    }

    /// Runs the creations `ws` in one pipeline (loading the script and resending the rest
    /// if Redis had lost it; a creation is never applied twice, since it requires the saga
    /// not to exist). Returns, per write, whether this call created it.
    pub(crate) async fn saga_create_many(&self, ws: &[Write]) -> Result<Vec<bool>> {
        let mut created = vec![false; ws.len()];
        let mut todo: Vec<usize> = (0..ws.len()).collect();
        for round in 0..2 {
            let mut p = Pipeline::with_capacity(todo.len());
            p.ignore_errors();
            for &i in &todo {
                let (k, a) = script_args(&ws[i]);
                let keys: Vec<&str> = k.iter().map(String::as_str).collect();
                p.add_command(crate::rdb::evalsha(ScriptId::SagaApply, &keys, a));
            }
            let results: Vec<redis::RedisResult<(i64, String)>> =
                p.query_async(&mut self.c()).await?;
            let mut again = Vec::new();
            let mut first_err = None;
            for (&i, r) in todo.iter().zip(results) {
                match r {
                    Ok((1, _)) => created[i] = true,
                    // Created by the first round, whose reply was an error for another entry.
                    Ok(_) => {}
                    Err(e) if crate::rdb::is_noscript(&e) && round == 0 => again.push(i),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(e.into());
            }
            if again.is_empty() {
                break;
            }
            crate::rdb::scripts::script(ScriptId::SagaApply)
                .prepare_invoke()
                .load_async(&mut self.c())
                .await?;
            todo = again;
        }
        Ok(created)
    }

    /// Record, history and time to expiry of saga `id`, in one round trip; `None` when it
    /// does not exist.
    pub(crate) async fn saga_dump(&self, id: &str) -> Result<Option<SagaDump>> {
        let mut p = Pipeline::with_capacity(3);
        p.cmd("HGETALL").arg(keys::saga(id));
        p.cmd("LRANGE").arg(keys::history(id)).arg(0).arg(-1);
        p.cmd("PTTL").arg(keys::saga(id));
        let (h, hist, ttl_ms): (HashMap<String, String>, Vec<String>, i64) = self.pipe(&p).await?;
        let Some(record) = Record::from_fields(id, h) else {
            return Ok(None);
        };
        let history = hist
            .iter()
            .filter_map(|h| serde_json::from_str(h).ok())
            .collect();
        Ok(Some(SagaDump {
            record,
            history,
            ttl_ms,
        }))
    }

    /// The summaries of the sagas in `states` that entered their state most recently, at
    /// most `limit`, newest first. Index entries whose record expired are skipped.
    pub(crate) async fn saga_list(
        &self,
        states: &[&str],
        limit: usize,
    ) -> Result<Vec<SagaSummary>> {
        if limit == 0 || states.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = Pipeline::with_capacity(states.len());
        for s in states {
            p.cmd("ZREVRANGE")
                .arg(keys::state_index(s))
                .arg(0)
                .arg(limit - 1)
                .arg("WITHSCORES");
        }
        let pages: Vec<Vec<(String, f64)>> = self.pipe(&p).await?;
        let mut all: Vec<(String, f64)> = pages.into_iter().flatten().collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        all.truncate(limit);
        if all.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = Pipeline::with_capacity(all.len());
        for (id, _) in &all {
            p.cmd("HMGET").arg(keys::saga(id)).arg(&[
                f::SAGA,
                f::STATUS,
                f::STEP_NAME,
                f::CREATED,
                f::UPDATED,
                f::ERROR,
            ]);
        }
        type Row = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<u64>,
            Option<u64>,
            Option<String>,
        );
        let rows: Vec<Row> = self.pipe(&p).await?;
        Ok(all
            .into_iter()
            .zip(rows)
            // An index entry whose record expired: skip it (trimmed later).
            .filter_map(|((id, _), (saga, status, step, created, updated, error))| {
                Some(SagaSummary {
                    id,
                    saga: saga?,
                    status: status.unwrap_or_default(),
                    current_step: step.filter(|s| !s.is_empty()),
                    created_at: created.unwrap_or(0),
                    updated_at: updated.unwrap_or(0),
                    error: error.filter(|e| !e.is_empty()),
                })
            })
            .collect())
    }

    /// Sagas per state (first dropping index entries of finished sagas past the
    /// retention) and the number past their deadline that have not ended, as of `now`.
    pub(crate) async fn saga_counts(&self, now: u64) -> Result<SagaCounts> {
        let retention: Option<u64> = redis::cmd("HGET")
            .arg(keys::SETTINGS)
            .arg("retention_ms")
            .query_async(&mut self.c())
            .await?;
        let cutoff = now.saturating_sub(retention.unwrap_or(DEFAULT_RETENTION.as_millis() as u64));
        let mut p = Pipeline::with_capacity(2 * STATES.len() + 1);
        for s in STATES.iter().filter(|s| is_terminal_name(s)) {
            p.cmd("ZREMRANGEBYSCORE")
                .arg(keys::state_index(s))
                .arg("-inf")
                .arg(format!("({cutoff}"))
                .ignore();
        }
        for s in STATES {
            p.cmd("ZCARD").arg(keys::state_index(s));
        }
        p.cmd("ZCOUNT").arg(keys::ACTIVE).arg("-inf").arg(now);
        let mut v: Vec<u64> = self.pipe(&p).await?;
        let overdue = v.pop().unwrap_or(0);
        Ok(SagaCounts {
            by_state: STATES.iter().map(|s| s.to_string()).zip(v).collect(),
            overdue,
        })
    }

    /// Creates the orchestrators' consumer group on the reply stream (if missing) and
    /// publishes the settings every process that moves sagas applies.
    pub(crate) async fn saga_setup(&self, retention_ms: u64, step_grace_ms: u64) -> Result<()> {
        self.saga_ensure_reply_group().await?;
        redis::cmd("HSET")
            .arg(keys::SETTINGS)
            .arg("retention_ms")
            .arg(retention_ms)
            .arg("step_grace_ms")
            .arg(step_grace_ms)
            .query_async::<()>(&mut self.c())
            .await?;
        Ok(())
    }

    /// Creates the orchestrators' consumer group on the reply stream if missing.
    pub(crate) async fn saga_ensure_reply_group(&self) -> Result<()> {
        crate::rdb::ensure_group(&mut self.c(), keys::REPLIES, keys::GROUP).await
    }

    /// Acknowledges and deletes the replies `ids` (applied, or found stale or malformed).
    pub(crate) async fn saga_ack_replies(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut p = Pipeline::with_capacity(2);
        p.cmd("XACK")
            .arg(keys::REPLIES)
            .arg(keys::GROUP)
            .arg(ids)
            .ignore();
        p.cmd("XDEL").arg(keys::REPLIES).arg(ids).ignore();
        self.pipe::<()>(&p).await
    }

    /// One page of `XAUTOCLAIM`: replies pending for longer than `min_idle` under any
    /// consumer, claimed by `consumer`. Returns the next cursor (`0-0` when done) and the
    /// claimed entries.
    pub(crate) async fn saga_claim_replies(
        &self,
        consumer: &str,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> Result<(String, Vec<RawEntry>)> {
        let v: redis::Value = redis::cmd("XAUTOCLAIM")
            .arg(keys::REPLIES)
            .arg(keys::GROUP)
            .arg(consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(cursor)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.c())
            .await?;
        let redis::Value::Array(mut parts) = v else {
            return Ok(("0-0".into(), Vec::new()));
        };
        if parts.len() < 2 {
            return Ok(("0-0".into(), Vec::new()));
        }
        let entries = crate::rdb::parse_entries(parts.remove(1));
        let next = match parts.remove(0) {
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            redis::Value::SimpleString(s) => s,
            _ => "0-0".into(),
        };
        Ok((next, entries))
    }

    /// Removes the consumers of the orchestrator group, other than `own`, idle for longer
    /// than `idle` with nothing pending (`saga_prune_consumers.lua`); returns how many.
    pub(crate) async fn saga_prune_consumers(&self, own: &str, idle: Duration) -> Result<u64> {
        let n: i64 = crate::rdb::scripts::script(ScriptId::SagaPruneConsumers)
            .key(keys::REPLIES)
            .arg(keys::GROUP)
            .arg(idle.as_millis() as u64)
            .arg(own)
            .invoke_async(&mut self.c())
            .await?;
        Ok(n.max(0) as u64)
    }

    /// Removes `consumer` from the orchestrator group if nothing is pending under it;
    /// returns whether it was removed. A consumer with pending replies stays, so another
    /// orchestrator can claim them.
    pub(crate) async fn saga_leave_group(&self, consumer: &str) -> Result<bool> {
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg(keys::REPLIES)
            .arg(keys::GROUP)
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(consumer)
            .query_async(&mut self.c())
            .await?;
        if !matches!(&pending, redis::Value::Array(a) if a.is_empty()) {
            return Ok(false);
        }
        redis::cmd("XGROUP")
            .arg("DELCONSUMER")
            .arg(keys::REPLIES)
            .arg(keys::GROUP)
            .arg(consumer)
            .query_async::<i64>(&mut self.c())
            .await?;
        Ok(true)
    }

    /// Deadline members due at `now` (scored at or before it), at most `limit`.
    pub(crate) async fn saga_due_deadlines(&self, now: u64, limit: usize) -> Result<Vec<String>> {
        Ok(redis::cmd("ZRANGEBYSCORE")
            .arg(keys::DEADLINES)
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.c())
            .await?)
    }

    /// Removes spent (or malformed) deadline members.
    pub(crate) async fn saga_drop_deadlines(&self, members: &[String]) -> Result<()> {
        if members.is_empty() {
            return Ok(());
        }
        redis::cmd("ZREM")
            .arg(keys::DEADLINES)
            .arg(members)
            .query_async::<()>(&mut self.c())
            .await?;
        Ok(())
    }

    /// The demo compensations' record (`demo_record_undo.lua`): sets `marker` (expiring
    /// after `ttl`) and appends `entry` to the list `log_key`, both only if `marker` was
    /// not set yet, so a redelivered compensation records nothing twice. True when this
    /// call recorded it.
    pub(crate) async fn demo_record_undo(
        &self,
        marker: &str,
        log_key: &str,
        entry: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let n: i64 = crate::rdb::scripts::script(ScriptId::DemoRecordUndo)
            .key(marker)
            .key(log_key)
            .arg(entry)
            .arg(ttl.as_secs().max(1))
            .invoke_async(&mut self.c())
            .await?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::definition::demo_saga;

    #[test]
    fn script_arguments_follow_the_layout_of_the_script() {
        let w = super::super::decide::start_write(&demo_saga(), serde_json::json!({}), 5).unwrap();
        let (k, a) = script_args(&w);
        assert_eq!(k.len(), 8 + w.dispatches.len());
        assert_eq!(k[8], w.dispatches[0].stream);
        let text = |i: usize| String::from_utf8(a[i].clone()).unwrap();
        assert_eq!(
            (text(0), text(1), text(2)),
            ("0".into(), "1".into(), w.id.clone())
        );
        assert_eq!(text(9), w.fields.len().to_string());
        assert_eq!(text(4), DEFAULT_RETENTION.as_millis().to_string());
    }

    #[test]
    fn defaults_match_the_orchestrator_configuration() {
        let c = crate::config::OrchestratorConfig::default();
        assert_eq!(Duration::from_secs(c.retention_secs), DEFAULT_RETENTION);
        assert_eq!(Duration::from_millis(c.step_grace_ms), DEFAULT_STEP_GRACE);
    }
}
