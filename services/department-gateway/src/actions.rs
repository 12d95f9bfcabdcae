//! Department actions as the gateway receives them, checked for what the gateway can judge alone
//! (required fields, id shapes) and turned into the action dispatch records. Dispatch owns every
//! other rule (state transitions, deadlines, distances).

use crate::domain::{self, FieldError};
use whistle_proto::dispatch::record_department_action_request::Action;
use whistle_proto::dispatch::{
    AcknowledgeAction, CheckInAction, ExtensionRequestAction, ProgressAction, ResolveAction,
    ReturnAction,
};
use whistle_proto::gateway::{
    AcknowledgeRequest, CheckInRequest, ReportProgressRequest, RequestExtensionRequest,
    ResolveRequest, ReturnRequest,
};

/// An action that passed the gateway's checks, not yet bound to a department.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedAction {
    pub assignment_id: String,
    /// The caller's idempotency key; `None` when it sent none.
    pub request_id: Option<String>,
    pub action: Action,
}

impl CheckedAction {
    /// `acknowledge`, `check_in`, ... for logs and spans.
    pub fn name(&self) -> &'static str {
        match self.action {
            Action::Acknowledge(_) => "acknowledge",
            Action::CheckIn(_) => "check_in",
            Action::Progress(_) => "report_progress",
            Action::Resolve(_) => "resolve",
            Action::ReturnAssignment(_) => "return",
            Action::RequestExtension(_) => "request_extension",
        }
    }
}

fn field(name: &'static str) -> impl Fn(String) -> FieldError {
    move |reason| FieldError::new(name, reason)
}

fn common(
    assignment_id: &str,
    request_id: &str,
    action: Action,
) -> Result<CheckedAction, FieldError> {
    let assignment_id = domain::required_id(assignment_id).map_err(field("assignment_id"))?;
    let request_id = domain::optional_request_id(request_id).map_err(field("request_id"))?;
    Ok(CheckedAction {
        assignment_id: assignment_id.to_string(),
        request_id: request_id.map(str::to_string),
        action,
    })
}

/// 报到: `responsible_person` is required.
pub fn acknowledge(request: AcknowledgeRequest) -> Result<CheckedAction, FieldError> {
    let checked = common(
        &request.assignment_id,
        &request.request_id,
        Action::Acknowledge(AcknowledgeAction {
            responsible_person: request.responsible_person.clone(),
            contact_phone: request.contact_phone,
            promised_at: request.promised_at,
        }),
    )?;
    domain::required_text(&request.responsible_person).map_err(field("responsible_person"))?;
    Ok(checked)
}

/// 到场: the location is judged by dispatch against the case's place.
pub fn check_in(request: CheckInRequest) -> Result<CheckedAction, FieldError> {
    common(
        &request.assignment_id,
        &request.request_id,
        Action::CheckIn(CheckInAction {
            lat: request.lat,
            lng: request.lng,
            person: request.person,
        }),
    )
}

/// 反馈 while working.
pub fn report_progress(request: ReportProgressRequest) -> Result<CheckedAction, FieldError> {
    common(
        &request.assignment_id,
        &request.request_id,
        Action::Progress(ProgressAction {
            note: request.note,
            evidence: request.evidence,
        }),
    )
}

/// 办结: `resolution` is required.
pub fn resolve(request: ResolveRequest) -> Result<CheckedAction, FieldError> {
    let checked = common(
        &request.assignment_id,
        &request.request_id,
        Action::Resolve(ResolveAction {
            resolution: request.resolution.clone(),
            evidence: request.evidence,
        }),
    )?;
    domain::required_text(&request.resolution).map_err(field("resolution"))?;
    Ok(checked)
}

/// 退回: `reason` is required.
pub fn return_assignment(request: ReturnRequest) -> Result<CheckedAction, FieldError> {
    let checked = common(
        &request.assignment_id,
        &request.request_id,
        Action::ReturnAssignment(ReturnAction {
            reason: request.reason.clone(),
            suggested_department_code: request.suggested_department_code,
        }),
    )?;
    domain::required_text(&request.reason).map_err(field("reason"))?;
    Ok(checked)
}

/// 延期: how much time and why are judged by dispatch.
pub fn request_extension(request: RequestExtensionRequest) -> Result<CheckedAction, FieldError> {
    common(
        &request.assignment_id,
        &request.request_id,
        Action::RequestExtension(ExtensionRequestAction {
            extra: request.extra,
            reason: request.reason,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of<T>(result: Result<T, FieldError>) -> String {
        match result {
            Ok(_) => "accepted".into(),
            Err(error) => error.field,
        }
    }

    #[test]
    fn assignment_id_is_required_everywhere() {
        assert_eq!(
            field_of(check_in(CheckInRequest::default())),
            "assignment_id"
        );
        assert_eq!(
            field_of(report_progress(ReportProgressRequest::default())),
            "assignment_id"
        );
        assert_eq!(
            field_of(request_extension(RequestExtensionRequest::default())),
            "assignment_id"
        );
        assert_eq!(
            field_of(acknowledge(AcknowledgeRequest::default())),
            "assignment_id"
        );
    }

    #[test]
    fn required_texts_are_named() {
        let acknowledge_without_person = AcknowledgeRequest {
            assignment_id: "a-1".into(),
            responsible_person: "  ".into(),
            ..Default::default()
        };
        assert_eq!(
            field_of(acknowledge(acknowledge_without_person)),
            "responsible_person"
        );
        let resolve_without_resolution = ResolveRequest {
            assignment_id: "a-1".into(),
            ..Default::default()
        };
        assert_eq!(field_of(resolve(resolve_without_resolution)), "resolution");
        let return_without_reason = ReturnRequest {
            assignment_id: "a-1".into(),
            ..Default::default()
        };
        assert_eq!(field_of(return_assignment(return_without_reason)), "reason");
    }

    #[test]
    fn long_request_ids_are_refused() {
        let request = CheckInRequest {
            assignment_id: "a-1".into(),
            request_id: "r".repeat(129),
            ..Default::default()
        };
        assert_eq!(field_of(check_in(request)), "request_id");
    }

    #[test]
    fn a_valid_acknowledgement_keeps_its_fields() {
        let checked = acknowledge(AcknowledgeRequest {
            assignment_id: "a-1".into(),
            request_id: "r-1".into(),
            responsible_person: "王师傅".into(),
            contact_phone: "13800000000".into(),
            promised_at: None,
        })
        .expect("valid");
        assert_eq!(checked.assignment_id, "a-1");
        assert_eq!(checked.request_id.as_deref(), Some("r-1"));
        assert_eq!(checked.name(), "acknowledge");
        assert!(matches!(
            checked.action,
            Action::Acknowledge(ref action) if action.responsible_person == "王师傅" && action.contact_phone == "13800000000"
        ));
    }
}
