//! Preloading a history of cases (`whistle bench --preload`), before the service starts: the case
//! and whistle events of the history go through evaluation's own consumer handler
//! ([`EvaluationEvents`], as `rebuild` applies them), each recorded in the inbox under the consumer
//! that would have received it, so the facts and cards count them in the periods they fall in.

use crate::events::{CASES_CONSUMER, EvaluationEvents, WHISTLES_CONSUMER};
use crate::storage::{Migrator, assignment, case, fact};
use sea_orm::{DatabaseConnection, EntityTrait, PaginatorTrait};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use whistle_platform::clock::SystemClock;
use whistle_platform::db;
use whistle_platform::envelope::Event;
use whistle_platform::inbox::apply_history;

/// Migrates the database and loads the catalogue's departments (as the service does at start).
pub async fn prepare(db: &DatabaseConnection, catalogue_file: &Path) -> anyhow::Result<()> {
    db::migrate::<Migrator>(db).await?;
    crate::catalogue::load(db, catalogue_file).await?;
    Ok(())
}

/// The consumer that receives events of `subject`, if evaluation consumes it.
fn consumer_of(subject: &str) -> Option<&'static str> {
    if subject.starts_with("whistle.v1.") {
        Some(WHISTLES_CONSUMER)
    } else if subject.starts_with("case.v1.") {
        Some(CASES_CONSUMER)
    } else {
        None
    }
}

/// Applies the events (with their subjects) in one transaction.
pub async fn apply(
    db: &DatabaseConnection,
    events: &[(String, Event)],
    now_ms: i64,
) -> anyhow::Result<()> {
    let handler = EvaluationEvents::new(Arc::new(SystemClock));
    apply_history(
        db,
        &handler,
        |subject| consumer_of(subject).map(str::to_string),
        events,
        now_ms,
    )
    .await?;
    // the chunk's deltas folded now, as the service would have done while it consumed them
    crate::cells::compact(db).await?;
    Ok(())
}

/// Rows in evaluation's tables of cases, assignments, facts, inbox and outbox.
pub async fn row_counts(db: &DatabaseConnection) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    counts.insert(
        "evaluation_cases".to_string(),
        case::Entity::find().count(db).await?,
    );
    counts.insert(
        "evaluation_assignments".to_string(),
        assignment::Entity::find().count(db).await?,
    );
    counts.insert(
        "evaluation_case_facts".to_string(),
        fact::Entity::find().count(db).await?,
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
