//! `taskstream saga start|show|list|abort`: the saga operations of `crate::saga::ops`.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

use super::output::{escape_controls, out, outln};

/// `saga` actions.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Action {
    /// Start a saga; prints its id.
    Start {
        /// Saga definition name (from `[[sagas]]`, or `demo` with builtin handlers).
        name: String,
        /// Input JSON every step receives.
        #[arg(long, default_value = "{}")]
        input: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a saga: state, steps, timings, attempts, errors, history.
    Show {
        /// Saga id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List sagas, most recently changed first.
    List {
        /// Only this state (pending, running, compensating, completed, rolled_back,
        /// failed, or active).
        #[arg(long)]
        state: Option<String>,
        /// Most sagas to list.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Abort a saga: it stops and compensates its completed steps in reverse order.
    Abort {
        /// Saga id.
        id: String,
        /// Why (recorded in its history).
        #[arg(long, default_value = "aborted by an operator")]
        reason: String,
    },
}

pub(crate) async fn run(cfg: Config, action: Action) -> anyhow::Result<()> {
    use crate::saga::ops;
    let mut conn = crate::rdb::connect(
        &cfg.redis,
        &CancellationToken::new(),
        crate::rdb::ClientName::process(crate::rdb::Role::Cli),
    )
    .await?;
    let defs = crate::saga::configured(&cfg)?;
    match action {
        Action::Start { name, input, json } => {
            let input: serde_json::Value =
                serde_json::from_str(&input).context("--input must be JSON")?;
            let id = ops::start(&mut conn, &defs, &name, input).await?;
            if json {
                outln!("{}", serde_json::json!({"saga_id": id}));
            } else {
                outln!("{id}");
            }
        }
        Action::Show { id, json } => {
            let v = ops::show(&mut conn, &id).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                // Step errors and outputs are written by handlers: escape them.
                out!("{}", escape_controls(&v.render(), true));
            }
        }
        Action::List { state, limit, json } => {
            let v = ops::list(&mut conn, state.as_deref(), limit).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let text = crate::saga::view::render_list(&v, crate::task::now_ms());
                out!("{}", escape_controls(&text, true));
            }
        }
        Action::Abort { id, reason } => {
            let state = ops::abort(&mut conn, &defs, &id, &reason).await?;
            outln!("saga {id}: {state}");
        }
    }
    Ok(())
}
