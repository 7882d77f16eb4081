//! The control plane's HTTP API (`taskstream serve`): `/api/v1/…` over the same library
//! operations the CLI uses ([`crate::inspect::Inspector`], [`crate::producer::Producer`],
//! [`crate::saga::ops`]), so a queue paused from the API, the CLI or the dashboard
//! ([`crate::dashboard`], served at `/`) is paused the same way, and behaviour cannot
//! drift between them (issue 12). The MCP server ([`crate::mcp`], `/mcp`) calls these
//! handlers' functions too.
//!
//! One concept per file: [`auth`] (bearer tokens), [`problem`] (RFC 9457 errors),
//! [`extract`] (bodies and query strings that fail as problems), and one file of handlers
//! per resource: `queues`, `tasks`, `dead_letters`, `sagas`. The OpenAPI 3.1 document
//! (`openapi.json`, served at `/api/v1/openapi.json`) is written by hand beside them and
//! checked against the router by the tests and by a schema-driven fuzzer in CI.
//!
//! Choices a user would otherwise have to guess:
//! - **Redis not reachable yet:** the server listens at once and answers 503 problems
//!   (and `/ready` says why) until the first connection succeeds; it retries with backoff.
//! - **Pagination** is by opaque cursor everywhere a list can grow (queues, workers, dead
//!   letters, sagas); `limit` is capped (100 by default, 1,000 at most), never unbounded.
//! - **A page can be short:** a dead-letter search looks at no more than
//!   [`crate::dlq::SEARCH_BUDGET`] letters per request, so one request never holds Redis
//!   or the server for long; follow `next_cursor` until it is `null`.
//! - **Unknown queues** (in no worker's or producer's registry and not configured) are a
//!   404, for reads and enqueues alike: a typo must not create a queue nobody serves.
//! - **Mutations** (enqueue, pause, resume, cancel, requeue, delete, saga start and abort)
//!   need an admin token and are logged with the token's name.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::inspect::Inspector;
use crate::producer::Producer;
use crate::rdb::Conn;
use crate::saga::definition::SagaDef;

pub mod auth;
pub(crate) mod dead_letters;
pub(crate) mod extract;
pub mod problem;
pub(crate) mod queues;
pub(crate) mod sagas;
pub(crate) mod schedules;
pub(crate) mod tasks;

pub use auth::Caller;
pub(crate) use auth::Tokens;
pub use problem::Problem;

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Default page size.
pub(crate) const DEFAULT_LIMIT: u64 = 100;
/// Largest page size.
pub(crate) const MAX_LIMIT: u64 = 1000;

/// What the handlers need once Redis answered.
#[derive(Clone)]
pub(crate) struct Backend {
    /// Operator operations.
    pub(crate) insp: Inspector,
    /// Enqueues.
    pub(crate) producer: Producer,
    /// For the saga operations.
    pub(crate) conn: Conn,
}

/// The state every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    /// Set once the first connection to Redis succeeded.
    backend: Arc<OnceCell<Backend>>,
    /// Who may call.
    tokens: Arc<Tokens>,
    /// Saga definitions of the configuration (`POST /sagas`, abort).
    defs: Arc<Vec<SagaDef>>,
    /// Queues named in the configuration (known even before a worker registered them).
    configured: Arc<Vec<String>>,
    /// Largest request body.
    pub(crate) max_body_bytes: usize,
}

impl ApiState {
    /// The state of `cfg` with `tokens`, not connected yet (see [`connect_in_background`]).
    pub(crate) fn new(cfg: &Config, tokens: Tokens) -> Result<ApiState, String> {
        let defs = crate::saga::configured(cfg).map_err(|e| format!("saga definitions: {e}"))?;
        Ok(ApiState {
            backend: Arc::new(OnceCell::new()),
            tokens: Arc::new(tokens),
            defs: Arc::new(defs),
            configured: Arc::new(cfg.queues.iter().map(|q| q.name.clone()).collect()),
            max_body_bytes: cfg.api.max_body_bytes,
        })
    }

    /// The backend, or 503 while Redis has not answered yet.
    pub(crate) fn backend(&self) -> Result<&Backend, Problem> {
        self.backend.get().ok_or_else(|| {
            Problem::unavailable(
                "not connected to Redis yet: the server keeps retrying (see its log and /ready)",
            )
        })
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        state.tokens.caller(&parts.headers)
    }
}

/// Path parameters that fail as problem documents.
pub(crate) struct PathParams<T>(pub T);

impl<T> FromRequestParts<ApiState> for PathParams<T>
where
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|e| Problem::bad_request(e.body_text()))
    }
}

/// A queue name from a path, checked: 400 when invalid, 404 when unknown.
pub(crate) async fn known_queue(state: &ApiState, queue: &str) -> Result<(), Problem> {
    crate::keys::validate_queue_name(queue)
        .map_err(|e| Problem::bad_request(format!("queue name {queue:?}: {e}")))?;
    if state.configured.iter().any(|q| q == queue) {
        return Ok(());
    }
    let b = state.backend()?;
    let st = b.insp.queue_status(queue).await?;
    if st.registered {
        Ok(())
    } else {
        Err(Problem::not_found(format!(
            "queue {queue:?} is unknown: no worker or producer has used it and it is not configured (known queues: GET /api/v1/queues)"
        )))
    }
}

/// The `limit` query parameter: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
pub(crate) fn limit(q: &extract::Query) -> Result<usize, Problem> {
    Ok(q.u64_in("limit", 1..=MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT) as usize)
}

async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

/// The answer of `GET /whoami`.
#[derive(Debug, serde::Serialize)]
pub(crate) struct WhoAmI {
    /// The token's name (`anonymous` when the API has no tokens).
    name: String,
    /// `read` or `admin`.
    role: crate::config::ApiRole,
    /// True when the API has no tokens (every caller is the anonymous admin).
    open: bool,
}

/// `GET /whoami`: who the bearer token is and what it may do (the dashboard hides its
/// mutating buttons from a read token).
async fn whoami(
    axum::extract::State(state): axum::extract::State<ApiState>,
    caller: Caller,
) -> axum::Json<WhoAmI> {
    axum::Json(WhoAmI {
        name: caller.name,
        role: caller.role,
        open: state.tokens.is_open(),
    })
}

async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::not_found(format!(
        "no route {}: see /api/v1/openapi.json for the routes",
        uri.path()
    ))
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this route does not take that method: see /api/v1/openapi.json",
    )
}

/// The router of the API (exposed for tests and for embedding in another server).
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/openapi.json", get(openapi))
        .route("/whoami", get(whoami))
        .route("/queues", get(queues::list))
        .route("/queues/{queue}", get(queues::show))
        .route("/queues/{queue}/pause", post(queues::pause))
        .route("/queues/{queue}/resume", post(queues::resume))
        .route("/queues/{queue}/workers", get(queues::workers))
        .route("/queues/{queue}/tasks", post(tasks::enqueue))
        .route("/queues/{queue}/tasks/batch", post(tasks::enqueue_batch))
        .route("/queues/{queue}/tasks/{task_id}", get(tasks::show))
        .route(
            "/queues/{queue}/tasks/{task_id}/cancel",
            post(tasks::cancel),
        )
        .route(
            "/queues/{queue}/tasks/{task_id}/progress",
            post(tasks::progress),
        )
        .route("/queues/{queue}/dead-letters", get(dead_letters::search))
        .route(
            "/queues/{queue}/dead-letters/requeue",
            post(dead_letters::requeue),
        )
        .route(
            "/queues/{queue}/dead-letters/delete",
            post(dead_letters::delete),
        )
        .route("/sagas", get(sagas::list).post(sagas::start))
        .route("/sagas/{saga_id}", get(sagas::show))
        .route("/sagas/{saga_id}/abort", post(sagas::abort))
        .route("/schedules", get(schedules::list))
        .route("/schedules/{name}", get(schedules::show))
        .route("/schedules/{name}/pause", post(schedules::pause))
        .route("/schedules/{name}/resume", post(schedules::resume))
        .route("/schedules/{name}/trigger", post(schedules::trigger))
        .method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .nest("/api/v1", api)
        .merge(crate::runbooks::router())
        .merge(crate::mcp::http::router())
        .merge(crate::dashboard::router())
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(|| async {
                match crate::health::not_ready_message() {
                    None => (axum::http::StatusCode::OK, "ready\n".to_string()),
                    Some(text) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, text),
                }
            }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Connects to the Redis of `cfg` in the background, retrying with backoff until it
/// answers or `stop` fires; until then the state's [`ApiState::backend`] is a 503.
pub(crate) fn connect_in_background(state: &ApiState, cfg: &Config, stop: CancellationToken) {
    let redis = cfg.redis.clone();
    let producer_cfg = cfg.producer.clone();
    let backend = state.backend.clone();
    crate::health::set_redis_up(false);
    tokio::spawn(async move {
        let name = crate::rdb::ClientName::process(crate::rdb::Role::Api);
        match crate::rdb::connect(&redis, &stop, name).await {
            Ok(conn) => {
                let mut producer = Producer::new(conn.clone(), producer_cfg);
                if redis.wait_replicas > 0 {
                    producer = producer.wait_replicas(
                        redis.wait_replicas,
                        std::time::Duration::from_millis(redis.wait_timeout_ms),
                    );
                }
                let b = Backend {
                    insp: Inspector::new(crate::rdb::Broker::new(conn.clone())),
                    producer,
                    conn,
                };
                let _ = backend.set(b);
                crate::health::set_redis_up(true);
                // A control plane creates no consumer groups: the worker's readiness
                // condition on them is met by definition (without this, /ready said
                // "consumer groups not created yet" for ever).
                crate::health::set_groups_ready(true);
                tracing::info!("api connected to redis");
            }
            Err(e) => tracing::warn!(error = %e, "api gave up connecting to redis"),
        }
    });
}

/// A running API server.
pub struct Server {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// Ends when the server stopped.
    pub done: tokio::task::JoinHandle<()>,
}

/// Starts the API of `cfg` on `cfg.api.listen` (or `listen` if given) until `stop`:
/// reads the tokens (an error names the token and the fix), refuses open access on a
/// non-loopback address, listens, and connects to Redis in the background with backoff.
pub async fn serve(
    cfg: &Config,
    listen: Option<SocketAddr>,
    stop: CancellationToken,
) -> Result<Server, String> {
    let mut api = cfg.api.clone();
    if let Some(a) = listen {
        api.listen = a.to_string();
    }
    api.check_exposure()?;
    let tokens = Tokens::load(&api, |k| std::env::var(k).ok())?;
    let addr = api.addr()?;
    let mut state = ApiState::new(cfg, tokens)?;
    state.max_body_bytes = api.max_body_bytes;
    if state.tokens.is_open() {
        tracing::warn!(addr = %addr, "the API has no tokens: every caller on this loopback address is an admin");
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("api.listen {addr}: cannot listen: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("api.listen {addr}: {e}"))?;
    connect_in_background(&state, cfg, stop.clone());
    let http = crate::config::HttpConfig::default();
    let app = router(state);
    let done = tokio::spawn(crate::http::serve_connections(
        listener,
        app,
        stop,
        std::time::Duration::from_millis(http.header_read_timeout_ms),
        256,
    ));
    tracing::info!(addr = %local, "api listening (/ the dashboard, /api/v1, /mcp, /runbooks, /health, /ready)");
    Ok(Server { addr: local, done })
}
