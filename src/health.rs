//! Process health as `/ready` and `stats` report it: is Redis answering, does it refuse a
//! command the process needs (an ACL permission missing), are the consumer groups in
//! place, is the process shutting down. Process-wide, because readiness is a property of
//! the process that a load balancer or Kubernetes probes.
//!
//! Permission refusals (issue 10.6) are kept per command: `crate::rdb` records each
//! `NOPERM` under the command that was sent and clears it at the next success of that
//! same command. So the process is not ready from the first refusal until every refused
//! command has gone through again — once the permission is granted at runtime the loop
//! that was refused retries and clears it by itself, with no restart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

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

/// Refused commands: key (the command sent) → the message naming it and the fix.
static REFUSED: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
/// How many entries `REFUSED` holds (read on every reply, so kept lock-free).
static REFUSED_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Records that Redis refused `key` (a command) with `message`; true when it is new.
pub(crate) fn permission_refused(key: &str, message: String) -> bool {
    let mut m = REFUSED.lock().expect("poisoned");
    let new = m.insert(key.to_string(), message).is_none();
    REFUSED_COUNT.store(m.len(), Ordering::Relaxed);
    new
}

/// Clears the refusal of `key` after a success of it; returns its message if there was one.
pub(crate) fn permission_granted(key: &str) -> Option<String> {
    let mut m = REFUSED.lock().expect("poisoned");
    let was = m.remove(key);
    REFUSED_COUNT.store(m.len(), Ordering::Relaxed);
    was
}

/// True while some refusal is recorded (cheap: checked on every reply).
pub(crate) fn any_refused() -> bool {
    REFUSED_COUNT.load(Ordering::Relaxed) > 0
}

/// Every permission refusal that lasts, one message each: the refused command, the ACL
/// user and the `ACL SETUSER` that grants it. Empty when Redis refuses nothing.
pub fn permission_problems() -> Vec<String> {
    if !any_refused() {
        return Vec::new();
    }
    REFUSED
        .lock()
        .expect("poisoned")
        .values()
        .cloned()
        .collect()
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

/// Why the process is not ready, or `None` when it is. A refused command reads as
/// "redis refuses a command (NOPERM)"; [`permission_problems`] names each with its fix
/// (`/ready` shows both), and [`not_ready_message`] puts them together.
pub fn not_ready_reason() -> Option<&'static str> {
    if shutting_down() {
        Some("shutting down")
    } else if !redis_up() {
        Some("redis unreachable")
    } else if any_refused() {
        Some("redis refuses a command this process needs (NOPERM)")
    } else if !groups_ready() {
        Some("consumer groups not created yet")
    } else {
        None
    }
}

/// The whole not-ready text as `/ready` serves it: `not ready: <reason>`, then one line per
/// refused command with its fix (also when another reason comes first); `None` when ready.
pub fn not_ready_message() -> Option<String> {
    let reason = not_ready_reason()?;
    let mut text = format!("not ready: {reason}\n");
    for p in permission_problems() {
        text.push_str(&p);
        text.push('\n');
    }
    Some(text)
}
