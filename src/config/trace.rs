//! The `[tracing]` table: where spans are exported over OTLP (issue 12.7).
//!
//! ```toml
//! [tracing]
//! otlp_endpoint = "http://otel-collector:4318"  # off when unset; env TASKSTREAM_TRACING_OTLP_ENDPOINT
//! service_name = "taskstream"                  # the resource's service.name
//! sample_ratio = 1.0                           # share of the traces started here that are kept
//! export_interval_ms = 1000                    # the batch processor's delay between exports
//! timeout_ms = 10000                           # one export request's time limit
//! ```
//!
//! # Why off by default
//!
//! An exporter pointed at nothing retries into the void and a collector that is slow
//! holds memory: export is a decision an operator makes, so nothing is exported and no
//! span is built until `otlp_endpoint` is set ([`crate::telemetry`] checks one
//! `OnceLock` on the hot path). The endpoint is the collector's base URL (OTLP/HTTP,
//! protobuf; port 4318 by convention); `/v1/traces` is appended unless the URL already
//! has a path, as the OpenTelemetry SDKs do with `OTEL_EXPORTER_OTLP_ENDPOINT`. Headers
//! for a hosted collector come from the standard `OTEL_EXPORTER_OTLP_HEADERS`, so an API
//! key never sits in this file.

use serde::{Deserialize, Serialize};

/// The `[tracing]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// The OTLP/HTTP collector, e.g. `http://127.0.0.1:4318`; unset: no export.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported resource; unset: `OTEL_SERVICE_NAME`, else
    /// `taskstream`.
    pub service_name: Option<String>,
    /// Share (0 to 1) of the traces that start here (an enqueue without a `traceparent`,
    /// a saga started without one) that are sampled. A task or saga that arrives with a
    /// `traceparent` follows its sampled flag, so one trace is kept or dropped whole.
    pub sample_ratio: f64,
    /// Delay between two exports of the batch processor, in ms.
    pub export_interval_ms: u64,
    /// Time limit of one export request, in ms.
    pub timeout_ms: u64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            service_name: None,
            sample_ratio: 1.0,
            export_interval_ms: 1000,
            timeout_ms: 10_000,
        }
    }
}

impl TracingConfig {
    /// The URL export requests go to: the endpoint with `/v1/traces` appended when it has
    /// no path of its own. `None` when export is off.
    pub fn traces_url(&self) -> Option<String> {
        let e = self.otlp_endpoint.as_deref()?.trim();
        let after_scheme = e.split_once("://").map(|(_, r)| r).unwrap_or(e);
        let has_path = after_scheme
            .find('/')
            .is_some_and(|i| !after_scheme[i..].trim_end_matches('/').is_empty());
        Some(if has_path {
            e.to_string()
        } else {
            format!("{}/v1/traces", e.trim_end_matches('/'))
        })
    }

    /// What is wrong with the table, as `(key, reason)` pairs.
    pub(crate) fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let k = |s: &str| format!("tracing.{s}");
        if let Some(e) = &self.otlp_endpoint {
            let t = e.trim();
            let rest = t
                .strip_prefix("http://")
                .or_else(|| t.strip_prefix("https://"));
            match rest {
                None => p.push((
                    k("otlp_endpoint"),
                    format!(
                        "{e:?} is not an http:// or https:// URL (OTLP over HTTP, e.g. \"http://127.0.0.1:4318\")"
                    ),
                )),
                Some(r) if r.is_empty() || r.starts_with('/') => p.push((
                    k("otlp_endpoint"),
                    format!("{e:?} has no host (e.g. \"http://otel-collector:4318\")"),
                )),
                Some(_) => {}
            }
            if !cfg!(feature = "otel") {
                p.push((
                    k("otlp_endpoint"),
                    "this build has no OpenTelemetry export: build with the `otel` feature (on by default) or remove the setting".into(),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            p.push((
                k("sample_ratio"),
                format!("must be between 0 and 1, got {}", self.sample_ratio),
            ));
        }
        if self.export_interval_ms == 0 || self.export_interval_ms > 60_000 {
            p.push((
                k("export_interval_ms"),
                format!("must be 1 to 60000, got {}", self.export_interval_ms),
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            p.push((
                k("timeout_ms"),
                format!("must be 1 to 60000, got {}", self.timeout_ms),
            ));
        }
        if self
            .service_name
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            p.push((k("service_name"), "must not be empty".into()));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(e: &str) -> TracingConfig {
        TracingConfig {
            otlp_endpoint: Some(e.into()),
            ..TracingConfig::default()
        }
    }

    #[test]
    fn the_traces_path_is_appended_to_a_base_url_only() {
        assert_eq!(TracingConfig::default().traces_url(), None);
        assert_eq!(
            with("http://c:4318").traces_url().unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            with("http://c:4318/").traces_url().unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            with("https://c/otlp/v1/traces").traces_url().unwrap(),
            "https://c/otlp/v1/traces"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let keys = |c: TracingConfig| c.problems().into_iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(keys(with("127.0.0.1:4318")), ["tracing.otlp_endpoint"]);
        assert_eq!(keys(with("http://")), ["tracing.otlp_endpoint"]);
        assert!(keys(with("http://c:4318")).is_empty());
        let c = TracingConfig {
            sample_ratio: 1.5,
            export_interval_ms: 0,
            timeout_ms: 0,
            service_name: Some(" ".into()),
            ..TracingConfig::default()
        };
        assert_eq!(
            keys(c),
            [
                "tracing.sample_ratio",
                "tracing.export_interval_ms",
                "tracing.timeout_ms",
                "tracing.service_name"
            ]
        );
    }
}
