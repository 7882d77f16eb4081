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

use super::decide::{Dispatch, Write};
use super::keys::{self, BucketKeys, SagaKeys};
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

/// Keys and arguments of one run of `saga_apply.lua` for `w` with the keys `k` (layout
/// documented in the script's header). On a cluster (`k` has an outbox) the dispatches go
/// to the outbox, and each task's `reply_to` becomes the reply stream on its
/// destination's slot ([`keys::cluster_replies`]), so the worker writes the reply in the
/// script that acknowledges the task.
fn script_args(w: &Write, k: &SagaKeys) -> (Vec<String>, Vec<Vec<u8>>) {
    let b = &k.bucket;
    let mut keys_out = vec![
        k.saga.clone(),
        k.history.clone(),
        b.deadlines.clone(),
        b.active.clone(),
        b.state_index(w.from),
        b.state_index(w.to),
        b.settings.clone(),
    ];
    match &b.outbox {
        Some(outbox) => keys_out.push(outbox.clone()),
        None => {
            keys_out.push(crate::keys::queues_registry());
            keys_out.extend(w.dispatches.iter().map(|d| d.stream.clone()));
        }
    }
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
    s(if b.outbox.is_some() { "1" } else { "0" }.into());
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
        let fields = dispatch_fields(d, b.outbox.is_some());
        s(d.queue.clone());
        s(d.stream.clone());
        s(fields.len().to_string());
        for (name, v) in fields {
            s(name.to_string());
            s(v);
        }
    }
    (keys_out, a)
}

/// The entry fields of dispatch `d`; on a cluster with `reply_to` pointed at the reply
/// stream on the slot of the stream it goes to.
fn dispatch_fields(d: &Dispatch, cluster: bool) -> Vec<(&'static str, String)> {
    if cluster && d.task.reply_to.as_deref() == Some(keys::REPLIES) {
        if let Some(r) = keys::cluster_replies(&d.stream) {
            let mut t = d.task.clone();
            t.reply_to = Some(r);
            return t.encode();
        }
    }
    d.task.encode()
}

/// A reply of [`Broker::pipe_per_slot`] as `T`.
fn typed<T: redis::FromRedisValue>(v: redis::Value) -> Result<T> {
    redis::from_redis_value(v).map_err(|e| redis::RedisError::from(e).into())
}

/// One dispatch waiting in a bucket's outbox (cluster only): the stream it goes to, its
/// queue and the task's entry fields.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OutboxEntry {
    /// Its entry id in the outbox.
    pub id: String,
    /// The stream the task is added to.
    pub dest: String,
    /// The task's queue (recorded in the queue registry).
    pub queue: String,
    /// The task's correlation (what the relay marker is keyed by).
    pub correlation: String,
    /// The task's entry fields.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl OutboxEntry {
    /// Parses an outbox entry as `saga_apply.lua` wrote it; `Err` names what is wrong.
    fn parse(e: RawEntry) -> std::result::Result<OutboxEntry, (String, String)> {
        let Some(fields) = e.fields else {
            return Err((e.id, "the entry was deleted".into()));
        };
        let (mut dest, mut queue, mut corr) = (None, None, None);
        let mut rest = Vec::with_capacity(fields.len());
        for (k, v) in fields {
            let text = || String::from_utf8_lossy(&v).into_owned();
            match k.as_slice() {
                b"dest" if dest.is_none() => dest = Some(text()),
                b"queue" if queue.is_none() => queue = Some(text()),
                _ => {
                    if k.as_slice() == crate::task::field::CORRELATION.as_bytes() {
                        corr = Some(text());
                    }
                    rest.push((k, v));
                }
            }
        }
        match (dest, queue, corr) {
            (Some(dest), Some(queue), Some(correlation))
                if keys::relay_marker(&dest, &correlation).is_some() =>
            {
                Ok(OutboxEntry {
                    id: e.id,
                    dest,
                    queue,
                    correlation,
                    fields: rest,
                })
            }
            _ => Err((
                e.id,
                "no dest stream with a hash tag, queue or correlation".into(),
            )),
        }
    }
}

/// The outbox entries a cluster transition wrote: its dispatches with the entry ids the
/// script returned, in order.
fn outbox_entries(w: &Write, ids: &[String]) -> Vec<OutboxEntry> {
    w.dispatches
        .iter()
        .zip(ids)
        .map(|(d, id)| {
            let fields = dispatch_fields(d, true);
            OutboxEntry {
                id: id.clone(),
                dest: d.stream.clone(),
                queue: d.queue.clone(),
                correlation: d.task.correlation.clone().unwrap_or_default(),
                fields: fields
                    .into_iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.into_bytes()))
                    .collect(),
            }
        })
        .collect()
}

impl Broker {
    /// The keys of saga `id` in this connection's layout.
    fn saga_keys(&self, id: &str) -> SagaKeys {
        SagaKeys::of(id, self.is_cluster())
    }

    /// The saga buckets of this connection's layout (one on a server).
    pub(crate) fn saga_buckets(&self) -> Vec<BucketKeys> {
        BucketKeys::all(self.is_cluster())
    }

    /// Reads saga `id`; `None` when it does not exist (never did, or expired).
    pub(crate) async fn saga_record(&self, id: &str) -> Result<Option<Record>> {
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.saga_keys(id).saga)
            .query_async(&mut self.c())
            .await?;
        Ok(Record::from_fields(id, h))
    }

    /// Runs the transition script for `w`: true when written, false when the record was
    /// not at `w.expect_rev` (another process moved it; decide again). On a cluster the
    /// dispatches it wrote to the outbox are relayed at once; a relay that fails is
    /// logged and left to the orchestrators' outbox sweep (the transition stands).
    pub(crate) async fn saga_apply(&self, w: &Write) -> Result<bool> {
        let k = self.saga_keys(&w.id);
        let (keys_in, a) = script_args(w, &k);
        let mut inv = crate::rdb::scripts::script(ScriptId::SagaApply).prepare_invoke();
        for key in &keys_in {
            inv.key(key);
        }
        for arg in &a {
            inv.arg(arg.as_slice());
        }
        let out: Vec<String> = inv.invoke_async(&mut self.c()).await?;
        if out.first().map(String::as_str) != Some("1") {
            return Ok(false);
        }
        if let Some(outbox) = &k.bucket.outbox {
            self.relay_now(outbox, outbox_entries(w, out.get(2..).unwrap_or_default()))
                .await;
        }
        Ok(true)
    }

    /// Relays entries just written to `outbox`, logging (not returning) a failure.
    async fn relay_now(&self, outbox: &str, entries: Vec<OutboxEntry>) {
        if entries.is_empty() {
            return;
        }
        if let Err(e) = self.saga_relay(outbox, &entries).await {
            tracing::warn!(
                error = %e,
                outbox,
                dispatches = entries.len(),
                "relaying saga dispatches failed; the orchestrators' outbox sweep retries them"
            );
        }
    }

    /// Runs the creations `ws` in one pipeline per slot (loading the script and resending
    /// the rest if Redis had lost it; a creation is never applied twice, since it requires
    /// the saga not to exist), then on a cluster relays their first steps. Returns, per
    /// write, whether this call created it.
    pub(crate) async fn saga_create_many(&self, ws: &[Write]) -> Result<Vec<bool>> {
        let cluster = self.is_cluster();
        let keys: Vec<SagaKeys> = ws.iter().map(|w| self.saga_keys(&w.id)).collect();
        let mut created = vec![false; ws.len()];
        let mut outboxes: Vec<Vec<String>> = vec![Vec::new(); ws.len()];
        let mut todo: Vec<usize> = (0..ws.len()).collect();
        for round in 0..2 {
            // One pipeline per bucket slot on a cluster, one on a server.
            let mut groups: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
            for &i in &todo {
                let slot = if cluster {
                    crate::keys::slot(&keys[i].saga)
                } else {
                    0
                };
                groups.entry(slot).or_default().push(i);
            }
            let mut set = tokio::task::JoinSet::new();
            for (_, idx) in groups {
                let mut p = Pipeline::with_capacity(idx.len());
                p.ignore_errors();
                for &i in &idx {
                    let (k, a) = script_args(&ws[i], &keys[i]);
                    let keys: Vec<&str> = k.iter().map(String::as_str).collect();
                    p.add_command(crate::rdb::evalsha(ScriptId::SagaApply, &keys, a));
                }
                let mut c = self.c();
                set.spawn(async move {
                    let r: redis::RedisResult<Vec<redis::RedisResult<Vec<String>>>> =
                        p.query_async(&mut c).await;
                    (idx, r)
                });
            }
            let mut again = Vec::new();
            let mut first_err = None;
            while let Some(joined) = set.join_next().await {
                let (idx, results) =
                    joined.map_err(|e| crate::Error::Pool(format!("saga creation task: {e}")))?;
                for (i, r) in idx.into_iter().zip(results?) {
                    match r {
                        Ok(out) if out.first().map(String::as_str) == Some("1") => {
                            created[i] = true;
                            outboxes[i] = out.into_iter().skip(2).collect();
                        }
                        // Created by the first round, whose reply was an error for another entry.
                        Ok(_) => {}
                        Err(e) if crate::rdb::is_noscript(&e) && round == 0 => again.push(i),
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(e.into());
            }
            if again.is_empty() {
                break;
            }
            self.load_scripts().await?;
            todo = again;
        }
        // Relay per bucket (a creation whose relay fails is swept later).
        let mut by_outbox: HashMap<&str, Vec<OutboxEntry>> = HashMap::new();
        for (i, w) in ws.iter().enumerate() {
            if let (true, Some(outbox)) = (created[i], &keys[i].bucket.outbox) {
                by_outbox
                    .entry(outbox.as_str())
                    .or_default()
                    .extend(outbox_entries(w, &outboxes[i]));
            }
        }
        for (outbox, entries) in by_outbox {
            self.relay_now(outbox, entries).await;
        }
        Ok(created)
    }

    /// Moves `entries` of `outbox` to their streams (`saga_relay.lua`, one pipeline per
    /// destination slot; each dispatch added once however many relays race), records
    /// their queues in the registry and deletes them from the outbox. Returns how many
    /// this call added.
    pub(crate) async fn saga_relay(&self, outbox: &str, entries: &[OutboxEntry]) -> Result<usize> {
        if entries.is_empty() {
            return Ok(0);
        }
        let registry = crate::keys::queues_registry();
        let mut cmds: Vec<(&str, redis::Cmd)> = Vec::with_capacity(entries.len() + 1);
        let mut queues: Vec<&str> = Vec::new();
        let ttl = keys::RELAY_MARKER_TTL_MS.to_string();
        for e in entries {
            let marker = keys::relay_marker(&e.dest, &e.correlation).unwrap_or_default();
            let mut args: Vec<&[u8]> = Vec::with_capacity(1 + 2 * e.fields.len());
            args.push(ttl.as_bytes());
            for (k, v) in &e.fields {
                args.push(k);
                args.push(v);
            }
            let cmd = crate::rdb::evalsha(ScriptId::SagaRelay, &[&e.dest, &marker], args);
            cmds.push((e.dest.as_str(), cmd));
            if !queues.contains(&e.queue.as_str()) {
                queues.push(&e.queue);
            }
        }
        let mut sadd = redis::cmd("SADD");
        sadd.arg(&registry).arg(&queues);
        cmds.push((registry.as_str(), sadd));
        let replies = self.pipe_per_slot(cmds).await?;
        let added = replies
            .iter()
            .take(entries.len())
            .filter(|v| matches!(v, redis::Value::Int(1)))
            .count();
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        redis::cmd("XDEL")
            .arg(outbox)
            .arg(&ids)
            .query_async::<()>(&mut self.c())
            .await?;
        Ok(added)
    }

    /// The entries of `outbox` written before `before_ms` (left by a process that
    /// committed a transition and stopped before relaying it), at most `count`. Malformed
    /// entries are deleted and logged.
    pub(crate) async fn saga_outbox_due(
        &self,
        outbox: &str,
        before_ms: u64,
        count: usize,
    ) -> Result<Vec<OutboxEntry>> {
        let v: redis::Value = redis::cmd("XRANGE")
            .arg(outbox)
            .arg("-")
            .arg(format!("{before_ms}"))
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.c())
            .await?;
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for e in crate::rdb::parse_entries(v) {
            match OutboxEntry::parse(e) {
                Ok(e) => out.push(e),
                Err((id, reason)) => {
                    tracing::warn!(outbox, entry_id = %id, reason = %reason, "malformed saga outbox entry dropped");
                    bad.push(id);
                }
            }
        }
        if !bad.is_empty() {
            redis::cmd("XDEL")
                .arg(outbox)
                .arg(&bad)
                .query_async::<()>(&mut self.c())
                .await?;
        }
        Ok(out)
    }

    /// Record, history and time to expiry of saga `id`, in one round trip; `None` when it
    /// does not exist.
    pub(crate) async fn saga_dump(&self, id: &str) -> Result<Option<SagaDump>> {
        let k = self.saga_keys(id);
        let mut p = Pipeline::with_capacity(3);
        p.cmd("HGETALL").arg(&k.saga);
        p.cmd("LRANGE").arg(&k.history).arg(0).arg(-1);
        p.cmd("PTTL").arg(&k.saga);
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
        Ok(self.saga_list_page(states, limit, None).await?.0)
    }

    /// [`Broker::saga_list`] from a position on: only sagas after `before` (the time they
    /// entered their state and their id, of the last saga of the previous page) in the
    /// order newest first, ties by id descending. Also returns the position of this
    /// page's last index entry when there may be more.
    pub(crate) async fn saga_list_page(
        &self,
        states: &[&str],
        limit: usize,
        before: Option<(u64, &str)>,
    ) -> Result<(Vec<SagaSummary>, Option<(u64, String)>)> {
        if limit == 0 || states.is_empty() {
            return Ok((Vec::new(), None));
        }
        let buckets = self.saga_buckets();
        let mut index_keys = Vec::with_capacity(states.len() * buckets.len());
        for b in &buckets {
            index_keys.extend(states.iter().map(|s| b.state_index(s)));
        }
        let mut cmds: Vec<(&str, redis::Cmd)> = Vec::new();
        for k in &index_keys {
            let mut c = redis::cmd("ZREVRANGEBYSCORE");
            match before {
                None => c.arg(k).arg("+inf").arg("-inf"),
                Some((score, _)) => c.arg(k).arg(format!("({score}")).arg("-inf"),
            };
            c.arg("WITHSCORES").arg("LIMIT").arg(0).arg(limit);
            cmds.push((k.as_str(), c));
            if let Some((score, _)) = before {
                // The sagas that entered their state in the same ms as the cursor's.
                let mut c = redis::cmd("ZREVRANGEBYSCORE");
                c.arg(k).arg(score).arg(score).arg("WITHSCORES");
                cmds.push((k.as_str(), c));
            }
        }
        let mut all: Vec<(String, f64)> = Vec::new();
        for page in self.pipe_per_slot(cmds).await? {
            let page: Vec<(String, f64)> = typed(page)?;
            all.extend(page);
        }
        if let Some((score, id)) = before {
            all.retain(|(i, s)| *s < score as f64 || (*s == score as f64 && i.as_str() < id));
        }
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        all.dedup_by(|a, b| a.0 == b.0);
        let more = all.len() > limit;
        all.truncate(limit);
        if all.is_empty() {
            return Ok((Vec::new(), None));
        }
        let next = if more || all.len() == limit {
            all.last().map(|(id, s)| (*s as u64, id.clone()))
        } else {
            None
        };
        let saga_keys: Vec<String> = all.iter().map(|(id, _)| self.saga_keys(id).saga).collect();
        let cmds = saga_keys
            .iter()
            .map(|k| {
                let mut c = redis::cmd("HMGET");
                c.arg(k).arg(&[
                    f::SAGA,
                    f::STATUS,
                    f::STEP_NAME,
                    f::CREATED,
                    f::UPDATED,
                    f::ERROR,
                ]);
                (k.as_str(), c)
            })
            .collect();
        type Row = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<u64>,
            Option<u64>,
            Option<String>,
        );
        let rows = self
            .pipe_per_slot(cmds)
            .await?
            .into_iter()
            .map(typed::<Row>)
            .collect::<Result<Vec<Row>>>()?;
        let list = all
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
            .collect();
        Ok((list, next))
    }

    /// Sagas per state (first dropping index entries of finished sagas past the
    /// retention) and the number past their deadline that have not ended, as of `now`.
    pub(crate) async fn saga_counts(&self, now: u64) -> Result<SagaCounts> {
        let buckets = self.saga_buckets();
        let retention: Option<u64> = redis::cmd("HGET")
            .arg(&buckets[0].settings)
            .arg("retention_ms")
            .query_async(&mut self.c())
            .await?;
        let cutoff = now.saturating_sub(retention.unwrap_or(DEFAULT_RETENTION.as_millis() as u64));
        // Per bucket: trim the finished indexes, count each state and the overdue.
        let mut by_state = vec![0u64; STATES.len()];
        let mut overdue = 0;
        let mut set = tokio::task::JoinSet::new();
        for b in buckets {
            let mut p = Pipeline::with_capacity(2 * STATES.len() + 1);
            for s in STATES.iter().filter(|s| is_terminal_name(s)) {
                p.cmd("ZREMRANGEBYSCORE")
                    .arg(b.state_index(s))
                    .arg("-inf")
                    .arg(format!("({cutoff}"))
                    .ignore();
            }
            for s in STATES {
                p.cmd("ZCARD").arg(b.state_index(s));
            }
            p.cmd("ZCOUNT").arg(&b.active).arg("-inf").arg(now);
            let broker = self.clone();
            set.spawn(async move { broker.pipe::<Vec<u64>>(&p).await });
        }
        while let Some(r) = set.join_next().await {
            let mut v = r.map_err(|e| crate::Error::Pool(format!("saga count task: {e}")))??;
            overdue += v.pop().unwrap_or(0);
            for (total, n) in by_state.iter_mut().zip(v) {
                *total += n;
            }
        }
        Ok(SagaCounts {
            by_state: STATES.iter().map(|s| s.to_string()).zip(by_state).collect(),
            overdue,
        })
    }

    /// Creates the orchestrators' consumer group on each of the reply streams `replies`
    /// (if missing) and publishes the settings every process that moves sagas applies
    /// (into every bucket's copy on a cluster, where the transition script can read only
    /// keys of its own bucket).
    pub(crate) async fn saga_setup(
        &self,
        replies: &[String],
        retention_ms: u64,
        step_grace_ms: u64,
    ) -> Result<()> {
        for r in replies {
            self.saga_ensure_reply_group(r).await?;
        }
        let buckets = self.saga_buckets();
        let cmds = buckets
            .iter()
            .map(|b| {
                let mut c = redis::cmd("HSET");
                c.arg(&b.settings)
                    .arg("retention_ms")
                    .arg(retention_ms)
                    .arg("step_grace_ms")
                    .arg(step_grace_ms);
                (b.settings.as_str(), c)
            })
            .collect();
        self.pipe_per_slot(cmds).await?;
        Ok(())
    }

    /// Creates the orchestrators' consumer group on reply stream `replies` if missing.
    pub(crate) async fn saga_ensure_reply_group(&self, replies: &str) -> Result<()> {
        crate::rdb::ensure_group(&mut self.c(), replies, keys::GROUP).await
    }

    /// Acknowledges and deletes the replies `ids` of `replies` (applied, or found stale
    /// or malformed).
    pub(crate) async fn saga_ack_replies(&self, replies: &str, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut p = Pipeline::with_capacity(2);
        p.cmd("XACK")
            .arg(replies)
            .arg(keys::GROUP)
            .arg(ids)
            .ignore();
        p.cmd("XDEL").arg(replies).arg(ids).ignore();
        self.pipe::<()>(&p).await
    }

    /// One page of `XAUTOCLAIM` on `replies`: replies pending for longer than `min_idle`
    /// under any consumer, claimed by `consumer`. Returns the next cursor (`0-0` when
    /// done) and the claimed entries.
    pub(crate) async fn saga_claim_replies(
        &self,
        replies: &str,
        consumer: &str,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> Result<(String, Vec<RawEntry>)> {
        let v: redis::Value = redis::cmd("XAUTOCLAIM")
            .arg(replies)
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

    /// Removes the consumers of the orchestrator group on `replies`, other than `own`,
    /// idle for longer than `idle` with nothing pending (`saga_prune_consumers.lua`);
    /// returns how many.
    pub(crate) async fn saga_prune_consumers(
        &self,
        replies: &str,
        own: &str,
        idle: Duration,
    ) -> Result<u64> {
        let n: i64 = crate::rdb::scripts::script(ScriptId::SagaPruneConsumers)
            .key(replies)
            .arg(keys::GROUP)
            .arg(idle.as_millis() as u64)
            .arg(own)
            .invoke_async(&mut self.c())
            .await?;
        Ok(n.max(0) as u64)
    }

    /// Removes `consumer` from the orchestrator group on `replies` if nothing is pending
    /// under it; returns whether it was removed. A consumer with pending replies stays, so
    /// another orchestrator can claim them.
    pub(crate) async fn saga_leave_group(&self, replies: &str, consumer: &str) -> Result<bool> {
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg(replies)
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
            .arg(replies)
            .arg(keys::GROUP)
            .arg(consumer)
            .query_async::<i64>(&mut self.c())
            .await?;
        Ok(true)
    }

    /// Deadline members due at `now` (scored at or before it), at most `limit` per
    /// bucket, each with the deadline set it is in.
    pub(crate) async fn saga_due_deadlines(
        &self,
        now: u64,
        limit: usize,
    ) -> Result<Vec<(String, String)>> {
        let buckets = self.saga_buckets();
        let cmds = buckets
            .iter()
            .map(|b| {
                let mut c = redis::cmd("ZRANGEBYSCORE");
                c.arg(&b.deadlines)
                    .arg("-inf")
                    .arg(now)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit);
                (b.deadlines.as_str(), c)
            })
            .collect();
        let mut out = Vec::new();
        for (b, v) in buckets.iter().zip(self.pipe_per_slot(cmds).await?) {
            let members: Vec<String> = typed(v)?;
            out.extend(members.into_iter().map(|m| (b.deadlines.clone(), m)));
        }
        Ok(out)
    }

    /// Removes spent (or malformed) deadline members, each from the set named with it.
    pub(crate) async fn saga_drop_deadlines(&self, members: &[(String, String)]) -> Result<()> {
        if members.is_empty() {
            return Ok(());
        }
        let mut by_set: HashMap<&str, Vec<&str>> = HashMap::new();
        for (set, m) in members {
            by_set.entry(set.as_str()).or_default().push(m.as_str());
        }
        let cmds = by_set
            .into_iter()
            .map(|(set, ms)| {
                let mut c = redis::cmd("ZREM");
                c.arg(set).arg(ms);
                (set, c)
            })
            .collect();
        self.pipe_per_slot(cmds).await?;
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
        let w = super::super::decide::start_write(&demo_saga(), serde_json::json!({}), 5, None)
            .unwrap();
        let (k, a) = script_args(&w, &SagaKeys::of(&w.id, false));
        assert_eq!(k.len(), 8 + w.dispatches.len());
        assert_eq!(k[8], w.dispatches[0].stream);
        let text = |i: usize| String::from_utf8(a[i].clone()).unwrap();
        assert_eq!(
            (text(0), text(1), text(2)),
            ("0".into(), "1".into(), w.id.clone())
        );
        assert_eq!(text(9), "0");
        assert_eq!(text(10), w.fields.len().to_string());
        assert_eq!(text(4), DEFAULT_RETENTION.as_millis().to_string());
        // On a cluster: every key on the bucket's slot, the dispatch to the outbox with
        // its reply stream on the slot of its destination.
        let ck = SagaKeys::of(&w.id, true);
        let (k, a) = script_args(&w, &ck);
        assert_eq!(k.len(), 8);
        assert_eq!(Some(&k[7]), ck.bucket.outbox.as_ref());
        let slots: std::collections::HashSet<u16> =
            k.iter().map(|k| crate::keys::slot(k)).collect();
        assert_eq!(slots.len(), 1, "{k:?}");
        let text = |i: usize| String::from_utf8(a[i].clone()).unwrap();
        assert_eq!(text(9), "1");
        let e = &outbox_entries(&w, &["1-1".to_string()])[0];
        let reply_to = e
            .fields
            .iter()
            .find(|(k, _)| k.as_slice() == b"reply_to")
            .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
            .unwrap();
        assert_eq!(crate::keys::slot(&reply_to), crate::keys::slot(&e.dest));
        assert!(reply_to.ends_with(":saga-replies"), "{reply_to}");
    }

    #[test]
    fn outbox_entries_parse_back() {
        let w = super::super::decide::start_write(&demo_saga(), serde_json::json!({}), 5, None)
            .unwrap();
        let e = outbox_entries(&w, &["7-0".to_string()]).remove(0);
        let mut fields = vec![
            (b"dest".to_vec(), e.dest.clone().into_bytes()),
            (b"queue".to_vec(), e.queue.clone().into_bytes()),
        ];
        fields.extend(e.fields.clone());
        let back = OutboxEntry::parse(RawEntry {
            id: "7-0".into(),
            fields: Some(fields),
        })
        .unwrap();
        assert_eq!(back, e);
        assert!(OutboxEntry::parse(RawEntry {
            id: "8-0".into(),
            fields: Some(vec![(b"queue".to_vec(), b"q".to_vec())]),
        })
        .is_err());
    }

    #[test]
    fn defaults_match_the_orchestrator_configuration() {
        let c = crate::config::OrchestratorConfig::default();
        assert_eq!(Duration::from_secs(c.retention_secs), DEFAULT_RETENTION);
        assert_eq!(Duration::from_millis(c.step_grace_ms), DEFAULT_STEP_GRACE);
    }
}
