//! The operator signal and its wire format: the fields of one entry of `ts:{q}:signals`.
//!
//! A public contract beside the task envelope (`docs/wire-format.md`): `kind` is `pause`,
//! `resume` or `cancel` (with `task_id`), and `at` is the Unix time in ms it was sent.
//! Before this type, the writer (`signals.rs`) and the reader (`worker/signal_loop.rs`)
//! each spelled the field names and kinds by hand; a typo on either side would have made
//! signals silently do nothing. Now both go through [`Signal::encode`] and
//! [`Signal::decode`], and an entry that fits no kind decodes to a [`SignalError`] that
//! names what is wrong instead of being skipped without a word.

/// Signals kept in a queue's stream (`XADD … MAXLEN ~`), enough to replay a worker's
/// missed history after a restart without growing without bound.
pub const SIGNALS_MAXLEN: usize = 10_000;

/// Field names of a signal entry.
pub mod field {
    /// What the signal asks: `pause`, `resume` or `cancel`.
    pub const KIND: &str = "kind";
    /// Unix time in ms the signal was sent (informational).
    pub const AT: &str = "at";
    /// The task a `cancel` is for.
    pub const TASK_ID: &str = "task_id";
}

/// One operator signal to every replica of a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Stop delivering the queue's tasks (they wait in Redis).
    Pause,
    /// Deliver the queue's tasks again.
    Resume,
    /// Cancel one task: skipped if queued, its cancellation token fired if running.
    Cancel {
        /// The task's id.
        task_id: String,
    },
}

/// Why a signal entry could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    /// The entry has no `kind` field.
    #[error("signal entry has no `kind` field")]
    MissingKind,
    /// `kind` is not one this version knows.
    #[error("unknown signal kind {0:?} (known: pause, resume, cancel); written by a newer version or by hand?")]
    UnknownKind(String),
    /// A `cancel` without `task_id`.
    #[error("cancel signal has no `task_id` field")]
    MissingTaskId,
    /// A field is not UTF-8.
    #[error("signal field {0:?} is not UTF-8")]
    NotUtf8(&'static str),
}

impl Signal {
    /// The `kind` field's value.
    pub fn kind(&self) -> &'static str {
        match self {
            Signal::Pause => "pause",
            Signal::Resume => "resume",
            Signal::Cancel { .. } => "cancel",
        }
    }

    /// The stream fields, in the order this library has always written them:
    /// `kind`, `at`, then `task_id` for a cancel.
    pub fn encode(&self, at_ms: u64) -> Vec<(&'static str, String)> {
        let mut f = vec![
            (field::KIND, self.kind().to_string()),
            (field::AT, at_ms.to_string()),
        ];
        if let Signal::Cancel { task_id } = self {
            f.push((field::TASK_ID, task_id.clone()));
        }
        f
    }

    /// Decodes the field/value pairs of a signal entry. Extra fields are ignored, so
    /// later versions may add some.
    pub fn decode<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        fields: &[(K, V)],
    ) -> Result<Signal, SignalError> {
        let get = |name: &'static str| -> Result<Option<&str>, SignalError> {
            match fields.iter().find(|(k, _)| k.as_ref() == name.as_bytes()) {
                None => Ok(None),
                Some((_, v)) => std::str::from_utf8(v.as_ref())
                    .map(Some)
                    .map_err(|_| SignalError::NotUtf8(name)),
            }
        };
        match get(field::KIND)?.ok_or(SignalError::MissingKind)? {
            "pause" => Ok(Signal::Pause),
            "resume" => Ok(Signal::Resume),
            "cancel" => match get(field::TASK_ID)? {
                Some(id) if !id.is_empty() => Ok(Signal::Cancel {
                    task_id: id.to_string(),
                }),
                _ => Err(SignalError::MissingTaskId),
            },
            other => Err(SignalError::UnknownKind(other.to_string())),
        }
    }
}

/// One entry read from a signals stream: its id, when it was sent, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalEntry {
    /// Stream entry id (read the next signals after it).
    pub entry_id: String,
    /// The `at` field, when present and numeric.
    pub at_ms: Option<u64>,
    /// The decoded signal, or why it could not be decoded.
    pub signal: Result<Signal, SignalError>,
}

impl SignalEntry {
    /// Decodes one stream entry (`fields` is `None` for a deleted entry).
    pub fn from_fields<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        entry_id: String,
        fields: Option<&[(K, V)]>,
    ) -> SignalEntry {
        let Some(fields) = fields else {
            return SignalEntry {
                entry_id,
                at_ms: None,
                signal: Err(SignalError::MissingKind),
            };
        };
        let at_ms = fields
            .iter()
            .find(|(k, _)| k.as_ref() == field::AT.as_bytes())
            .and_then(|(_, v)| std::str::from_utf8(v.as_ref()).ok()?.parse().ok());
        SignalEntry {
            entry_id,
            at_ms,
            signal: Signal::decode(fields),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(f: &[(&str, String)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        f.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn every_kind_round_trips() {
        for s in [
            Signal::Pause,
            Signal::Resume,
            Signal::Cancel {
                task_id: "0190-abc".into(),
            },
        ] {
            let f = s.encode(1_700_000_000_000);
            assert_eq!(Signal::decode(&bytes(&f)), Ok(s.clone()), "{f:?}");
            let e = SignalEntry::from_fields("1-0".into(), Some(&bytes(&f)));
            assert_eq!(e.at_ms, Some(1_700_000_000_000));
            assert_eq!(e.signal, Ok(s));
        }
    }

    #[test]
    fn encoding_is_the_historical_wire_format() {
        // Byte for byte what signals.rs wrote before this type existed:
        // XADD … kind cancel at <ms> task_id <id>.
        let f = Signal::Cancel {
            task_id: "t1".into(),
        }
        .encode(42);
        assert_eq!(
            f,
            vec![
                ("kind", "cancel".to_string()),
                ("at", "42".to_string()),
                ("task_id", "t1".to_string())
            ]
        );
        assert_eq!(
            Signal::Pause.encode(7),
            vec![("kind", "pause".to_string()), ("at", "7".to_string())]
        );
        assert_eq!(Signal::Resume.encode(7)[0].1, "resume");
    }

    #[test]
    fn bad_entries_decode_to_clear_errors() {
        let f = |pairs: &[(&str, &str)]| -> Vec<(Vec<u8>, Vec<u8>)> {
            pairs
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect()
        };
        let e = Signal::decode(&f(&[("kind", "drain"), ("at", "1")])).unwrap_err();
        assert_eq!(e, SignalError::UnknownKind("drain".into()));
        assert!(e.to_string().contains("\"drain\""), "{e}");
        assert_eq!(
            Signal::decode(&f(&[("at", "1")])),
            Err(SignalError::MissingKind)
        );
        assert_eq!(
            Signal::decode(&f(&[("kind", "cancel")])),
            Err(SignalError::MissingTaskId)
        );
        assert_eq!(
            Signal::decode(&[(b"kind".to_vec(), vec![0xff, 0xfe])]),
            Err(SignalError::NotUtf8("kind"))
        );
        // Extra fields from a later version are ignored.
        assert_eq!(
            Signal::decode(&f(&[("kind", "pause"), ("by", "ops")])),
            Ok(Signal::Pause)
        );
        let deleted = SignalEntry::from_fields::<Vec<u8>, Vec<u8>>("2-0".into(), None);
        assert!(deleted.signal.is_err());
    }
}
