//! The runbooks, served: `GET /runbooks` (the index) and `GET /runbooks/<Alert>` (one
//! runbook, rendered to a small self-contained HTML page), on the HTTP server every
//! taskstream process already runs for `/metrics` ([`crate::http`]).
//!
//! Why: every alert's `runbook_url` used to point at a GitHub repository that does not
//! exist, so on-call clicked a dead link in the middle of an incident (issue 12.5). The
//! runbooks now travel inside the binary (`runbooks/*.md`, embedded at compile time), so
//! the link works wherever a taskstream process is reachable and always matches the
//! version deployed. The alert rules' base URL is a setting: `taskstream alerts
//! --runbook-base-url URL` prints the rules with every `runbook_url` = `URL/<Alert>`
//! (src/cli/alerts.rs); the committed rules use `http://localhost:9464/runbooks`.
//!
//! **No authentication**, on purpose: the page is opened by an on-call engineer clicking
//! a link in Alertmanager, Grafana or a chat notification, and a browser cannot attach a
//! bearer token to that click. The runbooks contain no secrets (they are in the
//! repository), and the pages run no script: raw HTML inside the markdown is escaped and
//! shown as text, never passed through (HTML comments are dropped), the only style is
//! inline, nothing external is loaded, and the responses carry a `Content-Security-Policy`
//! that forbids scripts. Links between runbooks (`TaskstreamX.md`, `./TaskstreamX.md`,
//! `README.md`) are rewritten to `/runbooks/TaskstreamX` and `/runbooks`.
//!
//! Markdown is rendered by `pulldown-cmark` (CommonMark plus tables), fed through its
//! event stream so that the HTML events can be turned into text.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use pulldown_cmark::{CowStr, Event, Options, Parser, Tag};

/// Declares the embedded runbooks: one `runbooks/<Name>.md` per name.
macro_rules! runbooks {
    ($($name:ident),* $(,)?) => {
        /// Every runbook: (alert name, markdown of `runbooks/<alert name>.md`).
        pub const RUNBOOKS: &[(&str, &str)] = &[
            $((stringify!($name), include_str!(concat!("../runbooks/", stringify!($name), ".md"))),)*
        ];
    };
}

runbooks!(
    TaskstreamAckFailures,
    TaskstreamCircuitBreakerOpen,
    TaskstreamCrossTypeDeliveries,
    TaskstreamDeadLetterQueueGrowing,
    TaskstreamDeadLetterRatioHigh,
    TaskstreamDesiredReplicasAboveActive,
    TaskstreamLagGrowing,
    TaskstreamMetricsAbsent,
    TaskstreamNoWorkers,
    TaskstreamOldestTaskAgeHigh,
    TaskstreamOrphansRecoveredHigh,
    TaskstreamPoisonTasks,
    TaskstreamQueuePausedLong,
    TaskstreamQueueStalled,
    TaskstreamRedisCommandErrors,
    TaskstreamRedisDown,
    TaskstreamRedisReconnectsFrequent,
    TaskstreamSagaCompensationFailed,
    TaskstreamSagasOverdue,
    TaskstreamTargetDown,
    TaskstreamThroughputAnomaly,
    TaskstreamWaitBudgetBurnFast,
    TaskstreamWaitBudgetBurnSlow,
    TaskstreamWorkersSaturated,
    Watchdog,
);

/// `runbooks/README.md`: the start page, the text of the index.
const README: &str = include_str!("../runbooks/README.md");

/// The path the runbooks are served under.
pub const PATH: &str = "/runbooks";

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const STYLE: &str = "\
:root{color-scheme:light dark;--fg:#1b1f24;--bg:#fff;--muted:#57606a;--line:#d0d7de;--code:#f3f4f6;--link:#0a58ca}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--bg:#0d1117;--muted:#9198a1;--line:#30363d;--code:#161b22;--link:#58a6ff}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:16px/1.55 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}
main{max-width:52rem;margin:0 auto;padding:1rem 1.1rem 3rem}
nav{font-size:.9rem;color:var(--muted);padding:.4rem 0;border-bottom:1px solid var(--line)}
a{color:var(--link)}
h1{font-size:1.7rem;line-height:1.25;margin:1rem 0 .6rem;overflow-wrap:anywhere}
h2{font-size:1.3rem;margin:1.8rem 0 .5rem;padding-bottom:.2rem;border-bottom:1px solid var(--line)}
h3{font-size:1.1rem;margin:1.4rem 0 .4rem}
code{font:.88em/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:var(--code);padding:.1em .3em;border-radius:4px;overflow-wrap:anywhere}
pre{background:var(--code);padding:.75rem .9rem;border-radius:6px;overflow-x:auto;line-height:1.4}
pre code{padding:0;background:none;overflow-wrap:normal;white-space:pre}
table{border-collapse:collapse;display:block;overflow-x:auto;max-width:100%;margin:.8rem 0;font-size:.93rem}
th,td{border:1px solid var(--line);padding:.35rem .6rem;text-align:left;vertical-align:top}
th{background:var(--code)}
li{margin:.2rem 0}
blockquote{margin:0;padding:0 1rem;color:var(--muted);border-left:3px solid var(--line)}
@media (max-width:600px){body{font-size:15px}main{padding:.6rem .7rem 2rem}h1{font-size:1.4rem}}
";

/// The names of every embedded runbook (the alert names), in file-name order.
pub fn names() -> impl Iterator<Item = &'static str> {
    RUNBOOKS.iter().map(|(name, _)| *name)
}

fn markdown(name: &str) -> Option<&'static str> {
    RUNBOOKS.iter().find(|(n, _)| *n == name).map(|(_, md)| *md)
}

/// The runbook of alert `name` as a complete HTML page, or `None` when there is none.
pub fn render(name: &str) -> Option<String> {
    let md = markdown(name)?;
    Some(page(
        &format!("{name} \u{2014} taskstream runbook"),
        &format!("<a href=\"{PATH}\">\u{2190} all runbooks</a>"),
        &to_html(md),
    ))
}

/// The index page: the start of `runbooks/README.md`, then every runbook with its first
/// line after the heading (severity, group), then the rest of the README.
pub fn render_index() -> String {
    let (intro, rest) = match README.find("\n## ") {
        Some(i) => README.split_at(i + 1),
        None => (README, ""),
    };
    let mut md = String::with_capacity(README.len() + 4096);
    md.push_str(intro);
    md.push_str("\n## Runbooks\n\n");
    for (name, text) in RUNBOOKS {
        md.push_str(&format!("- **[{name}]({PATH}/{name})**"));
        if let Some(line) = summary(text) {
            md.push_str(" \u{2014} ");
            md.push_str(line);
        }
        md.push('\n');
    }
    md.push('\n');
    md.push_str(rest);
    page(
        "taskstream runbooks",
        "taskstream runbooks \u{b7} served by this process",
        &to_html(&md),
    )
}

/// The first non-empty line after the runbook's heading (`Severity: … · Group: …`),
/// without its expression, which the runbook itself shows: the index stays scannable.
fn summary(md: &str) -> Option<&str> {
    let line = md
        .lines()
        .skip_while(|l| !l.starts_with("# "))
        .skip(1)
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))?;
    Some(line.split(" \u{b7} Expression:").next().unwrap_or(line))
}

/// Renders markdown to an HTML fragment: raw HTML becomes text, comments are dropped,
/// links to other runbooks point at their served page.
fn to_html(md: &str) -> String {
    let events = Parser::new_ext(md, Options::ENABLE_TABLES).filter_map(|ev| match ev {
        Event::Html(s) | Event::InlineHtml(s) => {
            let t = s.trim();
            if t.starts_with("<!--") && t.ends_with("-->") {
                None
            } else {
                Some(Event::Text(s))
            }
        }
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => Some(Event::Start(Tag::Link {
            link_type,
            dest_url: rewrite_link(dest_url),
            title,
            id,
        })),
        other => Some(other),
    });
    let mut out = String::with_capacity(md.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut out, events);
    out
}

/// `TaskstreamX.md`, `./TaskstreamX.md` (with an optional `#anchor`) → `/runbooks/TaskstreamX`
/// when that runbook exists; `README.md` → `/runbooks`. Anything else is left as it is.
fn rewrite_link(dest: CowStr<'_>) -> CowStr<'_> {
    let (path, anchor) = match dest.find('#') {
        Some(i) => (&dest[..i], &dest[i..]),
        None => (&dest[..], ""),
    };
    let file = path.strip_prefix("./").unwrap_or(path);
    let Some(stem) = file.strip_suffix(".md") else {
        return dest;
    };
    if stem == "README" {
        return CowStr::from(format!("{PATH}{anchor}"));
    }
    if markdown(stem).is_some() {
        return CowStr::from(format!("{PATH}/{stem}{anchor}"));
    }
    dest
}

fn page(title: &str, nav: &str, body: &str) -> String {
    let title = escape(title);
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n<main>\n\
         <nav>{nav}</nav>\n{body}</main>\n</body>\n</html>\n"
    )
}

/// Escapes text for HTML element content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    html(StatusCode::OK, render_index())
}

async fn one(Path(name): Path<String>) -> Response {
    let name = name.strip_suffix(".md").unwrap_or(&name);
    if name == "README" {
        return html(StatusCode::OK, render_index());
    }
    match render(name) {
        Some(page) => html(StatusCode::OK, page),
        None => html(
            StatusCode::NOT_FOUND,
            self::page(
                "no such runbook \u{2014} taskstream",
                &format!("<a href=\"{PATH}\">\u{2190} all runbooks</a>"),
                &format!(
                    "<h1>No runbook named \u{201c}{}\u{201d}</h1>\n<p>The runbooks this \
                     process knows are listed at <a href=\"{PATH}\">{PATH}</a>.</p>\n",
                    escape(name)
                ),
            ),
        ),
    }
}

/// `GET /runbooks` and `GET /runbooks/{name}` (also `{name}.md`, so links to the markdown
/// files keep working), unauthenticated; merge it into any router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(PATH, get(index))
        .route(&format!("{PATH}/"), get(index))
        .route(&format!("{PATH}/{{name}}"), get(one))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = include_str!("../alerts/taskstream.rules.yml");

    fn alert_names() -> Vec<String> {
        RULES
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- alert:"))
            .map(|n| n.trim().to_string())
            .collect()
    }

    #[test]
    fn every_alert_of_the_rules_has_an_embedded_runbook_that_renders() {
        let alerts = alert_names();
        assert!(alerts.len() >= 12, "found only {} alerts", alerts.len());
        for name in &alerts {
            let page = render(name).unwrap_or_else(|| panic!("no embedded runbook for {name}"));
            assert!(page.starts_with("<!doctype html>"), "{name}");
            assert!(page.contains("<meta name=\"viewport\""), "{name}");
            assert!(
                page.contains(&format!(
                    "<title>{name} \u{2014} taskstream runbook</title>"
                )),
                "{name}"
            );
            assert!(page.contains(&format!("<h1>{name}</h1>")), "{name}");
            assert!(page.contains("<h2>Mitigation</h2>"), "{name}");
            assert!(page.contains("href=\"/runbooks\""), "{name}: no way back");
        }
        let embedded: Vec<&str> = names().collect();
        assert_eq!(embedded.len(), alerts.len(), "runbooks without alert?");
        assert!(render("Nope").is_none());
    }

    #[test]
    fn every_runbook_file_is_embedded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/runbooks");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("runbooks/")
            .filter_map(|e| {
                let n = e.ok()?.file_name().into_string().ok()?;
                n.strip_suffix(".md")
                    .filter(|s| *s != "README")
                    .map(String::from)
            })
            .collect();
        files.sort();
        let embedded: Vec<String> = names().map(String::from).collect();
        assert_eq!(
            files, embedded,
            "runbooks/*.md and the runbooks! list in src/runbooks.rs differ"
        );
    }

    #[test]
    fn links_to_other_runbooks_point_at_their_pages() {
        let mut pages: Vec<(String, String)> = names()
            .map(|n| (n.to_string(), render(n).expect("renders")))
            .collect();
        pages.push(("index".into(), render_index()));
        for (name, page) in &pages {
            assert!(
                !page.contains(".md\""),
                "{name}: a link still points at a .md file"
            );
        }
        let index = render_index();
        for n in names() {
            assert!(
                index.contains(&format!("href=\"/runbooks/{n}\"")),
                "index lacks {n}"
            );
        }
        // The README's alert table links `TaskstreamRedisDown.md`.
        assert!(
            index.contains("<a href=\"/runbooks/TaskstreamRedisDown\">TaskstreamRedisDown.md</a>")
        );
        assert!(index.contains("<title>taskstream runbooks</title>"));
        // The summary line of each runbook is listed.
        assert!(index.contains(
            "<a href=\"/runbooks/TaskstreamRedisDown\">TaskstreamRedisDown</a></strong> \u{2014} \
             Severity: <strong>critical</strong> \u{b7} Group: availability</li>"
        ));
        // HTML comments of the README (acl markers) are dropped, not shown.
        assert!(!index.contains("acl:begin"));
    }

    #[test]
    fn link_rewriting() {
        let r = |s: &str| rewrite_link(CowStr::from(s.to_string())).to_string();
        assert_eq!(r("TaskstreamRedisDown.md"), "/runbooks/TaskstreamRedisDown");
        assert_eq!(r("./Watchdog.md"), "/runbooks/Watchdog");
        assert_eq!(
            r("TaskstreamRedisDown.md#mitigation"),
            "/runbooks/TaskstreamRedisDown#mitigation"
        );
        assert_eq!(r("README.md"), "/runbooks");
        assert_eq!(r("../docs/sagas.md"), "../docs/sagas.md");
        assert_eq!(r("Unknown.md"), "Unknown.md");
        assert_eq!(r("https://example.com/x"), "https://example.com/x");
    }

    #[test]
    fn raw_html_in_markdown_is_escaped() {
        let out = to_html(
            "# T\n\n<script>alert(1)</script>\n\ntext <img src=x onerror=alert(2)> and <b>b</b>\n\n<!-- gone -->\n",
        );
        assert!(!out.contains("<script"), "{out}");
        assert!(!out.contains("<img"), "{out}");
        assert!(!out.contains("<b>"), "{out}");
        assert!(
            out.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{out}"
        );
        assert!(out.contains("&lt;img src=x onerror=alert(2)&gt;"), "{out}");
        assert!(!out.contains("gone"), "{out}");
    }

    #[test]
    fn escape_covers_the_html_specials() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
