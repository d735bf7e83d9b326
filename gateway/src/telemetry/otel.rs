//! Distributed tracing: `tracing` spans exported over OTLP/gRPC, and W3C trace context
//! (`traceparent`, `tracestate`) taken from callers and passed on to every hop.
//!
//! Tracing runs when the configuration has a `telemetry.tracing` section or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` variable is set, and
//! `OTEL_SDK_DISABLED` is not `true`. Off, no span is ever created (no subscriber layer is
//! interested in them) and trace headers pass through the proxy untouched, like any header.
//!
//! Settings come from the configuration first and the `OTEL_*` variables second, as the
//! OpenTelemetry specification orders them: the endpoint (`OTEL_EXPORTER_OTLP_*ENDPOINT`,
//! `_HEADERS`, `_TIMEOUT`, read by the exporter), the service name (`OTEL_SERVICE_NAME`),
//! resource attributes (`OTEL_RESOURCE_ATTRIBUTES`), the sampler (`OTEL_TRACES_SAMPLER`,
//! `OTEL_TRACES_SAMPLER_ARG`) and the batch processor (`OTEL_BSP_*`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderMap;
use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `telemetry.tracing` section, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TracingConfig {
    /// `service.name`; default `OTEL_SERVICE_NAME`, then the role's name.
    pub service_name: Option<String>,
    /// Share of new traces recorded, 0.0 to 1.0; a caller's sampling decision is followed.
    /// Default: `OTEL_TRACES_SAMPLER(_ARG)`, then 1.0.
    pub sample_rate: Option<f64>,
    /// The OTLP/gRPC collector, e.g. `http://otel-collector:4317`; default from `OTEL_*`.
    pub endpoint: Option<String>,
    /// Export timeout.
    pub timeout: Option<Duration>,
    /// Extra resource attributes (e.g. `deployment.environment.name`).
    pub resource_attributes: BTreeMap<String, String>,
    /// Follow the sampling decision of callers that are not trusted proxies too
    /// (`forwardedHeaders.trustedIPs`). Off, such a caller's trace is continued but whether it
    /// is recorded is decided by `sampleRate`: a caller cannot make every request expensive.
    pub trust_caller_sampling: bool,
}

static ENABLED: AtomicBool = AtomicBool::new(false);
/// The share of new traces recorded, as the bits of an `f64`.
static SAMPLE_RATE: AtomicU64 = AtomicU64::new(0);

/// Marks tracing as running (once its subscriber layer is installed) at `rate`.
pub(super) fn set_enabled(rate: f64) {
    SAMPLE_RATE.store(rate.to_bits(), Ordering::Relaxed);
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether spans made now join a recorded trace: tracing runs and the current span is one.
/// Spans are only ever children; a new trace starts only where sampling decided so.
#[inline]
pub fn in_recorded_trace() -> bool {
    enabled() && !Span::current().is_disabled()
}

/// `tracing::info_span!` when [`in_recorded_trace`], else a disabled span: work outside a
/// recorded trace (tracing off, a request not sampled) makes no span at all.
macro_rules! child_span {
    ($($args:tt)*) => {
        if $crate::telemetry::otel::in_recorded_trace() {
            ::tracing::info_span!($($args)*)
        } else {
            ::tracing::Span::none()
        }
    };
}
pub(crate) use child_span;

/// The sample rate the `OTEL_TRACES_SAMPLER` variables ask for (the ratio samplers, on, off);
/// 1.0 when unset or unknown, as the specification's default sampler.
fn rate_from_env() -> f64 {
    let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG")
        .ok()
        .and_then(|a| a.trim().parse::<f64>().ok())
        .filter(|r| (0.0..=1.0).contains(r));
    match std::env::var("OTEL_TRACES_SAMPLER")
        .as_deref()
        .map(str::trim)
    {
        Ok("always_off" | "parentbased_always_off") => 0.0,
        Ok("traceidratio" | "parentbased_traceidratio") => arg.unwrap_or(1.0),
        _ => 1.0,
    }
}

/// Whether to record a trace this node starts (a request without a caller's trace context,
/// a background refresh): one draw at the sample rate. The decision is taken here, before
/// any span exists, so that work which is not recorded costs no span at all.
pub fn sample_root() -> bool {
    if !enabled() {
        return false;
    }
    let rate = f64::from_bits(SAMPLE_RATE.load(Ordering::Relaxed));
    rate >= 1.0 || (rate > 0.0 && rand::random::<f64>() < rate)
}

/// How one incoming request is traced.
#[derive(Debug)]
pub enum Incoming {
    /// Tracing is off: trace headers pass through as sent.
    Off,
    /// Recorded, continuing the caller's span when the context holds one.
    Recorded(opentelemetry::Context),
    /// Not recorded; the upstream still gets a W3C context saying so (`sampled` = 0), so
    /// services behind the gateway make the same decision.
    Unrecorded {
        /// The trace (the caller's, or a new one).
        trace_id: TraceId,
        /// What the upstream receives as `traceparent`.
        traceparent: http::HeaderValue,
    },
}

impl Incoming {
    /// Decides for a request with `headers`: the caller's sampling decision when it sent a
    /// trace context and `trust_caller` (a parent-based sampler), a draw at the sample rate
    /// otherwise.
    pub fn decide(headers: &HeaderMap, trust_caller: bool) -> Self {
        if !enabled() {
            return Self::Off;
        }
        let cx = propagator().extract(&HeaderExtractor(headers));
        let parent = cx.span().span_context().clone();
        let record = match parent.is_valid() && trust_caller {
            true => parent.is_sampled(),
            false => sample_root(),
        };
        if record {
            return Self::Recorded(cx);
        }
        let trace_id = match parent.is_valid() {
            true => parent.trace_id(),
            false => TraceId::from_bytes(rand::random()),
        };
        let span_id = SpanId::from_bytes(rand::random());
        let traceparent = http::HeaderValue::from_str(&format!("00-{trace_id}-{span_id}-00"))
            .expect("hex digits and dashes are a valid header value");
        Self::Unrecorded {
            trace_id,
            traceparent,
        }
    }

    /// Makes `span` continue the caller's trace, when recording one.
    pub fn apply_to(self, span: &Span) {
        if let Self::Recorded(cx) = self
            && cx.span().span_context().is_valid()
        {
            let _ = span.set_parent(cx);
        }
    }
}

/// Whether spans are being exported (set once at start).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether the `OTEL_*` environment asks for tracing without a configuration section.
fn wanted_by_env() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none");
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start trace export: {0}")]
pub struct TracingError(String);

/// The tracer provider, its tracer and the sample rate for a process of `role` (e.g.
/// `tokengate-gateway`), or `None` when tracing is off.
pub(super) fn provider(
    cfg: Option<&TracingConfig>,
    role: &str,
    instance: Option<&str>,
) -> Result<Option<(SdkTracerProvider, SdkTracer, f64)>, TracingError> {
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let cfg = match cfg {
        Some(c) => c.clone(),
        None if wanted_by_env() => TracingConfig::default(),
        None => return Ok(None),
    };
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = &cfg.endpoint {
        exporter = exporter.with_endpoint(endpoint.clone());
    }
    if let Some(timeout) = cfg.timeout {
        exporter = exporter.with_timeout(timeout);
    }
    let endpoint = cfg.endpoint.clone().or_else(|| {
        [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .find_map(|v| std::env::var(v).ok())
    });
    if endpoint.is_some_and(|e| e.starts_with("https://")) {
        // Verified against the Mozilla root set; the collector's name must match its cert.
        exporter =
            exporter.with_tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots());
    }
    let exporter = exporter.build().map_err(|e| TracingError(e.to_string()))?;

    let mut resource =
        Resource::builder().with_attribute(KeyValue::new("tokengate.role", role.to_owned()));
    match &cfg.service_name {
        Some(name) => resource = resource.with_service_name(name.clone()),
        None if std::env::var("OTEL_SERVICE_NAME").is_err() => {
            resource = resource.with_service_name(role.to_owned());
        }
        None => {}
    }
    if let Some(id) = instance {
        resource = resource.with_attribute(KeyValue::new("service.instance.id", id.to_owned()));
    }
    for (k, v) in &cfg.resource_attributes {
        resource = resource.with_attribute(KeyValue::new(k.clone(), v.clone()));
    }
    // Which traces to record is decided before spans are made (`Incoming`, `sample_root`);
    // the SDK records every span it is given, and follows a caller's decision.
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .build();
    let tracer = provider.tracer("tokengate");
    let rate = cfg.sample_rate.unwrap_or_else(rate_from_env);
    Ok(Some((provider, tracer, rate)))
}

fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Makes `span` continue the trace the caller's headers carry, if any (tracing on only).
pub fn continue_from(span: &Span, headers: &HeaderMap) {
    if !enabled() {
        return;
    }
    let cx = propagator().extract(&HeaderExtractor(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The W3C trace context headers.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// Writes the current span's trace context into `headers`, replacing what the caller sent.
/// Outside a recorded span (tracing off, or a request not sampled) `headers` stay as they
/// are.
pub fn inject(headers: &mut HeaderMap) {
    let span = Span::current();
    if !enabled() || span.is_disabled() {
        return;
    }
    headers.remove(TRACEPARENT);
    headers.remove(TRACESTATE);
    propagator().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// The current span's `traceparent` when it is being recorded: carried inside Raft log
/// entries so that every replica's apply joins the writer's trace.
pub fn current_traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = Span::current().context();
    if !cx.span().span_context().is_sampled() {
        return None;
    }
    let mut headers = HeaderMap::new();
    propagator().inject_context(&cx, &mut HeaderInjector(&mut headers));
    headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Makes `span` a child of the span a `traceparent` names.
pub fn continue_from_traceparent(span: &Span, traceparent: &str) {
    let mut headers = HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(traceparent) {
        headers.insert(TRACEPARENT, v);
        continue_from(span, &headers);
    }
}

/// Links `span` to `other` (work done for several traces at once, like a group commit).
pub fn link(span: &Span, other: &Span) {
    if enabled() {
        span.add_link(other.context().span().span_context().clone());
    }
}

/// The trace id of `span` when tracing runs. Reading it starts the span's OpenTelemetry
/// span, after which its name can no longer change.
pub fn span_trace_id(span: &Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let sc = span.context().span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The trace id in the caller's `traceparent`, if well-formed: what an access log names
/// when tracing is off (the header itself goes on to the upstream as sent).
pub fn caller_trace_id(headers: &HeaderMap) -> Option<String> {
    let tp = headers.get(TRACEPARENT)?.to_str().ok()?;
    let mut parts = tp.split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    let well_formed = id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && id.bytes().any(|b| b != b'0');
    well_formed.then(|| id.to_owned())
}

/// A tonic interceptor that puts the current span's trace context into the call's metadata.
pub fn inject_grpc(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    if enabled() {
        let mut headers = HeaderMap::new();
        propagator().inject_context(
            &Span::current().context(),
            &mut HeaderInjector(&mut headers),
        );
        for (name, value) in &headers {
            if let Ok(v) = tonic::metadata::MetadataValue::try_from(value.as_bytes()) {
                req.metadata_mut().insert(
                    tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes())
                        .expect("trace header names are valid metadata keys"),
                    v,
                );
            }
        }
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_trace_id_is_logged_only_when_well_formed() {
        let with = |tp: &str| {
            let mut h = HeaderMap::new();
            h.insert("traceparent", tp.parse().unwrap());
            caller_trace_id(&h)
        };
        assert_eq!(
            with("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            with("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            with("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(with("00-short-00f067aa0ba902b7-01"), None);
        assert_eq!(
            with("00-4bf92f3577b34da6a3ce929d0e0e473\"-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(caller_trace_id(&HeaderMap::new()), None);
    }
}
