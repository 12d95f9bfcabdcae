//! The largest events dispatch can publish under a limits table, found by playing the largest
//! case through the real rules: a report at the limits (intake runs with the same table), whistled
//! to the most departments a whistle may name, every department acting with every field at its
//! limit in 4-byte characters until its evidence is full, then returning or resolving, the case
//! failing verification and being reworked before it closes. Checked at start (an event larger
//! than `limits.max_event_bytes` refuses the configuration) and by a unit test with room to spare.

use crate::domain::{Evidence, LimitOverrides};
use crate::error::DispatchError;
use crate::service::{self, ActionRules, CaseState, DepartmentAction};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use whistle_platform::ManualClock;
use whistle_platform::clock::to_proto_timestamp;
use whistle_platform::envelope::{self, Event, Payload};
use whistle_platform::validation::LimitsConfig;
use whistle_proto::events::CaseReported;
use whistle_proto::types::{Attachment, Channel, Place, Region, Severity};

/// The largest event of each kind (`whistle.progressed`, ...) in bytes (payload, subject, headers
/// with a `traceparent`), with the event itself.
pub fn largest_events(
    limits: &LimitsConfig,
) -> Result<BTreeMap<String, (usize, Event)>, DispatchError> {
    let clock = ManualClock::new(latest_instant());
    let mut largest: BTreeMap<String, (usize, Event)> = BTreeMap::new();
    let mut keep = |events: &[Event]| -> Result<(), DispatchError> {
        for event in events {
            let bytes = envelope::to_outbox(event)
                .map_err(DispatchError::unexpected)?
                .traced_wire_bytes();
            let kind = event
                .payload
                .as_ref()
                .map(|payload| envelope::kind(payload).label())
                .unwrap_or_default();
            let entry = largest.entry(kind).or_insert((0, Event::default()));
            if bytes > entry.0 {
                *entry = (bytes, event.clone());
            }
        }
        Ok(())
    };
    keep(largest_case(limits, &clock)?.events())?;
    keep(rejected_case(limits, &clock)?.events())?;
    Ok(largest)
}

/// `chars` 4-byte characters.
fn text(chars: usize) -> String {
    "𝄞".repeat(chars)
}

/// A late instant with the longest encoding a timestamp of ours has (2038, full nanoseconds).
fn latest_instant() -> DateTime<Utc> {
    DateTime::from_timestamp(i64::from(i32::MAX), 999_999_999).unwrap_or_default()
}

fn largest_attachment(limits: &LimitsConfig) -> Attachment {
    Attachment {
        uri: format!("a://{}", text(limits.uri_chars.saturating_sub(4))),
        sha256: "f".repeat(64),
        media_type: format!("a/{}", text(limits.media_type_chars.saturating_sub(2))),
        size_bytes: u64::MAX,
    }
}

fn largest_evidence(limits: &LimitsConfig, items: usize) -> Vec<Evidence> {
    let attachment = largest_attachment(limits);
    let item = Evidence {
        uri: attachment.uri,
        sha256: attachment.sha256,
        media_type: attachment.media_type,
        size_bytes: attachment.size_bytes,
    };
    vec![item; items]
}

/// A department code of `limits.code_chars` (at most 64, a subject token), unique per `index`.
fn department(limits: &LimitsConfig, index: usize) -> String {
    let width = limits.code_chars.clamp(3, 64);
    format!("{index:d>width$}")
}

/// intake's `case.reported` at the limits.
fn reported_event(limits: &LimitsConfig, clock: &ManualClock) -> (Event, CaseReported) {
    let reported = CaseReported {
        report_id: uuid::Uuid::now_v7().to_string(),
        channel: Channel::Inspection as i32,
        reporter_id: text(limits.id_chars),
        category_code: "E-99-99".into(),
        severity: Severity::Complex as i32,
        description: text(limits.text_chars),
        place: Some(Place {
            grid_code: "999999999999999".into(),
            lat: -89.123_456_789,
            lng: -179.123_456_789,
            address: text(limits.address_chars),
        }),
        attachments: vec![largest_attachment(limits); limits.attachments],
        observed_at: Some(to_proto_timestamp(latest_instant())),
    };
    let region = Region {
        city_code: "999900".into(),
        district_code: "999999".into(),
        street_code: "999999999".into(),
        street_slug: "s".repeat(64),
        community_code: "999999999999".into(),
        grid_code: "999999999999999".into(),
    };
    let event = envelope::new_event(
        clock,
        "whistle-intake",
        &uuid::Uuid::now_v7().to_string(),
        1,
        Some(region),
        Payload::CaseReported(reported.clone()),
    );
    (event, reported)
}

fn largest_case(limits: &LimitsConfig, clock: &ManualClock) -> Result<CaseState, DispatchError> {
    let (event, reported) = reported_event(limits, clock);
    let mut state = CaseState::open(clock, &event, &reported);
    let operator = text(limits.id_chars);
    let departments: Vec<String> = (0..limits.list_items.max(1))
        .map(|index| department(limits, index))
        .collect();
    service::accept(clock, &mut state, &operator)?;
    service::whistle(
        clock,
        &mut state,
        &operator,
        &departments[0],
        &departments[1..],
        &LimitOverrides::default(),
        true,
    )?;
    let rules = ActionRules {
        check_in_radius_meters: 500.0,
        evidence_per_assignment: limits.evidence_per_assignment,
    };
    let assignments: Vec<(String, String)> = state
        .assignments
        .iter()
        .map(|assignment| {
            (
                assignment.assignment_id.clone(),
                assignment.department_code.clone(),
            )
        })
        .collect();
    let act = |state: &mut CaseState, index: usize, action: DepartmentAction| {
        let (assignment_id, department_code) = &assignments[index];
        service::apply_department_action(
            clock,
            rules,
            state,
            assignment_id,
            department_code,
            &action,
        )
        .map(|_| ())
    };
    let (lat, lng) = (state.model.lat, state.model.lng);
    for index in 0..assignments.len() {
        act(
            &mut state,
            index,
            DepartmentAction::Acknowledge {
                responsible_person: text(limits.name_chars),
                contact_phone: text(limits.name_chars),
                promised_at: Some(latest_instant()),
            },
        )?;
        // the first department returns the case; the others work it
        let returns = index == 0 && assignments.len() > 1;
        if !returns {
            act(
                &mut state,
                index,
                DepartmentAction::CheckIn {
                    lat,
                    lng,
                    person: text(limits.name_chars),
                },
            )?;
        }
        fill_evidence(&mut state, limits, &act, index)?;
        let last = if returns {
            DepartmentAction::Return {
                reason: text(limits.text_chars),
                suggested_department_code: department(limits, 99),
            }
        } else {
            DepartmentAction::Resolve {
                resolution: text(limits.text_chars),
                evidence: largest_evidence(limits, limits.attachments),
            }
        };
        act(&mut state, index, last)?;
    }
    // verification fails: the resolved assignments go back to work and fill their evidence again
    service::verify(
        clock,
        &mut state,
        &operator,
        false,
        &text(limits.text_chars),
    )?;
    let returned = usize::from(assignments.len() > 1);
    for index in returned..assignments.len() {
        fill_evidence(&mut state, limits, &act, index)?;
        act(
            &mut state,
            index,
            DepartmentAction::Resolve {
                resolution: text(limits.text_chars),
                evidence: largest_evidence(limits, limits.attachments),
            },
        )?;
    }
    service::verify(clock, &mut state, &operator, true, &text(limits.text_chars))?;
    Ok(state)
}

/// Progress at the limits until the assignment keeps all the evidence it may.
fn fill_evidence(
    state: &mut CaseState,
    limits: &LimitsConfig,
    act: &impl Fn(&mut CaseState, usize, DepartmentAction) -> Result<(), DispatchError>,
    index: usize,
) -> Result<(), DispatchError> {
    loop {
        let kept = state.assignments[index].evidence.len();
        let room = limits.evidence_per_assignment.saturating_sub(kept);
        let adding = room.min(limits.attachments);
        act(
            state,
            index,
            DepartmentAction::Progress {
                note: text(limits.text_chars),
                evidence: largest_evidence(limits, adding),
            },
        )?;
        if adding == 0 || adding == room {
            return Ok(());
        }
    }
}

/// A case the street rejects with the longest reason.
fn rejected_case(limits: &LimitsConfig, clock: &ManualClock) -> Result<CaseState, DispatchError> {
    let (event, reported) = reported_event(limits, clock);
    let mut state = CaseState::open(clock, &event, &reported);
    service::reject(
        clock,
        &mut state,
        &text(limits.id_chars),
        &text(limits.text_chars),
    )?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use whistle_proto::events::event::Payload;

    #[test]
    fn every_event_of_the_largest_case_fits_with_room_to_spare() {
        let limits = LimitsConfig::default();
        let largest = largest_events(&limits).expect("the largest case plays through");
        for (kind, (bytes, _)) in &largest {
            println!(
                "largest {kind}: {bytes} bytes ({}% of {})",
                bytes * 100 / limits.max_event_bytes,
                limits.max_event_bytes
            );
            // at least a tenth (≈ 52 KB, a dozen more texts at their limit) left for what grows
            assert!(
                *bytes <= limits.max_event_bytes * 9 / 10,
                "{kind} of {bytes} bytes leaves too little room under {}",
                limits.max_event_bytes
            );
        }
        for kind in [
            "whistle.issued",
            "whistle.acknowledged",
            "whistle.on_site",
            "whistle.progressed",
            "whistle.resolved",
            "whistle.returned",
            "case.accepted",
            "case.rejected",
            "case.verified",
            "case.reopened",
            "case.closed",
        ] {
            assert!(largest.contains_key(kind), "{kind} not played");
        }
        // the scenario reaches the maxima: every department named, evidence full
        let Some(Payload::WhistleIssued(issued)) = &largest["whistle.issued"].1.payload else {
            panic!("not a whistle")
        };
        assert_eq!(issued.co_department_codes.len(), limits.list_items - 1);
        assert_eq!(issued.attachments.len(), limits.attachments);
        let Some(Payload::AssignmentProgressed(progressed)) =
            &largest["whistle.progressed"].1.payload
        else {
            panic!("not progress")
        };
        let assignment = progressed.assignment.as_ref().expect("assignment");
        assert_eq!(assignment.evidence.len(), limits.evidence_per_assignment);
        assert!(
            !assignment.resolution.is_empty(),
            "reworked after resolving"
        );
        let Some(Payload::AssignmentReturned(returned)) = &largest["whistle.returned"].1.payload
        else {
            panic!("not a return")
        };
        let assignment = returned.assignment.as_ref().expect("assignment");
        assert_eq!(assignment.evidence.len(), limits.evidence_per_assignment);
    }

    #[test]
    fn a_smaller_evidence_bound_is_played_to_its_end() {
        let limits = LimitsConfig {
            evidence_per_assignment: 12,
            ..LimitsConfig::default()
        };
        let largest = largest_events(&limits).expect("plays");
        let Some(Payload::AssignmentProgressed(progressed)) =
            &largest["whistle.progressed"].1.payload
        else {
            panic!("not progress")
        };
        assert_eq!(
            progressed
                .assignment
                .as_ref()
                .expect("assignment")
                .evidence
                .len(),
            12
        );
    }
}
