//! Batch sizes bounded by bytes: how many entries a lane reader asks for, and how many
//! settlements the settler sends in one round trip.
//!
//! # Why
//!
//! `XREADGROUP` can only be bounded by count, and a count that is right for 1 KiB tasks
//! is ruinous for 10 MiB ones: a raw producer that writes 20 entries of 10 MiB each (far
//! above `producer.max_payload_bytes`, so they are dead-lettered as malformed without
//! running) made one read return 200 MiB. That reply existed several times over at once
//! — in the connection's read buffer, as parsed values, as the dead-letter settlements and
//! then as one 200 MiB settle pipeline in the command connection's write buffer — and the
//! worker peaked at ~826 MB. The connections keep their buffers' grown capacity, so most
//! of that stayed resident afterwards (issue 10, item 12).
//!
//! # The rule
//!
//! - **Reads** ([`ReadSizer`]): after every non-empty read the reader computes the mean
//!   size of the entries it got; the next reads of that lane ask for at most
//!   `READ_BUDGET_BYTES / mean` entries (at least 1). Small tasks are not affected
//!   (4 MiB / 1 KiB is above any sensible `worker.read_count`); tasks at the default
//!   1 MiB payload limit are read three at a time; 10 MiB entries one at a time. The first read after a large one that comes back
//!   small lifts the bound again. An empty read changes nothing.
//! - **Settlements** ([`settle_batch_full`]): the settler stops adding settlements to a
//!   round trip once their bytes reach `SETTLE_BUDGET_BYTES` (a dead-letter settlement
//!   carries the entry's original fields, so it is as large as the entry). A single
//!   settlement larger than the budget goes alone.
//!
//! - **Backlog**: while more than `BACKLOG_BUDGET_BYTES` of settlements wait for the
//!   settler, the lane readers wait (`SettleSender::room`), so a long run of large dead
//!   letters cannot pile up in memory faster than it is written out.
//!
//! The sizing rules are pure so they can be tested without Redis; the budgets are constants, not
//! settings: they bound one round trip's memory, not throughput (a few MiB per round trip
//! is already far past the point where batching pays off).

use crate::rdb::{RawEntry, SettleAction, Settlement};

/// Target size of one read's reply.
pub(crate) const READ_BUDGET_BYTES: usize = 4 << 20;

/// Target size of one settle round trip.
pub(crate) const SETTLE_BUDGET_BYTES: usize = 4 << 20;

/// Most bytes of settlements waiting for the settler before the lane readers of the
/// queue stop reading (`SettleSender::room`).
pub(crate) const BACKLOG_BUDGET_BYTES: usize = 16 << 20;

/// Bytes of an entry as Redis sends them (id, field names and values; framing left out).
pub(crate) fn entry_bytes(e: &RawEntry) -> usize {
    e.id.len()
        + e.fields
            .as_ref()
            .map_or(0, |f| f.iter().map(|(k, v)| k.len() + v.len()).sum())
}

/// How many entries the next read of one lane may ask for (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadSizer {
    limit: usize,
}

impl Default for ReadSizer {
    fn default() -> Self {
        ReadSizer { limit: usize::MAX }
    }
}

impl ReadSizer {
    /// `want` bounded by the sizes of the last non-empty read; at least 1.
    pub(crate) fn count(&self, want: usize) -> usize {
        want.min(self.limit).max(1)
    }

    /// Takes note of what a read returned. True when it was larger than the budget.
    pub(crate) fn observe(&mut self, entries: &[RawEntry]) -> bool {
        if entries.is_empty() {
            return false;
        }
        let bytes: usize = entries.iter().map(entry_bytes).sum();
        let mean = bytes.div_ceil(entries.len()).max(1);
        self.limit = (READ_BUDGET_BYTES / mean).max(1);
        bytes > READ_BUDGET_BYTES
    }
}

/// Bytes a settlement puts on the wire (the fields and reply it carries; the fixed part
/// of every settlement is left out).
pub(crate) fn settlement_bytes(s: &Settlement) -> usize {
    let action = match &s.action {
        SettleAction::Dead(fields) | SettleAction::Move { fields, .. } => {
            fields.iter().map(|(k, v)| k.len() + v.len()).sum()
        }
        SettleAction::Retry { member, .. } => member.len(),
        SettleAction::Ok | SettleAction::Skip | SettleAction::Cancelled => 0,
    };
    let reply = s
        .reply
        .as_ref()
        .map_or(0, |r| r.fields.iter().map(|(k, v)| k.len() + v.len()).sum());
    let record = s.record.as_ref().map_or(0, |r| r.bytes());
    s.entry_id.len() + action + reply + record
}

/// True when a batch of `len` settlements holding `bytes` may take no more: `max` reached
/// (`worker.ack_batch`) or the byte budget spent.
pub(crate) fn settle_batch_full(len: usize, bytes: usize, max: usize) -> bool {
    len >= max || bytes >= SETTLE_BUDGET_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Lane;
    use crate::rdb::ReplyEntry;

    fn entry(payload: usize) -> RawEntry {
        RawEntry {
            id: "1-0".into(),
            fields: Some(vec![
                (b"type".to_vec(), b"t".to_vec()),
                (b"payload".to_vec(), vec![b'1'; payload]),
            ]),
        }
    }

    #[test]
    fn small_entries_leave_reads_unbounded() {
        let mut s = ReadSizer::default();
        assert_eq!(s.count(256), 256);
        assert!(!s.observe(&vec![entry(1_000); 256]));
        assert_eq!(s.count(256), 256);
        // Each entry is 1,015 bytes (id, names and values).
        assert_eq!(s.count(10_000), READ_BUDGET_BYTES / 1_015);
    }

    #[test]
    fn large_entries_bound_the_next_reads_until_a_small_one_comes() {
        let mut s = ReadSizer::default();
        // One 10 MiB entry (the first, blocking read asks for 1): the next read asks for 1.
        assert!(s.observe(&[entry(10 << 20)]));
        assert_eq!(s.count(31), 1);
        assert!(s.observe(&[entry(10 << 20)]));
        assert_eq!(s.count(31), 1);
        // An empty read says nothing about sizes.
        assert!(!s.observe(&[]));
        assert_eq!(s.count(31), 1);
        // Entries of just over 1 MiB are read three at a time.
        assert!(!s.observe(&[entry(1 << 20)]));
        assert_eq!(s.count(31), 3);
        // Back to small ones: unbounded again.
        assert!(!s.observe(&[entry(100)]));
        assert_eq!(s.count(31), 31);
        // Never zero, whatever was asked.
        assert_eq!(s.count(0), 1);
    }

    #[test]
    fn a_deleted_entry_counts_as_small() {
        let mut s = ReadSizer::default();
        s.observe(&[entry(10 << 20)]);
        s.observe(&[RawEntry {
            id: "2-0".into(),
            fields: None,
        }]);
        assert_eq!(s.count(64), 64);
    }

    fn settlement(action: SettleAction, reply: Option<usize>) -> Settlement {
        Settlement {
            lane: Lane::Bulk,
            entry_id: "1-0".into(),
            action,
            reply: reply.map(|n| ReplyEntry {
                stream: "r".into(),
                fields: vec![("result", "x".repeat(n))],
            }),
            recovered: false,
            trace: None,
            record: None,
            lease: None,
        }
    }

    #[test]
    fn settlements_are_sized_by_what_they_carry() {
        let dead = settlement(
            SettleAction::Dead(vec![(b"payload".to_vec(), vec![0; 10 << 20])]),
            None,
        );
        assert_eq!(settlement_bytes(&dead), 3 + 7 + (10 << 20));
        let ok = settlement(SettleAction::Ok, Some(1000));
        assert_eq!(settlement_bytes(&ok), 3 + 6 + 1000);
        assert_eq!(settlement_bytes(&settlement(SettleAction::Skip, None)), 3);
        let retry = settlement(
            SettleAction::Retry {
                due_ms: 1,
                member: "m".repeat(50),
            },
            None,
        );
        assert_eq!(settlement_bytes(&retry), 53);
    }

    #[test]
    fn settle_batches_stop_at_the_count_or_the_byte_budget() {
        assert!(!settle_batch_full(1, 100, 512));
        assert!(settle_batch_full(512, 100, 512));
        assert!(settle_batch_full(1, SETTLE_BUDGET_BYTES, 512));
        assert!(settle_batch_full(1, 10 << 20, 512));
        assert!(!settle_batch_full(3, SETTLE_BUDGET_BYTES - 1, 512));
    }
}
