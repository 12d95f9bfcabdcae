//! The case aggregate's events as published: each domain event becomes one
//! `whistle.events.v1.Event` (`case.*` or `whistle.*`), stamped with the case version it produced,
//! and one timeline entry. Every fact a consumer needs is in the event (assignment, department,
//! clock, lateness, the street's decisions, verdicts), so nothing has to be inferred.

use crate::convert::{
    assignment_to_proto, clock_to_proto, deadlines_to_proto, duration_to_proto, evidence_to_proto,
};
use crate::domain::{AssignmentClocks, CaseEvent, Emitted};
use crate::storage::CaseRecord;
use whistle_platform::clock::to_proto_timestamp;
use whistle_platform::envelope::{Event, Payload};
use whistle_proto::events::{
    AssignmentAcknowledged, AssignmentCheckedIn, AssignmentClock, AssignmentEvidenceAttached,
    AssignmentExtended, AssignmentExtensionRefused, AssignmentExtensionRequested,
    AssignmentOverdue, AssignmentProgressed, AssignmentRecurrent, AssignmentReportMerged,
    AssignmentResolved, AssignmentReturnDecided, AssignmentReturned, AssignmentVerdict,
    CaseAccepted, CaseClosed, CaseDeferred, CaseEscalated, CaseRejected, CaseReopened,
    CaseResolvedLocally, CaseResumed, CaseVerified, WhistleIssued,
};

/// Name of this service in events and traces.
pub const SOURCE: &str = "whistle-dispatch";

fn clocks_to_proto(assignments: &[AssignmentClocks]) -> Vec<AssignmentClock> {
    assignments
        .iter()
        .map(|clocks| AssignmentClock {
            assignment_id: clocks.assignment_id.clone(),
            department_code: clocks.department_code.clone(),
            deadlines: Some(deadlines_to_proto(
                clocks.acknowledge_by,
                clocks.on_site_by,
                clocks.resolve_by,
            )),
        })
        .collect()
}

/// The payload of a domain event.
pub fn payload(record: &CaseRecord, emitted: &Emitted) -> Payload {
    let by = emitted.actor.clone();
    match &emitted.event {
        CaseEvent::Accepted => Payload::CaseAccepted(CaseAccepted { accepted_by: by }),
        CaseEvent::Rejected { reason } => Payload::CaseRejected(CaseRejected {
            rejected_by: by,
            reason: reason.clone(),
        }),
        CaseEvent::Whistled {
            assignment,
            co_department_codes,
        } => {
            let reported = record.reported();
            Payload::WhistleIssued(WhistleIssued {
                assignment: Some(assignment_to_proto(assignment)),
                category_code: record.row.category_code.clone(),
                severity: record.row.severity,
                description: record.row.description.clone(),
                place: reported.place,
                attachments: reported.attachments,
                co_department_codes: co_department_codes.clone(),
                whistled_by: by,
                recurrent: record.case.recurrent,
                earlier_case_ids: record.case.earlier_case_ids.clone(),
            })
        }
        CaseEvent::Acknowledged {
            assignment,
            within_limit,
        } => Payload::AssignmentAcknowledged(AssignmentAcknowledged {
            assignment: Some(assignment_to_proto(assignment)),
            within_limit: *within_limit,
        }),
        CaseEvent::CheckedIn {
            assignment,
            within_limit,
            distance_meters,
            ..
        } => Payload::AssignmentCheckedIn(AssignmentCheckedIn {
            assignment: Some(assignment_to_proto(assignment)),
            within_limit: *within_limit,
            distance_meters: *distance_meters,
        }),
        CaseEvent::Progressed { assignment, note } => {
            Payload::AssignmentProgressed(AssignmentProgressed {
                assignment: Some(assignment_to_proto(assignment)),
                note: note.clone(),
            })
        }
        CaseEvent::Resolved {
            assignment,
            within_limit,
        } => Payload::AssignmentResolved(AssignmentResolved {
            assignment: Some(assignment_to_proto(assignment)),
            within_limit: *within_limit,
        }),
        CaseEvent::Returned { assignment } => Payload::AssignmentReturned(AssignmentReturned {
            assignment: Some(assignment_to_proto(assignment)),
        }),
        CaseEvent::ExtensionRequested {
            assignment,
            extra,
            reason,
            current_due_at,
        } => Payload::AssignmentExtensionRequested(AssignmentExtensionRequested {
            assignment: Some(assignment_to_proto(assignment)),
            clock: clock_to_proto(crate::domain::ClockKind::Resolve) as i32,
            extra: Some(duration_to_proto(*extra)),
            reason: reason.clone(),
            current_due_at: Some(to_proto_timestamp(*current_due_at)),
        }),
        CaseEvent::Extended {
            assignment,
            previous_due_at,
            new_due_at,
            extra,
            note,
        } => Payload::AssignmentExtended(AssignmentExtended {
            assignment: Some(assignment_to_proto(assignment)),
            new_resolve_by: Some(to_proto_timestamp(*new_due_at)),
            previous_resolve_by: Some(to_proto_timestamp(*previous_due_at)),
            extra: Some(duration_to_proto(*extra)),
            approved_by: by,
            note: note.clone(),
            clock: clock_to_proto(crate::domain::ClockKind::Resolve) as i32,
        }),
        CaseEvent::ExtensionRefused {
            assignment,
            extra,
            note,
        } => Payload::AssignmentExtensionRefused(AssignmentExtensionRefused {
            assignment: Some(assignment_to_proto(assignment)),
            clock: clock_to_proto(crate::domain::ClockKind::Resolve) as i32,
            extra: Some(duration_to_proto(*extra)),
            refused_by: by,
            note: note.clone(),
        }),
        CaseEvent::ReturnDecided {
            assignment,
            upheld,
            note,
            fallback_department_code,
        } => Payload::AssignmentReturnDecided(AssignmentReturnDecided {
            assignment: Some(assignment_to_proto(assignment)),
            upheld: *upheld,
            decided_by: by,
            note: note.clone(),
            fallback_department_code: fallback_department_code.clone().unwrap_or_default(),
        }),
        CaseEvent::Overdue {
            assignment,
            clock,
            due_at,
            late_by,
            escalates_at,
        } => Payload::AssignmentOverdue(AssignmentOverdue {
            assignment: Some(assignment_to_proto(assignment)),
            flag: crate::convert::flag_to_proto(clock.overdue_flag()) as i32,
            clock: clock_to_proto(*clock) as i32,
            due_at: Some(to_proto_timestamp(*due_at)),
            late_by: Some(duration_to_proto(*late_by)),
            escalates_at: Some(to_proto_timestamp(*escalates_at)),
        }),
        CaseEvent::Escalated {
            assignment,
            clock,
            due_at,
            overdue_by,
            supervision_department_code,
        } => Payload::CaseEscalated(CaseEscalated {
            assignment_id: assignment.assignment_id.clone(),
            department_code: assignment.department_code.clone(),
            supervisor_code: supervision_department_code.clone(),
            reason: format!(
                "{} {} not met {} min after its deadline",
                assignment.department_code,
                clock.duty(),
                overdue_by.num_minutes()
            ),
            clock: clock_to_proto(*clock) as i32,
            due_at: Some(to_proto_timestamp(*due_at)),
            overdue_by: Some(duration_to_proto(*overdue_by)),
            assignment: Some(assignment_to_proto(assignment)),
        }),
        CaseEvent::Verified {
            passed,
            note,
            verdicts,
        } => Payload::CaseVerified(CaseVerified {
            verified_by: by,
            passed: *passed,
            note: note.clone(),
            verdicts: verdicts
                .iter()
                .map(|verdict| AssignmentVerdict {
                    assignment_id: verdict.assignment_id.clone(),
                    department_code: verdict.department_code.clone(),
                    passed: verdict.passed,
                })
                .collect(),
        }),
        CaseEvent::Closed => Payload::CaseClosed(CaseClosed {}),
        CaseEvent::Reopened {
            reason,
            assignment_ids,
        } => Payload::CaseReopened(CaseReopened {
            reason: reason.clone(),
            assignment_ids: assignment_ids.clone(),
        }),
        CaseEvent::ResolvedLocally { resolution } => {
            Payload::CaseResolvedLocally(CaseResolvedLocally {
                resolved_by: by,
                resolution: resolution.clone(),
            })
        }
        CaseEvent::Deferred {
            reason,
            until,
            assignments,
        } => Payload::CaseDeferred(CaseDeferred {
            deferred_by: by,
            reason: reason.clone(),
            until: until.map(to_proto_timestamp),
            assignments: clocks_to_proto(assignments),
        }),
        CaseEvent::Resumed {
            note,
            deferred_for,
            assignments,
        } => Payload::CaseResumed(CaseResumed {
            resumed_by: by,
            note: note.clone(),
            deferred_for: Some(duration_to_proto(*deferred_for)),
            assignments: clocks_to_proto(assignments),
        }),
        CaseEvent::ReportMerged {
            assignment,
            report,
            report_count,
        } => Payload::AssignmentReportMerged(AssignmentReportMerged {
            assignment: Some(assignment_to_proto(assignment)),
            report_id: report.report_id.clone(),
            reporter_id: report.reporter_id.clone(),
            channel: report.channel,
            description: report.description.clone(),
            place: Some(whistle_proto::types::Place {
                lat: report.lat,
                lng: report.lng,
                address: report.address.clone(),
                ..Default::default()
            }),
            attachments: evidence_to_proto(&report.attachments),
            report_count: u32::try_from(*report_count).unwrap_or(u32::MAX),
            severity: report.severity,
        }),
        CaseEvent::EvidenceAttached {
            assignment,
            by_community,
            attachments,
            evidence_count,
        } => Payload::AssignmentEvidenceAttached(AssignmentEvidenceAttached {
            assignment: Some(assignment_to_proto(assignment)),
            attached_by: by,
            by_community: *by_community,
            attachments: evidence_to_proto(attachments),
            evidence_count: u32::try_from(*evidence_count).unwrap_or(u32::MAX),
        }),
        CaseEvent::MarkedRecurrent {
            assignment,
            earlier_case_ids,
        } => Payload::AssignmentRecurrent(AssignmentRecurrent {
            assignment: Some(assignment_to_proto(assignment)),
            earlier_case_ids: earlier_case_ids.clone(),
        }),
    }
}

/// The envelope of a domain event: a fresh event id, the time it happened, the case version it
/// produced and the case's region (which makes its subject).
pub fn to_event(record: &CaseRecord, emitted: &Emitted) -> Event {
    Event {
        event_id: uuid::Uuid::now_v7().to_string(),
        occurred_at: Some(to_proto_timestamp(emitted.at)),
        case_id: record.row.case_id.clone(),
        case_version: emitted.version,
        region: Some(record.region()),
        source: SOURCE.to_string(),
        payload: Some(payload(record, emitted)),
    }
}

/// What the timeline says about an event.
pub fn timeline_detail(event: &CaseEvent) -> String {
    match event {
        CaseEvent::Accepted => "立案".into(),
        CaseEvent::Rejected { reason } => reason.clone(),
        CaseEvent::Whistled { assignment, .. } => {
            format!("{} ({:?})", assignment.department_code, assignment.role)
        }
        CaseEvent::Acknowledged { assignment, .. } => {
            format!("报到: {}", assignment.responsible_person)
        }
        CaseEvent::CheckedIn {
            person,
            distance_meters,
            ..
        } => format!("到场: {person} ({distance_meters:.0} m)"),
        CaseEvent::Progressed { note, .. } => note.clone(),
        CaseEvent::Resolved { assignment, .. } => format!("办结: {}", assignment.resolution),
        CaseEvent::Returned { assignment } => format!("退回: {}", assignment.return_reason),
        CaseEvent::ExtensionRequested { extra, reason, .. } => {
            format!("申请延期 {}: {reason}", human(*extra))
        }
        CaseEvent::Extended {
            new_due_at, extra, ..
        } => format!(
            "同意延期 {}, 办结时限 {}",
            human(*extra),
            new_due_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        CaseEvent::ExtensionRefused { note, .. } => format!("不同意延期: {note}"),
        CaseEvent::ReturnDecided {
            upheld,
            note,
            fallback_department_code,
            ..
        } => {
            let mut detail = if *upheld {
                format!("退回成立: {note}")
            } else {
                format!("退回不成立 (推诿), 部门须重新报到: {note}")
            };
            if let Some(code) = fallback_department_code {
                detail.push_str(&format!("; 兜底部门 {code}"));
            }
            detail
        }
        CaseEvent::Overdue {
            assignment,
            clock,
            late_by,
            ..
        } => format!(
            "{} {}超期 ({} late)",
            assignment.department_code,
            clock.duty(),
            human(*late_by)
        ),
        CaseEvent::Escalated {
            assignment,
            clock,
            supervision_department_code,
            ..
        } => format!(
            "督办: {} {} → {}",
            assignment.department_code,
            clock.duty(),
            if supervision_department_code.is_empty() {
                "(no supervision department)"
            } else {
                supervision_department_code
            }
        ),
        CaseEvent::Verified { passed: true, .. } => "核查通过".into(),
        CaseEvent::Verified {
            passed: false,
            note,
            ..
        } => format!("核查未通过: {note}"),
        CaseEvent::Closed => "结案".into(),
        CaseEvent::Reopened { .. } => "返工".into(),
        CaseEvent::ResolvedLocally { resolution } => format!("自办: {resolution}"),
        CaseEvent::Deferred { reason, .. } => format!("缓办: {reason}"),
        CaseEvent::Resumed { deferred_for, .. } => {
            format!("恢复办理 (缓办 {})", human(*deferred_for))
        }
        CaseEvent::ReportMerged {
            assignment,
            report,
            report_count,
        } => format!(
            "{} told: report {} merged ({report_count} reports)",
            assignment.department_code, report.report_id
        ),
        CaseEvent::EvidenceAttached {
            assignment,
            attachments,
            ..
        } => format!(
            "{} told: {} photo(s) attached",
            assignment.department_code,
            attachments.len()
        ),
        CaseEvent::MarkedRecurrent {
            assignment,
            earlier_case_ids,
        } => format!(
            "{} told: recurring problem (几经反复), earlier cases {}",
            assignment.department_code,
            earlier_case_ids.join(", ")
        ),
    }
}

/// A duration as people read it: `45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`.
pub fn human(duration: chrono::Duration) -> String {
    let seconds = duration.num_seconds().max(0);
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds / 60),
        3600..86_400 => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{} d {} h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}
