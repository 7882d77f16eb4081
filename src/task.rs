//! The task envelope and its wire format: the fields of one stream entry.
//!
//! This is a public contract (`docs/wire-format.md`): a producer in any language can
//! enqueue with a plain `XADD ts:{queue}:stream * v 1 type T payload JSON`. Only `type`
//! and `payload` are required; every other field has a default, so the smallest valid
//! entry is easy to write by hand and old producers keep working when fields are added.
//!
//! Decoding works on the raw field/value byte strings of a stream entry, taking ownership
//! of the payload bytes instead of copying them, and never panics: anything that does not
//! fit the contract becomes a [`DecodeError`] that the worker sends to the dead-letter
//! stream with its reason.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wire format version written by this library.
pub const FORMAT_VERSION: u32 = 1;

/// Longest task type accepted.
pub const MAX_TYPE_LEN: usize = 128;

/// Longest task id accepted.
pub const MAX_ID_LEN: usize = 128;

/// Longest handler time limit a task may ask for (`timeout_ms`): 7 days, as in the config.
pub const MAX_TASK_TIMEOUT_MS: u64 = 7 * 24 * 3_600 * 1_000;

/// Longest retry delay a task may ask for (`backoff_base_ms`, `backoff_cap_ms`): one day,
/// the cap `Retry-After` already has. Without a bound, `backoff_cap_ms = 2^64-1` put a
/// retry 10^19 ms away, silently (issue 10.4); such an entry is now dead-lettered with
/// the reason instead.
pub const MAX_TASK_BACKOFF_MS: u64 = 86_400_000;

/// Most attempts a task may ask for (`max_attempts`).
pub const MAX_TASK_ATTEMPTS: u32 = 1_000_000;

/// Field names of a stream entry, in one place.
pub mod field {
    /// Wire format version (`"1"`).
    pub const VERSION: &str = "v";
    /// Task id (defaults to the stream entry id, prefixed outside the default bulk stream).
    pub const ID: &str = "id";
    /// Task type, used to find the handler.
    pub const TYPE: &str = "type";
    /// JSON payload, as UTF-8 text.
    pub const PAYLOAD: &str = "payload";
    /// 1-based attempt number of this entry.
    pub const ATTEMPT: &str = "attempt";
    /// Attempts allowed in all; default from the queue configuration.
    pub const MAX_ATTEMPTS: &str = "max_attempts";
    /// Unix time in ms of the original enqueue.
    pub const ENQUEUED_AT: &str = "enqueued_at";
    /// Handler time limit in ms; default from the queue configuration.
    pub const TIMEOUT_MS: &str = "timeout_ms";
    /// Idempotency key the producer gave, if any.
    pub const IDEM: &str = "idem";
    /// Saga this task is a step of.
    pub const SAGA_ID: &str = "saga_id";
    /// Stream that receives the task's outcome (sagas use it).
    pub const REPLY_TO: &str = "reply_to";
    /// Opaque correlation text echoed in the reply.
    pub const CORRELATION: &str = "correlation";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// Last error, carried by retries.
    pub const LAST_ERROR: &str = "last_error";
    /// Consumer group a retry is meant for (fan-out queues only).
    pub const ONLY_GROUP: &str = "only_group";
    /// First retry delay in ms; default from the queue configuration.
    pub const BACKOFF_BASE_MS: &str = "backoff_base_ms";
    /// Longest retry delay in ms; default from the queue configuration.
    pub const BACKOFF_CAP_MS: &str = "backoff_cap_ms";
    /// Group key for per-key concurrency limits (`max_per_key`, see `crate::keylimit`).
    pub const GROUP_KEY: &str = "group_key";
}

/// Current Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Millisecond timestamp part of a stream entry id (`1700000000000-0`).
pub fn entry_id_ms(entry_id: &str) -> Option<u64> {
    entry_id.split('-').next()?.parse().ok()
}

/// A stream entry id as (ms, seq), for ordering ids (of different streams too).
pub(crate) fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Field/value byte pairs of a stream entry, in stream order.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// A task as read from a stream: everything a handler and the worker need.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Task id: stable across retries and recoveries.
    pub id: String,
    /// Task type.
    pub task_type: String,
    /// JSON payload text (validated as JSON when decoded).
    pub payload: String,
    /// 1-based attempt number as written in the entry (recoveries add to it).
    pub attempt: u32,
    /// Attempts allowed in all, if the producer set it.
    pub max_attempts: Option<u32>,
    /// Unix ms of the original enqueue.
    pub enqueued_at: u64,
    /// Per-task handler time limit in ms, if the producer set it.
    pub timeout_ms: Option<u64>,
    /// Idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Saga id, when the task is a saga step.
    pub saga_id: Option<String>,
    /// Reply stream for the outcome.
    pub reply_to: Option<String>,
    /// Correlation text echoed in the reply.
    pub correlation: Option<String>,
    /// W3C traceparent.
    pub traceparent: Option<String>,
    /// Last error (on retries).
    pub last_error: Option<String>,
    /// Group a retry is meant for (fan-out queues).
    pub only_group: Option<String>,
    /// Per-task first retry delay in ms (saga steps carry their own policy).
    pub backoff_base_ms: Option<u64>,
    /// Per-task longest retry delay in ms.
    pub backoff_cap_ms: Option<u64>,
    /// Group key: tasks of one key share the queue's (or type's) `max_per_key` limit.
    pub group_key: Option<String>,
}

/// Why a stream entry is not a valid task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A required field is absent.
    #[error("malformed entry: required field `{0}` is missing")]
    Missing(&'static str),
    /// A field is not UTF-8 text.
    #[error("malformed entry: field `{0}` is not valid UTF-8")]
    NotUtf8(String),
    /// A field has a value outside the contract.
    #[error("malformed entry: field `{field}` {reason}")]
    Invalid {
        /// Field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The entry was written by a newer, unknown format version.
    #[error("malformed entry: unsupported format version {0:?} (this worker reads version {FORMAT_VERSION})")]
    Version(String),
}

fn utf8(name: &[u8], v: Vec<u8>) -> Result<String, DecodeError> {
    String::from_utf8(v).map_err(|_| DecodeError::NotUtf8(String::from_utf8_lossy(name).into()))
}

/// Parses a number that must lie in `lo..=hi`; `what` says what the bound is.
fn ranged(field: &'static str, s: &str, lo: u64, hi: u64, what: &str) -> Result<u64, DecodeError> {
    let v = parse_num::<u64>(field, s)?;
    if v < lo || v > hi {
        return Err(DecodeError::Invalid {
            field,
            reason: format!("is {v}, outside {lo}..={hi} ({what})"),
        });
    }
    Ok(v)
}

/// The checked value of a bounded numeric field (`None`: not one of them).
fn bounded_field(name: &[u8], s: &str) -> Option<Result<u64, DecodeError>> {
    Some(match name {
        b"max_attempts" => ranged(
            field::MAX_ATTEMPTS,
            s,
            1,
            MAX_TASK_ATTEMPTS as u64,
            "at least 1",
        ),
        b"timeout_ms" => ranged(
            field::TIMEOUT_MS,
            s,
            1,
            MAX_TASK_TIMEOUT_MS,
            "positive, at most 7 days",
        ),
        b"backoff_base_ms" => ranged(
            field::BACKOFF_BASE_MS,
            s,
            0,
            MAX_TASK_BACKOFF_MS,
            "at most one day",
        ),
        b"backoff_cap_ms" => ranged(
            field::BACKOFF_CAP_MS,
            s,
            0,
            MAX_TASK_BACKOFF_MS,
            "at most one day",
        ),
        _ => return None,
    })
}

fn parse_num<T: std::str::FromStr>(field: &'static str, s: &str) -> Result<T, DecodeError> {
    s.parse().map_err(|_| DecodeError::Invalid {
        field,
        reason: format!("must be a non-negative integer, got {s:?}"),
    })
}

impl Task {
    /// A first-attempt task with every optional field unset.
    pub fn new(
        id: impl Into<String>,
        task_type: impl Into<String>,
        payload: impl Into<String>,
    ) -> Task {
        Task {
            id: id.into(),
            task_type: task_type.into(),
            payload: payload.into(),
            attempt: 1,
            max_attempts: None,
            enqueued_at: 0,
            timeout_ms: None,
            idempotency_key: None,
            saga_id: None,
            reply_to: None,
            correlation: None,
            traceparent: None,
            last_error: None,
            only_group: None,
            backoff_base_ms: None,
            backoff_cap_ms: None,
            group_key: None,
        }
    }

    /// Decodes the fields of entry `entry_id` of a queue's default bulk stream (a task
    /// without an `id` field gets the entry id). `max_payload` bounds the payload size.
    pub fn decode(
        entry_id: &str,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
        max_payload: usize,
    ) -> Result<Task, DecodeError> {
        Self::decode_or_return(entry_id, "", fields, max_payload).map_err(|(e, _)| e)
    }

    /// Like [`Task::decode`], but gives the fields back with the error (for the dead-letter
    /// entry) without copying them on the success path: the entry is checked by reference
    /// first, then its values are moved into the task.
    ///
    /// A task without an `id` field gets `id_prefix` + `entry_id`: entry ids are unique
    /// per stream only, so each stream of a queue has its own prefix
    /// ([`crate::keys::QueueKeys::default_id_prefix`]) and no two tasks of a queue share
    /// a default id.
    pub fn decode_or_return(
        entry_id: &str,
        id_prefix: &str,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
        max_payload: usize,
    ) -> Result<Task, (DecodeError, Fields)> {
        for (name, value) in &fields {
            if let Err(e) = Self::check_field(name, value, max_payload) {
                return Err((e, fields));
            }
        }
        for required in [field::TYPE, field::PAYLOAD] {
            if !fields
                .iter()
                .any(|(n, _)| n.as_slice() == required.as_bytes())
            {
                return Err((DecodeError::Missing(required), fields));
            }
        }
        Self::decode_checked(entry_id, id_prefix, fields, max_payload).map_err(|e| (e, Vec::new()))
    }

    /// Checks one field without taking it: everything [`Task::decode`] could reject.
    fn check_field(name: &[u8], value: &[u8], max_payload: usize) -> Result<(), DecodeError> {
        fn text<'a>(name: &[u8], v: &'a [u8]) -> Result<&'a str, DecodeError> {
            std::str::from_utf8(v)
                .map_err(|_| DecodeError::NotUtf8(String::from_utf8_lossy(name).into()))
        }
        match name {
            b"payload" => {
                if value.len() > max_payload {
                    return Err(DecodeError::Invalid {
                        field: field::PAYLOAD,
                        reason: format!(
                            "is {} bytes, above the {max_payload}-byte limit",
                            value.len()
                        ),
                    });
                }
                if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(value) {
                    return Err(DecodeError::Invalid {
                        field: field::PAYLOAD,
                        reason: format!("is not valid JSON: {e}"),
                    });
                }
                text(name, value)?;
            }
            b"v" => {
                let v = text(name, value)?;
                if v != "1" {
                    return Err(DecodeError::Version(v.to_string()));
                }
            }
            b"id" => {
                let v = text(name, value)?;
                if v.is_empty() || v.len() > MAX_ID_LEN {
                    return Err(DecodeError::Invalid {
                        field: field::ID,
                        reason: format!("must be 1 to {MAX_ID_LEN} bytes"),
                    });
                }
            }
            b"type" => {
                validate_type(text(name, value)?).map_err(|reason| DecodeError::Invalid {
                    field: field::TYPE,
                    reason,
                })?;
            }
            b"attempt" => {
                parse_num::<u32>(field::ATTEMPT, text(name, value)?)?;
            }
            b"max_attempts" | b"timeout_ms" | b"backoff_base_ms" | b"backoff_cap_ms" => {
                if let Some(r) = bounded_field(name, text(name, value)?) {
                    r?;
                }
            }
            b"enqueued_at" => {
                parse_num::<u64>(field::ENQUEUED_AT, text(name, value)?)?;
            }
            b"idem" | b"saga_id" | b"reply_to" | b"correlation" | b"traceparent"
            | b"last_error" | b"only_group" => {
                text(name, value)?;
            }
            b"group_key" => {
                crate::keylimit::validate_group_key(text(name, value)?).map_err(|reason| {
                    DecodeError::Invalid {
                        field: field::GROUP_KEY,
                        reason,
                    }
                })?;
            }
            _ => {}
        }
        Ok(())
    }

    fn decode_checked(
        entry_id: &str,
        id_prefix: &str,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
        max_payload: usize,
    ) -> Result<Task, DecodeError> {
        let mut t = Task {
            enqueued_at: entry_id_ms(entry_id).unwrap_or(0),
            ..Task::new(String::new(), String::new(), String::new())
        };
        let (mut have_type, mut have_payload) = (false, false);
        for (name, value) in fields {
            match name.as_slice() {
                b"v" => {
                    let v = utf8(&name, value)?;
                    if v != "1" {
                        return Err(DecodeError::Version(v));
                    }
                }
                b"id" => {
                    let v = utf8(&name, value)?;
                    if v.is_empty() || v.len() > MAX_ID_LEN {
                        return Err(DecodeError::Invalid {
                            field: field::ID,
                            reason: format!("must be 1 to {MAX_ID_LEN} bytes"),
                        });
                    }
                    t.id = v;
                }
                b"type" => {
                    let v = utf8(&name, value)?;
                    validate_type(&v).map_err(|reason| DecodeError::Invalid {
                        field: field::TYPE,
                        reason,
                    })?;
                    t.task_type = v;
                    have_type = true;
                }
                b"payload" => {
                    // Size and JSON were checked by `check_field`.
                    debug_assert!(value.len() <= max_payload);
                    t.payload = utf8(&name, value)?;
                    have_payload = true;
                }
                b"attempt" => {
                    let a: u32 = parse_num(field::ATTEMPT, &utf8(&name, value)?)?;
                    t.attempt = a.max(1);
                }
                b"max_attempts" | b"timeout_ms" | b"backoff_base_ms" | b"backoff_cap_ms" => {
                    let v = utf8(&name, value)?;
                    let n = bounded_field(&name, &v).expect("a bounded field")?;
                    match name.as_slice() {
                        b"max_attempts" => t.max_attempts = Some(n as u32),
                        b"timeout_ms" => t.timeout_ms = Some(n),
                        b"backoff_base_ms" => t.backoff_base_ms = Some(n.max(1)),
                        _ => t.backoff_cap_ms = Some(n.max(1)),
                    }
                }
                b"enqueued_at" => {
                    t.enqueued_at = parse_num(field::ENQUEUED_AT, &utf8(&name, value)?)?;
                }
                b"idem" => t.idempotency_key = Some(utf8(&name, value)?),
                b"saga_id" => t.saga_id = Some(utf8(&name, value)?),
                b"reply_to" => t.reply_to = Some(utf8(&name, value)?),
                b"correlation" => t.correlation = Some(utf8(&name, value)?),
                b"traceparent" => t.traceparent = Some(utf8(&name, value)?),
                b"last_error" => t.last_error = Some(utf8(&name, value)?),
                b"only_group" => t.only_group = Some(utf8(&name, value)?),
                // Checked by `check_field`.
                b"group_key" => t.group_key = Some(utf8(&name, value)?),
                // Unknown fields are ignored so newer producers can add optional fields.
                _ => {}
            }
        }
        if !have_type {
            return Err(DecodeError::Missing(field::TYPE));
        }
        if !have_payload {
            return Err(DecodeError::Missing(field::PAYLOAD));
        }
        if t.id.is_empty() {
            t.id = format!("{id_prefix}{entry_id}");
        }
        Ok(t)
    }

    /// Encodes the task as stream entry fields (the inverse of [`Task::decode`]).
    pub fn encode(&self) -> Vec<(&'static str, String)> {
        let mut f = Vec::with_capacity(12);
        f.push((field::VERSION, FORMAT_VERSION.to_string()));
        f.push((field::ID, self.id.clone()));
        f.push((field::TYPE, self.task_type.clone()));
        f.push((field::PAYLOAD, self.payload.clone()));
        f.push((field::ATTEMPT, self.attempt.to_string()));
        f.push((field::ENQUEUED_AT, self.enqueued_at.to_string()));
        let opt = [
            (
                field::MAX_ATTEMPTS,
                self.max_attempts.map(|v| v.to_string()),
            ),
            (field::TIMEOUT_MS, self.timeout_ms.map(|v| v.to_string())),
            (field::IDEM, self.idempotency_key.clone()),
            (field::SAGA_ID, self.saga_id.clone()),
            (field::REPLY_TO, self.reply_to.clone()),
            (field::CORRELATION, self.correlation.clone()),
            (field::TRACEPARENT, self.traceparent.clone()),
            (field::LAST_ERROR, self.last_error.clone()),
            (field::ONLY_GROUP, self.only_group.clone()),
            (
                field::BACKOFF_BASE_MS,
                self.backoff_base_ms.map(|v| v.to_string()),
            ),
            (
                field::BACKOFF_CAP_MS,
                self.backoff_cap_ms.map(|v| v.to_string()),
            ),
            (field::GROUP_KEY, self.group_key.clone()),
        ];
        for (k, v) in opt {
            if let Some(v) = v {
                f.push((k, v));
            }
        }
        f
    }

    /// Encodes the task as a JSON object of its fields (the scheduled-set member format),
    /// with `lane` (and `pool`, when given) added so the forwarder knows which stream to
    /// XADD to.
    pub fn encode_json_for(&self, lane: crate::keys::Lane, pool: Option<&str>) -> String {
        let mut m = serde_json::Map::new();
        for (k, v) in self.encode() {
            m.insert(k.to_string(), serde_json::Value::String(v));
        }
        m.insert(
            "lane".into(),
            serde_json::Value::String(lane.as_str().into()),
        );
        if let Some(p) = pool {
            m.insert("pool".into(), serde_json::Value::String(p.into()));
        }
        serde_json::Value::Object(m).to_string()
    }
}

/// Checks a task type: 1–128 characters from `[A-Za-z0-9_.:/-]`.
pub fn validate_type(t: &str) -> Result<(), String> {
    if t.is_empty() || t.len() > MAX_TYPE_LEN {
        return Err(format!("must be 1 to {MAX_TYPE_LEN} characters"));
    }
    if let Some(c) = t
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/')))
    {
        return Err(format!(
            "contains {c:?}; use letters, digits and '_', '-', '.', ':', '/'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn minimal_entry_decodes_with_defaults() {
        let t = Task::decode(
            "1700000000123-0",
            f(&[("type", "email"), ("payload", "{\"to\":\"a\"}")]),
            1024,
        )
        .unwrap();
        assert_eq!(t.id, "1700000000123-0");
        assert_eq!(t.attempt, 1);
        assert_eq!(t.enqueued_at, 1700000000123);
        assert_eq!(t.payload, "{\"to\":\"a\"}");
    }

    #[test]
    fn roundtrip() {
        let t = Task {
            id: "abc".into(),
            task_type: "x.y".into(),
            payload: "[1,2]".into(),
            attempt: 3,
            max_attempts: Some(5),
            enqueued_at: 42,
            timeout_ms: Some(900),
            idempotency_key: Some("k".into()),
            saga_id: Some("s".into()),
            reply_to: Some("r".into()),
            correlation: Some("c".into()),
            traceparent: Some("00-aa-bb-01".into()),
            last_error: Some("boom".into()),
            only_group: None,
            backoff_base_ms: Some(10),
            backoff_cap_ms: Some(100),
            group_key: Some("tenant-1".into()),
        };
        let fields = t
            .encode()
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.into_bytes()))
            .collect();
        assert_eq!(Task::decode("1-0", fields, 1024).unwrap(), t);
    }

    #[test]
    fn rejected_entries_give_back_every_field() {
        for fields in [
            f(&[("payload", "1"), ("x", "y")]),
            f(&[("type", "t"), ("payload", "1"), ("attempt", "-1")]),
            f(&[("type", "t"), ("payload", "{bad")]),
        ] {
            let (_, back) = Task::decode_or_return("1-0", "", fields.clone(), 64).unwrap_err();
            assert_eq!(back, fields, "the dead letter keeps the original entry");
        }
    }

    #[test]
    fn bad_entries_get_reasons() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("payload", "1")], "`type` is missing"),
            (&[("type", "t")], "`payload` is missing"),
            (&[("type", "t"), ("payload", "{nope")], "not valid JSON"),
            (&[("type", "bad type"), ("payload", "1")], "`type`"),
            (&[("type", "t"), ("payload", "1"), ("v", "9")], "version"),
            (
                &[("type", "t"), ("payload", "1"), ("attempt", "x")],
                "`attempt`",
            ),
            (&[("type", "t"), ("payload", "\"0123456789\"")], "limit"),
        ];
        for (fields, want) in cases {
            let err = Task::decode("1-0", f(fields), 8).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should contain {want}");
        }
        let bad_utf8 = vec![(b"type".to_vec(), vec![0xff, 0xfe])];
        assert!(matches!(
            Task::decode("1-0", bad_utf8, 8),
            Err(DecodeError::NotUtf8(_))
        ));
    }
}
