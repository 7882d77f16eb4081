//! Cron expressions and the instants they fire at, in a time zone: pure arithmetic, no
//! clock (the scheduler passes "after" in), so every case — DST included — is a unit or
//! property test.
//!
//! Fields: `minute hour day-of-month month day-of-week`, or six with `second` first.
//! Each field takes `*` (or `?`), a number, `a-b`, a list `a,b,c`, and steps `*/n`,
//! `a-b/n`, `a/n`; months `JAN`–`DEC` and weekdays `SUN`–`SAT` by name, weekday 7 is
//! Sunday as 0 is. `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily`
//! (`@midnight`) and `@hourly` stand for their five fields. When both day fields are
//! restricted a day matches if either does (Vixie cron's rule, which every cron user has
//! met); otherwise both must.
//!
//! Daylight saving time, as a user of cron expects it (and as Vixie cron and systemd
//! timers behave for fixed-time jobs):
//! - **A repeated hour fires once.** When clocks go back, a civil time such as 01:30
//!   happens twice; it fires at its first occurrence only, and the second pass of the
//!   hour fires nothing. (asynq and robfig/cron fire `30 1 * * *` twice that night.)
//! - **A skipped hour fires once, when it ends.** When clocks go forward, 02:30 does not
//!   exist; every tick that falls in the gap fires once, at the instant the gap ends
//!   (03:00 local), merged with a tick at 03:00 itself if there is one. So a daily 02:30
//!   job still runs that day, and `*/15` does not fire four times at 03:00.
//!
//! Because every tick is an instant computed from the expression alone, replicas with
//! different clocks agree on the ticks; they only race to fire them (see `rdb/schedule.rs`).

use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::Timestamp;

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    /// Seconds that match (bit n = second n); only bit 0 for five fields.
    seconds: u64,
    /// Minutes that match.
    minutes: u64,
    /// Hours that match.
    hours: u32,
    /// Days of the month that match (bit n = day n, 1–31).
    days: u32,
    /// Months that match (bit n = month n, 1–12).
    months: u16,
    /// Weekdays that match (bit n = weekday n, 0 = Sunday).
    weekdays: u8,
    /// The day-of-month field was `*` or `?`.
    days_star: bool,
    /// The day-of-week field was `*` or `?`.
    weekdays_star: bool,
}

/// Why an expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(pub String);

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Years searched ahead for a match before an expression is declared never to fire
/// (`0 0 30 2 *`); 29 February recurs within 8.
const SEARCH_YEARS: i16 = 10;

impl Cron {
    /// Parses five or six fields, or a macro.
    pub fn parse(expr: &str) -> Result<Cron, CronError> {
        let expanded = match expr.trim().to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *".to_string(),
            "@monthly" => "0 0 1 * *".to_string(),
            "@weekly" => "0 0 * * 0".to_string(),
            "@daily" | "@midnight" => "0 0 * * *".to_string(),
            "@hourly" => "0 * * * *".to_string(),
            m if m.starts_with('@') => {
                return Err(CronError(format!(
                    "unknown macro {m:?}: use @yearly, @monthly, @weekly, @daily or @hourly"
                )))
            }
            _ => expr.trim().to_string(),
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (sec, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(CronError(format!(
                    "{expr:?} has {n} fields: give 5 (minute hour day month weekday) or 6 (second first)"
                )))
            }
        };
        let seconds = field(sec, "second", 0, 59, &[])?;
        let minutes = field(rest[0], "minute", 0, 59, &[])?;
        let hours = field(rest[1], "hour", 0, 23, &[])? as u32;
        let days = field(rest[2], "day of month", 1, 31, &[])? as u32;
        let months = field(rest[3], "month", 1, 12, &MONTHS)? as u16;
        // 7 is Sunday too: fold it onto 0.
        let wd = field(rest[4], "day of week", 0, 7, &WEEKDAYS)?;
        let weekdays = ((wd | (wd >> 7)) & 0x7f) as u8;
        let star = |f: &str| f == "*" || f == "?";
        Ok(Cron {
            seconds,
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_star: star(rest[2]),
            weekdays_star: star(rest[4]),
        })
    }

    /// The first instant strictly after `after` at which the expression fires in `tz`
    /// (with the DST rules of the module docs), or `None` if it never fires again.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let local = tz.to_datetime(after);
        let mut from = Civil::of(local).plus_second();
        loop {
            let c = self.next_civil(from)?;
            let at = resolve(c, tz)?;
            if at > after {
                return Some(at);
            }
            // A civil time met again in the second pass of a repeated hour, or a gap
            // tick already fired at the gap's end: not again.
            from = c.plus_second();
        }
    }

    /// Whether civil time `c` matches every field.
    fn matches(&self, c: Civil) -> bool {
        self.months & (1 << c.month) != 0
            && self.day_matches(c)
            && self.hours & (1 << c.hour) != 0
            && self.minutes & (1 << c.minute) != 0
            && self.seconds & (1 << c.second) != 0
    }

    fn day_matches(&self, c: Civil) -> bool {
        let dom = self.days & (1 << c.day) != 0;
        let dow = self.weekdays & (1 << c.weekday()) != 0;
        match (self.days_star, self.weekdays_star) {
            (false, false) => dom || dow,
            _ => dom && dow,
        }
    }

    /// The first civil time at or after `c` that matches.
    fn next_civil(&self, mut c: Civil) -> Option<Civil> {
        let limit = c.year + SEARCH_YEARS;
        loop {
            if c.year > limit {
                return None;
            }
            if self.months & (1 << c.month) == 0 {
                c = c.next_month();
            } else if !self.day_matches(c) {
                c = c.next_day();
            } else if self.hours & (1 << c.hour) == 0 {
                c = c.next_hour();
            } else if self.minutes & (1 << c.minute) == 0 {
                c = c.next_minute();
            } else if self.seconds & (1 << c.second) == 0 {
                c = c.plus_second();
            } else {
                debug_assert!(self.matches(c));
                return Some(c);
            }
        }
    }
}

/// One field as a bit set of the values it allows in `lo..=hi`.
fn field(text: &str, what: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u64, CronError> {
    let value = |s: &str| -> Result<u32, CronError> {
        let up = s.to_ascii_uppercase();
        if let Some(i) = names.iter().position(|n| *n == up) {
            // Month names count from 1, weekday names from 0.
            return Ok(i as u32 + lo.min(1));
        }
        let v: u32 = s
            .parse()
            .map_err(|_| CronError(format!("{what} {s:?} is not a number from {lo} to {hi}")))?;
        if v < lo || v > hi {
            return Err(CronError(format!("{what} {v} is out of range {lo}-{hi}")));
        }
        Ok(v)
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        if part.is_empty() {
            return Err(CronError(format!(
                "{what} field {text:?} has an empty part"
            )));
        }
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let n: u32 = s.parse().map_err(|_| {
                    CronError(format!("{what} step {s:?} is not a positive number"))
                })?;
                if n == 0 {
                    return Err(CronError(format!("{what} step must be at least 1")));
                }
                (r, n)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" || range == "?" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(CronError(format!("{what} range {range:?} runs backwards")));
            }
            (a, b)
        } else {
            let a = value(range)?;
            // `a/n` means from a to the end in steps of n.
            (a, if step > 1 { hi } else { a })
        };
        if range.is_empty() {
            return Err(CronError(format!(
                "{what} field {text:?} has an empty part"
            )));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

/// The instant civil time `c` stands for in `tz`: the first occurrence in a repeated
/// hour, and the end of the gap for a time that a forward jump skipped.
fn resolve(c: Civil, tz: &TimeZone) -> Option<Timestamp> {
    let dt = jiff::civil::DateTime::new(
        c.year,
        c.month as i8,
        c.day as i8,
        c.hour as i8,
        c.minute as i8,
        c.second as i8,
        0,
    )
    .ok()?;
    let amb = tz.to_ambiguous_timestamp(dt);
    match amb.offset() {
        AmbiguousOffset::Unambiguous { .. } | AmbiguousOffset::Fold { .. } => amb.earlier().ok(),
        AmbiguousOffset::Gap { before, after } => {
            // Read with the offset after the gap, the time lands before the jump; the
            // next transition from there is the jump itself.
            let early = before
                .to_timestamp(dt)
                .ok()?
                .min(after.to_timestamp(dt).ok()?);
            tz.following(early).next().map(|t| t.timestamp())
        }
    }
}

/// A civil (wall-clock) time to the second, the unit the search steps in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Civil {
    year: i16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl Civil {
    fn of(dt: jiff::civil::DateTime) -> Civil {
        Civil {
            year: dt.year(),
            month: dt.month() as u8,
            day: dt.day() as u8,
            hour: dt.hour() as u8,
            minute: dt.minute() as u8,
            second: dt.second() as u8,
        }
    }

    fn weekday(self) -> u8 {
        // Sakamoto's method: 0 = Sunday.
        const T: [i32; 12] = [0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4];
        let m = self.month as i32;
        let y = self.year as i32 - i32::from(m < 3);
        ((y + y / 4 - y / 100 + y / 400 + T[(m - 1) as usize] + self.day as i32) % 7) as u8
    }

    fn next_month(self) -> Civil {
        let (year, month) = if self.month == 12 {
            (self.year + 1, 1)
        } else {
            (self.year, self.month + 1)
        };
        Civil {
            year,
            month,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
        }
    }

    fn next_day(self) -> Civil {
        if self.day >= days_in_month(self.year, self.month) {
            self.next_month()
        } else {
            Civil {
                day: self.day + 1,
                hour: 0,
                minute: 0,
                second: 0,
                ..self
            }
        }
    }

    fn next_hour(self) -> Civil {
        if self.hour == 23 {
            self.next_day()
        } else {
            Civil {
                hour: self.hour + 1,
                minute: 0,
                second: 0,
                ..self
            }
        }
    }

    fn next_minute(self) -> Civil {
        if self.minute == 59 {
            self.next_hour()
        } else {
            Civil {
                minute: self.minute + 1,
                second: 0,
                ..self
            }
        }
    }

    fn plus_second(self) -> Civil {
        if self.second == 59 {
            self.next_minute()
        } else {
            Civil {
                second: self.second + 1,
                ..self
            }
        }
    }
}

fn days_in_month(year: i16, month: u8) -> u8 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn tz(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    /// The next `n` ticks after `from`, as RFC 3339 UTC strings.
    fn ticks(expr: &str, zone: &str, from: &str, n: usize) -> Vec<String> {
        let c = Cron::parse(expr).unwrap();
        let z = tz(zone);
        let mut t = at(from);
        (0..n)
            .map(|_| {
                t = c.next_after(t, &z).unwrap();
                t.to_string()
            })
            .collect()
    }

    #[test]
    fn five_and_six_fields() {
        assert_eq!(
            ticks("*/15 * * * *", "UTC", "2026-12-02T10:07:00Z", 3),
            [
                "2026-12-02T10:15:00Z",
                "2026-12-02T10:30:00Z",
                "2026-12-02T10:45:00Z"
            ]
        );
        assert_eq!(
            ticks("*/20 * * * * *", "UTC", "2026-12-02T10:07:59.5Z", 3),
            [
                "2026-12-02T10:08:00Z",
                "2026-12-02T10:08:20Z",
                "2026-12-02T10:08:40Z"
            ]
        );
        assert_eq!(
            ticks("0 9 * * MON-FRI", "UTC", "2026-12-04T10:00:00Z", 2),
            ["2026-12-07T09:00:00Z", "2026-12-08T09:00:00Z"],
            "Friday 10:00 → Monday, Tuesday"
        );
        assert_eq!(
            ticks("@monthly", "UTC", "2026-12-02T00:00:00Z", 2),
            ["2027-01-01T00:00:00Z", "2027-02-01T00:00:00Z"]
        );
        assert_eq!(
            ticks("0 0 29 2 *", "UTC", "2026-12-02T00:00:00Z", 1),
            ["2028-02-29T00:00:00Z"]
        );
        assert_eq!(
            ticks("0 12 1 * 0", "UTC", "2026-12-01T12:00:00Z", 2),
            ["2026-12-06T12:00:00Z", "2026-12-13T12:00:00Z"],
            "day 1 or Sunday: either matches when both are restricted"
        );
        assert_eq!(
            ticks("0 0 * * 7", "UTC", "2026-12-02T00:00:00Z", 1),
            ["2026-12-06T00:00:00Z"],
            "7 is Sunday"
        );
        assert_eq!(
            Cron::parse("0 0 30 2 *")
                .unwrap()
                .next_after(at("2026-01-01T00:00:00Z"), &tz("UTC")),
            None
        );
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        for (e, says) in [
            ("* * * *", "4 fields"),
            ("60 * * * *", "minute 60 is out of range 0-59"),
            ("* 24 * * *", "hour 24"),
            ("*/0 * * * *", "step must be at least 1"),
            ("5-1 * * * *", "runs backwards"),
            ("* * * FOO *", "month \"FOO\""),
            ("@sometimes", "unknown macro"),
            ("1,,2 * * * *", "empty part"),
        ] {
            let err = Cron::parse(e).unwrap_err().0;
            assert!(err.contains(says), "{e}: {err}");
        }
    }

    #[test]
    fn a_repeated_hour_fires_once() {
        // Europe/Berlin, 2026-10-25: 03:00 CEST → 02:00 CET; 02:30 happens twice.
        assert_eq!(
            ticks("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"],
            "the first 02:30 (CEST) only"
        );
        // Every 30 minutes across the fold: 02:00 and 02:30 once each, then 03:00.
        assert_eq!(
            ticks("*/30 * * * *", "Europe/Berlin", "2026-10-24T23:45:00Z", 4),
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T02:00:00Z",
                "2026-10-25T02:30:00Z"
            ]
        );
        // Asked from inside the second pass, nothing of the hour fires again.
        assert_eq!(
            ticks("*/30 * * * *", "Europe/Berlin", "2026-10-25T01:10:00Z", 1),
            ["2026-10-25T02:00:00Z"]
        );
    }

    #[test]
    fn a_skipped_hour_fires_once_when_it_ends() {
        // America/New_York, 2026-03-08: 02:00 EST → 03:00 EDT; 02:30 does not exist.
        assert_eq!(
            ticks("30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", 2),
            ["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"],
            "the daily 02:30 fires at 03:00 EDT that day"
        );
        assert_eq!(
            ticks(
                "*/15 * * * *",
                "America/New_York",
                "2026-03-08T06:40:00Z",
                3
            ),
            [
                "2026-03-08T06:45:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-08T07:15:00Z"
            ],
            "01:45 EST, then the whole gap and 03:00 once, then 03:15"
        );
    }

    fn expr() -> impl Strategy<Value = String> {
        let f = |lo: u32, hi: u32| {
            prop_oneof![
                Just("*".to_string()),
                (lo..=hi).prop_map(|v| v.to_string()),
                (lo..=hi, 1u32..10).prop_map(|(a, s)| format!("{a}/{s}")),
                (lo..=hi, lo..=hi).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
                (lo..=hi, lo..=hi).prop_map(|(a, b)| format!("{a},{b}")),
            ]
        };
        (f(0, 59), f(0, 59), f(0, 23), f(1, 28), f(1, 12), f(0, 6))
            .prop_map(|(s, mi, h, d, mo, w)| format!("{s} {mi} {h} {d} {mo} {w}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Every tick is later than the one before, falls on a civil time that matches the
        /// expression (or, in a gap, on the gap's end), and no matching civil time that
        /// exists once lies strictly between two ticks.
        #[test]
        fn ticks_are_increasing_and_match(
            e in expr(),
            start in 1_700_000_000i64..1_900_000_000,
            zone in prop::sample::select(vec!["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]),
        ) {
            let c = Cron::parse(&e).unwrap();
            let z = tz(zone);
            let mut t = Timestamp::from_second(start).unwrap();
            for _ in 0..5 {
                let Some(n) = c.next_after(t, &z) else { break };
                prop_assert!(n > t);
                let civil = Civil::of(z.to_datetime(n));
                let in_gap_end = z.preceding(n.checked_add(jiff::SignedDuration::from_nanos(1)).unwrap())
                    .next()
                    .is_some_and(|tr| tr.timestamp() == n);
                prop_assert!(c.matches(civil) || in_gap_end, "{e} in {zone}: {n} ({civil:?})");
                // Nothing matching fires in between (checked by minutes when the
                // expression fires at second 0 and the span is short).
                if n.as_second() - t.as_second() <= 3 * 3600 {
                    let mut s = t.as_second() + 1;
                    while s < n.as_second() {
                        let cv = Civil::of(z.to_datetime(Timestamp::from_second(s).unwrap()));
                        let first = resolve(cv, &z) == Some(Timestamp::from_second(s).unwrap());
                        prop_assert!(!(c.matches(cv) && first), "{e} in {zone}: {cv:?} skipped between {t} and {n}");
                        s += 1;
                    }
                }
                t = n;
            }
        }
    }

    #[test]
    fn weekday_matches_jiff() {
        let mut d = jiff::civil::date(1999, 12, 25);
        for _ in 0..2000 {
            let c = Civil::of(d.at(0, 0, 0, 0));
            assert_eq!(c.weekday() as i8, d.weekday().to_sunday_zero_offset());
            d = d.tomorrow().unwrap();
        }
    }
}
