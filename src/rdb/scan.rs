//! Scans of a stream done inside Redis (`scan_entries.lua`): dead-letter search, bulk
//! requeue and delete by filter, and task lookup by id.
//!
//! Why in Redis: a dead-letter stream of 100,000 entries with payloads up to 1 MiB cannot
//! be pulled to the client page by page to be filtered there without the client's memory
//! (and the wire) paying for every entry that does not match. The script looks at a
//! bounded number of entries per call (so Redis is held for a bounded time) and returns
//! only the matches, with long values cut for display.

use redis::{Pipeline, Value};

use super::parse::RawEntry;
use super::{Broker, ScriptId};
use crate::error::Result;

/// Entries one script call looks at.
pub(crate) const SCAN_CHUNK: usize = 500;

/// One condition an entry must meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Criterion {
    /// The field equals the value.
    Eq(&'static str, String),
    /// The field contains the value, ignoring ASCII case.
    Has(&'static str, String),
}

/// How much of each matching entry comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fields {
    /// Ids only.
    None,
    /// Every field, values longer than this many bytes cut (ending with `…`).
    CutAt(usize),
}

/// What one scan call saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Scanned {
    /// The last entry id looked at (continue after it); `None` when none was.
    pub(crate) last: Option<String>,
    /// Entries looked at.
    pub(crate) scanned: u64,
    /// The matches, in id order (fields empty for [`Fields::None`]).
    pub(crate) matches: Vec<RawEntry>,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Decodes the script's reply.
fn parse(v: Value) -> Scanned {
    let Value::Array(items) = v else {
        return Scanned::default();
    };
    let mut it = items.into_iter();
    let last = it.next().as_ref().and_then(text).filter(|s| !s.is_empty());
    let scanned = match it.next() {
        Some(Value::Int(n)) => n.max(0) as u64,
        _ => 0,
    };
    let mut matches = Vec::new();
    while let (Some(id), Some(fields)) = (it.next(), it.next()) {
        let Some(id) = text(&id) else { continue };
        let flat = match fields {
            Value::Array(a) => a,
            _ => Vec::new(),
        };
        let mut pairs = Vec::with_capacity(flat.len() / 2);
        let mut f = flat.into_iter();
        while let (Some(Value::BulkString(k)), Some(Value::BulkString(v))) = (f.next(), f.next()) {
            pairs.push((k, v));
        }
        matches.push(RawEntry {
            id,
            fields: Some(pairs),
        });
    }
    Scanned {
        last,
        scanned,
        matches,
    }
}

impl Broker {
    /// Looks at up to `count` entries of `stream` in `[start, end]` and returns up to
    /// `want` that meet every criterion.
    pub(crate) async fn scan_entries(
        &self,
        stream: &str,
        (start, end): (&str, &str),
        count: usize,
        want: usize,
        fields: Fields,
        criteria: &[Criterion],
    ) -> Result<Scanned> {
        let cut: i64 = match fields {
            Fields::None => 0,
            Fields::CutAt(n) => n.max(1) as i64,
        };
        let mut args: Vec<String> = vec![
            start.to_string(),
            end.to_string(),
            count.max(1).to_string(),
            want.max(1).to_string(),
            cut.to_string(),
        ];
        for c in criteria {
            match c {
                Criterion::Eq(f, v) => args.extend(["eq".into(), f.to_string(), v.clone()]),
                Criterion::Has(f, v) => {
                    args.extend(["has".into(), f.to_string(), v.to_ascii_lowercase()])
                }
            }
        }
        let mut p = Pipeline::new();
        p.add_command(super::evalsha(ScriptId::ScanEntries, &[stream], args));
        let (v,): (Value,) = self.pipe(&p).await?;
        Ok(parse(v))
    }

    /// The id of the newest entry of `stream`, if any.
    pub(crate) async fn newest_entry_id(&self, stream: &str) -> Result<Option<String>> {
        let v: Value = redis::cmd("XREVRANGE")
            .arg(stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.c())
            .await?;
        Ok(super::parse::entries(v).pop().map(|e| e.id))
    }

    /// Deletes `ids` from `stream`; returns how many were there.
    pub(crate) async fn delete_entries(&self, stream: &str, ids: &[String]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(redis::cmd("XDEL")
            .arg(stream)
            .arg(ids)
            .query_async(&mut self.c())
            .await?)
    }

    /// Requeues dead letters `ids` of one partition's keys in one pipeline (`requeue.lua`
    /// each); returns (requeued, skipped).
    pub(crate) async fn requeue_entries(
        &self,
        k: &crate::keys::QueueKeys,
        ids: &[String],
    ) -> Result<(u64, u64)> {
        if ids.is_empty() {
            return Ok((0, 0));
        }
        let now = crate::task::now_ms().to_string();
        let mut p = Pipeline::new();
        for id in ids {
            p.add_command(super::evalsha(
                ScriptId::Requeue,
                &[&k.dlq, &k.stream, &k.express],
                [id.as_str(), now.as_str()],
            ));
        }
        let rs: Vec<i64> = self.pipe(&p).await?;
        let ok = rs.iter().filter(|r| **r == 1).count() as u64;
        Ok((ok, rs.len() as u64 - ok))
    }

    /// The last entry id `group` was given on `stream` (`XINFO GROUPS`); `None` when the
    /// stream or the group does not exist.
    pub(crate) async fn last_delivered(&self, stream: &str, group: &str) -> Result<Option<String>> {
        let r: redis::RedisResult<Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut self.c())
            .await;
        let Ok(Value::Array(groups)) = r else {
            return Ok(None);
        };
        for g in groups {
            let flat = match g {
                Value::Array(a) => a,
                Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                _ => continue,
            };
            let get = |name: &str| {
                flat.chunks(2).find_map(|kv| match kv {
                    [k, v] if text(k).as_deref() == Some(name) => text(v),
                    _ => None,
                })
            };
            if get("name").as_deref() == Some(group) {
                return Ok(get("last-delivered-id"));
            }
        }
        Ok(None)
    }

    /// The pending entry `id` of `group` on `stream`: (consumer, idle ms, deliveries).
    pub(crate) async fn pending_entry(
        &self,
        stream: &str,
        group: &str,
        id: &str,
    ) -> Result<Option<(String, u64, u64)>> {
        let r: redis::RedisResult<Vec<(String, String, u64, u64)>> = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .arg(id)
            .arg(id)
            .arg(1)
            .query_async(&mut self.c())
            .await;
        match r {
            Ok(v) => Ok(v.into_iter().next().map(|(_, c, idle, n)| (c, idle, n))),
            // No group (no worker ever read the stream): nothing is pending.
            Err(e) if e.code() == Some("NOGROUP") => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A member of sorted set `key` whose JSON has `"id":<json of id>` (ZSCAN MATCH, at
    /// most `max_calls` cursor steps), with its score.
    pub(crate) async fn find_scheduled(
        &self,
        key: &str,
        task_id: &str,
        max_calls: usize,
    ) -> Result<Option<(String, f64)>> {
        let quoted = serde_json::to_string(task_id)?;
        let needle = format!("\"id\":{quoted}");
        let mut pattern = String::from("*");
        for c in needle.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        let mut cursor = 0u64;
        for _ in 0..max_calls.max(1) {
            let (next, items): (u64, Vec<(String, f64)>) = redis::cmd("ZSCAN")
                .arg(key)
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.c())
                .await?;
            if let Some(hit) = items.into_iter().find(|(m, _)| m.contains(&needle)) {
                return Ok(Some(hit));
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_matches_and_the_position() {
        let bs = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let v = Value::Array(vec![
            bs("5-0"),
            Value::Int(3),
            bs("2-0"),
            Value::Array(vec![bs("type"), bs("t")]),
            bs("4-0"),
            Value::Array(vec![]),
        ]);
        let s = parse(v);
        assert_eq!(s.last.as_deref(), Some("5-0"));
        assert_eq!(s.scanned, 3);
        assert_eq!(s.matches.len(), 2);
        assert_eq!(
            s.matches[0].fields.as_ref().unwrap()[0],
            (b"type".to_vec(), b"t".to_vec())
        );
        assert_eq!(parse(Value::Array(vec![bs(""), Value::Int(0)])).last, None);
    }
}
