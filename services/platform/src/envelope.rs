//! The event envelope on the wire: subjects that carry region and department, CloudEvents headers,
//! W3C trace context, protobuf payload.

use crate::clock::{Clock, to_proto_timestamp};
use crate::outbox::OutboxEvent;
use prost::Message;
pub use whistle_proto::events::{Event, event::Payload};
use whistle_proto::types::{Assignment, Region};

/// A malformed envelope: a subject token that NATS cannot carry, a missing part.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("subject token {name} is invalid: {value:?}")]
    BadToken { name: &'static str, value: String },
    #[error("event has no payload")]
    NoPayload,
}

/// The family (`case`, `whistle`, `evaluation`) and name (`reported`, `issued`, ...) of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub family: &'static str,
    pub name: &'static str,
}

impl Kind {
    /// `whistle.issued`, as shown in timelines and notices.
    pub fn label(&self) -> String {
        format!("{}.{}", self.family, self.name)
    }

    /// CloudEvents `ce-type`, e.g. `whistle.case.reported.v1`.
    pub fn cloudevents_type(&self) -> String {
        format!("whistle.{}.{}.v1", self.family, self.name)
    }
}

/// The kind of a payload.
pub fn kind(payload: &Payload) -> Kind {
    let (family, name) = match payload {
        Payload::CaseReported(_) => ("case", "reported"),
        Payload::CaseMerged(_) => ("case", "merged"),
        Payload::CaseAccepted(_) => ("case", "accepted"),
        Payload::CaseRejected(_) => ("case", "rejected"),
        Payload::CaseVerified(_) => ("case", "verified"),
        Payload::CaseClosed(_) => ("case", "closed"),
        Payload::CaseReopened(_) => ("case", "reopened"),
        Payload::CaseEscalated(_) => ("case", "escalated"),
        Payload::CaseEvidenceAttached(_) => ("case", "evidence_attached"),
        Payload::CaseRecurrent(_) => ("case", "recurrent"),
        Payload::ReportSplit(_) => ("case", "split"),
        Payload::WhistleIssued(_) => ("whistle", "issued"),
        Payload::AssignmentAcknowledged(_) => ("whistle", "acknowledged"),
        Payload::AssignmentCheckedIn(_) => ("whistle", "on_site"),
        Payload::AssignmentProgressed(_) => ("whistle", "progressed"),
        Payload::AssignmentResolved(_) => ("whistle", "resolved"),
        Payload::AssignmentReturned(_) => ("whistle", "returned"),
        Payload::AssignmentOverdue(_) => ("whistle", "overdue"),
        Payload::AssignmentExtended(_) => ("whistle", "extended"),
        Payload::EvaluationPeriodClosed(_) => ("evaluation", "period_closed"),
        Payload::EvaluationPeriodReopened(_) => ("evaluation", "period_reopened"),
        Payload::EvaluationCooperationRated(_) => ("evaluation", "cooperation_rated"),
        Payload::EvaluationSatisfactionRecorded(_) => ("evaluation", "satisfaction_recorded"),
        Payload::CaseResolvedLocally(_) => ("case", "resolved_locally"),
        Payload::CaseDeferred(_) => ("case", "deferred"),
        Payload::CaseResumed(_) => ("case", "resumed"),
        Payload::AssignmentExtensionRequested(_) => ("whistle", "extension_requested"),
        Payload::AssignmentExtensionRefused(_) => ("whistle", "extension_refused"),
        Payload::AssignmentReturnDecided(_) => ("whistle", "return_decided"),
        Payload::AssignmentReportMerged(_) => ("whistle", "report_merged"),
        Payload::AssignmentEvidenceAttached(_) => ("whistle", "evidence_attached"),
        Payload::AssignmentRecurrent(_) => ("whistle", "recurrent"),
    };
    Kind { family, name }
}

/// The assignment a whistle event carries (every `whistle.*` event carries the full assignment).
pub fn assignment_of(payload: &Payload) -> Option<&Assignment> {
    match payload {
        Payload::WhistleIssued(issued) => issued.assignment.as_ref(),
        Payload::AssignmentAcknowledged(event) => event.assignment.as_ref(),
        Payload::AssignmentCheckedIn(event) => event.assignment.as_ref(),
        Payload::AssignmentProgressed(event) => event.assignment.as_ref(),
        Payload::AssignmentResolved(event) => event.assignment.as_ref(),
        Payload::AssignmentReturned(event) => event.assignment.as_ref(),
        Payload::AssignmentOverdue(event) => event.assignment.as_ref(),
        Payload::AssignmentExtended(event) => event.assignment.as_ref(),
        Payload::AssignmentExtensionRequested(event) => event.assignment.as_ref(),
        Payload::AssignmentExtensionRefused(event) => event.assignment.as_ref(),
        Payload::AssignmentReturnDecided(event) => event.assignment.as_ref(),
        Payload::AssignmentReportMerged(event) => event.assignment.as_ref(),
        Payload::AssignmentEvidenceAttached(event) => event.assignment.as_ref(),
        Payload::AssignmentRecurrent(event) => event.assignment.as_ref(),
        _ => None,
    }
}

/// The department a whistle event is addressed to.
pub fn department_of(payload: &Payload) -> Option<&str> {
    assignment_of(payload).map(|assignment| assignment.department_code.as_str())
}

/// A new event with a fresh UUIDv7 id, stamped with the clock's time.
pub fn new_event(
    clock: &dyn Clock,
    source: &str,
    case_id: &str,
    case_version: u64,
    region: Option<Region>,
    payload: Payload,
) -> Event {
    Event {
        event_id: uuid::Uuid::now_v7().to_string(),
        occurred_at: Some(to_proto_timestamp(clock.now())),
        case_id: case_id.to_string(),
        case_version,
        region,
        source: source.to_string(),
        payload: Some(payload),
    }
}

/// The subject an event is published on:
/// `case.v1.<city>.<district>.<street>.<event>` or `whistle.v1.<city>.<district>.<street>.<department>.<event>`.
pub fn subject(event: &Event) -> Result<String, EnvelopeError> {
    let payload = event.payload.as_ref().ok_or(EnvelopeError::NoPayload)?;
    let kind = kind(payload);
    if kind.family == "evaluation" {
        return Ok(format!("evaluation.v1.{}", kind.name));
    }
    let region = event.region.clone().unwrap_or_default();
    let city = token("city_code", &region.city_code)?;
    let district = token("district_code", &region.district_code)?;
    let street = token("street_slug", &region.street_slug)?;
    match department_of(payload) {
        Some(department) if kind.family == "whistle" => {
            let department = token("department_code", department)?;
            Ok(format!(
                "whistle.v1.{city}.{district}.{street}.{department}.{}",
                kind.name
            ))
        }
        _ => Ok(format!(
            "{}.v1.{city}.{district}.{street}.{}",
            kind.family, kind.name
        )),
    }
}

/// Whether a value can be one token of a NATS subject in our scheme.
pub fn is_subject_token(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

fn token<'a>(name: &'static str, value: &'a str) -> Result<&'a str, EnvelopeError> {
    if is_subject_token(value) {
        Ok(value)
    } else {
        Err(EnvelopeError::BadToken {
            name,
            value: value.to_string(),
        })
    }
}

/// The outbox row for an event: subject, protobuf bytes, CloudEvents headers and the current
/// span's `traceparent`.
pub fn to_outbox(event: &Event) -> Result<OutboxEvent, EnvelopeError> {
    to_outbox_in_trace(event, crate::telemetry::current_traceparent())
}

/// The outbox row for an event caused in the span `traceparent` names (none: no trace), for an
/// event written by another task than the one that caused it (a batch of several requests).
pub fn to_outbox_in_trace(
    event: &Event,
    traceparent: Option<String>,
) -> Result<OutboxEvent, EnvelopeError> {
    let payload = event.payload.as_ref().ok_or(EnvelopeError::NoPayload)?;
    let kind = kind(payload);
    let time = event
        .occurred_at
        .as_ref()
        .and_then(crate::clock::from_proto_timestamp)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut headers = vec![
        ("ce-specversion".to_string(), "1.0".to_string()),
        ("ce-id".to_string(), event.event_id.clone()),
        ("ce-type".to_string(), kind.cloudevents_type()),
        (
            "ce-source".to_string(),
            format!("/whistle/{}", event.source),
        ),
        ("ce-time".to_string(), time),
        ("ce-subject".to_string(), event.case_id.clone()),
        (
            "ce-datacontenttype".to_string(),
            "application/protobuf".to_string(),
        ),
        (
            "ce-dataschema".to_string(),
            "whistle.events.v1.Event".to_string(),
        ),
    ];
    if let Some(traceparent) = traceparent {
        headers.push(("traceparent".to_string(), traceparent));
    }
    Ok(OutboxEvent {
        event_id: event.event_id.clone(),
        subject: subject(event)?,
        payload: event.encode_to_vec(),
        headers,
    })
}

/// Decodes an event published by any Whistle service.
pub fn decode(bytes: &[u8]) -> Result<Event, prost::DecodeError> {
    Event::decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use whistle_proto::events::{CaseReported, WhistleIssued};

    fn region() -> Region {
        Region {
            city_code: "420300".into(),
            district_code: "420303".into(),
            street_code: "420303003".into(),
            street_slug: "chechenglu".into(),
            community_code: "420303003002".into(),
            grid_code: "420303003002001".into(),
        }
    }

    #[test]
    fn whistle_subjects_carry_region_and_department() {
        let payload = Payload::WhistleIssued(WhistleIssued {
            assignment: Some(Assignment {
                department_code: "zw-sanitation".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let event = new_event(
            &SystemClock,
            "whistle-dispatch",
            "c1",
            2,
            Some(region()),
            payload,
        );
        assert_eq!(
            subject(&event).expect("subject"),
            "whistle.v1.420300.420303.chechenglu.zw-sanitation.issued"
        );
        let outbox = to_outbox(&event).expect("outbox");
        let ce_type = outbox
            .headers
            .iter()
            .find(|(name, _)| name == "ce-type")
            .map(|(_, value)| value.as_str());
        assert_eq!(ce_type, Some("whistle.whistle.issued.v1"));
        assert_eq!(decode(&outbox.payload).expect("decode"), event);
    }

    #[test]
    fn case_subjects_and_bad_tokens() {
        let payload = Payload::CaseReported(CaseReported::default());
        let mut event = new_event(
            &SystemClock,
            "whistle-intake",
            "c1",
            0,
            Some(region()),
            payload,
        );
        assert_eq!(
            subject(&event).expect("subject"),
            "case.v1.420300.420303.chechenglu.reported"
        );
        event.region = Some(Region {
            street_slug: "che.cheng".into(),
            ..region()
        });
        assert!(matches!(
            subject(&event),
            Err(EnvelopeError::BadToken {
                name: "street_slug",
                ..
            })
        ));
    }
}
