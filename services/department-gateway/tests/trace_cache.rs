//! The gateway remembers an assignment's case trace once read: the next actions on the assignment
//! cost no lookup, and an assignment with no trace yet is looked up again next time. On a SQLite
//! file.

use sea_orm::EntityTrait;
use std::collections::BTreeMap;
use whistle_department_gateway::storage::{self, Migrator, TraceCache, assignment_trace};
use whistle_platform::config::DatabaseConfig;
use whistle_platform::db;

const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn a_read_trace_is_remembered_and_a_missing_one_is_not() {
    let folder = tempfile::tempdir().expect("folder");
    let url = format!(
        "sqlite://{}",
        folder.path().join("gateway.sqlite").display()
    );
    let database = db::connect(&DatabaseConfig::at(url, 1))
        .await
        .expect("database");
    db::migrate::<Migrator>(&database).await.expect("migrate");
    let cache = TraceCache::default();

    // not consumed yet: no trace, and nothing remembered
    assert_eq!(
        cache.traceparent(&database, "a-1").await.expect("read"),
        None
    );
    let traces = BTreeMap::from([("a-1".to_string(), TRACE.to_string())]);
    storage::remember_assignment_traces(&database, &traces)
        .await
        .expect("remember");
    assert_eq!(
        cache.traceparent(&database, "a-1").await.expect("read"),
        Some(TRACE.to_string()),
        "found once its notice was recorded"
    );

    // remembered: answered without the row
    assignment_trace::Entity::delete_by_id("a-1")
        .exec(&database)
        .await
        .expect("delete");
    assert_eq!(
        cache.traceparent(&database, "a-1").await.expect("read"),
        Some(TRACE.to_string())
    );
    // another cache (another replica) reads the database
    assert_eq!(
        TraceCache::default()
            .traceparent(&database, "a-1")
            .await
            .expect("read"),
        None
    );
    database.close().await.expect("close");
}
