//! Every request of `DispatchService` checked against the limits table and the contract, before
//! anything is read: one pure function per request, shared by the handlers, the property tests
//! and the bound on events. The first field that fails is named (`progress.evidence[2].uri`).

use crate::catalogue;
use crate::convert::{case_status_from_proto, evidence_from_proto, limits_from_proto};
use crate::domain::{self, CaseStatus, LimitOverrides, Route};
use crate::error::DispatchError;
use crate::service::DepartmentAction;
use chrono::{DateTime, Utc};
use whistle_platform::validation::LimitsConfig;
use whistle_proto::dispatch::{self as pb, record_department_action_request::Action};

/// How far ahead a promised time may be.
pub const PROMISE_HORIZON_DAYS: i64 = 366;

/// An id the caller must send: within `limits.id_chars`, not blank.
pub fn required_id<'a>(
    limits: &LimitsConfig,
    field: &str,
    value: &'a str,
) -> Result<&'a str, DispatchError> {
    limits.check_id(field, value)?;
    if value.trim().is_empty() {
        return Err(DispatchError::invalid(field, "required"));
    }
    Ok(value)
}

/// Free text the caller must send: within `limits.text_chars`, not blank.
pub fn required_text<'a>(
    limits: &LimitsConfig,
    field: &str,
    value: &'a str,
) -> Result<&'a str, DispatchError> {
    limits.check_text(field, value)?;
    if value.trim().is_empty() {
        return Err(DispatchError::invalid(field, "required"));
    }
    Ok(value)
}

/// A department code: within `limits.code_chars`, then the subject-token rule.
fn department_code(limits: &LimitsConfig, field: &str, value: &str) -> Result<(), DispatchError> {
    limits.check_code(field, value)?;
    domain::check_department_code(value).map_err(|reason| DispatchError::invalid(field, reason))
}

/// The departments of one whistle: a lead and at most `limits.list_items - 1` others, each
/// named once.
fn departments(
    limits: &LimitsConfig,
    lead_field: &str,
    lead: &str,
    co_field: &str,
    co: &[String],
) -> Result<(), DispatchError> {
    department_code(limits, lead_field, lead)?;
    LimitsConfig::check_items(co_field, co.len(), limits.list_items.saturating_sub(1))?;
    for (index, code) in co.iter().enumerate() {
        department_code(limits, &format!("{co_field}[{index}]"), code)?;
        if code == lead || co[..index].contains(code) {
            return Err(DispatchError::invalid(
                format!("{co_field}[{index}]"),
                "names a department twice",
            ));
        }
    }
    Ok(())
}

pub fn check_get_case(
    limits: &LimitsConfig,
    request: &pb::GetCaseRequest,
) -> Result<(), DispatchError> {
    required_id(limits, "case_id", &request.case_id)?;
    Ok(())
}

/// What a `ListCases` asks for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseListing {
    pub status: Option<CaseStatus>,
    pub page_size: u64,
}

pub fn check_list_cases(
    limits: &LimitsConfig,
    request: &pb::ListCasesRequest,
) -> Result<CaseListing, DispatchError> {
    let status = case_status_from_proto(request.status)?;
    limits.check_code("street_slug", &request.street_slug)?;
    limits.check_code("department_code", &request.department_code)?;
    let page_size = limits.check_page_size("page_size", request.page_size)?;
    limits.check_id("page_token", &request.page_token)?;
    Ok(CaseListing { status, page_size })
}

pub fn check_accept(
    limits: &LimitsConfig,
    request: &pb::AcceptCaseRequest,
) -> Result<(), DispatchError> {
    required_id(limits, "case_id", &request.case_id)?;
    required_id(limits, "operator_id", &request.operator_id)?;
    Ok(())
}

pub fn check_reject(
    limits: &LimitsConfig,
    request: &pb::RejectCaseRequest,
) -> Result<(), DispatchError> {
    required_id(limits, "case_id", &request.case_id)?;
    required_id(limits, "operator_id", &request.operator_id)?;
    required_text(limits, "reason", &request.reason)?;
    Ok(())
}

/// Returns the operator's limit overrides.
pub fn check_whistle(
    limits: &LimitsConfig,
    request: &pb::WhistleCaseRequest,
) -> Result<LimitOverrides, DispatchError> {
    required_id(limits, "case_id", &request.case_id)?;
    required_id(limits, "operator_id", &request.operator_id)?;
    departments(
        limits,
        "lead_department_code",
        &request.lead_department_code,
        "co_department_codes",
        &request.co_department_codes,
    )?;
    limits_from_proto("limits", request.limits.as_ref())
}

pub fn check_resolve_locally(
    limits: &LimitsConfig,
    request: &pb::ResolveLocallyRequest,
) -> Result<(), DispatchError> {
    required_id(limits, "case_id", &request.case_id)?;
    required_id(limits, "operator_id", &request.operator_id)?;
    required_text(limits, "resolution", &request.resolution)?;
    Ok(())
}

/// A failed verification needs a note saying what is still wrong.
pub fn check_verify(
    limits: &LimitsConfig,
    request: &pb::VerifyCaseRequest,
) -> Result<(), DispatchError> {
    required_id(limits, "case_id", &request.case_id)?;
    required_id(limits, "verifier_id", &request.verifier_id)?;
    if request.passed {
        limits.check_text("note", &request.note)?;
    } else {
        required_text(limits, "note", &request.note)?;
    }
    Ok(())
}

pub fn check_decide_extension(
    limits: &LimitsConfig,
    request: &pb::DecideExtensionRequest,
) -> Result<(), DispatchError> {
    required_id(limits, "case_id", &request.case_id)?;
    required_id(limits, "assignment_id", &request.assignment_id)?;
    required_id(limits, "operator_id", &request.operator_id)?;
    limits.check_text("note", &request.note)?;
    Ok(())
}

/// Returns the route to store.
pub fn check_put_route(
    limits: &LimitsConfig,
    request: &pb::PutRouteRequest,
) -> Result<Route, DispatchError> {
    let proto = request
        .route
        .as_ref()
        .ok_or_else(|| DispatchError::invalid("route", "required"))?;
    let route = Route {
        route_id: proto.route_id.clone(),
        category_code: proto.category_code.clone(),
        area_code: proto.area_code.clone(),
        lead_department_code: proto.lead_department_code.clone(),
        co_department_codes: proto.co_department_codes.clone(),
        auto_whistle: proto.auto_whistle,
        requires_on_site: proto.requires_on_site,
        limits: limits_from_proto("route.limits", proto.limits.as_ref())?,
    };
    catalogue::check_route(&route, limits)?;
    Ok(route)
}

pub fn check_list_routes(
    limits: &LimitsConfig,
    request: &pb::ListRoutesRequest,
) -> Result<(), DispatchError> {
    limits.check_code("category_code", &request.category_code)?;
    limits.check_code("area_code", &request.area_code)?;
    Ok(())
}

/// Returns the action to record; a `request_extension` is checked and then UNIMPLEMENTED.
pub fn check_department_action(
    limits: &LimitsConfig,
    now: DateTime<Utc>,
    request: &pb::RecordDepartmentActionRequest,
) -> Result<DepartmentAction, DispatchError> {
    required_id(limits, "action_id", &request.action_id)?;
    required_id(limits, "assignment_id", &request.assignment_id)?;
    department_code(limits, "department_code", &request.department_code)?;
    let action = match &request.action {
        None => {
            return Err(DispatchError::invalid(
                "action",
                "required: one of acknowledge, check_in, progress, resolve, return_assignment, request_extension",
            ));
        }
        Some(Action::Acknowledge(acknowledge)) => {
            limits.check_name(
                "acknowledge.responsible_person",
                &acknowledge.responsible_person,
            )?;
            if acknowledge.responsible_person.trim().is_empty() {
                return Err(DispatchError::invalid(
                    "acknowledge.responsible_person",
                    "required",
                ));
            }
            limits.check_name("acknowledge.contact_phone", &acknowledge.contact_phone)?;
            let promised_at = acknowledge
                .promised_at
                .as_ref()
                .map(|timestamp| {
                    limits.check_future_timestamp(
                        "acknowledge.promised_at",
                        timestamp,
                        now,
                        chrono::Duration::days(PROMISE_HORIZON_DAYS),
                    )
                })
                .transpose()?;
            DepartmentAction::Acknowledge {
                responsible_person: acknowledge.responsible_person.clone(),
                contact_phone: acknowledge.contact_phone.clone(),
                promised_at,
            }
        }
        Some(Action::CheckIn(check_in)) => {
            let valid = |value: f64, limit: f64| value.is_finite() && value.abs() <= limit;
            if !valid(check_in.lat, 90.0) || (check_in.lat == 0.0 && check_in.lng == 0.0) {
                return Err(DispatchError::invalid(
                    "check_in.lat",
                    "required, between -90 and 90",
                ));
            }
            if !valid(check_in.lng, 180.0) {
                return Err(DispatchError::invalid(
                    "check_in.lng",
                    "required, between -180 and 180",
                ));
            }
            limits.check_name("check_in.person", &check_in.person)?;
            DepartmentAction::CheckIn {
                lat: check_in.lat,
                lng: check_in.lng,
                person: check_in.person.clone(),
            }
        }
        Some(Action::Progress(progress)) => {
            required_text(limits, "progress.note", &progress.note)?;
            DepartmentAction::Progress {
                note: progress.note.clone(),
                evidence: evidence_from_proto(limits, "progress.evidence", &progress.evidence)?,
            }
        }
        Some(Action::Resolve(resolve)) => {
            required_text(limits, "resolve.resolution", &resolve.resolution)?;
            DepartmentAction::Resolve {
                resolution: resolve.resolution.clone(),
                evidence: evidence_from_proto(limits, "resolve.evidence", &resolve.evidence)?,
            }
        }
        Some(Action::ReturnAssignment(returned)) => {
            required_text(limits, "return_assignment.reason", &returned.reason)?;
            if !returned.suggested_department_code.is_empty() {
                department_code(
                    limits,
                    "return_assignment.suggested_department_code",
                    &returned.suggested_department_code,
                )?;
            }
            DepartmentAction::Return {
                reason: returned.reason.clone(),
                suggested_department_code: returned.suggested_department_code.clone(),
            }
        }
        Some(Action::RequestExtension(extension)) => {
            limits.check_text("request_extension.reason", &extension.reason)?;
            return Err(DispatchError::Unimplemented("request_extension"));
        }
    };
    Ok(action)
}
