//! `/api/v1/queues/{queue}/dead-letters…`: search with filters, and bulk requeue or
//! delete of everything a filter matches (with a dry-run count).

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use serde::Deserialize;

use super::extract::{whole, Body, Obj, Query};
use super::{known_queue, limit, ApiState, Caller, PathParams, Problem};
use crate::dlq::{BulkAction, BulkOutcome, DeadLetterFilter, SearchCursor, SearchPage};

/// Query parameters of a search: the filter's fields, `cursor` and `limit`.
const PARAMS: &[&str] = &[
    "type", "reason", "error", "task_id", "since_ms", "until_ms", "cursor", "limit",
];

fn filter_of(q: &Query) -> Result<DeadLetterFilter, Problem> {
    let f = DeadLetterFilter {
        task_type: q.nonempty("type").map(String::from),
        reason: q.nonempty("reason").map(String::from),
        error: q.nonempty("error").map(String::from),
        task_id: q.nonempty("task_id").map(String::from),
        since_ms: q.u64_in("since_ms", 0..=u64::MAX / 2)?,
        until_ms: q.u64_in("until_ms", 0..=u64::MAX / 2)?,
    };
    check(&f)?;
    Ok(f)
}

pub(crate) fn check(f: &DeadLetterFilter) -> Result<(), Problem> {
    // since_ms after until_ms is an empty range, not an error.
    for (name, v) in [("since_ms", f.since_ms), ("until_ms", f.until_ms)] {
        if v.is_some_and(|v| v > i64::MAX as u64) {
            return Err(Problem::bad_request(format!(
                "{name} is above {} (Unix ms)",
                i64::MAX
            )));
        }
    }
    for (name, v) in [
        ("type", &f.task_type),
        ("reason", &f.reason),
        ("error", &f.error),
        ("task_id", &f.task_id),
    ] {
        if v.as_ref().is_some_and(|v| v.chars().count() > 1024) {
            return Err(Problem::bad_request(format!(
                "{name} is longer than 1024 characters"
            )));
        }
    }
    Ok(())
}

/// `GET /queues/{queue}/dead-letters`: the letters matching every given filter, a page at
/// a time (see [`SearchPage`]).
pub(crate) async fn search(
    State(state): State<ApiState>,
    _caller: Caller,
    PathParams(queue): PathParams<String>,
    uri: Uri,
) -> Result<Json<SearchPage>, Problem> {
    let q = Query::parse(uri.query(), PARAMS)?;
    let limit = limit(&q)?;
    let filter = filter_of(&q)?;
    Ok(Json(
        search_page(&state, &queue, &filter, q.str("cursor"), limit).await?,
    ))
}

/// A page of the search of `queue`'s dead letters by `filter` (checked) from `cursor`
/// (also the MCP tool `dead_letters_search`).
pub(crate) async fn search_page(
    state: &ApiState,
    queue: &str,
    filter: &DeadLetterFilter,
    cursor: Option<&str>,
    limit: usize,
) -> Result<SearchPage, Problem> {
    let cursor = cursor
        .map(SearchCursor::parse)
        .transpose()
        .map_err(Problem::bad_request)?;
    known_queue(state, queue).await?;
    Ok(state
        .backend()?
        .insp
        .search_dead_letters(queue, filter, cursor.as_ref(), limit)
        .await?)
}

/// A filter in a JSON body (numbers may be written as whole floats; null is absent).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct FilterIn {
    #[serde(default, rename = "type")]
    task_type: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    task_id: Option<String>,
    #[serde(default, deserialize_with = "whole::opt_u64")]
    since_ms: Option<u64>,
    #[serde(default, deserialize_with = "whole::opt_u64")]
    until_ms: Option<u64>,
}

impl From<FilterIn> for DeadLetterFilter {
    fn from(f: FilterIn) -> Self {
        let some = |s: Option<String>| s.filter(|s| !s.is_empty());
        DeadLetterFilter {
            task_type: some(f.task_type),
            reason: some(f.reason),
            error: some(f.error),
            task_id: some(f.task_id),
            since_ms: f.since_ms,
            until_ms: f.until_ms,
        }
    }
}

/// The body of a bulk action.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BulkIn {
    /// Which letters (every condition must hold; `{}` matches all).
    #[serde(default)]
    filter: Option<Obj<FilterIn>>,
    /// Only count what would be done.
    #[serde(default)]
    dry_run: bool,
}

async fn bulk(
    state: ApiState,
    caller: Caller,
    queue: String,
    body: BulkIn,
    action: BulkAction,
) -> Result<Json<BulkOutcome>, Problem> {
    let verb = match action {
        BulkAction::Requeue => "requeue",
        BulkAction::Delete => "delete",
    };
    if !body.dry_run {
        caller.require_admin(&format!("{verb} dead letters (a dry run is allowed)"))?;
    }
    let filter: DeadLetterFilter = body.filter.map(|f| f.0).unwrap_or_default().into();
    check(&filter)?;
    known_queue(&state, &queue).await?;
    let out = state
        .backend()?
        .insp
        .bulk_dead_letters(&queue, &filter, action, body.dry_run)
        .await?;
    if !body.dry_run {
        tracing::info!(token = %caller.name, queue = %queue, action = verb, filter = ?filter, matched = out.matched, applied = out.applied, "api: dead letters {verb}d");
    }
    Ok(Json(out))
}

/// `POST /queues/{queue}/dead-letters/requeue`.
pub(crate) async fn requeue(
    State(state): State<ApiState>,
    caller: Caller,
    PathParams(queue): PathParams<String>,
    Body(body): Body<BulkIn>,
) -> Result<Json<BulkOutcome>, Problem> {
    bulk(state, caller, queue, body, BulkAction::Requeue).await
}

/// `POST /queues/{queue}/dead-letters/delete`.
pub(crate) async fn delete(
    State(state): State<ApiState>,
    caller: Caller,
    PathParams(queue): PathParams<String>,
    Body(body): Body<BulkIn>,
) -> Result<Json<BulkOutcome>, Problem> {
    bulk(state, caller, queue, body, BulkAction::Delete).await
}
