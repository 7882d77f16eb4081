//! `taskstream serve`: the control plane — the REST API under `/api/v1/` (and `/health`,
//! `/ready`) on `api.listen` — until SIGINT/SIGTERM. A thin layer over
//! [`crate::api::serve`]: refusals to start (a token whose secret cannot be read, open
//! access on a public address) are errors that name the setting and the fix.

use std::net::SocketAddr;

use anyhow::Context;

use super::process::shutdown_token;
use crate::config::Config;

/// `serve` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Listen address; overrides `api.listen` and TASKSTREAM_API_LISTEN.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Exit after this long (for tests); default: run until signalled.
    #[arg(long, value_parser = super::parse::parse_duration)]
    run_for: Option<std::time::Duration>,
}

pub(crate) async fn run(cfg: Config, a: Args) -> anyhow::Result<()> {
    let stop = shutdown_token(a.run_for);
    let server = crate::api::serve(&cfg, a.listen, stop)
        .await
        .map_err(anyhow::Error::msg)
        .context("cannot start the API")?;
    server.done.await.context("the API server failed")?;
    Ok(())
}
