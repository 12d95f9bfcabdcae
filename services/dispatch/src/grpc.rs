//! `DispatchService` over gRPC: request checks (`requests`), proto conversion, and the use cases
//! (`service`), each retried from the start when a concurrent change of the same case got there
//! first. Handlers only convert: every rule is the aggregate's.

use crate::catalogue;
use crate::config::DispatchSettings;
use crate::convert::{assignment_to_proto, case_status_to_proto, route_to_proto};
use crate::domain::{Assignment, Command, DeadlinePolicy, Route};
use crate::error::DispatchError;
use crate::policy;
use crate::requests;
use crate::service;
use crate::storage::{self, CaseRecord, Lock, assignment, case, route};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use std::collections::HashMap;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use whistle_platform::auth::Caller;
use whistle_platform::clock::{SharedClock, to_proto_timestamp};
use whistle_platform::outbox::OutboxSignal;
use whistle_platform::validation::LimitsConfig;
use whistle_proto::dispatch as pb;
use whistle_proto::dispatch::dispatch_service_server::DispatchService;
use whistle_proto::types as types_pb;

/// The most actions one `RecordDepartmentActions` call may carry.
pub const MAX_FORWARDED_ACTIONS: usize = 256;

/// The gRPC face of dispatch.
#[derive(Debug, Clone)]
pub struct DispatchGrpc {
    pub db: DatabaseConnection,
    pub clock: SharedClock,
    /// How deadlines count (calendar time, or a working-hour calendar).
    pub policy: Arc<dyn DeadlinePolicy>,
    pub outbox_signal: OutboxSignal,
    pub settings: DispatchSettings,
    /// Lengths and counts every request field is held to.
    pub limits: LimitsConfig,
    /// Where department actions wait for their batch (`crate::actions`).
    pub actions: crate::actions::ActionQueue,
}

fn case_to_proto(record: &CaseRecord, timeline: Vec<pb::TimelineEntry>) -> pb::Case {
    let row = &record.row;
    let deferral = record.case.deferral.as_ref();
    pb::Case {
        case_id: row.case_id.clone(),
        status: case_status_to_proto(record.case.status) as i32,
        region: Some(record.region()),
        category_code: row.category_code.clone(),
        severity: row.severity,
        description: row.description.clone(),
        place: record.reported().place,
        channel: row.channel,
        report_id: row.report_id.clone(),
        reported_at: Some(to_proto_timestamp(whistle_platform::clock::from_millis(
            row.reported_at_ms,
        ))),
        version: record.case.version,
        assignments: record
            .case
            .assignments
            .iter()
            .map(assignment_to_proto)
            .collect(),
        timeline,
        reject_reason: record.case.reject_reason.clone(),
        route_id: row.route_id.clone(),
        deferred_at: deferral.map(|deferral| to_proto_timestamp(deferral.since)),
        defer_reason: deferral
            .map(|deferral| deferral.reason.clone())
            .unwrap_or_default(),
        deferred_by: deferral
            .map(|deferral| deferral.by.clone())
            .unwrap_or_default(),
        deferred_until: deferral
            .and_then(|deferral| deferral.until)
            .map(to_proto_timestamp),
        reports: case_reports(record),
        recurrent: record.case.recurrent,
        earlier_case_ids: record.case.earlier_case_ids.clone(),
        evidence: crate::convert::evidence_to_proto(&record.case.evidence),
    }
}

/// Every report on the case: the first one, then those merged in, oldest first.
fn case_reports(record: &CaseRecord) -> Vec<pb::CaseReport> {
    let first = record.reported();
    let first_place = first.place.clone().unwrap_or_default();
    std::iter::once(pb::CaseReport {
        report_id: first.report_id.clone(),
        reporter_id: first.reporter_id.clone(),
        channel: first.channel,
        description: first.description.clone(),
        place: Some(first_place),
        observed_at: first.observed_at,
    })
    .chain(
        record
            .case
            .merged_reports
            .iter()
            .map(|report| pb::CaseReport {
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
                observed_at: report.observed_at.map(to_proto_timestamp),
            }),
    )
    .collect()
}

/// The code of the smallest region the case is in (grid, community, street, district, city).
fn region_code(row: &case::Model) -> &str {
    [
        &row.grid_code,
        &row.community_code,
        &row.street_code,
        &row.district_code,
        &row.city_code,
    ]
    .into_iter()
    .find(|code| !code.is_empty())
    .map_or("", String::as_str)
}

/// PERMISSION_DENIED unless the caller's region covers the case.
fn authorize_row(caller: &Caller, row: &case::Model) -> Result<(), Status> {
    caller.require_region(&format!("case {}", row.case_id), region_code(row))
}

impl DispatchGrpc {
    async fn timeline(&self, case_id: &str) -> Result<Vec<pb::TimelineEntry>, DispatchError> {
        Ok(storage::timeline_of(&self.db, case_id)
            .await?
            .into_iter()
            .map(|entry| pb::TimelineEntry {
                at: Some(to_proto_timestamp(whistle_platform::clock::from_millis(
                    entry.at_ms,
                ))),
                kind: entry.kind,
                actor: entry.actor,
                assignment_id: entry.assignment_id,
                detail: entry.detail,
            })
            .collect())
    }

    /// The case's row, if the caller's region covers the case (PERMISSION_DENIED otherwise), to
    /// look up what a command needs before it runs.
    async fn authorize_case(&self, caller: &Caller, case_id: &str) -> Result<case::Model, Status> {
        let row = case::Entity::find_by_id(case_id)
            .one(&self.db)
            .await
            .map_err(DispatchError::from)?
            .ok_or_else(|| DispatchError::NotFound(format!("case {case_id} not found")))?;
        authorize_row(caller, &row)?;
        Ok(row)
    }

    /// Runs `command` on the case (locked) if the caller's region covers it, saves it with its
    /// events, and answers the new case. A conflict with a concurrent change retries the whole of
    /// it (`dispatch.conflict_retries`).
    async fn change_case(
        &self,
        caller: &Caller,
        case_id: &str,
        command: Command,
    ) -> Result<pb::Case, Status> {
        let mut case = service::retry_on_conflict(self.settings.conflict_retries, || {
            self.outbox_signal.committing(async {
                let transaction = self.db.begin().await?;
                let case = service::change_case(
                    &transaction,
                    self.clock.now(),
                    self.policy.as_ref(),
                    case_id,
                    command.clone(),
                    |record| {
                        authorize_row(caller, &record.row).map_err(|refused| {
                            DispatchError::PermissionDenied(refused.message().to_string())
                        })
                    },
                    |record| case_to_proto(record, Vec::new()),
                )
                .await?;
                transaction.commit().await?;
                Ok(case)
            })
        })
        .await?;
        case.timeline = self.timeline(case_id).await?;
        Ok(case)
    }

    async fn list_cases_page(
        &self,
        caller: &Caller,
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
        if caller.checked {
            // only the cases inside the caller's region: codes nest, so one of the case's codes
            // starts with the region's prefix exactly when the case lies inside it
            let prefix = whistle_platform::auth::region_prefix(&caller.region);
            query = query.filter(
                sea_orm::Condition::any()
                    .add(case::Column::DistrictCode.starts_with(prefix))
                    .add(case::Column::StreetCode.starts_with(prefix))
                    .add(case::Column::CommunityCode.starts_with(prefix))
                    .add(case::Column::GridCode.starts_with(prefix)),
            );
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
                assignments = assignments.filter(assignment::Column::Overdue.eq(true));
            }
            query = query.filter(
                case::Column::CaseId.in_subquery(sea_orm::QueryTrait::into_query(assignments)),
            );
        }
        if request.recurrent_only {
            query = query.filter(case::Column::Recurrent.eq(true));
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
            .order_by_asc(assignment::Column::AssignmentId)
            .all(&self.db)
            .await?
        {
            let parsed = storage::decode_assignment(&row)?;
            assignments_by_case
                .entry(row.case_id)
                .or_default()
                .push(parsed);
        }
        let mut cases = Vec::with_capacity(rows.len());
        for row in rows {
            let assignments = assignments_by_case.remove(&row.case_id).unwrap_or_default();
            let record = CaseRecord::stored(row, assignments)?;
            cases.push(case_to_proto(&record, Vec::new()));
        }
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
        let acknowledging = matches!(action, crate::domain::DepartmentAction::Acknowledge { .. });
        let recorded = self
            .actions
            .record(crate::actions::ActionRequest {
                action_id: request.action_id.clone(),
                assignment_id: request.assignment_id.clone(),
                department_code: request.department_code.clone(),
                action,
                // the events are written by the batch's writer: they continue this call's trace
                traceparent: whistle_platform::telemetry::current_traceparent(),
            })
            .await?;
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
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        requests::check_get_case(&self.limits, &request)?;
        let record = storage::load(&self.db, &request.case_id, Lock::None)
            .await?
            .ok_or_else(|| {
                DispatchError::NotFound(format!("case {} not found", request.case_id))
            })?;
        authorize_row(&caller, &record.row)?;
        let timeline = self.timeline(&request.case_id).await?;
        Ok(Response::new(case_to_proto(&record, timeline)))
    }

    async fn list_cases(
        &self,
        request: Request<pb::ListCasesRequest>,
    ) -> Result<Response<pb::ListCasesResponse>, Status> {
        let caller = Caller::of(&request)?;
        Ok(Response::new(
            self.list_cases_page(&caller, request.into_inner()).await?,
        ))
    }

    async fn accept_case(
        &self,
        request: Request<pb::AcceptCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let caller = Caller::of(&request)?;
        let mut request = request.into_inner();
        // the actor is the credential's subject; a operator_id given must be the same
        request.operator_id = caller.actor("operator_id", &request.operator_id)?;
        requests::check_accept(&self.limits, &request)?;
        let command = Command::Accept {
            by: request.operator_id,
        };
        Ok(Response::new(
            self.change_case(&caller, &request.case_id, command).await?,
        ))
    }

    async fn reject_case(
        &self,
        request: Request<pb::RejectCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let caller = Caller::of(&request)?;
        let mut request = request.into_inner();
        // the actor is the credential's subject; a operator_id given must be the same
        request.operator_id = caller.actor("operator_id", &request.operator_id)?;
        requests::check_reject(&self.limits, &request)?;
        let command = Command::Reject {
            by: request.operator_id,
            reason: request.reason,
        };
        Ok(Response::new(
            self.change_case(&caller, &request.case_id, command).await?,
        ))
    }

    async fn whistle_case(
        &self,
        request: Request<pb::WhistleCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let caller = Caller::of(&request)?;
        let mut request = request.into_inner();
        // the actor is the credential's subject; a operator_id given must be the same
        request.operator_id = caller.actor("operator_id", &request.operator_id)?;
        let overrides = requests::check_whistle(&self.limits, &request)?;
        let row = self.authorize_case(&caller, &request.case_id).await?;
        let (limits, requires_on_site) = service::whistle_terms(&self.db, &row, &overrides).await?;
        let targets = service::whistle_targets(
            &self.db,
            &request.lead_department_code,
            &request.co_department_codes,
        )
        .await?;
        let command = Command::Whistle {
            by: request.operator_id,
            targets,
            limits,
            requires_on_site,
        };
        Ok(Response::new(
            self.change_case(&caller, &request.case_id, command).await?,
        ))
    }

    async fn resolve_locally(
        &self,
        request: Request<pb::ResolveLocallyRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let caller = Caller::of(&request)?;
        let mut request = request.into_inner();
        // the actor is the credential's subject; a operator_id given must be the same
        request.operator_id = caller.actor("operator_id", &request.operator_id)?;
        requests::check_resolve_locally(&self.limits, &request)?;
        let command = Command::ResolveLocally {
            by: request.operator_id,
            resolution: request.resolution,
        };
        Ok(Response::new(
            self.change_case(&caller, &request.case_id, command).await?,
        ))
    }

    async fn verify_case(
        &self,
        request: Request<pb::VerifyCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let caller = Caller::of(&request)?;
        let mut request = request.into_inner();
        // the actor is the credential's subject; a verifier_id given must be the same
        request.verifier_id = caller.actor("verifier_id", &request.verifier_id)?;
        requests::check_verify(&self.limits, &request)?;
        let command = Command::Verify {
            by: request.verifier_id,
            passed: request.passed,
            note: request.note,
            failed_assignment_ids: request.failed_assignment_ids,
        };
        Ok(Response::new(
            self.change_case(&caller, &request.case_id, command).await?,
        ))
    }

    async fn decide_extension(
        &self,
        request: Request<pb::DecideExtensionRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let caller = Caller::of(&request)?;
        let mut request = request.into_inner();
        // the actor is the credential's subject; a operator_id given must be the same
        request.operator_id = caller.actor("operator_id", &request.operator_id)?;
        requests::check_decide_extension(&self.limits, &request)?;
        let command = Command::DecideExtension {
            by: request.operator_id,
            assignment_id: request.assignment_id,
            approved: request.approved,
            note: request.note,
        };
        Ok(Response::new(
            self.change_case(&caller, &request.case_id, command).await?,
        ))
    }

    async fn decide_return(
        &self,
        request: Request<pb::DecideReturnRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let caller = Caller::of(&request)?;
        let mut request = request.into_inner();
        // the actor is the credential's subject; a operator_id given must be the same
        request.operator_id = caller.actor("operator_id", &request.operator_id)?;
        requests::check_decide_return(&self.limits, &request)?;
        let row = self.authorize_case(&caller, &request.case_id).await?;
        let (route_departments, fallback) = service::return_terms(&self.db, &row).await?;
        let command = Command::DecideReturn {
            by: request.operator_id,
            assignment_id: request.assignment_id,
            upheld: request.upheld,
            note: request.note,
            route_departments,
            fallback,
        };
        Ok(Response::new(
            self.change_case(&caller, &request.case_id, command).await?,
        ))
    }

    async fn defer_case(
        &self,
        request: Request<pb::DeferCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let caller = Caller::of(&request)?;
        let mut request = request.into_inner();
        // the actor is the credential's subject; a operator_id given must be the same
        request.operator_id = caller.actor("operator_id", &request.operator_id)?;
        let until = requests::check_defer(&self.limits, self.clock.now(), &request)?;
        let command = Command::Defer {
            by: request.operator_id,
            reason: request.reason,
            until,
        };
        Ok(Response::new(
            self.change_case(&caller, &request.case_id, command).await?,
        ))
    }

    async fn resume_case(
        &self,
        request: Request<pb::ResumeCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let caller = Caller::of(&request)?;
        let mut request = request.into_inner();
        // the actor is the credential's subject; a operator_id given must be the same
        request.operator_id = caller.actor("operator_id", &request.operator_id)?;
        requests::check_resume(&self.limits, &request)?;
        let command = Command::Resume {
            by: request.operator_id,
            note: request.note,
        };
        Ok(Response::new(
            self.change_case(&caller, &request.case_id, command).await?,
        ))
    }

    async fn put_route(
        &self,
        request: Request<pb::PutRouteRequest>,
    ) -> Result<Response<pb::Route>, Status> {
        let caller = Caller::of(&request)?;
        let route = requests::check_put_route(&self.limits, request.get_ref())?;
        caller.require_region("the route's area", &route.area_code)?;
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
        policy::require_gateway(&Caller::of(&request)?)?;
        Ok(Response::new(
            self.department_action(request.into_inner()).await?,
        ))
    }

    async fn record_department_actions(
        &self,
        request: Request<pb::RecordDepartmentActionsRequest>,
    ) -> Result<Response<pb::RecordDepartmentActionsResponse>, Status> {
        use tracing::Instrument;
        policy::require_gateway(&Caller::of(&request)?)?;
        let actions = request.into_inner().actions;
        if actions.len() > MAX_FORWARDED_ACTIONS {
            return Err(DispatchError::invalid(
                "actions",
                format!(
                    "at most {MAX_FORWARDED_ACTIONS} actions per call, got {}",
                    actions.len()
                ),
            )
            .into());
        }
        // each action is queued for the action writer at once, so they share its batches; each
        // continues the trace of the call that asked for it
        let results = futures::future::join_all(actions.into_iter().map(|forwarded| {
            let span = tracing::info_span!("forwarded_department_action");
            whistle_platform::telemetry::set_parent_from_traceparent(
                &span,
                Some(forwarded.traceparent.as_str()).filter(|parent| !parent.is_empty()),
            );
            let action = forwarded.action.unwrap_or_default();
            async move {
                let outcome = match self.department_action(action).await {
                    Ok(assignment) => {
                        pb::recorded_department_action::Outcome::Assignment(assignment)
                    }
                    Err(error) => pb::recorded_department_action::Outcome::Refusal(
                        pb::ActionRefusal::from_status(&Status::from(error)),
                    ),
                };
                pb::RecordedDepartmentAction {
                    outcome: Some(outcome),
                }
            }
            .instrument(span)
        }))
        .await;
        Ok(Response::new(pb::RecordDepartmentActionsResponse {
            results,
        }))
    }
}
