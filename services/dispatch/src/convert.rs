//! Conversions between dispatch's domain and the protobuf contract.

use crate::domain::{
    Assignment, AssignmentStatus, CaseStatus, ClockKind, Evidence, Flag, LimitOverrides, Role,
    Route, Severity,
};
use crate::error::DispatchError;
use chrono::{DateTime, Duration, Utc};
use whistle_platform::clock::to_proto_timestamp;
use whistle_platform::validation::{AttachmentContent, LimitsConfig};
use whistle_proto::dispatch as pb;
use whistle_proto::types as types_pb;

pub fn severity_from_proto(value: i32) -> Option<Severity> {
    match types_pb::Severity::try_from(value).ok()? {
        types_pb::Severity::Routine => Some(Severity::Routine),
        types_pb::Severity::Urgent => Some(Severity::Urgent),
        types_pb::Severity::Emergency => Some(Severity::Emergency),
        types_pb::Severity::Complex => Some(Severity::Complex),
        types_pb::Severity::Unspecified => None,
    }
}

pub fn case_status_to_proto(status: CaseStatus) -> types_pb::CaseStatus {
    match status {
        CaseStatus::Reported => types_pb::CaseStatus::Reported,
        CaseStatus::Accepted => types_pb::CaseStatus::Accepted,
        CaseStatus::Rejected => types_pb::CaseStatus::Rejected,
        CaseStatus::Merged => types_pb::CaseStatus::Merged,
        CaseStatus::Whistled => types_pb::CaseStatus::Whistled,
        CaseStatus::AwaitingVerification => types_pb::CaseStatus::AwaitingVerification,
        CaseStatus::Closed => types_pb::CaseStatus::Closed,
        CaseStatus::Reopened => types_pb::CaseStatus::Reopened,
    }
}

pub fn case_status_from_proto(value: i32) -> Result<Option<CaseStatus>, DispatchError> {
    let status = types_pb::CaseStatus::try_from(value)
        .map_err(|_| DispatchError::invalid("status", format!("unknown case status {value}")))?;
    Ok(match status {
        types_pb::CaseStatus::Unspecified => None,
        types_pb::CaseStatus::Reported => Some(CaseStatus::Reported),
        types_pb::CaseStatus::Accepted => Some(CaseStatus::Accepted),
        types_pb::CaseStatus::Rejected => Some(CaseStatus::Rejected),
        types_pb::CaseStatus::Merged => Some(CaseStatus::Merged),
        types_pb::CaseStatus::Whistled => Some(CaseStatus::Whistled),
        types_pb::CaseStatus::AwaitingVerification => Some(CaseStatus::AwaitingVerification),
        types_pb::CaseStatus::Closed => Some(CaseStatus::Closed),
        types_pb::CaseStatus::Reopened => Some(CaseStatus::Reopened),
    })
}

fn assignment_status_to_proto(status: AssignmentStatus) -> types_pb::AssignmentStatus {
    match status {
        AssignmentStatus::Whistled => types_pb::AssignmentStatus::Whistled,
        AssignmentStatus::Acknowledged => types_pb::AssignmentStatus::Acknowledged,
        AssignmentStatus::OnSite => types_pb::AssignmentStatus::OnSite,
        AssignmentStatus::Resolved => types_pb::AssignmentStatus::Resolved,
        AssignmentStatus::Returned => types_pb::AssignmentStatus::Returned,
    }
}

pub fn flag_to_proto(flag: Flag) -> types_pb::AssignmentFlag {
    match flag {
        Flag::AckOverdue => types_pb::AssignmentFlag::AckOverdue,
        Flag::ArrivalOverdue => types_pb::AssignmentFlag::ArrivalOverdue,
        Flag::ResolveOverdue => types_pb::AssignmentFlag::ResolveOverdue,
        Flag::Escalated => types_pb::AssignmentFlag::Escalated,
        Flag::Extended => types_pb::AssignmentFlag::Extended,
        Flag::Deferred => types_pb::AssignmentFlag::Deferred,
    }
}

pub fn clock_to_proto(kind: ClockKind) -> types_pb::Clock {
    match kind {
        ClockKind::Acknowledge => types_pb::Clock::Acknowledge,
        ClockKind::OnSite => types_pb::Clock::OnSite,
        ClockKind::Resolve => types_pb::Clock::Resolve,
    }
}

pub fn deadlines_to_proto(
    acknowledge_by: DateTime<Utc>,
    on_site_by: DateTime<Utc>,
    resolve_by: DateTime<Utc>,
) -> types_pb::Deadlines {
    types_pb::Deadlines {
        acknowledge_by: Some(to_proto_timestamp(acknowledge_by)),
        on_site_by: Some(to_proto_timestamp(on_site_by)),
        resolve_by: Some(to_proto_timestamp(resolve_by)),
    }
}

pub fn evidence_to_proto(evidence: &[Evidence]) -> Vec<types_pb::Attachment> {
    evidence
        .iter()
        .map(|item| types_pb::Attachment {
            uri: item.uri.clone(),
            sha256: item.sha256.clone(),
            media_type: item.media_type.clone(),
            size_bytes: item.size_bytes,
        })
        .collect()
}

/// Evidence from a request, checked against the limits: at most `limits.attachments` items, each
/// with an absolute URI (digest, media type and size optional, well-formed when set).
pub fn evidence_from_proto(
    limits: &LimitsConfig,
    field: &str,
    attachments: &[types_pb::Attachment],
) -> Result<Vec<Evidence>, DispatchError> {
    limits.check_attachments(field, attachments, AttachmentContent::Optional)?;
    Ok(attachments
        .iter()
        .map(|attachment| Evidence {
            uri: attachment.uri.clone(),
            sha256: attachment.sha256.clone(),
            media_type: attachment.media_type.clone(),
            size_bytes: attachment.size_bytes,
        })
        .collect())
}

pub fn assignment_to_proto(assignment: &Assignment) -> types_pb::Assignment {
    let return_decision = match &assignment.return_decision {
        None => types_pb::ReturnDecision::Unspecified,
        Some(decision) if decision.granted => types_pb::ReturnDecision::Upheld,
        Some(_) => types_pb::ReturnDecision::Rejected,
    };
    types_pb::Assignment {
        assignment_id: assignment.assignment_id.clone(),
        case_id: assignment.case_id.clone(),
        department_code: assignment.department_code.clone(),
        role: match assignment.role {
            Role::Lead => types_pb::AssignmentRole::Lead,
            Role::Co => types_pb::AssignmentRole::Co,
        } as i32,
        status: assignment_status_to_proto(assignment.status) as i32,
        flags: assignment
            .flags
            .iter()
            .map(|flag| flag_to_proto(*flag) as i32)
            .collect(),
        whistled_at: Some(to_proto_timestamp(assignment.whistled_at)),
        deadlines: Some(deadlines_to_proto(
            assignment.acknowledge_by,
            assignment.on_site_by,
            assignment.resolve_by,
        )),
        requires_on_site: assignment.requires_on_site,
        acknowledged_at: assignment.acknowledged_at.map(to_proto_timestamp),
        responsible_person: assignment.responsible_person.clone(),
        contact_phone: assignment.contact_phone.clone(),
        promised_at: assignment.promised_at.map(to_proto_timestamp),
        on_site_at: assignment.on_site_at.map(to_proto_timestamp),
        resolved_at: assignment.resolved_at.map(to_proto_timestamp),
        resolution: assignment.resolution.clone(),
        evidence: evidence_to_proto(&assignment.evidence),
        returned_at: assignment.returned_at.map(to_proto_timestamp),
        return_reason: assignment.return_reason.clone(),
        suggested_department_code: assignment.suggested_department_code.clone(),
        version: assignment.version,
        return_decision: return_decision as i32,
        return_decided_at: assignment
            .return_decision
            .as_ref()
            .map(|decision| to_proto_timestamp(decision.at)),
        rejected_returns: assignment.rejected_returns,
        supervision_department_code: assignment.supervision_department_code.clone(),
        extension: assignment
            .extension
            .as_ref()
            .map(|extension| types_pb::ExtensionRequest {
                extra: Some(duration_to_proto(extension.extra)),
                requested_at: Some(to_proto_timestamp(extension.requested_at)),
                decision: match &extension.decision {
                    None => types_pb::ExtensionDecision::Unspecified,
                    Some(decision) if decision.granted => types_pb::ExtensionDecision::Approved,
                    Some(_) => types_pb::ExtensionDecision::Refused,
                } as i32,
                decided_at: extension
                    .decision
                    .as_ref()
                    .map(|decision| to_proto_timestamp(decision.at)),
                decided_by: extension
                    .decision
                    .as_ref()
                    .map(|decision| decision.by.clone())
                    .unwrap_or_default(),
            }),
        overdue: assignment.is_overdue(),
    }
}

pub fn duration_to_proto(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: duration.num_seconds(),
        nanos: duration.subsec_nanos(),
    }
}

/// A positive duration of at most 366 days (a limit, a second interval, an extension).
pub fn duration_from_proto(
    field: &str,
    duration: &prost_types::Duration,
) -> Result<Duration, DispatchError> {
    let positive = duration.seconds > 0 || (duration.seconds == 0 && duration.nanos > 0);
    if !positive || !(0..1_000_000_000).contains(&duration.nanos) {
        return Err(DispatchError::invalid(field, "must be a positive duration"));
    }
    let value = Duration::try_seconds(duration.seconds)
        .map(|seconds| seconds + Duration::nanoseconds(i64::from(duration.nanos)))
        .ok_or_else(|| DispatchError::invalid(field, "out of range"))?;
    if value > Duration::days(crate::domain::limits::LONGEST_LIMIT_DAYS) {
        return Err(DispatchError::invalid(field, "at most 366 days"));
    }
    Ok(value)
}

pub fn limits_to_proto(limits: &LimitOverrides) -> pb::LimitOverrides {
    pb::LimitOverrides {
        acknowledge_within: limits.acknowledge_within.map(duration_to_proto),
        on_site_within: limits.on_site_within.map(duration_to_proto),
        resolve_within: limits.resolve_within.map(duration_to_proto),
        acknowledge_escalate_after: limits.acknowledge_escalate_after.map(duration_to_proto),
        on_site_escalate_after: limits.on_site_escalate_after.map(duration_to_proto),
        resolve_escalate_after: limits.resolve_escalate_after.map(duration_to_proto),
    }
}

pub fn limits_from_proto(
    field: &str,
    limits: Option<&pb::LimitOverrides>,
) -> Result<LimitOverrides, DispatchError> {
    let Some(limits) = limits else {
        return Ok(LimitOverrides::default());
    };
    let convert = |name: &str, value: &Option<prost_types::Duration>| {
        value
            .as_ref()
            .map(|duration| duration_from_proto(&format!("{field}.{name}"), duration))
            .transpose()
    };
    let overrides = LimitOverrides {
        acknowledge_within: convert("acknowledge_within", &limits.acknowledge_within)?,
        on_site_within: convert("on_site_within", &limits.on_site_within)?,
        resolve_within: convert("resolve_within", &limits.resolve_within)?,
        acknowledge_escalate_after: convert(
            "acknowledge_escalate_after",
            &limits.acknowledge_escalate_after,
        )?,
        on_site_escalate_after: convert("on_site_escalate_after", &limits.on_site_escalate_after)?,
        resolve_escalate_after: convert("resolve_escalate_after", &limits.resolve_escalate_after)?,
    };
    overrides
        .check()
        .map_err(|(name, reason)| DispatchError::invalid(format!("{field}.{name}"), reason))?;
    Ok(overrides)
}

pub fn route_to_proto(route: &Route, version: i64) -> pb::Route {
    pb::Route {
        route_id: route.route_id.clone(),
        category_code: route.category_code.clone(),
        area_code: route.area_code.clone(),
        lead_department_code: route.lead_department_code.clone(),
        co_department_codes: route.co_department_codes.clone(),
        auto_whistle: route.auto_whistle,
        requires_on_site: route.requires_on_site,
        limits: Some(limits_to_proto(&route.limits)),
        version: version as u64,
    }
}

/// Attachments as intake publishes them, kept as evidence (no limits: intake checked them).
pub fn attachments_from_proto(attachments: &[types_pb::Attachment]) -> Vec<Evidence> {
    attachments
        .iter()
        .map(|attachment| Evidence {
            uri: attachment.uri.clone(),
            sha256: attachment.sha256.clone(),
            media_type: attachment.media_type.clone(),
            size_bytes: attachment.size_bytes,
        })
        .collect()
}
