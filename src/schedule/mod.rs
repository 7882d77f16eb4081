//! Periodic tasks: `[[schedules]]` that enqueue a task on every tick of a cron
//! expression or a fixed interval, **once per tick however many workers run the
//! scheduler**, with no leader to elect.
//!
//! Why no leader: asynq's scheduler double-fires when several run (asynq#1013, open), and
//! the usual fix — one elected scheduler — stops firing while the leader's lease runs out
//! after it dies. Here every worker runs [`crate::worker::scheduler`] for every schedule;
//! ticks are instants computed from the definition alone ([`cron`], [`Spec::next_after`]),
//! so all replicas agree on them, and firing a tick is one Lua script
//! (`rdb/lua/schedule_tick.lua`) that checks the schedule's last claimed tick, advances it
//! and adds the task in one step. The first replica to run it for a tick enqueues; the
//! others see the tick claimed. The task id is `<schedule>@<tick ms>`, so even the
//! operator can tell which tick a task came from, and a restart that re-plans a tick finds
//! it claimed.
//!
//! Where definitions live: in Redis (`ts:schedules`, name → JSON of [`ScheduleDef`]), so
//! `taskstream schedule set | remove` change them at run time and every replica follows
//! within a second. A worker writes its config's `[[schedules]]` there when it starts (the
//! config wins for the names it defines, as a deploy should). Pause and the claim state
//! live beside the target queue (`ts:{queue}:schedule:<name>`, in its slot, so the script
//! is legal on a cluster).
//!
//! Missed ticks (every replica down, or paused): a tick due within `misfire_grace_secs`
//! of now fires late (counted as late); older ones are missed, and `missed = "skip"`
//! claims them without enqueueing (counted as skipped) while `missed = "catch_up"`
//! enqueues the newest `catch_up_limit` of them and skips the rest. Ticks that fell while
//! a schedule was paused are consumed: resuming does not replay them. A new schedule
//! starts at the moment a scheduler first sees it, never in the past.

pub mod admin;
pub mod cron;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use admin::ScheduleView;
pub use cron::{Cron, CronError};

/// Longest schedule name.
pub const MAX_NAME: usize = 100;

/// Most missed ticks `catch_up` may replay at once.
pub const MAX_CATCH_UP: u32 = 1000;

/// Ticks looked at in one plan; a longer backlog of missed ticks is worked off over
/// successive plans (each claims through the last one it saw).
pub(crate) const MAX_SCAN: usize = 100_000;

/// A tick fired later than this after its instant counts as late.
pub const LATE_MS: u64 = 1000;

/// What to do with ticks older than the grace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Claim them without enqueueing.
    #[default]
    Skip,
    /// Enqueue the newest `catch_up_limit` of them.
    CatchUp,
}

/// One schedule, as written in `[[schedules]]` and stored in `ts:schedules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDef {
    /// Unique name: letters, digits, `_`, `-`, `.`; part of every task id it makes.
    pub name: String,
    /// Cron expression, 5 or 6 fields (see [`cron`]); exclusive with `every`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Fixed interval (`30s`, `5m`, `1h30m`, `1d`; at least 1 s), ticks aligned to
    /// multiples of it since the Unix epoch; exclusive with `cron`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// IANA time zone the cron expression is read in (default `UTC`).
    #[serde(default = "utc")]
    pub timezone: String,
    /// Queue the tasks go to.
    pub queue: String,
    /// Task type.
    #[serde(rename = "type")]
    pub task_type: String,
    /// Payload (any JSON value; a TOML table in the config). Default `{}`.
    #[serde(default = "empty_object")]
    pub payload: serde_json::Value,
    /// Express lane.
    #[serde(default)]
    pub express: bool,
    /// Partition key (default: the schedule name, so one schedule always uses one
    /// partition and its claim state stays in one slot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
    /// Missed-tick policy.
    #[serde(default)]
    pub missed: Missed,
    /// With `missed = "catch_up"`: most missed ticks replayed (1 to 1000, default 10).
    #[serde(default = "ten")]
    pub catch_up_limit: u32,
    /// A tick this late still fires (seconds, default 60).
    #[serde(default = "sixty")]
    pub misfire_grace_secs: u64,
}

fn utc() -> String {
    "UTC".into()
}
fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}
fn ten() -> u32 {
    10
}
fn sixty() -> u64 {
    60
}

/// When a schedule ticks.
#[derive(Debug, Clone)]
pub enum Spec {
    /// A cron expression in a time zone.
    Cron(Box<Cron>, jiff::tz::TimeZone),
    /// Every so many milliseconds since the epoch.
    Every(u64),
}

impl Spec {
    /// The first tick strictly after `after_ms` (Unix ms), if any.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        match self {
            Spec::Every(p) => Some((after_ms / p + 1) * p),
            Spec::Cron(c, tz) => {
                let t = jiff::Timestamp::from_millisecond(after_ms as i64).ok()?;
                c.next_after(t, tz).map(|t| t.as_millisecond() as u64)
            }
        }
    }
}

impl ScheduleDef {
    /// The tick rule, or what is wrong with the definition: each problem as
    /// (field, reason with the fix).
    pub fn compile(&self) -> Result<Spec, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        if self.name.is_empty()
            || self.name.len() > MAX_NAME
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            problems.push((
                "name",
                format!(
                    "{:?}: use 1 to {MAX_NAME} letters, digits, '_', '-' or '.'",
                    self.name
                ),
            ));
        }
        if let Err(r) = crate::keys::validate_queue_name(&self.queue) {
            problems.push(("queue", format!("{:?} {r}", self.queue)));
        }
        if let Err(r) = crate::task::validate_type(&self.task_type) {
            problems.push(("type", format!("{:?} {r}", self.task_type)));
        }
        if !(1..=MAX_CATCH_UP).contains(&self.catch_up_limit) {
            problems.push((
                "catch_up_limit",
                format!("{} must be 1 to {MAX_CATCH_UP}", self.catch_up_limit),
            ));
        }
        let spec = match (&self.cron, &self.every) {
            (Some(_), Some(_)) => {
                problems.push(("cron", "give either cron or every, not both".into()));
                None
            }
            (None, None) => {
                problems.push((
                    "cron",
                    "give cron = \"*/5 * * * *\" or every = \"30s\"".into(),
                ));
                None
            }
            (Some(expr), None) => {
                let c = Cron::parse(expr).map_err(|e| e.0);
                let tz = jiff::tz::TimeZone::get(&self.timezone).map_err(|e| {
                    format!(
                        "{:?} is not an IANA time zone ({e}): use a name such as \"Europe/Berlin\" or \"UTC\"",
                        self.timezone
                    )
                });
                match (c, tz) {
                    (Ok(c), Ok(tz)) => Some(Spec::Cron(Box::new(c), tz)),
                    (c, tz) => {
                        if let Err(e) = c {
                            problems.push(("cron", e));
                        }
                        if let Err(e) = tz {
                            problems.push(("timezone", e));
                        }
                        None
                    }
                }
            }
            (None, Some(every)) => match parse_every(every) {
                Ok(d) => Some(Spec::Every(d.as_millis() as u64)),
                Err(e) => {
                    problems.push(("every", e));
                    None
                }
            },
        };
        match spec {
            Some(s) if problems.is_empty() => Ok(s),
            _ => Err(problems),
        }
    }

    /// The payload as JSON text.
    pub fn payload_text(&self) -> String {
        self.payload.to_string()
    }

    /// The id of the task a tick makes.
    pub fn task_id(&self, tick_ms: u64) -> String {
        format!("{}@{tick_ms}", self.name)
    }
}

/// Parses `every`: one or more `<n><unit>` with units `ms`, `s`, `m`, `h`, `d`, at least
/// one second in all.
pub fn parse_every(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("{s:?} is not a duration: write e.g. \"30s\", \"5m\", \"1h30m\" or \"1d\"");
    let mut total: u64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let ms = match &rest[..unit] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit..];
        total = n
            .checked_mul(ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if total < 1000 {
        return Err(format!(
            "{s:?} is shorter than the 1 s a schedule may tick at"
        ));
    }
    Ok(Duration::from_millis(total))
}

/// What one scheduler should do for one schedule now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Plan {
    /// Ticks to fire, oldest first, each with the count of missed ticks skipped just
    /// before it (claimed by the same script run).
    pub fire: Vec<(u64, u64)>,
    /// The newest skipped tick when no fired tick comes after it, with the count of
    /// ticks skipped up to it: claimed without enqueueing.
    pub skip_through: Option<(u64, u64)>,
    /// The next tick after the ones planned.
    pub next: Option<u64>,
}

/// Plans the ticks after `last` (the last claimed tick, or the moment the schedule was
/// first seen) up to `now`: pure, so missed-tick policy is tested without a clock.
pub(crate) fn plan(spec: &Spec, def: &ScheduleDef, last: u64, now: u64) -> Plan {
    let grace = def.misfire_grace_secs.saturating_mul(1000);
    let keep = match def.missed {
        Missed::Skip => 0,
        Missed::CatchUp => def.catch_up_limit as usize,
    };
    let mut missed: std::collections::VecDeque<u64> = Default::default();
    let mut skipped = 0u64;
    let mut newest_skipped = None;
    let mut fire = Vec::new();
    let mut t = last;
    let mut next = None;
    for _ in 0..MAX_SCAN {
        match spec.next_after(t) {
            Some(n) if n <= now => {
                t = n;
                if now - n > grace {
                    missed.push_back(n);
                    if missed.len() > keep {
                        newest_skipped = missed.pop_front();
                        skipped += 1;
                    }
                } else {
                    fire.push(n);
                }
            }
            other => {
                next = other;
                break;
            }
        }
    }
    // Skipped ticks are all older than kept missed ticks, which are older than due ones.
    let ordered: Vec<u64> = missed.into_iter().chain(fire).collect();
    let mut plan = Plan {
        next,
        ..Plan::default()
    };
    match ordered.split_first() {
        Some((first, rest)) => {
            plan.fire.push((*first, skipped));
            plan.fire.extend(rest.iter().map(|t| (*t, 0)));
        }
        None => plan.skip_through = newest_skipped.map(|t| (t, skipped)),
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(missed: Missed) -> ScheduleDef {
        ScheduleDef {
            name: "s".into(),
            cron: None,
            every: Some("10s".into()),
            timezone: "UTC".into(),
            queue: "q".into(),
            task_type: "t".into(),
            payload: serde_json::json!({}),
            express: false,
            partition_key: None,
            missed,
            catch_up_limit: 3,
            misfire_grace_secs: 25,
        }
    }

    #[test]
    fn every_parses_and_refuses() {
        assert_eq!(parse_every("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_every("1d").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_every("1500ms").unwrap(), Duration::from_millis(1500));
        for bad in ["", "10", "5x", "m5", "500ms", "99999999999999999999d"] {
            assert!(parse_every(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn on_time_ticks_fire_and_the_next_is_known() {
        let d = def(Missed::Skip);
        let s = d.compile().unwrap();
        let p = plan(&s, &d, 100_000, 120_500);
        assert_eq!(p.fire, vec![(110_000, 0), (120_000, 0)]);
        assert_eq!(p.skip_through, None);
        assert_eq!(p.next, Some(130_000));
        let idle = plan(&s, &d, 120_000, 125_000);
        assert_eq!(
            idle,
            Plan {
                next: Some(130_000),
                ..Plan::default()
            }
        );
    }

    #[test]
    fn missed_ticks_are_skipped_or_caught_up_within_the_limit() {
        // Ticks every 10 s from 10 s to 200 s; now 200.5 s, grace 25 s: 180, 190, 200 are
        // due, 10..170 (17 ticks) are missed.
        let skip = def(Missed::Skip);
        let s = skip.compile().unwrap();
        let p = plan(&s, &skip, 0, 200_500);
        assert_eq!(p.fire, vec![(180_000, 17), (190_000, 0), (200_000, 0)]);
        let catch = def(Missed::CatchUp);
        let p = plan(&s, &catch, 0, 200_500);
        assert_eq!(
            p.fire,
            vec![
                (150_000, 14),
                (160_000, 0),
                (170_000, 0),
                (180_000, 0),
                (190_000, 0),
                (200_000, 0)
            ],
            "the newest 3 missed ones, then the due ones"
        );
        // Only missed ticks, nothing due: skip claims through the newest.
        let p = plan(&s, &skip, 0, 131_000);
        assert_eq!(
            p.fire,
            vec![(110_000, 10), (120_000, 0), (130_000, 0)],
            "110 s is 21 s old: due"
        );
        let p = plan(&s, &skip, 0, 139_000);
        assert_eq!(p.fire, vec![(120_000, 11), (130_000, 0)]);
        let mut short = def(Missed::Skip);
        short.misfire_grace_secs = 5;
        let p = plan(&s, &short, 0, 76_000);
        assert_eq!(p.fire, vec![], "nothing within the grace");
        assert_eq!(p.skip_through, Some((70_000, 7)));
        assert_eq!(p.next, Some(80_000));
    }

    #[test]
    fn definitions_say_what_is_wrong() {
        let mut d = def(Missed::Skip);
        d.every = None;
        d.cron = Some("61 * * * *".into());
        d.timezone = "Mars/Olympus".into();
        d.name = "bad name".into();
        d.catch_up_limit = 0;
        let problems = d.compile().unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.0).collect();
        assert_eq!(
            fields,
            ["name", "catch_up_limit", "cron", "timezone"],
            "{problems:?}"
        );
        d = def(Missed::Skip);
        d.cron = Some("* * * * *".into());
        assert_eq!(
            d.compile().unwrap_err()[0].1,
            "give either cron or every, not both"
        );
    }

    #[test]
    fn toml_form() {
        let d: ScheduleDef = toml::from_str(
            "name = \"nightly\"\ncron = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\nqueue = \"reports\"\ntype = \"report.build\"\npayload = { kind = \"daily\" }\nmissed = \"catch_up\"\n",
        )
        .unwrap();
        assert_eq!(d.payload_text(), r#"{"kind":"daily"}"#);
        assert_eq!(d.missed, Missed::CatchUp);
        assert_eq!(d.catch_up_limit, 10);
        assert!(d.compile().is_ok());
        assert_eq!(d.task_id(1_764_000_000_000), "nightly@1764000000000");
    }
}
