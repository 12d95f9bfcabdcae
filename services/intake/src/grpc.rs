//! `IntakeService` over gRPC: request validation, proto <-> storage conversion.

use crate::domain::{self, CategoryCode, Coordinates, FieldError, GridCode};
use crate::error::IntakeError;
use crate::storage::{category, report};
use prost::Message;
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use whistle_platform::clock::{
    SharedClock, from_millis, from_proto_timestamp, to_millis, to_proto_timestamp,
};
use whistle_platform::envelope::{self, Payload};
use whistle_platform::outbox::{self, OutboxSignal};
use whistle_proto::events::CaseReported;
use whistle_proto::intake::intake_service_server::IntakeService;
use whistle_proto::intake::{
    Category, CategoryKind, GetReportRequest, ListCategoriesRequest, ListCategoriesResponse,
    Report, SubmitReportRequest, SubmitReportResponse,
};
use whistle_proto::types::{Attachment, Channel, Place, Region, Severity};

/// Name of this service in events and traces.
pub const SOURCE: &str = "whistle-intake";

/// The gRPC face of intake.
#[derive(Debug, Clone)]
pub struct IntakeGrpc {
    pub db: DatabaseConnection,
    pub clock: SharedClock,
    pub outbox_signal: OutboxSignal,
    /// Grids, streets and categories, read once at start.
    pub registry: std::sync::Arc<crate::catalogue::Registry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredAttachment {
    uri: String,
    sha256: String,
    media_type: String,
    size_bytes: u64,
}

/// A report that passed every check, ready to store.
struct CheckedReport {
    request_id: String,
    channel: Channel,
    reporter_id: String,
    category: CategoryCode,
    severity: Severity,
    description: String,
    grid: GridCode,
    coordinates: Coordinates,
    address: String,
    attachments: Vec<StoredAttachment>,
    observed_at_ms: i64,
}

fn field_error(name: &'static str) -> impl Fn(String) -> FieldError {
    move |reason| FieldError::new(name, reason)
}

fn check_report(request: &SubmitReportRequest, now_ms: i64) -> Result<CheckedReport, FieldError> {
    let request_id =
        domain::parse_request_id(&request.request_id).map_err(field_error("request_id"))?;
    let channel = match Channel::try_from(request.channel) {
        Ok(Channel::Unspecified) | Err(_) => {
            return Err(FieldError::new(
                "channel",
                "required: one of CHANNEL_GRID_PATROL, CHANNEL_HOTLINE_12345, CHANNEL_RESIDENT_APP, CHANNEL_VOLUNTEER, CHANNEL_INSPECTION",
            ));
        }
        Ok(channel) => channel,
    };
    let reporter_id =
        domain::parse_reporter_id(&request.reporter_id).map_err(field_error("reporter_id"))?;
    let category =
        CategoryCode::parse(&request.category_code).map_err(field_error("category_code"))?;
    let severity = match Severity::try_from(request.severity) {
        Ok(Severity::Unspecified) | Err(_) => {
            return Err(FieldError::new(
                "severity",
                "required: one of SEVERITY_ROUTINE, SEVERITY_URGENT, SEVERITY_EMERGENCY, SEVERITY_COMPLEX",
            ));
        }
        Ok(severity) => severity,
    };
    let description =
        domain::parse_description(&request.description).map_err(field_error("description"))?;
    let place = request
        .place
        .as_ref()
        .ok_or_else(|| FieldError::new("place", "required"))?;
    let grid = GridCode::parse(&place.grid_code).map_err(field_error("place.grid_code"))?;
    let coordinates = Coordinates::parse(place.lat, place.lng)
        .map_err(|(sub_field, reason)| FieldError::new(format!("place.{sub_field}"), reason))?;
    if place.address.chars().count() > 500 {
        return Err(FieldError::new("place.address", "at most 500 characters"));
    }
    if request.attachments.len() > domain::MAX_ATTACHMENTS {
        return Err(FieldError::new(
            "attachments",
            format!("at most {} attachments", domain::MAX_ATTACHMENTS),
        ));
    }
    let mut attachments = Vec::with_capacity(request.attachments.len());
    for (index, attachment) in request.attachments.iter().enumerate() {
        domain::check_attachment(
            &attachment.uri,
            &attachment.sha256,
            &attachment.media_type,
            attachment.size_bytes,
        )
        .map_err(|(sub_field, reason)| {
            FieldError::new(format!("attachments[{index}].{sub_field}"), reason)
        })?;
        attachments.push(StoredAttachment {
            uri: attachment.uri.clone(),
            sha256: attachment.sha256.clone(),
            media_type: attachment.media_type.clone(),
            size_bytes: attachment.size_bytes,
        });
    }
    let observed_at_ms = match &request.observed_at {
        None => now_ms,
        Some(timestamp) => {
            let observed = from_proto_timestamp(timestamp)
                .ok_or_else(|| FieldError::new("observed_at", "not a valid timestamp"))?;
            let observed_ms = to_millis(observed);
            if observed_ms > now_ms + domain::MAX_CLOCK_SKEW_SECS * 1000 {
                return Err(FieldError::new("observed_at", "must not be in the future"));
            }
            observed_ms
        }
    };
    Ok(CheckedReport {
        request_id,
        channel,
        reporter_id,
        category,
        severity,
        description,
        grid,
        coordinates,
        address: place.address.clone(),
        attachments,
        observed_at_ms,
    })
}

fn fingerprint(request: &SubmitReportRequest) -> String {
    hex::encode(Sha256::digest(request.encode_to_vec()))
}

fn region_of(model: &report::Model) -> Region {
    Region {
        city_code: model.city_code.clone(),
        district_code: model.district_code.clone(),
        street_code: model.street_code.clone(),
        street_slug: model.street_slug.clone(),
        community_code: model.community_code.clone(),
        grid_code: model.grid_code.clone(),
    }
}

fn attachments_of(model: &report::Model) -> Vec<Attachment> {
    serde_json::from_str::<Vec<StoredAttachment>>(&model.attachments)
        .unwrap_or_default()
        .into_iter()
        .map(|stored| Attachment {
            uri: stored.uri,
            sha256: stored.sha256,
            media_type: stored.media_type,
            size_bytes: stored.size_bytes,
        })
        .collect()
}

fn place_of(model: &report::Model) -> Place {
    Place {
        grid_code: model.grid_code.clone(),
        lat: model.lat,
        lng: model.lng,
        address: model.address.clone(),
    }
}

fn response_of(model: &report::Model) -> SubmitReportResponse {
    SubmitReportResponse {
        report_id: model.report_id.clone(),
        case_id: model.case_id.clone(),
        merged: model.merged,
        region: Some(region_of(model)),
    }
}

impl IntakeGrpc {
    async fn submit(
        &self,
        request: SubmitReportRequest,
    ) -> Result<SubmitReportResponse, IntakeError> {
        let now = self.clock.now();
        let now_ms = to_millis(now);
        let checked = check_report(&request, now_ms)?;
        let fingerprint = fingerprint(&request);

        let transaction = self.db.begin().await?;
        if let Some(existing) = report::Entity::find()
            .filter(report::Column::RequestId.eq(checked.request_id.as_str()))
            .one(&transaction)
            .await?
        {
            if existing.fingerprint == fingerprint {
                return Ok(response_of(&existing));
            }
            return Err(IntakeError::AlreadyExists(format!(
                "request_id: {:?} was already used for a different report ({})",
                checked.request_id, existing.report_id
            )));
        }
        if !self.registry.has_category(checked.category.as_str()) {
            return Err(IntakeError::invalid(
                "category_code",
                format!(
                    "unknown category {}; see ListCategories",
                    checked.category.as_str()
                ),
            ));
        }
        let (grid, street) = self.registry.grid(checked.grid.as_str()).ok_or_else(|| {
            IntakeError::invalid(
                "place.grid_code",
                format!("unknown grid {}", checked.grid.as_str()),
            )
        })?;

        let report_id = uuid::Uuid::now_v7().to_string();
        let case_id = uuid::Uuid::now_v7().to_string();
        let model = report::Model {
            report_id: report_id.clone(),
            request_id: checked.request_id,
            fingerprint,
            case_id: case_id.clone(),
            channel: checked.channel as i32,
            reporter_id: checked.reporter_id,
            category_code: checked.category.as_str().to_string(),
            severity: checked.severity as i32,
            description: checked.description,
            grid_code: checked.grid.as_str().to_string(),
            lat: checked.coordinates.lat,
            lng: checked.coordinates.lng,
            address: checked.address,
            attachments: serde_json::to_string(&checked.attachments)
                .map_err(|error| IntakeError::Unexpected(error.to_string()))?,
            observed_at_ms: checked.observed_at_ms,
            received_at_ms: now_ms,
            city_code: street.city_code.clone(),
            district_code: street.district_code.clone(),
            street_code: street.code.clone(),
            street_slug: street.slug.clone(),
            community_code: grid.community_code.clone(),
            merged: false,
        };
        let event = envelope::new_event(
            self.clock.as_ref(),
            SOURCE,
            &case_id,
            1,
            Some(region_of(&model)),
            Payload::CaseReported(CaseReported {
                report_id: report_id.clone(),
                channel: model.channel,
                reporter_id: model.reporter_id.clone(),
                category_code: model.category_code.clone(),
                severity: model.severity,
                description: model.description.clone(),
                place: Some(place_of(&model)),
                attachments: attachments_of(&model),
                observed_at: Some(to_proto_timestamp(from_millis(model.observed_at_ms))),
            }),
        );
        let outbox_event = envelope::to_outbox(&event)
            .map_err(|error| IntakeError::Unexpected(error.to_string()))?;
        let response = response_of(&model);
        report::Entity::insert(report::ActiveModel::from(model))
            .exec_without_returning(&transaction)
            .await?;
        outbox::enqueue(&transaction, outbox_event, now_ms).await?;
        transaction.commit().await?;
        self.outbox_signal.notify();
        tracing::info!(report_id = %report_id, case_id = %case_id, "report received");
        Ok(response)
    }

    async fn report(&self, request: GetReportRequest) -> Result<Report, IntakeError> {
        if request.report_id.is_empty() {
            return Err(IntakeError::invalid("report_id", "required"));
        }
        let model = report::Entity::find_by_id(request.report_id.as_str())
            .one(&self.db)
            .await?
            .ok_or_else(|| {
                IntakeError::NotFound(format!("report {} not found", request.report_id))
            })?;
        Ok(Report {
            report_id: model.report_id.clone(),
            case_id: model.case_id.clone(),
            request_id: model.request_id.clone(),
            channel: model.channel,
            reporter_id: model.reporter_id.clone(),
            category_code: model.category_code.clone(),
            severity: model.severity,
            description: model.description.clone(),
            place: Some(place_of(&model)),
            attachments: attachments_of(&model),
            observed_at: Some(to_proto_timestamp(from_millis(model.observed_at_ms))),
            received_at: Some(to_proto_timestamp(from_millis(model.received_at_ms))),
            region: Some(region_of(&model)),
            merged: model.merged,
        })
    }

    async fn categories(
        &self,
        request: ListCategoriesRequest,
    ) -> Result<ListCategoriesResponse, IntakeError> {
        let kind = CategoryKind::try_from(request.kind)
            .map_err(|_| IntakeError::invalid("kind", format!("unknown kind {}", request.kind)))?;
        let mut query = category::Entity::find().order_by_asc(category::Column::Code);
        match kind {
            CategoryKind::Unspecified => {}
            CategoryKind::Component => query = query.filter(category::Column::Kind.eq("component")),
            CategoryKind::Event => query = query.filter(category::Column::Kind.eq("event")),
        }
        let categories = query
            .all(&self.db)
            .await?
            .into_iter()
            .map(|model| Category {
                kind: if model.kind == "component" {
                    CategoryKind::Component
                } else {
                    CategoryKind::Event
                } as i32,
                code: model.code,
                major_name: model.major_name,
                name: model.name,
            })
            .collect();
        Ok(ListCategoriesResponse { categories })
    }
}

#[tonic::async_trait]
impl IntakeService for IntakeGrpc {
    async fn submit_report(
        &self,
        request: Request<SubmitReportRequest>,
    ) -> Result<Response<SubmitReportResponse>, Status> {
        Ok(Response::new(self.submit(request.into_inner()).await?))
    }

    async fn get_report(
        &self,
        request: Request<GetReportRequest>,
    ) -> Result<Response<Report>, Status> {
        Ok(Response::new(self.report(request.into_inner()).await?))
    }

    async fn list_categories(
        &self,
        request: Request<ListCategoriesRequest>,
    ) -> Result<Response<ListCategoriesResponse>, Status> {
        Ok(Response::new(self.categories(request.into_inner()).await?))
    }
}
