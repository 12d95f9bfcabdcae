//! The settings `db::connect` gives a SQLite connection, read back from a real file.

use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use whistle_platform::config::DatabaseConfig;
use whistle_platform::db;

async fn pragma(db: &DatabaseConnection, name: &str) -> String {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!("PRAGMA {name}"),
        ))
        .await
        .expect("pragma")
        .expect("a row");
    row.try_get_by_index::<i64>(0)
        .map(|value| value.to_string())
        .or_else(|_| row.try_get_by_index::<String>(0))
        .expect("a value")
}

#[tokio::test]
async fn the_writer_journals_in_wal_and_keeps_temporary_storage_in_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("service.sqlite").display());
    let db = db::connect(&DatabaseConfig::at(url, 1))
        .await
        .expect("connect");
    assert_eq!(pragma(&db, "journal_mode").await, "wal");
    // 1 = NORMAL
    assert_eq!(pragma(&db, "synchronous").await, "1");
    // 2 = MEMORY: statement journals of multi-row statements are not spilled to temporary files
    assert_eq!(pragma(&db, "temp_store").await, "2");
}
