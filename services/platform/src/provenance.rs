//! Event provenance: which service may publish which kind of event, checked by every consumer
//! before it applies an event, and the source of the NATS publish permissions `whistle nats-config`
//! grants each service.
//!
//! The NATS server binds a subject to a user (a service's user may publish only the subjects of its
//! own kinds), so a consumer trusts an event when its payload is of the kind its subject names and
//! that kind belongs to the service the event says it comes from. Anything else is refused:
//! recorded in the inbox as `rejected: source …`, acked, logged and counted
//! (`whistle_inbox_rejected_total{reason="source"}`), never applied.

use crate::envelope::{self, Event};
use sea_orm::{ConnectionTrait, DbErr};

/// A service that publishes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Producer {
    Intake,
    Dispatch,
    Evaluation,
}

impl Producer {
    /// The `source` the service writes in its events (`whistle-intake`, ...).
    pub fn source(self) -> &'static str {
        match self {
            Producer::Intake => "whistle-intake",
            Producer::Dispatch => "whistle-dispatch",
            Producer::Evaluation => "whistle-evaluation",
        }
    }

    /// The service's NATS user name (`intake`, ...).
    pub fn service(self) -> &'static str {
        match self {
            Producer::Intake => "intake",
            Producer::Dispatch => "dispatch",
            Producer::Evaluation => "evaluation",
        }
    }
}

/// Every event kind (`family`, `name`) and the one service allowed to publish it.
pub const PRODUCERS: &[(&str, &str, Producer)] = &[
    // intake: reports and what it learns merging them
    ("case", "reported", Producer::Intake),
    ("case", "merged", Producer::Intake),
    ("case", "split", Producer::Intake),
    ("case", "recurrent", Producer::Intake),
    ("case", "evidence_attached", Producer::Intake),
    // dispatch: the case state machine and every assignment
    ("case", "accepted", Producer::Dispatch),
    ("case", "rejected", Producer::Dispatch),
    ("case", "verified", Producer::Dispatch),
    ("case", "closed", Producer::Dispatch),
    ("case", "reopened", Producer::Dispatch),
    ("case", "escalated", Producer::Dispatch),
    ("case", "resolved_locally", Producer::Dispatch),
    ("case", "deferred", Producer::Dispatch),
    ("case", "resumed", Producer::Dispatch),
    ("whistle", "issued", Producer::Dispatch),
    ("whistle", "acknowledged", Producer::Dispatch),
    ("whistle", "on_site", Producer::Dispatch),
    ("whistle", "progressed", Producer::Dispatch),
    ("whistle", "resolved", Producer::Dispatch),
    ("whistle", "returned", Producer::Dispatch),
    ("whistle", "overdue", Producer::Dispatch),
    ("whistle", "extended", Producer::Dispatch),
    ("whistle", "extension_requested", Producer::Dispatch),
    ("whistle", "extension_refused", Producer::Dispatch),
    ("whistle", "return_decided", Producer::Dispatch),
    ("whistle", "report_merged", Producer::Dispatch),
    ("whistle", "evidence_attached", Producer::Dispatch),
    ("whistle", "recurrent", Producer::Dispatch),
    // evaluation
    ("evaluation", "period_closed", Producer::Evaluation),
    ("evaluation", "period_reopened", Producer::Evaluation),
    ("evaluation", "cooperation_rated", Producer::Evaluation),
    ("evaluation", "satisfaction_recorded", Producer::Evaluation),
];

/// The service allowed to publish events of `family`.`name`, `None` for an unknown kind.
pub fn producer_of(family: &str, name: &str) -> Option<Producer> {
    PRODUCERS
        .iter()
        .find(|(known_family, known_name, _)| *known_family == family && *known_name == name)
        .map(|(_, _, producer)| *producer)
}

/// The NATS subjects `producer` publishes on: one pattern per kind it owns, e.g.
/// `case.v1.*.*.*.reported` or `whistle.v1.*.*.*.*.issued`.
pub fn publish_subjects(producer: Producer) -> Vec<String> {
    PRODUCERS
        .iter()
        .filter(|(_, _, owner)| *owner == producer)
        .map(|(family, name, _)| kind_subjects(family, name))
        .collect()
}

/// The NATS subjects of one kind of event, as a filter: `case.v1.*.*.*.reported`,
/// `whistle.v1.*.*.*.*.issued`, `evaluation.v1.period_closed`.
pub fn kind_subjects(family: &str, name: &str) -> String {
    match family {
        "case" => format!("case.v1.*.*.*.{name}"),
        "whistle" => format!("whistle.v1.*.*.*.*.{name}"),
        _ => format!("{family}.v1.{name}"),
    }
}

/// Why an event is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown event kind {0}")]
    UnknownKind(String),
    #[error("a {kind} event on subject {subject}, which is for another kind")]
    SubjectMismatch { kind: String, subject: String },
    #[error("a {kind} event from {publisher:?}, but only {allowed} publishes {kind}")]
    WrongSource {
        kind: String,
        publisher: String,
        allowed: &'static str,
    },
}

/// Whether `event`, received on `subject`, comes from the service allowed to publish its kind.
/// An event without a payload passes: the handler refuses it as malformed.
pub fn check(subject: &str, event: &Event) -> Result<(), Refusal> {
    let Some(payload) = event.payload.as_ref() else {
        return Ok(());
    };
    let kind = envelope::kind(payload);
    let producer =
        producer_of(kind.family, kind.name).ok_or_else(|| Refusal::UnknownKind(kind.label()))?;
    let tokens: Vec<&str> = subject.split('.').collect();
    let subject_matches = tokens.first() == Some(&kind.family) && tokens.last() == Some(&kind.name);
    if !subject_matches {
        return Err(Refusal::SubjectMismatch {
            kind: kind.label(),
            subject: subject.to_string(),
        });
    }
    if event.source != producer.source() {
        return Err(Refusal::WrongSource {
            kind: kind.label(),
            publisher: event.source.clone(),
            allowed: producer.source(),
        });
    }
    Ok(())
}

/// The inbox's gate: true when the event was refused (then it is recorded as rejected in the
/// consumer's inbox in `connection`, logged and counted, and must not be applied).
pub async fn refuse<C: ConnectionTrait>(
    connection: &C,
    consumer: &str,
    subject: &str,
    event: &Event,
    now_ms: i64,
) -> Result<bool, DbErr> {
    let Err(refusal) = check(subject, event) else {
        return Ok(false);
    };
    let outcome = format!("rejected: source: {refusal}");
    if crate::inbox::record_once(connection, consumer, &event.event_id, &outcome, now_ms).await? {
        tracing::error!(consumer, subject, event_id = %event.event_id, %refusal, "event refused: not from the service that publishes its kind");
        crate::metrics::metrics().events_rejected.add(
            1,
            &[
                crate::metrics::attribute("consumer", consumer.to_string()),
                crate::metrics::attribute("reason", "source".to_string()),
            ],
        );
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::testing::every_payload;
    use whistle_proto::events::event::Payload;
    use whistle_proto::types::Region;

    #[test]
    fn every_kind_has_exactly_one_producer() {
        let payloads = every_payload();
        for payload in &payloads {
            let kind = envelope::kind(payload);
            let owners = PRODUCERS
                .iter()
                .filter(|(family, name, _)| *family == kind.family && *name == kind.name)
                .count();
            assert_eq!(owners, 1, "{}", kind.label());
        }
        assert_eq!(PRODUCERS.len(), payloads.len(), "a kind no payload has");
    }

    fn region() -> Region {
        Region {
            city_code: "420300".into(),
            district_code: "420303".into(),
            street_code: "420303003".into(),
            street_slug: "chechenglu".into(),
            community_code: "420303003001".into(),
            grid_code: "420303003001001".into(),
        }
    }

    fn event(source: &str, payload: Payload) -> Event {
        envelope::new_event(&SystemClock, source, "c1", 1, Some(region()), payload)
    }

    #[test]
    fn events_from_their_producer_on_their_subject_pass() {
        for payload in every_payload() {
            let kind = envelope::kind(&payload);
            let producer = producer_of(kind.family, kind.name).expect("known kind");
            let event = event(producer.source(), payload);
            let subject = envelope::subject(&event).expect("subject");
            assert_eq!(check(&subject, &event), Ok(()), "{subject}");
        }
    }

    #[test]
    fn a_forged_source_or_subject_is_refused() {
        let accepted = event("whistle-intake", Payload::CaseAccepted(Default::default()));
        let subject = envelope::subject(&accepted).expect("subject");
        assert!(matches!(
            check(&subject, &accepted),
            Err(Refusal::WrongSource {
                allowed: "whistle-dispatch",
                ..
            })
        ));
        // intake's user may publish case.*.reported: a dispatch kind smuggled onto that subject
        let smuggled = event(
            "whistle-dispatch",
            Payload::CaseAccepted(Default::default()),
        );
        assert!(matches!(
            check("case.v1.420300.420303.chechenglu.reported", &smuggled),
            Err(Refusal::SubjectMismatch { .. })
        ));
    }

    #[test]
    fn publish_subjects_follow_the_table() {
        let intake = publish_subjects(Producer::Intake);
        assert!(intake.contains(&"case.v1.*.*.*.reported".to_string()));
        assert!(!intake.iter().any(|subject| subject.starts_with("whistle.")));
        let dispatch = publish_subjects(Producer::Dispatch);
        assert!(dispatch.contains(&"whistle.v1.*.*.*.*.issued".to_string()));
        assert!(!dispatch.contains(&"case.v1.*.*.*.reported".to_string()));
        assert_eq!(
            publish_subjects(Producer::Evaluation),
            [
                "evaluation.v1.period_closed",
                "evaluation.v1.period_reopened",
                "evaluation.v1.cooperation_rated",
                "evaluation.v1.satisfaction_recorded"
            ]
        );
    }
}
