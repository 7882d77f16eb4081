//! The scheduler loop: every worker runs one for every schedule in `ts:schedules`
//! (why every worker and no leader: [`crate::schedule`]). It reads the definitions once a
//! second, plans each schedule's due ticks from the last claimed one ([`schedule::plan`],
//! pure), and claims them through the broker's one script; a tick another replica
//! claimed first is answered as taken, and the loop moves on from there.

use std::collections::HashMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::producer::Producer;
use crate::rdb::schedule::Tick;
use crate::schedule::{self, ScheduleDef, Spec};
use crate::task::now_ms;

/// How often definitions are read again (so `schedule set | remove` and other replicas'
/// config changes are followed within this).
pub(crate) const REFRESH: Duration = Duration::from_secs(1);

/// One schedule as this loop knows it.
struct Known {
    /// Its definition as stored (a change re-reads the claim state).
    json: String,
    def: ScheduleDef,
    spec: Spec,
    /// The last tick known claimed (or when the schedule was first seen).
    start: Option<u64>,
    /// The next tick after the planned ones.
    next: Option<u64>,
}

/// Writes the config's schedules (the config wins for the names it defines), then runs
/// until `stop` fires.
pub(crate) async fn run(producer: Producer, config: Vec<ScheduleDef>, stop: CancellationToken) {
    let broker = producer.broker();
    let own: Vec<(String, String)> = config
        .iter()
        .map(|d| {
            (
                d.name.clone(),
                serde_json::to_string(d).expect("a definition serializes"),
            )
        })
        .collect();
    let mut attempt = 0u32;
    while let Err(e) = broker.put_schedules(&own).await {
        attempt += 1;
        tracing::warn!(error = %e, "scheduler: cannot write the configured schedules yet, retrying");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(crate::rdb::reconnect_delay(attempt)) => {}
        }
    }
    if !own.is_empty() {
        tracing::info!(schedules = ?config.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), "scheduler: configured schedules written");
    }
    let mut known: HashMap<String, Known> = HashMap::new();
    // Definitions already reported as invalid (name → text), so each is logged once.
    let mut refused: HashMap<String, String> = HashMap::new();
    let mut last_refresh: Option<std::time::Instant> = None;
    while !stop.is_cancelled() {
        if last_refresh.is_none_or(|t| t.elapsed() >= REFRESH) {
            match broker.schedule_defs().await {
                Ok(defs) => {
                    reconcile(&mut known, &mut refused, defs);
                    last_refresh = Some(std::time::Instant::now());
                }
                Err(e) => {
                    metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => "schedules").increment(1);
                    tracing::debug!(error = %e, "scheduler: cannot read schedules");
                }
            }
        }
        for k in known.values_mut() {
            if let Err(e) = step(&producer, k).await {
                metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => "schedule_tick").increment(1);
                tracing::warn!(schedule = %k.def.name, queue = %k.def.queue, error = %e, "scheduler: cannot claim a tick yet, retrying");
            }
        }
        let now = now_ms();
        let until_next = known
            .values()
            .filter_map(|k| k.next)
            .min()
            .map(|n| Duration::from_millis(n.saturating_sub(now)))
            .unwrap_or(REFRESH);
        let until_refresh =
            last_refresh.map_or(Duration::ZERO, |t| REFRESH.saturating_sub(t.elapsed()));
        let sleep = until_next.min(until_refresh).max(Duration::from_millis(1));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Follows the stored definitions: new and changed ones are (re)compiled, removed ones
/// dropped, invalid ones logged once with every problem.
fn reconcile(
    known: &mut HashMap<String, Known>,
    refused: &mut HashMap<String, String>,
    defs: HashMap<String, String>,
) {
    known.retain(|name, _| defs.contains_key(name));
    for (name, json) in defs {
        if known.get(&name).is_some_and(|k| k.json == json) || refused.get(&name) == Some(&json) {
            continue;
        }
        let parsed: Result<ScheduleDef, Vec<(&str, String)>> =
            serde_json::from_str::<ScheduleDef>(&json)
                .map_err(|e| vec![("definition", e.to_string())])
                .and_then(|d| {
                    if d.name == name {
                        Ok(d)
                    } else {
                        Err(vec![(
                            "name",
                            format!("{:?} is stored under {name:?}", d.name),
                        )])
                    }
                });
        match parsed.and_then(|d| d.compile().map(|s| (d, s))) {
            Ok((def, spec)) => {
                refused.remove(&name);
                tracing::info!(schedule = %name, queue = %def.queue, task_type = %def.task_type, "scheduler: following schedule");
                known.insert(
                    name,
                    Known {
                        json,
                        def,
                        spec,
                        start: None,
                        next: None,
                    },
                );
            }
            Err(problems) => {
                known.remove(&name);
                let text: Vec<String> = problems.iter().map(|(k, r)| format!("{k}: {r}")).collect();
                tracing::error!(schedule = %name, problems = %text.join("; "), "scheduler: schedule refused (fix it with `taskstream schedule set` or in [[schedules]])");
                refused.insert(name, json);
            }
        }
    }
}

/// Claims every tick of `k` that is due now.
async fn step(producer: &Producer, k: &mut Known) -> crate::error::Result<()> {
    let now = now_ms();
    if k.next.is_some_and(|n| n > now) && k.start.is_some() {
        return Ok(());
    }
    let start = match k.start {
        Some(s) => s,
        None => {
            let key = producer.tick_task(&k.def, 0).await?.state_key;
            let state = producer.broker().schedule_state(&key, Some(now)).await?;
            let s = state.start().unwrap_or(now);
            k.start = Some(s);
            s
        }
    };
    let plan = schedule::plan(&k.spec, &k.def, start, now);
    let name = k.def.name.as_str();
    for (tick, skipped) in plan.fire {
        if k.start.is_some_and(|s| tick <= s) {
            continue;
        }
        let t = producer.tick_task(&k.def, tick).await?;
        let outcome = producer
            .broker()
            .claim_tick(
                &t.state_key,
                &t.stream,
                tick,
                now_ms(),
                skipped,
                Some((&t.task_id, &t.fields)),
            )
            .await?;
        record(name, &outcome, skipped);
        match outcome {
            Tick::Taken(last) => k.start = Some(last.max(tick)),
            Tick::Fired(entry) => {
                let late = now_ms().saturating_sub(tick);
                if late > schedule::LATE_MS {
                    metrics::counter!(m::SCHEDULE_LATE_TICKS_TOTAL, "schedule" => name.to_string())
                        .increment(1);
                }
                tracing::info!(schedule = %name, queue = %k.def.queue, task_id = %t.task_id, entry = %entry, late_ms = late, "scheduler: tick fired");
                if let Some(s) = t.span {
                    s.end(std::time::SystemTime::now(), None);
                }
                k.start = Some(tick);
            }
            Tick::Paused | Tick::Skipped => k.start = Some(tick),
        }
    }
    if let Some((tick, skipped)) = plan.skip_through {
        if k.start.is_none_or(|s| tick > s) {
            let t = producer.tick_task(&k.def, tick).await?;
            let outcome = producer
                .broker()
                .claim_tick(&t.state_key, &t.stream, tick, now_ms(), skipped - 1, None)
                .await?;
            record(name, &outcome, skipped - 1);
            k.start = Some(match outcome {
                Tick::Taken(last) => last.max(tick),
                _ => tick,
            });
        }
    }
    k.next = plan.next;
    if let Some(n) = k.next {
        metrics::gauge!(m::SCHEDULE_NEXT_FIRE, "schedule" => name.to_string())
            .set(n as f64 / 1000.0);
    }
    Ok(())
}

/// Counts what this process claimed.
fn record(name: &str, outcome: &Tick, skipped: u64) {
    let ticks = |outcome: &'static str, n: u64| {
        if n > 0 {
            metrics::counter!(m::SCHEDULE_TICKS_TOTAL, "schedule" => name.to_string(), "outcome" => outcome).increment(n);
        }
    };
    if matches!(outcome, Tick::Taken(_)) {
        return;
    }
    ticks("skipped", skipped);
    match outcome {
        Tick::Fired(_) => ticks("fired", 1),
        Tick::Paused => ticks("paused", 1),
        Tick::Skipped => ticks("skipped", 1),
        Tick::Taken(_) => {}
    }
}
