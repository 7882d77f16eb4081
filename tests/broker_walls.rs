//! The broker's walls: no module outside `src/rdb/` (and the saga subsystem's own Redis
//! file, `src/saga/rdb.rs`) builds a Redis command, a pipeline or a script invocation by
//! hand. Every Redis operation is one typed method of `rdb::Broker`, so the Redis Cluster
//! work (one slot per script, per-shard readers) has exactly one place to change.
//!
//! A plain text scan of the source: cheap, and it names the file and line to move.

use std::path::{Path, PathBuf};

/// What building a command by hand looks like.
const FORBIDDEN: &[&str] = &[
    "redis::cmd(",
    "redis::pipe(",
    "Pipeline::new",
    "Pipeline::with_capacity",
    "redis::Script",
    "Script::new",
    "query_async",
    "invoke_async",
    "prepare_invoke",
    "AsyncCommands",
    "evalsha(",
    "ScriptId::",
];

/// Files allowed to talk to Redis directly.
const BROKER: &[&str] = &["src/rdb/", "src/saga/rdb.rs"];

/// Files not moved behind the broker yet. The list only shrinks, and the renovation
/// emptied it; a file may only come back here with a reason written beside it.
const NOT_YET: &[&str] = &[];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_redis_command_is_built_outside_the_broker() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut found = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if BROKER.iter().any(|b| rel.starts_with(b)) || NOT_YET.contains(&rel.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for pat in FORBIDDEN {
                if code.contains(pat) {
                    found.push(format!("{rel}:{}: `{pat}` in `{}`", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "Redis commands built outside the broker (move each into a typed method of \
         rdb::Broker beside its script):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_not_yet_list_names_only_files_that_still_need_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stale = Vec::new();
    for rel in NOT_YET {
        let Ok(text) = std::fs::read_to_string(root.join(rel)) else {
            stale.push(format!("{rel} (gone)"));
            continue;
        };
        let uses = text.lines().any(|l| {
            let code = l.split("//").next().unwrap_or("");
            FORBIDDEN.iter().any(|p| code.contains(p))
        });
        if !uses {
            stale.push(rel.to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "these files no longer build Redis commands: remove them from NOT_YET:\n{}",
        stale.join("\n")
    );
}
