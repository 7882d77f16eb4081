//! The reply of a task: the entry a worker adds to the task's `reply_to` stream when the
//! task is settled (succeeded, or failed for good), and the orchestrator reads back.
//!
//! This is a public contract (`docs/wire-format.md`, "Replies"), the twin of the task
//! envelope in [`crate::task`]: one type with [`Reply::encode`] and [`Reply::decode`], so
//! the writer (the worker) and the reader (the saga orchestrator) cannot drift apart.
//! Before it, the worker built the fields as a list of string literals and the
//! orchestrator looked them up by other string literals; a renamed field would have been
//! silently read as "missing" and its reply dropped (issue 9.3).
//!
//! Field order on the wire (kept byte for byte from the first release):
//! `task_id, type, queue, outcome, attempt, at`, then `result` (succeeded) or `error`
//! (failed), then `saga_id`, `correlation`, `traceparent` when set.

use crate::task::MAX_TYPE_LEN;

/// Field names of a reply entry, in one place.
pub mod field {
    /// Task id of the task that replied.
    pub const TASK_ID: &str = "task_id";
    /// Its task type.
    pub const TYPE: &str = "type";
    /// The queue it ran on.
    pub const QUEUE: &str = "queue";
    /// `succeeded` or `failed`.
    pub const OUTCOME: &str = "outcome";
    /// The attempt (1-based) that settled it.
    pub const ATTEMPT: &str = "attempt";
    /// Unix ms when it was settled.
    pub const AT: &str = "at";
    /// The handler's result (JSON text), on success.
    pub const RESULT: &str = "result";
    /// The handler's last error message, on failure.
    pub const ERROR: &str = "error";
    /// Saga id, for saga steps.
    pub const SAGA_ID: &str = "saga_id";
    /// The task's `correlation`, echoed back (sagas: `ID|STEP|action-or-comp|REV`).
    pub const CORRELATION: &str = "correlation";
    /// The task's W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
}

/// How the task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The handler returned a result.
    Succeeded,
    /// The task failed for good (permanent error, or every attempt failed). Intermediate
    /// failures that are retried send no reply.
    Failed,
}

impl Outcome {
    /// The wire text: `succeeded` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
        }
    }
}

/// One reply entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Id of the task that replied.
    pub task_id: String,
    /// Its task type.
    pub task_type: String,
    /// The queue it ran on.
    pub queue: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The attempt (1-based) that settled it.
    pub attempt: u32,
    /// Unix ms when it was settled.
    pub at_ms: u64,
    /// The handler's result as JSON text; written when `outcome` is `Succeeded`.
    pub result: Option<String>,
    /// The last error message; written when `outcome` is `Failed`.
    pub error: Option<String>,
    /// Saga id, for saga steps.
    pub saga_id: Option<String>,
    /// The task's correlation, echoed back.
    pub correlation: Option<String>,
    /// The task's W3C trace context.
    pub traceparent: Option<String>,
}

/// Why a stream entry is not a valid reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A required field is absent.
    #[error("malformed reply: required field `{0}` is missing (a taskstream worker always writes it; was the entry written by hand?)")]
    Missing(&'static str),
    /// A field is not UTF-8 text.
    #[error("malformed reply: field `{0}` is not valid UTF-8")]
    NotUtf8(String),
    /// A field has a value outside the contract.
    #[error("malformed reply: field `{field}` {reason}")]
    Invalid {
        /// Field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Reply {
    /// The entry's fields in wire order (see the module documentation). A `Succeeded`
    /// reply without a result writes `result` as `null`; a `Failed` one without an error
    /// writes an empty `error`.
    pub fn encode(&self) -> Vec<(&'static str, String)> {
        let mut f: Vec<(&'static str, String)> = Vec::with_capacity(10);
        f.push((field::TASK_ID, self.task_id.clone()));
        f.push((field::TYPE, self.task_type.clone()));
        f.push((field::QUEUE, self.queue.clone()));
        f.push((field::OUTCOME, self.outcome.as_str().to_string()));
        f.push((field::ATTEMPT, self.attempt.to_string()));
        f.push((field::AT, self.at_ms.to_string()));
        match self.outcome {
            Outcome::Succeeded => f.push((
                field::RESULT,
                self.result.clone().unwrap_or_else(|| "null".into()),
            )),
            Outcome::Failed => f.push((field::ERROR, self.error.clone().unwrap_or_default())),
        }
        if let Some(s) = &self.saga_id {
            f.push((field::SAGA_ID, s.clone()));
        }
        if let Some(c) = &self.correlation {
            f.push((field::CORRELATION, c.clone()));
        }
        if let Some(t) = &self.traceparent {
            f.push((field::TRACEPARENT, t.clone()));
        }
        f
    }

    /// Parses the field/value pairs of a reply entry (any order; unknown fields are
    /// ignored, for forward compatibility). Never panics: what does not fit the contract
    /// is a [`ReplyError`] naming the field.
    pub fn decode(fields: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Reply, ReplyError> {
        let mut task_id = None;
        let mut task_type = None;
        let mut queue = None;
        let mut outcome = None;
        let mut attempt = None;
        let mut at = None;
        let mut result = None;
        let mut error = None;
        let mut saga_id = None;
        let mut correlation = None;
        let mut traceparent = None;
        for (name, value) in fields {
            let slot = match name.as_slice() {
                b"task_id" => &mut task_id,
                b"type" => &mut task_type,
                b"queue" => &mut queue,
                b"outcome" => &mut outcome,
                b"attempt" => &mut attempt,
                b"at" => &mut at,
                b"result" => &mut result,
                b"error" => &mut error,
                b"saga_id" => &mut saga_id,
                b"correlation" => &mut correlation,
                b"traceparent" => &mut traceparent,
                _ => continue,
            };
            let text = String::from_utf8(value)
                .map_err(|_| ReplyError::NotUtf8(String::from_utf8_lossy(&name).into_owned()))?;
            *slot = Some(text);
        }
        let outcome = match outcome.as_deref() {
            None => return Err(ReplyError::Missing(field::OUTCOME)),
            Some("succeeded") => Outcome::Succeeded,
            Some("failed") => Outcome::Failed,
            Some(other) => {
                return Err(ReplyError::Invalid {
                    field: field::OUTCOME,
                    reason: format!("is {other:?}; expected \"succeeded\" or \"failed\""),
                })
            }
        };
        let task_type = task_type.ok_or(ReplyError::Missing(field::TYPE))?;
        if task_type.is_empty() || task_type.len() > MAX_TYPE_LEN {
            return Err(ReplyError::Invalid {
                field: field::TYPE,
                reason: format!("must be 1 to {MAX_TYPE_LEN} characters"),
            });
        }
        let attempt = attempt.ok_or(ReplyError::Missing(field::ATTEMPT))?;
        let attempt = match attempt.parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(ReplyError::Invalid {
                    field: field::ATTEMPT,
                    reason: format!("is {attempt:?}; expected a whole number from 1"),
                })
            }
        };
        let at = at.ok_or(ReplyError::Missing(field::AT))?;
        let at_ms = at.parse::<u64>().map_err(|_| ReplyError::Invalid {
            field: field::AT,
            reason: format!("is {at:?}; expected Unix milliseconds"),
        })?;
        Ok(Reply {
            task_id: task_id.ok_or(ReplyError::Missing(field::TASK_ID))?,
            task_type,
            queue: queue.ok_or(ReplyError::Missing(field::QUEUE))?,
            outcome,
            attempt,
            at_ms,
            result,
            error,
            saga_id,
            correlation,
            traceparent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(f: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        f.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn wire(r: &Reply) -> Vec<(Vec<u8>, Vec<u8>)> {
        r.encode()
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.into_bytes()))
            .collect()
    }

    fn step_reply() -> Reply {
        Reply {
            task_id: "S:0:action".into(),
            task_type: "demo.reasoning".into(),
            queue: "default".into(),
            outcome: Outcome::Succeeded,
            attempt: 2,
            at_ms: 1_767_225_600_000,
            result: Some(r#"{"a":1}"#.into()),
            error: None,
            saga_id: Some("S".into()),
            correlation: Some("S|0|action|1".into()),
            traceparent: Some("00-aa-bb-01".into()),
        }
    }

    #[test]
    fn encoding_is_the_wire_format_of_the_first_release() {
        // The exact fields and order `reply_for` in the worker wrote before this type.
        let f = step_reply().encode();
        assert_eq!(
            f,
            vec![
                ("task_id", "S:0:action".to_string()),
                ("type", "demo.reasoning".into()),
                ("queue", "default".into()),
                ("outcome", "succeeded".into()),
                ("attempt", "2".into()),
                ("at", "1767225600000".into()),
                ("result", r#"{"a":1}"#.into()),
                ("saga_id", "S".into()),
                ("correlation", "S|0|action|1".into()),
                ("traceparent", "00-aa-bb-01".into()),
            ]
        );
        let failed = Reply {
            outcome: Outcome::Failed,
            result: None,
            error: Some("disk full".into()),
            saga_id: None,
            correlation: None,
            traceparent: None,
            ..step_reply()
        };
        let names: Vec<&str> = failed.encode().iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            ["task_id", "type", "queue", "outcome", "attempt", "at", "error"]
        );
        assert_eq!(failed.encode()[3].1, "failed");
    }

    #[test]
    fn decode_of_encode_is_identity() {
        let r = step_reply();
        assert_eq!(Reply::decode(wire(&r)).unwrap(), r);
        let f = Reply {
            outcome: Outcome::Failed,
            result: None,
            error: Some("boom".into()),
            ..step_reply()
        };
        assert_eq!(Reply::decode(wire(&f)).unwrap(), f);
    }

    #[test]
    fn missing_and_invalid_fields_are_named() {
        let full = [
            ("task_id", "t"),
            ("type", "x"),
            ("queue", "q"),
            ("outcome", "succeeded"),
            ("attempt", "1"),
            ("at", "5"),
        ];
        assert!(Reply::decode(raw(&full)).is_ok());
        for (i, (name, _)) in full.iter().enumerate() {
            let mut f = full.to_vec();
            f.remove(i);
            let err = Reply::decode(raw(&f)).unwrap_err();
            assert_eq!(err, ReplyError::Missing(name), "{name}");
            assert!(err.to_string().contains(name), "{err}");
        }
        let with = |k: &str, v: &'static str| {
            let mut f = full.to_vec();
            f.retain(|(n, _)| *n != k);
            f.push((Box::leak(k.to_string().into_boxed_str()), v));
            Reply::decode(raw(&f)).unwrap_err()
        };
        assert!(matches!(
            with("outcome", "meh"),
            ReplyError::Invalid {
                field: "outcome",
                ..
            }
        ));
        for bad in ["0", "-1", "x", ""] {
            assert!(matches!(
                with("attempt", bad),
                ReplyError::Invalid {
                    field: "attempt",
                    ..
                }
            ));
        }
        assert!(matches!(
            with("at", "soon"),
            ReplyError::Invalid { field: "at", .. }
        ));
        assert!(matches!(
            with("type", ""),
            ReplyError::Invalid { field: "type", .. }
        ));
        let mut f = raw(&full);
        f.push((b"error".to_vec(), vec![0xff, 0xfe]));
        assert_eq!(
            Reply::decode(f).unwrap_err(),
            ReplyError::NotUtf8("error".into())
        );
        // Unknown fields are ignored.
        let mut f = full.to_vec();
        f.push(("future_field", "1"));
        assert!(Reply::decode(raw(&f)).is_ok());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn opt_text() -> impl Strategy<Value = Option<String>> {
            proptest::option::of(".{0,40}")
        }

        fn arb_reply() -> impl Strategy<Value = Reply> {
            (
                (".{0,30}", "[a-z.]{1,20}", "[a-z]{1,10}", any::<bool>()),
                (1u32.., any::<u64>(), ".{0,60}", ".{0,60}"),
                (opt_text(), opt_text(), opt_text()),
            )
                .prop_map(
                    |((task_id, task_type, queue, ok), (attempt, at_ms, res, err), (s, c, t))| {
                        Reply {
                            task_id,
                            task_type,
                            queue,
                            outcome: if ok {
                                Outcome::Succeeded
                            } else {
                                Outcome::Failed
                            },
                            attempt,
                            at_ms,
                            result: ok.then_some(res),
                            error: (!ok).then_some(err),
                            saga_id: s,
                            correlation: c,
                            traceparent: t,
                        }
                    },
                )
        }

        proptest! {
            #[test]
            fn every_reply_round_trips(r in arb_reply()) {
                prop_assert_eq!(Reply::decode(wire(&r)).unwrap(), r);
            }

            #[test]
            fn decode_never_panics(
                f in proptest::collection::vec(
                    (prop_oneof![
                        Just(b"outcome".to_vec()), Just(b"attempt".to_vec()),
                        Just(b"at".to_vec()), Just(b"type".to_vec()),
                        proptest::collection::vec(any::<u8>(), 0..8),
                    ], proptest::collection::vec(any::<u8>(), 0..12)),
                    0..12,
                )
            ) {
                let _ = Reply::decode(f);
            }
        }
    }
}
