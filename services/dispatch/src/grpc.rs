//! `DispatchService` over gRPC: request validation and proto conversion around the use cases.

use crate::catalogue;
use crate::config::DispatchSettings;
use crate::convert::{
    assignment_to_proto, case_status_from_proto, case_status_to_proto, evidence_from_proto,
    limits_from_proto, route_to_proto,
};
use crate::domain::{self, Assignment, Route};
use crate::error::DispatchError;
use crate::service::{self, CaseState, DepartmentAction};
use crate::storage::{assignment, case, route};
use prost::Message;
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use std::collections::HashMap;
use tonic::{Request, Response, Status};
use whistle_platform::clock::{SharedClock, from_proto_timestamp, to_millis, to_proto_timestamp};
use whistle_platform::outbox::OutboxSignal;
use whistle_proto::dispatch::dispatch_service_server::DispatchService;
use whistle_proto::dispatch::{self as pb, record_department_action_request::Action};
use whistle_proto::events::CaseReported;
use whistle_proto::types as types_pb;

/// The gRPC face of dispatch.
#[derive(Debug, Clone)]
pub struct DispatchGrpc {
    pub db: DatabaseConnection,
    pub clock: SharedClock,
    pub outbox_signal: OutboxSignal,
    pub settings: DispatchSettings,
}

fn required<'a>(field: &str, value: &'a str, max_chars: usize) -> Result<&'a str, DispatchError> {
    if value.trim().is_empty() {
        return Err(DispatchError::invalid(field, "required"));
    }
    if value.chars().count() > max_chars {
        return Err(DispatchError::invalid(
            field,
            format!("at most {max_chars} characters"),
        ));
    }
    Ok(value)
}

fn optional(field: &str, value: &str, max_chars: usize) -> Result<(), DispatchError> {
    if value.chars().count() > max_chars {
        return Err(DispatchError::invalid(
            field,
            format!("at most {max_chars} characters"),
        ));
    }
    Ok(())
}

fn case_to_proto(state: &CaseState, timeline: Vec<pb::TimelineEntry>) -> pb::Case {
    let reported = CaseReported::decode(state.model.reported.as_slice()).unwrap_or_default();
    pb::Case {
        case_id: state.model.case_id.clone(),
        status: case_status_to_proto(state.status()) as i32,
        region: Some(state.region()),
        category_code: state.model.category_code.clone(),
        severity: state.model.severity,
        description: state.model.description.clone(),
        place: reported.place,
        channel: state.model.channel,
        report_id: state.model.report_id.clone(),
        reported_at: Some(to_proto_timestamp(service::time_of(
            state.model.reported_at_ms,
        ))),
        version: state.model.version as u64,
        assignments: state.assignments.iter().map(assignment_to_proto).collect(),
        timeline,
        reject_reason: state.model.reject_reason.clone(),
        route_id: state.model.route_id.clone(),
    }
}

impl DispatchGrpc {
    async fn case_view(&self, case_id: &str) -> Result<pb::Case, DispatchError> {
        let state = service::load_case(&self.db, case_id)
            .await?
            .ok_or_else(|| DispatchError::NotFound(format!("case {case_id} not found")))?;
        let timeline = service::timeline_of(&self.db, case_id)
            .await?
            .into_iter()
            .map(|entry| pb::TimelineEntry {
                at: Some(to_proto_timestamp(service::time_of(entry.at_ms))),
                kind: entry.kind,
                actor: entry.actor,
                assignment_id: entry.assignment_id,
                detail: entry.detail,
            })
            .collect();
        Ok(case_to_proto(&state, timeline))
    }

    /// Loads a case, applies `change`, saves it with its events, and answers the new case.
    async fn change_case(
        &self,
        case_id: &str,
        change: impl FnOnce(&dyn whistle_platform::Clock, &mut CaseState) -> Result<(), DispatchError>,
    ) -> Result<pb::Case, DispatchError> {
        required("case_id", case_id, 64)?;
        let transaction = self.db.begin().await?;
        let mut state = service::load_case(&transaction, case_id)
            .await?
            .ok_or_else(|| DispatchError::NotFound(format!("case {case_id} not found")))?;
        change(self.clock.as_ref(), &mut state)?;
        service::save_case(&transaction, self.clock.as_ref(), state).await?;
        transaction.commit().await?;
        self.outbox_signal.notify();
        self.case_view(case_id).await
    }

    async fn list_cases_page(
        &self,
        request: pb::ListCasesRequest,
    ) -> Result<pb::ListCasesResponse, DispatchError> {
        let page_size = match request.page_size {
            0 => 50,
            size @ 1..=500 => size as u64,
            _ => return Err(DispatchError::invalid("page_size", "at most 500")),
        };
        let mut query = case::Entity::find()
            .order_by_desc(case::Column::CaseId)
            .limit(page_size + 1);
        if let Some(status) = case_status_from_proto(request.status)? {
            query = query.filter(case::Column::Status.eq(status.as_str()));
        }
        if !request.street_slug.is_empty() {
            query = query.filter(case::Column::StreetSlug.eq(request.street_slug.as_str()));
        }
        if !request.page_token.is_empty() {
            query = query.filter(case::Column::CaseId.lt(request.page_token.as_str()));
        }
        if !request.department_code.is_empty() || request.overdue_only {
            let mut assignments = assignment::Entity::find()
                .select_only()
                .column(assignment::Column::CaseId);
            if !request.department_code.is_empty() {
                assignments = assignments.filter(
                    assignment::Column::DepartmentCode.eq(request.department_code.as_str()),
                );
            }
            if request.overdue_only {
                let now = to_millis(self.clock.now());
                assignments = assignments.filter(
                    sea_orm::Condition::any()
                        .add(
                            sea_orm::Condition::all()
                                .add(assignment::Column::Status.eq("WHISTLED"))
                                .add(assignment::Column::AcknowledgeByMs.lt(now)),
                        )
                        .add(
                            sea_orm::Condition::all()
                                .add(assignment::Column::Status.is_in([
                                    "WHISTLED",
                                    "ACKNOWLEDGED",
                                    "ON_SITE",
                                ]))
                                .add(assignment::Column::ResolveByMs.lt(now)),
                        ),
                );
            }
            query = query.filter(
                case::Column::CaseId.in_subquery(sea_orm::QueryTrait::into_query(assignments)),
            );
        }
        let mut rows = query.all(&self.db).await?;
        let next_page_token = if rows.len() as u64 > page_size {
            rows.truncate(page_size as usize);
            rows.last()
                .map(|row| row.case_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let case_ids: Vec<String> = rows.iter().map(|row| row.case_id.clone()).collect();
        let mut assignments_by_case: HashMap<String, Vec<Assignment>> = HashMap::new();
        for row in assignment::Entity::find()
            .filter(assignment::Column::CaseId.is_in(case_ids))
            .order_by_asc(assignment::Column::WhistledAtMs)
            .all(&self.db)
            .await?
        {
            let parsed: Assignment =
                serde_json::from_str(&row.state).map_err(DispatchError::unexpected)?;
            assignments_by_case
                .entry(row.case_id)
                .or_default()
                .push(parsed);
        }
        let cases = rows
            .into_iter()
            .map(|model| {
                let assignments = assignments_by_case
                    .remove(&model.case_id)
                    .unwrap_or_default();
                let state = service::CaseState::view(model, assignments);
                case_to_proto(&state, Vec::new())
            })
            .collect();
        Ok(pb::ListCasesResponse {
            cases,
            next_page_token,
        })
    }

    async fn department_action(
        &self,
        request: pb::RecordDepartmentActionRequest,
    ) -> Result<types_pb::Assignment, DispatchError> {
        let action_id = required("action_id", &request.action_id, 128)?;
        let assignment_id = required("assignment_id", &request.assignment_id, 64)?;
        domain::check_department_code(&request.department_code)
            .map_err(|reason| DispatchError::invalid("department_code", reason))?;
        let now = self.clock.now();
        let action = match request.action {
            None => {
                return Err(DispatchError::invalid(
                    "action",
                    "required: one of acknowledge, check_in, progress, resolve, return_assignment, request_extension",
                ));
            }
            Some(Action::Acknowledge(acknowledge)) => {
                required(
                    "acknowledge.responsible_person",
                    &acknowledge.responsible_person,
                    64,
                )?;
                optional("acknowledge.contact_phone", &acknowledge.contact_phone, 32)?;
                let promised_at = match &acknowledge.promised_at {
                    None => None,
                    Some(timestamp) => {
                        let promised = from_proto_timestamp(timestamp).ok_or_else(|| {
                            DispatchError::invalid(
                                "acknowledge.promised_at",
                                "not a valid timestamp",
                            )
                        })?;
                        if promised < now - chrono::Duration::minutes(5) {
                            return Err(DispatchError::invalid(
                                "acknowledge.promised_at",
                                "must not be in the past",
                            ));
                        }
                        Some(promised)
                    }
                };
                DepartmentAction::Acknowledge {
                    responsible_person: acknowledge.responsible_person,
                    contact_phone: acknowledge.contact_phone,
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
                optional("check_in.person", &check_in.person, 64)?;
                DepartmentAction::CheckIn {
                    lat: check_in.lat,
                    lng: check_in.lng,
                    person: check_in.person,
                }
            }
            Some(Action::Progress(progress)) => {
                required("progress.note", &progress.note, 4000)?;
                let evidence = evidence_from_proto("progress.evidence", &progress.evidence)?;
                DepartmentAction::Progress {
                    note: progress.note,
                    evidence,
                }
            }
            Some(Action::Resolve(resolve)) => {
                required("resolve.resolution", &resolve.resolution, 4000)?;
                let evidence = evidence_from_proto("resolve.evidence", &resolve.evidence)?;
                DepartmentAction::Resolve {
                    resolution: resolve.resolution,
                    evidence,
                }
            }
            Some(Action::ReturnAssignment(returned)) => {
                required("return_assignment.reason", &returned.reason, 2000)?;
                if !returned.suggested_department_code.is_empty() {
                    domain::check_department_code(&returned.suggested_department_code).map_err(
                        |reason| {
                            DispatchError::invalid(
                                "return_assignment.suggested_department_code",
                                reason,
                            )
                        },
                    )?;
                }
                DepartmentAction::Return {
                    reason: returned.reason,
                    suggested_department_code: returned.suggested_department_code,
                }
            }
            Some(Action::RequestExtension(_)) => {
                return Err(DispatchError::Unimplemented("request_extension"));
            }
        };
        let acknowledging = matches!(action, DepartmentAction::Acknowledge { .. });
        let transaction = self.db.begin().await?;
        let recorded = service::record_department_action(
            &transaction,
            self.clock.as_ref(),
            self.settings.check_in_radius_meters,
            action_id,
            assignment_id,
            &request.department_code,
            action,
        )
        .await?;
        transaction.commit().await?;
        self.outbox_signal.notify();
        let assignment = recorded.assignment;
        if acknowledging
            && !recorded.repeated
            && let Some(acknowledged_at) = assignment.acknowledged_at
        {
            let latency = (acknowledged_at - assignment.whistled_at)
                .num_milliseconds()
                .max(0) as f64
                / 1000.0;
            whistle_platform::metrics::metrics()
                .acknowledgement_latency
                .record(
                    latency,
                    &[whistle_platform::metrics::attribute(
                        "department",
                        assignment.department_code.clone(),
                    )],
                );
        }
        Ok(assignment_to_proto(&assignment))
    }
}

fn departments_from(
    lead_field: &str,
    lead: &str,
    co_field: &str,
    co: &[String],
) -> Result<(), DispatchError> {
    domain::check_department_code(lead)
        .map_err(|reason| DispatchError::invalid(lead_field, reason))?;
    for (index, code) in co.iter().enumerate() {
        domain::check_department_code(code)
            .map_err(|reason| DispatchError::invalid(format!("{co_field}[{index}]"), reason))?;
        if code == lead || co[..index].contains(code) {
            return Err(DispatchError::invalid(
                format!("{co_field}[{index}]"),
                "names a department twice",
            ));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl DispatchService for DispatchGrpc {
    async fn get_case(
        &self,
        request: Request<pb::GetCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let request = request.into_inner();
        required("case_id", &request.case_id, 64)?;
        Ok(Response::new(self.case_view(&request.case_id).await?))
    }

    async fn list_cases(
        &self,
        request: Request<pb::ListCasesRequest>,
    ) -> Result<Response<pb::ListCasesResponse>, Status> {
        Ok(Response::new(
            self.list_cases_page(request.into_inner()).await?,
        ))
    }

    async fn accept_case(
        &self,
        request: Request<pb::AcceptCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let request = request.into_inner();
        let operator = required("operator_id", &request.operator_id, 128)?.to_string();
        let case = self
            .change_case(&request.case_id, |clock, state| {
                service::accept(clock, state, &operator)
            })
            .await?;
        Ok(Response::new(case))
    }

    async fn reject_case(
        &self,
        request: Request<pb::RejectCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let request = request.into_inner();
        let operator = required("operator_id", &request.operator_id, 128)?.to_string();
        let reason = required("reason", &request.reason, 2000)?.to_string();
        let case = self
            .change_case(&request.case_id, |clock, state| {
                service::reject(clock, state, &operator, &reason)
            })
            .await?;
        Ok(Response::new(case))
    }

    async fn whistle_case(
        &self,
        request: Request<pb::WhistleCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let request = request.into_inner();
        let operator = required("operator_id", &request.operator_id, 128)?.to_string();
        departments_from(
            "lead_department_code",
            &request.lead_department_code,
            "co_department_codes",
            &request.co_department_codes,
        )?;
        let overrides = limits_from_proto("limits", request.limits.as_ref())?;
        let category_routes = match case::Entity::find_by_id(request.case_id.as_str())
            .one(&self.db)
            .await
            .map_err(DispatchError::from)?
        {
            Some(model) => {
                let routes = service::routes_for_category(&self.db, &model.category_code).await?;
                domain::select_route(&routes, &model.category_code, &model.grid_code).cloned()
            }
            None => None,
        };
        let (limits, requires_on_site) = match &category_routes {
            Some(route) => (overrides.or(&route.limits), route.requires_on_site),
            None => (overrides, true),
        };
        let case = self
            .change_case(&request.case_id, |clock, state| {
                service::whistle(
                    clock,
                    state,
                    &operator,
                    &request.lead_department_code,
                    &request.co_department_codes,
                    &limits,
                    requires_on_site,
                )
                .map(|_| ())
            })
            .await?;
        Ok(Response::new(case))
    }

    async fn resolve_locally(
        &self,
        request: Request<pb::ResolveLocallyRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let request = request.into_inner();
        let operator = required("operator_id", &request.operator_id, 128)?.to_string();
        let resolution = required("resolution", &request.resolution, 4000)?.to_string();
        let case = self
            .change_case(&request.case_id, |clock, state| {
                service::resolve_locally(clock, state, &operator, &resolution)
            })
            .await?;
        Ok(Response::new(case))
    }

    async fn verify_case(
        &self,
        request: Request<pb::VerifyCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let request = request.into_inner();
        let verifier = required("verifier_id", &request.verifier_id, 128)?.to_string();
        if !request.passed {
            required("note", &request.note, 2000)?;
        }
        let case = self
            .change_case(&request.case_id, |clock, state| {
                service::verify(clock, state, &verifier, request.passed, &request.note)
            })
            .await?;
        Ok(Response::new(case))
    }

    async fn decide_extension(
        &self,
        _request: Request<pb::DecideExtensionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        Err(DispatchError::Unimplemented("DecideExtension").into())
    }

    async fn put_route(
        &self,
        request: Request<pb::PutRouteRequest>,
    ) -> Result<Response<pb::Route>, Status> {
        let proto = request
            .into_inner()
            .route
            .ok_or_else(|| DispatchError::invalid("route", "required"))?;
        let route = Route {
            route_id: proto.route_id,
            category_code: proto.category_code,
            area_code: proto.area_code,
            lead_department_code: proto.lead_department_code,
            co_department_codes: proto.co_department_codes,
            auto_whistle: proto.auto_whistle,
            requires_on_site: proto.requires_on_site,
            limits: limits_from_proto("route.limits", proto.limits.as_ref())?,
        };
        let transaction = self.db.begin().await.map_err(DispatchError::from)?;
        let version = catalogue::put_route(&transaction, &route).await?;
        transaction.commit().await.map_err(DispatchError::from)?;
        Ok(Response::new(route_to_proto(&route, version)))
    }

    async fn list_routes(
        &self,
        request: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        let request = request.into_inner();
        let mut query = route::Entity::find().order_by_asc(route::Column::RouteId);
        if !request.category_code.is_empty() {
            query = query.filter(route::Column::CategoryCode.eq(request.category_code.as_str()));
        }
        if !request.area_code.is_empty() {
            query = query.filter(route::Column::AreaCode.starts_with(request.area_code.as_str()));
        }
        let rows = query.all(&self.db).await.map_err(DispatchError::from)?;
        let mut routes = Vec::with_capacity(rows.len());
        for row in rows {
            let parsed: Route =
                serde_json::from_str(&row.definition).map_err(DispatchError::unexpected)?;
            routes.push(route_to_proto(&parsed, row.version));
        }
        Ok(Response::new(pb::ListRoutesResponse { routes }))
    }

    async fn record_department_action(
        &self,
        request: Request<pb::RecordDepartmentActionRequest>,
    ) -> Result<Response<types_pb::Assignment>, Status> {
        Ok(Response::new(
            self.department_action(request.into_inner()).await?,
        ))
    }
}
