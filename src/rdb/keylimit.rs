//! The Redis steps of per-key concurrency limits ([`crate::keylimit`]): admitting a task
//! (lease or park), releasing a lease with its settlement, and the sweep that revives
//! scopes whose leases were pruned. All three are modes of `keylimit.lua`, one atomic step
//! each, in the slot of the queue partition.

use redis::Pipeline;

use super::{Broker, ScriptId};
use crate::error::Result;
use crate::keylimit::Limit;
use crate::keys::QueueKeys;
use crate::task::now_ms;

/// What [`Broker::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The task holds a lease: run it.
    Run,
    /// Its key is at the cap: it was acknowledged and parked, and waits in Redis.
    Parked,
    /// The entry is no longer pending for the group (claimed away or settled): drop it.
    Gone,
}

/// The lease a settlement gives back (boxed in the settlement: `None` costs one word).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LeaseRelease {
    /// Scope and cap of the limit.
    pub limit: Limit,
    /// The lease field (`<stream> <entry id>`).
    pub field: String,
}

impl Broker {
    /// Takes a lease of `limit` for entry `entry_id` of `stream`, or parks the task
    /// (`task_json`: the scheduled-set member format plus `stream`) when its key is at
    /// the cap. An entry that already holds a lease (a recovered one) keeps it.
    pub(crate) async fn admit(
        &self,
        keys: &QueueKeys,
        stream: &str,
        group: &str,
        entry_id: &str,
        limit: &Limit,
        task_json: &str,
    ) -> Result<Admission> {
        let (prefix, now, cap) = (
            keys.tag_prefix(),
            now_ms().to_string(),
            limit.cap.to_string(),
        );
        let mut p = Pipeline::new();
        p.add_command(super::evalsha(
            ScriptId::KeyLimit,
            &[stream, &keys.dlq, &keys.starts],
            [
                "admit",
                &prefix,
                &now,
                &limit.scope,
                &cap,
                group,
                entry_id,
                task_json,
            ],
        ));
        let (r,): (i64,) = self.pipe(&p).await?;
        Ok(match r {
            1 => Admission::Run,
            0 => Admission::Parked,
            _ => Admission::Gone,
        })
    }

    /// Moves parked tasks of scopes with room back to their streams (at most `scopes`
    /// scopes picked at random); returns how many moved.
    pub(crate) async fn sweep_keys(&self, keys: &QueueKeys, scopes: u32) -> Result<u64> {
        let (prefix, now, n) = (keys.tag_prefix(), now_ms().to_string(), scopes.to_string());
        let mut p = Pipeline::new();
        p.add_command(super::evalsha(
            ScriptId::KeyLimit,
            &[&keys.dlq],
            ["sweep", prefix.as_str(), &now, &n],
        ));
        let (moved,): (u64,) = self.pipe(&p).await?;
        Ok(moved)
    }

    /// Tasks parked on the queue partition `keys` (a sum over at most `scopes` scopes),
    /// and the number of scopes with parked tasks.
    pub(crate) async fn parked(&self, keys: &QueueKeys, scopes: isize) -> Result<(u64, u64)> {
        let keyed = keys.keyed();
        let (n, names): (u64, Vec<String>) = redis::pipe()
            .cmd("ZCARD")
            .arg(&keyed)
            .cmd("ZRANGE")
            .arg(&keyed)
            .arg(0)
            .arg(scopes - 1)
            .query_async(&mut self.c())
            .await?;
        if names.is_empty() {
            return Ok((0, n));
        }
        let mut p = Pipeline::new();
        for s in &names {
            p.cmd("LLEN").arg(keys.parked(s));
        }
        let lens: Vec<u64> = p.query_async(&mut self.c()).await?;
        Ok((lens.iter().sum(), n))
    }
}

/// Appends the release of `r` (and the promotion of the scope's next parked tasks) to a
/// settlement pipeline, after the ACKs.
pub(crate) fn append_release(p: &mut Pipeline, keys: &QueueKeys, r: &LeaseRelease) {
    let (prefix, now, cap) = (
        keys.tag_prefix(),
        now_ms().to_string(),
        r.limit.cap.to_string(),
    );
    p.add_command(super::evalsha(
        ScriptId::KeyLimit,
        &[&keys.dlq],
        [
            "release",
            prefix.as_str(),
            &now,
            &r.limit.scope,
            &cap,
            &r.field,
        ],
    ))
    .ignore();
}
