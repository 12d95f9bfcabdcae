//! Every intake request checked against the limits table and the contract's rules, before anything
//! is read or written. Pure: the first field that fails is named.

use crate::catalogue::Level;
use crate::config::{CatalogueConfig, EvidenceConfig};
use crate::domain::{self, CategoryCode, Coordinates, GridCode};
use crate::geometry::{Boundary, Position};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use whistle_platform::clock::to_millis;
use whistle_platform::validation::{AttachmentContent, FieldError, LimitsConfig};
use whistle_proto::datum;
use whistle_proto::intake::{
    AttachEvidenceRequest, CategoryKind, GetReportRequest, ImportGridsRequest,
    ListCategoriesRequest, ListReportsRequest, LocateGridRequest, SplitReportRequest,
    SubmitReportRequest,
};
use whistle_proto::types::{Attachment, Channel, Datum, Severity};

/// An attachment as stored (JSON) with a report or as evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAttachment {
    pub uri: String,
    #[serde(default)]
    pub sha256: String,
    #[serde(default)]
    pub media_type: String,
    #[serde(default)]
    pub size_bytes: u64,
}

impl From<&Attachment> for StoredAttachment {
    fn from(attachment: &Attachment) -> Self {
        Self {
            uri: attachment.uri.clone(),
            sha256: attachment.sha256.clone(),
            media_type: attachment.media_type.clone(),
            size_bytes: attachment.size_bytes,
        }
    }
}

impl From<StoredAttachment> for Attachment {
    fn from(stored: StoredAttachment) -> Self {
        Self {
            uri: stored.uri,
            sha256: stored.sha256,
            media_type: stored.media_type,
            size_bytes: stored.size_bytes,
        }
    }
}

/// A report that passed every check, ready to locate and store.
#[derive(Debug, Clone)]
pub struct CheckedReport {
    pub request_id: String,
    pub channel: Channel,
    pub reporter_id: String,
    pub category: CategoryCode,
    pub severity: Severity,
    pub description: String,
    /// `None`: intake finds the grid containing the position.
    pub grid: Option<GridCode>,
    /// WGS-84, converted from the datum the report gave.
    pub position: Position,
    pub address: String,
    pub attachments: Vec<StoredAttachment>,
    pub media_url: String,
    pub observed_at_ms: i64,
}

fn field_error(name: &'static str) -> impl Fn(String) -> FieldError {
    move |reason| FieldError::new(name, reason)
}

/// A position in any datum, range-checked as given, returned in WGS-84. `prefix` names the fields
/// (`place.` gives `place.lat`).
pub fn check_position(
    prefix: &str,
    lat: f64,
    lng: f64,
    datum_value: i32,
) -> Result<Position, FieldError> {
    let datum = datum::datum_of(datum_value).ok_or_else(|| {
        FieldError::new(
            "datum",
            format!("unknown datum {datum_value}: DATUM_WGS84, DATUM_GCJ02 or DATUM_BD09"),
        )
    })?;
    let coordinates = Coordinates::parse(lat, lng)
        .map_err(|(sub_field, reason)| FieldError::new(format!("{prefix}{sub_field}"), reason))?;
    let (lat, lng) = datum::to_wgs84(datum, coordinates.lat, coordinates.lng);
    Ok(Position { lat, lng })
}

/// An absolute URI within `limits.uri_chars`, or empty.
fn check_optional_uri(limits: &LimitsConfig, field: &str, value: &str) -> Result<(), FieldError> {
    limits.check_uri(field, value)?;
    if !value.is_empty() && !value.contains("://") {
        return Err(FieldError::new(
            field,
            "must be an absolute URI such as https://host/path",
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Checks every field of a report against the limits and the contract's rules.
pub fn check_report(
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
    let grid = if place.grid_code.is_empty() {
        None
    } else {
        Some(GridCode::parse(&place.grid_code).map_err(field_error("place.grid_code"))?)
    };
    let position = check_position("place.", place.lat, place.lng, request.datum)?;
    limits.check_address("place.address", &place.address)?;
    limits.check_attachments(
        "attachments",
        &request.attachments,
        AttachmentContent::Required,
    )?;
    check_optional_uri(limits, "media_url", &request.media_url)?;
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
        position,
        address: place.address.clone(),
        attachments: request
            .attachments
            .iter()
            .map(StoredAttachment::from)
            .collect(),
        media_url: request.media_url.clone(),
        observed_at_ms: to_millis(observed_at),
    })
}

/// Checks a `GetReport`: the report id.
pub fn check_get_report(
    limits: &LimitsConfig,
    request: &GetReportRequest,
) -> Result<(), FieldError> {
    limits.check_id("report_id", &request.report_id)?;
    if request.report_id.is_empty() {
        return Err(FieldError::new("report_id", "required"));
    }
    Ok(())
}

/// Checks a `ListCategories`: the kind, if any.
pub fn check_list_categories(request: &ListCategoriesRequest) -> Result<CategoryKind, FieldError> {
    CategoryKind::try_from(request.kind)
        .map_err(|_| FieldError::new("kind", format!("unknown kind {}", request.kind)))
}

/// Checks a `LocateGrid`: the position in WGS-84.
pub fn check_locate(request: &LocateGridRequest) -> Result<Position, FieldError> {
    check_position("", request.lat, request.lng, request.datum)
}

/// An area of an import that is well formed on its own (the registry decides the rest).
#[derive(Debug, Clone)]
pub struct CheckedArea {
    pub code: String,
    pub level: Level,
    pub parent_code: String,
    pub name: String,
    pub boundary: Option<Boundary>,
}

/// Checks an `ImportGrids`: count, codes and their levels, parents by prefix, names, boundaries.
pub fn check_import(
    request: &ImportGridsRequest,
    limits: &LimitsConfig,
    catalogue: &CatalogueConfig,
) -> Result<Vec<CheckedArea>, FieldError> {
    if request.areas.is_empty() {
        return Err(FieldError::new("areas", "required"));
    }
    LimitsConfig::check_items("areas", request.areas.len(), catalogue.max_import_areas)?;
    let mut seen = std::collections::HashSet::new();
    let mut checked = Vec::with_capacity(request.areas.len());
    for (index, area) in request.areas.iter().enumerate() {
        let field = |name: &str| format!("areas[{index}].{name}");
        limits.check_code(&field("code"), &area.code)?;
        limits.check_code(&field("parent_code"), &area.parent_code)?;
        limits.check_name(&field("name"), &area.name)?;
        LimitsConfig::check_chars(
            &field("boundary_wkt"),
            &area.boundary_wkt,
            catalogue.max_wkt_chars(),
        )?;
        let level = Level::of_code(&area.code).ok_or_else(|| {
            FieldError::new(
                field("code"),
                "must be 9 (street), 12 (community) or 15 (grid) digits",
            )
        })?;
        let parent_length = match level {
            Level::Street => 6,
            Level::Community => 9,
            Level::Grid => 12,
        };
        if area.parent_code != area.code[..parent_length] {
            return Err(FieldError::new(
                field("parent_code"),
                format!(
                    "a {}'s parent is the first {parent_length} digits of its code, {}",
                    level.as_str(),
                    &area.code[..parent_length]
                ),
            ));
        }
        if area.name.chars().any(char::is_control) {
            return Err(FieldError::new(
                field("name"),
                "must not contain control characters",
            ));
        }
        if !seen.insert(area.code.as_str()) {
            return Err(FieldError::new(
                field("code"),
                "appears twice in the import",
            ));
        }
        let boundary = if area.boundary_wkt.trim().is_empty() {
            None
        } else {
            Some(
                Boundary::parse(&area.boundary_wkt, catalogue.max_boundary_points)
                    .map_err(|reason| FieldError::new(field("boundary_wkt"), reason))?,
            )
        };
        checked.push(CheckedArea {
            code: area.code.clone(),
            level,
            parent_code: area.parent_code.clone(),
            name: area.name.trim().to_string(),
            boundary,
        });
    }
    Ok(checked)
}

/// A checked `ListReports`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportQuery {
    pub recurrent_only: bool,
    pub category_code: Option<String>,
    pub case_id: Option<String>,
    pub page_size: u64,
    /// Reports received before this (received_at_ms, report_id), from the page token.
    pub after: Option<(i64, String)>,
}

/// Page tokens are `<received_at_ms>:<report_id>` of the last report of the previous page.
pub fn page_token(received_at_ms: i64, report_id: &str) -> String {
    format!("{received_at_ms}:{report_id}")
}

/// Checks a `ListReports`.
pub fn check_list_reports(
    request: &ListReportsRequest,
    limits: &LimitsConfig,
) -> Result<ReportQuery, FieldError> {
    limits.check_code("category_code", &request.category_code)?;
    let category_code = if request.category_code.is_empty() {
        None
    } else {
        CategoryCode::parse(&request.category_code).map_err(field_error("category_code"))?;
        Some(request.category_code.clone())
    };
    limits.check_id("case_id", &request.case_id)?;
    let page_size = limits.check_page_size("page_size", request.page_size)?;
    limits.check_id("page_token", &request.page_token)?;
    let after = if request.page_token.is_empty() {
        None
    } else {
        let (at, id) = request
            .page_token
            .split_once(':')
            .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id)))
            .ok_or_else(|| FieldError::new("page_token", "not a token this service gave out"))?;
        Some((at, id.to_string()))
    };
    Ok(ReportQuery {
        recurrent_only: request.recurrent_only,
        category_code,
        case_id: (!request.case_id.is_empty()).then(|| request.case_id.clone()),
        page_size,
        after,
    })
}

/// Checks a `SplitReport`.
pub fn check_split(request: &SplitReportRequest, limits: &LimitsConfig) -> Result<(), FieldError> {
    limits.check_id("report_id", &request.report_id)?;
    if request.report_id.is_empty() {
        return Err(FieldError::new("report_id", "required"));
    }
    limits.check_id("operator_id", &request.operator_id)?;
    domain::required_text(&request.operator_id).map_err(field_error("operator_id"))?;
    limits.check_text("reason", &request.reason)?;
    domain::required_text(request.reason.trim()).map_err(field_error("reason"))?;
    Ok(())
}

/// Who attaches evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvidenceActor {
    Reporter(String),
    Community(String),
}

/// A checked `AttachEvidence`.
#[derive(Debug, Clone)]
pub struct CheckedEvidence {
    pub request_id: String,
    pub case_id: String,
    pub actor: EvidenceActor,
    pub attachments: Vec<StoredAttachment>,
}

/// Checks an `AttachEvidence`: ids, exactly one actor, 1..limits.attachments complete references
/// of an accepted media type and size.
pub fn check_evidence(
    request: &AttachEvidenceRequest,
    limits: &LimitsConfig,
    evidence: &EvidenceConfig,
) -> Result<CheckedEvidence, FieldError> {
    limits.check_id("request_id", &request.request_id)?;
    domain::required_text(&request.request_id).map_err(field_error("request_id"))?;
    limits.check_id("case_id", &request.case_id)?;
    if request.case_id.is_empty() {
        return Err(FieldError::new("case_id", "required"));
    }
    limits.check_id("reporter_id", &request.reporter_id)?;
    limits.check_code("community_code", &request.community_code)?;
    let actor = match (
        request.reporter_id.is_empty(),
        request.community_code.is_empty(),
    ) {
        (false, true) => {
            domain::required_text(&request.reporter_id).map_err(field_error("reporter_id"))?;
            EvidenceActor::Reporter(request.reporter_id.clone())
        }
        (true, false) => {
            if Level::of_code(&request.community_code) != Some(Level::Community) {
                return Err(FieldError::new("community_code", "must be 12 digits"));
            }
            EvidenceActor::Community(request.community_code.clone())
        }
        _ => {
            return Err(FieldError::new(
                "reporter_id",
                "give exactly one of reporter_id and community_code",
            ));
        }
    };
    if request.attachments.is_empty() {
        return Err(FieldError::new("attachments", "required"));
    }
    limits.check_attachments(
        "attachments",
        &request.attachments,
        AttachmentContent::Required,
    )?;
    for (index, attachment) in request.attachments.iter().enumerate() {
        let accepted = evidence.media_types.iter().any(|allowed| {
            if allowed.ends_with('/') {
                attachment.media_type.starts_with(allowed.as_str())
            } else {
                attachment.media_type == *allowed
            }
        });
        if !accepted {
            return Err(FieldError::new(
                format!("attachments[{index}].media_type"),
                format!("must be one of {}", evidence.media_types.join(", ")),
            ));
        }
        if attachment.size_bytes > evidence.max_size_bytes {
            return Err(FieldError::new(
                format!("attachments[{index}].size_bytes"),
                format!("at most {} bytes", evidence.max_size_bytes),
            ));
        }
    }
    Ok(CheckedEvidence {
        request_id: request.request_id.clone(),
        case_id: request.case_id.clone(),
        actor,
        attachments: request
            .attachments
            .iter()
            .map(StoredAttachment::from)
            .collect(),
    })
}

/// The datum named in Open311's `attribute[datum]` (`WGS84`, `GCJ02`, `BD09`, any case).
pub fn datum_named(name: &str) -> Option<Datum> {
    match name.to_ascii_uppercase().replace(['-', '_'], "").as_str() {
        "" | "WGS84" => Some(Datum::Wgs84),
        "GCJ02" => Some(Datum::Gcj02),
        "BD09" => Some(Datum::Bd09),
        _ => None,
    }
}
