//! Logs and traces through `tracing`, exported with OpenTelemetry (OTLP over gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set), and W3C trace context carried in NATS headers.

use crate::config::TelemetryConfig;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the exporters alive; flushes them when dropped.
pub struct Telemetry {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    otlp: bool,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Telemetry")
            .field("otlp", &self.otlp)
            .finish()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(error) = self.tracer_provider.shutdown() {
            eprintln!("telemetry: flushing traces failed: {error}");
        }
        if let Err(error) = self.meter_provider.shutdown()
            && self.otlp
        {
            eprintln!("telemetry: flushing metrics failed: {error}");
        }
    }
}

/// The registry `/metrics` renders: the process's meter provider reads into it on every scrape.
static PROMETHEUS_REGISTRY: OnceLock<prometheus::Registry> = OnceLock::new();

/// Every metric of this process in the Prometheus text format (empty before [`init`]).
pub fn render_prometheus() -> String {
    let Some(registry) = PROMETHEUS_REGISTRY.get() else {
        return String::new();
    };
    let mut text = String::new();
    if let Err(error) = prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut text) {
        tracing::warn!(%error, "rendering metrics failed");
    }
    text
}

/// Installs the global subscriber, tracer and meter for a process. Call once, from `main`,
/// inside the tokio runtime.
///
/// Logs go to stderr (colour only on a terminal, JSON with `log_format = "json"`) filtered by
/// `log_filter` (or `RUST_LOG`); spans go to OpenTelemetry filtered by `trace_filter` alone, so a
/// quiet log level never drops spans. Traces always get ids (so `traceparent` flows between
/// services); they leave the process only when `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. Metrics are always readable in the Prometheus
/// format ([`render_prometheus`], the admin port's `/metrics`) and are also pushed over OTLP when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` is set.
pub fn init(service_name: &str, config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let set = |name: &str| std::env::var_os(name).is_some_and(|value| !value.is_empty());
    let otlp_traces =
        set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let otlp_metrics =
        set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
    let otlp = otlp_traces || otlp_metrics;
    let resource = Resource::builder()
        .with_service_name(service_name.to_string())
        .build();

    let mut tracer_builder = SdkTracerProvider::builder().with_resource(resource.clone());
    let registry = PROMETHEUS_REGISTRY.get_or_init(prometheus::Registry::new);
    let prometheus_reader = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .without_target_info()
        .scope_info_enabled(false)
        .build()?;
    let mut meter_builder = SdkMeterProvider::builder()
        .with_reader(prometheus_reader)
        .with_resource(resource);
    if otlp_traces {
        let span_exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        tracer_builder = tracer_builder.with_batch_exporter(span_exporter);
    }
    if otlp_metrics {
        let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .build()?;
        meter_builder = meter_builder.with_periodic_exporter(metric_exporter);
    }
    let meter_provider = meter_builder.build();
    opentelemetry::global::set_meter_provider(meter_provider.clone());
    let tracer_provider = tracer_builder.build();
    let tracer = tracer_provider.tracer(service_name.to_string());
    opentelemetry::global::set_tracer_provider(tracer_provider.clone());
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let log_filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_filter))
        .map_err(|error| anyhow::anyhow!("telemetry.log_filter is invalid: {error}"))?;
    let trace_filter = EnvFilter::try_new(&config.trace_filter)
        .map_err(|error| anyhow::anyhow!("telemetry.trace_filter is invalid: {error}"))?;
    let ansi = std::io::stderr().is_terminal();
    let fmt_layer = if config.log_format == "json" {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .compact()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed()
    };
    tracing_subscriber::registry()
        .with(fmt_layer.with_filter(log_filter))
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(trace_filter),
        )
        .try_init()?;
    crate::metrics::metrics().initialise();
    Ok(Telemetry {
        tracer_provider,
        meter_provider,
        otlp,
    })
}

/// The `traceparent` of the current span, if it has a valid trace context.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut MapCarrier(&mut carrier));
    carrier.remove("traceparent")
}

/// Makes `span` a child of the trace named by a `traceparent` header, when there is a valid one.
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    let context = TraceContextPropagator::new().extract(&MapCarrier(&mut carrier));
    let _ = span.set_parent(context);
}

struct MapCarrier<'a>(&'a mut HashMap<String, String>);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

impl Extractor for MapCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}
