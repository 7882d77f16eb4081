//! The Redis keys of sagas, in one place (a public contract, see `docs/sagas.md`).
//!
//! Two layouts, chosen by the connection:
//!
//! - **One server** (and Sentinel): the layout sagas always had. A saga's own keys carry
//!   its id as a hash tag (`ts:saga:{ID}`, `ts:saga:{ID}:history`); the indexes, the
//!   deadline set, the settings and the reply stream are single keys (`ts:sagas:*`); one
//!   transition script writes the saga and adds the tasks it dispatches to their queue
//!   streams in one atomic step.
//! - **Redis Cluster** (issue 11.3): that script spans slots, so every key a transition
//!   touches carries the tag of the saga's *bucket* instead — one of [`BUCKETS`], picked
//!   by CRC16 of the id ([`bucket_of`]), so any process finds a saga's keys from its id
//!   alone. A bucket holds its sagas' hashes and histories, its own state indexes,
//!   active set, deadline set, settings copy and an *outbox* stream: a transition writes
//!   its dispatched tasks there, atomically with the state, and a relay moves them to the
//!   queue streams afterwards (`saga_relay.lua`, at most once per dispatch thanks to a
//!   marker on the queue's slot). Replies come back on a reply stream on the slot of the
//!   queue partition the task ran on ([`cluster_replies`]), written atomically with the
//!   task's ACK, and the orchestrators read every such stream.
//!
//! The bucket tags are aimed around the slot ring like partition tags
//! ([`crate::keys::partition_tag`]), so 16 buckets always reach every master of a
//! cluster of up to 16.

use crate::keys::PREFIX;

/// Stream every saga step and compensation replies to (the tasks' `reply_to`).
pub const REPLIES: &str = "ts:sagas:replies";

/// Consumer group of the orchestrators on [`REPLIES`].
pub const GROUP: &str = "orchestrator";

/// Sorted set of deadlines, scored by due time (ms): members `ID|saga|-|1` (the saga's
/// time limit) and `ID|step|INDEX|REV` (the running step's, valid at revision REV).
pub const DEADLINES: &str = "ts:sagas:deadlines";

/// Sorted set of the ids of sagas that have not ended, scored by their deadline (ms).
pub const ACTIVE: &str = "ts:sagas:active";

/// Hash of settings shared by every process that moves sagas (`retention_ms`,
/// `step_grace_ms`), published by orchestrators when they start.
pub const SETTINGS: &str = "ts:sagas:settings";

/// The hash of saga `id`: definition, input, state, revision, timestamps.
pub fn saga(id: &str) -> String {
    format!("{PREFIX}:saga:{{{id}}}")
}

/// The history list of saga `id`: one JSON entry per transition, oldest first.
pub fn history(id: &str) -> String {
    format!("{PREFIX}:saga:{{{id}}}:history")
}

/// The index of sagas in state `state` (`running`, `completed`, ...): a sorted set of
/// ids scored by the time (ms) they entered it.
pub fn state_index(state: &str) -> String {
    format!("{PREFIX}:sagas:state:{state}")
}

/// Buckets of sagas on a Redis Cluster (a public contract: changing it would move every
/// saga's keys).
pub const BUCKETS: u32 = 16;

/// The bucket of saga `id`: CRC16 of the id modulo [`BUCKETS`].
pub fn bucket_of(id: &str) -> u32 {
    crate::keys::partition_of(id, BUCKETS)
}

/// The hash tag of bucket `b`: `sagas~` for bucket 0, `sagas~#b.k` for the others (`~`
/// is not allowed in queue names, so no queue shares these keys).
pub fn bucket_tag(b: u32) -> String {
    crate::keys::partition_tag("sagas~", b)
}

/// The keys one saga transition touches, in one layout or the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaKeys {
    /// The saga's hash.
    pub saga: String,
    /// Its history list.
    pub history: String,
    /// The keys shared with the other sagas of its bucket (or of the server).
    pub bucket: BucketKeys,
}

/// The keys shared by the sagas of one bucket (on one server: by all sagas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketKeys {
    /// Deadline sorted set.
    pub deadlines: String,
    /// Active sorted set.
    pub active: String,
    /// Settings hash.
    pub settings: String,
    /// Prefix of the state indexes (`…:state:`).
    state_prefix: String,
    /// Outbox stream (cluster only; `None` on one server, where dispatches go straight
    /// to the queue streams).
    pub outbox: Option<String>,
}

impl BucketKeys {
    /// The keys of the one-server layout.
    pub fn single() -> BucketKeys {
        BucketKeys {
            deadlines: DEADLINES.to_string(),
            active: ACTIVE.to_string(),
            settings: SETTINGS.to_string(),
            state_prefix: format!("{PREFIX}:sagas:state:"),
            outbox: None,
        }
    }

    /// The keys of cluster bucket `b`.
    pub fn cluster(b: u32) -> BucketKeys {
        let base = format!("{PREFIX}:{{{}}}", bucket_tag(b));
        BucketKeys {
            deadlines: format!("{base}:deadlines"),
            active: format!("{base}:active"),
            settings: format!("{base}:settings"),
            state_prefix: format!("{base}:state:"),
            outbox: Some(format!("{base}:outbox")),
        }
    }

    /// Every bucket of a layout: one on a server, [`BUCKETS`] on a cluster.
    pub fn all(cluster: bool) -> Vec<BucketKeys> {
        if cluster {
            (0..BUCKETS).map(BucketKeys::cluster).collect()
        } else {
            vec![BucketKeys::single()]
        }
    }

    /// The index of sagas in `state`.
    pub fn state_index(&self, state: &str) -> String {
        format!("{}{state}", self.state_prefix)
    }
}

impl SagaKeys {
    /// The keys of saga `id` in the cluster layout or the one-server layout.
    pub fn of(id: &str, cluster: bool) -> SagaKeys {
        if cluster {
            let base = format!("{PREFIX}:{{{}}}", bucket_tag(bucket_of(id)));
            SagaKeys {
                saga: format!("{base}:saga:{id}"),
                history: format!("{base}:saga:{id}:history"),
                bucket: BucketKeys::cluster(bucket_of(id)),
            }
        } else {
            SagaKeys {
                saga: saga(id),
                history: history(id),
                bucket: BucketKeys::single(),
            }
        }
    }
}

/// On a cluster, the reply stream of tasks added to `stream`: `ts:{TAG}:saga-replies` on
/// the slot of `stream`'s hash tag, so the worker writes the reply in the script that
/// acknowledges the task. `None` for a key without a hash tag.
pub fn cluster_replies(stream: &str) -> Option<String> {
    let open = stream.find('{')?;
    let len = stream[open + 1..].find('}')?;
    let tag = &stream[open + 1..open + 1 + len];
    (!tag.is_empty()).then(|| format!("{PREFIX}:{{{tag}}}:saga-replies"))
}

/// On a cluster, the marker that a relay added the dispatch with correlation `corr` to a
/// stream of `stream`'s slot (kept [`RELAY_MARKER_TTL_MS`]).
pub fn relay_marker(stream: &str, corr: &str) -> Option<String> {
    let replies = cluster_replies(stream)?;
    Some(format!(
        "{}relayed:{corr}",
        replies.trim_end_matches("saga-replies")
    ))
}

/// How long a relay marker lives: a dispatch left in an outbox for longer (every
/// orchestrator and starter down for a day) could be added twice.
pub const RELAY_MARKER_TTL_MS: u64 = 86_400_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saga_keys_share_the_hash_tag() {
        assert_eq!(saga("abc"), "ts:saga:{abc}");
        assert_eq!(history("abc"), "ts:saga:{abc}:history");
        assert_eq!(state_index("running"), "ts:sagas:state:running");
        assert_eq!(SagaKeys::of("abc", false).saga, saga("abc"));
        assert_eq!(
            BucketKeys::single().state_index("running"),
            state_index("running")
        );
    }

    #[test]
    fn every_key_of_a_cluster_saga_shares_its_bucket_slot() {
        use crate::keys::slot;
        for id in ["a", "01a23340-25b6-71fd-b542-0912df14922a", "x{y}z"] {
            let k = SagaKeys::of(id, true);
            let s = slot(&k.saga);
            for key in [
                &k.history,
                &k.bucket.deadlines,
                &k.bucket.active,
                &k.bucket.settings,
                k.bucket.outbox.as_ref().unwrap(),
                &k.bucket.state_index("completed"),
            ] {
                assert_eq!(slot(key), s, "{key} vs {}", k.saga);
            }
        }
    }

    #[test]
    fn buckets_spread_over_the_ring() {
        use crate::keys::slot;
        let slots: Vec<u16> = (0..BUCKETS)
            .map(|b| slot(&BucketKeys::cluster(b).deadlines))
            .collect();
        // Each third of the ring (a default 3-master cluster) holds some buckets.
        for third in 0..3u16 {
            let (lo, hi) = (third * 5461, (third + 1) * 5461);
            assert!(
                slots.iter().filter(|&&s| s >= lo && s < hi).count() >= 4,
                "{slots:?}"
            );
        }
        assert_eq!(bucket_tag(0), "sagas~");
    }

    #[test]
    fn replies_and_markers_live_on_the_slot_of_the_stream() {
        use crate::keys::{slot, QueueKeys};
        let q = QueueKeys::partition("orders", 3);
        let r = cluster_replies(&q.stream).unwrap();
        assert_eq!(slot(&r), slot(&q.stream));
        assert_eq!(
            cluster_replies("ts:{orders}:pool:gpu").unwrap(),
            "ts:{orders}:saga-replies"
        );
        let m = relay_marker(&q.stream, "S|1|action|3").unwrap();
        assert_eq!(slot(&m), slot(&q.stream));
        assert!(m.ends_with(":relayed:S|1|action|3"), "{m}");
        assert_eq!(cluster_replies("plain"), None);
    }
}
