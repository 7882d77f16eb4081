//! What happens to a delivery once its handler returned: the pure half of the worker's
//! hallway.
//!
//! `execute.rs` runs a handler and returns its [`Outcome`]; [`decide`] turns (outcome,
//! attempt, policy, task, lane) into a [`Decision`]; [`settlement`] turns the decision into
//! the [`Settlement`] the settler sends to Redis (dead-letter fields, retry member, reply).
//! Nothing here does I/O, reads a clock or draws a random number (the jitter and `now` are
//! inputs), so every rule is unit- and property-tested below, as `saga/fsm.rs` is.
//!
//! The rules, which are also the contract operators see in the dead-letter stream:
//! - a task an operator cancelled is never retried, whatever its handler returned;
//! - a run cut off by shutdown (the grace period ran out and the handler gave up) is
//!   handed back at once on the same attempt: attempts count handler failures, and
//!   deliveries are bounded apart, by `max_deliveries` (poison detection);
//! - success acknowledges (and replies, when the task asked for a reply);
//! - a retryable failure with attempts left is rescheduled with jittered exponential
//!   backoff (at least what `Retry-After` asked, at most a day), carrying its last error;
//! - a permanent failure, or a retryable one on its last attempt, is dead-lettered with
//!   the reason, the error (bounded), the attempt and where it was read from.

use std::time::Duration;

use crate::backoff::{honour_retry_after, Backoff};
use crate::config::RetryPolicy;
use crate::handler::HandlerError;
use crate::keys::Lane;
use crate::rdb::{ReplyEntry, SettleAction, Settlement};
use crate::reply::{Outcome as ReplyOutcome, Reply};
use crate::task::{Fields, Task};

/// Longest `last_error` a retry carries.
const MAX_LAST_ERROR: usize = 2048;
/// Longest error text in a dead letter or a reply.
const MAX_DLQ_ERROR: usize = 4096;

/// How one handler run ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// The handler returned this result.
    Succeeded(serde_json::Value),
    /// The handler failed (a panic or a timeout is a retryable failure).
    Failed(HandlerError),
}

/// The policy one run of a task is under: the queue's, then the type's, then the task's own
/// overrides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RunPolicy {
    /// Attempts in all.
    pub max_attempts: u32,
    /// Handler time limit.
    pub timeout: Duration,
    /// Retry delays.
    pub backoff: Backoff,
}

/// Applies the task's own overrides to its type's policy.
pub(crate) fn run_policy(policy: RetryPolicy, task: &Task) -> RunPolicy {
    let mut backoff = policy.backoff;
    if let Some(b) = task.backoff_base_ms {
        backoff.base = Duration::from_millis(b);
    }
    if let Some(c) = task.backoff_cap_ms {
        backoff.cap = Duration::from_millis(c).max(backoff.base);
    }
    RunPolicy {
        max_attempts: task.max_attempts.unwrap_or(policy.max_attempts),
        timeout: task
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(policy.timeout),
        backoff,
    }
}

/// What to do with a finished delivery.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// Acknowledge; reply with the result when the task asked for a reply.
    Succeeded(serde_json::Value),
    /// Reschedule `next` in `delay`.
    Retry {
        /// How long from now.
        delay: Duration,
        /// The task as it runs next time (attempt + 1, last error).
        next: Box<Task>,
        /// The error, for the log.
        error: String,
    },
    /// Dead-letter it.
    Dead {
        /// Metric label: `failed` (permanent) or `exhausted` (out of attempts).
        label: &'static str,
        /// Reason written to `dlq_reason`.
        reason: String,
        /// The handler's error (bounded).
        error: String,
    },
    /// An operator cancelled it: acknowledge, count as cancelled, never retry.
    Cancelled,
    /// Shutdown cut it off (or it never started): hand it back at once, on the same
    /// attempt — an interrupted run is not a failure of the task.
    HandBack,
}

/// The one rule book: see the module docs. `jitter` is in `[0, 1)`; `interrupted` says the
/// worker's grace period ran out while the handler ran (it was told to stop).
pub(crate) fn decide(
    outcome: Outcome,
    cancelled: bool,
    interrupted: bool,
    attempt: u32,
    policy: &RunPolicy,
    task: &Task,
    jitter: f64,
) -> Decision {
    if cancelled {
        return Decision::Cancelled;
    }
    match outcome {
        Outcome::Succeeded(v) => Decision::Succeeded(v),
        Outcome::Failed(_) if interrupted => Decision::HandBack,
        Outcome::Failed(HandlerError::Retryable {
            message,
            retry_after,
        }) if attempt < policy.max_attempts => {
            let delay = honour_retry_after(policy.backoff.delay(attempt, jitter), retry_after);
            let mut next = task.clone();
            next.attempt = attempt + 1;
            next.last_error = Some(truncate(&message, MAX_LAST_ERROR));
            Decision::Retry {
                delay,
                next: Box::new(next),
                error: message,
            }
        }
        Outcome::Failed(e) => {
            let (label, reason) = match &e {
                HandlerError::Permanent { .. } => ("failed", "failed: permanent error".to_string()),
                HandlerError::Retryable { .. } => (
                    "exhausted",
                    format!(
                        "exhausted: {attempt} of {} attempts failed",
                        policy.max_attempts
                    ),
                ),
            };
            Decision::Dead {
                label,
                reason,
                error: truncate(e.message(), MAX_DLQ_ERROR),
            }
        }
    }
}

/// Facts about the reader a settlement needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    /// Queue name (in replies).
    pub queue: &'a str,
    /// Consumer group.
    pub group: &'a str,
    /// Consumer name.
    pub consumer: &'a str,
    /// Pool of the reader, if it is one (retries go back to the pool's stream).
    pub pool: Option<&'a str>,
    /// False on fan-out queues: a retry is then meant for this group only.
    pub delete_on_ack: bool,
}

/// One delivery being settled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivery<'a> {
    /// Lane it came from.
    pub lane: Lane,
    /// Stream entry id.
    pub entry_id: &'a str,
    /// Attempt number this run had.
    pub attempt: u32,
    /// A recovered entry (its start marks go with the settlement).
    pub recovered: bool,
    /// Unix ms now.
    pub now_ms: u64,
}

/// The settlement that carries out `decision` for `task`.
pub(crate) fn settlement(
    decision: Decision,
    task: &Task,
    r: Reader<'_>,
    d: Delivery<'_>,
) -> Settlement {
    let (action, reply) = match decision {
        Decision::Succeeded(v) => (
            SettleAction::Ok,
            task.reply_to
                .as_ref()
                .and_then(|_| reply(task, r.queue, Ok(&v.to_string()), d.now_ms)),
        ),
        Decision::Retry { delay, next, .. } => (retry(*next, r, d, delay), None),
        Decision::HandBack => (retry(task.clone(), r, d, Duration::ZERO), None),
        Decision::Dead { reason, error, .. } => {
            let mut fields =
                dead_letter_fields(task_fields(task), r, d, &reason, &error, d.attempt);
            fields.retain(|(k, _)| k.as_slice() != b"attempt");
            fields.push((b"attempt".to_vec(), d.attempt.to_string().into_bytes()));
            (
                SettleAction::Dead(fields),
                reply(task, r.queue, Err(&error), d.now_ms),
            )
        }
        Decision::Cancelled => (
            SettleAction::Cancelled,
            reply(task, r.queue, Err("cancelled"), d.now_ms),
        ),
    };
    Settlement {
        lane: d.lane,
        entry_id: d.entry_id.to_string(),
        action,
        reply,
        recovered: d.recovered,
        trace: None,
        record: None,
        lease: None,
    }
}

/// The settlement that holds `task` back while its circuit breaker is open: back in the
/// schedule on the same attempt, due at `until_ms` (see [`crate::breaker`]).
pub(crate) fn held(task: &Task, r: Reader<'_>, d: Delivery<'_>, until_ms: u64) -> Settlement {
    let delay = Duration::from_millis(until_ms.saturating_sub(d.now_ms));
    Settlement {
        lane: d.lane,
        entry_id: d.entry_id.to_string(),
        action: retry(task.clone(), r, d, delay),
        reply: None,
        recovered: d.recovered,
        trace: None,
        record: None,
        lease: None,
    }
}

/// `next` back in the schedule, due in `delay` (a retry for this group only on a fan-out
/// queue).
fn retry(mut next: Task, r: Reader<'_>, d: Delivery<'_>, delay: Duration) -> SettleAction {
    if !r.delete_on_ack {
        next.only_group = Some(r.group.to_string());
    }
    SettleAction::Retry {
        due_ms: d.now_ms + delay.as_millis() as u64,
        member: next.encode_json_for(d.lane, r.pool),
    }
}

/// The settlement of an entry dead-lettered before it ran (malformed, unknown type):
/// `fields` are the entry's own, `task` is there when the entry decoded.
pub(crate) fn dead_on_arrival(
    fields: Fields,
    task: Option<&Task>,
    reason: &str,
    r: Reader<'_>,
    d: Delivery<'_>,
) -> Settlement {
    let attempts = task.map(|t| t.attempt).unwrap_or(0);
    let fields = dead_letter_fields(fields, r, d, reason, reason, attempts);
    Settlement {
        lane: d.lane,
        entry_id: d.entry_id.to_string(),
        action: SettleAction::Dead(fields),
        reply: task.and_then(|t| reply(t, r.queue, Err(reason), d.now_ms)),
        recovered: d.recovered,
        trace: None,
        record: None,
        lease: None,
    }
}

/// A settlement with nothing to write but the ACK (not ours, or deleted while pending).
/// `recovered`: the entry was re-delivered, so its start marker goes too (issue 10.5: a
/// re-delivered entry settled before it ran used to leave `ts:{q}:starts` behind).
pub(crate) fn skip(lane: Lane, entry_id: &str, recovered: bool) -> Settlement {
    Settlement {
        lane,
        entry_id: entry_id.to_string(),
        action: SettleAction::Skip,
        reply: None,
        recovered,
        trace: None,
        record: None,
        lease: None,
    }
}

/// The settlement that hands `task` to the stream `target` of the pool serving its type.
pub(crate) fn moved(
    lane: Lane,
    entry_id: &str,
    task: &Task,
    target: String,
    recovered: bool,
) -> Settlement {
    Settlement {
        lane,
        entry_id: entry_id.to_string(),
        action: SettleAction::Move {
            target,
            fields: task_fields(task),
        },
        reply: None,
        recovered,
        trace: None,
        record: None,
        lease: None,
    }
}

/// The task's wire fields as byte pairs.
pub(crate) fn task_fields(task: &Task) -> Fields {
    task.encode()
        .into_iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.into_bytes()))
        .collect()
}

fn dead_letter_fields(
    mut fields: Fields,
    r: Reader<'_>,
    d: Delivery<'_>,
    reason: &str,
    error: &str,
    attempts: u32,
) -> Fields {
    let mut add = |k: &str, v: String| fields.push((k.as_bytes().to_vec(), v.into_bytes()));
    add("dlq_reason", reason.to_string());
    add("dlq_error", error.to_string());
    add("dlq_attempts", attempts.to_string());
    add("dlq_at", d.now_ms.to_string());
    add("dlq_entry_id", d.entry_id.to_string());
    add("dlq_lane", d.lane.as_str().to_string());
    add("dlq_group", r.group.to_string());
    add("dlq_consumer", r.consumer.to_string());
    fields
}

/// The reply entry of `task` (when it asked for one): `Ok(result JSON)` or `Err(error)`.
fn reply(task: &Task, queue: &str, result: Result<&str, &str>, now_ms: u64) -> Option<ReplyEntry> {
    let stream = task.reply_to.clone()?;
    let (outcome, result, error) = match result {
        Ok(v) => (ReplyOutcome::Succeeded, Some(v.to_string()), None),
        Err(e) => (ReplyOutcome::Failed, None, Some(e.to_string())),
    };
    let r = Reply {
        task_id: task.id.clone(),
        task_type: task.task_type.clone(),
        queue: queue.to_string(),
        outcome,
        attempt: task.attempt,
        at_ms: now_ms,
        result,
        error,
        saga_id: task.saga_id.clone(),
        correlation: task.correlation.clone(),
        traceparent: task.traceparent.clone(),
    };
    Some(ReplyEntry {
        stream,
        fields: r.encode(),
    })
}

/// `s` cut to at most `max` bytes on a character boundary, with an ellipsis when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(max_attempts: u32) -> RunPolicy {
        RunPolicy {
            max_attempts,
            timeout: Duration::from_secs(30),
            backoff: Backoff {
                base: Duration::from_millis(100),
                cap: Duration::from_secs(10),
            },
        }
    }

    const R: Reader<'static> = Reader {
        queue: "q",
        group: "taskstream",
        consumer: "c1",
        pool: None,
        delete_on_ack: true,
    };

    fn d(attempt: u32) -> Delivery<'static> {
        Delivery {
            lane: Lane::Bulk,
            entry_id: "5-0",
            attempt,
            recovered: false,
            now_ms: 1_000,
        }
    }

    fn retryable(m: &str) -> Outcome {
        Outcome::Failed(HandlerError::retryable(m))
    }

    fn field<'a>(f: &'a Fields, k: &str) -> Vec<&'a [u8]> {
        f.iter()
            .filter(|(n, _)| n.as_slice() == k.as_bytes())
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    #[test]
    fn success_acks_and_replies_only_when_asked() {
        let t = Task::new("t1", "echo", "{}");
        let dec = decide(
            Outcome::Succeeded(serde_json::json!(1)),
            false,
            false,
            1,
            &policy(3),
            &t,
            0.5,
        );
        let s = settlement(dec.clone(), &t, R, d(1));
        assert_eq!(s.action, SettleAction::Ok);
        assert!(s.reply.is_none());
        assert!(s.plain_ack());
        let mut t2 = t.clone();
        t2.reply_to = Some("replies".into());
        let s = settlement(dec, &t2, R, d(1));
        let reply = s.reply.expect("asked for a reply");
        assert_eq!(reply.stream, "replies");
        assert!(reply.fields.contains(&("outcome", "succeeded".into())));
        assert!(reply.fields.contains(&("result", "1".into())));
    }

    #[test]
    fn a_retry_carries_the_error_and_goes_back_to_its_pool() {
        let t = Task::new("t1", "echo", "{}");
        let dec = decide(retryable("boom"), false, false, 1, &policy(3), &t, 0.0);
        let Decision::Retry {
            delay, ref next, ..
        } = dec
        else {
            panic!("{dec:?}")
        };
        assert_eq!(delay, Duration::from_millis(50));
        assert_eq!(next.attempt, 2);
        assert_eq!(next.last_error.as_deref(), Some("boom"));
        let pooled = Reader {
            pool: Some("gpu"),
            delete_on_ack: false,
            ..R
        };
        let s = settlement(dec, &t, pooled, d(1));
        let SettleAction::Retry { due_ms, member } = s.action else {
            panic!()
        };
        assert_eq!(due_ms, 1_050);
        assert!(member.contains("\"pool\":\"gpu\""), "{member}");
        assert!(member.contains("only_group"), "{member}");
    }

    #[test]
    fn permanent_and_exhausted_failures_are_dead_lettered_with_their_reason() {
        let t = Task::new("t1", "echo", "{}");
        let perm = Outcome::Failed(HandlerError::permanent("bad input"));
        let dec = decide(perm, false, false, 1, &policy(3), &t, 0.5);
        assert!(matches!(
            &dec,
            Decision::Dead {
                label: "failed",
                ..
            }
        ));
        let dec = decide(retryable("again"), false, false, 3, &policy(3), &t, 0.5);
        let Decision::Dead { label, reason, .. } = &dec else {
            panic!("{dec:?}")
        };
        assert_eq!(*label, "exhausted");
        assert_eq!(reason, "exhausted: 3 of 3 attempts failed");
        let s = settlement(dec, &t, R, d(3));
        let SettleAction::Dead(f) = &s.action else {
            panic!()
        };
        assert_eq!(field(f, "attempt"), vec![b"3".as_slice()]);
        assert_eq!(field(f, "dlq_error"), vec![b"again".as_slice()]);
        assert_eq!(field(f, "dlq_entry_id"), vec![b"5-0".as_slice()]);
        assert_eq!(field(f, "type"), vec![b"echo".as_slice()]);
    }

    #[test]
    fn a_cancelled_task_is_never_retried() {
        let mut t = Task::new("t1", "echo", "{}");
        t.reply_to = Some("r".into());
        let dec = decide(retryable("x"), true, false, 1, &policy(5), &t, 0.5);
        assert_eq!(dec, Decision::Cancelled);
        let s = settlement(dec, &t, R, d(1));
        assert_eq!(s.action, SettleAction::Cancelled);
        assert!(s
            .reply
            .unwrap()
            .fields
            .contains(&("error", "cancelled".into())));
    }

    #[test]
    fn an_interrupted_run_goes_back_at_once_on_the_same_attempt() {
        let t = Task {
            attempt: 3,
            ..Task::new("t1", "echo", "{}")
        };
        // Even on its last attempt: the run was cut off, it did not fail.
        let dec = decide(retryable("cancelled"), false, true, 3, &policy(3), &t, 0.9);
        assert_eq!(dec, Decision::HandBack);
        let s = settlement(dec, &t, R, d(3));
        let SettleAction::Retry { due_ms, member } = s.action else {
            panic!()
        };
        assert_eq!(due_ms, 1_000, "no backoff");
        assert!(member.contains("\"attempt\":\"3\""), "{member}");
        // An operator's cancel still wins, and a run that succeeded anyway succeeded.
        let dec = decide(retryable("x"), true, true, 1, &policy(3), &t, 0.5);
        assert_eq!(dec, Decision::Cancelled);
        let ok = Outcome::Succeeded(serde_json::json!(null));
        let dec = decide(ok, false, true, 1, &policy(3), &t, 0.5);
        assert!(matches!(dec, Decision::Succeeded(_)));
    }

    #[test]
    fn task_overrides_win_and_the_cap_never_falls_below_the_base() {
        let base = RetryPolicy {
            max_attempts: 3,
            timeout: Duration::from_secs(30),
            backoff: Backoff {
                base: Duration::from_millis(100),
                cap: Duration::from_secs(10),
            },
        };
        let mut t = Task::new("t1", "echo", "{}");
        t.max_attempts = Some(7);
        t.timeout_ms = Some(5);
        t.backoff_base_ms = Some(2_000);
        t.backoff_cap_ms = Some(1_000);
        let p = run_policy(base, &t);
        assert_eq!(p.max_attempts, 7);
        assert_eq!(p.timeout, Duration::from_millis(5));
        assert_eq!(p.backoff.base, Duration::from_millis(2_000));
        assert_eq!(p.backoff.cap, Duration::from_millis(2_000));
    }

    #[test]
    fn truncate_cuts_on_a_character_boundary() {
        assert_eq!(truncate("héllo", 2), "h…");
        assert_eq!(truncate("abc", 3), "abc");
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Succeeded(serde_json::json!({"ok": true}))),
            ".{0,40}".prop_map(|m| Outcome::Failed(HandlerError::permanent(m))),
            (".{0,40}", proptest::option::of(0u64..200_000)).prop_map(|(m, ra)| {
                Outcome::Failed(HandlerError::Retryable {
                    message: m,
                    retry_after: ra.map(Duration::from_millis),
                })
            }),
        ]
    }

    proptest! {
        #[test]
        fn decisions_follow_the_rule_book(
            out in outcome(),
            cancelled in any::<bool>(),
            interrupted in any::<bool>(),
            attempt in 1u32..20,
            max in 1u32..20,
            jitter in 0.0f64..1.0,
        ) {
            let t = Task::new("t", "x", "{}");
            let p = policy(max);
            let dec = decide(out.clone(), cancelled, interrupted, attempt, &p, &t, jitter);
            match (&dec, &out) {
                (Decision::Cancelled, _) => prop_assert!(cancelled),
                (_, _) if cancelled => prop_assert!(false, "cancelled but {:?}", dec),
                (Decision::Succeeded(_), Outcome::Succeeded(_)) => {}
                (Decision::HandBack, Outcome::Failed(_)) => prop_assert!(interrupted),
                (_, Outcome::Failed(_)) if interrupted => prop_assert!(false, "interrupted but {:?}", dec),
                (Decision::Retry { delay, next, .. }, Outcome::Failed(HandlerError::Retryable { retry_after, .. })) => {
                    prop_assert!(attempt < max, "never retried past max_attempts");
                    prop_assert_eq!(next.attempt, attempt + 1);
                    prop_assert!(*delay >= p.backoff.ceiling(attempt) / 2);
                    prop_assert!(*delay <= Duration::from_secs(86_400));
                    if let Some(ra) = retry_after {
                        prop_assert!(*delay >= (*ra).min(Duration::from_secs(86_400)));
                    } else {
                        prop_assert!(*delay <= p.backoff.ceiling(attempt));
                    }
                }
                (Decision::Dead { label: "failed", .. }, Outcome::Failed(HandlerError::Permanent { .. })) => {}
                (Decision::Dead { label: "exhausted", .. }, Outcome::Failed(HandlerError::Retryable { .. })) => {
                    prop_assert!(attempt >= max);
                }
                _ => prop_assert!(false, "{:?} from {:?}", dec, out),
            }
        }

        #[test]
        fn every_dead_letter_names_its_reason_and_one_attempt(
            attempt in 1u32..50,
            msg in ".{0,5000}",
        ) {
            let t = Task::new("t", "x", "{}");
            let dec = decide(Outcome::Failed(HandlerError::permanent(msg)), false, false, attempt, &policy(3), &t, 0.3);
            let s = settlement(dec, &t, R, d(attempt));
            let SettleAction::Dead(f) = &s.action else { panic!() };
            prop_assert_eq!(field(f, "attempt").len(), 1);
            prop_assert_eq!(field(f, "dlq_reason").len(), 1);
            prop_assert!(field(f, "dlq_error")[0].len() <= MAX_DLQ_ERROR + '…'.len_utf8());
        }
    }
}
