//! `IntakeService` over gRPC: request validation, proto <-> storage conversion.

use crate::catalogue::Registry;
use crate::domain::{self, CategoryCode, Coordinates, GridCode};
use crate::error::IntakeError;
use crate::storage::{category, grid, report, street};
use chrono::{DateTime, Utc};
use prost::Message;
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use whistle_platform::clock::{Clock, SharedClock, from_millis, to_millis, to_proto_timestamp};
use whistle_platform::envelope::{self, Event, Payload};
use whistle_platform::outbox::{self, OutboxSignal};
use whistle_platform::validation::{AttachmentContent, FieldError, LimitsConfig};
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
    pub registry: std::sync::Arc<Registry>,
    /// Lengths and counts every request field is held to.
    pub limits: LimitsConfig,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredAttachment {
    uri: String,
    sha256: String,
    media_type: String,
    size_bytes: u64,
}

/// A report that passed every check, ready to store.
#[derive(Debug)]
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

/// Checks every field of a report against the limits and the contract's rules; the first field
/// that fails is named.
fn check_report(
    request: &SubmitReportRequest,
    now: DateTime<Utc>,
    limits: &LimitsConfig,
) -> Result<CheckedReport, FieldError> {
    limits.check_id("request_id", &request.request_id)?;
    let request_id =
        domain::required_text(&request.request_id).map_err(field_error("request_id"))?;
    let channel = match Channel::try_from(request.channel) {
        Ok(Channel::Unspecified) | Err(_) => {
            return Err(FieldError::new(
                "channel",
                "required: one of CHANNEL_GRID_PATROL, CHANNEL_HOTLINE_12345, CHANNEL_RESIDENT_APP, CHANNEL_VOLUNTEER, CHANNEL_INSPECTION",
            ));
        }
        Ok(channel) => channel,
    };
    limits.check_id("reporter_id", &request.reporter_id)?;
    let reporter_id =
        domain::required_text(&request.reporter_id).map_err(field_error("reporter_id"))?;
    limits.check_code("category_code", &request.category_code)?;
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
    limits.check_text("description", &request.description)?;
    let description =
        domain::required_text(request.description.trim()).map_err(field_error("description"))?;
    let place = request
        .place
        .as_ref()
        .ok_or_else(|| FieldError::new("place", "required"))?;
    limits.check_code("place.grid_code", &place.grid_code)?;
    let grid = GridCode::parse(&place.grid_code).map_err(field_error("place.grid_code"))?;
    let coordinates = Coordinates::parse(place.lat, place.lng)
        .map_err(|(sub_field, reason)| FieldError::new(format!("place.{sub_field}"), reason))?;
    limits.check_address("place.address", &place.address)?;
    limits.check_attachments(
        "attachments",
        &request.attachments,
        AttachmentContent::Required,
    )?;
    let attachments = request
        .attachments
        .iter()
        .map(|attachment| StoredAttachment {
            uri: attachment.uri.clone(),
            sha256: attachment.sha256.clone(),
            media_type: attachment.media_type.clone(),
            size_bytes: attachment.size_bytes,
        })
        .collect();
    let observed_at = match &request.observed_at {
        None => now,
        Some(timestamp) => limits.check_past_timestamp("observed_at", timestamp, now)?,
    };
    Ok(CheckedReport {
        request_id: request_id.to_string(),
        channel,
        reporter_id: reporter_id.to_string(),
        category,
        severity,
        description: description.to_string(),
        grid,
        coordinates,
        address: place.address.clone(),
        attachments,
        observed_at_ms: to_millis(observed_at),
    })
}

/// Checks a `GetReport`: the report id.
fn check_get_report(limits: &LimitsConfig, request: &GetReportRequest) -> Result<(), FieldError> {
    limits.check_id("report_id", &request.report_id)?;
    if request.report_id.is_empty() {
        return Err(FieldError::new("report_id", "required"));
    }
    Ok(())
}

/// Checks a `ListCategories`: the kind, if any.
fn check_list_categories(request: &ListCategoriesRequest) -> Result<CategoryKind, FieldError> {
    CategoryKind::try_from(request.kind)
        .map_err(|_| FieldError::new("kind", format!("unknown kind {}", request.kind)))
}

/// The row of a new report whose case opens in `street`.
fn report_row(
    checked: CheckedReport,
    fingerprint: String,
    grid: &grid::Model,
    street: &street::Model,
    received_at_ms: i64,
) -> Result<report::Model, IntakeError> {
    Ok(report::Model {
        report_id: uuid::Uuid::now_v7().to_string(),
        request_id: checked.request_id,
        fingerprint,
        case_id: uuid::Uuid::now_v7().to_string(),
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
        received_at_ms,
        city_code: street.city_code.clone(),
        district_code: street.district_code.clone(),
        street_code: street.code.clone(),
        street_slug: street.slug.clone(),
        community_code: grid.community_code.clone(),
        merged: false,
    })
}

/// `case.reported` for a new report: everything dispatch and the departments need of it.
fn case_reported(clock: &dyn Clock, model: &report::Model) -> Event {
    envelope::new_event(
        clock,
        SOURCE,
        &model.case_id,
        1,
        Some(region_of(model)),
        Payload::CaseReported(CaseReported {
            report_id: model.report_id.clone(),
            channel: model.channel,
            reporter_id: model.reporter_id.clone(),
            category_code: model.category_code.clone(),
            severity: model.severity,
            description: model.description.clone(),
            place: Some(place_of(model)),
            attachments: attachments_of(model),
            observed_at: Some(to_proto_timestamp(from_millis(model.observed_at_ms))),
        }),
    )
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

/// The largest report the limits allow: every text at its limit in 4-byte characters, every list
/// full, codes and digests at their fixed lengths.
pub fn largest_report(limits: &LimitsConfig) -> SubmitReportRequest {
    let text = |chars: usize| "𝄞".repeat(chars);
    let attachment = Attachment {
        uri: format!("a://{}", text(limits.uri_chars.saturating_sub(4))),
        sha256: "f".repeat(64),
        media_type: format!("a/{}", text(limits.media_type_chars.saturating_sub(2))),
        size_bytes: u64::MAX,
    };
    SubmitReportRequest {
        request_id: text(limits.id_chars),
        channel: Channel::Inspection as i32,
        reporter_id: text(limits.id_chars),
        category_code: "E-99-99".into(),
        severity: Severity::Complex as i32,
        description: text(limits.text_chars),
        place: Some(Place {
            grid_code: "999999999999999".into(),
            lat: -89.123_456_789,
            lng: -179.123_456_789,
            address: text(limits.address_chars),
        }),
        attachments: vec![attachment; limits.attachments],
        observed_at: Some(whistle_platform::clock::to_proto_timestamp(latest_instant())),
    }
}

/// A late instant with the longest encoding a timestamp of ours has (2038, full nanoseconds).
fn latest_instant() -> DateTime<Utc> {
    DateTime::from_timestamp(i64::from(i32::MAX), 999_999_999).unwrap_or_default()
}

/// The bytes (payload, subject, headers) of the largest event a report can cause under `limits`;
/// refused when the limits leave no valid report at all.
pub fn largest_event_bytes(limits: &LimitsConfig) -> Result<usize, FieldError> {
    let request = largest_report(limits);
    let latest = latest_instant();
    let checked = check_report(&request, latest, limits)?;
    // registry entries at their largest: codes of fixed length, a street slug of 64 characters
    let street = street::Model {
        code: "999999999".into(),
        slug: "s".repeat(64),
        name: String::new(),
        district_code: "999999".into(),
        city_code: "999900".into(),
    };
    let grid = grid::Model {
        code: "999999999999999".into(),
        community_code: "999999999999".into(),
        street_code: street.code.clone(),
        name: String::new(),
    };
    let model = report_row(checked, "f".repeat(64), &grid, &street, to_millis(latest))
        .map_err(|error| FieldError::new("request", error.to_string()))?;
    let clock = whistle_platform::ManualClock::new(latest);
    let event = case_reported(&clock, &model);
    let outbox_event = envelope::to_outbox(&event)
        .map_err(|error| FieldError::new("request", error.to_string()))?;
    Ok(outbox_event.traced_wire_bytes())
}

impl IntakeGrpc {
    async fn submit(
        &self,
        request: SubmitReportRequest,
    ) -> Result<SubmitReportResponse, IntakeError> {
        let now = self.clock.now();
        let now_ms = to_millis(now);
        let checked = check_report(&request, now, &self.limits)?;
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

        let model = report_row(checked, fingerprint, grid, street, now_ms)?;
        let event = case_reported(self.clock.as_ref(), &model);
        let outbox_event = envelope::to_outbox(&event)
            .map_err(|error| IntakeError::Unexpected(error.to_string()))?;
        let response = response_of(&model);
        let (report_id, case_id) = (model.report_id.clone(), model.case_id.clone());
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
        check_get_report(&self.limits, &request)?;
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
        let kind = check_list_categories(&request)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).expect("now")
    }

    #[test]
    fn the_largest_report_is_valid_and_its_event_fits_with_room_to_spare() {
        let limits = LimitsConfig::default();
        let request = largest_report(&limits);
        check_report(&request, latest_instant(), &limits).expect("the largest report is allowed");
        let bytes = largest_event_bytes(&limits).expect("bytes");
        println!(
            "largest case.reported: {bytes} bytes of {} allowed",
            limits.max_event_bytes
        );
        assert!(
            bytes <= limits.max_event_bytes / 2,
            "case.reported of {bytes} bytes leaves too little room under {}",
            limits.max_event_bytes
        );
    }

    #[test]
    fn one_character_over_any_limit_is_refused_naming_the_field() {
        let limits = LimitsConfig::default();
        let over = |chars: usize| "x".repeat(chars + 1);
        type Mutation = Box<dyn Fn(&mut SubmitReportRequest)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("request_id", Box::new(move |r| r.request_id = over(128))),
            ("reporter_id", Box::new(move |r| r.reporter_id = over(128))),
            (
                "category_code",
                Box::new(move |r| r.category_code = over(64)),
            ),
            ("description", Box::new(move |r| r.description = over(2000))),
            (
                "place.grid_code",
                Box::new(move |r| r.place.as_mut().expect("place").grid_code = over(64)),
            ),
            (
                "place.address",
                Box::new(move |r| r.place.as_mut().expect("place").address = over(500)),
            ),
            (
                "attachments",
                Box::new(|r| {
                    let first = r.attachments[0].clone();
                    r.attachments.push(first);
                }),
            ),
            (
                "attachments[9].uri",
                Box::new(move |r| r.attachments[9].uri = format!("a://{}", over(2044))),
            ),
            (
                "attachments[2].media_type",
                Box::new(move |r| r.attachments[2].media_type = format!("a/{}", over(125))),
            ),
            (
                "attachments[0].sha256",
                Box::new(|r| r.attachments[0].sha256 = "F".repeat(64)),
            ),
            (
                "observed_at",
                Box::new(|r| {
                    r.observed_at = Some(prost_types::Timestamp {
                        seconds: 946_684_799,
                        nanos: 0,
                    })
                }),
            ),
            (
                "observed_at",
                Box::new(|r| {
                    r.observed_at = Some(prost_types::Timestamp {
                        seconds: 1_790_000_301,
                        nanos: 0,
                    })
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut request = largest_report(&limits);
            request.observed_at = None;
            mutate(&mut request);
            let error = check_report(&request, now(), &limits).expect_err(field);
            assert_eq!(error.field, field, "{error}");
        }
    }

    #[test]
    fn limits_that_leave_no_valid_report_are_named() {
        let limits = LimitsConfig {
            code_chars: 10,
            ..LimitsConfig::default()
        };
        let error = largest_event_bytes(&limits).expect_err("no grid code fits");
        assert_eq!(error.field, "place.grid_code");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use whistle_platform::testing::arbitrary::{attachment, mostly, text, timestamp, wire_bytes};
    use whistle_platform::testing::run_decoder_property;

    /// Small limits, so generated values fall on both sides of every one.
    fn limits() -> LimitsConfig {
        LimitsConfig {
            id_chars: 6,
            code_chars: 16,
            text_chars: 8,
            address_chars: 7,
            uri_chars: 30,
            media_type_chars: 12,
            attachments: 2,
            ..LimitsConfig::default()
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("now")
    }

    fn within(value: &str, limit: usize) -> bool {
        value.chars().count() <= limit
    }

    fn report() -> BoxedStrategy<SubmitReportRequest> {
        let place = (
            mostly(&["420303003001001"], 16),
            prop_oneof![4 => Just(32.6), 1 => Just(0.0), 1 => -100.0f64..100.0],
            prop_oneof![4 => Just(110.8), 1 => Just(0.0), 1 => -200.0f64..200.0],
            mostly(&["中岳路2号", ""], 7),
        )
            .prop_map(|(grid_code, lat, lng, address)| Place {
                grid_code,
                lat,
                lng,
                address,
            });
        (
            (
                mostly(&["r-1", "报告-7"], 6),
                prop_oneof![4 => Just(1), 1 => -1i32..7],
                mostly(&["gw-17"], 6),
                mostly(&["E-01-03"], 16),
            ),
            (
                prop_oneof![4 => Just(2), 1 => -1i32..6],
                mostly(&["垃圾满溢", "  trim "], 8),
                proptest::option::weighted(0.95, place),
            ),
            proptest::collection::vec(attachment(30), 0..4),
            prop_oneof![2 => Just(None), 1 => timestamp()],
        )
            .prop_map(
                |(
                    (request_id, channel, reporter_id, category_code),
                    (severity, description, place),
                    attachments,
                    observed_at,
                )| SubmitReportRequest {
                    request_id,
                    channel,
                    reporter_id,
                    category_code,
                    severity,
                    description,
                    place,
                    attachments,
                    observed_at,
                },
            )
            .boxed()
    }

    #[test]
    fn whatever_submit_report_accepts_is_within_every_limit() {
        let limits = limits();
        run_decoder_property("SubmitReport", 512, wire_bytes(report()), |bytes| {
            let Ok(request) = SubmitReportRequest::decode(bytes) else {
                return Ok(false);
            };
            let Ok(checked) = check_report(&request, now(), &limits) else {
                return Ok(false);
            };
            let place = request.place.as_ref().expect("a report has a place");
            prop_assert!(within(&request.request_id, limits.id_chars));
            prop_assert!(within(&request.reporter_id, limits.id_chars));
            prop_assert!(within(&request.category_code, limits.code_chars));
            prop_assert!(within(&request.description, limits.text_chars));
            prop_assert!(within(&place.grid_code, limits.code_chars));
            prop_assert!(within(&place.address, limits.address_chars));
            prop_assert!(request.attachments.len() <= limits.attachments);
            for attachment in &request.attachments {
                prop_assert!(within(&attachment.uri, limits.uri_chars));
                prop_assert!(within(&attachment.media_type, limits.media_type_chars));
                prop_assert_eq!(attachment.sha256.len(), 64);
            }
            let observed = from_millis(checked.observed_at_ms);
            prop_assert!(observed >= whistle_platform::validation::EARLIEST_TIMESTAMP);
            prop_assert!(observed <= now() + chrono::Duration::seconds(limits.clock_skew_secs));
            Ok(true)
        });
    }

    #[test]
    fn whatever_get_report_and_list_categories_accept_is_within_every_limit() {
        let limits = limits();
        let get = text(6).prop_map(|report_id| GetReportRequest { report_id });
        run_decoder_property("GetReport", 256, wire_bytes(get), |bytes| {
            let Ok(request) = GetReportRequest::decode(bytes) else {
                return Ok(false);
            };
            if check_get_report(&limits, &request).is_err() {
                return Ok(false);
            }
            prop_assert!(within(&request.report_id, limits.id_chars));
            Ok(true)
        });
        let list = (-2i32..5).prop_map(|kind| ListCategoriesRequest { kind });
        run_decoder_property("ListCategories", 128, wire_bytes(list), |bytes| {
            let Ok(request) = ListCategoriesRequest::decode(bytes) else {
                return Ok(false);
            };
            Ok(check_list_categories(&request).is_ok())
        });
    }
}
