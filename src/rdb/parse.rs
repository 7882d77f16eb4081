//! Decoding of stream replies from raw [`redis::Value`]s without intermediate maps.

use redis::Value;

/// One stream entry: id and field/value byte pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    /// Stream entry id, `ms-seq`.
    pub id: String,
    /// Field/value pairs in stream order. `None` when the entry was deleted but is still
    /// referenced (XCLAIM/XAUTOCLAIM/XREADGROUP of history).
    pub fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl RawEntry {
    /// The id and the fields as text (invalid UTF-8 replaced), for display and for the
    /// operator's views (dead letters, task lookup); none for a deleted entry.
    pub fn into_text(self) -> (String, Vec<(String, String)>) {
        let fields = self
            .fields
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        (self.id, fields)
    }
}

/// Entries of one stream from an XREAD/XREADGROUP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamBatch {
    /// Stream key.
    pub stream: String,
    /// Its entries.
    pub entries: Vec<RawEntry>,
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn string(v: Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b).ok())
}

fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// Decodes `[id, [f, v, f, v, …]]` (or `[id, nil]` for a deleted entry).
pub fn entry(v: Value) -> Option<RawEntry> {
    let mut it = items(v).into_iter();
    let id = string(it.next()?)?;
    let fields = match it.next() {
        Some(Value::Nil) | None => None,
        Some(f) => {
            let flat = items(f);
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut fi = flat.into_iter();
            while let (Some(k), Some(v)) = (fi.next(), fi.next()) {
                if let (Some(k), Some(v)) = (bytes(k), bytes(v)) {
                    pairs.push((k, v));
                }
            }
            Some(pairs)
        }
    };
    Some(RawEntry { id, fields })
}

/// Decodes a list of entries.
pub fn entries(v: Value) -> Vec<RawEntry> {
    items(v).into_iter().filter_map(entry).collect()
}

/// Decodes an XREAD/XREADGROUP reply: `nil` or `[[stream, [entry…]]…]` (RESP2) or a map
/// of stream → entries (RESP3).
pub fn read_reply(v: Value) -> Vec<StreamBatch> {
    match v {
        Value::Nil => Vec::new(),
        Value::Map(m) => m
            .into_iter()
            .filter_map(|(k, v)| {
                Some(StreamBatch {
                    stream: string(k)?,
                    entries: entries(v),
                })
            })
            .collect(),
        other => items(other)
            .into_iter()
            .filter_map(|s| {
                let mut it = items(s).into_iter();
                let stream = string(it.next()?)?;
                Some(StreamBatch {
                    stream,
                    entries: it.next().map(entries).unwrap_or_default(),
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bs(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn decodes_resp2_read_reply() {
        let v = Value::Array(vec![Value::Array(vec![
            bs("ts:{q}:stream"),
            Value::Array(vec![
                Value::Array(vec![bs("1-0"), Value::Array(vec![bs("type"), bs("t")])]),
                Value::Array(vec![bs("2-0"), Value::Nil]),
            ]),
        ])]);
        let r = read_reply(v);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].stream, "ts:{q}:stream");
        assert_eq!(
            r[0].entries[0].fields.as_ref().unwrap()[0],
            (b"type".to_vec(), b"t".to_vec())
        );
        assert_eq!(r[0].entries[1].fields, None);
        assert!(read_reply(Value::Nil).is_empty());
    }
}
