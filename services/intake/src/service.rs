//! Intake's use cases, called by the gRPC service (`grpc.rs`) and the Open311 front door
//! (`open311.rs`) alike: check the request, read the registry, decide (merge, recurrence), store and
//! enqueue the events in one transaction.

use crate::catalogue::{GridEntry, Level, SharedRegistry, Unlocated};
use crate::config::IntakeConfig;
use crate::error::IntakeError;
use crate::geometry::{Position, SearchBox};
use crate::merging::{self, ClosedCase, MergeRule, OpenCase};
use crate::requests::{
    self, CheckedReport, EvidenceActor, ReportQuery, StoredAttachment, check_evidence,
    check_get_report, check_import, check_list_categories, check_list_reports, check_locate,
    check_report, check_split,
};
use crate::storage::{case, category, community, evidence, grid, merge_area, report, street};
use chrono::{DateTime, Utc};
use prost::Message;
use sea_orm::sea_query::{Expr, ExprTrait as _, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, SqlErr, TransactionTrait,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use whistle_platform::clock::{Clock, SharedClock, from_millis, to_millis, to_proto_timestamp};
use whistle_platform::envelope::{self, Event, Payload};
use whistle_platform::outbox::OutboxSignal;
use whistle_platform::validation::{FieldError, LimitsConfig};
use whistle_proto::events::{
    CaseEvidenceAttached, CaseMerged, CaseRecurrent, CaseReported, ReportSplit,
};
use whistle_proto::intake::{
    AttachEvidenceRequest, AttachEvidenceResponse, CaseState, Category, CategoryKind,
    GetReportRequest, ImportGridsRequest, ImportGridsResponse, ListCategoriesRequest,
    ListCategoriesResponse, ListReportsRequest, ListReportsResponse, LocateGridRequest,
    LocateGridResponse, Report, SplitReportRequest, SplitReportResponse, SubmitReportRequest,
    SubmitReportResponse,
};
use whistle_proto::types::{Attachment, Channel, Datum, Place, Region, Severity};

/// Name of this service in events and traces.
pub const SOURCE: &str = "whistle-intake";

/// Intake: its database, clock, outbox, registry and configuration.
#[derive(Debug, Clone)]
pub struct Intake {
    pub db: DatabaseConnection,
    pub clock: SharedClock,
    pub outbox_signal: OutboxSignal,
    pub registry: Arc<SharedRegistry>,
    pub config: Arc<IntakeConfig>,
}

/// A report and what is known of its case.
#[derive(Debug, Clone)]
pub struct ReportView {
    pub report: report::Model,
    pub case: Option<case::Model>,
}

fn fingerprint(message: &impl Message) -> String {
    hex::encode(Sha256::digest(message.encode_to_vec()))
}

fn is_unique_violation(error: &DbErr) -> bool {
    matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

fn json_ids(ids: &[String]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".into())
}

/// Case ids stored as JSON; a row that does not parse reads as none (logged), never as an error.
fn ids_of(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_else(|error| {
        tracing::error!(%error, "stored case id list is unreadable");
        Vec::new()
    })
}

pub fn region_of(model: &report::Model) -> Region {
    Region {
        city_code: model.city_code.clone(),
        district_code: model.district_code.clone(),
        street_code: model.street_code.clone(),
        street_slug: model.street_slug.clone(),
        community_code: model.community_code.clone(),
        grid_code: model.grid_code.clone(),
    }
}

fn region_of_entry(entry: &GridEntry) -> Region {
    Region {
        city_code: entry.street.city_code.clone(),
        district_code: entry.street.district_code.clone(),
        street_code: entry.street.code.clone(),
        street_slug: entry.street.slug.clone(),
        community_code: entry.grid.community_code.clone(),
        grid_code: entry.grid.code.clone(),
    }
}

/// The report's attachments, then its media URL as an attachment that carries only the URI.
pub fn attachments_of(model: &report::Model) -> Vec<Attachment> {
    let mut attachments: Vec<Attachment> = serde_json::from_str::<Vec<StoredAttachment>>(
        &model.attachments,
    )
    .unwrap_or_else(|error| {
        tracing::error!(report_id = %model.report_id, %error, "stored attachments are unreadable");
        Vec::new()
    })
    .into_iter()
    .map(Attachment::from)
    .collect();
    if !model.media_url.is_empty() {
        attachments.push(Attachment {
            uri: model.media_url.clone(),
            ..Attachment::default()
        });
    }
    attachments
}

pub fn place_of(model: &report::Model) -> Place {
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
        recurrent: model.recurrent,
        earlier_case_ids: ids_of(&model.earlier_case_ids),
    }
}

/// The contract's view of a report.
pub fn report_message(view: &ReportView) -> Report {
    let model = &view.report;
    Report {
        report_id: model.report_id.clone(),
        case_id: model.case_id.clone(),
        request_id: model.request_id.clone(),
        channel: model.channel,
        reporter_id: model.reporter_id.clone(),
        category_code: model.category_code.clone(),
        severity: model.severity,
        description: model.description.clone(),
        place: Some(place_of(model)),
        attachments: attachments_of(model),
        observed_at: Some(to_proto_timestamp(from_millis(model.observed_at_ms))),
        received_at: Some(to_proto_timestamp(from_millis(model.received_at_ms))),
        region: Some(region_of(model)),
        merged: model.merged,
        recurrent: model.recurrent,
        earlier_case_ids: ids_of(&model.earlier_case_ids),
        split_from_case_id: model.split_from_case_id.clone(),
        media_url: model.media_url.clone(),
        case_state: view
            .case
            .as_ref()
            .map_or(CaseState::Unspecified as i32, |case| case.state),
    }
}

/// The row of a new report in `entry`'s grid.
fn report_row(
    checked: &CheckedReport,
    fingerprint: String,
    entry: &GridEntry,
    case_id: String,
    merged: bool,
    received_at_ms: i64,
) -> Result<report::Model, IntakeError> {
    Ok(report::Model {
        report_id: uuid::Uuid::now_v7().to_string(),
        request_id: checked.request_id.clone(),
        fingerprint,
        case_id,
        channel: checked.channel as i32,
        reporter_id: checked.reporter_id.clone(),
        category_code: checked.category.as_str().to_string(),
        severity: checked.severity as i32,
        description: checked.description.clone(),
        grid_code: entry.grid.code.clone(),
        lat: checked.position.lat,
        lng: checked.position.lng,
        address: checked.address.clone(),
        attachments: serde_json::to_string(&checked.attachments)
            .map_err(|error| IntakeError::Unexpected(error.to_string()))?,
        observed_at_ms: checked.observed_at_ms,
        received_at_ms,
        city_code: entry.street.city_code.clone(),
        district_code: entry.street.district_code.clone(),
        street_code: entry.street.code.clone(),
        street_slug: entry.street.slug.clone(),
        community_code: entry.grid.community_code.clone(),
        merged,
        recurrent: false,
        earlier_case_ids: "[]".into(),
        split_from_case_id: String::new(),
        media_url: checked.media_url.clone(),
    })
}

/// `case.reported` for a report that opens a case: everything dispatch and the departments need.
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

/// `case.recurrent` for a case that opened as a recurring problem, to follow its `case.reported`.
fn case_recurrent(
    clock: &dyn Clock,
    model: &report::Model,
    config: &IntakeConfig,
) -> Option<Event> {
    if !model.recurrent {
        return None;
    }
    Some(envelope::new_event(
        clock,
        SOURCE,
        &model.case_id,
        0,
        Some(region_of(model)),
        Payload::CaseRecurrent(CaseRecurrent {
            earlier_case_ids: ids_of(&model.earlier_case_ids),
            threshold: u32::try_from(config.recurrence.cases).unwrap_or(u32::MAX),
            window_days: u32::try_from(config.recurrence.days).unwrap_or(u32::MAX),
            distance_meters: merging::distance_for(&config.merging, &model.category_code),
        }),
    ))
}

/// The events of a report that opens a case: `case.reported`, then `case.recurrent` if it recurs.
fn opening_events(
    clock: &dyn Clock,
    model: &report::Model,
    config: &IntakeConfig,
) -> Result<Vec<whistle_platform::outbox::OutboxEvent>, IntakeError> {
    [
        Some(case_reported(clock, model)),
        case_recurrent(clock, model, config),
    ]
    .into_iter()
    .flatten()
    .map(|event| {
        envelope::to_outbox(&event).map_err(|error| IntakeError::Unexpected(error.to_string()))
    })
    .collect()
}

/// `case.merged` for a report that joined an open case (envelope case id: that case).
fn case_merged(
    clock: &dyn Clock,
    model: &report::Model,
    distance_meters: f64,
    report_count: u32,
) -> Event {
    envelope::new_event(
        clock,
        SOURCE,
        &model.case_id,
        0,
        Some(region_of(model)),
        Payload::CaseMerged(CaseMerged {
            report_id: model.report_id.clone(),
            merged_into_case_id: model.case_id.clone(),
            channel: model.channel,
            reporter_id: model.reporter_id.clone(),
            category_code: model.category_code.clone(),
            severity: model.severity,
            description: model.description.clone(),
            place: Some(place_of(model)),
            attachments: attachments_of(model),
            observed_at: Some(to_proto_timestamp(from_millis(model.observed_at_ms))),
            distance_meters,
            report_count,
        }),
    )
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
        observed_at: Some(to_proto_timestamp(latest_instant())),
        media_url: format!("a://{}", text(limits.uri_chars.saturating_sub(4))),
        datum: Datum::Bd09 as i32,
    }
}

/// A late instant with the longest encoding a timestamp of ours has (2038, full nanoseconds).
fn latest_instant() -> DateTime<Utc> {
    DateTime::from_timestamp(i64::from(i32::MAX), 999_999_999).unwrap_or_default()
}

/// The bytes (payload, subject, headers) of the largest event a report can cause under `limits`
/// (`case.reported` of a recurrent or split case, or `case.merged`); refused when the limits leave
/// no valid report at all.
pub fn largest_event_bytes(limits: &LimitsConfig) -> Result<usize, FieldError> {
    let request = largest_report(limits);
    let latest = latest_instant();
    let checked = check_report(&request, latest, limits)?;
    // registry entries at their largest: codes of fixed length, a street slug of 64 characters
    let entry = GridEntry {
        street: street::Model {
            code: "999999999".into(),
            slug: "s".repeat(64),
            name: String::new(),
            district_code: "999999".into(),
            city_code: "999900".into(),
        },
        grid: grid::Model {
            code: "999999999999999".into(),
            community_code: "999999999999".into(),
            street_code: "999999999".into(),
            name: String::new(),
        },
    };
    let case_id = uuid::Uuid::now_v7().to_string();
    let mut model = report_row(&checked, "f".repeat(64), &entry, case_id.clone(), false, 0)
        .map_err(|error| FieldError::new("request", error.to_string()))?;
    model.recurrent = true;
    model.earlier_case_ids = json_ids(&vec![case_id.clone(); limits.list_items]);
    let clock = whistle_platform::ManualClock::new(latest);
    let split = envelope::new_event(
        &clock,
        SOURCE,
        &case_id,
        0,
        Some(region_of(&model)),
        Payload::ReportSplit(ReportSplit {
            report_id: model.report_id.clone(),
            reporter_id: model.reporter_id.clone(),
            new_case_id: case_id.clone(),
            split_by: "𝄞".repeat(limits.id_chars),
            reason: "𝄞".repeat(limits.text_chars),
            report_count: u32::MAX,
        }),
    );
    let recurrent = case_recurrent(&clock, &model, &IntakeConfig::default());
    let mut largest = 0;
    for event in [
        Some(case_reported(&clock, &model)),
        Some(case_merged(&clock, &model, f64::MAX, u32::MAX)),
        Some(split),
        recurrent,
    ]
    .into_iter()
    .flatten()
    {
        let outbox_event = envelope::to_outbox(&event)
            .map_err(|error| FieldError::new("request", error.to_string()))?;
        largest = std::cmp::max(largest, outbox_event.traced_wire_bytes());
    }
    Ok(largest)
}

/// Why a position found no grid, in words for the caller.
fn unlocated_reason(position: Position, why: Unlocated, located_grids: usize) -> String {
    let at = format!("position {:.6}, {:.6} (WGS-84)", position.lat, position.lng);
    match why {
        Unlocated::InCommunity(community) => format!(
            "{at} lies in community {community} but in none of its grids; give place.grid_code"
        ),
        Unlocated::InStreet(street) => {
            format!("{at} lies in street {street} but in no grid; give place.grid_code")
        }
        Unlocated::Nowhere if located_grids == 0 => format!(
            "{at} cannot be located: no grid has a boundary yet (whistle grid import); give place.grid_code"
        ),
        Unlocated::Nowhere => {
            format!("{at} lies in no grid of the registry; give place.grid_code")
        }
    }
}

/// Takes the merge locks of a category around a position (`merging::merge_areas`) for the rest of
/// the transaction, in one statement, in the areas' order.
async fn lock_merging<C: ConnectionTrait>(
    connection: &C,
    category_code: &str,
    street_code: &str,
    position: Position,
    distance_meters: f64,
) -> Result<(), DbErr> {
    let rows = merging::merge_areas(street_code, position, distance_meters)
        .into_iter()
        .map(|area| merge_area::ActiveModel {
            category_code: Set(category_code.to_string()),
            area: Set(area),
            decisions: Set(1),
        });
    let count_decision =
        OnConflict::columns([merge_area::Column::CategoryCode, merge_area::Column::Area])
            .value(
                merge_area::Column::Decisions,
                Expr::col((merge_area::Entity, merge_area::Column::Decisions)).add(1),
            )
            .to_owned();
    whistle_platform::db::insert_rows(connection, rows, Some(count_decision)).await?;
    Ok(())
}

fn position_of_case(case: &case::Model) -> Position {
    Position {
        lat: case.lat,
        lng: case.lng,
    }
}

/// Open cases of a category in a street that a report at `position` could join.
async fn open_cases<C: ConnectionTrait>(
    connection: &C,
    category_code: &str,
    street_code: &str,
    position: Position,
    rule: MergeRule,
    now_ms: i64,
) -> Result<Vec<case::Model>, DbErr> {
    let search = SearchBox::around(position, rule.distance_meters);
    case::Entity::find()
        .filter(case::Column::CategoryCode.eq(category_code))
        .filter(case::Column::StreetCode.eq(street_code))
        .filter(case::Column::State.eq(CaseState::Open as i32))
        .filter(case::Column::OpenedAtMs.gte(now_ms.saturating_sub(rule.window_ms)))
        .filter(case::Column::Lat.between(search.min_lat, search.max_lat))
        .filter(case::Column::Lng.between(search.min_lng, search.max_lng))
        .all(connection)
        .await
}

impl Intake {
    fn limits(&self) -> &LimitsConfig {
        &self.config.limits
    }

    /// Records a report: it opens a case, or joins an open duplicate case (`merged`).
    pub async fn submit(
        &self,
        request: SubmitReportRequest,
    ) -> Result<SubmitReportResponse, IntakeError> {
        let now = self.clock.now();
        let now_ms = to_millis(now);
        let checked = check_report(&request, now, self.limits())?;
        let fingerprint = fingerprint(&request);
        let registry = self.registry.get();
        if !registry.has_category(checked.category.as_str()) {
            return Err(IntakeError::invalid(
                "category_code",
                format!(
                    "unknown category {}; see ListCategories",
                    checked.category.as_str()
                ),
            ));
        }
        let entry = match &checked.grid {
            Some(code) => registry.grid(code.as_str()).cloned().ok_or_else(|| {
                IntakeError::invalid("place.grid_code", format!("unknown grid {}", code.as_str()))
            })?,
            None => {
                let entry = registry.locate(checked.position).map_err(|why| {
                    IntakeError::invalid(
                        "place",
                        unlocated_reason(checked.position, why, registry.located_grids()),
                    )
                })?;
                crate::metrics::metrics().reports_located.add(1, &[]);
                entry.clone()
            }
        };
        let rule = merging::rule_for(&self.config.merging, checked.category.as_str());
        match self
            .submit_in_transaction(&checked, &fingerprint, &entry, rule, now_ms)
            .await
        {
            // the same request_id committed by a concurrent call (not serialized by a merge lock)
            Err(IntakeError::Database(error)) if is_unique_violation(&error) => {
                match self
                    .existing_answer(&self.db, &checked, &fingerprint)
                    .await?
                {
                    Some(answer) => answer,
                    None => Err(IntakeError::Database(error)),
                }
            }
            other => other,
        }
    }

    /// The answer to a request whose request_id was seen before: the first answer, or
    /// ALREADY_EXISTS when the content differs.
    async fn existing_answer<C: ConnectionTrait>(
        &self,
        connection: &C,
        checked: &CheckedReport,
        fingerprint: &str,
    ) -> Result<Option<Result<SubmitReportResponse, IntakeError>>, IntakeError> {
        let Some(existing) = report::Entity::find()
            .filter(report::Column::RequestId.eq(checked.request_id.as_str()))
            .one(connection)
            .await?
        else {
            return Ok(None);
        };
        if existing.fingerprint == fingerprint {
            return Ok(Some(Ok(response_of(&existing))));
        }
        Ok(Some(Err(IntakeError::AlreadyExists(format!(
            "request_id: {:?} was already used for a different report ({})",
            checked.request_id, existing.report_id
        )))))
    }

    async fn submit_in_transaction(
        &self,
        checked: &CheckedReport,
        fingerprint: &str,
        entry: &GridEntry,
        rule: Option<MergeRule>,
        now_ms: i64,
    ) -> Result<SubmitReportResponse, IntakeError> {
        let category_code = checked.category.as_str();
        let transaction = self.db.begin().await?;
        if let Some(rule) = rule {
            // a twin report arriving now waits here until this one committed, then sees its case
            lock_merging(
                &transaction,
                category_code,
                &entry.street.code,
                checked.position,
                rule.distance_meters,
            )
            .await?;
        }
        if let Some(answer) = self
            .existing_answer(&transaction, checked, fingerprint)
            .await?
        {
            return answer;
        }
        let mut target = None;
        if let Some(rule) = rule {
            let candidates = open_cases(
                &transaction,
                category_code,
                &entry.street.code,
                checked.position,
                rule,
                now_ms,
            )
            .await?;
            let open: Vec<OpenCase> = candidates
                .iter()
                .map(|case| OpenCase {
                    case_id: case.case_id.clone(),
                    position: position_of_case(case),
                    opened_at_ms: case.opened_at_ms,
                })
                .collect();
            target = merging::choose_case(rule, &open, checked.position, now_ms).and_then(
                |(chosen, meters)| {
                    candidates
                        .iter()
                        .find(|case| case.case_id == chosen.case_id)
                        .map(|case| (case.clone(), meters))
                },
            );
        }
        let (model, events) = match target {
            Some((case, meters)) => {
                let model = report_row(
                    checked,
                    fingerprint.to_string(),
                    entry,
                    case.case_id.clone(),
                    true,
                    now_ms,
                )?;
                case::Entity::update_many()
                    .col_expr(
                        case::Column::ReportCount,
                        Expr::col(case::Column::ReportCount).add(1),
                    )
                    .filter(case::Column::CaseId.eq(case.case_id.as_str()))
                    .exec(&transaction)
                    .await?;
                let report_count = u32::try_from(case.report_count.saturating_add(1)).unwrap_or(1);
                let event = case_merged(self.clock.as_ref(), &model, meters, report_count);
                let event = envelope::to_outbox(&event)
                    .map_err(|error| IntakeError::Unexpected(error.to_string()))?;
                (model, vec![event])
            }
            None => {
                let mut model = report_row(
                    checked,
                    fingerprint.to_string(),
                    entry,
                    uuid::Uuid::now_v7().to_string(),
                    false,
                    now_ms,
                )?;
                self.open_case(&transaction, &mut model, now_ms).await?;
                let events = opening_events(self.clock.as_ref(), &model, &self.config)?;
                (model, events)
            }
        };
        let response = response_of(&model);
        let (report_id, case_id, merged, recurrent) = (
            model.report_id.clone(),
            model.case_id.clone(),
            model.merged,
            model.recurrent,
        );
        report::Entity::insert(report::ActiveModel::from(model))
            .exec_without_returning(&transaction)
            .await?;
        let staged = self
            .outbox_signal
            .enqueue_staged(&transaction, events, now_ms)
            .await?;
        transaction.commit().await?;
        staged.committed();
        let category = [whistle_platform::metrics::attribute(
            "category",
            category_code.to_string(),
        )];
        if merged {
            crate::metrics::metrics().reports_merged.add(1, &category);
        }
        if recurrent {
            crate::metrics::metrics()
                .reports_recurrent
                .add(1, &category);
        }
        tracing::info!(report_id = %report_id, case_id = %case_id, merged, recurrent, "report received");
        Ok(response)
    }

    /// Stores the case a report opens, deciding whether it recurs; sets the report's flags.
    async fn open_case<C: ConnectionTrait>(
        &self,
        connection: &C,
        model: &mut report::Model,
        now_ms: i64,
    ) -> Result<(), IntakeError> {
        let position = Position {
            lat: model.lat,
            lng: model.lng,
        };
        if let Some(earlier) = self
            .recurrence(connection, &model.category_code, position, now_ms)
            .await?
        {
            model.recurrent = true;
            model.earlier_case_ids = json_ids(&earlier);
        }
        case::Entity::insert(case::ActiveModel {
            case_id: Set(model.case_id.clone()),
            category_code: Set(model.category_code.clone()),
            street_code: Set(model.street_code.clone()),
            community_code: Set(model.community_code.clone()),
            lat: Set(model.lat),
            lng: Set(model.lng),
            opened_at_ms: Set(now_ms),
            state: Set(CaseState::Open as i32),
            state_changed_at_ms: Set(now_ms),
            state_note: Set(String::new()),
            report_count: Set(1),
            evidence_count: Set(0),
            recurrent: Set(model.recurrent),
            first_report_id: Set(model.report_id.clone()),
            state_version: Set(0),
        })
        .exec_without_returning(connection)
        .await?;
        Ok(())
    }

    /// The earlier closed cases that make a new case at `position` recurrent, if there are enough.
    async fn recurrence<C: ConnectionTrait>(
        &self,
        connection: &C,
        category_code: &str,
        position: Position,
        now_ms: i64,
    ) -> Result<Option<Vec<String>>, DbErr> {
        let config = &self.config.recurrence;
        if !config.enabled {
            return Ok(None);
        }
        let distance = merging::distance_for(&self.config.merging, category_code);
        let search = SearchBox::around(position, distance);
        let since = now_ms.saturating_sub(
            i64::try_from(config.days)
                .unwrap_or(3650)
                .saturating_mul(86_400_000),
        );
        let closed: Vec<ClosedCase> = case::Entity::find()
            .filter(case::Column::CategoryCode.eq(category_code))
            .filter(case::Column::State.eq(CaseState::Closed as i32))
            .filter(case::Column::StateChangedAtMs.gte(since))
            .filter(case::Column::Lat.between(search.min_lat, search.max_lat))
            .filter(case::Column::Lng.between(search.min_lng, search.max_lng))
            .all(connection)
            .await?
            .into_iter()
            .map(|case| ClosedCase {
                position: position_of_case(&case),
                case_id: case.case_id,
                closed_at_ms: case.state_changed_at_ms,
            })
            .collect();
        Ok(merging::recurrence(
            config,
            distance,
            &closed,
            position,
            now_ms,
            self.limits().list_items,
        ))
    }

    /// A report with its case.
    pub async fn report_view(&self, report_id: &str) -> Result<Option<ReportView>, IntakeError> {
        let Some(report) = report::Entity::find_by_id(report_id).one(&self.db).await? else {
            return Ok(None);
        };
        let case = case::Entity::find_by_id(report.case_id.as_str())
            .one(&self.db)
            .await?;
        Ok(Some(ReportView { report, case }))
    }

    /// The report stored for a request_id (Open311's token).
    pub async fn report_by_request_id(
        &self,
        request_id: &str,
    ) -> Result<Option<report::Model>, IntakeError> {
        Ok(report::Entity::find()
            .filter(report::Column::RequestId.eq(request_id))
            .one(&self.db)
            .await?)
    }

    /// Reports with their cases, attached in one query.
    pub async fn with_cases(
        &self,
        reports: Vec<report::Model>,
    ) -> Result<Vec<ReportView>, IntakeError> {
        let ids: Vec<String> = reports
            .iter()
            .map(|report| report.case_id.clone())
            .collect();
        let cases: HashMap<String, case::Model> = if ids.is_empty() {
            HashMap::new()
        } else {
            case::Entity::find()
                .filter(case::Column::CaseId.is_in(ids))
                .all(&self.db)
                .await?
                .into_iter()
                .map(|case| (case.case_id.clone(), case))
                .collect()
        };
        Ok(reports
            .into_iter()
            .map(|report| {
                let case = cases.get(&report.case_id).cloned();
                ReportView { report, case }
            })
            .collect())
    }

    pub async fn report(&self, request: GetReportRequest) -> Result<Report, IntakeError> {
        check_get_report(self.limits(), &request)?;
        let view = self.report_view(&request.report_id).await?.ok_or_else(|| {
            IntakeError::NotFound(format!("report {} not found", request.report_id))
        })?;
        Ok(report_message(&view))
    }

    pub async fn categories(
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

    pub fn locate(&self, request: LocateGridRequest) -> Result<LocateGridResponse, IntakeError> {
        let position = check_locate(&request)?;
        let registry = self.registry.get();
        let entry = registry.locate(position).map_err(|why| {
            IntakeError::invalid(
                "place",
                unlocated_reason(position, why, registry.located_grids()),
            )
        })?;
        Ok(LocateGridResponse {
            region: Some(region_of_entry(entry)),
            grid_name: entry.grid.name.clone(),
            lat: position.lat,
            lng: position.lng,
        })
    }

    /// Adds or updates areas and boundaries in one transaction, then reloads the registry.
    pub async fn import(
        &self,
        request: ImportGridsRequest,
    ) -> Result<ImportGridsResponse, IntakeError> {
        let areas = check_import(&request, self.limits(), &self.config.catalogue)?;
        let registry = self.registry.get();
        let imported_communities: HashMap<&str, usize> = areas
            .iter()
            .enumerate()
            .filter(|(_, area)| area.level == Level::Community)
            .map(|(index, area)| (area.code.as_str(), index))
            .collect();
        let now_ms = to_millis(self.clock.now());
        let (mut streets, mut communities, mut grids) = (0, 0, 0);
        let transaction = self.db.begin().await?;
        for (index, area) in areas.iter().enumerate() {
            let field = |name: &str| format!("areas[{index}].{name}");
            let name_or = |known: Option<&str>| -> Result<String, IntakeError> {
                match (area.name.is_empty(), known) {
                    (false, _) => Ok(area.name.clone()),
                    (true, Some(known)) => Ok(known.to_string()),
                    (true, None) => Err(IntakeError::invalid(
                        field("name"),
                        "required for an area the registry does not know",
                    )),
                }
            };
            match area.level {
                Level::Street => {
                    let known = registry.street(&area.code).ok_or_else(|| {
                        IntakeError::invalid(
                            field("code"),
                            format!(
                                "unknown street {}; streets come from the catalogue file, which gives their subject slug",
                                area.code
                            ),
                        )
                    })?;
                    crate::catalogue::upsert_street(
                        &transaction,
                        street::ActiveModel {
                            code: Set(known.code.clone()),
                            slug: Set(known.slug.clone()),
                            name: Set(name_or(Some(&known.name))?),
                            district_code: Set(known.district_code.clone()),
                            city_code: Set(known.city_code.clone()),
                        },
                    )
                    .await?;
                    streets += 1;
                }
                Level::Community => {
                    if registry.street(&area.parent_code).is_none() {
                        return Err(IntakeError::invalid(
                            field("parent_code"),
                            format!("unknown street {}", area.parent_code),
                        ));
                    }
                    let known = registry
                        .community(&area.code)
                        .map(|known| known.name.as_str());
                    crate::catalogue::upsert_community(
                        &transaction,
                        community::ActiveModel {
                            code: Set(area.code.clone()),
                            street_code: Set(area.parent_code.clone()),
                            name: Set(name_or(known)?),
                        },
                    )
                    .await?;
                    communities += 1;
                }
                Level::Grid => {
                    let street_code = &area.code[..9];
                    let parent_known = registry.community(&area.parent_code).is_some()
                        || imported_communities.contains_key(area.parent_code.as_str());
                    if !parent_known {
                        return Err(IntakeError::invalid(
                            field("parent_code"),
                            format!("unknown community {}", area.parent_code),
                        ));
                    }
                    if registry.street(street_code).is_none() {
                        return Err(IntakeError::invalid(
                            field("code"),
                            format!("unknown street {street_code}"),
                        ));
                    }
                    let known = registry
                        .grid(&area.code)
                        .map(|known| known.grid.name.as_str());
                    crate::catalogue::upsert_grid(
                        &transaction,
                        grid::ActiveModel {
                            code: Set(area.code.clone()),
                            community_code: Set(area.parent_code.clone()),
                            street_code: Set(street_code.to_string()),
                            name: Set(name_or(known)?),
                        },
                    )
                    .await?;
                    grids += 1;
                }
            }
            if let Some(boundary) = &area.boundary {
                crate::catalogue::upsert_boundary(
                    &transaction,
                    &area.code,
                    area.level,
                    boundary,
                    now_ms,
                )
                .await?;
            }
        }
        let version = crate::catalogue::bump_version(&transaction).await?;
        transaction.commit().await?;
        self.registry.reload(&self.db).await?;
        tracing::info!(streets, communities, grids, version, "areas imported");
        Ok(ImportGridsResponse {
            streets,
            communities,
            grids,
            registry_version: u64::try_from(version).unwrap_or_default(),
        })
    }

    /// A page of reports matching `query`, newest first; with `region_prefix`, only reports whose
    /// region code (the most specific code the report has, `policy::region_code`) begins with it,
    /// filtered in the query so that every page is full while more reports remain.
    pub async fn list_reports(
        &self,
        request: ListReportsRequest,
        region_prefix: Option<&str>,
    ) -> Result<ListReportsResponse, IntakeError> {
        let query = check_list_reports(&request, self.limits())?;
        let (reports, next) = self.query_reports(&query, region_prefix).await?;
        let views = self.with_cases(reports).await?;
        Ok(ListReportsResponse {
            reports: views.iter().map(report_message).collect(),
            next_page_token: next.unwrap_or_default(),
        })
    }

    async fn query_reports(
        &self,
        query: &ReportQuery,
        region_prefix: Option<&str>,
    ) -> Result<(Vec<report::Model>, Option<String>), IntakeError> {
        let mut select = report::Entity::find()
            .order_by_desc(report::Column::ReceivedAtMs)
            .order_by_desc(report::Column::ReportId)
            .limit(query.page_size + 1);
        if let Some(prefix) = region_prefix {
            select = select.filter(region_begins_with(prefix));
        }
        if query.recurrent_only {
            select = select.filter(report::Column::Recurrent.eq(true));
        }
        if let Some(code) = &query.category_code {
            select = select.filter(report::Column::CategoryCode.eq(code.as_str()));
        }
        if let Some(case_id) = &query.case_id {
            select = select.filter(report::Column::CaseId.eq(case_id.as_str()));
        }
        if let Some((at, id)) = &query.after {
            select = select.filter(
                Condition::any()
                    .add(report::Column::ReceivedAtMs.lt(*at))
                    .add(
                        Condition::all()
                            .add(report::Column::ReceivedAtMs.eq(*at))
                            .add(report::Column::ReportId.lt(id.as_str())),
                    ),
            );
        }
        let mut reports = select.all(&self.db).await?;
        let next = if reports.len() as u64 > query.page_size {
            reports.truncate(query.page_size as usize);
            reports
                .last()
                .map(|last| requests::page_token(last.received_at_ms, &last.report_id))
        } else {
            None
        };
        Ok((reports, next))
    }

    /// Takes a wrongly merged report out of its case into a case of its own.
    pub async fn split(
        &self,
        request: SplitReportRequest,
    ) -> Result<SplitReportResponse, IntakeError> {
        check_split(&request, self.limits())?;
        let now_ms = to_millis(self.clock.now());
        let find = || async {
            report::Entity::find_by_id(request.report_id.as_str())
                .one(&self.db)
                .await?
                .ok_or_else(|| {
                    IntakeError::NotFound(format!("report {} not found", request.report_id))
                })
        };
        let seen = find().await?;
        let transaction = self.db.begin().await?;
        // the new case opens at the report's place: reports arriving there meanwhile wait for it
        lock_merging(
            &transaction,
            &seen.category_code,
            &seen.street_code,
            Position {
                lat: seen.lat,
                lng: seen.lng,
            },
            merging::distance_for(&self.config.merging, &seen.category_code),
        )
        .await?;
        // read again under the lock: a concurrent split or merge decided before this one
        let mut model = report::Entity::find_by_id(request.report_id.as_str())
            .one(&transaction)
            .await?
            .ok_or_else(|| {
                IntakeError::NotFound(format!("report {} not found", request.report_id))
            })?;
        if !model.merged {
            if !model.split_from_case_id.is_empty() {
                return Ok(SplitReportResponse {
                    report_id: model.report_id,
                    case_id: model.case_id,
                    split_from_case_id: model.split_from_case_id,
                });
            }
            return Err(IntakeError::FailedPrecondition(format!(
                "report {} was not merged: it opened case {} itself",
                model.report_id, model.case_id
            )));
        }
        let old_case_id = std::mem::replace(&mut model.case_id, uuid::Uuid::now_v7().to_string());
        model.merged = false;
        model.split_from_case_id = old_case_id.clone();
        self.open_case(&transaction, &mut model, now_ms).await?;
        let old_case = case::Entity::find_by_id(old_case_id.as_str())
            .one(&transaction)
            .await?;
        case::Entity::update_many()
            .col_expr(
                case::Column::ReportCount,
                Expr::col(case::Column::ReportCount).sub(1),
            )
            .filter(case::Column::CaseId.eq(old_case_id.as_str()))
            .filter(case::Column::ReportCount.gt(1))
            .exec(&transaction)
            .await?;
        let left = old_case.map_or(1, |case| {
            std::cmp::max(case.report_count.saturating_sub(1), 1)
        });
        let split = envelope::new_event(
            self.clock.as_ref(),
            SOURCE,
            &old_case_id,
            0,
            Some(region_of(&model)),
            Payload::ReportSplit(ReportSplit {
                report_id: model.report_id.clone(),
                reporter_id: model.reporter_id.clone(),
                new_case_id: model.case_id.clone(),
                split_by: request.operator_id.clone(),
                reason: request.reason.trim().to_string(),
                report_count: u32::try_from(left).unwrap_or(1),
            }),
        );
        let mut events = vec![
            envelope::to_outbox(&split)
                .map_err(|error| IntakeError::Unexpected(error.to_string()))?,
        ];
        events.extend(opening_events(self.clock.as_ref(), &model, &self.config)?);
        let response = SplitReportResponse {
            report_id: model.report_id.clone(),
            case_id: model.case_id.clone(),
            split_from_case_id: old_case_id,
        };
        report::Entity::update(report::ActiveModel {
            report_id: Set(model.report_id.clone()),
            case_id: Set(model.case_id.clone()),
            merged: Set(false),
            split_from_case_id: Set(model.split_from_case_id.clone()),
            recurrent: Set(model.recurrent),
            earlier_case_ids: Set(model.earlier_case_ids.clone()),
            ..Default::default()
        })
        .exec(&transaction)
        .await?;
        let staged = self
            .outbox_signal
            .enqueue_staged(&transaction, events, now_ms)
            .await?;
        transaction.commit().await?;
        staged.committed();
        tracing::info!(report_id = %response.report_id, case_id = %response.case_id, from = %response.split_from_case_id, "report split out");
        Ok(response)
    }

    /// Adds photo references to an open case from one of its reporters or its community.
    pub async fn attach_evidence(
        &self,
        request: AttachEvidenceRequest,
    ) -> Result<AttachEvidenceResponse, IntakeError> {
        let checked = check_evidence(&request, self.limits(), &self.config.evidence)?;
        let fingerprint = fingerprint(&request);
        let now_ms = to_millis(self.clock.now());
        let transaction = self.db.begin().await?;
        if let Some(earlier) = evidence::Entity::find()
            .filter(evidence::Column::RequestId.eq(checked.request_id.as_str()))
            .one(&transaction)
            .await?
        {
            if earlier.fingerprint != fingerprint {
                return Err(IntakeError::AlreadyExists(format!(
                    "request_id: {:?} was already used for other evidence",
                    checked.request_id
                )));
            }
            let case = case::Entity::find_by_id(earlier.case_id.as_str())
                .one(&transaction)
                .await?;
            return Ok(AttachEvidenceResponse {
                case_id: earlier.case_id,
                evidence_count: case
                    .map_or(0, |case| u32::try_from(case.evidence_count).unwrap_or(0)),
            });
        }
        let case = case::Entity::find_by_id(checked.case_id.as_str())
            .one(&transaction)
            .await?
            .ok_or_else(|| IntakeError::NotFound(format!("case {} not found", checked.case_id)))?;
        if case.state != CaseState::Open as i32 {
            let state = CaseState::try_from(case.state)
                .map(|state| state.as_str_name())
                .unwrap_or("CASE_STATE_UNSPECIFIED");
            return Err(IntakeError::FailedPrecondition(format!(
                "case {} is {state}: evidence is added to open cases only",
                case.case_id
            )));
        }
        let (attached_by, by_community) = match &checked.actor {
            EvidenceActor::Reporter(reporter_id) => {
                let reported = report::Entity::find()
                    .filter(report::Column::CaseId.eq(case.case_id.as_str()))
                    .filter(report::Column::ReporterId.eq(reporter_id.as_str()))
                    .one(&transaction)
                    .await?
                    .is_some();
                if !reported {
                    return Err(IntakeError::invalid(
                        "reporter_id",
                        format!("{reporter_id} did not report on case {}", case.case_id),
                    ));
                }
                (reporter_id.clone(), false)
            }
            EvidenceActor::Community(code) => {
                if *code != case.community_code {
                    return Err(IntakeError::invalid(
                        "community_code",
                        format!(
                            "case {} is in community {}, not {code}",
                            case.case_id, case.community_code
                        ),
                    ));
                }
                (code.clone(), true)
            }
        };
        let added = i32::try_from(checked.attachments.len()).unwrap_or(i32::MAX);
        let max = i32::try_from(self.config.evidence.max_per_case).unwrap_or(i32::MAX);
        // one statement decides the count, so concurrent calls cannot pass the limit together
        let updated = case::Entity::update_many()
            .col_expr(
                case::Column::EvidenceCount,
                Expr::col(case::Column::EvidenceCount).add(added),
            )
            .filter(case::Column::CaseId.eq(case.case_id.as_str()))
            .filter(case::Column::EvidenceCount.lte(max.saturating_sub(added)))
            .exec(&transaction)
            .await?;
        if updated.rows_affected == 0 {
            return Err(IntakeError::FailedPrecondition(format!(
                "case {} has {} evidence items; {} more would pass evidence.max_per_case = {max}",
                case.case_id, case.evidence_count, added
            )));
        }
        for attachment in &checked.attachments {
            evidence::Entity::insert(evidence::ActiveModel {
                request_id: Set(checked.request_id.clone()),
                fingerprint: Set(fingerprint.clone()),
                case_id: Set(case.case_id.clone()),
                attached_by: Set(attached_by.clone()),
                by_community: Set(by_community),
                uri: Set(attachment.uri.clone()),
                sha256: Set(attachment.sha256.clone()),
                media_type: Set(attachment.media_type.clone()),
                size_bytes: Set(i64::try_from(attachment.size_bytes).unwrap_or(i64::MAX)),
                attached_at_ms: Set(now_ms),
                ..Default::default()
            })
            .exec_without_returning(&transaction)
            .await?;
        }
        let first = report::Entity::find_by_id(case.first_report_id.as_str())
            .one(&transaction)
            .await?
            .ok_or_else(|| {
                IntakeError::Unexpected(format!("case {} has no first report", case.case_id))
            })?;
        let evidence_count = u32::try_from(case.evidence_count.saturating_add(added)).unwrap_or(0);
        let event = envelope::new_event(
            self.clock.as_ref(),
            SOURCE,
            &case.case_id,
            0,
            Some(region_of(&first)),
            Payload::CaseEvidenceAttached(CaseEvidenceAttached {
                attached_by,
                by_community,
                attachments: checked
                    .attachments
                    .iter()
                    .cloned()
                    .map(Attachment::from)
                    .collect(),
                evidence_count,
            }),
        );
        let outbox_event = envelope::to_outbox(&event)
            .map_err(|error| IntakeError::Unexpected(error.to_string()))?;
        let staged = self
            .outbox_signal
            .enqueue_staged(&transaction, vec![outbox_event], now_ms)
            .await?;
        transaction.commit().await?;
        staged.committed();
        Ok(AttachEvidenceResponse {
            case_id: case.case_id,
            evidence_count,
        })
    }
}

/// Reports whose region code (the first non-empty code of grid, community, street, district and
/// city: `policy::region_code`) begins with `prefix`.
fn region_begins_with(prefix: &str) -> sea_orm::sea_query::SimpleExpr {
    use sea_orm::sea_query::{Alias, Func, SimpleExpr};
    let non_empty = |column: report::Column| -> SimpleExpr {
        Func::cust(Alias::new("NULLIF"))
            .arg(Expr::col(column))
            .arg("")
            .into()
    };
    let code = Func::coalesce([
        non_empty(report::Column::GridCode),
        non_empty(report::Column::CommunityCode),
        non_empty(report::Column::StreetCode),
        non_empty(report::Column::DistrictCode),
        non_empty(report::Column::CityCode),
        Expr::value(""),
    ]);
    // INT4 arguments: PostgreSQL has no substr(text, bigint, bigint)
    let chars = i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX);
    SimpleExpr::from(
        Func::cust(Alias::new("substr"))
            .arg(code)
            .arg(1i32)
            .arg(chars),
    )
    .eq(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{DbBackend, QueryTrait};

    /// The prefix is bound as a value on both databases, never written into the SQL, and the
    /// placeholders are the database's own.
    #[test]
    fn the_region_filter_binds_its_prefix() {
        let prefix = "420303004'";
        for (backend, placeholder) in [(DbBackend::Postgres, "$"), (DbBackend::Sqlite, "?")] {
            let statement = report::Entity::find()
                .filter(region_begins_with(prefix))
                .build(backend);
            let filter = statement.sql.split(" WHERE ").nth(1).expect("a filter");
            assert!(filter.starts_with("substr(COALESCE(NULLIF("), "{filter}");
            assert!(filter.contains(placeholder), "{backend:?}: {filter}");
            assert!(!filter.contains(prefix), "{filter}");
            if backend == DbBackend::Postgres {
                assert!(!filter.contains('?'), "{filter}");
            }
            let values = statement.values.expect("bound values").0;
            assert!(values.contains(&sea_orm::Value::from(prefix)), "{values:?}");
        }
    }
}
