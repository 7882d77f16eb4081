//! The reply loop: reads the replies of step and compensation tasks from one reply
//! stream (`ts:sagas:replies` on one server; on a cluster, one per queue partition, see
//! [`super::streams`]) through the consumer group `orchestrator`, applies them (sagas
//! concurrently, each saga's replies in order) and acknowledges the ones applied or found
//! stale. A reply that hit a Redis error stays pending and is claimed again later
//! ([`super::claims`]).
//!
//! The blocking read goes through the same [`GroupReader`] the worker's lane readers use
//! (an exclusive connection, discarded after a failed read, the group recreated when it
//! is missing, backoff). Replies are decoded by [`Reply::decode`], the
//! type the worker encodes them with, never by field-name literals here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{log_outcome, Ctx};
use crate::rdb::{GroupReader, RawEntry, ReaderPool};
use crate::reply::{Outcome as ReplyOutcome, Reply};
use crate::saga::apply;
use crate::saga::decide::Trigger;
use crate::saga::fsm::Event;
use crate::saga::keys;
use crate::saga::record::{Correlation, Side};

/// Reads replies until `stop` fires. A read in flight when `stop` fires completes (at
/// most `block_ms` later) and its replies are applied, so shutdown leaves nothing pending
/// under this consumer.
pub(super) async fn run(ctx: Arc<Ctx>, pool: ReaderPool, replies: String, stop: CancellationToken) {
    let block = Duration::from_millis(ctx.cfg.block_ms);
    let mut reader = GroupReader::new(
        pool,
        replies.clone(),
        keys::GROUP,
        ctx.consumer.clone(),
        format!("saga replies {replies}"),
        "saga_replies",
    );
    while !stop.is_cancelled() {
        if let Some(entries) = reader
            .read_new(ctx.cfg.read_count, Some(block), &stop)
            .await
        {
            if !entries.is_empty() {
                apply_replies(&ctx, &replies, entries).await;
            }
        }
    }
}

/// Maps a reply entry to its saga and trigger.
fn parse_reply(e: RawEntry) -> Result<(String, Trigger), String> {
    let fields = e.fields.ok_or("the entry was deleted")?;
    let reply = Reply::decode(fields).map_err(|e| e.to_string())?;
    let corr_text = reply.correlation.as_deref().ok_or("no correlation field")?;
    let corr = Correlation::parse(corr_text)
        .ok_or_else(|| format!("correlation {corr_text:?} is not ID|STEP|action-or-comp|REV"))?;
    let error = || {
        reply
            .error
            .clone()
            .unwrap_or_else(|| "no error given".into())
    };
    let step = corr.step;
    let event = match (corr.side, reply.outcome) {
        (Side::Action, ReplyOutcome::Succeeded) => {
            let raw = reply.result.as_deref().unwrap_or("null");
            let output = serde_json::from_str(raw)
                .unwrap_or_else(|_| serde_json::Value::String(raw.to_string()));
            Event::StepSucceeded { step, output }
        }
        (Side::Action, ReplyOutcome::Failed) => Event::StepFailed {
            step,
            error: error(),
        },
        (Side::Compensation, ReplyOutcome::Succeeded) => Event::CompensationSucceeded { step },
        (Side::Compensation, ReplyOutcome::Failed) => Event::CompensationFailed {
            step,
            error: error(),
        },
    };
    Ok((
        corr.id,
        Trigger::Reply {
            event,
            rev: corr.rev,
            attempt: reply.attempt,
        },
    ))
}

/// Applies a batch of replies read from `replies` (sagas concurrently, each saga's in
/// order), then acknowledges the ones applied, found stale or malformed. A reply that hit
/// a Redis error stays pending (with the later ones of its saga) and is claimed again
/// later.
pub(super) async fn apply_replies(ctx: &Arc<Ctx>, replies: &str, entries: Vec<RawEntry>) {
    let mut ack = Vec::new();
    let mut order: Vec<String> = Vec::new();
    let mut by_saga: HashMap<String, Vec<(String, Trigger)>> = HashMap::new();
    for e in entries {
        let entry_id = e.id.clone();
        match parse_reply(e) {
            Ok((id, trig)) => {
                by_saga
                    .entry(id.clone())
                    .or_insert_with(|| {
                        order.push(id);
                        Vec::new()
                    })
                    .push((entry_id, trig));
            }
            Err(reason) => {
                tracing::warn!(entry_id = %entry_id, reason = %reason, "malformed saga reply dropped");
                ack.push(entry_id);
            }
        }
    }
    let mut set = JoinSet::new();
    for id in order {
        let items = by_saga.remove(&id).unwrap_or_default();
        let ctx = ctx.clone();
        let span = tracing::info_span!("saga", saga_id = %id);
        set.spawn(
            async move {
                let mut done = Vec::new();
                for (entry_id, trig) in items {
                    match apply::advance(&ctx.broker, &ctx.routes, &ctx.defs, &id, &trig).await {
                        Ok(o) => {
                            log_outcome(&o, "reply");
                            done.push(entry_id);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, entry_id = %entry_id, "saga reply not applied; it stays pending and will be retried");
                            break;
                        }
                    }
                }
                done
            }
            .instrument(span),
        );
    }
    while let Some(r) = set.join_next().await {
        match r {
            Ok(done) => ack.extend(done),
            Err(e) => {
                tracing::error!(error = %e, "applying saga replies panicked; they stay pending")
            }
        }
    }
    if let Err(e) = ctx.broker.saga_ack_replies(replies, &ack).await {
        // Applied but not acknowledged: they are claimed again later and found stale.
        tracing::warn!(error = %e, replies = ack.len(), "acknowledging saga replies failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply entry as the worker writes it, with `fields` added or replacing.
    fn entry(fields: &[(&str, &str)]) -> RawEntry {
        let mut all: Vec<(&str, &str)> = vec![
            ("task_id", "t"),
            ("type", "t.step"),
            ("queue", "default"),
            ("attempt", "1"),
            ("at", "5"),
        ];
        for (k, v) in fields {
            all.retain(|(n, _)| n != k);
            all.push((k, v));
        }
        RawEntry {
            id: "1-0".into(),
            fields: Some(
                all.iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                    .collect(),
            ),
        }
    }

    #[test]
    fn replies_map_to_events() {
        let (id, t) = parse_reply(entry(&[
            ("correlation", "S|2|action|7"),
            ("outcome", "succeeded"),
            ("attempt", "2"),
            ("result", r#"{"a":1}"#),
        ]))
        .unwrap();
        assert_eq!(id, "S");
        assert_eq!(
            t,
            Trigger::Reply {
                event: Event::StepSucceeded {
                    step: 2,
                    output: serde_json::json!({"a": 1})
                },
                rev: 7,
                attempt: 2
            }
        );
        let (_, t) = parse_reply(entry(&[
            ("correlation", "S|0|comp|3"),
            ("outcome", "failed"),
            ("error", "disk full"),
        ]))
        .unwrap();
        assert_eq!(
            t,
            Trigger::Reply {
                event: Event::CompensationFailed {
                    step: 0,
                    error: "disk full".into()
                },
                rev: 3,
                attempt: 1
            }
        );
        assert!(parse_reply(entry(&[("outcome", "failed")])).is_err());
        assert!(parse_reply(entry(&[("correlation", "S|0|comp|3"), ("outcome", "meh")])).is_err());
        assert!(parse_reply(RawEntry {
            id: "1-0".into(),
            fields: None
        })
        .is_err());
    }

    #[test]
    fn a_result_that_is_not_json_is_kept_as_text() {
        let (_, t) = parse_reply(entry(&[
            ("correlation", "S|0|action|1"),
            ("outcome", "succeeded"),
            ("result", "plain words"),
        ]))
        .unwrap();
        assert!(matches!(
            t,
            Trigger::Reply { event: Event::StepSucceeded { output: serde_json::Value::String(s), .. }, .. } if s == "plain words"
        ));
    }
}
