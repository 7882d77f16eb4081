//! `/api/v1/schedules…`: periodic tasks — list with next tick and counts, show, pause,
//! resume, trigger (the same [`crate::inspect::Inspector`] operations as
//! `taskstream schedule`). Definitions are set with the CLI or `[[schedules]]`.

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::Json;
use serde::Serialize;

use super::extract::Query;
use super::{limit, ApiState, Caller, PathParams, Problem};
use crate::schedule::ScheduleView;

/// A page of schedules.
#[derive(Debug, Serialize)]
pub(crate) struct SchedulePage {
    /// The schedules, by name.
    pub(crate) schedules: Vec<ScheduleView>,
    /// The cursor of the next page (the last name of this one), if any.
    pub(crate) next_cursor: Option<String>,
}

/// What a pause or resume did.
#[derive(Debug, Serialize)]
pub(crate) struct PauseState {
    /// The schedule.
    name: String,
    /// Paused now.
    paused: bool,
    /// False when it already was in that state.
    changed: bool,
}

/// What a trigger enqueued.
#[derive(Debug, Serialize)]
pub(crate) struct Triggered {
    /// The schedule.
    name: String,
    /// The task it enqueued (`<name>@manual-<ms>`).
    task_id: String,
}

fn check_name(name: &str) -> Result<(), Problem> {
    let ok = !name.is_empty()
        && name.len() <= crate::schedule::MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Problem::bad_request(format!(
            "schedule name {name:?}: use 1 to {} letters, digits, '_', '-' or '.'",
            crate::schedule::MAX_NAME
        )))
    }
}

fn unknown(name: &str) -> Problem {
    Problem::not_found(format!(
        "no schedule named {name:?}: GET /api/v1/schedules lists them"
    ))
}

/// `GET /schedules`: every schedule with its next tick, last fire and counts, by name.
pub(crate) async fn list(
    State(state): State<ApiState>,
    _caller: Caller,
    uri: Uri,
) -> Result<Json<SchedulePage>, Problem> {
    let q = Query::parse(uri.query(), &["cursor", "limit"])?;
    let limit = limit(&q)?;
    let after = q.str("cursor");
    let mut all: Vec<ScheduleView> = state
        .backend()?
        .insp
        .schedules()
        .await?
        .into_iter()
        .filter(|s| after.is_none_or(|a| s.name.as_str() > a))
        .take(limit + 1)
        .collect();
    let more = all.len() > limit;
    all.truncate(limit);
    Ok(Json(SchedulePage {
        next_cursor: if more {
            all.last().map(|s| s.name.clone())
        } else {
            None
        },
        schedules: all,
    }))
}

/// `GET /schedules/{name}`.
pub(crate) async fn show(
    State(state): State<ApiState>,
    _caller: Caller,
    PathParams(name): PathParams<String>,
) -> Result<Json<ScheduleView>, Problem> {
    check_name(&name)?;
    let v = state.backend()?.insp.schedule(&name).await?;
    v.map(Json).ok_or_else(|| unknown(&name))
}

async fn set_paused(
    state: ApiState,
    caller: Caller,
    name: String,
    paused: bool,
) -> Result<Json<PauseState>, Problem> {
    let action = if paused { "pause" } else { "resume" };
    caller.require_admin(&format!("{action} a schedule"))?;
    check_name(&name)?;
    let changed = state
        .backend()?
        .insp
        .pause_schedule(&name, paused)
        .await?
        .ok_or_else(|| unknown(&name))?;
    tracing::info!(token = %caller.name, schedule = %name, action, changed, "api: schedule {action}d");
    Ok(Json(PauseState {
        name,
        paused,
        changed,
    }))
}

/// `POST /schedules/{name}/pause`: no tick fires until resumed; the ticks meanwhile
/// are not replayed.
pub(crate) async fn pause(
    State(state): State<ApiState>,
    caller: Caller,
    PathParams(name): PathParams<String>,
) -> Result<Json<PauseState>, Problem> {
    set_paused(state, caller, name, true).await
}

/// `POST /schedules/{name}/resume`.
pub(crate) async fn resume(
    State(state): State<ApiState>,
    caller: Caller,
    PathParams(name): PathParams<String>,
) -> Result<Json<PauseState>, Problem> {
    set_paused(state, caller, name, false).await
}

/// `POST /schedules/{name}/trigger`: enqueue the schedule's task now.
pub(crate) async fn trigger(
    State(state): State<ApiState>,
    caller: Caller,
    PathParams(name): PathParams<String>,
) -> Result<(StatusCode, Json<Triggered>), Problem> {
    caller.require_admin("trigger a schedule")?;
    check_name(&name)?;
    let e = state
        .backend()?
        .insp
        .trigger_schedule(&name)
        .await?
        .ok_or_else(|| unknown(&name))?;
    tracing::info!(token = %caller.name, schedule = %name, task_id = %e.task_id, "api: schedule triggered");
    Ok((
        StatusCode::ACCEPTED,
        Json(Triggered {
            name,
            task_id: e.task_id,
        }),
    ))
}
