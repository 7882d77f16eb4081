//! Process health as `/ready` and `stats` report it: is Redis answering, are the consumer
//! groups in place, is the process shutting down. Process-wide, because readiness is a
//! property of the process that a load balancer or Kubernetes probes.

use std::sync::atomic::{AtomicBool, Ordering};

static REDIS_UP: AtomicBool = AtomicBool::new(false);
static GROUPS_READY: AtomicBool = AtomicBool::new(false);
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// Records whether Redis answered the last command.
pub fn set_redis_up(up: bool) {
    let was = REDIS_UP.swap(up, Ordering::Relaxed);
    if was != up {
        metrics::gauge!(crate::metrics::REDIS_UP).set(if up { 1.0 } else { 0.0 });
    }
}

/// True while Redis answers.
pub fn redis_up() -> bool {
    REDIS_UP.load(Ordering::Relaxed)
}

/// Records that the consumer groups exist.
pub fn set_groups_ready(v: bool) {
    GROUPS_READY.store(v, Ordering::Relaxed);
}

/// True once the consumer groups exist.
pub fn groups_ready() -> bool {
    GROUPS_READY.load(Ordering::Relaxed)
}

/// Records that shutdown began.
pub fn set_shutting_down() {
    SHUTTING_DOWN.store(true, Ordering::Relaxed);
}

/// True after shutdown began.
pub fn shutting_down() -> bool {
    SHUTTING_DOWN.load(Ordering::Relaxed)
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
