//! The entries a worker process holds, in one map.
//!
//! An entry is held from the moment a reader (or recovery) hands it to the process until
//! the settler's round trip has settled it: while it waits for isolation or a rate limit,
//! while its handler runs, and while its settlement is in flight. Three sets used to say
//! this — running entries (touched, cancellable), held entries (skipped by a reader that
//! re-reads its own pending history) and a separate count at shutdown — and they could
//! disagree; now the state of an entry is one value.
//!
//! Operator cancels are kept apart ([`Cancels`]) because they name task ids, which may
//! arrive before the task is delivered; that set is pruned so a long-lived worker does not
//! keep every id ever cancelled.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::keys::Lane;

/// Where a held entry is in its life in this process.
#[derive(Debug)]
enum State {
    /// Handed to the process; its handler has not started (isolation, routing, rate limit).
    Dispatched,
    /// Its handler runs; `cancel` stops it.
    Running {
        /// The task id (operator cancels name it).
        task_id: String,
        /// Fires the handler's cancellation token.
        cancel: CancellationToken,
    },
    /// Finished; its settlement is on the way to Redis.
    Settling,
}

#[derive(Debug)]
struct Held {
    lane: Lane,
    state: State,
}

/// Entry id → state of every entry this process holds.
#[derive(Debug, Default)]
pub(crate) struct Tracked {
    map: Mutex<HashMap<String, Held>>,
}

impl Tracked {
    /// Starts holding `entry_id`.
    pub(crate) fn hold(&self, entry_id: &str, lane: Lane) {
        self.map.lock().expect("poisoned").insert(
            entry_id.to_string(),
            Held {
                lane,
                state: State::Dispatched,
            },
        );
    }

    /// The entry's handler starts.
    pub(crate) fn running(&self, entry_id: &str, task_id: &str, cancel: CancellationToken) {
        if let Some(h) = self.map.lock().expect("poisoned").get_mut(entry_id) {
            h.state = State::Running {
                task_id: task_id.to_string(),
                cancel,
            };
        }
    }

    /// The entry is finished and its settlement sent.
    pub(crate) fn settling(&self, entry_id: &str) {
        if let Some(h) = self.map.lock().expect("poisoned").get_mut(entry_id) {
            h.state = State::Settling;
        }
    }

    /// The settlements of `ids` went through (or were given up on): stop holding them.
    pub(crate) fn release<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        let mut m = self.map.lock().expect("poisoned");
        for id in ids {
            m.remove(id);
        }
    }

    /// True when this process holds `entry_id`.
    pub(crate) fn holds(&self, entry_id: &str) -> bool {
        self.map.lock().expect("poisoned").contains_key(entry_id)
    }

    /// Entries of `lane` not yet finished (dispatched or running): the ones whose idle
    /// clock the heartbeat refreshes, so the idle safety net never takes them away.
    pub(crate) fn unfinished(&self, lane: Lane) -> Vec<String> {
        self.map
            .lock()
            .expect("poisoned")
            .iter()
            .filter(|(_, h)| h.lane == lane && !matches!(h.state, State::Settling))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// How many handlers run now.
    pub(crate) fn running_count(&self) -> usize {
        self.map
            .lock()
            .expect("poisoned")
            .values()
            .filter(|h| matches!(h.state, State::Running { .. }))
            .count()
    }

    /// Fires the cancellation token of every running execution of `task_id`; true when one
    /// ran here.
    pub(crate) fn cancel_task(&self, task_id: &str) -> bool {
        let m = self.map.lock().expect("poisoned");
        let mut found = false;
        for h in m.values() {
            if let State::Running { task_id: t, cancel } = &h.state {
                if t == task_id {
                    cancel.cancel();
                    found = true;
                }
            }
        }
        found
    }
}

/// How many cancelled task ids are remembered at most (the oldest go first).
const MAX_CANCELS: usize = 100_000;
/// How long a cancelled task id is remembered.
const CANCEL_TTL: Duration = Duration::from_secs(24 * 3600);

/// Task ids cancelled by an operator, remembered for [`CANCEL_TTL`] and at most
/// [`MAX_CANCELS`] of them.
#[derive(Debug, Default)]
pub(crate) struct Cancels {
    inner: Mutex<CancelSet>,
}

#[derive(Debug, Default)]
struct CancelSet {
    ids: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl Cancels {
    /// Remembers `task_id` as cancelled.
    pub(crate) fn insert(&self, task_id: &str) {
        self.insert_at(task_id, Instant::now());
    }

    fn insert_at(&self, task_id: &str, at: Instant) {
        let mut s = self.inner.lock().expect("poisoned");
        if s.ids.insert(task_id.to_string(), at).is_none() {
            s.order.push_back((at, task_id.to_string()));
        }
        Self::prune(&mut s, at);
    }

    fn prune(s: &mut CancelSet, now: Instant) {
        while let Some((at, id)) = s.order.front() {
            let expired = now.saturating_duration_since(*at) > CANCEL_TTL;
            if !(expired || s.order.len() > MAX_CANCELS) {
                break;
            }
            if s.ids.get(id) == Some(at) {
                s.ids.remove(id);
            }
            s.order.pop_front();
        }
    }

    /// True when `task_id` was cancelled.
    pub(crate) fn contains(&self, task_id: &str) -> bool {
        let s = self.inner.lock().expect("poisoned");
        !s.ids.is_empty() && s.ids.contains_key(task_id)
    }

    /// How many ids are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().expect("poisoned").ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_state_per_entry_from_dispatch_to_release() {
        let t = Tracked::default();
        t.hold("1-0", Lane::Bulk);
        assert!(t.holds("1-0"));
        assert_eq!(t.unfinished(Lane::Bulk), vec!["1-0".to_string()]);
        assert_eq!(t.running_count(), 0);
        let c = CancellationToken::new();
        t.running("1-0", "task-a", c.clone());
        assert_eq!(t.running_count(), 1);
        assert!(t.unfinished(Lane::Express).is_empty());
        assert!(t.cancel_task("task-a"));
        assert!(c.is_cancelled());
        assert!(!t.cancel_task("task-b"));
        t.settling("1-0");
        assert!(t.holds("1-0"), "held until the settlement went through");
        assert!(t.unfinished(Lane::Bulk).is_empty());
        assert_eq!(t.running_count(), 0);
        t.release(["1-0"].into_iter());
        assert!(!t.holds("1-0"));
    }

    #[test]
    fn cancels_are_pruned_by_age_and_count() {
        let c = Cancels::default();
        let t0 = Instant::now();
        c.insert_at("old", t0);
        assert!(c.contains("old"));
        c.insert_at("new", t0 + CANCEL_TTL + Duration::from_secs(1));
        assert!(!c.contains("old"), "expired ids are forgotten");
        assert!(c.contains("new"));
        for i in 0..(MAX_CANCELS + 10) {
            c.insert_at(&format!("t{i}"), t0 + CANCEL_TTL + Duration::from_secs(2));
        }
        assert!(c.len() <= MAX_CANCELS);
        assert!(
            c.contains(&format!("t{}", MAX_CANCELS + 9)),
            "the newest stays"
        );
        assert!(!c.contains("t0"), "the oldest goes first");
    }
}
