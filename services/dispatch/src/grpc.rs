//! `DispatchService` over gRPC: request checks (`requests`), proto conversion and the use cases,
//! each retried from the start when a concurrent change of the same case got there first.

use crate::catalogue;
use crate::config::DispatchSettings;
use crate::convert::{assignment_to_proto, case_status_to_proto, route_to_proto};
use crate::domain::{self, Assignment, Route};
use crate::error::DispatchError;
use crate::requests;
use crate::service::{self, ActionRules, CaseState};
use crate::storage::{assignment, case, route};
use prost::Message;
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use std::collections::HashMap;
use tonic::{Request, Response, Status};
use whistle_platform::clock::{SharedClock, to_millis, to_proto_timestamp};
use whistle_platform::outbox::OutboxSignal;
use whistle_platform::validation::LimitsConfig;
use whistle_proto::dispatch as pb;
use whistle_proto::dispatch::dispatch_service_server::DispatchService;
use whistle_proto::events::CaseReported;
use whistle_proto::types as types_pb;

/// The gRPC face of dispatch.
#[derive(Debug, Clone)]
pub struct DispatchGrpc {
    pub db: DatabaseConnection,
    pub clock: SharedClock,
    pub outbox_signal: OutboxSignal,
    pub settings: DispatchSettings,
    /// Lengths and counts every request field is held to.
    pub limits: LimitsConfig,
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

    /// Loads a case, applies `change`, saves it with its events, and answers the new case. A
    /// conflict with a concurrent change retries the whole of it (`dispatch.conflict_retries`).
    async fn change_case(
        &self,
        case_id: &str,
        change: impl Fn(&dyn whistle_platform::Clock, &mut CaseState) -> Result<(), DispatchError>,
    ) -> Result<pb::Case, DispatchError> {
        service::retry_on_conflict(self.settings.conflict_retries, || async {
            let transaction = self.db.begin().await?;
            let mut state = service::load_case_for_change(&transaction, case_id)
                .await?
                .ok_or_else(|| DispatchError::NotFound(format!("case {case_id} not found")))?;
            change(self.clock.as_ref(), &mut state)?;
            service::save_case(&transaction, self.clock.as_ref(), state).await?;
            transaction.commit().await?;
            Ok(())
        })
        .await?;
        self.outbox_signal.notify();
        self.case_view(case_id).await
    }

    async fn list_cases_page(
        &self,
        request: pb::ListCasesRequest,
    ) -> Result<pb::ListCasesResponse, DispatchError> {
        let requests::CaseListing { status, page_size } =
            requests::check_list_cases(&self.limits, &request)?;
        let mut query = case::Entity::find()
            .order_by_desc(case::Column::CaseId)
            .limit(page_size + 1);
        if let Some(status) = status {
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
        let action = requests::check_department_action(&self.limits, self.clock.now(), &request)?;
        let acknowledging = matches!(action, service::DepartmentAction::Acknowledge { .. });
        let rules = ActionRules {
            check_in_radius_meters: self.settings.check_in_radius_meters,
            evidence_per_assignment: self.limits.evidence_per_assignment,
        };
        let recorded = service::retry_on_conflict(self.settings.conflict_retries, || async {
            let transaction = self.db.begin().await?;
            let recorded = service::record_department_action(
                &transaction,
                self.clock.as_ref(),
                rules,
                &request.action_id,
                &request.assignment_id,
                &request.department_code,
                action.clone(),
            )
            .await?;
            transaction.commit().await?;
            Ok(recorded)
        })
        .await?;
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

#[tonic::async_trait]
impl DispatchService for DispatchGrpc {
    async fn get_case(
        &self,
        request: Request<pb::GetCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let request = request.into_inner();
        requests::check_get_case(&self.limits, &request)?;
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
        requests::check_accept(&self.limits, &request)?;
        let case = self
            .change_case(&request.case_id, |clock, state| {
                service::accept(clock, state, &request.operator_id)
            })
            .await?;
        Ok(Response::new(case))
    }

    async fn reject_case(
        &self,
        request: Request<pb::RejectCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let request = request.into_inner();
        requests::check_reject(&self.limits, &request)?;
        let case = self
            .change_case(&request.case_id, |clock, state| {
                service::reject(clock, state, &request.operator_id, &request.reason)
            })
            .await?;
        Ok(Response::new(case))
    }

    async fn whistle_case(
        &self,
        request: Request<pb::WhistleCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let request = request.into_inner();
        let overrides = requests::check_whistle(&self.limits, &request)?;
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
                    &request.operator_id,
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
        requests::check_resolve_locally(&self.limits, &request)?;
        let case = self
            .change_case(&request.case_id, |clock, state| {
                service::resolve_locally(clock, state, &request.operator_id, &request.resolution)
            })
            .await?;
        Ok(Response::new(case))
    }

    async fn verify_case(
        &self,
        request: Request<pb::VerifyCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let request = request.into_inner();
        requests::check_verify(&self.limits, &request)?;
        let case = self
            .change_case(&request.case_id, |clock, state| {
                service::verify(
                    clock,
                    state,
                    &request.verifier_id,
                    request.passed,
                    &request.note,
                )
            })
            .await?;
        Ok(Response::new(case))
    }

    async fn decide_extension(
        &self,
        request: Request<pb::DecideExtensionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        requests::check_decide_extension(&self.limits, request.get_ref())?;
        Err(DispatchError::Unimplemented("DecideExtension").into())
    }

    async fn put_route(
        &self,
        request: Request<pb::PutRouteRequest>,
    ) -> Result<Response<pb::Route>, Status> {
        let route = requests::check_put_route(&self.limits, request.get_ref())?;
        let version = service::retry_on_conflict(self.settings.conflict_retries, || async {
            let transaction = self.db.begin().await?;
            let version = catalogue::put_route(&transaction, &route, &self.limits).await?;
            transaction.commit().await?;
            Ok(version)
        })
        .await?;
        Ok(Response::new(route_to_proto(&route, version)))
    }

    async fn list_routes(
        &self,
        request: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        let request = request.into_inner();
        requests::check_list_routes(&self.limits, &request)?;
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
