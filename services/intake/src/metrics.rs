//! Intake's business counters, through the global OpenTelemetry meter like the platform's.

use opentelemetry::metrics::Counter;
use std::sync::OnceLock;

#[derive(Debug)]
pub struct IntakeMetrics {
    /// Reports that joined an open duplicate case.
    pub reports_merged: Counter<u64>,
    /// New cases flagged recurrent.
    pub reports_recurrent: Counter<u64>,
    /// Reports whose grid was found from their position.
    pub reports_located: Counter<u64>,
    /// Reports received through Open311.
    pub open311_requests: Counter<u64>,
}

pub fn metrics() -> &'static IntakeMetrics {
    static METRICS: OnceLock<IntakeMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = opentelemetry::global::meter("whistle");
        IntakeMetrics {
            reports_merged: meter
                .u64_counter("whistle.reports.merged")
                .with_description(
                    "reports that joined an open duplicate case instead of opening one",
                )
                .build(),
            reports_recurrent: meter
                .u64_counter("whistle.reports.recurrent")
                .with_description("new cases flagged recurrent (几经反复), by category")
                .build(),
            reports_located: meter
                .u64_counter("whistle.reports.located")
                .with_description("reports whose grid intake found from their position")
                .build(),
            open311_requests: meter
                .u64_counter("whistle.open311.requests")
                .with_description("Open311 GeoReport requests answered, by method and status")
                .build(),
        }
    })
}
