//! The Redis keys of sagas, in one place (a public contract, see `docs/sagas.md`).
//!
//! A saga's own keys carry its id as a hash tag (`ts:saga:{ID}`, `ts:saga:{ID}:history`)
//! so they live on one slot, but a transition also touches the shared indexes, the
//! deadline set, the reply stream's neighbours and the queue streams its tasks go to.
//! Those span slots: sagas need a single (non-cluster) Redis, or a cluster-aware
//! deployment that routes every `ts:*` key to one node.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saga_keys_share_the_hash_tag() {
        assert_eq!(saga("abc"), "ts:saga:{abc}");
        assert_eq!(history("abc"), "ts:saga:{abc}:history");
        assert_eq!(state_index("running"), "ts:sagas:state:running");
    }
}
