//! Every request of `DispatchService` checked against the limits table and the contract, before
//! anything is read: one pure function per request, shared by the handlers, the property tests
//! and the bound on events. The first field that fails is named (`progress.evidence[2].uri`).

use crate::catalogue;
use crate::convert::{
    case_status_from_proto, duration_from_proto, evidence_from_proto, limits_from_proto,
};
use crate::domain::{self, CaseStatus, DepartmentAction, LimitOverrides, Route};
use crate::error::DispatchError;
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

/// A failed verification needs a note saying what is still wrong, and may name the assignments
/// whose work failed; a passed one names none.
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
    LimitsConfig::check_items(
        "failed_assignment_ids",
        request.failed_assignment_ids.len(),
        limits.list_items,
    )?;
    for (index, id) in request.failed_assignment_ids.iter().enumerate() {
        required_id(limits, &format!("failed_assignment_ids[{index}]"), id)?;
    }
    if request.passed && !request.failed_assignment_ids.is_empty() {
        return Err(DispatchError::invalid(
            "failed_assignment_ids",
            "must be empty when the verification passed",
        ));
    }
    Ok(())
}

pub fn check_decide_return(
    limits: &LimitsConfig,
    request: &pb::DecideReturnRequest,
) -> Result<(), DispatchError> {
    check_street_decision(
        limits,
        &request.case_id,
        &request.assignment_id,
        &request.operator_id,
        &request.note,
    )
}

/// The fields every street decision on an assignment shares (a return, an extension).
fn check_street_decision(
    limits: &LimitsConfig,
    case_id: &str,
    assignment_id: &str,
    operator_id: &str,
    note: &str,
) -> Result<(), DispatchError> {
    required_id(limits, "case_id", case_id)?;
    required_id(limits, "assignment_id", assignment_id)?;
    required_id(limits, "operator_id", operator_id)?;
    limits.check_text("note", note)?;
    Ok(())
}

/// 缓办 needs a reason; the expected end, when given, is not in the past and at most 366 days ahead.
pub fn check_defer(
    limits: &LimitsConfig,
    now: DateTime<Utc>,
    request: &pb::DeferCaseRequest,
) -> Result<Option<DateTime<Utc>>, DispatchError> {
    required_id(limits, "case_id", &request.case_id)?;
    required_id(limits, "operator_id", &request.operator_id)?;
    required_text(limits, "reason", &request.reason)?;
    Ok(request
        .until
        .as_ref()
        .map(|until| {
            limits.check_future_timestamp(
                "until",
                until,
                now,
                chrono::Duration::days(PROMISE_HORIZON_DAYS),
            )
        })
        .transpose()?)
}

pub fn check_resume(
    limits: &LimitsConfig,
    request: &pb::ResumeCaseRequest,
) -> Result<(), DispatchError> {
    required_id(limits, "case_id", &request.case_id)?;
    required_id(limits, "operator_id", &request.operator_id)?;
    limits.check_text("note", &request.note)?;
    Ok(())
}

pub fn check_decide_extension(
    limits: &LimitsConfig,
    request: &pb::DecideExtensionRequest,
) -> Result<(), DispatchError> {
    check_street_decision(
        limits,
        &request.case_id,
        &request.assignment_id,
        &request.operator_id,
        &request.note,
    )
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

/// Returns the action to record.
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
            let datum = whistle_proto::datum::datum_of(check_in.datum)
                .ok_or_else(|| DispatchError::invalid("check_in.datum", "unknown datum"))?;
            // the distance check and the events work in WGS-84 only
            let (lat, lng) = whistle_proto::datum::to_wgs84(datum, check_in.lat, check_in.lng);
            DepartmentAction::CheckIn {
                lat,
                lng,
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
            required_text(limits, "request_extension.reason", &extension.reason)?;
            let extra = extension
                .extra
                .as_ref()
                .ok_or_else(|| DispatchError::invalid("request_extension.extra", "required"))?;
            DepartmentAction::RequestExtension {
                extra: duration_from_proto("request_extension.extra", extra)?,
                reason: extension.reason.clone(),
            }
        }
    };
    Ok(action)
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;
    use whistle_platform::testing::arbitrary::{
        attachment, mostly, one_of_or_text, text, timestamp, wire_bytes,
    };
    use whistle_platform::testing::run_decoder_property;

    /// Small limits, so generated values fall on both sides of every one.
    fn limits() -> LimitsConfig {
        LimitsConfig {
            id_chars: 6,
            code_chars: 14,
            name_chars: 5,
            text_chars: 8,
            uri_chars: 30,
            media_type_chars: 12,
            attachments: 2,
            evidence_per_assignment: 4,
            list_items: 3,
            page_size: 10,
            ..LimitsConfig::default()
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("now")
    }

    fn within(value: &str, limit: usize) -> bool {
        value.chars().count() <= limit
    }

    fn department() -> BoxedStrategy<String> {
        mostly(
            &[
                "zw-sanitation",
                "pm-zhongyue",
                "zw-housing",
                "zw-fire",
                "sy-water",
                "ZW",
            ],
            14,
        )
    }

    fn id() -> BoxedStrategy<String> {
        mostly(&["c-1", "a-1", "op-7", "报到-1"], 6)
    }

    /// Checks `request` after decoding; when it passes, `limits_hold` must hold.
    fn property<M: Message + Default>(
        bytes: &[u8],
        check: impl Fn(&M) -> bool,
        limits_hold: impl Fn(&M) -> Result<(), TestCaseError>,
    ) -> Result<bool, TestCaseError> {
        let Ok(request) = M::decode(bytes) else {
            return Ok(false);
        };
        if !check(&request) {
            return Ok(false);
        }
        limits_hold(&request)?;
        Ok(true)
    }

    #[test]
    fn whatever_the_case_requests_accept_is_within_every_limit() {
        let l = limits();
        let get = text(6).prop_map(|case_id| pb::GetCaseRequest { case_id });
        run_decoder_property("GetCase", 128, wire_bytes(get), |bytes| {
            property(
                bytes,
                |r: &pb::GetCaseRequest| check_get_case(&l, r).is_ok(),
                |r| {
                    prop_assert!(within(&r.case_id, l.id_chars));
                    Ok(())
                },
            )
        });
        let list = (
            -2i32..10,
            one_of_or_text(&["", "chechenglu"], 14),
            one_of_or_text(&["", "zw-sanitation"], 14),
            any::<bool>(),
            0u32..14,
            text(6),
        )
            .prop_map(
                |(status, street_slug, department_code, overdue_only, page_size, page_token)| {
                    pb::ListCasesRequest {
                        status,
                        street_slug,
                        department_code,
                        overdue_only,
                        page_size,
                        page_token,
                        recurrent_only: overdue_only,
                    }
                },
            );
        run_decoder_property("ListCases", 256, wire_bytes(list), |bytes| {
            property(
                bytes,
                |r: &pb::ListCasesRequest| check_list_cases(&l, r).is_ok(),
                |r| {
                    prop_assert!(within(&r.street_slug, l.code_chars));
                    prop_assert!(within(&r.department_code, l.code_chars));
                    prop_assert!(within(&r.page_token, l.id_chars));
                    prop_assert!(r.page_size as usize <= l.page_size);
                    Ok(())
                },
            )
        });
        let operator_request = (text(6), text(6), text(8), any::<bool>());
        run_decoder_property(
            "AcceptCase, RejectCase, ResolveLocally, VerifyCase, DecideExtension, DecideReturn, DeferCase, ResumeCase",
            256,
            wire_bytes(
                operator_request
                    .clone()
                    .prop_map(|(case_id, operator_id, reason, _)| pb::RejectCaseRequest {
                        case_id,
                        operator_id,
                        reason,
                    }),
            ),
            |bytes| {
                let holds = |case_id: &str, operator: &str, text: &str| {
                    prop_assert!(within(case_id, l.id_chars));
                    prop_assert!(within(operator, l.id_chars));
                    prop_assert!(within(text, l.text_chars));
                    Ok(())
                };
                // the same bytes read as each of the five requests (their fields share numbers)
                let accept = property(
                    bytes,
                    |r: &pb::AcceptCaseRequest| check_accept(&l, r).is_ok(),
                    |r| holds(&r.case_id, &r.operator_id, ""),
                )?;
                let reject = property(
                    bytes,
                    |r: &pb::RejectCaseRequest| check_reject(&l, r).is_ok(),
                    |r| holds(&r.case_id, &r.operator_id, &r.reason),
                )?;
                let local = property(
                    bytes,
                    |r: &pb::ResolveLocallyRequest| check_resolve_locally(&l, r).is_ok(),
                    |r| holds(&r.case_id, &r.operator_id, &r.resolution),
                )?;
                let verify = property(
                    bytes,
                    |r: &pb::VerifyCaseRequest| check_verify(&l, r).is_ok(),
                    |r| {
                        prop_assert!(r.failed_assignment_ids.len() <= l.list_items);
                        for id in &r.failed_assignment_ids {
                            prop_assert!(within(id, l.id_chars));
                        }
                        holds(&r.case_id, &r.verifier_id, &r.note)
                    },
                )?;
                let extension = property(
                    bytes,
                    |r: &pb::DecideExtensionRequest| check_decide_extension(&l, r).is_ok(),
                    |r| {
                        prop_assert!(within(&r.assignment_id, l.id_chars));
                        holds(&r.case_id, &r.operator_id, &r.note)
                    },
                )?;
                let decided_return = property(
                    bytes,
                    |r: &pb::DecideReturnRequest| check_decide_return(&l, r).is_ok(),
                    |r| {
                        prop_assert!(within(&r.assignment_id, l.id_chars));
                        holds(&r.case_id, &r.operator_id, &r.note)
                    },
                )?;
                let deferred = property(
                    bytes,
                    |r: &pb::DeferCaseRequest| check_defer(&l, now(), r).is_ok(),
                    |r| holds(&r.case_id, &r.operator_id, &r.reason),
                )?;
                let resumed = property(
                    bytes,
                    |r: &pb::ResumeCaseRequest| check_resume(&l, r).is_ok(),
                    |r| holds(&r.case_id, &r.operator_id, &r.note),
                )?;
                Ok(accept
                    || reject
                    || local
                    || verify
                    || extension
                    || decided_return
                    || deferred
                    || resumed)
            },
        );
    }

    #[test]
    fn whatever_whistles_and_routes_accept_is_within_every_limit() {
        let l = limits();
        let whistle = (
            id(),
            id(),
            department(),
            proptest::collection::vec(department(), 0..4),
        )
            .prop_map(|(case_id, operator_id, lead, co)| pb::WhistleCaseRequest {
                case_id,
                operator_id,
                lead_department_code: lead,
                co_department_codes: co,
                limits: None,
            });
        run_decoder_property("WhistleCase", 256, wire_bytes(whistle), |bytes| {
            property(
                bytes,
                |r: &pb::WhistleCaseRequest| check_whistle(&l, r).is_ok(),
                |r| {
                    prop_assert!(within(&r.case_id, l.id_chars));
                    prop_assert!(within(&r.operator_id, l.id_chars));
                    prop_assert!(within(&r.lead_department_code, l.code_chars));
                    prop_assert!(
                        r.co_department_codes.len() < l.list_items,
                        "lead + co within list_items"
                    );
                    for code in &r.co_department_codes {
                        prop_assert!(within(code, l.code_chars));
                    }
                    Ok(())
                },
            )
        });
        let route = (
            mostly(&["route-1"], 14),
            mostly(&["E-01-03"], 14),
            mostly(&["420303", "420303003001001"], 16),
            department(),
            proptest::collection::vec(department(), 0..4),
            any::<bool>(),
        )
            .prop_map(|(route_id, category_code, area_code, lead, co, auto)| {
                pb::PutRouteRequest {
                    route: Some(pb::Route {
                        route_id,
                        category_code,
                        area_code,
                        lead_department_code: lead,
                        co_department_codes: co,
                        auto_whistle: auto,
                        requires_on_site: auto,
                        limits: None,
                        version: 0,
                    }),
                }
            });
        run_decoder_property("PutRoute", 256, wire_bytes(route), |bytes| {
            property(
                bytes,
                |r: &pb::PutRouteRequest| check_put_route(&l, r).is_ok(),
                |r| {
                    let route = r.route.as_ref().expect("checked");
                    for value in [
                        &route.route_id,
                        &route.category_code,
                        &route.area_code,
                        &route.lead_department_code,
                    ] {
                        prop_assert!(within(value, l.code_chars));
                    }
                    prop_assert!(
                        route.co_department_codes.len() < l.list_items,
                        "lead + co within list_items"
                    );
                    for code in &route.co_department_codes {
                        prop_assert!(within(code, l.code_chars));
                    }
                    Ok(())
                },
            )
        });
        let list =
            (text(14), text(14)).prop_map(|(category_code, area_code)| pb::ListRoutesRequest {
                category_code,
                area_code,
            });
        run_decoder_property("ListRoutes", 128, wire_bytes(list), |bytes| {
            property(
                bytes,
                |r: &pb::ListRoutesRequest| check_list_routes(&l, r).is_ok(),
                |r| {
                    prop_assert!(within(&r.category_code, l.code_chars));
                    prop_assert!(within(&r.area_code, l.code_chars));
                    Ok(())
                },
            )
        });
    }

    fn department_action() -> BoxedStrategy<pb::RecordDepartmentActionRequest> {
        let evidence = || proptest::collection::vec(attachment(30), 0..4);
        let action = prop_oneof![
            Just(None),
            (text(5), text(5), timestamp()).prop_map(|(person, phone, promised_at)| Some(
                Action::Acknowledge(pb::AcknowledgeAction {
                    responsible_person: person,
                    contact_phone: phone,
                    promised_at,
                })
            )),
            (-100.0f64..100.0, -200.0f64..200.0, text(5)).prop_map(|(lat, lng, person)| Some(
                Action::CheckIn(pb::CheckInAction {
                    lat,
                    lng,
                    person,
                    datum: 0
                })
            )),
            (text(8), evidence()).prop_map(|(note, evidence)| Some(Action::Progress(
                pb::ProgressAction { note, evidence }
            ))),
            (text(8), evidence()).prop_map(|(resolution, evidence)| Some(Action::Resolve(
                pb::ResolveAction {
                    resolution,
                    evidence
                }
            ))),
            (text(8), one_of_or_text(&["", "zw-housing"], 14)).prop_map(|(reason, code)| Some(
                Action::ReturnAssignment(pb::ReturnAction {
                    reason,
                    suggested_department_code: code,
                })
            )),
            (
                text(8),
                proptest::option::of((-10i64..40_000_000, -5i32..1_000_000_005))
            )
                .prop_map(|(reason, extra)| Some(Action::RequestExtension(
                    pb::ExtensionRequestAction {
                        extra: extra
                            .map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
                        reason
                    }
                ))),
        ];
        (id(), id(), department(), action)
            .prop_map(|(action_id, assignment_id, department_code, action)| {
                pb::RecordDepartmentActionRequest {
                    action_id,
                    assignment_id,
                    department_code,
                    action,
                }
            })
            .boxed()
    }

    #[test]
    fn whatever_department_actions_accept_is_within_every_limit() {
        let l = limits();
        run_decoder_property(
            "RecordDepartmentAction",
            512,
            wire_bytes(department_action()),
            |bytes| {
                let Ok(request) = pb::RecordDepartmentActionRequest::decode(bytes) else {
                    return Ok(false);
                };
                let Ok(action) = check_department_action(&l, now(), &request) else {
                    return Ok(false);
                };
                prop_assert!(within(&request.action_id, l.id_chars));
                prop_assert!(within(&request.assignment_id, l.id_chars));
                prop_assert!(within(&request.department_code, l.code_chars));
                match action {
                    DepartmentAction::Acknowledge {
                        responsible_person,
                        contact_phone,
                        promised_at,
                    } => {
                        prop_assert!(within(&responsible_person, l.name_chars));
                        prop_assert!(within(&contact_phone, l.name_chars));
                        if let Some(promised_at) = promised_at {
                            prop_assert!(
                                promised_at >= now() - chrono::Duration::seconds(l.clock_skew_secs)
                            );
                            prop_assert!(
                                promised_at <= now() + chrono::Duration::days(PROMISE_HORIZON_DAYS)
                            );
                        }
                    }
                    DepartmentAction::CheckIn { person, .. } => {
                        prop_assert!(within(&person, l.name_chars));
                    }
                    DepartmentAction::Progress {
                        note: text,
                        evidence,
                    }
                    | DepartmentAction::Resolve {
                        resolution: text,
                        evidence,
                    } => {
                        prop_assert!(within(&text, l.text_chars));
                        prop_assert!(evidence.len() <= l.attachments);
                        for item in evidence {
                            prop_assert!(within(&item.uri, l.uri_chars));
                            prop_assert!(within(&item.media_type, l.media_type_chars));
                            prop_assert!(item.sha256.is_empty() || item.sha256.len() == 64);
                        }
                    }
                    DepartmentAction::Return {
                        reason,
                        suggested_department_code,
                    } => {
                        prop_assert!(within(&reason, l.text_chars));
                        prop_assert!(within(&suggested_department_code, l.code_chars));
                    }
                    DepartmentAction::RequestExtension { extra, reason } => {
                        prop_assert!(within(&reason, l.text_chars));
                        prop_assert!(extra > chrono::Duration::zero());
                        prop_assert!(extra <= chrono::Duration::days(366));
                    }
                }
                Ok(true)
            },
        );
    }
}
