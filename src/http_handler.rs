//! HTTP handlers: serve a task type by POSTing the task to a URL.
//!
//! An [`HttpHandler`] lets a service written in any language handle tasks with nothing
//! but an HTTP endpoint: the worker keeps the Redis side (claiming, retries, backoff,
//! dead-lettering, sagas) and the endpoint only sees one POST per execution. The exact
//! request and the mapping of responses to outcomes are a public contract, written out in
//! `docs/http-handlers.md`; this module is its implementation.
//!
//! # Why the mapping is what it is
//!
//! The one question every response has to answer is "could trying again help?":
//!
//! - **2xx** is success. The response body is the task's result (a saga passes it on as
//!   the step's output), so it is parsed as JSON; an empty body is `null`, and a body that
//!   is not JSON is kept as a JSON string instead of failing work that was done. The body
//!   is bounded by the handler's `max_response_bytes` (see below).
//! - **4xx** means the request itself is wrong (bad payload, missing resource, no
//!   permission). Sending the same task again gives the same answer, so it is a permanent
//!   failure and the task goes to the dead-letter stream at once instead of burning its
//!   attempts.
//! - **408 Request Timeout and 429 Too Many Requests** are the exceptions: despite being
//!   4xx they say "not now", not "never". The server timed out waiting or is shedding
//!   load, so they are retryable, like 5xx.
//! - **5xx, timeouts and connection errors** are retryable: the endpoint may be
//!   restarting, overloaded or briefly unreachable.
//! - **`Retry-After`** (seconds or an HTTP date) on a retryable response becomes the
//!   `retry_after` of [`HandlerError::Retryable`]; the worker then waits at least that
//!   long, capped at a day (see [`crate::backoff::honour_retry_after`]), so an
//!   overloaded endpoint is not hammered.
//! - **3xx is not followed** and is a permanent failure. Following a redirect would
//!   re-send the task (and configured headers such as `Authorization`) to an address
//!   nobody configured; a 301/302/303 would also silently turn the POST into a GET and
//!   drop the task. A redirect almost always means the configured URL is stale, which
//!   retrying cannot fix, so the failure names the status and says to fix the URL.
//!
//! # Response size
//!
//! A 2xx body is read in chunks up to the handler's `max_response_bytes` (1 MiB unless
//! configured, at most 512 MiB). A `Content-Length` above it is refused before any of
//! the body is read; a body without one (chunked) is abandoned as soon as it passes the
//! limit, and the connection is closed. The attempt then fails like a timeout does —
//! retryably, so the task is retried per its policy and dead-lettered with the message
//! (which names the limit and the key to raise) when its attempts run out. Before the
//! limit, one 100 MB response added 200–370 MB to the worker's memory (it was buffered
//! whole, then parsed into the result; issue 10, item 12). Error (non-2xx) bodies are
//! read only up to [`MAX_ERROR_BODY_BYTES`].
//!
//! # Cancellation and time limits
//!
//! Each request has its own time limit (the handler's `timeout_ms`, else the default the
//! worker passes, normally the queue's task timeout) covering connect, send and reading
//! the whole response. Independently, when the task's cancellation token fires (the task
//! was cancelled, or the worker is giving up on it), the request is dropped at once and
//! the handler returns the retryable error "cancelled"; dropping the request closes the
//! connection, which is the only way HTTP has to tell the endpoint to stop.
//!
//! # Secrets
//!
//! Configured headers often carry credentials. Their values are marked sensitive, never
//! logged and never put in errors or `Debug` output; URLs in errors and logs are reduced
//! to scheme, host, port and path, so a token in a query string or user info stays out
//! of logs and dead-letter entries.
//!
//! # TLS
//!
//! [`client`] builds the shared [`reqwest::Client`]. reqwest 0.13's `rustls` feature
//! builds its TLS configuration with an explicit aws-lc-rs crypto provider (unless the
//! process installed a rustls default provider itself), so no provider has to be
//! installed before `https://` URLs work. Server certificates are checked against the
//! operating system's trust store.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{StatusCode, Url};

use crate::config::HttpHandlerConfig;
use crate::handler::{Handler, HandlerError, HandlerResult, TaskContext};

/// Request header carrying the task id (stable across retries; use it to deduplicate).
pub const HEADER_TASK_ID: &str = "x-taskstream-task-id";
/// Request header carrying the 1-based attempt number of this execution.
pub const HEADER_ATTEMPT: &str = "x-taskstream-attempt";
/// Request header carrying the queue name.
pub const HEADER_QUEUE: &str = "x-taskstream-queue";
/// Request header carrying the W3C trace context, when the producer sent one.
pub const HEADER_TRACEPARENT: &str = "traceparent";

/// At most this many bytes of an error response's body are quoted in the failure message.
pub const MAX_ERROR_BODY_BYTES: usize = 512;

/// Prefix of the protocol's own headers; configured headers may not use it.
const RESERVED_PREFIX: &str = "x-taskstream-";

/// Set when [`client`] found no CA certificates on the system and fell back to a client
/// that can only speak plain HTTP successfully.
static NO_SYSTEM_ROOTS: AtomicBool = AtomicBool::new(false);

/// Builds the HTTP client to share between all HTTP handlers of a process.
///
/// It does not follow redirects (see the module docs), identifies itself as
/// `taskstream/VERSION`, limits connecting to 10 s (the per-request time limit still
/// applies), keeps idle connections for 90 s, and honours the usual proxy environment
/// variables. TLS uses rustls with the operating system's trust store.
///
/// If the system has no CA certificates (a container image without the
/// `ca-certificates` package), this logs an error and returns a client with an empty
/// trust store instead of panicking: `http://` URLs work, `https://` URLs fail
/// (retryably) with a certificate error until the certificates are installed.
pub fn client() -> reqwest::Client {
    match base_builder().build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(
                error = %error_chain(&e),
                "could not set up TLS for http handlers; https:// handler URLs will fail until \
                 CA certificates are installed (e.g. the ca-certificates package)"
            );
            NO_SYSTEM_ROOTS.store(true, Ordering::Relaxed);
            base_builder()
                .tls_certs_only([])
                .build()
                .expect("an HTTP client without trust roots needs no system resources")
        }
    }
}

fn base_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("taskstream/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
}

/// A task type served by POSTing each task to a URL. See the module docs and
/// `docs/http-handlers.md` for the protocol.
#[derive(Clone)]
pub struct HttpHandler {
    task_type: String,
    url: Url,
    /// `scheme://host[:port]/path`: safe to log.
    display_url: String,
    headers: HeaderMap,
    timeout: Duration,
    /// Largest 2xx body read, in bytes (`max_response_bytes`).
    max_response: usize,
    client: reqwest::Client,
}

impl fmt::Debug for HttpHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values are left out on purpose: they may be credentials.
        f.debug_struct("HttpHandler")
            .field("task_type", &self.task_type)
            .field("url", &self.display_url)
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn invalid(task_type: &str, reason: impl fmt::Display) -> crate::Error {
    crate::Error::Invalid {
        what: "http handler",
        reason: format!("task type {task_type:?}: {reason}"),
    }
}

/// Parses a handler URL: absolute, `http://` or `https://`, with a host. Pure; shared
/// by [`HttpHandler::new`] and `config check` (`Config::validate`), so the check refuses
/// exactly what the worker refuses (issue 9).
pub fn parse_url(url: &str) -> Result<Url, String> {
    let url = Url::parse(url).map_err(|e| format!("url is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "url must be http:// or https://, got {}://",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("url has no host".into());
    }
    Ok(url)
}

/// Builds the configured extra headers. Pure; shared by [`HttpHandler::new`] and
/// `config check`. An error is (header name as configured, reason), never the value.
pub fn parse_headers(
    configured: &std::collections::BTreeMap<String, String>,
) -> Result<HeaderMap, (String, String)> {
    let mut headers = HeaderMap::new();
    for (name, value) in configured {
        let fail = |reason: String| (name.clone(), reason);
        let hn = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| fail(format!("header name {name:?} is not valid")))?;
        let reserved = hn == CONTENT_TYPE
            || hn == reqwest::header::CONTENT_LENGTH
            || hn.as_str() == HEADER_TRACEPARENT
            || hn.as_str().starts_with(RESERVED_PREFIX);
        if reserved {
            return Err(fail(format!(
                "header {name:?} is set by the http handler protocol and cannot be configured"
            )));
        }
        if headers.contains_key(&hn) {
            return Err(fail(format!(
                "header {name:?} is listed twice (header names ignore case)"
            )));
        }
        let mut hv = HeaderValue::from_str(value).map_err(|_| {
            fail(format!(
                "the value of header {name:?} is not a valid header value (value not shown)"
            ))
        })?;
        hv.set_sensitive(true);
        headers.insert(hn, hv);
    }
    Ok(headers)
}

impl HttpHandler {
    /// Builds the handler of `cfg.task_type`.
    ///
    /// `default_timeout` is the request time limit when `cfg.timeout_ms` is not set
    /// (normally the queue's task timeout). `client` should come from [`client`] (shared
    /// by all handlers); a client that follows redirects would break the contract.
    ///
    /// Fails when the URL is not an absolute `http://` or `https://` URL, the time limit
    /// is zero, `max_response_bytes` is outside 1 to 512 MiB
    /// ([`HttpHandlerConfig::response_limit`]), or a configured header has an invalid
    /// name or value, uses a name the
    /// protocol sets itself (`Content-Type`, `Content-Length`, `traceparent`,
    /// `X-Taskstream-*`), or is listed twice. Errors name the header, never its value.
    pub fn new(
        cfg: &HttpHandlerConfig,
        default_timeout: Duration,
        client: reqwest::Client,
    ) -> Result<HttpHandler, crate::Error> {
        let t = cfg.task_type.as_str();
        let url = parse_url(&cfg.url).map_err(|e| invalid(t, e))?;
        let timeout = cfg
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(default_timeout);
        if timeout.is_zero() {
            return Err(invalid(t, "timeout must be positive"));
        }
        let max_response = cfg
            .response_limit()
            .map_err(|e| invalid(t, format_args!("max_response_bytes {e}")))?;

        let headers = parse_headers(&cfg.headers).map_err(|(_, reason)| invalid(t, reason))?;

        let display_url = display_url(&url);
        if url.scheme() == "https" && NO_SYSTEM_ROOTS.load(Ordering::Relaxed) {
            tracing::warn!(
                task_type = t,
                url = %display_url,
                "https handler URL, but no CA certificates were found on this system: requests will fail certificate checks"
            );
        }
        Ok(HttpHandler {
            task_type: cfg.task_type.clone(),
            url,
            display_url,
            headers,
            timeout,
            max_response,
            client,
        })
    }

    /// Task type served.
    pub fn task_type(&self) -> &str {
        &self.task_type
    }

    /// The URL as shown in logs and errors: scheme, host, port and path only.
    pub fn display_url(&self) -> &str {
        &self.display_url
    }

    /// Per-request time limit.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Largest 2xx response body accepted, in bytes.
    pub fn max_response_bytes(&self) -> usize {
        self.max_response
    }

    fn msg(&self, detail: impl fmt::Display) -> String {
        format!(
            "http handler for task type {:?}: POST {}: {detail}",
            self.task_type, self.display_url
        )
    }

    fn retryable(&self, detail: impl fmt::Display, after: Option<Duration>) -> HandlerError {
        HandlerError::Retryable {
            message: self.msg(detail),
            retry_after: after,
        }
    }

    fn permanent(&self, detail: impl fmt::Display) -> HandlerError {
        HandlerError::permanent(self.msg(detail))
    }

    fn request_headers(&self, ctx: &TaskContext) -> HeaderMap {
        let mut h = self.headers.clone();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(HEADER_ATTEMPT, HeaderValue::from(ctx.attempt()));
        // Ids and queue names are validated text, but a producer can write any id; one
        // with control characters cannot travel in a header and is then only in the body.
        for (name, value) in [
            (HEADER_TASK_ID, Some(ctx.id())),
            (HEADER_QUEUE, Some(ctx.queue())),
            (HEADER_TRACEPARENT, ctx.traceparent()),
        ] {
            let Some(value) = value else { continue };
            match HeaderValue::from_bytes(value.as_bytes()) {
                Ok(v) => {
                    h.insert(name, v);
                }
                Err(_) => tracing::debug!(
                    task_id = ctx.id(),
                    header = name,
                    "value cannot be sent as an HTTP header; left out"
                ),
            }
        }
        h
    }

    /// One POST and the mapping of its outcome. Cancellation is handled by the caller.
    async fn call(&self, body: Vec<u8>, headers: HeaderMap) -> HandlerResult {
        let resp = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(body)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = resp.status();
        if status.is_success() {
            let bytes = self.success_body(resp).await?;
            return Ok(result_from_body(&bytes));
        }
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| self.url.join(l).ok())
                .map(|u| format!(" to {}", display_url(&u)))
                .unwrap_or_default();
            return Err(self.permanent(format_args!(
                "HTTP {} redirect{location} not followed (http handlers never follow \
                 redirects); set the handler's url to the final address",
                status_text(status)
            )));
        }
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let snippet = error_snippet(resp).await;
        let detail = if snippet.is_empty() {
            format!("HTTP {}", status_text(status))
        } else {
            format!("HTTP {}: {snippet}", status_text(status))
        };
        if is_retryable_status(status) {
            Err(self.retryable(detail, retry_after))
        } else {
            Err(self.permanent(detail))
        }
    }

    /// The body of a 2xx response, read in chunks and given up on as soon as it is
    /// known to exceed `max_response_bytes` (see "Response size" in the module docs).
    async fn success_body(&self, mut resp: reqwest::Response) -> Result<Vec<u8>, HandlerError> {
        let cap = self.max_response;
        let announced = resp.content_length();
        if let Some(n) = announced.filter(|&n| n > cap as u64) {
            return Err(self.too_large(format_args!("announces {n} bytes (Content-Length)")));
        }
        // Within the cap: the announced size is the allocation, made once.
        let mut body = Vec::with_capacity(announced.map_or(0, |n| n as usize));
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport_error(e))? {
            if chunk.len() > cap - body.len() {
                // Dropping `resp` closes the connection: the rest is never downloaded.
                return Err(self.too_large(format_args!(
                    "was still going at {} bytes",
                    body.len() + chunk.len()
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn too_large(&self, detail: fmt::Arguments<'_>) -> HandlerError {
        self.retryable(
            format_args!(
                "response body too large: it {detail}, above max_response_bytes ({} bytes); \
                 raise max_response_bytes of the [[http_handlers]] entry of type {:?} \
                 (at most 536870912) or have the endpoint return less",
                self.max_response, self.task_type
            ),
            None,
        )
    }

    fn transport_error(&self, e: reqwest::Error) -> HandlerError {
        if e.is_timeout() {
            return self.retryable(
                format_args!("timed out after {} ms", self.timeout.as_millis()),
                None,
            );
        }
        let connect = e.is_connect();
        // `without_url` keeps query strings and user info out of the message.
        let chain = error_chain(&e.without_url());
        if connect {
            self.retryable(format_args!("connection failed: {chain}"), None)
        } else {
            self.retryable(format_args!("request failed: {chain}"), None)
        }
    }
}

#[async_trait::async_trait]
impl Handler for HttpHandler {
    async fn handle(&self, ctx: TaskContext) -> HandlerResult {
        let body = request_body(&ctx).map_err(|e| self.permanent(e))?;
        let headers = self.request_headers(&ctx);
        let started = Instant::now();
        let outcome = tokio::select! {
            biased;
            _ = ctx.cancellation().cancelled() => Err(self.retryable("cancelled", None)),
            r = self.call(body, headers) => r,
        };
        tracing::debug!(
            task_type = %self.task_type,
            task_id = ctx.id(),
            url = %self.display_url,
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = outcome.is_ok(),
            "http handler call"
        );
        outcome
    }
}

/// 408 and 429 mean "not now"; 5xx mean the server failed. Every other non-2xx status
/// (other 4xx, and anything outside 2xx–5xx that is not a redirect) is permanent.
fn is_retryable_status(s: StatusCode) -> bool {
    s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT || s == StatusCode::TOO_MANY_REQUESTS
}

fn status_text(s: StatusCode) -> String {
    match s.canonical_reason() {
        Some(r) => format!("{} {r}", s.as_u16()),
        None => s.as_u16().to_string(),
    }
}

/// `scheme://host[:port]/path`: no user info, query or fragment.
fn display_url(u: &Url) -> String {
    let host = u.host_str().unwrap_or("");
    match u.port() {
        Some(p) => format!("{}://{host}:{p}{}", u.scheme(), u.path()),
        None => format!("{}://{host}{}", u.scheme(), u.path()),
    }
}

/// The request body: the task envelope with the payload embedded as JSON, byte for byte
/// as the producer wrote it (no re-encoding, so number precision and key order survive).
fn request_body(ctx: &TaskContext) -> Result<Vec<u8>, String> {
    fn key(b: &mut Vec<u8>, name: &str) {
        b.push(if b.is_empty() { b'{' } else { b',' });
        b.push(b'"');
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(b"\":");
    }
    fn value<T: serde::Serialize + ?Sized>(b: &mut Vec<u8>, v: &T) {
        // Serializing a string or an integer into memory has no failure mode.
        let _ = serde_json::to_writer(b, v);
    }
    let payload = ctx.payload_str();
    serde_json::from_str::<serde::de::IgnoredAny>(payload)
        .map_err(|e| format!("payload is not valid JSON: {e}"))?;
    let mut b = Vec::with_capacity(payload.len() + 192);
    key(&mut b, "id");
    value(&mut b, ctx.id());
    key(&mut b, "queue");
    value(&mut b, ctx.queue());
    key(&mut b, "type");
    value(&mut b, ctx.task_type());
    key(&mut b, "payload");
    b.extend_from_slice(payload.trim().as_bytes());
    key(&mut b, "attempt");
    value(&mut b, &ctx.attempt());
    key(&mut b, "max_attempts");
    value(&mut b, &ctx.max_attempts());
    key(&mut b, "enqueued_at");
    value(&mut b, &ctx.enqueued_at());
    if let Some(saga) = ctx.saga_id() {
        key(&mut b, "saga_id");
        value(&mut b, saga);
    }
    b.push(b'}');
    Ok(b)
}

/// A 2xx body as the task result: JSON as is, empty → `null`, anything else → a string.
fn result_from_body(bytes: &[u8]) -> serde_json::Value {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// Up to [`MAX_ERROR_BODY_BYTES`] of an error response's body, as text. Reading stops
/// there (the rest is never downloaded); read errors just end the snippet.
async fn error_snippet(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < MAX_ERROR_BODY_BYTES {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            Ok(None) | Err(_) => break,
        }
    }
    buf.truncate(MAX_ERROR_BODY_BYTES);
    // Do not end in the middle of a UTF-8 sequence cut by the limit.
    let text = match std::str::from_utf8(&buf) {
        Ok(s) => s.to_string(),
        Err(e) if e.error_len().is_none() => {
            String::from_utf8_lossy(&buf[..e.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(&buf).into_owned(),
    };
    text.trim().to_string()
}

/// An error and its sources, joined with ": " (repeats left out).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.ends_with(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

/// Parses a `Retry-After` value: delta-seconds (`"120"`) or an IMF-fixdate HTTP date
/// (`"Sun, 06 Nov 1994 08:49:37 GMT"`), the latter taken relative to `now` (a date in
/// the past gives zero). The obsolete RFC 850 and asctime date forms, negative or
/// fractional numbers and anything else give `None` (the normal backoff applies).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly large numbers saturate; the worker caps the wait anyway.
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    let at = parse_imf_fixdate(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` → time.
fn parse_imf_fixdate(s: &str) -> Option<SystemTime> {
    let mut parts = s.split(' ');
    let wday = parts.next()?;
    let (day, mon, year, hms, gmt) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if parts.next().is_some()
        || gmt != "GMT"
        || !matches!(
            wday,
            "Mon," | "Tue," | "Wed," | "Thu," | "Fri," | "Sat," | "Sun,"
        )
        || day.len() != 2
        || year.len() != 4
        || hms.len() != 8
    {
        return None;
    }
    let num = |t: &str| -> Option<u64> {
        if t.bytes().all(|b| b.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let day = num(day)?;
    let year = num(year)?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == mon)? as u64
        + 1;
    let mut t = hms.split(':');
    let (h, m, sec) = (num(t.next()?)?, num(t.next()?)?, num(t.next()?)?);
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 || year < 1970 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + h * 3_600 + m * 60 + sec;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm), for
/// years from 1970 on.
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
