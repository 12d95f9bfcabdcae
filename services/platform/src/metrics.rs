//! Business and plumbing counters, recorded through the global OpenTelemetry meter: scraped from the
//! admin port's `/metrics` and pushed over OTLP when an endpoint is configured (free no-ops before
//! `telemetry::init`). Names are listed in docs/operations.md; the dashboards in deploy/grafana
//! query them, and the end-to-end metrics test checks that every queried name is served.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram};
use std::sync::OnceLock;

/// Every instrument Whistle records.
#[derive(Debug)]
pub struct Metrics {
    pub notices_delivered: Counter<u64>,
    pub outbox_published: Counter<u64>,
    pub outbox_publish_failures: Counter<u64>,
    /// Readings of the outbox table by the relay, by `reason` (`start`, `told`, `retry`, `poll`):
    /// events handed over in memory need none (docs/design-notes.md, "The outbox relay").
    pub outbox_table_reads: Counter<u64>,
    pub events_applied: Counter<u64>,
    pub events_duplicate: Counter<u64>,
    pub events_rejected: Counter<u64>,
    /// Events a consumer had no use for, acknowledged without a transaction, by `consumer`.
    pub events_skipped: Counter<u64>,
    pub event_delivery_lag: Histogram<f64>,
    pub acknowledgement_latency: Histogram<f64>,
    /// Department actions dispatch wrote per transaction.
    pub action_batch_size: Histogram<u64>,
    /// Events a consumer applied per transaction (those it skipped not counted), by `consumer`.
    pub consumer_batch_size: Histogram<u64>,
    /// How long a consumer's batch took, from its transaction's start to the commit, by `consumer`.
    pub consumer_batch_duration: Histogram<f64>,
    pub outbox_parked: Counter<u64>,
    pub outbox_backlog: Gauge<u64>,
    pub outbox_oldest_unsent_age: Gauge<f64>,
    pub dependency_up: Gauge<u64>,
    /// Messages of a stream not yet delivered to a consumer, from the last delivered message.
    pub consumer_pending: Gauge<u64>,
    /// Messages JetStream delivered again (an earlier delivery was not acknowledged in time).
    pub consumer_redeliveries: Counter<u64>,
    /// Calls refused with RESOURCE_EXHAUSTED because their caller exceeded its rate, by `rpc`.
    pub grpc_rate_limited: Counter<u64>,
    /// gRPC calls served, by `rpc.service`, `rpc.method` and `rpc.grpc.status_code`.
    pub rpc_server_duration: Histogram<f64>,
    pub assignments_overdue: Counter<u64>,
    pub cases_escalated: Counter<u64>,
    /// Cases dispatch flagged recurrent (几经反复, intake's `case.recurrent`), by category.
    pub cases_recurrent: Counter<u64>,
    /// Calls refused by authentication or authorization, by `reason` and `service`
    /// (`whistle_auth_refusals_total`).
    pub auth_refusals: Counter<u64>,
}

impl Metrics {
    /// Puts every counter at 0 before its first event, so a dashboard shows 0 rather than
    /// "No data". Counters with labels get their labelled series when the label is known (a
    /// consumer's name when it starts: [`Metrics::initialise_consumer`]).
    pub fn initialise(&self) {
        for counter in [
            &self.notices_delivered,
            &self.outbox_published,
            &self.outbox_publish_failures,
            &self.outbox_table_reads,
            &self.outbox_parked,
            &self.events_applied,
            &self.events_duplicate,
            &self.events_rejected,
            &self.events_skipped,
            &self.consumer_redeliveries,
            &self.assignments_overdue,
            &self.cases_escalated,
            &self.cases_recurrent,
            &self.auth_refusals,
        ] {
            counter.add(0, &[]);
        }
    }

    /// Puts a consumer's counters at 0 when it starts.
    pub fn initialise_consumer(&self, consumer: &str) {
        let attributes = [attribute("consumer", consumer.to_string())];
        for counter in [
            &self.events_applied,
            &self.events_duplicate,
            &self.events_rejected,
            &self.events_skipped,
            &self.consumer_redeliveries,
        ] {
            counter.add(0, &attributes);
        }
    }

    /// Records whether the database and NATS answered the last health probe (1 up, 0 down).
    pub fn set_dependencies_up(&self, database: bool, nats: bool) {
        self.dependency_up
            .record(u64::from(database), &[attribute("dependency", "database")]);
        self.dependency_up
            .record(u64::from(nats), &[attribute("dependency", "nats")]);
    }
}

/// The instruments, created on first use (after `telemetry::init` installed the meter provider).
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = opentelemetry::global::meter("whistle");
        Metrics {
            notices_delivered: meter
                .u64_counter("whistle.notices.delivered")
                .with_description("notices sent to department subscribers")
                .build(),
            outbox_published: meter
                .u64_counter("whistle.events.published")
                .with_description("events published from the outbox, by kind (whistle.issued, ...) and department")
                .build(),
            outbox_publish_failures: meter
                .u64_counter("whistle.outbox.publish_failures")
                .with_description("outbox relay rounds that failed to publish")
                .build(),
            outbox_table_reads: meter
                .u64_counter("whistle.outbox.table_reads")
                .with_description("readings of the outbox table by the relay, by reason (start, told, retry, poll)")
                .build(),
            events_applied: meter
                .u64_counter("whistle.inbox.applied")
                .with_description("events applied by consumers")
                .build(),
            events_duplicate: meter
                .u64_counter("whistle.inbox.duplicates")
                .with_description("redelivered events skipped by consumers")
                .build(),
            events_rejected: meter
                .u64_counter("whistle.inbox.rejected")
                .with_description("events that can never apply, dropped and recorded")
                .build(),
            events_skipped: meter
                .u64_counter("whistle.inbox.skipped")
                .with_description("events a consumer had no use for, acknowledged without a transaction")
                .build(),
            event_delivery_lag: meter
                .f64_histogram("whistle.event.delivery_lag")
                .with_unit("s")
                .with_description("time from an event's occurrence to a consumer applying it")
                .with_boundaries(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                ])
                .build(),
            acknowledgement_latency: meter
                .f64_histogram("whistle.acknowledgement.latency")
                .with_unit("s")
                .with_description("time from a whistle to the department's acknowledgement (报到)")
                .with_boundaries(vec![
                    30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
                ])
                .build(),
            action_batch_size: meter
                .u64_histogram("whistle.dispatch.action_batch")
                .with_description("department actions dispatch wrote in one transaction (dispatch.action_batch)")
                .with_boundaries(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0])
                .build(),
            consumer_batch_size: meter
                .u64_histogram("whistle.consumer.batch")
                .with_description("events a consumer applied in one transaction")
                .with_boundaries(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0])
                .build(),
            consumer_batch_duration: meter
                .f64_histogram("whistle.consumer.batch_duration")
                .with_unit("s")
                .with_description("time a consumer took to apply one batch, commit included")
                .with_boundaries(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ])
                .build(),
            outbox_parked: meter
                .u64_counter("whistle.outbox.parked")
                .with_description("events parked because they could not be published (see whistle outbox list-parked)")
                .build(),
            outbox_backlog: meter
                .u64_gauge("whistle.outbox.backlog")
                .with_description("committed events not yet published (parked ones excluded)")
                .build(),
            outbox_oldest_unsent_age: meter
                .f64_gauge("whistle.outbox.oldest_unsent_age")
                .with_unit("s")
                .with_description("age of the oldest committed event not yet published")
                .build(),
            dependency_up: meter
                .u64_gauge("whistle.dependency.up")
                .with_description("1 while a dependency (database, nats) answered the last health probe")
                .build(),
            consumer_pending: meter
                .u64_gauge("whistle.consumer.pending")
                .with_description("messages of the stream not yet delivered to the consumer")
                .build(),
            consumer_redeliveries: meter
                .u64_counter("whistle.consumer.redeliveries")
                .with_description("messages delivered again because an earlier delivery was not acknowledged")
                .build(),
            grpc_rate_limited: meter
                .u64_counter("whistle.grpc.rate_limited")
                .with_description("calls refused because their caller exceeded grpc.rate_per_second")
                .build(),
            rpc_server_duration: meter
                .f64_histogram("rpc.server.duration")
                .with_unit("ms")
                .with_description("gRPC calls served: time to the response headers (OpenTelemetry RPC semantic conventions)")
                .with_boundaries(vec![
                    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
                ])
                .build(),
            assignments_overdue: meter
                .u64_counter("whistle.assignments.overdue")
                .with_description("clocks that passed their deadline unmet, by clock and department")
                .build(),
            cases_escalated: meter
                .u64_counter("whistle.cases.escalated")
                .with_description("escalations to supervision (督办), by department and supervision department")
                .build(),
            cases_recurrent: meter
                .u64_counter("whistle.cases.recurrent")
                .with_description("cases flagged recurrent (几经反复), by category")
                .build(),
            auth_refusals: meter
                .u64_counter("whistle.auth.refusals")
                .with_description("calls refused: no or bad credential (UNAUTHENTICATED) or a role or region that may not (PERMISSION_DENIED), by reason and service")
                .build(),
        }
    })
}

/// A `KeyValue` attribute, shorter to write.
pub fn attribute(key: &'static str, value: impl Into<opentelemetry::Value>) -> KeyValue {
    KeyValue::new(key, value)
}

/// Attributes of a published event from its subject: `kind` (`case.reported`, `whistle.issued`),
/// `street`, and `department` for whistle events.
pub fn subject_attributes(subject: &str) -> Vec<KeyValue> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let (Some(family), Some(name)) = (tokens.first(), tokens.last()) else {
        return Vec::new();
    };
    let mut attributes = vec![KeyValue::new("kind", format!("{family}.{name}"))];
    if tokens.len() >= 6 {
        attributes.push(KeyValue::new("street", tokens[4].to_string()));
    }
    if *family == "whistle" && tokens.len() == 7 {
        attributes.push(KeyValue::new("department", tokens[5].to_string()));
    }
    attributes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_become_attributes() {
        let attributes =
            subject_attributes("whistle.v1.420300.420303.chechenglu.zw-sanitation.issued");
        assert_eq!(
            attributes,
            vec![
                KeyValue::new("kind", "whistle.issued"),
                KeyValue::new("street", "chechenglu"),
                KeyValue::new("department", "zw-sanitation"),
            ]
        );
        assert_eq!(
            subject_attributes("case.v1.420300.420303.chechenglu.reported").len(),
            2
        );
    }
}
