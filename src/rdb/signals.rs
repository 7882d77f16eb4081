//! Operator signals on the wire: writing one to `ts:{q}:signals` (with the pause flag in
//! the same MULTI, so `stats` and the workers never disagree about a pause that half
//! happened) and reading them back as typed [`SignalEntry`]s.

use redis::{Pipeline, Value};

use super::{parse, Broker};
use crate::error::Result;
use crate::keys::QueueKeys;
use crate::signal::{Signal, SignalEntry, SIGNALS_MAXLEN};

impl Broker {
    /// Appends `signal` to `queue`'s signals stream (capped at about
    /// [`SIGNALS_MAXLEN`]); a pause sets `ts:{q}:paused` to `at_ms` and a resume deletes
    /// it in the same transaction. A partitioned queue gets it in every partition (each
    /// partition's readers follow their own). Returns the entry id in partition 0.
    pub(crate) async fn send_signal(
        &self,
        queue: &str,
        signal: &Signal,
        at_ms: u64,
    ) -> Result<String> {
        let n = self.partitions(&QueueKeys::new(queue)).await?;
        let mut first = String::new();
        for p in (0..n).rev() {
            first = self
                .send_signal_to(&QueueKeys::partition(queue, p), signal, at_ms)
                .await?;
        }
        Ok(first)
    }

    /// [`Broker::send_signal`] to one partition.
    async fn send_signal_to(&self, k: &QueueKeys, signal: &Signal, at_ms: u64) -> Result<String> {
        let mut p = Pipeline::new();
        p.atomic();
        match signal {
            Signal::Pause => {
                p.cmd("SET").arg(&k.paused).arg(at_ms).ignore();
            }
            Signal::Resume => {
                p.cmd("DEL").arg(&k.paused).ignore();
            }
            Signal::Cancel { .. } => {}
        }
        let c = p
            .cmd("XADD")
            .arg(&k.signals)
            .arg("MAXLEN")
            .arg("~")
            .arg(SIGNALS_MAXLEN)
            .arg("*");
        for (f, v) in signal.encode(at_ms) {
            c.arg(f).arg(v);
        }
        let (id,): (String,) = self.pipe(&p).await?;
        Ok(id)
    }

    /// Up to `count` signals of `queue` after entry id `after` (`0` for all), oldest
    /// first, each decoded (or with the reason it could not be).
    pub(crate) async fn read_signals(
        &self,
        queue: &str,
        after: &str,
        count: usize,
    ) -> Result<Vec<SignalEntry>> {
        let k = QueueKeys::new(queue);
        let v: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(&k.signals)
            .arg(after)
            .query_async(&mut self.c())
            .await?;
        Ok(parse::read_reply(v)
            .into_iter()
            .next()
            .map(|b| b.entries)
            .unwrap_or_default()
            .into_iter()
            .map(|e| SignalEntry::from_fields(e.id, e.fields.as_deref()))
            .collect())
    }
}
