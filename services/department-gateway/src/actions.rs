//! Department actions as the gateway receives them, checked for what the gateway can judge alone
//! (every field within the limits of `[limits]`, required fields, id shapes) and turned into the
//! action dispatch records. Dispatch owns every other rule (state transitions, deadlines, distances).

use crate::domain;
use whistle_platform::validation::{FieldError, LimitsConfig};
use whistle_proto::dispatch::record_department_action_request::Action;
use whistle_proto::dispatch::{
    AcknowledgeAction, CheckInAction, ExtensionRequestAction, ProgressAction, ResolveAction,
    ReturnAction,
};
use whistle_proto::gateway::{
    AcknowledgeRequest, CheckInRequest, ReportProgressRequest, RequestExtensionRequest,
    ResolveRequest, ReturnRequest,
};
use whistle_proto::types::Attachment;

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

fn common(
    limits: &LimitsConfig,
    assignment_id: &str,
    request_id: &str,
    action: Action,
) -> Result<CheckedAction, FieldError> {
    let assignment_id = domain::required_id(limits, "assignment_id", assignment_id)?;
    let request_id = domain::optional_id(limits, "request_id", request_id)?;
    Ok(CheckedAction {
        assignment_id: assignment_id.to_string(),
        request_id: request_id.map(str::to_string),
        action,
    })
}

/// Evidence items: how many, and each one's fields.
fn check_evidence(limits: &LimitsConfig, evidence: &[Attachment]) -> Result<(), FieldError> {
    LimitsConfig::check_items("evidence", evidence.len(), limits.attachments)?;
    for (index, item) in evidence.iter().enumerate() {
        limits.check_uri(&format!("evidence[{index}].uri"), &item.uri)?;
        LimitsConfig::check_chars(
            &format!("evidence[{index}].sha256"),
            &item.sha256,
            domain::SHA256_HEX_CHARS,
        )?;
        limits.check_media_type(&format!("evidence[{index}].media_type"), &item.media_type)?;
    }
    Ok(())
}

/// 报到: `responsible_person` is required.
pub fn acknowledge(
    limits: &LimitsConfig,
    request: AcknowledgeRequest,
) -> Result<CheckedAction, FieldError> {
    limits.check_name("responsible_person", &request.responsible_person)?;
    limits.check_name("contact_phone", &request.contact_phone)?;
    let checked = common(
        limits,
        &request.assignment_id,
        &request.request_id,
        Action::Acknowledge(AcknowledgeAction {
            responsible_person: request.responsible_person.clone(),
            contact_phone: request.contact_phone,
            promised_at: request.promised_at,
        }),
    )?;
    domain::required_text("responsible_person", &request.responsible_person)?;
    Ok(checked)
}

/// 到场: the location is judged by dispatch against the case's place.
pub fn check_in(
    limits: &LimitsConfig,
    request: CheckInRequest,
) -> Result<CheckedAction, FieldError> {
    limits.check_name("person", &request.person)?;
    common(
        limits,
        &request.assignment_id,
        &request.request_id,
        Action::CheckIn(CheckInAction {
            lat: request.lat,
            lng: request.lng,
            person: request.person,
            datum: request.datum,
        }),
    )
}

/// 反馈 while working.
pub fn report_progress(
    limits: &LimitsConfig,
    request: ReportProgressRequest,
) -> Result<CheckedAction, FieldError> {
    limits.check_text("note", &request.note)?;
    check_evidence(limits, &request.evidence)?;
    common(
        limits,
        &request.assignment_id,
        &request.request_id,
        Action::Progress(ProgressAction {
            note: request.note,
            evidence: request.evidence,
        }),
    )
}

/// 办结: `resolution` is required.
pub fn resolve(
    limits: &LimitsConfig,
    request: ResolveRequest,
) -> Result<CheckedAction, FieldError> {
    limits.check_text("resolution", &request.resolution)?;
    check_evidence(limits, &request.evidence)?;
    let checked = common(
        limits,
        &request.assignment_id,
        &request.request_id,
        Action::Resolve(ResolveAction {
            resolution: request.resolution.clone(),
            evidence: request.evidence,
        }),
    )?;
    domain::required_text("resolution", &request.resolution)?;
    Ok(checked)
}

/// 退回: `reason` is required.
pub fn return_assignment(
    limits: &LimitsConfig,
    request: ReturnRequest,
) -> Result<CheckedAction, FieldError> {
    limits.check_text("reason", &request.reason)?;
    limits.check_code(
        "suggested_department_code",
        &request.suggested_department_code,
    )?;
    let checked = common(
        limits,
        &request.assignment_id,
        &request.request_id,
        Action::ReturnAssignment(ReturnAction {
            reason: request.reason.clone(),
            suggested_department_code: request.suggested_department_code,
        }),
    )?;
    domain::required_text("reason", &request.reason)?;
    Ok(checked)
}

/// 延期: how much time and why are judged by dispatch.
pub fn request_extension(
    limits: &LimitsConfig,
    request: RequestExtensionRequest,
) -> Result<CheckedAction, FieldError> {
    limits.check_text("reason", &request.reason)?;
    common(
        limits,
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

    fn limits() -> LimitsConfig {
        LimitsConfig::default()
    }

    fn field_of<T>(result: Result<T, FieldError>) -> String {
        match result {
            Ok(_) => "accepted".into(),
            Err(error) => error.field,
        }
    }

    #[test]
    fn assignment_id_is_required_everywhere() {
        assert_eq!(
            field_of(check_in(&limits(), CheckInRequest::default())),
            "assignment_id"
        );
        assert_eq!(
            field_of(report_progress(&limits(), ReportProgressRequest::default())),
            "assignment_id"
        );
        assert_eq!(
            field_of(request_extension(
                &limits(),
                RequestExtensionRequest::default()
            )),
            "assignment_id"
        );
        assert_eq!(
            field_of(acknowledge(&limits(), AcknowledgeRequest::default())),
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
            field_of(acknowledge(&limits(), acknowledge_without_person)),
            "responsible_person"
        );
        let resolve_without_resolution = ResolveRequest {
            assignment_id: "a-1".into(),
            ..Default::default()
        };
        assert_eq!(
            field_of(resolve(&limits(), resolve_without_resolution)),
            "resolution"
        );
        let return_without_reason = ReturnRequest {
            assignment_id: "a-1".into(),
            ..Default::default()
        };
        assert_eq!(
            field_of(return_assignment(&limits(), return_without_reason)),
            "reason"
        );
    }

    #[test]
    fn long_request_ids_are_refused() {
        let request = CheckInRequest {
            assignment_id: "a-1".into(),
            request_id: "r".repeat(129),
            ..Default::default()
        };
        assert_eq!(field_of(check_in(&limits(), request)), "request_id");
    }

    #[test]
    fn every_string_and_list_is_held_to_its_limit() {
        let limits = LimitsConfig {
            id_chars: 8,
            code_chars: 8,
            name_chars: 8,
            text_chars: 8,
            uri_chars: 8,
            media_type_chars: 8,
            attachments: 2,
            ..LimitsConfig::default()
        };
        let long = "长".repeat(9);
        let evidence = |uri: &str, sha256: &str, media_type: &str| Attachment {
            uri: uri.into(),
            sha256: sha256.into(),
            media_type: media_type.into(),
            size_bytes: 1,
        };
        let answer = |result: Result<CheckedAction, FieldError>| match result {
            Ok(_) => "accepted".to_string(),
            Err(error) => error.to_string(),
        };
        let acknowledgement = || AcknowledgeRequest {
            assignment_id: "a-1".into(),
            responsible_person: "王".into(),
            ..Default::default()
        };
        let resolution = || ResolveRequest {
            assignment_id: "a-1".into(),
            resolution: "done".into(),
            ..Default::default()
        };
        let cases = [
            (
                acknowledge(
                    &limits,
                    AcknowledgeRequest {
                        assignment_id: long.clone(),
                        ..acknowledgement()
                    },
                ),
                "assignment_id: at most 8 characters",
            ),
            (
                acknowledge(
                    &limits,
                    AcknowledgeRequest {
                        request_id: long.clone(),
                        ..acknowledgement()
                    },
                ),
                "request_id: at most 8 characters",
            ),
            (
                acknowledge(
                    &limits,
                    AcknowledgeRequest {
                        responsible_person: long.clone(),
                        ..acknowledgement()
                    },
                ),
                "responsible_person: at most 8 characters",
            ),
            (
                acknowledge(
                    &limits,
                    AcknowledgeRequest {
                        contact_phone: long.clone(),
                        ..acknowledgement()
                    },
                ),
                "contact_phone: at most 8 characters",
            ),
            (
                check_in(
                    &limits,
                    CheckInRequest {
                        assignment_id: "a-1".into(),
                        person: long.clone(),
                        ..Default::default()
                    },
                ),
                "person: at most 8 characters",
            ),
            (
                report_progress(
                    &limits,
                    ReportProgressRequest {
                        assignment_id: "a-1".into(),
                        note: long.clone(),
                        ..Default::default()
                    },
                ),
                "note: at most 8 characters",
            ),
            (
                report_progress(
                    &limits,
                    ReportProgressRequest {
                        assignment_id: "a-1".into(),
                        evidence: vec![evidence("u", "", "m"); 3],
                        ..Default::default()
                    },
                ),
                "evidence: at most 2 items",
            ),
            (
                resolve(
                    &limits,
                    ResolveRequest {
                        evidence: vec![evidence("u", "", "m"), evidence(&long, "", "m")],
                        ..resolution()
                    },
                ),
                "evidence[1].uri: at most 8 characters",
            ),
            (
                resolve(
                    &limits,
                    ResolveRequest {
                        evidence: vec![evidence("u", &"f".repeat(65), "m")],
                        ..resolution()
                    },
                ),
                "evidence[0].sha256: at most 64 characters",
            ),
            (
                resolve(
                    &limits,
                    ResolveRequest {
                        evidence: vec![evidence("u", "", &long)],
                        ..resolution()
                    },
                ),
                "evidence[0].media_type: at most 8 characters",
            ),
            (
                resolve(
                    &limits,
                    ResolveRequest {
                        resolution: long.clone(),
                        ..resolution()
                    },
                ),
                "resolution: at most 8 characters",
            ),
            (
                return_assignment(
                    &limits,
                    ReturnRequest {
                        assignment_id: "a-1".into(),
                        reason: long.clone(),
                        ..Default::default()
                    },
                ),
                "reason: at most 8 characters",
            ),
            (
                return_assignment(
                    &limits,
                    ReturnRequest {
                        assignment_id: "a-1".into(),
                        reason: "not ours".into(),
                        suggested_department_code: long.clone(),
                        ..Default::default()
                    },
                ),
                "suggested_department_code: at most 8 characters",
            ),
            (
                request_extension(
                    &limits,
                    RequestExtensionRequest {
                        assignment_id: "a-1".into(),
                        reason: long.clone(),
                        ..Default::default()
                    },
                ),
                "reason: at most 8 characters",
            ),
        ];
        for (result, expected) in cases {
            assert_eq!(answer(result), expected);
        }
        let within = resolve(
            &limits,
            ResolveRequest {
                resolution: "已清运完毕".into(),
                evidence: vec![evidence("s3://x", &"f".repeat(64), "image/"); 2],
                ..resolution()
            },
        );
        assert_eq!(answer(within), "accepted");
    }

    #[test]
    fn a_valid_acknowledgement_keeps_its_fields() {
        let checked = acknowledge(
            &limits(),
            AcknowledgeRequest {
                assignment_id: "a-1".into(),
                request_id: "r-1".into(),
                responsible_person: "王师傅".into(),
                contact_phone: "13800000000".into(),
                promised_at: None,
            },
        )
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
