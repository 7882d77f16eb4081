//! `taskstream orchestrator`: a process that only drives sagas (several may run at once).

use crate::config::Config;

use super::process::{shutdown_token, start_http};

pub(crate) async fn run(cfg: Config, a: super::worker::Args) -> anyhow::Result<()> {
    let shutdown = shutdown_token(a.run_for);
    start_http(&cfg, &shutdown).await?;
    let defs = crate::saga::configured(&cfg)?;
    if defs.is_empty() {
        tracing::warn!("no saga definitions: add [[sagas]] tables (or worker.builtin_handlers for the demo saga)");
    }
    crate::saga::Orchestrator::new(&cfg, defs)
        .run(shutdown)
        .await?;
    Ok(())
}
