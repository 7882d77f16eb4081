//! The pause gate: the one place that decides whether a handler may start.
//!
//! Issue 10.2: readers stopped reading once a queue was paused, but a read already blocked
//! in Redis when the pause arrived still ran what it returned, after the replica had
//! reported `paused` in `ts:{q}:pause_acks`. Checking the flag in the reader cannot close
//! that gap (the entries arrive after the check), so the check moved to the last moment
//! before a handler runs: [`PauseGate::admit`] waits while the queue is paused, and counts
//! the starts it let through until the handler has been polled once.
//! [`PauseGate::close`] flips the flag and then waits for those in-flight starts to drain,
//! so when it returns — and the signal loop reports `paused` only after that — every
//! handler that will run before the resume has already begun. Entries held at the gate
//! keep their slot and stay tracked (the heartbeat refreshes their idle time, so the idle
//! net of another replica does not take them), and start in order of arrival on resume.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Whether handlers of one queue may start, and how many starts are under way.
///
/// Lock-free on the path every task takes: a start first counts itself in `starting`,
/// then reads `paused`; [`PauseGate::close`] first sets `paused`, then waits for
/// `starting` to drain. Both use sequentially consistent atomics, so a start that read
/// "not paused" was counted before the pause was set, and `close` waits for it.
#[derive(Debug, Default)]
pub(crate) struct PauseGate {
    /// Paused by an operator.
    paused: AtomicBool,
    /// Starts let through (or about to look at `paused`) whose handler has not been
    /// polled yet.
    starting: AtomicUsize,
    /// Wakes the starts waiting for a resume.
    resumed: Notify,
}

impl PauseGate {
    /// True while paused.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Waits while the queue is paused, then lets one start through. The start counts as
    /// under way until the returned guard is dropped (after the handler's first poll, in
    /// `execute.rs`).
    pub(crate) async fn admit(&self) -> Start<'_> {
        loop {
            self.starting.fetch_add(1, Ordering::SeqCst);
            if !self.paused.load(Ordering::SeqCst) {
                return Start(self);
            }
            self.starting.fetch_sub(1, Ordering::SeqCst);
            let resumed = self.resumed.notified();
            tokio::pin!(resumed);
            // Registered before the second look, so a resume in between is not missed.
            resumed.as_mut().enable();
            if self.paused.load(Ordering::SeqCst) {
                resumed.await;
            }
        }
    }

    /// Pauses: no start is let through after this returns, and every start let through
    /// before has had its handler polled. Returns whether the state changed.
    pub(crate) async fn close(&self) -> bool {
        let changed = !self.paused.swap(true, Ordering::SeqCst);
        // A start let through is one poll away from its handler: this drains in
        // microseconds, so a short poll is simpler than another notifier.
        while self.starting.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await; // poll
        }
        changed
    }

    /// Resumes; held starts go on. Returns whether the state changed.
    pub(crate) fn open(&self) -> bool {
        let changed = self.paused.swap(false, Ordering::SeqCst);
        self.resumed.notify_waiters();
        changed
    }
}

/// One start under way (see [`PauseGate::admit`]).
pub(crate) struct Start<'a>(&'a PauseGate);

impl Drop for Start<'_> {
    fn drop(&mut self) {
        self.0.starting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_closed_gate_holds_starts_until_it_opens() {
        let g = Arc::new(PauseGate::default());
        assert!(g.close().await);
        assert!(!g.close().await, "closing twice changes nothing");
        let g2 = g.clone();
        let held = tokio::spawn(async move {
            let _s = g2.admit().await;
        });
        tokio::task::yield_now().await;
        assert!(!held.is_finished(), "a start went through a closed gate");
        assert!(g.open());
        held.await.unwrap();
        assert_eq!(g.starting.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn close_waits_for_starts_let_through() {
        let g = Arc::new(PauseGate::default());
        let s = g.admit().await;
        let g2 = g.clone();
        let closing = tokio::spawn(async move { g2.close().await });
        tokio::time::sleep(Duration::from_millis(20)).await; // give close a chance to return early
        assert!(
            !closing.is_finished(),
            "close returned with a start under way"
        );
        drop(s);
        assert!(closing.await.unwrap());
        assert!(g.is_paused());
    }
}
