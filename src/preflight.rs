//! Redis preflight: checks the server before a worker starts taking tasks.
//!
//! - version ≥ 6.2, for `XAUTOCLAIM` and `XPENDING … IDLE`;
//! - `maxmemory-policy noeviction`: any other policy lets Redis silently evict queue keys
//!   under memory pressure (asynq#799, sidekiq#5558), i.e. lose tasks;
//! - durability: AOF on, or at least one replica connected; otherwise a Redis restart
//!   loses every task written since the last snapshot.
//!
//! Each failed check is logged as a warning, or refuses start-up when the configuration
//! says `preflight = "refuse"`. A check that cannot run (e.g. `CONFIG` disabled by a managed
//! service) is reported as unknown, never as a failure.

use crate::rdb::Conn;

use crate::config::PreflightMode;
use crate::error::{Error, Result};
use crate::rdb::Broker;

/// Outcome of the checks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// Server version as reported by INFO.
    pub version: String,
    /// Problems found (each one a sentence with the fix).
    pub problems: Vec<String>,
    /// Checks that could not run.
    pub unknown: Vec<String>,
}

/// Parses `7.0.15` into (7, 0, 15).
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.trim().split('.').map(|p| p.parse::<u32>().ok());
    Some((
        it.next()??,
        it.next().flatten().unwrap_or(0),
        it.next().flatten().unwrap_or(0),
    ))
}

/// Reads `field:value` from an INFO reply.
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
}

/// Pure evaluation of the facts read from the server.
pub fn evaluate(
    version: &str,
    policy: Option<&str>,
    appendonly: Option<&str>,
    replicas: Option<u32>,
) -> Report {
    let mut r = Report {
        version: version.to_string(),
        ..Default::default()
    };
    match parse_version(version) {
        Some(v) if v >= (6, 2, 0) => {}
        Some(_) => r.problems.push(format!(
            "redis {version} is older than 6.2: XAUTOCLAIM is missing, orphan recovery cannot work; upgrade Redis"
        )),
        None => r.unknown.push(format!("could not parse the redis version {version:?}")),
    }
    match policy {
        Some("noeviction") => {}
        Some(p) => r.problems.push(format!(
            "maxmemory-policy is {p}: Redis may evict queue keys and silently lose tasks; set `maxmemory-policy noeviction`"
        )),
        None => r.unknown.push("could not read maxmemory-policy (CONFIG GET refused)".into()),
    }
    let aof = appendonly.map(|a| a == "yes");
    match (aof, replicas) {
        (Some(true), _) => {}
        (_, Some(n)) if n > 0 => {}
        (Some(false), _) => r.problems.push(
            "appendonly is off and no replica is connected: a Redis restart loses the tasks written since the last snapshot; set `appendonly yes`".into(),
        ),
        (None, _) => r.unknown.push("could not read appendonly (CONFIG GET refused)".into()),
    }
    r
}

/// What the checks need to know about the server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerFacts {
    /// `redis_version` from `INFO server`.
    pub version: String,
    /// `connected_slaves` from `INFO replication`.
    pub replicas: Option<u32>,
    /// `maxmemory-policy`, or `None` when `CONFIG GET` was refused.
    pub maxmemory_policy: Option<String>,
    /// `appendonly`, or `None` when `CONFIG GET` was refused.
    pub appendonly: Option<String>,
}

/// Reads the facts from the server and evaluates them.
pub async fn check(conn: &mut Conn) -> Result<Report> {
    let f = Broker::new(conn.clone()).server_facts().await?;
    Ok(evaluate(
        &f.version,
        f.maxmemory_policy.as_deref(),
        f.appendonly.as_deref(),
        f.replicas,
    ))
}

/// Runs the checks and applies `mode`: logs every problem; refuses when asked to.
pub async fn run(conn: &mut Conn, mode: PreflightMode) -> Result<Report> {
    let r = check(conn).await?;
    for u in &r.unknown {
        tracing::info!(check = %u, "redis preflight: check skipped");
    }
    for p in &r.problems {
        match mode {
            PreflightMode::Warn => tracing::warn!(problem = %p, "redis preflight"),
            PreflightMode::Refuse => tracing::error!(problem = %p, "redis preflight"),
        }
    }
    if mode == PreflightMode::Refuse && !r.problems.is_empty() {
        return Err(Error::Preflight(r.problems.join("; ")));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_server_passes() {
        let r = evaluate("7.0.15", Some("noeviction"), Some("yes"), Some(0));
        assert!(r.problems.is_empty() && r.unknown.is_empty(), "{r:?}");
    }

    #[test]
    fn each_problem_is_named() {
        let r = evaluate("6.0.9", Some("allkeys-lru"), Some("no"), Some(0));
        assert_eq!(r.problems.len(), 3, "{r:?}");
        assert!(r.problems[0].contains("6.2"));
        assert!(r.problems[1].contains("noeviction"));
        assert!(r.problems[2].contains("appendonly"));
    }

    #[test]
    fn replica_counts_as_durability_and_unknowns_are_not_failures() {
        let r = evaluate("7.2.0", None, Some("no"), Some(1));
        assert!(r.problems.is_empty());
        assert_eq!(r.unknown.len(), 1);
    }

    #[test]
    fn parses_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
        assert_eq!(info_field(info, "redis_version"), Some("7.0.15"));
        assert_eq!(parse_version("7.0.15"), Some((7, 0, 15)));
        assert_eq!(parse_version("x"), None);
    }
}
