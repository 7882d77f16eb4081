//! The Streamable HTTP transport: `POST /mcp` on `taskstream serve`, with the API's
//! bearer tokens (no or a bad token: 401 with `WWW-Authenticate`).
//!
//! A POST carries one JSON-RPC message or a batch; the answer is `application/json`, or
//! one `text/event-stream` event when the client's `Accept` allows only that. A POST of
//! notifications only is a 202 with no body; a body that is not JSON-RPC is a 400 with
//! the JSON-RPC error. This server sends no messages of its own, so it offers no SSE
//! stream: `GET /mcp` (and `DELETE`, session termination) is a 405, as the specification
//! allows.
//!
//! Sessions are stateless: `initialize` issues an `Mcp-Session-Id`, and afterwards any
//! well-formed id is accepted (and a request without one too), so any replica behind a
//! load balancer serves any session — every request carries its bearer token, which is
//! what decides what it may do; an id this server cannot have issued is a 404, which
//! tells a client to initialize again. An `MCP-Protocol-Version` header naming a version
//! this server does not speak is a 400, and a browser `Origin` that is neither the
//! request's host nor a loopback one is a 403 (DNS rebinding).

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use super::protocol::{self, Incoming};
use super::{Session, PROTOCOL_VERSIONS};
use crate::api::{ApiState, Caller, Problem};

/// The session header.
pub const SESSION_HEADER: &str = "mcp-session-id";
/// The protocol version header.
pub const VERSION_HEADER: &str = "mcp-protocol-version";

/// The `/mcp` route, merged into the API's router.
pub(crate) fn router() -> Router<ApiState> {
    Router::new().route("/mcp", post(handle).get(no_stream).delete(no_stream))
}

/// How the answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Json,
    Sse,
}

/// From the `Accept` header: JSON unless only an event stream is acceptable; `None`
/// when neither is.
fn mode(headers: &HeaderMap) -> Option<Mode> {
    let types: Vec<String> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|t| !t.is_empty())
        .collect();
    if types.is_empty()
        || types
            .iter()
            .any(|t| t == "application/json" || t == "application/*" || t == "*/*")
    {
        Some(Mode::Json)
    } else if types
        .iter()
        .any(|t| t == "text/event-stream" || t == "text/*")
    {
        Some(Mode::Sse)
    } else {
        None
    }
}

/// No `Origin` (not a browser), a loopback one, or the request's own host.
fn origin_allowed(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(authority) = origin.to_str().ok().and_then(|o| {
        o.strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"))
    }) else {
        return false;
    };
    let authority = authority.trim_end_matches('/');
    let host = if authority.starts_with('[') {
        authority.split(']').next().map(|h| format!("{h}]"))
    } else {
        authority.split(':').next().map(str::to_string)
    }
    .unwrap_or_default()
    .to_ascii_lowercase();
    if matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]") {
        return true;
    }
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.eq_ignore_ascii_case(authority))
}

/// A session id this server issues: 32 lower-case hex digits.
fn session_id_valid(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    b.len() == 32
        && b.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

fn new_session_id() -> HeaderValue {
    HeaderValue::from_str(&uuid::Uuid::new_v4().simple().to_string())
        .expect("hex digits are a header value")
}

fn problem(status: StatusCode, slug: &str, title: &str, detail: String) -> Response {
    Problem::new(status, slug, title, detail).into_response()
}

/// `POST /mcp`.
async fn handle(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if !origin_allowed(&headers) {
        return Problem::forbidden(
            "the Origin header names another site: /mcp answers only its own host or a loopback origin",
        )
        .into_response();
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                format!("a JSON-RPC message is application/json, got {ct:?}"),
            );
        }
    }
    let Some(mode) = mode(&headers) else {
        return problem(
            StatusCode::NOT_ACCEPTABLE,
            "not-acceptable",
            "Not acceptable",
            "the Accept header must allow application/json or text/event-stream".into(),
        );
    };
    if let Some(v) = headers.get(VERSION_HEADER) {
        let v = v.to_str().unwrap_or("");
        if !PROTOCOL_VERSIONS.contains(&v) {
            return Problem::bad_request(format!(
                "MCP-Protocol-Version {v:?} is not one this server speaks ({})",
                PROTOCOL_VERSIONS.join(", ")
            ))
            .into_response();
        }
    }
    if let Some(s) = headers.get(SESSION_HEADER) {
        if !session_id_valid(s) {
            return Problem::not_found(
                "Mcp-Session-Id is not one this server issued: send initialize again for a new session",
            )
            .into_response();
        }
    }
    let limit = state.max_body_bytes;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return Problem::too_large(format!(
            "the request body is larger than {limit} bytes (api.max_body_bytes)"
        ))
        .into_response();
    };
    let incoming = protocol::parse(&bytes);
    if let Incoming::Unusable(err) = &incoming {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            err.to_string(),
        )
            .into_response();
    }
    let initializing = incoming.requests().iter().any(|r| r.method == "initialize");
    let answer = Session::new(state, caller).process(incoming).await;
    let mut resp = match (answer, mode) {
        (None, _) => StatusCode::ACCEPTED.into_response(),
        (Some(v), Mode::Json) => {
            ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
        }
        (Some(v), Mode::Sse) => (
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            format!("event: message\ndata: {v}\n\n"),
        )
            .into_response(),
    };
    if initializing {
        resp.headers_mut().insert(SESSION_HEADER, new_session_id());
    }
    resp
}

/// `GET` and `DELETE /mcp`: no server-sent stream, no session to end.
async fn no_stream() -> Response {
    let mut r = problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this MCP server sends no messages of its own (no SSE stream) and keeps no session state: POST JSON-RPC messages to /mcp".into(),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(k.clone(), v.parse().unwrap());
        }
        m
    }

    #[test]
    fn accept_picks_json_unless_only_sse_is_allowed() {
        assert_eq!(mode(&h(&[])), Some(Mode::Json));
        let both = h(&[(header::ACCEPT, "application/json, text/event-stream")]);
        assert_eq!(mode(&both), Some(Mode::Json));
        let sse = h(&[(header::ACCEPT, "text/event-stream;q=1")]);
        assert_eq!(mode(&sse), Some(Mode::Sse));
        assert_eq!(mode(&h(&[(header::ACCEPT, "*/*")])), Some(Mode::Json));
        assert_eq!(mode(&h(&[(header::ACCEPT, "text/html")])), None);
    }

    #[test]
    fn origins_must_be_loopback_or_the_host_itself() {
        assert!(origin_allowed(&h(&[])));
        assert!(origin_allowed(&h(&[(
            header::ORIGIN,
            "http://localhost:3000"
        )])));
        assert!(origin_allowed(&h(&[(header::ORIGIN, "http://[::1]:8080")])));
        assert!(origin_allowed(&h(&[
            (header::ORIGIN, "https://ops.example.com"),
            (header::HOST, "ops.example.com"),
        ])));
        assert!(!origin_allowed(&h(&[
            (header::ORIGIN, "https://evil.example"),
            (header::HOST, "127.0.0.1:8080"),
        ])));
        assert!(!origin_allowed(&h(&[(header::ORIGIN, "null")])));
    }

    #[test]
    fn issued_session_ids_are_accepted() {
        assert!(session_id_valid(&new_session_id()));
        assert!(!session_id_valid(&HeaderValue::from_static("nope")));
    }
}
