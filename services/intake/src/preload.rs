//! Preloading a history of cases (`whistle bench --preload`), before the service starts: each case's
//! report and case rows through intake's entities, its `case.reported` through intake's outbox
//! (read back for the other services, then marked sent and purged as the relay would have), and
//! dispatch's later news about the case through intake's own inbox consumer ([`CaseLifecycle`]).
//! Nothing is left for the relay to publish, and nothing for the consumer to apply again.

use crate::lifecycle::{CaseLifecycle, consumer_spec};
use crate::service::{SOURCE, attachments_of, place_of, region_of};
use crate::storage::{Migrator, case, report};
use prost::Message;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    TransactionTrait,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use whistle_platform::clock::{ManualClock, from_millis, to_proto_timestamp};
use whistle_platform::envelope::{self, Event, Payload};
use whistle_platform::inbox::apply_history;
use whistle_platform::{db, outbox};
use whistle_proto::events::CaseReported;
use whistle_proto::intake::{CaseState, SubmitReportRequest};
use whistle_proto::types::{Channel, Place, Region, Severity};

/// One report of the history, opening its own case.
#[derive(Debug, Clone)]
pub struct PreloadCase {
    /// Unique in the database; never a UUID, so never one intake hands out.
    pub case_id: String,
    pub report_id: String,
    pub request_id: String,
    pub category_code: String,
    /// The grid and everything above it, from the catalogue.
    pub region: Region,
    pub lat: f64,
    pub lng: f64,
    pub address: String,
    pub description: String,
    pub reported_at_ms: i64,
}

/// Migrates the database (as the service does at start).
pub async fn prepare(db: &DatabaseConnection) -> anyhow::Result<()> {
    db::migrate::<Migrator>(db).await?;
    Ok(())
}

/// Stores the reports and their cases in one transaction, as `SubmitReport` would have (no
/// merging: each lies at its own place), and returns their `case.reported` events with their
/// subjects, as the relay (`relay`, kept from chunk to chunk) would have published them.
pub async fn open_cases(
    db: &DatabaseConnection,
    relay: &mut outbox::HistoryRelay,
    cases: &[PreloadCase],
    now_ms: i64,
) -> anyhow::Result<Vec<(String, Event)>> {
    let transaction = db.begin().await?;
    let mut reports = Vec::with_capacity(cases.len());
    let mut case_rows = Vec::with_capacity(cases.len());
    let mut events = Vec::with_capacity(cases.len());
    for preload in cases {
        let request = SubmitReportRequest {
            request_id: preload.request_id.clone(),
            channel: Channel::GridPatrol as i32,
            reporter_id: "preload".into(),
            category_code: preload.category_code.clone(),
            severity: Severity::Routine as i32,
            description: preload.description.clone(),
            place: Some(Place {
                grid_code: preload.region.grid_code.clone(),
                lat: preload.lat,
                lng: preload.lng,
                address: preload.address.clone(),
            }),
            ..Default::default()
        };
        let model = report::Model {
            report_id: preload.report_id.clone(),
            request_id: preload.request_id.clone(),
            fingerprint: hex::encode(Sha256::digest(request.encode_to_vec())),
            case_id: preload.case_id.clone(),
            channel: request.channel,
            reporter_id: request.reporter_id.clone(),
            category_code: preload.category_code.clone(),
            severity: request.severity,
            description: preload.description.clone(),
            grid_code: preload.region.grid_code.clone(),
            lat: preload.lat,
            lng: preload.lng,
            address: preload.address.clone(),
            attachments: "[]".into(),
            observed_at_ms: preload.reported_at_ms,
            received_at_ms: preload.reported_at_ms,
            city_code: preload.region.city_code.clone(),
            district_code: preload.region.district_code.clone(),
            street_code: preload.region.street_code.clone(),
            street_slug: preload.region.street_slug.clone(),
            community_code: preload.region.community_code.clone(),
            merged: false,
            recurrent: false,
            earlier_case_ids: "[]".into(),
            split_from_case_id: String::new(),
            media_url: String::new(),
        };
        case_rows.push(case::ActiveModel {
            case_id: Set(preload.case_id.clone()),
            category_code: Set(preload.category_code.clone()),
            street_code: Set(preload.region.street_code.clone()),
            community_code: Set(preload.region.community_code.clone()),
            lat: Set(preload.lat),
            lng: Set(preload.lng),
            opened_at_ms: Set(preload.reported_at_ms),
            state: Set(CaseState::Open as i32),
            state_changed_at_ms: Set(preload.reported_at_ms),
            state_note: Set(String::new()),
            report_count: Set(1),
            evidence_count: Set(0),
            recurrent: Set(false),
            first_report_id: Set(preload.report_id.clone()),
            state_version: Set(0),
        });
        // `case.reported` exactly as the service makes it
        let event = envelope::new_event(
            &ManualClock::new(from_millis(preload.reported_at_ms)),
            SOURCE,
            &model.case_id,
            1,
            Some(region_of(&model)),
            Payload::CaseReported(CaseReported {
                report_id: model.report_id.clone(),
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
        events.push((event, preload.reported_at_ms));
        reports.push(report::ActiveModel::from(model));
    }
    // 26 values a report row; SQLite takes 32,766 a statement
    for chunk in reports.chunks(1_000) {
        report::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(&transaction)
            .await?;
    }
    for chunk in case_rows.chunks(2_000) {
        case::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(&transaction)
            .await?;
    }
    for (event, at_ms) in events {
        outbox::enqueue(&transaction, envelope::to_outbox(&event)?, at_ms).await?;
    }
    let published = relay.relay(&transaction, now_ms).await?;
    transaction.commit().await?;
    Ok(published)
}

/// Applies the case events of the history (intake's and dispatch's, `case.v1.>`) through intake's
/// own consumer handler, recording each in the inbox as that consumer does, in one transaction.
pub async fn apply_case_events(
    db: &DatabaseConnection,
    events: &[(String, Event)],
    now_ms: i64,
) -> anyhow::Result<()> {
    let spec = consumer_spec();
    apply_history(
        db,
        &CaseLifecycle,
        |subject| {
            subject
                .starts_with("case.v1.")
                .then(|| spec.durable.clone())
        },
        events,
        now_ms,
    )
    .await
}

/// Rows in intake's tables of cases, reports, inbox and outbox.
pub async fn row_counts(db: &DatabaseConnection) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    counts.insert(
        "intake_reports".to_string(),
        report::Entity::find().count(db).await?,
    );
    counts.insert(
        "intake_cases".to_string(),
        case::Entity::find().count(db).await?,
    );
    counts.insert(
        "intake_cases_closed".to_string(),
        case::Entity::find()
            .filter(case::Column::State.eq(CaseState::Closed as i32))
            .count(db)
            .await?,
    );
    counts.insert(
        "whistle_inbox".to_string(),
        whistle_platform::inbox::entity::Entity::find()
            .count(db)
            .await?,
    );
    counts.insert(
        "whistle_outbox_unsent".to_string(),
        outbox::entity::Entity::find()
            .filter(outbox::entity::Column::SentAtMs.is_null())
            .count(db)
            .await?,
    );
    Ok(counts)
}
