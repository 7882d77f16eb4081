//! What operators see of a saga: the structures `saga show` and `saga list` print (as
//! text, or as JSON with `--json`), built from the Redis record by [`super::ops`].
//!
//! They are plain data (Serialize), so the JSON form is stable for scripts, and
//! [`SagaView::render`] and [`render_list`] give the human form: times as UTC dates and
//! as offsets from the saga's start, which is what one reads when asking "which step
//! was slow" or "in what order were things undone".

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One transition of a saga, as recorded in its history list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Revision the saga reached with this transition (1 for the start).
    pub rev: u64,
    /// Unix time of the transition, in ms.
    pub at: u64,
    /// The event applied (`start`, `step_succeeded`, `abort`, ...).
    pub event: String,
    /// Name of the step the event concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// State before: `running:codegen`, `compensating:ml`, ...
    pub from: String,
    /// State after.
    pub to: String,
    /// The error, the abort reason or the attempt count, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One step of a saga as `saga show` presents it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    /// Position, from 0.
    pub index: usize,
    /// Step name.
    pub name: String,
    /// Task type that performs it.
    pub action: String,
    /// Task type that undoes it, if any.
    pub compensation: Option<String>,
    /// Queue of its tasks.
    pub queue: String,
    /// `pending`, `running`, `succeeded`, `failed`, `compensating`, `compensated`,
    /// `compensation_failed` or `skipped`.
    pub status: String,
    /// Attempt number of the task execution that reported the step's outcome (0 when no
    /// outcome was reported, e.g. it timed out).
    pub attempts: u32,
    /// Same for the compensation.
    pub compensation_attempts: u32,
    /// When the step's task was enqueued (Unix ms).
    pub started_at: Option<u64>,
    /// When its outcome was recorded (reply, time-out or abort).
    pub ended_at: Option<u64>,
    /// When the compensation's task was enqueued.
    pub compensation_started_at: Option<u64>,
    /// When the compensation's outcome was recorded.
    pub compensation_ended_at: Option<u64>,
    /// The step's output, once it succeeded.
    pub output: Option<Value>,
    /// Why the step or its compensation failed.
    pub error: Option<String>,
}

/// A saga as `saga show` presents it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaView {
    /// Saga id.
    pub id: String,
    /// Definition name.
    pub saga: String,
    /// Definition version it runs with.
    pub version: u32,
    /// `running`, `compensating`, `completed`, `rolled_back` or `failed`.
    pub status: String,
    /// The step it waits on (running or being compensated).
    pub current_step: Option<String>,
    /// The input given at start.
    pub input: Value,
    /// Why it did not complete.
    pub error: Option<String>,
    /// Revision: the number of transitions applied.
    pub rev: u64,
    /// Start time (Unix ms).
    pub created_at: u64,
    /// Time of the last transition.
    pub updated_at: u64,
    /// Time it ended, if it did.
    pub finished_at: Option<u64>,
    /// Time limit of the whole saga (Unix ms).
    pub deadline_at: u64,
    /// Seconds until its record expires (finished sagas only; -1 = no expiry).
    pub expires_in_secs: Option<i64>,
    /// W3C trace id shared by every task of the saga.
    pub traceparent: Option<String>,
    /// Its steps.
    pub steps: Vec<StepView>,
    /// Every transition, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// One line of `saga list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaSummary {
    /// Saga id.
    pub id: String,
    /// Definition name.
    pub saga: String,
    /// State name.
    pub status: String,
    /// The step it waits on, if any.
    pub current_step: Option<String>,
    /// Start time (Unix ms).
    pub created_at: u64,
    /// Time of the last transition.
    pub updated_at: u64,
    /// Why it did not complete.
    pub error: Option<String>,
}

impl SagaView {
    /// The view as text for a terminal: summary, steps table, history.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let t0 = self.created_at;
        let _ = writeln!(o, "saga {}  ({} v{})", self.id, self.saga, self.version);
        let status = match &self.current_step {
            Some(s) => format!("{} ({s})", self.status),
            None => self.status.clone(),
        };
        let _ = writeln!(o, "  status:   {status}");
        let _ = writeln!(o, "  started:  {}", utc(t0));
        match self.finished_at {
            Some(f) => {
                let _ = writeln!(
                    o,
                    "  finished: {} (after {})",
                    utc(f),
                    dur(f.saturating_sub(t0))
                );
            }
            None => {
                let _ = writeln!(
                    o,
                    "  deadline: {} ({} after start)",
                    utc(self.deadline_at),
                    dur(self.deadline_at.saturating_sub(t0))
                );
            }
        }
        if let Some(e) = &self.error {
            let _ = writeln!(o, "  error:    {e}");
        }
        if let Some(x) = self.expires_in_secs.filter(|x| *x >= 0) {
            let _ = writeln!(o, "  expires:  in {}", dur(x as u64 * 1000));
        }
        let _ = writeln!(o, "  input:    {}", clip(&self.input.to_string(), 200));
        let _ = writeln!(o, "  revision: {}", self.rev);

        let _ = writeln!(o, "\nsteps:");
        let rows: Vec<[String; 6]> = self
            .steps
            .iter()
            .map(|s| {
                let took = match (s.started_at, s.ended_at) {
                    (Some(a), Some(b)) => dur(b.saturating_sub(a)),
                    (Some(_), None) => "…".into(),
                    _ => "-".into(),
                };
                let comp = match &s.compensation {
                    None => "-".to_string(),
                    Some(c) => match (s.compensation_started_at, s.compensation_ended_at) {
                        (Some(a), Some(b)) => format!(
                            "{c} at +{} took {} ({} attempt{})",
                            dur(a.saturating_sub(t0)),
                            dur(b.saturating_sub(a)),
                            s.compensation_attempts,
                            if s.compensation_attempts == 1 {
                                ""
                            } else {
                                "s"
                            }
                        ),
                        (Some(a), None) => format!("{c} at +{} …", dur(a.saturating_sub(t0))),
                        _ => c.clone(),
                    },
                };
                [
                    format!("#{} {}", s.index, s.name),
                    s.status.clone(),
                    if s.attempts == 0 {
                        "-".into()
                    } else {
                        s.attempts.to_string()
                    },
                    s.started_at
                        .map(|a| format!("+{}", dur(a.saturating_sub(t0))))
                        .unwrap_or_else(|| "-".into()),
                    took,
                    comp,
                ]
            })
            .collect();
        table(
            &mut o,
            [
                "step",
                "status",
                "attempts",
                "started",
                "took",
                "compensation",
            ],
            &rows,
        );
        for s in &self.steps {
            if let Some(e) = &s.error {
                let _ = writeln!(o, "  #{} {}: error: {}", s.index, s.name, clip(e, 300));
            }
        }

        let _ = writeln!(o, "\nhistory:");
        let rows: Vec<[String; 4]> = self
            .history
            .iter()
            .map(|h| {
                let ev = match &h.step {
                    Some(s) => format!("{} {s}", h.event),
                    None => h.event.clone(),
                };
                [
                    format!("+{}", dur(h.at.saturating_sub(t0))),
                    ev,
                    format!("{} → {}", h.from, h.to),
                    h.detail
                        .as_deref()
                        .map(|d| clip(d, 120))
                        .unwrap_or_default(),
                ]
            })
            .collect();
        table(&mut o, ["at", "event", "transition", "detail"], &rows);
        o
    }
}

/// Sagas per state and how many are overdue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaCounts {
    /// State name → number of sagas (finished ones within the retention).
    pub by_state: std::collections::BTreeMap<String, u64>,
    /// Sagas past their deadline that have not ended (rolling back slowly, or stuck).
    pub overdue: u64,
}

/// `saga list` as a table: id, saga, status, step, age, error.
pub fn render_list(sagas: &[SagaSummary], now_ms: u64) -> String {
    let mut o = String::new();
    if sagas.is_empty() {
        o.push_str("no sagas\n");
        return o;
    }
    let rows: Vec<[String; 6]> = sagas
        .iter()
        .map(|s| {
            [
                s.id.clone(),
                s.saga.clone(),
                s.status.clone(),
                s.current_step.clone().unwrap_or_else(|| "-".into()),
                format!("{} ago", dur(now_ms.saturating_sub(s.updated_at))),
                s.error.as_deref().map(|e| clip(e, 80)).unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &mut o,
        ["id", "saga", "status", "step", "updated", "error"],
        &rows,
    );
    o
}

fn table<const N: usize>(o: &mut String, head: [&str; N], rows: &[[String; N]]) {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |o: &mut String, cells: Vec<&str>| {
        let mut l = String::from(" ");
        for (i, c) in cells.iter().enumerate() {
            l.push(' ');
            l.push_str(c);
            if i + 1 < N {
                l.extend(std::iter::repeat_n(' ', w[i] - c.chars().count() + 1));
            }
        }
        o.push_str(l.trim_end());
        o.push('\n');
    };
    line(o, head.to_vec());
    for r in rows {
        line(o, r.iter().map(String::as_str).collect());
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max).collect();
    t.push('…');
    t
}

/// A duration in ms, short: `850 ms`, `2.4 s`, `3 min 5 s`, `2 h 10 min`, `3 d 4 h`.
pub(crate) fn dur(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
        3_600_000..=86_399_999 => format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
        _ => format!("{} d {} h", ms / 86_400_000, ms % 86_400_000 / 3_600_000),
    }
}

/// Unix ms as `2024-05-01 12:00:00.123Z`.
pub(crate) fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (h, mi, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}.{:03}Z",
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_durations_are_readable() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(utc(1_709_251_199_999), "2024-02-29 23:59:59.999Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00.000Z");
        assert_eq!(dur(850), "850 ms");
        assert_eq!(dur(2_400), "2.4 s");
        assert_eq!(dur(185_000), "3 min 5 s");
        assert_eq!(dur(7_800_000), "2 h 10 min");
        assert_eq!(dur(273_600_000), "3 d 4 h");
    }

    #[test]
    fn render_shows_steps_compensations_and_history() {
        let step = |i: usize, name: &str, status: &str, comp: Option<&str>| StepView {
            index: i,
            name: name.into(),
            action: format!("t.{name}"),
            compensation: comp.map(String::from),
            queue: "default".into(),
            status: status.into(),
            attempts: 1,
            compensation_attempts: u32::from(comp.is_some()),
            started_at: Some(1_000 + i as u64 * 10),
            ended_at: Some(1_005 + i as u64 * 10),
            compensation_started_at: comp.map(|_| 1_100),
            compensation_ended_at: comp.map(|_| 1_104),
            output: None,
            error: (status == "failed").then(|| "boom".to_string()),
        };
        let v = SagaView {
            id: "abc".into(),
            saga: "demo".into(),
            version: 1,
            status: "rolled_back".into(),
            current_step: None,
            input: serde_json::json!({"k": 1}),
            error: Some(r#"step #1 "b" failed: boom"#.into()),
            rev: 4,
            created_at: 1_000,
            updated_at: 1_104,
            finished_at: Some(1_104),
            deadline_at: 61_000,
            expires_in_secs: Some(3600),
            traceparent: None,
            steps: vec![
                step(0, "a", "compensated", Some("t.undo_a")),
                step(1, "b", "failed", None),
            ],
            history: vec![HistoryEntry {
                rev: 1,
                at: 1_000,
                event: "start".into(),
                step: None,
                from: "pending".into(),
                to: "running:a".into(),
                detail: None,
            }],
        };
        let text = v.render();
        for want in [
            "saga abc  (demo v1)",
            "status:   rolled_back",
            "finished: 1970-01-01 00:00:01.104Z (after 104 ms)",
            r#"error:    step #1 "b" failed: boom"#,
            "#0 a",
            "t.undo_a at +100 ms took 4 ms (1 attempt)",
            "#1 b: error: boom",
            "pending → running:a",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let list = render_list(
            &[SagaSummary {
                id: "abc".into(),
                saga: "demo".into(),
                status: "running".into(),
                current_step: Some("b".into()),
                created_at: 0,
                updated_at: 1_000,
                error: None,
            }],
            3_000,
        );
        assert!(list.contains("abc") && list.contains("2.0 s ago"), "{list}");
    }
}
