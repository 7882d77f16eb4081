//! Key naming: the one place that knows how taskstream lays out its keys in Redis.
//!
//! Every key of a queue carries the queue name as a Redis Cluster hash tag
//! (`ts:{orders}:stream`), so one queue lives on one slot and every Lua script that
//! moves a task between the queue's keys is legal on a cluster. The layout is a public
//! contract (see `docs/wire-format.md`): producers written in other languages XADD to
//! [`QueueKeys::stream`] directly.

/// The prefix of every key taskstream writes.
pub const PREFIX: &str = "ts";

/// The consumer group every queue has; fan-out groups come on top of it.
pub const DEFAULT_GROUP: &str = "taskstream";

/// Longest queue name accepted.
pub const MAX_QUEUE_NAME: usize = 64;

/// Most partitions one queue may have.
pub const MAX_PARTITIONS: u32 = 64;

/// How far (in slots, either way) a partition's hash tag may land from its target slot.
const TAG_TOLERANCE: u16 = 256;

/// The hash tag of partition `p` of `queue`: the queue name itself for partition 0 (the
/// keys every queue always had, so a queue of one partition is unchanged and raw
/// producers keep working), and `Q#p.k` for the others.
///
/// Why not just `Q#p`: CRC16 scatters tags at random, and six random slots miss one of three
/// masters a quarter of the time, leaving that master idle. Partition `p`'s tag is instead
/// aimed at a slot: partition 0's slot plus the van der Corput fraction of `p` (½, ¼, ¾,
/// ⅛, …) of the ring, so any N partitions sit evenly spaced around the 16,384 slots — four
/// or more always reach each third of the ring, where a default `redis-cli --cluster
/// create` puts each of three masters — and raising N adds partitions between the existing
/// ones without moving any. `k` is the smallest integer from 0 whose tag lands within
/// 256 slots of the target (about 32 CRC16s, computed once per queue).
pub fn partition_tag(queue: &str, p: u32) -> String {
    if p == 0 {
        return queue.to_string();
    }
    let target = ((slot(queue) as u32 + (van_der_corput(p) * 16384.0) as u32) % 16384) as u16;
    (0u32..)
        .map(|k| format!("{queue}#{p}.{k}"))
        .find(|t| ring_distance(slot(t), target) <= TAG_TOLERANCE)
        .expect("some k lands near any slot")
}

/// The bit-reversed fraction of `n` in [0, 1): 1 → ½, 2 → ¼, 3 → ¾, 4 → ⅛, …
fn van_der_corput(mut n: u32) -> f64 {
    let (mut v, mut denom) = (0.0, 1.0);
    while n > 0 {
        denom *= 2.0;
        v += (n & 1) as f64 / denom;
        n >>= 1;
    }
    v
}

/// Distance between two slots around the ring of 16,384.
fn ring_distance(a: u16, b: u16) -> u16 {
    let d = a.abs_diff(b);
    d.min(16384 - d)
}

/// The two lanes of a queue: express work has its own stream and reserved capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Ordinary work.
    Bulk,
    /// Urgent work: read first, with capacity bulk work can never occupy.
    Express,
}

impl Lane {
    /// Label used in metrics, logs and the scheduled-set encoding.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Bulk => "bulk",
            Lane::Express => "express",
        }
    }
}

/// Checks a queue name: 1–64 characters from `[A-Za-z0-9_.-]`. Braces would break the
/// hash tag, colons would make key names ambiguous.
pub fn validate_queue_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_QUEUE_NAME {
        return Err(format!(
            "queue name must be 1 to {MAX_QUEUE_NAME} characters, got {}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "queue name {name:?} contains {c:?}; use only letters, digits, '_', '-' and '.'"
        ));
    }
    Ok(())
}

/// All the keys of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    /// The queue's name, as configured.
    pub queue: String,
    /// Bulk lane stream: `ts:{q}:stream`.
    pub stream: String,
    /// Express lane stream: `ts:{q}:express`.
    pub express: String,
    /// Sorted set of delayed and retrying tasks, scored by due time in ms: `ts:{q}:scheduled`.
    pub scheduled: String,
    /// Dead-letter stream: `ts:{q}:dlq`.
    pub dlq: String,
    /// Sorted set of consumer name → last heartbeat (ms): `ts:{q}:heartbeats`.
    pub heartbeats: String,
    /// Set of cancelled task ids: `ts:{q}:cancelled`.
    pub cancelled: String,
    /// Pause flag: `ts:{q}:paused` exists while delivery is paused.
    pub paused: String,
    /// Prefix of idempotency keys: `ts:{q}:idem:` + key.
    pub idem_prefix: String,
    /// Hash of running totals (`done`, `dead`, `retried`): `ts:{q}:counters`.
    pub counters: String,
    /// Hash entry id → executions started after a recovery: `ts:{q}:starts` (poison detection).
    pub starts: String,
    /// Stream of operator signals (cancel, pause, resume) every worker follows: `ts:{q}:signals`.
    pub signals: String,
    /// Prefix of per-type rate limiter keys: `ts:{q}:rate:` + type.
    pub rate_prefix: String,
    /// Hash consumer → "paused" | "running": each replica's applied pause state.
    pub pause_acks: String,
    /// Hash task type → pool name: where producers and the default pool route a type.
    pub routes: String,
    /// The pool these keys read (`None`: the default streams).
    pub pool: Option<String>,
    /// The partition these keys belong to (0 for a queue of one partition).
    pub partition: u32,
}

impl QueueKeys {
    /// Builds the key set for `queue`. The name should have passed [`validate_queue_name`].
    pub fn new(queue: &str) -> QueueKeys {
        QueueKeys::partition(queue, 0)
    }

    /// The keys of partition `p` of `queue`: today's layout under the partition's hash tag
    /// ([`partition_tag`]); partition 0 is [`QueueKeys::new`].
    pub fn partition(queue: &str, p: u32) -> QueueKeys {
        let base = format!("{PREFIX}:{{{}}}", partition_tag(queue, p));
        QueueKeys {
            queue: queue.to_string(),
            stream: format!("{base}:stream"),
            express: format!("{base}:express"),
            scheduled: format!("{base}:scheduled"),
            dlq: format!("{base}:dlq"),
            heartbeats: format!("{base}:heartbeats"),
            cancelled: format!("{base}:cancelled"),
            paused: format!("{base}:paused"),
            idem_prefix: format!("{base}:idem:"),
            counters: format!("{base}:counters"),
            starts: format!("{base}:starts"),
            signals: format!("{base}:signals"),
            rate_prefix: format!("{base}:rate:"),
            pause_acks: format!("{base}:pause_acks"),
            routes: format!("{base}:routes"),
            pool: None,
            partition: p,
        }
    }

    /// The keys of every partition `0..n` of `queue`, as read by `pool`.
    pub fn partitions(queue: &str, pool: Option<&str>, n: u32) -> Vec<QueueKeys> {
        (0..n.max(1))
            .map(|p| QueueKeys::pooled_partition(queue, pool, p))
            .collect()
    }

    /// The keys as a worker pool sees them: `stream`/`express` become the pool's own
    /// streams (`ts:{q}:pool:<pool>` and `ts:{q}:pool:<pool>:express`) and heartbeats are
    /// kept per pool; every other key (schedule, dead letters, signals) is shared.
    pub fn pooled(queue: &str, pool: Option<&str>) -> QueueKeys {
        QueueKeys::pooled_partition(queue, pool, 0)
    }

    /// [`QueueKeys::pooled`] for partition `p`.
    pub fn pooled_partition(queue: &str, pool: Option<&str>, p: u32) -> QueueKeys {
        let mut k = QueueKeys::partition(queue, p);
        if let Some(p) = pool {
            k.stream = k.pool_stream(p, Lane::Bulk);
            k.express = k.pool_stream(p, Lane::Express);
            k.heartbeats = format!("{}:pool:{p}", k.heartbeats);
            k.pool = Some(p.to_string());
        }
        k
    }

    /// Prefix of pool streams: `ts:{q}:pool:`.
    pub fn pool_prefix(&self) -> String {
        format!(
            "{PREFIX}:{{{}}}:pool:",
            partition_tag(&self.queue, self.partition)
        )
    }

    /// How many partitions the queue has (a string, `ts:{q}:partitions`; missing means 1),
    /// written by workers from `partitions` and read by producers.
    pub fn partitions_key(&self) -> String {
        format!("{PREFIX}:{{{}}}:partitions", self.queue)
    }

    /// The stream of `pool`'s `lane`.
    pub fn pool_stream(&self, pool: &str, lane: Lane) -> String {
        match lane {
            Lane::Bulk => format!("{}{pool}", self.pool_prefix()),
            Lane::Express => format!("{}{pool}:express", self.pool_prefix()),
        }
    }

    /// The stream of a lane.
    pub fn lane_stream(&self, lane: Lane) -> &str {
        match lane {
            Lane::Bulk => &self.stream,
            Lane::Express => &self.express,
        }
    }

    /// What a task read from `lane` of these keys' streams gets before its entry id when
    /// it has no `id` field: nothing on the default bulk stream (the id is the entry id,
    /// as it always was), `express:` on the express stream, `pool:<p>:` and
    /// `pool:<p>:express:` on a pool's streams. Entry ids are unique per stream only — a
    /// bulk and an express entry written in one millisecond share one — and entry ids
    /// hold no `:`, so the prefixed ids can collide neither with each other nor with a
    /// bare one (issue 10.1).
    pub fn default_id_prefix(&self, lane: Lane) -> String {
        match (&self.pool, lane) {
            (None, Lane::Bulk) => String::new(),
            (None, Lane::Express) => "express:".to_string(),
            (Some(p), Lane::Bulk) => format!("pool:{p}:"),
            (Some(p), Lane::Express) => format!("pool:{p}:express:"),
        }
    }

    /// `ts:{q}:` under this partition's hash tag: the prefix of the per-key limit's keys
    /// (see [`crate::keylimit`]), shared by every pool of the partition.
    pub fn tag_prefix(&self) -> String {
        format!(
            "{PREFIX}:{{{}}}:",
            partition_tag(&self.queue, self.partition)
        )
    }

    /// Leases of one per-key limit scope: `ts:{q}:lease:<scope>`, a hash whose fields are
    /// `<stream> <entry id>` of the tasks that hold one (see [`crate::keylimit`]).
    pub fn lease(&self, scope: &str) -> String {
        format!("{}lease:{scope}", self.tag_prefix())
    }

    /// Tasks of one scope waiting for a lease: `ts:{q}:parked:<scope>`, a list of task
    /// JSON objects (the scheduled-set member format, with the `stream` they go back to).
    pub fn parked(&self, scope: &str) -> String {
        format!("{}parked:{scope}", self.tag_prefix())
    }

    /// Scopes with parked tasks: `ts:{q}:keyed`, a sorted set scope → its cap.
    pub fn keyed(&self) -> String {
        format!("{}keyed", self.tag_prefix())
    }

    /// The heartbeat set of `group`: `ts:{q}:heartbeats` for the default group,
    /// `ts:{q}:heartbeats:<group>` for the others (a process reads one group per queue,
    /// and recoverers must only judge consumers of their own group).
    pub fn heartbeats_for(&self, group: &str) -> String {
        if group == DEFAULT_GROUP {
            self.heartbeats.clone()
        } else {
            format!("{}:{group}", self.heartbeats)
        }
    }

    /// The record of task `task_id` (state, attempts, timestamps, last error, result,
    /// progress) when the queue keeps results (`result_ttl_secs`, see [`crate::results`]):
    /// `ts:{q}:result:<id>`, a hash in the slot of the partition the task was added to.
    pub fn result(&self, task_id: &str) -> String {
        format!(
            "{PREFIX}:{{{}}}:result:{task_id}",
            partition_tag(&self.queue, self.partition)
        )
    }

    /// The doorbell of task `task_id`: `ts:{q}:done:<id>`, a stream of at most one entry
    /// added when the task ends (succeeded, dead or cancelled) on a queue that keeps
    /// results. Waiters block on it with `XREAD` (see [`crate::results`]).
    pub fn done(&self, task_id: &str) -> String {
        format!(
            "{PREFIX}:{{{}}}:done:{task_id}",
            partition_tag(&self.queue, self.partition)
        )
    }

    /// The claim state of schedule `name` when its tasks go to these keys' partition:
    /// `ts:{q}:schedule:<name>`, in the slot of the streams its ticks are added to.
    pub fn schedule(&self, name: &str) -> String {
        format!(
            "{PREFIX}:{{{}}}:schedule:{name}",
            partition_tag(&self.queue, self.partition)
        )
    }

    /// The idempotency key for a producer-supplied key.
    pub fn idem(&self, key: &str) -> String {
        format!("{}{key}", self.idem_prefix)
    }
}

/// The Redis Cluster slot of `key` (0..16384): CRC16 (XMODEM) of the key, or of its hash
/// tag — the part between the first `{` and the next `}` when that is not empty — modulo
/// 16384, as Redis computes it (`CLUSTER KEYSLOT`).
pub fn slot(key: &str) -> u16 {
    let b = key.as_bytes();
    let hashed = match b.iter().position(|&c| c == b'{') {
        Some(open) => match b[open + 1..].iter().position(|&c| c == b'}') {
            Some(len) if len > 0 => &b[open + 1..open + 1 + len],
            _ => b,
        },
        None => b,
    };
    crc16(hashed) % 16384
}

/// The partition of `n` that a partition key (or idempotency key) picks: CRC16 of the key
/// modulo `n`, so any producer, in any language, picks the same one.
pub fn partition_of(key: &str, n: u32) -> u32 {
    crc16(key.as_bytes()) as u32 % n.max(1)
}

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0), the hash of Redis Cluster slots.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= (byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The worker processes of `queue` (`ts:{Q}:workers`, on partition 0's slot): a hash of
/// consumer name → JSON (host, pid, version, group, pool, concurrency, running, started
/// and beat times), rewritten with each heartbeat and removed with the consumer, so the
/// control plane can list workers with what they run without asking them.
pub fn workers_info(queue: &str) -> String {
    format!("{PREFIX}:{{{}}}:workers", partition_tag(queue, 0))
}

/// The schedule definitions (`ts:schedules`): a hash of schedule name → JSON definition.
pub fn schedules_registry() -> String {
    format!("{PREFIX}:schedules")
}

/// The set of all known queue names, so `stats` and `dlq` can find queues that a
/// producer created before any worker was configured for them.
pub fn queues_registry() -> String {
    format!("{PREFIX}:queues")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_hash_tag() {
        let k = QueueKeys::new("orders");
        for key in [&k.stream, &k.express, &k.scheduled, &k.dlq, &k.heartbeats] {
            assert!(key.starts_with("ts:{orders}:"), "{key}");
        }
        assert_eq!(k.stream, "ts:{orders}:stream");
        assert_eq!(k.idem("abc"), "ts:{orders}:idem:abc");
    }

    #[test]
    fn default_id_prefixes_differ_per_stream() {
        let d = QueueKeys::new("q");
        let p = QueueKeys::pooled("q", Some("gpu"));
        let all = [
            d.default_id_prefix(Lane::Bulk),
            d.default_id_prefix(Lane::Express),
            p.default_id_prefix(Lane::Bulk),
            p.default_id_prefix(Lane::Express),
        ];
        assert_eq!(all[0], "", "the default bulk stream keeps bare entry ids");
        let unique: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(unique.len(), 4, "{all:?}");
    }

    #[test]
    fn slots_are_the_ones_redis_computes() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("bar"), 5061);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}"));
        assert_ne!(
            slot("foo{}{bar}"),
            slot("bar"),
            "an empty tag hashes the whole key"
        );
        let k = QueueKeys::new("orders");
        assert_eq!(slot(&k.stream), slot(&k.express));
        assert_eq!(slot(&k.stream), slot("orders"));
    }

    #[test]
    fn partition_zero_is_the_queue_and_the_others_spread_over_the_ring() {
        assert_eq!(QueueKeys::partition("orders", 0), QueueKeys::new("orders"));
        assert_eq!(
            QueueKeys::partition("orders", 3).stream,
            format!("ts:{{{}}}:stream", partition_tag("orders", 3))
        );
        for q in ["orders", "a", "emails.v2", "x-1"] {
            let tags: Vec<String> = (0..8).map(|p| partition_tag(q, p)).collect();
            let unique: std::collections::HashSet<_> = tags.iter().collect();
            assert_eq!(unique.len(), 8, "{tags:?}");
            assert_eq!(
                partition_tag(q, 5),
                tags[5],
                "the tag of a partition never changes"
            );
            for n in 4..=8usize {
                // Every third of the ring (a default 3-master cluster) holds a partition.
                for third in 0..3u32 {
                    let (lo, hi) = (third * 16384 / 3, (third + 1) * 16384 / 3);
                    assert!(
                        tags[..n]
                            .iter()
                            .any(|t| (lo..hi).contains(&(slot(t) as u32))),
                        "{q} with {n} partitions leaves slots {lo}..{hi} empty"
                    );
                }
            }
        }
    }

    #[test]
    fn van_der_corput_halves_the_gaps() {
        let v: Vec<f64> = (1..=4).map(van_der_corput).collect();
        assert_eq!(v, [0.5, 0.25, 0.75, 0.125]);
        assert_eq!(ring_distance(10, 16380), 14);
    }

    #[test]
    fn queue_names_are_checked() {
        assert!(validate_queue_name("orders.v2-eu_1").is_ok());
        assert!(validate_queue_name("").is_err());
        assert!(validate_queue_name("a{b}").is_err());
        assert!(validate_queue_name("a:b").is_err());
        assert!(validate_queue_name(&"x".repeat(65)).is_err());
    }
}
