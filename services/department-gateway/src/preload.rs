//! Preloading a history of cases (`whistle bench --preload`), before the service starts: the case
//! and whistle events dispatch published about them go through the gateway's own consumer handler
//! ([`NoticeRecorder`]), which appends each department's notices and updates its assignments,
//! recorded in the inbox under the consumer that would have received them. Then each department's
//! delivery cursor is set to its last notice: its system had received the whole history.

use crate::notices::{self, NoticeRecorder, NoticeSignal};
use crate::storage::{self, Migrator, assignment, notice};
use sea_orm::{DatabaseConnection, EntityTrait, PaginatorTrait, TransactionTrait};
use std::collections::BTreeMap;
use std::sync::Arc;
use whistle_platform::clock::SystemClock;
use whistle_platform::db;
use whistle_platform::envelope::Event;
use whistle_platform::inbox::apply_history;

/// Migrates the database (as the service does at start).
pub async fn prepare(db: &DatabaseConnection) -> anyhow::Result<()> {
    db::migrate::<Migrator>(db).await?;
    Ok(())
}

/// The consumer that receives events of `subject`, if the gateway consumes it.
fn consumer_of(subject: &str) -> Option<&'static str> {
    if subject.starts_with("whistle.v1.") {
        Some(notices::CONSUMER)
    } else if subject.starts_with("case.v1.") {
        Some(notices::CASES_CONSUMER)
    } else {
        None
    }
}

/// Applies the events (with their subjects) in one transaction, as one batch of the consumers.
pub async fn apply(
    db: &DatabaseConnection,
    events: &[(String, Event)],
    now_ms: i64,
) -> anyhow::Result<()> {
    let recorder = NoticeRecorder::new(
        Arc::new(SystemClock),
        NoticeSignal::default(),
        crate::storage::TraceCache::default(),
    );
    apply_history(
        db,
        &recorder,
        |subject| consumer_of(subject).map(str::to_string),
        events,
        now_ms,
    )
    .await
}

/// Sets every department's delivery cursor to its last notice and returns those sequences: a
/// department system of the history resumes after them.
pub async fn finish(db: &DatabaseConnection, now_ms: i64) -> anyhow::Result<BTreeMap<String, u64>> {
    let transaction = db.begin().await?;
    let mut last = BTreeMap::new();
    for (department_code, sequence) in storage::notice_counters(&transaction).await? {
        storage::advance_delivery_cursor(&transaction, &department_code, sequence, now_ms).await?;
        last.insert(department_code, u64::try_from(sequence).unwrap_or(0));
    }
    transaction.commit().await?;
    Ok(last)
}

/// Rows in the gateway's notice log, assignments projection, inbox and outbox.
pub async fn row_counts(db: &DatabaseConnection) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    counts.insert(
        "gateway_notices".to_string(),
        notice::Entity::find().count(db).await?,
    );
    counts.insert(
        "gateway_assignments".to_string(),
        assignment::Entity::find().count(db).await?,
    );
    counts.insert(
        "whistle_inbox".to_string(),
        whistle_platform::inbox::entity::Entity::find()
            .count(db)
            .await?,
    );
    counts.insert(
        "whistle_outbox".to_string(),
        whistle_platform::outbox::entity::Entity::find()
            .count(db)
            .await?,
    );
    Ok(counts)
}
