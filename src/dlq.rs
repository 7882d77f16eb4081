//! Dead-letter stream management: list, requeue, purge (`taskstream dlq …`).
//!
//! A dead letter keeps the task's original fields plus `dlq_reason`, `dlq_error`,
//! `dlq_attempts`, `dlq_at`, `dlq_entry_id`, `dlq_lane`, `dlq_group` and `dlq_consumer`.
//! Requeue moves it back to its lane's stream with `attempt = 1`, in one atomic script.
//!
//! These functions take a bare connection for the callers that have one; the operator API
//! is [`crate::inspect::Inspector`].

use crate::rdb::Conn;
use serde::Serialize;

use crate::error::Result;
use crate::rdb::Broker;

/// One dead letter, for display.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetter {
    /// Entry id in the dead-letter stream.
    pub dlq_id: String,
    /// All fields (payloads included) as text.
    pub fields: Vec<(String, String)>,
}

impl DeadLetter {
    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Lists up to `count` dead letters, oldest first.
pub async fn list(conn: &mut Conn, queue: &str, count: usize) -> Result<Vec<DeadLetter>> {
    Ok(Broker::new(conn.clone())
        .dead_letters(queue, "-", "+", count)
        .await?
        .0)
}

/// Requeues one dead letter. Returns 1 when requeued, 0 when gone, -1 when it holds no task.
pub async fn requeue(conn: &mut Conn, queue: &str, dlq_id: &str) -> Result<i64> {
    Broker::new(conn.clone())
        .requeue_dead_letter(queue, dlq_id)
        .await
}

/// Requeues every dead letter present when called (in pages). Letters that die again while
/// this runs are left alone, so it always ends. Returns (requeued, skipped).
pub async fn requeue_all(conn: &mut Conn, queue: &str) -> Result<(u64, u64)> {
    requeue_all_on(&Broker::new(conn.clone()), queue).await
}

/// [`requeue_all`] on a broker.
pub(crate) async fn requeue_all_on(b: &Broker, queue: &str) -> Result<(u64, u64)> {
    let (mut ok, mut skipped) = (0, 0);
    let Some(end) = b.newest_dead_letter_id(queue).await? else {
        return Ok((0, 0));
    };
    let mut start = "-".to_string();
    loop {
        let (page, _) = b.dead_letters(queue, &start, &end, 500).await?;
        let Some(last) = page.last().map(|d| d.dlq_id.clone()) else {
            break;
        };
        for d in &page {
            match b.requeue_dead_letter(queue, &d.dlq_id).await? {
                1 => ok += 1,
                _ => skipped += 1,
            }
        }
        start = format!("({last}");
    }
    Ok((ok, skipped))
}

/// Deletes the dead-letter stream. Returns how many entries it held.
pub async fn purge(conn: &mut Conn, queue: &str) -> Result<u64> {
    Broker::new(conn.clone()).purge_dead_letters(queue).await
}

/// Which dead letters an operator means: every given condition must hold. The same
/// filter drives search, bulk requeue and bulk delete (and their dry runs), in the CLI,
/// the API and the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterFilter {
    /// Task type, exactly.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub task_type: Option<String>,
    /// Text the reason (`dlq_reason`) contains, ignoring case (e.g. `exhausted`, `poison`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Text the last error (`dlq_error`) contains, ignoring case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Task id, exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Dead-lettered at or after this Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// Dead-lettered at or before this Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

impl DeadLetterFilter {
    /// The conditions on fields, for the scan in Redis.
    pub(crate) fn criteria(&self) -> Vec<crate::rdb::scan::Criterion> {
        use crate::rdb::scan::Criterion::{Eq, Has};
        let mut c = Vec::new();
        if let Some(t) = &self.task_type {
            c.push(Eq("type", t.clone()));
        }
        if let Some(t) = &self.task_id {
            c.push(Eq("id", t.clone()));
        }
        if let Some(r) = &self.reason {
            c.push(Has("dlq_reason", r.clone()));
        }
        if let Some(e) = &self.error {
            c.push(Has("dlq_error", e.clone()));
        }
        c
    }

    /// The time range as XRANGE bounds (a dead letter's id is the time it died).
    pub(crate) fn bounds(&self) -> (String, String) {
        (
            self.since_ms
                .map_or_else(|| "-".to_string(), |t| t.to_string()),
            self.until_ms
                .map_or_else(|| "+".to_string(), |t| t.to_string()),
        )
    }

    /// Whether `d` meets the filter: what the scan in Redis computes, stated in Rust
    /// (tests compare the two).
    pub fn matches(&self, d: &DeadLetter) -> bool {
        let ms = crate::task::entry_id_ms(&d.dlq_id).unwrap_or(0);
        let has = |field: &str, needle: &Option<String>| match needle {
            None => true,
            Some(n) => d
                .get(field)
                .is_some_and(|v| v.to_ascii_lowercase().contains(&n.to_ascii_lowercase())),
        };
        let eq = |field: &str, want: &Option<String>| match want {
            None => true,
            Some(w) => d.get(field) == Some(w.as_str()),
        };
        eq("type", &self.task_type)
            && eq("id", &self.task_id)
            && has("dlq_reason", &self.reason)
            && has("dlq_error", &self.error)
            && self.since_ms.is_none_or(|s| ms >= s)
            && self.until_ms.is_none_or(|u| ms <= u)
    }
}

/// Where a search continues: a partition and the last dead-letter id looked at there.
/// Shown to clients as `<partition>.<ms>-<seq>`; anything else is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchCursor {
    /// The partition the search is in.
    pub partition: u32,
    /// The last id looked at in it.
    pub after: String,
}

impl SearchCursor {
    /// Parses a cursor given by a client.
    pub fn parse(s: &str) -> std::result::Result<SearchCursor, String> {
        let bad = || {
            format!("cursor {s:?} is not one this server returned (expected the next_cursor of an earlier page)")
        };
        let digits = |d: &str, max: usize| {
            !d.is_empty() && d.len() <= max && d.bytes().all(|b| b.is_ascii_digit())
        };
        let (p, id) = s.split_once('.').ok_or_else(bad)?;
        let (ms, seq) = id.split_once('-').ok_or_else(bad)?;
        if !(digits(p, 9) && digits(ms, 19) && digits(seq, 19)) {
            return Err(bad());
        }
        let partition = p.parse::<u32>().map_err(|_| bad())?;
        Ok(SearchCursor {
            partition,
            after: id.to_string(),
        })
    }
}

impl std::fmt::Display for SearchCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.partition, self.after)
    }
}

/// One page of a dead-letter search.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SearchPage {
    /// The matches, in id order within a partition, partitions in order. Values longer
    /// than [`SEARCH_VALUE_CUT`] bytes are cut and end with `…`.
    pub letters: Vec<DeadLetter>,
    /// Pass it back for the next page; `None` when the search has looked at everything.
    /// A page can hold fewer than `limit` letters and still have a next one: each request
    /// looks at no more than [`SEARCH_BUDGET`] entries, so it answers in bounded time.
    pub next_cursor: Option<String>,
    /// Dead letters looked at by this request.
    pub scanned: u64,
}

/// Entries one search request looks at, at most.
pub const SEARCH_BUDGET: usize = 20_000;

/// Values of a search result are cut to this many bytes (the payload is for display;
/// the dead letter itself is untouched).
pub const SEARCH_VALUE_CUT: usize = 4096;

impl From<crate::rdb::RawEntry> for DeadLetter {
    fn from(e: crate::rdb::RawEntry) -> Self {
        let (dlq_id, fields) = e.into_text();
        DeadLetter { dlq_id, fields }
    }
}

/// Searches the dead letters of `queue` (see [`SearchPage`]).
pub(crate) async fn search(
    b: &Broker,
    queue: &str,
    filter: &DeadLetterFilter,
    cursor: Option<&SearchCursor>,
    limit: usize,
) -> Result<SearchPage> {
    use crate::rdb::scan::{Fields, SCAN_CHUNK};
    let parts = b.partitions(&crate::keys::QueueKeys::new(queue)).await?;
    let criteria = filter.criteria();
    let (since, end) = filter.bounds();
    let mut page = SearchPage {
        letters: Vec::new(),
        next_cursor: None,
        scanned: 0,
    };
    let first = cursor.map_or(0, |c| c.partition);
    for part in first..parts {
        let k = crate::keys::QueueKeys::partition(queue, part);
        let mut start = match cursor {
            Some(c) if c.partition == part => format!("({}", c.after),
            _ => since.clone(),
        };
        loop {
            let want = limit - page.letters.len();
            let s = b
                .scan_entries(
                    &k.dlq,
                    (&start, &end),
                    SCAN_CHUNK,
                    want,
                    Fields::CutAt(SEARCH_VALUE_CUT),
                    &criteria,
                )
                .await?;
            page.scanned += s.scanned;
            page.letters
                .extend(s.matches.into_iter().map(DeadLetter::from));
            let Some(last) = s.last else { break };
            if page.letters.len() >= limit || page.scanned >= SEARCH_BUDGET as u64 {
                page.next_cursor = Some(
                    SearchCursor {
                        partition: part,
                        after: last,
                    }
                    .to_string(),
                );
                return Ok(page);
            }
            if (s.scanned as usize) < SCAN_CHUNK {
                break;
            }
            start = format!("({last}");
        }
    }
    Ok(page)
}

/// What a bulk action over a filter did (or, in a dry run, would do).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
pub struct BulkOutcome {
    /// Dead letters the filter matched.
    pub matched: u64,
    /// Of those, requeued or deleted (0 in a dry run).
    pub applied: u64,
    /// Matched but left alone: gone meanwhile, or (requeue) holding no task.
    pub skipped: u64,
    /// True when nothing was changed.
    pub dry_run: bool,
}

/// What a bulk action does to each match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    /// Back to its lane with attempt 1.
    Requeue,
    /// Deleted for good.
    Delete,
}

/// Requeues or deletes every dead letter of `queue` that `filter` matches and that was
/// there when called (letters that die again meanwhile are not seen again, so it ends).
pub(crate) async fn bulk(
    b: &Broker,
    queue: &str,
    filter: &DeadLetterFilter,
    action: BulkAction,
    dry_run: bool,
) -> Result<BulkOutcome> {
    use crate::rdb::scan::{Fields, SCAN_CHUNK};
    let parts = b.partitions(&crate::keys::QueueKeys::new(queue)).await?;
    let criteria = filter.criteria();
    let (since, until) = filter.bounds();
    let mut out = BulkOutcome {
        dry_run,
        ..BulkOutcome::default()
    };
    for part in 0..parts {
        let k = crate::keys::QueueKeys::partition(queue, part);
        // The end is fixed at the newest letter now, so requeued letters that die again
        // during the run are left for the next one.
        let Some(newest) = b.newest_entry_id(&k.dlq).await? else {
            continue;
        };
        let end = if until == "+" { newest } else { until.clone() };
        let mut start = since.clone();
        loop {
            let s = b
                .scan_entries(
                    &k.dlq,
                    (&start, &end),
                    SCAN_CHUNK,
                    SCAN_CHUNK,
                    Fields::None,
                    &criteria,
                )
                .await?;
            let ids: Vec<String> = s.matches.into_iter().map(|e| e.id).collect();
            out.matched += ids.len() as u64;
            if !dry_run {
                let (ok, skipped) = match action {
                    BulkAction::Requeue => b.requeue_entries(&k, &ids).await?,
                    BulkAction::Delete => {
                        let n = b.delete_entries(&k.dlq, &ids).await?;
                        (n, ids.len() as u64 - n)
                    }
                };
                out.applied += ok;
                out.skipped += skipped;
            }
            let Some(last) = s.last else { break };
            if (s.scanned as usize) < SCAN_CHUNK {
                break;
            }
            start = format!("({last}");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dl(id: &str, fields: &[(&str, &str)]) -> DeadLetter {
        DeadLetter {
            dlq_id: id.into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn filters_combine_every_condition() {
        let d = dl(
            "1000-0",
            &[
                ("type", "email.send"),
                ("id", "t-1"),
                ("dlq_reason", "exhausted: 3 of 3 attempts failed"),
                ("dlq_error", "SMTP Timeout after 30s"),
            ],
        );
        assert!(DeadLetterFilter::default().matches(&d));
        let f = DeadLetterFilter {
            task_type: Some("email.send".into()),
            error: Some("smtp timeout".into()),
            reason: Some("EXHAUSTED".into()),
            since_ms: Some(1000),
            until_ms: Some(1000),
            ..Default::default()
        };
        assert!(f.matches(&d));
        for other in [
            DeadLetterFilter {
                task_type: Some("email".into()),
                ..Default::default()
            },
            DeadLetterFilter {
                task_id: Some("t-2".into()),
                ..Default::default()
            },
            DeadLetterFilter {
                since_ms: Some(1001),
                ..Default::default()
            },
            DeadLetterFilter {
                until_ms: Some(999),
                ..Default::default()
            },
            DeadLetterFilter {
                error: Some("refused".into()),
                ..Default::default()
            },
        ] {
            assert!(!other.matches(&d), "{other:?}");
        }
        // A letter without the field never matches a condition on it.
        let bare = dl("5-0", &[("type", "x")]);
        let f = DeadLetterFilter {
            error: Some("".into()),
            ..Default::default()
        };
        assert!(!f.matches(&bare));
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let c = SearchCursor::parse("2.1700000000000-3").unwrap();
        assert_eq!(c.partition, 2);
        assert_eq!(c.after, "1700000000000-3");
        assert_eq!(c.to_string(), "2.1700000000000-3");
        // A partition past the queue's is a valid cursor of an empty rest.
        assert_eq!(
            SearchCursor::parse("054510503.53994-22").unwrap().partition,
            54510503
        );
        for bad in [
            "",
            "x",
            "1.",
            "1.5",
            "a.1-0",
            "1.1-x",
            "-1.1-0",
            "1.1-0-0",
            "9999999999.1-0",
            "1.99999999999999999999-0",
        ] {
            assert!(SearchCursor::parse(bad).is_err(), "{bad}");
        }
    }
}
