//! The reply-stream supervisor: starts one [`super::replies`] reader per reply stream.
//!
//! On one server there is one reply stream (`ts:sagas:replies`) and one reader. On a
//! Redis Cluster a step's reply is written on the slot of the queue partition the step
//! ran on, in the same script as the task's ACK (issue 11.3: a reply written apart from
//! the ACK could be lost, or a shared reply stream would make every settle span slots),
//! so there is a reply stream per partition of every queue the sagas' steps go to. The
//! set grows when a queue gains partitions: every [`ROUTES_TTL`] the supervisor reads the
//! partition counts again and starts readers for the new streams. Dispatches go to the
//! partitions the starter or orchestrator knew of at the time; one that knew more
//! partitions than this instance does is read by that instance (every orchestrator reads
//! every stream it knows of).

use std::collections::HashSet;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{replies, sleep_or_stop, Ctx};
use crate::error::Result;
use crate::keys::QueueKeys;
use crate::rdb::ReaderPool;
use crate::routing::ROUTES_TTL;
use crate::saga::keys;

/// The reply streams this orchestrator should read now: `ts:sagas:replies` on one
/// server; on a cluster the reply stream of every partition of every queue its sagas'
/// steps go to (the partition counts read from Redis).
pub(super) async fn wanted(ctx: &Ctx) -> Result<Vec<String>> {
    if !ctx.broker.is_cluster() {
        return Ok(vec![keys::REPLIES.to_string()]);
    }
    let mut queues: Vec<&str> = ctx
        .defs
        .iter()
        .flat_map(|d| d.steps.iter().map(|s| s.queue.as_str()))
        .collect();
    queues.sort();
    queues.dedup();
    ctx.routes
        .refresh(&ctx.broker, queues.iter().copied())
        .await?;
    let mut out = Vec::new();
    for q in queues {
        let (_, n) = ctx.routes.route(q, "");
        for p in 0..n.max(1) {
            if let Some(r) = keys::cluster_replies(&QueueKeys::partition(q, p).stream) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// Starts a reader for every wanted reply stream, then (on a cluster) looks for new ones
/// every [`ROUTES_TTL`] until `stop` fires; returns once every reader has stopped.
pub(super) async fn run(ctx: Arc<Ctx>, pool: ReaderPool, stop: CancellationToken) {
    let mut readers = JoinSet::new();
    let mut known: HashSet<String> = HashSet::new();
    loop {
        match wanted(&ctx).await {
            Ok(streams) => {
                for s in streams {
                    if known.contains(&s) {
                        continue;
                    }
                    if let Err(e) = ctx.broker.saga_ensure_reply_group(&s).await {
                        tracing::warn!(error = %e, replies = %s, "creating the orchestrator group on a new reply stream failed; retrying");
                        continue;
                    }
                    if !known.is_empty() {
                        tracing::info!(replies = %s, "reading a new saga reply stream (a queue gained partitions)");
                    }
                    known.insert(s.clone());
                    ctx.replies.write().expect("poisoned").push(s.clone());
                    readers.spawn(replies::run(ctx.clone(), pool.clone(), s, stop.clone()));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the partition counts of the saga queues failed")
            }
        }
        if !ctx.broker.is_cluster() && !known.is_empty() {
            stop.cancelled().await;
            break;
        }
        if !sleep_or_stop(&stop, ROUTES_TTL).await {
            break;
        }
    }
    while readers.join_next().await.is_some() {}
}
