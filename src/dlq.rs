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
