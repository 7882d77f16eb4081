//! Errors as RFC 9457 problem documents (`application/problem+json`).
//!
//! Every refusal of the API is one of these, with a `detail` that names the thing and the
//! fix — never an empty body or a plain-text 500. Bad input is a 4xx; a 5xx means Redis or
//! taskstream itself failed (503 while Redis is unreachable, so a client retries). The
//! `type` URIs are stable identifiers (`…/problems/<slug>`), documented in the OpenAPI
//! document, that clients can match without parsing the text.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::Error;

/// Base of the problem `type` URIs.
pub const PROBLEM_BASE: &str = "https://taskstream.dev/problems/";

/// One problem document.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    /// Stable identifier of the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong with this request, and the fix.
    pub detail: String,
}

impl Problem {
    /// A problem of `status`, kind `slug`.
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Problem {
            kind: format!("{PROBLEM_BASE}{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
        }
    }
    /// 400: the request is malformed or a value is out of range.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "Invalid request",
            detail,
        )
    }
    /// 401: no or an unknown token.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
    }
    /// 403: the token may not do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }
    /// 404: no such queue, task, saga or route.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }
    /// 409: the thing is in a state that forbids this.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }
    /// 413: the body or a payload is too large.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Content too large",
            detail,
        )
    }
    /// 503: Redis cannot be reached or refused; retry later.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "redis-unavailable",
            "Redis unavailable",
            detail,
        )
    }
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        let detail = e.to_string();
        match e {
            Error::Invalid { .. } | Error::Payload(_) | Error::SagaRejected { .. } => {
                Problem::bad_request(detail)
            }
            Error::NotFound(_) => Problem::not_found(detail),
            Error::PayloadTooLarge { .. } => Problem::too_large(detail),
            Error::SagaEnded { .. } | Error::SagaExists(_) | Error::SagaConflict { .. } => {
                Problem::conflict(detail)
            }
            Error::Redis(_)
            | Error::Pool(_)
            | Error::NotReplicated { .. }
            | Error::NoPermission { .. } => Problem::unavailable(detail),
            _ => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                detail,
            ),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut r = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"taskstream\""),
            );
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_errors_map_to_client_or_server_problems() {
        let p: Problem = Error::NotFound("saga \"x\"".into()).into();
        assert_eq!(p.status, 404);
        assert_eq!(p.kind, format!("{PROBLEM_BASE}not-found"));
        let p: Problem = Error::Invalid {
            what: "queue name",
            reason: "too long".into(),
        }
        .into();
        assert_eq!(p.status, 400);
        assert!(p.detail.contains("queue name"), "{}", p.detail);
        let p: Problem = Error::PayloadTooLarge {
            task_type: "t".into(),
            size: 10,
            limit: 5,
        }
        .into();
        assert_eq!(p.status, 413);
        let p: Problem = Error::SagaExists("s".into()).into();
        assert_eq!(p.status, 409);
    }
}
