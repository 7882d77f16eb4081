//! The dashboard: one page, embedded in the binary, served by `taskstream serve` at `/`
//! beside the API it calls (issue 12.3).
//!
//! Three files, hand-written and compiled in with `include_str!`: `index.html` (the
//! skeleton), `app.js` (vanilla JavaScript, no framework, charts drawn as inline SVG by
//! its own small code) and `app.css`. No Node toolchain builds them and nothing is loaded
//! from elsewhere, so the page works offline and behind any firewall.
//!
//! **No authentication for the files**, on purpose: they contain no data. The page asks
//! for a bearer token once (kept in the tab's `sessionStorage`) and sends it with every
//! API call; it asks `GET /api/v1/whoami` for the token's role, and a read token's page
//! has no pause, resume, requeue, delete or abort button in its DOM at all (the API
//! refuses those calls anyway). With no tokens configured (loopback only) every caller
//! is the anonymous admin and the page skips the login.
//!
//! The responses carry `Content-Security-Policy: default-src 'self'` (no inline script,
//! no other origin), `Cache-Control: no-cache` (a new binary's page is picked up on the
//! next load) and `X-Content-Type-Options: nosniff`.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page.
pub const INDEX_HTML: &str = include_str!("index.html");
/// Its script.
pub const APP_JS: &str = include_str!("app.js");
/// Its style sheet.
pub const APP_CSS: &str = include_str!("app.css");

/// The policy every response of the dashboard carries.
pub const CSP: &str =
    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// `GET /`, `GET /assets/app.js`, `GET /assets/app.css`, unauthenticated; merge it into
/// the API's router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/assets/app.js", get(js))
        .route("/assets/app.css", get(css))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files_and_runs_no_inline_script() {
        assert!(INDEX_HTML.contains("<script src=\"/assets/app.js\""));
        assert!(INDEX_HTML.contains("href=\"/assets/app.css\""));
        // Every <script> has a src (CSP forbids inline script) and nothing is external.
        for (i, _) in INDEX_HTML.match_indices("<script") {
            assert!(
                INDEX_HTML[i..].starts_with("<script src=\"/"),
                "inline or external script at {i}"
            );
        }
        for text in [INDEX_HTML, APP_JS, APP_CSS] {
            // The SVG namespace is a name, not something loaded.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"),
                "an external URL"
            );
            assert!(
                !text.contains("innerHTML") && !text.contains("outerHTML"),
                "markup from strings"
            );
            assert!(!text.contains("insertAdjacentHTML") && !text.contains("document.write"));
            assert!(
                !text.contains("eval(") && !text.contains("new Function"),
                "eval"
            );
        }
        // No inline style or event handler attribute (the CSP would block them).
        assert!(!INDEX_HTML.contains(" style="), "inline style");
        let bytes = INDEX_HTML.as_bytes();
        for (i, _) in INDEX_HTML.match_indices(" on") {
            let rest = &bytes[i + 3..];
            let name_len = rest.iter().take_while(|b| b.is_ascii_lowercase()).count();
            assert!(rest.get(name_len) != Some(&b'='), "inline handler at {i}");
        }
    }
}
