//! Per-key concurrency limits and fairness (issue 13.3): pure decisions, no I/O.
//!
//! A task may carry a **group key** (wire field `group_key`, [`crate::NewTask::group_key`]):
//! a tenant, a customer, an account. With `max_per_key = N` on its queue (or on its type,
//! `[queues.types.T] max_per_key`), at most N tasks of one key run at once across all
//! replicas. What BullMQ Pro sells as groups and Sidekiq Enterprise as limiters, built on
//! three keys per scope in the partition's slot (`keylimit.lua` holds the whole protocol):
//!
//! - **Leases** (`ts:{q}:lease:<scope>`, a hash of `<stream> <entry id>`): a task takes one
//!   when it is read and gives it back in the same round trip that settles it (the settler
//!   sends the release after the ACK). A lease is alive only while its entry is still in its
//!   stream, and every settlement deletes the entry; a lease whose entry is gone is pruned
//!   when the scope is at its cap. So a worker killed holding leases loses nothing and leaks
//!   nothing: recovery re-delivers its entries (the lease goes with the entry, so the cap
//!   still counts the run), and a lease left behind by anything else (a crash between an
//!   ACK and its release, a poison dead letter) is dropped the next time it is in the way.
//! - **Parking** (`ts:{q}:parked:<scope>`): a task read while its key is at the cap is
//!   acknowledged, deleted from the stream and pushed to its scope's list in one atomic
//!   step. It holds no worker slot and no memory in any process while it waits, so the
//!   reader moves on to the tasks behind it: one key's backlog of 100,000 cannot make ten
//!   other keys wait behind it.
//! - **Turns**: a release moves the scope's next parked task back to the *end* of the
//!   stream it came from, with its lease already taken (a newcomer cannot take the place,
//!   and a key's tasks keep their order). Every key re-enters the line behind whatever
//!   the others have queued, so keys are served in turn. `ts:{q}:keyed` lists the scopes
//!   with parked tasks; the recovery loop sweeps a few of them every round, which revives
//!   a scope whose leases were pruned rather than released.
//!
//! The task keeps its id, attempt and enqueue time through parking (its fields travel with
//! it); its entry id changes. A key's tasks must land on one partition for the cap to be
//! global: the producer partitions by group key when no partition key is given (raw
//! producers: CRC16(key) mod N, see `docs/wire-format.md`); otherwise the cap holds per
//! partition. Tasks without a group key, and queues without `max_per_key`, take none of
//! these steps: the hot path is unchanged.

use crate::config::QueueConfig;

/// Longest group key, in bytes.
pub const MAX_GROUP_KEY_LEN: usize = 256;

/// The limit one task falls under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limit {
    /// `<type>#<key>` for a type's own limit, `#<key>` for the queue's (task types
    /// cannot contain `#`, so the two never meet).
    pub scope: String,
    /// Most tasks of the scope running at once.
    pub cap: u32,
}

/// The limit a task of `task_type` with `group_key` falls under on queue `cfg`: the
/// type's `max_per_key`, else the queue's; `None` without a key or a limit.
pub(crate) fn limit_of(
    cfg: &QueueConfig,
    task_type: &str,
    group_key: Option<&str>,
) -> Option<Limit> {
    let key = group_key?;
    if let Some(cap) = cfg.types.get(task_type).and_then(|o| o.max_per_key) {
        return Some(Limit {
            scope: format!("{task_type}#{key}"),
            cap,
        });
    }
    cfg.max_per_key.map(|cap| Limit {
        scope: format!("#{key}"),
        cap,
    })
}

/// True when some task of `cfg` can fall under a limit (the worker then looks at keys).
pub(crate) fn limited(cfg: &QueueConfig) -> bool {
    cfg.max_per_key.is_some() || cfg.types.values().any(|o| o.max_per_key.is_some())
}

/// The lease field of entry `entry_id` of `stream`.
pub(crate) fn lease_field(stream: &str, entry_id: &str) -> String {
    format!("{stream} {entry_id}")
}

/// What a parked task's list element holds: its wire fields as a JSON object (the
/// scheduled-set member format), plus the `stream` it goes back to.
pub(crate) fn parked_item(task: &crate::task::Task, stream: &str) -> String {
    let mut m = serde_json::Map::new();
    for (k, v) in task.encode() {
        m.insert(k.to_string(), serde_json::Value::String(v));
    }
    m.insert("stream".into(), serde_json::Value::String(stream.into()));
    serde_json::Value::Object(m).to_string()
}

/// Checks a group key: 1 to [`MAX_GROUP_KEY_LEN`] bytes.
pub fn validate_group_key(k: &str) -> Result<(), String> {
    if k.is_empty() || k.len() > MAX_GROUP_KEY_LEN {
        return Err(format!(
            "must be 1 to {MAX_GROUP_KEY_LEN} bytes, got {}",
            k.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TypeOverride;

    fn queue(q: Option<u32>, t: Option<u32>) -> QueueConfig {
        let mut c = QueueConfig {
            name: "q".into(),
            max_per_key: q,
            ..QueueConfig::default()
        };
        c.types.insert(
            "render".into(),
            TypeOverride {
                max_per_key: t,
                ..TypeOverride::default()
            },
        );
        c
    }

    #[test]
    fn no_key_or_no_cap_means_no_limit() {
        assert_eq!(limit_of(&queue(Some(2), None), "x", None), None);
        assert_eq!(limit_of(&queue(None, None), "x", Some("acme")), None);
        assert!(!limited(&queue(None, None)));
        assert!(limited(&queue(None, Some(1))));
    }

    #[test]
    fn the_type_limit_wins_and_has_its_own_scope() {
        let c = queue(Some(5), Some(1));
        assert_eq!(
            limit_of(&c, "render", Some("acme")),
            Some(Limit {
                scope: "render#acme".into(),
                cap: 1
            })
        );
        assert_eq!(
            limit_of(&c, "email", Some("acme")),
            Some(Limit {
                scope: "#acme".into(),
                cap: 5
            })
        );
        // A type with no limit of its own on a queue without one: nothing.
        assert_eq!(limit_of(&queue(None, Some(1)), "email", Some("acme")), None);
    }

    #[test]
    fn scopes_of_queue_and_type_cannot_collide() {
        // A queue-level key that looks like a type scope still starts with '#'.
        let c = queue(Some(5), Some(1));
        let a = limit_of(&c, "email", Some("render#acme")).unwrap().scope;
        let b = limit_of(&c, "render", Some("acme")).unwrap().scope;
        assert_ne!(a, b);
    }

    #[test]
    fn group_keys_are_bounded() {
        assert!(validate_group_key("acme").is_ok());
        assert!(validate_group_key("").is_err());
        assert!(validate_group_key(&"k".repeat(MAX_GROUP_KEY_LEN)).is_ok());
        assert!(validate_group_key(&"k".repeat(MAX_GROUP_KEY_LEN + 1)).is_err());
    }

    #[test]
    fn lease_fields_name_stream_and_entry() {
        assert_eq!(lease_field("ts:{q}:stream", "1-0"), "ts:{q}:stream 1-0");
    }
}
