//! `/api/v1/sagas…`: start, list by state, show with history, abort.

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{Body, Query};
use super::{limit, ApiState, Caller, PathParams, Problem};
use crate::saga::ops::{self, SagaSummary, SagaView};

/// A page of sagas.
#[derive(Debug, Serialize)]
pub(crate) struct SagaPage {
    /// Newest state change first.
    sagas: Vec<SagaSummary>,
    /// The cursor of the next page, if there may be one.
    next_cursor: Option<String>,
}

/// `GET /sagas?state=…`: sagas in a state (`active` for those not ended), those that
/// entered it most recently first.
pub(crate) async fn list(
    State(state): State<ApiState>,
    _caller: Caller,
    uri: Uri,
) -> Result<Json<SagaPage>, Problem> {
    let q = Query::parse(uri.query(), &["state", "cursor", "limit"])?;
    let limit = limit(&q)?;
    Ok(Json(
        page(&state, q.str("state"), limit, q.str("cursor")).await?,
    ))
}

/// Sagas in `saga_state` (see [`ops::list_page`]), a page (also the MCP tool `saga_list`).
pub(crate) async fn page(
    state: &ApiState,
    saga_state: Option<&str>,
    limit: usize,
    cursor: Option<&str>,
) -> Result<SagaPage, Problem> {
    let mut conn = state.backend()?.conn.clone();
    let (sagas, next_cursor) = ops::list_page(&mut conn, saga_state, limit, cursor).await?;
    Ok(SagaPage { sagas, next_cursor })
}

/// `GET /sagas/{saga_id}`: state, steps, timings, errors and history.
pub(crate) async fn show(
    State(state): State<ApiState>,
    _caller: Caller,
    PathParams(id): PathParams<String>,
) -> Result<Json<SagaView>, Problem> {
    let mut conn = state.backend()?.conn.clone();
    Ok(Json(ops::show(&mut conn, &id).await?))
}

/// The body of a start.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartIn {
    /// Definition name (`[[sagas]] name`).
    saga: String,
    /// Input every step receives; `{}` when absent.
    #[serde(default)]
    input: Option<serde_json::Value>,
    /// W3C trace context the saga continues (else the request's `traceparent` header,
    /// else a trace of its own whose id is the saga id).
    #[serde(default)]
    traceparent: Option<String>,
}

/// A started saga.
#[derive(Debug, Serialize)]
pub(crate) struct Started {
    /// Its id.
    saga_id: String,
}

/// `POST /sagas`: creates the saga and enqueues its first step in one atomic step.
pub(crate) async fn start(
    State(state): State<ApiState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    Body(body): Body<StartIn>,
) -> Result<(StatusCode, Json<Started>), Problem> {
    caller.require_admin("start sagas")?;
    if let Some(tp) = &body.traceparent {
        if !super::tasks::is_traceparent(tp) {
            return Err(Problem::bad_request(format!(
                "traceparent {tp:?} is not a W3C trace context (00-<32 hex>-<16 hex>-<2 hex>)"
            )));
        }
    }
    let parent = body
        .traceparent
        .or_else(|| super::tasks::header_traceparent(&headers));
    let mut conn = state.backend()?.conn.clone();
    let input = body.input.unwrap_or_else(|| serde_json::json!({}));
    let saga_id =
        ops::start_traced(&mut conn, &state.defs, &body.saga, input, parent.as_deref()).await?;
    tracing::info!(token = %caller.name, saga_id = %saga_id, saga = %body.saga, "api: saga started");
    Ok((StatusCode::CREATED, Json(Started { saga_id })))
}

/// The body of an abort.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct AbortIn {
    /// Why (kept in the saga's history); "aborted through the API" when absent.
    #[serde(default)]
    reason: Option<String>,
}

/// What an abort did.
#[derive(Debug, Serialize)]
pub(crate) struct Aborted {
    /// The saga.
    saga_id: String,
    /// Its state afterwards (`compensating` or `rolled_back`).
    state: String,
}

/// `POST /sagas/{saga_id}/abort`: 409 when the saga already ended.
pub(crate) async fn abort(
    State(state): State<ApiState>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    Body(body): Body<AbortIn>,
) -> Result<Json<Aborted>, Problem> {
    caller.require_admin("abort sagas")?;
    let reason = body
        .reason
        .unwrap_or_else(|| format!("aborted through the API by {}", caller.name));
    if reason.len() > 1024 {
        return Err(Problem::bad_request("reason is longer than 1024 bytes"));
    }
    let mut conn = state.backend()?.conn.clone();
    let to = ops::abort(&mut conn, &state.defs, &id, &reason).await?;
    tracing::info!(token = %caller.name, saga_id = %id, state = %to, "api: saga aborted");
    Ok(Json(Aborted {
        saga_id: id,
        state: to,
    }))
}
