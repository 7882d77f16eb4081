//! Routing: which stream a task of a type goes to.
//!
//! A queue may be served by named worker pools, each serving some task types from its own
//! streams (`ts:{q}:pool:<pool>` and `…:express`). A pool records the types it serves in
//! the queue's routes table (`ts:{q}:routes`, type → pool) when it starts. Everything that
//! adds a task — producers, the default pool forwarding a type it does not serve, the saga
//! orchestrator dispatching a step — sends it to the stream [`target_stream`] picks from that
//! table. A copy of the table may be up to [`ROUTES_TTL`] old: a task sent with a stale copy
//! lands in the queue's default stream and the default pool forwards it, so nothing is lost.
//! (Before this module the orchestrator ignored routes, and a saga step of a type only a
//! pool serves waited for the default pool to forward it.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::keys::{Lane, QueueKeys};
use crate::rdb::Broker;

/// How long a copy of a queue's routes is trusted.
pub const ROUTES_TTL: Duration = Duration::from_secs(2);

/// The stream a task of `task_type` goes to on `lane`: the lane stream of the pool that
/// serves the type, or the queue's own lane stream when no pool does.
pub(crate) fn target_stream(
    keys: &QueueKeys,
    routes: &HashMap<String, String>,
    task_type: &str,
    lane: Lane,
) -> String {
    stream_of(keys, routes.get(task_type).map(String::as_str), lane)
}

/// The lane stream of `pool` in the queue of `keys`, or the queue's own lane stream.
pub(crate) fn stream_of(keys: &QueueKeys, pool: Option<&str>, lane: Lane) -> String {
    match pool {
        Some(pool) => keys.pool_stream(pool, lane),
        // The queue's own keys already name the stream; pooled keys name the pool's, so
        // the queue's are built (this used to be built for every enqueued task too, which
        // cost 13% of the client's instructions per task: load-tests/README.md).
        None if keys.pool.is_none() => keys.lane_stream(lane).to_string(),
        None => QueueKeys::partition(&keys.queue, keys.partition)
            .lane_stream(lane)
            .to_string(),
    }
}

/// Queue → (when read, task type → pool, partitions).
type Copies = HashMap<String, (Instant, HashMap<String, String>, u32)>;

/// Copies of the routes tables of several queues, each refreshed when older than
/// [`ROUTES_TTL`]. Shared by clones.
#[derive(Clone, Default)]
pub(crate) struct RouteCache {
    /// Queue → (when read, task type → pool).
    inner: Arc<Mutex<Copies>>,
}

impl RouteCache {
    /// The pool serving `task_type` in `queue` and how many partitions `queue` has (1
    /// when unknown), per the cached copy, in one look.
    pub(crate) fn route(&self, queue: &str, task_type: &str) -> (Option<String>, u32) {
        let r = self.inner.lock().expect("poisoned");
        match r.get(queue) {
            Some((_, m, n)) => (m.get(task_type).cloned(), *n),
            None => (None, 1),
        }
    }

    /// Re-reads the routes of those of `queues` whose copy is missing or stale, in one
    /// round trip.
    pub(crate) async fn refresh<'a>(
        &self,
        broker: &Broker,
        queues: impl Iterator<Item = &'a str>,
    ) -> Result<()> {
        let stale: Vec<String> = {
            let r = self.inner.lock().expect("poisoned");
            let mut v: Vec<String> = queues
                .filter(|q| r.get(*q).is_none_or(|(t, _, _)| t.elapsed() > ROUTES_TTL))
                .map(str::to_string)
                .collect();
            v.sort();
            v.dedup();
            v
        };
        if stale.is_empty() {
            return Ok(());
        }
        let maps = broker.routes_of(&stale).await?;
        let parts = broker.partitions_of(&stale).await?;
        let mut r = self.inner.lock().expect("poisoned");
        for ((q, m), n) in stale.into_iter().zip(maps).zip(parts) {
            r.insert(q, (Instant::now(), m, n));
        }
        Ok(())
    }
}

/// Where a task goes that the reading process has no handler for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unserved {
    /// To this stream: the lane stream of the pool that serves its type.
    Forward(String),
    /// Nowhere: no pool serves it (or it was already routed to this pool), so it is an
    /// unknown type for the dead-letter stream.
    Unknown,
}

/// Decides for a task of a type the reader (`own_pool`, `None` for the default pool) does
/// not serve, given the pool the routes table names for its type.
pub(crate) fn unserved(
    keys: &QueueKeys,
    own_pool: Option<&str>,
    route: Option<&str>,
    lane: Lane,
) -> Unserved {
    match route.filter(|p| Some(*p) != own_pool) {
        Some(pool) => Unserved::Forward(keys.pool_stream(pool, lane)),
        None => Unserved::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routed_type_goes_to_its_pool_stream_and_others_to_the_queue() {
        let keys = QueueKeys::new("orders");
        let mut routes = HashMap::new();
        routes.insert("render".to_string(), "gpu".to_string());
        assert_eq!(
            target_stream(&keys, &routes, "render", Lane::Bulk),
            "ts:{orders}:pool:gpu"
        );
        assert_eq!(
            target_stream(&keys, &routes, "render", Lane::Express),
            "ts:{orders}:pool:gpu:express"
        );
        assert_eq!(
            target_stream(&keys, &routes, "email", Lane::Bulk),
            "ts:{orders}:stream"
        );
        assert_eq!(
            unserved(&keys, None, Some("gpu"), Lane::Bulk),
            Unserved::Forward("ts:{orders}:pool:gpu".into())
        );
        assert_eq!(
            unserved(&keys, Some("gpu"), Some("gpu"), Lane::Bulk),
            Unserved::Unknown
        );
        assert_eq!(unserved(&keys, None, None, Lane::Bulk), Unserved::Unknown);
        // Pooled keys of another pool still route to the queue's own stream.
        let pooled = QueueKeys::pooled("orders", Some("gpu"));
        assert_eq!(
            target_stream(&pooled, &routes, "email", Lane::Express),
            "ts:{orders}:express"
        );
    }
}
