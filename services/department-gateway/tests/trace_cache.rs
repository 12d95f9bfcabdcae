//! The gateway remembers an assignment's case trace once read: the next actions on the assignment
//! cost no lookup, and an assignment with no trace yet is looked up again next time. On a SQLite
//! file, and remembering traces on SQLite and PostgreSQL.

use sea_orm::EntityTrait;
use std::collections::BTreeMap;
use whistle_department_gateway::storage::{self, Migrator, TraceCache, assignment_trace};
use whistle_platform::config::DatabaseConfig;
use whistle_platform::db;

const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The gateway's database on a SQLite file in `folder`.
async fn sqlite(folder: &tempfile::TempDir) -> sea_orm::DatabaseConnection {
    let url = format!(
        "sqlite://{}",
        folder.path().join("gateway.sqlite").display()
    );
    db::connect(&DatabaseConfig::at(url, 1))
        .await
        .expect("database")
}

#[tokio::test]
async fn a_read_trace_is_remembered_and_a_missing_one_is_not() {
    let folder = tempfile::tempdir().expect("folder");
    let database = sqlite(&folder).await;
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

const LATER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Remembering answers only the entries it wrote: an assignment remembered before keeps its first
/// trace, and is not answered (so the notice consumers never put a later trace in the cache).
async fn remembering_answers_only_new_entries(database: &sea_orm::DatabaseConnection) {
    db::migrate::<Migrator>(database).await.expect("migrate");
    let first = BTreeMap::from([("a-1".to_string(), TRACE.to_string())]);
    assert_eq!(
        storage::remember_assignment_traces(database, &first)
            .await
            .expect("remember"),
        vec![("a-1".to_string(), TRACE.to_string())]
    );
    // a-1 again with a later trace, and 70 new ones: more than one statement
    let mut later = BTreeMap::from([("a-1".to_string(), LATER.to_string())]);
    for index in 0..70 {
        later.insert(format!("b-{index:02}"), LATER.to_string());
    }
    let mut written = storage::remember_assignment_traces(database, &later)
        .await
        .expect("remember");
    written.sort();
    let expected: Vec<(String, String)> = (0..70)
        .map(|index| (format!("b-{index:02}"), LATER.to_string()))
        .collect();
    assert_eq!(written, expected);
    assert_eq!(
        storage::assignment_traceparent(database, "a-1")
            .await
            .expect("read"),
        Some(TRACE.to_string()),
        "the first trace is kept"
    );
    // nothing new: nothing answered
    assert!(
        storage::remember_assignment_traces(database, &first)
            .await
            .expect("remember")
            .is_empty()
    );
}

#[tokio::test]
async fn remembering_answers_only_new_entries_on_sqlite() {
    let folder = tempfile::tempdir().expect("folder");
    let database = sqlite(&folder).await;
    remembering_answers_only_new_entries(&database).await;
    database.close().await.expect("close");
}

#[tokio::test]
async fn remembering_answers_only_new_entries_on_postgres() {
    let postgres = whistle_platform::testing::TestPostgres::create().await;
    let database = db::connect(&DatabaseConfig::at(postgres.url.clone(), 2))
        .await
        .expect("database");
    remembering_answers_only_new_entries(&database).await;
    database.close().await.expect("close");
    postgres.drop_database().await;
}
