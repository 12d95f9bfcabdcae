//! `DepartmentGateway` over gRPC: authentication, then subscriptions, local listings and actions
//! forwarded to dispatch.

use crate::actions::{self, CheckedAction};
use crate::credentials::{self, CredentialCache};
use crate::domain;
use crate::error::GatewayError;
use crate::forwarding::DispatchForwarder;
use crate::storage::assignment;
use crate::subscription::{NoticeStream, Subscriptions};
use prost::Message;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use tonic::{Request, Response, Status};
use tracing::Instrument;
use whistle_platform::validation::{FieldError, LimitsConfig};
use whistle_proto::gateway::department_gateway_server::DepartmentGateway;
use whistle_proto::gateway::{
    AcknowledgeRequest, CheckInRequest, ListAssignmentsRequest, ListAssignmentsResponse,
    ReportProgressRequest, RequestExtensionRequest, ResolveRequest, ReturnRequest,
    SubscribeRequest,
};
use whistle_proto::types::{Assignment, AssignmentStatus};

/// Name of this service in traces and in the client name it gives NATS.
pub const SOURCE: &str = "whistle-department-gateway";

/// The gRPC face of the gateway.
#[derive(Debug, Clone)]
pub struct GatewayGrpc {
    pub db: DatabaseConnection,
    pub dispatch: DispatchForwarder,
    /// Recently authenticated tokens, so a burst of calls costs one lookup.
    pub credentials: CredentialCache,
    /// Assignments' case traces already read (`storage::TraceCache`).
    pub traces: crate::storage::TraceCache,
    pub subscriptions: Subscriptions,
    /// What every request field is held to (`[limits]`).
    pub limits: LimitsConfig,
}

impl GatewayGrpc {
    async fn authenticate<T>(&self, request: &Request<T>) -> Result<String, GatewayError> {
        credentials::authenticate(&self.db, &self.credentials, request.metadata()).await
    }

    /// Authenticates, checks the action, forwards it to dispatch, in a span that continues the
    /// case's trace (the trace the assignment's first notice was consumed in) and is passed on to
    /// dispatch; the call's own server span (the department's trace, when it sent `traceparent`)
    /// is linked to it.
    async fn act<T>(
        &self,
        request: Request<T>,
        check: impl FnOnce(&LimitsConfig, T) -> Result<CheckedAction, FieldError>,
    ) -> Result<Response<Assignment>, Status> {
        let department_code = self.authenticate(&request).await?;
        let action = check(&self.limits, request.into_inner()).map_err(GatewayError::from)?;
        let span = tracing::info_span!(
            "department_action",
            otel.name = format!("department {}", action.name()),
            action = action.name(),
            department = %department_code,
            assignment_id = %action.assignment_id,
        );
        let case_trace = self
            .traces
            .traceparent(&self.db, &action.assignment_id)
            .await
            .map_err(GatewayError::from)?;
        if case_trace.is_some() {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            let call = tracing::Span::current().context();
            whistle_platform::telemetry::set_parent_from_traceparent(&span, case_trace.as_deref());
            span.add_link(
                opentelemetry::trace::TraceContextExt::span(&call)
                    .span_context()
                    .clone(),
            );
        }
        async {
            let action_name = action.name();
            let assignment_id = action.assignment_id.clone();
            let assignment = self.dispatch.forward(&department_code, action).await?;
            // dispatch's timeline keeps every action with its actor; a line per action is debug
            tracing::debug!(
                action = action_name,
                department = %department_code,
                assignment_id = %assignment_id,
                status = assignment.status,
                "department action recorded"
            );
            Ok(Response::new(assignment))
        }
        .instrument(span)
        .await
        .map_err(|error: GatewayError| error.into())
    }

    async fn assignments(
        &self,
        department_code: &str,
        request: ListAssignmentsRequest,
    ) -> Result<ListAssignmentsResponse, GatewayError> {
        let status = AssignmentStatus::try_from(request.status).map_err(|_| {
            GatewayError::invalid("status", format!("unknown status {}", request.status))
        })?;
        let page_size = self
            .limits
            .check_page_size("page_size", request.page_size)?;
        LimitsConfig::check_chars(
            "page_token",
            &request.page_token,
            domain::max_page_token_chars(&self.limits),
        )?;
        let after = domain::decode_page_token(&request.page_token)
            .map_err(|reason| GatewayError::invalid("page_token", reason))?;
        let mut query = assignment::Entity::find()
            .filter(assignment::Column::DepartmentCode.eq(department_code))
            .order_by_asc(assignment::Column::AssignmentId)
            .limit(page_size + 1);
        if status != AssignmentStatus::Unspecified {
            query = query.filter(assignment::Column::Status.eq(status as i32));
        }
        if let Some(after) = after {
            query = query.filter(assignment::Column::AssignmentId.gt(after));
        }
        let mut rows = query.all(&self.db).await?;
        let has_more = rows.len() as u64 > page_size;
        rows.truncate(page_size as usize);
        let next_page_token = match rows.last() {
            Some(last) if has_more => domain::encode_page_token(&last.assignment_id),
            _ => String::new(),
        };
        let mut assignments = Vec::with_capacity(rows.len());
        for row in rows {
            let assignment = Assignment::decode(row.assignment.as_slice()).map_err(|error| {
                GatewayError::Unexpected(format!(
                    "stored assignment {} does not decode: {error}",
                    row.assignment_id
                ))
            })?;
            assignments.push(assignment);
        }
        Ok(ListAssignmentsResponse {
            assignments,
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl DepartmentGateway for GatewayGrpc {
    type SubscribeStream = NoticeStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let department_code = self.authenticate(&request).await?;
        let after_sequence = request.into_inner().after_sequence;
        Ok(Response::new(
            self.subscriptions.open(department_code, after_sequence)?,
        ))
    }

    async fn acknowledge(
        &self,
        request: Request<AcknowledgeRequest>,
    ) -> Result<Response<Assignment>, Status> {
        self.act(request, actions::acknowledge).await
    }

    async fn check_in(
        &self,
        request: Request<CheckInRequest>,
    ) -> Result<Response<Assignment>, Status> {
        self.act(request, actions::check_in).await
    }

    async fn report_progress(
        &self,
        request: Request<ReportProgressRequest>,
    ) -> Result<Response<Assignment>, Status> {
        self.act(request, actions::report_progress).await
    }

    async fn resolve(
        &self,
        request: Request<ResolveRequest>,
    ) -> Result<Response<Assignment>, Status> {
        self.act(request, actions::resolve).await
    }

    async fn r#return(
        &self,
        request: Request<ReturnRequest>,
    ) -> Result<Response<Assignment>, Status> {
        self.act(request, actions::return_assignment).await
    }

    async fn request_extension(
        &self,
        request: Request<RequestExtensionRequest>,
    ) -> Result<Response<Assignment>, Status> {
        self.act(request, actions::request_extension).await
    }

    async fn list_assignments(
        &self,
        request: Request<ListAssignmentsRequest>,
    ) -> Result<Response<ListAssignmentsResponse>, Status> {
        let department_code = self.authenticate(&request).await?;
        Ok(Response::new(
            self.assignments(&department_code, request.into_inner())
                .await?,
        ))
    }
}
