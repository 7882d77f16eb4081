//! The exporter: finished [`Span`] records → the SDK's batch span processor → OTLP/HTTP
//! protobuf, over the reqwest client already in the tree.
//!
//! The batch processor runs its own thread and blocks on each export; the request it
//! makes is spawned onto the Tokio runtime [`install`] ran in, whose reactor reqwest
//! needs (a thread of the SDK's has none: awaiting reqwest there panics "there is no
//! reactor running").

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::SpanExporter;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};
use opentelemetry_sdk::Resource;

use super::{Kind, Span, Value, EXPORT_BATCH, MAX_QUEUED_SPANS};
use crate::config::TracingConfig;
use crate::error::{Error, Result};

/// The installed exporter.
pub(super) struct Exporter {
    /// The SDK's batch processor (queue, thread, batching, retries none).
    processor: BatchSpanProcessor,
    /// `taskstream` and its version, on every span.
    scope: InstrumentationScope,
    /// `[tracing] sample_ratio`.
    pub(super) sample_ratio: f64,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// The exporter, when [`install`] ran.
#[inline]
pub(super) fn get() -> Option<&'static Exporter> {
    EXPORTER.get()
}

/// Builds and installs the exporter for `url`.
pub(super) fn install(cfg: &TracingConfig, url: &str) -> Result<()> {
    let bad = |reason: String| Error::Invalid {
        what: "tracing.otlp_endpoint",
        reason,
    };
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|_| bad("span export must be started inside the Tokio runtime".into()))?;
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| bad(format!("cannot build the HTTP client: {e}")))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Client {
            http,
            rt,
            url: url.to_string(),
        })
        .with_endpoint(url)
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(timeout)
        .build()
        .map_err(|e| bad(format!("{url}: {e}")))?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(MAX_QUEUED_SPANS)
        .with_max_export_batch_size(EXPORT_BATCH)
        .with_scheduled_delay(Duration::from_millis(cfg.export_interval_ms))
        .build();
    let mut processor = BatchSpanProcessor::builder(Counting(exporter))
        .with_batch_config(batch)
        .build();
    let service = cfg
        .service_name
        .clone()
        .or_else(|| {
            std::env::var("OTEL_SERVICE_NAME")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "taskstream".into());
    let resource = Resource::builder()
        .with_service_name(service)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attribute(KeyValue::new(
            "service.instance.id",
            format!("{}-{}", crate::rdb::hostname(), std::process::id()),
        ))
        .build();
    processor.set_resource(&resource);
    let scope = InstrumentationScope::builder("taskstream")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    EXPORTER
        .set(Exporter {
            processor,
            scope,
            sample_ratio: cfg.sample_ratio,
        })
        .map_err(|_| bad("span export was started twice in one process".into()))
}

/// Flushes and stops (blocking: call it off the runtime's workers).
pub(super) fn shutdown() {
    if let Some(e) = get() {
        let _ = e.processor.shutdown();
    }
}

/// Spans handed to the batch processor, exported, and lost in a failed export. What
/// was handed and is neither, once the queue is flushed, was dropped on a full queue.
static EMITTED: AtomicU64 = AtomicU64::new(0);
static EXPORTED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// The counters of this process so far.
pub(super) fn counts() -> super::SpanCounts {
    super::SpanCounts {
        emitted: EMITTED.load(Ordering::Relaxed),
        exported: EXPORTED.load(Ordering::Relaxed),
        failed: FAILED.load(Ordering::Relaxed),
    }
}

/// The OTLP exporter, counting what each batch became (the SDK's processor drops on a
/// full queue without telling anyone; handed − exported − failed is that count).
#[derive(Debug)]
struct Counting(opentelemetry_otlp::SpanExporter);

impl SpanExporter for Counting {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let r = self.0.export(batch).await;
        let (c, label) = match r {
            Ok(()) => (&EXPORTED, "exported"),
            Err(_) => (&FAILED, "failed"),
        };
        c.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(crate::metrics::TRACE_SPANS_TOTAL, "result" => label).increment(n);
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

impl Exporter {
    /// Hands one finished span to the batch processor (never blocks: a full queue drops).
    pub(super) fn emit(&self, s: Span, end: SystemTime, error: Option<String>) {
        let flags = TraceFlags::SAMPLED;
        let data = SpanData {
            span_context: SpanContext::new(
                TraceId::from(s.ctx.trace_id),
                SpanId::from(s.ctx.span_id),
                flags,
                false,
                TraceState::default(),
            ),
            parent_span_id: s.parent.map(SpanId::from).unwrap_or(SpanId::INVALID),
            parent_span_is_remote: s.parent_remote,
            span_kind: match s.kind {
                Kind::Producer => SpanKind::Producer,
                Kind::Consumer => SpanKind::Consumer,
                Kind::Internal => SpanKind::Internal,
            },
            name: Cow::Owned(s.name),
            start_time: s.start,
            end_time: end.max(s.start),
            attributes: s
                .attrs
                .into_iter()
                .map(|(k, v)| match v {
                    Value::Str(t) => KeyValue::new(k, t),
                    Value::Int(n) => KeyValue::new(k, n),
                })
                .collect(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match error {
                Some(e) => Status::error(e),
                None => Status::Unset,
            },
            instrumentation_scope: self.scope.clone(),
        };
        EMITTED.fetch_add(1, Ordering::Relaxed);
        self.processor.on_end(data);
    }
}

/// OTLP/HTTP requests over reqwest on the process's Tokio runtime.
#[derive(Debug)]
struct Client {
    /// The client (its timeout is `[tracing] timeout_ms`).
    http: reqwest::Client,
    /// The runtime requests run on.
    rt: tokio::runtime::Handle,
    /// For the log.
    url: String,
}

/// Failed exports since the last warning, and when that was (Unix s).
static FAILURES: AtomicU64 = AtomicU64::new(0);
static LAST_WARNING: AtomicU64 = AtomicU64::new(0);

/// Counts a failed export; warns at most once a minute, with the count.
fn failed(url: &str, why: &str) {
    metrics::counter!(crate::metrics::TRACE_EXPORTS_TOTAL, "result" => "error").increment(1);
    let n = FAILURES.fetch_add(1, Ordering::Relaxed) + 1;
    let now = crate::task::now_ms() / 1000;
    let last = LAST_WARNING.load(Ordering::Relaxed);
    if now >= last + 60
        && LAST_WARNING
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        FAILURES.store(0, Ordering::Relaxed);
        tracing::warn!(endpoint = %url, failures = n, error = %why, "span export failed; those spans are dropped (is the OTLP collector up?)");
    }
}

/// The largest collector response read (it is a small protobuf or an error text).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(
        &self,
        request: Request<Bytes>,
    ) -> std::result::Result<Response<Bytes>, HttpError> {
        let http = self.http.clone();
        let r = self
            .rt
            .spawn(async move {
                let (parts, body) = request.into_parts();
                let mut resp = http
                    .request(parts.method, parts.uri.to_string())
                    .headers(parts.headers)
                    .body(body)
                    .send()
                    .await?;
                let status = resp.status();
                let headers = resp.headers().clone();
                let mut body = Vec::new();
                while let Some(chunk) = resp.chunk().await? {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_RESPONSE_BYTES {
                        body.truncate(MAX_RESPONSE_BYTES);
                        break;
                    }
                }
                let mut out = Response::new(Bytes::from(body));
                *out.status_mut() = status;
                *out.headers_mut() = headers;
                Ok::<_, reqwest::Error>(out)
            })
            .await;
        match r {
            Ok(Ok(resp)) if resp.status().is_success() => {
                metrics::counter!(crate::metrics::TRACE_EXPORTS_TOTAL, "result" => "ok")
                    .increment(1);
                Ok(resp)
            }
            Ok(Ok(resp)) => {
                failed(&self.url, &format!("HTTP {}", resp.status()));
                Ok(resp)
            }
            Ok(Err(e)) => {
                failed(&self.url, &e.to_string());
                Err(Box::new(e))
            }
            Err(e) => {
                failed(&self.url, &e.to_string());
                Err(Box::new(e))
            }
        }
    }
}
