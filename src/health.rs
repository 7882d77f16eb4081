//! Process health as `/ready` and `stats` report it: is Redis answering, are the consumer
//! groups in place, is the process shutting down. Process-wide, because readiness is a
//! property of the process that a load balancer or Kubernetes probes.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

static REDIS_UP: AtomicBool = AtomicBool::new(false);
static GROUPS_READY: AtomicBool = AtomicBool::new(false);
/// Unix ms since when Redis has answered without interruption (0: not answering).
static UP_SINCE_MS: AtomicU64 = AtomicU64::new(0);

/// Records whether Redis answered the last command.
pub fn set_redis_up(up: bool) {
    let was = REDIS_UP.swap(up, Ordering::Relaxed);
    if up && !was {
        UP_SINCE_MS.store(crate::task::now_ms(), Ordering::Relaxed);
    } else if !up {
        UP_SINCE_MS.store(0, Ordering::Relaxed);
    }
    if was != up {
        metrics::gauge!(crate::metrics::REDIS_UP).set(if up { 1.0 } else { 0.0 });
    }
}

/// True while Redis answers.
pub fn redis_up() -> bool {
    REDIS_UP.load(Ordering::Relaxed)
}

/// How long Redis has answered without interruption, in ms (0 while it does not).
///
/// Recovery uses it: right after an outage (Redis restarted, paused or unreachable) every
/// heartbeat in Redis looks stale, so no consumer may be judged dead until live workers
/// have had a full lapse to beat again — otherwise a partition would make every worker
/// steal every other worker's running tasks.
pub fn redis_up_for_ms() -> u64 {
    match UP_SINCE_MS.load(Ordering::Relaxed) {
        0 => 0,
        t => crate::task::now_ms().saturating_sub(t),
    }
}

/// Records that the consumer groups exist.
pub fn set_groups_ready(v: bool) {
    GROUPS_READY.store(v, Ordering::Relaxed);
}

/// True once the consumer groups exist.
pub fn groups_ready() -> bool {
    GROUPS_READY.load(Ordering::Relaxed)
}

/// Components (workers, orchestrators) serving now.
static SERVING: AtomicUsize = AtomicUsize::new(0);
/// Set once any component began shutting down.
static ANY_STOPPED: AtomicBool = AtomicBool::new(false);

/// A component that serves while this guard lives: see [`serving`]. The process reads as
/// "shutting down" only once some component began shutting down and none serves any more,
/// so a second [`crate::Worker`] in one process that stops does not take the first out of
/// rotation (the first release kept one process-wide flag).
#[derive(Debug)]
pub struct Serving {
    stopping: bool,
}

/// Registers a component as serving.
pub fn serving() -> Serving {
    SERVING.fetch_add(1, Ordering::SeqCst);
    Serving { stopping: false }
}

impl Serving {
    /// This component began shutting down.
    pub fn shutting_down(&mut self) {
        if !self.stopping {
            self.stopping = true;
            ANY_STOPPED.store(true, Ordering::SeqCst);
            SERVING.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.shutting_down();
    }
}

/// True once a component began shutting down and no other still serves.
pub fn shutting_down() -> bool {
    ANY_STOPPED.load(Ordering::SeqCst) && SERVING.load(Ordering::SeqCst) == 0
}

/// Why the process is not ready, or `None` when it is.
pub fn not_ready_reason() -> Option<&'static str> {
    if shutting_down() {
        Some("shutting down")
    } else if !redis_up() {
        Some("redis unreachable")
    } else if !groups_ready() {
        Some("consumer groups not created yet")
    } else {
        None
    }
}
