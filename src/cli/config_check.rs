//! `taskstream config check FILE`: validates a configuration file without connecting to
//! anything; exit 0 when valid, 2 when not (every problem as `file: key: reason`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::Config;

use super::output::outln;

/// `config` actions.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Action {
    /// Validate a configuration file; prints every problem as `file: key: reason`.
    Check {
        /// The file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(action: &Action) -> anyhow::Result<ExitCode> {
    let Action::Check { file, json } = action;
    Ok(if check(file, *json)? {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn check(file: &Path, json: bool) -> anyhow::Result<bool> {
    match Config::load(file) {
        Ok(cfg) => {
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"file": file.display().to_string(), "valid": true, "queues": cfg.queues.len()})
                );
            } else {
                outln!(
                    "{}: ok ({} queues, {} http handlers)",
                    file.display(),
                    cfg.queues.len(),
                    cfg.http_handlers.len()
                );
            }
            Ok(true)
        }
        Err(e) => {
            if json {
                let v: Vec<_> = e
                    .problems
                    .iter()
                    .map(|p| serde_json::json!({"file": p.file, "key": p.key, "reason": p.reason}))
                    .collect();
                outln!(
                    "{}",
                    serde_json::json!({"file": file.display().to_string(), "valid": false, "problems": v})
                );
            } else {
                eprintln!("{e}");
            }
            Ok(false)
        }
    }
}
