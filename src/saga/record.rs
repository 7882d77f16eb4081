//! The Redis record of a saga, as a typed value: the fields of its hash (`ts:saga:{ID}`)
//! ⇄ [`Record`], the names of its states, the members of the deadline set and the
//! `correlation` its tasks carry (and their replies echo back).
//!
//! Parsing never panics: a damaged field becomes an error value or a default, so the
//! orchestrator can still fail such a saga cleanly instead of crashing on it or retrying
//! it forever. The layout is a public contract (`docs/sagas.md`, "Keys").

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::definition::{SagaDef, SagaDefToml};
use super::fsm::{SagaState, SagaStatus};

/// Hash field names of a saga record.
pub(crate) mod f {
    pub const SAGA: &str = "saga";
    pub const VERSION: &str = "version";
    pub const DEFINITION: &str = "definition";
    pub const INPUT: &str = "input";
    pub const STATE: &str = "state";
    pub const STATUS: &str = "status";
    pub const STEP: &str = "step";
    pub const STEP_NAME: &str = "step_name";
    pub const REV: &str = "rev";
    pub const CREATED: &str = "created";
    pub const UPDATED: &str = "updated";
    pub const FINISHED: &str = "finished";
    pub const DEADLINE: &str = "deadline";
    pub const ERROR: &str = "error";
    pub const TRACEPARENT: &str = "traceparent";
    pub const META: &str = "meta";
}

/// Timing and attempts of one step, kept next to the state machine's view of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StepMeta {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub comp_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comp_started_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comp_ended_at: Option<u64>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// A saga record as read from Redis. Damaged fields become errors or defaults, never a
/// panic: the orchestrator must be able to fail such a saga cleanly.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub id: String,
    pub saga: String,
    pub version: u32,
    /// The definition the saga started with (a snapshot, JSON); parsed only when needed
    /// (see [`Record::snapshot`]), since most transitions use the configured definition.
    pub definition: Option<String>,
    pub input: Value,
    pub state: std::result::Result<SagaState, String>,
    /// State name (`running`, ...): authoritative for terminal states, since a saga
    /// failed outside the state machine keeps its last machine state.
    pub status: String,
    pub rev: u64,
    pub created: u64,
    pub updated: u64,
    pub finished: Option<u64>,
    pub deadline: u64,
    pub error: Option<String>,
    pub traceparent: Option<String>,
    pub meta: Vec<StepMeta>,
}

impl Record {
    /// Parses the fields of `HGETALL`; `None` when the hash does not exist.
    pub(crate) fn from_fields(id: &str, mut h: HashMap<String, String>) -> Option<Record> {
        if h.is_empty() {
            return None;
        }
        let num = |h: &HashMap<String, String>, k: &str| -> Option<u64> {
            h.get(k).and_then(|v| v.parse().ok())
        };
        let state = match h.get(f::STATE) {
            None => Err("the record has no state".to_string()),
            Some(t) => {
                serde_json::from_str(t).map_err(|e| format!("stored state is unreadable: {e}"))
            }
        };
        let input = h
            .get(f::INPUT)
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or(Value::Null);
        let meta = h
            .get(f::META)
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default();
        Some(Record {
            id: id.to_string(),
            saga: h.remove(f::SAGA).unwrap_or_default(),
            version: num(&h, f::VERSION).unwrap_or(0) as u32,
            definition: h.remove(f::DEFINITION),
            input,
            state,
            status: h.remove(f::STATUS).unwrap_or_default(),
            rev: num(&h, f::REV).unwrap_or(0),
            created: num(&h, f::CREATED).unwrap_or(0),
            updated: num(&h, f::UPDATED).unwrap_or(0),
            finished: num(&h, f::FINISHED),
            deadline: num(&h, f::DEADLINE).unwrap_or(0),
            error: h.remove(f::ERROR).filter(|e| !e.is_empty()),
            traceparent: h.remove(f::TRACEPARENT).filter(|t| !t.is_empty()),
            meta,
        })
    }
}

impl Record {
    /// The definition the saga started with.
    pub(crate) fn snapshot(&self) -> std::result::Result<SagaDef, String> {
        let text = self
            .definition
            .as_deref()
            .ok_or("the record has no definition snapshot")?;
        serde_json::from_str::<SagaDefToml>(text)
            .map_err(|e| format!("definition snapshot is unreadable: {e}"))?
            .into_def()
            .map_err(|e| e.to_string())
    }
}

/// The name of a state as stored and indexed: `running`, `rolled_back`, ...
pub(crate) fn status_name(s: SagaStatus) -> &'static str {
    match s {
        SagaStatus::Pending => "pending",
        SagaStatus::Running { .. } => "running",
        SagaStatus::Compensating { .. } => "compensating",
        SagaStatus::Completed => "completed",
        SagaStatus::RolledBack => "rolled_back",
        SagaStatus::Failed => "failed",
    }
}

/// Every state name, in life order.
pub(crate) const STATES: [&str; 6] = [
    "pending",
    "running",
    "compensating",
    "completed",
    "rolled_back",
    "failed",
];

/// True for the names of the final states.
pub(crate) fn is_terminal_name(s: &str) -> bool {
    matches!(s, "completed" | "rolled_back" | "failed")
}

/// The deadline member of the saga's own time limit.
pub(crate) fn saga_member(id: &str) -> String {
    format!("{id}|saga|-|1")
}

/// The deadline member of step `step` dispatched at revision `rev`.
pub(crate) fn step_member(id: &str, step: usize, rev: u64) -> String {
    format!("{id}|step|{step}|{rev}")
}

/// A parsed deadline member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// The saga's own time limit.
    Saga { id: String },
    /// The limit of step `step`, valid while the saga is at revision `rev`.
    Step { id: String, step: usize, rev: u64 },
}

/// Parses a member of the deadline set; `None` when it is neither form.
pub(crate) fn parse_member(m: &str) -> Option<Deadline> {
    let mut it = m.rsplitn(4, '|');
    let (rev, step, kind, id) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if id.is_empty() {
        return None;
    }
    match kind {
        "saga" => Some(Deadline::Saga { id: id.into() }),
        "step" => Some(Deadline::Step {
            id: id.into(),
            step: step.parse().ok()?,
            rev: rev.parse().ok()?,
        }),
        _ => None,
    }
}

/// Which side of a step a task performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The step's action.
    Action,
    /// Its compensation.
    Compensation,
}

impl Side {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Side::Action => "action",
            Side::Compensation => "comp",
        }
    }
}

/// The `correlation` of a saga task: `ID|STEP|action-or-comp|REV`. A reply echoes it,
/// so the orchestrator knows which saga, step and side replied, and whether the saga is
/// still at the revision the task was dispatched at (if not, the reply is stale).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Correlation {
    /// Saga id.
    pub id: String,
    /// Step index.
    pub step: usize,
    /// Action or compensation.
    pub side: Side,
    /// Revision the task was dispatched at.
    pub rev: u64,
}

impl Correlation {
    /// The wire text.
    pub(crate) fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.id,
            self.step,
            self.side.as_str(),
            self.rev
        )
    }

    /// Parses the wire text; `None` when it is not `ID|STEP|action-or-comp|REV`. The id
    /// may itself contain `|`: the text is split from the right.
    pub(crate) fn parse(s: &str) -> Option<Correlation> {
        let mut it = s.rsplitn(4, '|');
        let (rev, side, step, id) = (it.next()?, it.next()?, it.next()?, it.next()?);
        if id.is_empty() {
            return None;
        }
        Some(Correlation {
            id: id.into(),
            step: step.parse().ok()?,
            side: match side {
                "action" => Side::Action,
                "comp" => Side::Compensation,
                _ => return None,
            },
            rev: rev.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlations_and_members_roundtrip() {
        let c = Correlation {
            id: "0190-ab".into(),
            step: 3,
            side: Side::Compensation,
            rev: 12,
        };
        assert_eq!(Correlation::parse(&c.encode()), Some(c));
        assert_eq!(Correlation::parse("x|1|other|2"), None);
        assert_eq!(Correlation::parse("|1|action|2"), None);
        assert_eq!(
            parse_member(&step_member("a-b", 2, 7)),
            Some(Deadline::Step {
                id: "a-b".into(),
                step: 2,
                rev: 7
            })
        );
        assert_eq!(
            parse_member(&saga_member("a-b")),
            Some(Deadline::Saga { id: "a-b".into() })
        );
        assert_eq!(parse_member("garbage"), None);
    }

    #[test]
    fn damaged_records_parse_without_panic() {
        let mut h = HashMap::new();
        h.insert("state".to_string(), "{not json".to_string());
        h.insert("rev".to_string(), "x".to_string());
        let r = Record::from_fields("S", h).unwrap();
        assert!(r.state.is_err() && r.snapshot().is_err());
        assert_eq!(r.rev, 0);
        assert!(Record::from_fields("S", HashMap::new()).is_none());
    }

    #[test]
    fn state_names_match_the_state_machine() {
        for s in [
            SagaStatus::Pending,
            SagaStatus::Running { step: 0 },
            SagaStatus::Compensating { step: 0 },
            SagaStatus::Completed,
            SagaStatus::RolledBack,
            SagaStatus::Failed,
        ] {
            assert!(STATES.contains(&status_name(s)));
            assert_eq!(is_terminal_name(status_name(s)), s.is_terminal(), "{s:?}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn correlations_round_trip_for_any_id(
                id in "[^|]{1,40}|[a-z0-9|-]{1,40}",
                step in 0usize..1000,
                comp in any::<bool>(),
                rev in any::<u64>(),
            ) {
                // Ids may even contain `|`: parsing splits from the right.
                let side = if comp { Side::Compensation } else { Side::Action };
                let c = Correlation { id: id.clone(), step, side, rev };
                prop_assert_eq!(Correlation::parse(&c.encode()), Some(c));
                prop_assert_eq!(
                    parse_member(&step_member(&id, step, rev)),
                    Some(Deadline::Step { id: id.clone(), step, rev })
                );
                prop_assert_eq!(parse_member(&saga_member(&id)), Some(Deadline::Saga { id }));
            }

            #[test]
            fn any_hash_parses_without_panic(
                h in proptest::collection::hash_map("[a-z_]{1,12}", ".{0,30}", 0..20)
            ) {
                let _ = Record::from_fields("S", h).map(|r| r.snapshot());
            }
        }
    }
}
