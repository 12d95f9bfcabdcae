//! Conversions between dispatch's domain and the protobuf contract.

use crate::domain::{
    Assignment, AssignmentStatus, CaseStatus, Evidence, Flag, LimitOverrides, Role, Route, Severity,
};
use crate::error::DispatchError;
use chrono::Duration;
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

fn flag_to_proto(flag: Flag) -> types_pb::AssignmentFlag {
    match flag {
        Flag::AckOverdue => types_pb::AssignmentFlag::AckOverdue,
        Flag::ArrivalOverdue => types_pb::AssignmentFlag::ArrivalOverdue,
        Flag::ResolveOverdue => types_pb::AssignmentFlag::ResolveOverdue,
        Flag::Escalated => types_pb::AssignmentFlag::Escalated,
        Flag::Extended => types_pb::AssignmentFlag::Extended,
        Flag::Deferred => types_pb::AssignmentFlag::Deferred,
    }
}

fn evidence_to_proto(evidence: &[Evidence]) -> Vec<types_pb::Attachment> {
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
        deadlines: Some(types_pb::Deadlines {
            acknowledge_by: Some(to_proto_timestamp(assignment.acknowledge_by)),
            on_site_by: Some(to_proto_timestamp(assignment.on_site_by)),
            resolve_by: Some(to_proto_timestamp(assignment.resolve_by)),
        }),
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
    }
}

fn duration_to_proto(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: duration.num_seconds(),
        nanos: 0,
    }
}

fn duration_from_proto(
    field: &str,
    duration: &prost_types::Duration,
) -> Result<Duration, DispatchError> {
    if duration.seconds <= 0 || duration.nanos != 0 && duration.nanos < 0 {
        return Err(DispatchError::invalid(field, "must be a positive duration"));
    }
    Duration::try_seconds(duration.seconds)
        .ok_or_else(|| DispatchError::invalid(field, "out of range"))
}

pub fn limits_to_proto(limits: &LimitOverrides) -> pb::LimitOverrides {
    pb::LimitOverrides {
        acknowledge_within: limits.acknowledge_within.map(duration_to_proto),
        on_site_within: limits.on_site_within.map(duration_to_proto),
        resolve_within: limits.resolve_within.map(duration_to_proto),
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
