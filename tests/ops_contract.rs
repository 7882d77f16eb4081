//! Contract between the Rust code and the operations assets (alerts/, dashboards/,
//! runbooks/, ops/check.sh).
//!
//! - `ops_check_script_passes`: runs `bash ops/check.sh` (promtool check/test of the rules,
//!   dashboard JSON and PromQL, runbook pairing, compose validation). Without `promtool` it
//!   is skipped locally and fails under CI (`CI` set).
//! - `ops_assets_use_only_defined_metrics`: every `taskstream_*` metric name in the alerts,
//!   their tests, the dashboards and the runbooks is a constant of `src/metrics.rs`, and
//!   every recording rule they use (`level:taskstream_…:ops`) is defined in alerts/.
//! - `every_alert_has_a_runbook_and_every_runbook_an_alert`: runbooks/<Alert>.md pairing,
//!   and every runbook_url is `http://localhost:9464/runbooks/<Alert>` (the default base).
//! - `alerts_command_writes_rules_promtool_accepts`: `taskstream alerts
//!   --runbook-base-url URL` prints rules that promtool accepts, with every runbook_url
//!   `URL/<Alert>`; a bad URL is refused naming the flag. Needs promtool like the first.
//!
//! Only std is used; files are scanned line by line, no YAML parser.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files in `dir` (relative to the repo root) whose names end with `suffix`, sorted.
fn files(dir: &str, suffix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("cannot read {dir}/: {e}"))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(suffix))
        })
        .collect();
    out.sort();
    out
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

/// Metric names defined in src/metrics.rs: the string constants `"taskstream_…"`.
fn defined_metrics() -> BTreeSet<String> {
    let text = read(&root().join("src/metrics.rs"));
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if !(line.starts_with("pub const ") && line.contains(": &str")) {
            continue;
        }
        if let Some(start) = line.find("\"taskstream_") {
            let rest = &line[start + 1..];
            if let Some(end) = rest.find('"') {
                names.insert(rest[..end].to_string());
            }
        }
    }
    assert!(
        names.len() >= 10,
        "found only {} metric constants in src/metrics.rs; did its format change?",
        names.len()
    );
    names
}

/// `taskstream_[a-z0-9_]+` tokens that start at a word boundary and are not preceded by
/// ':' (those belong to recording-rule names such as `queue:taskstream_x:rate5m`).
fn metric_tokens(text: &str) -> Vec<String> {
    const P: &str = "taskstream_";
    let mut out = Vec::new();
    for (i, _) in text.match_indices(P) {
        let prev = text[..i].chars().next_back();
        if prev.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let tail: String = text[i + P.len()..]
            .chars()
            .take_while(|&c| is_name_char(c))
            .collect();
        if tail.is_empty() {
            continue; // e.g. "taskstream_*" in prose
        }
        out.push(format!("{P}{tail}"));
    }
    out
}

/// Recording-rule names `level:taskstream_…:ops` used in `text`.
fn recording_rule_tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices(":taskstream_") {
        let level: String = text[..i]
            .chars()
            .rev()
            .take_while(|&c| is_name_char(c))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let rest: String = text[i + 1..]
            .chars()
            .take_while(|&c| is_name_char(c) || c == ':')
            .collect();
        // A recording rule has exactly level:metric:operations; `name*` in prose is a
        // wildcard, not a name.
        let wildcard = text[i + 1 + rest.len()..].starts_with('*');
        if level.is_empty() || rest.matches(':').count() != 1 || rest.ends_with(':') || wildcard {
            continue;
        }
        out.push(format!("{level}:{rest}"));
    }
    out
}

/// Names recorded by `- record: NAME` in alerts/*.rules.yml.
fn recorded_rules() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for f in files("alerts", ".rules.yml") {
        for line in read(&f).lines() {
            if let Some(rest) = line.trim().strip_prefix("- record:") {
                names.insert(rest.trim().to_string());
            }
        }
    }
    names
}

/// Alert names from `- alert: NAME` in rules text, with their runbook_url.
fn alerts_in(text: &str) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("- alert:") {
            out.push((rest.trim().to_string(), None));
            current = Some(out.len() - 1);
        } else if t.starts_with("- record:") {
            current = None;
        } else if let (Some(i), Some(rest)) = (current, t.strip_prefix("runbook_url:")) {
            out[i].1 = Some(rest.trim().trim_matches('"').to_string());
        }
    }
    out
}

/// Alert names from `- alert: NAME` in alerts/*.rules.yml, with their runbook_url.
fn alerts() -> Vec<(String, Option<String>)> {
    files("alerts", ".rules.yml")
        .iter()
        .flat_map(|f| alerts_in(&read(f)))
        .collect()
}

/// The promtool to use (`PROMTOOL` or `promtool`), or `None` when there is none: then the
/// calling test is skipped locally, and fails under CI (`CI` set).
fn promtool(test: &str) -> Option<String> {
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let have_promtool = Command::new(&promtool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if have_promtool {
        return Some(promtool);
    }
    if ci {
        panic!(
            "{test}: promtool is required under CI to check the alert rules \
             (install it: apt-get install -y prometheus)"
        );
    }
    // Written to the real stderr, not through eprintln!, so that libtest's output
    // capture does not hide the skip.
    let _ = writeln!(
        std::io::stderr(),
        "SKIP {test}: `promtool` not found; install it with \
         `apt-get install -y prometheus` to check alerts/ (required when CI is set)"
    );
    None
}

#[test]
fn ops_check_script_passes() {
    if promtool("ops_check_script_passes").is_none() {
        return;
    }
    let out = Command::new("bash")
        .arg("ops/check.sh")
        .current_dir(root())
        .output()
        .expect("cannot run bash ops/check.sh");
    assert!(
        out.status.success(),
        "ops/check.sh failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ops_assets_use_only_defined_metrics() {
    let defined = defined_metrics();
    let recorded = recorded_rules();
    let mut scanned = files("alerts", ".yml");
    scanned.extend(files("alerts/tests", ".yml"));
    scanned.extend(files("dashboards", ".json"));
    scanned.extend(files("runbooks", ".md"));
    assert!(
        scanned.iter().any(|p| rel(p).starts_with("dashboards/")),
        "no dashboard found in dashboards/"
    );

    let mut unknown = BTreeSet::new();
    let mut used = BTreeSet::new();
    for f in &scanned {
        let text = read(f);
        for token in metric_tokens(&text) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| token.strip_suffix(s).filter(|b| defined.contains(*b)))
                .unwrap_or(&token)
                .to_string();
            if defined.contains(&base) {
                used.insert(base);
            } else {
                unknown.insert(format!("{}: {token}", rel(f)));
            }
        }
        for rule in recording_rule_tokens(&text) {
            if !recorded.contains(&rule) {
                unknown.insert(format!(
                    "{}: recording rule {rule} is not defined in alerts/",
                    rel(f)
                ));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "names used in the ops assets that src/metrics.rs (or the recording rules) do not define:\n  {}",
        unknown.into_iter().collect::<Vec<_>>().join("\n  ")
    );
    assert!(
        used.len() >= 10,
        "suspiciously few metric names found: {used:?}"
    );
}

#[test]
fn every_alert_has_a_runbook_and_every_runbook_an_alert() {
    let alerts = alerts();
    assert!(
        alerts.len() >= 12,
        "expected at least 12 alerts, found {}",
        alerts.len()
    );
    let names: BTreeSet<&str> = alerts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), alerts.len(), "duplicate alert names");

    let mut problems = Vec::new();
    for (name, url) in &alerts {
        let path = root().join("runbooks").join(format!("{name}.md"));
        if !path.is_file() {
            problems.push(format!("alert {name}: runbooks/{name}.md is missing"));
        }
        // The default base of `taskstream alerts --runbook-base-url` (src/cli/alerts.rs),
        // where the local processes serve the runbooks (src/runbooks.rs).
        let want = format!("http://localhost:9464/runbooks/{name}");
        if url.as_deref() != Some(want.as_str()) {
            problems.push(format!("alert {name}: runbook_url is {url:?}, want {want}"));
        }
    }
    for f in files("runbooks", ".md") {
        let stem = f
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if stem != "README" && !names.contains(stem.as_str()) {
            problems.push(format!("{}: no alert named {stem}", rel(&f)));
        }
    }
    assert!(
        root().join("runbooks/README.md").is_file(),
        "runbooks/README.md is missing"
    );
    assert!(
        problems.is_empty(),
        "runbook pairing:\n  {}",
        problems.join("\n  ")
    );
}

/// Runs the built `taskstream` binary with `args` and `env` (no configuration, no Redis).
#[cfg(feature = "cli")]
fn taskstream(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskstream"));
    cmd.args(args)
        .env_remove("TASKSTREAM_RUNBOOK_BASE_URL")
        .env_remove("TASKSTREAM_CONFIG")
        // Unroutable on purpose: the command must not need Redis.
        .env("TASKSTREAM_REDIS_URL", "redis://127.0.0.1:1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("cannot run the taskstream binary")
}

#[cfg(feature = "cli")]
#[test]
fn alerts_command_writes_rules_promtool_accepts() {
    let base = "https://ops.example.com/rb";
    let out = taskstream(&["alerts", "--runbook-base-url", &format!("{base}/")], &[]);
    assert!(
        out.status.success(),
        "taskstream alerts failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = String::from_utf8(out.stdout).expect("UTF-8 rules");

    // Same alerts as the committed file, each pointing at BASE/<Alert>.
    let committed = alerts();
    let generated = alerts_in(&rules);
    assert_eq!(
        generated.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        committed.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        "the generated rules have other alerts than alerts/taskstream.rules.yml"
    );
    let wrong: Vec<String> = generated
        .iter()
        .filter(|(name, url)| url.as_deref() != Some(format!("{base}/{name}").as_str()))
        .map(|(name, url)| format!("{name}: {url:?}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "runbook_url not {base}/<Alert>:\n  {}",
        wrong.join("\n  ")
    );
    assert!(
        !rules
            .lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("localhost:9464")),
        "a default URL was left"
    );

    // The environment variable works too; without either, the committed file comes out.
    let out = taskstream(&["alerts"], &[("TASKSTREAM_RUNBOOK_BASE_URL", base)]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), rules);
    let out = taskstream(&["alerts"], &[]);
    assert!(out.status.success());
    let default = String::from_utf8(out.stdout).expect("UTF-8");
    let committed_text = read(&root().join("alerts/taskstream.rules.yml"));
    assert_eq!(
        default.split_once('\n').map(|(_, rest)| rest),
        Some(committed_text.as_str()),
        "`taskstream alerts` without a base should print the committed rules after its header"
    );

    for bad in [
        "ops.example.com/rb",
        "https://ops.example.com/r b",
        "https://x/rb?q=1",
    ] {
        let out = taskstream(&["alerts", "--runbook-base-url", bad], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(out.stdout.is_empty(), "{bad:?}: printed rules anyway");
        assert!(
            stderr.contains("--runbook-base-url"),
            "{bad:?}: the error does not name the flag: {stderr}"
        );
    }

    let Some(promtool) = promtool("alerts_command_writes_rules_promtool_accepts") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("taskstream.rules.yml");
    fs::write(&path, &rules).expect("write the generated rules");
    let check = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("cannot run promtool");
    assert!(
        check.status.success(),
        "promtool check rules refused the generated rules ({}):\n{}{}",
        check.status,
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn token_scanner_rules() {
    assert_eq!(
        metric_tokens("rate(taskstream_wait_seconds_bucket[5m]) queue:taskstream_x:rate5m taskstream_* my_taskstream_y"),
        vec!["taskstream_wait_seconds_bucket".to_string()]
    );
    assert_eq!(
        recording_rule_tokens(
            "a queue_lane:taskstream_wait_slow:ratio_rate5m{q} x:taskstream_y q:taskstream_z:rate*"
        ),
        vec!["queue_lane:taskstream_wait_slow:ratio_rate5m".to_string()]
    );
}
