//! The gauge loop: samples the saga gauges (`taskstream_sagas{state}`,
//! `taskstream_sagas_overdue`) from Redis, so every instance reports the same truth
//! rather than what it happened to apply itself.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{sleep_or_stop, Ctx};
use crate::metrics as m;
use crate::task::now_ms;

/// Samples at once, then every `sample_interval_ms` until `stop` fires.
pub(super) async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    let every = Duration::from_millis(ctx.cfg.sample_interval_ms);
    loop {
        match ctx.broker.saga_counts(now_ms()).await {
            Ok(c) => {
                for (state, n) in &c.by_state {
                    metrics::gauge!(m::SAGAS, "state" => state.clone()).set(*n as f64);
                }
                metrics::gauge!(m::SAGAS_OVERDUE).set(c.overdue as f64);
            }
            Err(e) => tracing::debug!(error = %e, "sampling saga gauges failed"),
        }
        if !sleep_or_stop(&stop, every).await {
            break;
        }
    }
}
