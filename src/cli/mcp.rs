//! `taskstream mcp`: an MCP server on stdin and stdout (what Claude Desktop and most MCP
//! clients launch), a thin layer over [`crate::mcp::stdio`]. Read-only unless `--admin`.

use super::process::shutdown_token;
use crate::config::Config;

/// `mcp` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Offer the mutating tools too (enqueue, dead_letters_requeue, queue_pause,
    /// queue_resume, saga_start, saga_abort); without it the server is read-only.
    #[arg(long)]
    admin: bool,
    /// Name logged with every mutating call (as a token's name is by `serve`).
    #[arg(long, default_value = "mcp-stdio")]
    name: String,
}

pub(crate) async fn run(cfg: Config, a: Args) -> anyhow::Result<()> {
    let stop = shutdown_token(None);
    crate::mcp::stdio::run(&cfg, a.admin, &a.name, stop)
        .await
        .map_err(anyhow::Error::msg)
}
