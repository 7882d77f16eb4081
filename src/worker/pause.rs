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

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;

/// Whether handlers of one queue may start, and how many starts are under way.
#[derive(Debug, Default)]
pub(crate) struct PauseGate {
    /// Paused by an operator. A mutex rather than an atomic so that "not paused, so count
    /// one more start" is one step that [`PauseGate::close`] cannot cut in half.
    paused: Mutex<bool>,
    /// Starts let through whose handler has not been polled yet.
    starting: AtomicUsize,
    /// Wakes the starts waiting for a resume.
    resumed: Notify,
}

impl PauseGate {
    /// True while paused.
    pub(crate) fn is_paused(&self) -> bool {
        *self.paused.lock().expect("poisoned")
    }

    /// Waits while the queue is paused, then lets one start through. The start counts as
    /// under way until the returned guard is dropped (after the handler's first poll:
    /// [`FirstPoll`]).
    pub(crate) async fn admit(&self) -> Start<'_> {
        loop {
            let resumed = self.resumed.notified();
            {
                let paused = self.paused.lock().expect("poisoned");
                if !*paused {
                    self.starting.fetch_add(1, Ordering::SeqCst);
                    return Start(self);
                }
            }
            resumed.await;
        }
    }

    /// Pauses: no start is let through after this returns, and every start let through
    /// before has had its handler polled. Returns whether the state changed.
    pub(crate) async fn close(&self) -> bool {
        let changed = {
            let mut p = self.paused.lock().expect("poisoned");
            !std::mem::replace(&mut *p, true)
        };
        // A start let through is one poll away from its handler: this drains in
        // microseconds, so a short poll is simpler than another notifier.
        while self.starting.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await; // poll
        }
        changed
    }

    /// Resumes; held starts go on. Returns whether the state changed.
    pub(crate) fn open(&self) -> bool {
        let changed = std::mem::replace(&mut *self.paused.lock().expect("poisoned"), false);
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

/// Polls `fut`, dropping `start` once the first poll returned: from then on the handler
/// has begun, and a pause that comes later no longer concerns it.
pub(crate) struct FirstPoll<'a, F> {
    /// The handler's future.
    pub fut: Pin<Box<F>>,
    /// The start it counts as until polled.
    pub start: Option<Start<'a>>,
}

impl<F: Future> Future for FirstPoll<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let r = self.fut.as_mut().poll(cx);
        self.start = None;
        r
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
