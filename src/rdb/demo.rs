//! The demo's own Redis operations: wiping its queue before a run and writing entries
//! "from another language" with a raw `XADD`, to show how malformed and unknown entries
//! end in the dead-letter stream. Nothing else in the system needs them (`KEYS` in
//! particular is only acceptable on the demo's private or local server).

use super::Broker;
use crate::error::Result;
use crate::keys::QueueKeys;

impl Broker {
    /// Deletes every key of `queue` (`ts:{queue}:*`); returns how many there were.
    pub(crate) async fn wipe_queue(&self, queue: &str) -> Result<usize> {
        let mut c = self.c();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("ts:{{{queue}}}:*"))
            .query_async(&mut c)
            .await?;
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(&mut c)
                .await?;
        }
        Ok(keys.len())
    }

    /// `XADD ts:{queue}:stream * f v …` with exactly `fields`, as a producer in another
    /// language would write it (no validation on purpose). Returns the entry id.
    pub(crate) async fn xadd_raw(&self, queue: &str, fields: &[(&str, &str)]) -> Result<String> {
        let mut c = redis::cmd("XADD");
        c.arg(QueueKeys::new(queue).stream).arg("*");
        for (f, v) in fields {
            c.arg(*f).arg(*v);
        }
        Ok(c.query_async(&mut self.c()).await?)
    }
}
