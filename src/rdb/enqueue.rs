//! Enqueueing: adding tasks to a queue's streams or its scheduled set, plainly or under an
//! idempotency key (`enqueue_idem.lua`), many in one pipelined round trip.

use redis::{Pipeline, Value};

use super::{Broker, ScriptId};
use crate::error::{Error, Result};

/// Where a new task goes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Placement {
    /// `XADD stream * fields…` now.
    Stream {
        /// Lane stream (of the queue or of the pool that serves the type).
        stream: String,
        /// The task's wire fields.
        fields: Vec<(&'static str, String)>,
    },
    /// `ZADD scheduled due member`: due later.
    Scheduled {
        /// The queue's scheduled set.
        set: String,
        /// Due time, Unix ms.
        due_ms: u64,
        /// Scheduled-set member (task JSON with lane and pool).
        member: String,
    },
}

impl Placement {
    /// The key the add writes.
    pub(crate) fn key(&self) -> &str {
        match self {
            Placement::Stream { stream, .. } => stream,
            Placement::Scheduled { set, .. } => set,
        }
    }
}

/// One task to add.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NewEntry {
    /// Task id (returned for plain adds).
    pub task_id: String,
    /// Where it goes.
    pub placement: Placement,
    /// Idempotency key (its Redis key) and window: added only if the key is new.
    pub idem: Option<(String, u64)>,
}

/// What one add did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Added {
    /// Added; the stream entry id when it went to a stream.
    New(Option<String>),
    /// The idempotency key was seen within its window: nothing added; the task id of the
    /// first enqueue.
    Duplicate(String),
}

impl Broker {
    /// Records queues in the registry (`ts:queues`), so operators' tools find them.
    pub(crate) async fn register_queues(&self, queues: &[String]) -> Result<()> {
        redis::cmd("SADD")
            .arg(crate::keys::queues_registry())
            .arg(queues)
            .query_async::<()>(&mut self.c())
            .await?;
        Ok(())
    }

    /// Adds every entry in one pipelined round trip; each add is atomic on its own. On a
    /// Redis Cluster one pipeline may only touch one slot, so the entries are grouped by
    /// the slot of their target key and each group goes in its own pipeline, all at once.
    pub(crate) async fn enqueue(&self, entries: &[NewEntry]) -> Result<Vec<Added>> {
        if self.is_cluster() {
            let mut groups: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
            for (i, e) in entries.iter().enumerate() {
                groups
                    .entry(crate::keys::slot(e.placement.key()))
                    .or_default()
                    .push(i);
            }
            if groups.len() > 1 {
                let mut set = tokio::task::JoinSet::new();
                for (_, idx) in groups {
                    let broker = self.clone();
                    let part: Vec<NewEntry> = idx.iter().map(|&i| entries[i].clone()).collect();
                    set.spawn(async move { (idx, broker.enqueue_one_slot(&part).await) });
                }
                let mut out: Vec<Option<Added>> = vec![None; entries.len()];
                while let Some(r) = set.join_next().await {
                    let (idx, added) = r.map_err(|e| Error::Pool(format!("enqueue task: {e}")))?;
                    for (i, a) in idx.into_iter().zip(added?) {
                        out[i] = Some(a);
                    }
                }
                return Ok(out
                    .into_iter()
                    .map(|a| a.expect("one reply per entry"))
                    .collect());
            }
        }
        self.enqueue_one_slot(entries).await
    }

    /// [`Broker::enqueue`] of entries that share one slot (or on one server).
    ///
    /// The pipeline reports each command's error on its own (`ignore_errors`): a Redis
    /// that lost its scripts (restarted, failed over, never loaded: a producer does not
    /// load them) answers NOSCRIPT to the idempotent adds only, while the plain adds
    /// beside them went in. Only the refused adds are sent again, after loading the
    /// scripts; resending the whole pipeline, as it once did, added every plain task of
    /// the batch twice (the first cluster test caught it).
    async fn enqueue_one_slot(&self, entries: &[NewEntry]) -> Result<Vec<Added>> {
        let all: Vec<&NewEntry> = entries.iter().collect();
        let mut replies: Vec<Value> = self.send(build(&all)).await?;
        let mut waited = self.wait.and_then(|_| replies.pop());
        let refused: Vec<usize> = (0..replies.len())
            .filter(|&i| matches!(&replies[i], Value::ServerError(e) if e.code() == "NOSCRIPT"))
            .collect();
        if !refused.is_empty() {
            self.load_scripts().await?;
            let again: Vec<&NewEntry> = refused.iter().map(|&i| &entries[i]).collect();
            let mut second: Vec<Value> = self.send(build(&again)).await?;
            waited = self.wait.and_then(|_| second.pop());
            for (i, v) in refused.into_iter().zip(second) {
                replies[i] = v;
            }
        }
        if let Some(Value::ServerError(e)) =
            replies.iter().find(|v| matches!(v, Value::ServerError(_)))
        {
            return Err(Error::Redis(e.clone().into()));
        }
        if let (Some(w), Some(v)) = (self.wait, waited) {
            let got: u64 = redis::from_redis_value(v).map_err(|e| Error::Redis(e.into()))?;
            w.judge(got)?;
        }
        entries
            .iter()
            .zip(replies)
            .map(|(e, reply)| match (&e.idem, &e.placement) {
                (None, Placement::Stream { .. }) => {
                    Ok(Added::New(redis::from_redis_value(reply).ok()))
                }
                (None, Placement::Scheduled { .. }) => Ok(Added::New(None)),
                (Some(_), _) => {
                    let (added, id): (i64, String) =
                        redis::from_redis_value(reply).map_err(|e| Error::Redis(e.into()))?;
                    Ok(if added == 1 {
                        Added::New((!id.is_empty()).then_some(id))
                    } else {
                        Added::Duplicate(id)
                    })
                }
            })
            .collect()
    }
}

impl Broker {
    /// Sends an add pipeline, with `WAIT` at its end when replicas must have the adds
    /// (its reply is then the last).
    async fn send(&self, mut p: Pipeline) -> Result<Vec<Value>> {
        if let Some(w) = &self.wait {
            p.add_command(w.cmd());
        }
        Ok(p.query_async(&mut self.c()).await?)
    }
}

/// The pipeline that adds `entries`, errors reported per command.
fn build(entries: &[&NewEntry]) -> Pipeline {
    let mut p = Pipeline::with_capacity(entries.len());
    p.ignore_errors();
    for e in entries {
        match (&e.idem, &e.placement) {
            (None, Placement::Stream { stream, fields }) => {
                let mut c = redis::cmd("XADD");
                c.arg(stream).arg("*");
                for (k, v) in fields {
                    c.arg(*k).arg(v);
                }
                p.add_command(c);
            }
            (
                None,
                Placement::Scheduled {
                    set,
                    due_ms,
                    member,
                },
            ) => {
                p.cmd("ZADD").arg(set).arg(*due_ms).arg(member);
            }
            (Some((key, window_ms)), placement) => {
                let window = window_ms.to_string();
                let mut args: Vec<&[u8]> = vec![e.task_id.as_bytes(), window.as_bytes()];
                let due;
                let target = match placement {
                    Placement::Scheduled {
                        set,
                        due_ms,
                        member,
                    } => {
                        due = due_ms.to_string();
                        args.extend([b"z".as_slice(), due.as_bytes(), member.as_bytes()]);
                        set
                    }
                    Placement::Stream { stream, fields } => {
                        args.push(b"x");
                        for (k, v) in fields {
                            args.push(k.as_bytes());
                            args.push(v.as_bytes());
                        }
                        stream
                    }
                };
                p.add_command(super::evalsha(ScriptId::EnqueueIdem, &[key, target], args));
            }
        }
    }
    p
}
