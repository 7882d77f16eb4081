//! Dead-letter stream management: list, requeue, purge (`taskstream dlq …`).
//!
//! A dead letter keeps the task's original fields plus `dlq_reason`, `dlq_error`,
//! `dlq_attempts`, `dlq_at`, `dlq_entry_id`, `dlq_lane`, `dlq_group` and `dlq_consumer`.
//! Requeue moves it back to its lane's stream with `attempt = 1`, in one atomic script.

use redis::aio::ConnectionManager;
use serde::Serialize;

use crate::error::Result;
use crate::keys::QueueKeys;
use crate::rdb;
use crate::task::now_ms;

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
pub async fn list(
    conn: &mut ConnectionManager,
    queue: &str,
    count: usize,
) -> Result<Vec<DeadLetter>> {
    let k = QueueKeys::new(queue);
    let v: redis::Value = redis::cmd("XRANGE")
        .arg(&k.dlq)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(rdb::parse_entries(v)
        .into_iter()
        .map(|e| DeadLetter {
            dlq_id: e.id,
            fields: e
                .fields
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(&k).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    )
                })
                .collect(),
        })
        .collect())
}

/// Requeues one dead letter. Returns 1 when requeued, 0 when gone, -1 when it holds no task.
pub async fn requeue(conn: &mut ConnectionManager, queue: &str, dlq_id: &str) -> Result<i64> {
    let k = QueueKeys::new(queue);
    let mut p = redis::Pipeline::new();
    p.add_command(rdb::evalsha(
        rdb::ScriptId::Requeue,
        &[&k.dlq, &k.stream, &k.express],
        vec![
            dlq_id.as_bytes().to_vec(),
            now_ms().to_string().into_bytes(),
        ],
    ));
    let (r,): (i64,) = rdb::query_pipe(conn, &p).await?;
    Ok(r)
}

/// Requeues every dead letter present when called (in pages). Letters that die again while
/// this runs are left alone, so it always ends. Returns (requeued, skipped).
pub async fn requeue_all(conn: &mut ConnectionManager, queue: &str) -> Result<(u64, u64)> {
    let (mut ok, mut skipped) = (0, 0);
    let k = QueueKeys::new(queue);
    let last: redis::Value = redis::cmd("XREVRANGE")
        .arg(&k.dlq)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let Some(end) = rdb::parse_entries(last).pop().map(|e| e.id) else {
        return Ok((0, 0));
    };
    let mut start = "-".to_string();
    loop {
        let v: redis::Value = redis::cmd("XRANGE")
            .arg(&k.dlq)
            .arg(&start)
            .arg(&end)
            .arg("COUNT")
            .arg(500)
            .query_async(conn)
            .await?;
        let page = rdb::parse_entries(v);
        if page.is_empty() {
            break;
        }
        for e in &page {
            match requeue(conn, queue, &e.id).await? {
                1 => ok += 1,
                _ => skipped += 1,
            }
        }
        let last = &page.last().expect("non-empty").id;
        start = format!("({last}");
    }
    Ok((ok, skipped))
}

/// Deletes the dead-letter stream. Returns how many entries it held.
pub async fn purge(conn: &mut ConnectionManager, queue: &str) -> Result<u64> {
    let k = QueueKeys::new(queue);
    let mut p = redis::Pipeline::new();
    p.atomic()
        .cmd("XLEN")
        .arg(&k.dlq)
        .cmd("DEL")
        .arg(&k.dlq)
        .ignore();
    let (n,): (u64,) = p.query_async(conn).await?;
    Ok(n)
}
