//! `db::update_rows` sets many rows with a few statements and keeps each row's version check: a
//! row whose version moved on is left as it was and is not counted. On a real SQLite file and on
//! PostgreSQL (a fresh database, dropped afterwards).

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement, Value};
use whistle_platform::db::{self, VersionedRow};

/// More rows than one statement takes, so the update runs as several (256, 32, 8, 4).
const ROWS: i64 = 300;

async fn rows(db: &DatabaseConnection) -> Vec<(String, i64, String, bool, i64)> {
    let statement = Statement::from_string(
        db.get_database_backend(),
        "SELECT id, version, name, flag, n FROM things ORDER BY id",
    );
    db.query_all_raw(statement)
        .await
        .expect("select")
        .iter()
        .map(|row| {
            (
                row.try_get("", "id").expect("id"),
                row.try_get("", "version").expect("version"),
                row.try_get("", "name").expect("name"),
                row.try_get("", "flag").expect("flag"),
                row.try_get("", "n").expect("n"),
            )
        })
        .collect()
}

async fn updates_keep_the_version_check(db: DatabaseConnection) {
    db.execute_unprepared(
        "CREATE TABLE things (id TEXT PRIMARY KEY, version BIGINT NOT NULL, name TEXT NOT NULL, \
         flag BOOLEAN NOT NULL, n BIGINT NOT NULL)",
    )
    .await
    .expect("table");
    let values: Vec<String> = (0..ROWS)
        .map(|index| format!("('thing-{index:03}', 1, 'old', false, 0)"))
        .collect();
    db.execute_unprepared(&format!("INSERT INTO things VALUES {}", values.join(", ")))
        .await
        .expect("rows");

    // every seventh row is expected at a version it no longer has
    let stale = |index: i64| index % 7 == 3;
    let updates: Vec<VersionedRow> = (0..ROWS)
        .map(|index| VersionedRow {
            key: format!("thing-{index:03}").into(),
            expected_version: if stale(index) { 0 } else { 1 },
            values: vec![
                Value::from(format!("new {index}")),
                Value::from(true),
                Value::from(index * 1_000_000_007),
                Value::from(2i64),
            ],
        })
        .collect();
    let updated = db::update_rows(
        &db,
        "things",
        "id",
        "version",
        &["name", "flag", "n", "version"],
        updates,
    )
    .await
    .expect("update");
    let stale_count = (0..ROWS).filter(|index| stale(*index)).count() as u64;
    assert_eq!(updated, ROWS as u64 - stale_count);

    let after = rows(&db).await;
    assert_eq!(after.len(), ROWS as usize);
    for (index, (id, version, name, flag, n)) in after.into_iter().enumerate() {
        let index = index as i64;
        assert_eq!(id, format!("thing-{index:03}"));
        if stale(index) {
            assert_eq!(
                (version, name.as_str(), flag, n),
                (1, "old", false, 0),
                "{id}"
            );
        } else {
            assert_eq!(
                (version, name, flag, n),
                (2, format!("new {index}"), true, index * 1_000_000_007),
                "{id}"
            );
        }
    }

    // a row given the wrong number of values is refused before anything is written
    let refused = db::update_rows(
        &db,
        "things",
        "id",
        "version",
        &["name", "flag"],
        vec![VersionedRow {
            key: "thing-000".into(),
            expected_version: 2,
            values: vec![Value::from("x")],
        }],
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(rows(&db).await[0].2, "new 0");
}

#[tokio::test]
async fn sqlite_updates_rows_together_with_a_version_check_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("things.sqlite").display()
    );
    updates_keep_the_version_check(Database::connect(url).await.expect("sqlite")).await;
}

#[tokio::test]
async fn postgres_updates_rows_together_with_a_version_check_each() {
    // this crate's own tests do not have its `testing` helpers (TestPostgres): the same, inline
    let admin_url = std::env::var("WHISTLE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
    let admin = Database::connect(admin_url.as_str())
        .await
        .unwrap_or_else(|error| panic!("PostgreSQL at {admin_url} is required: {error}"));
    let name = format!("whistle_test_{}", uuid::Uuid::now_v7().simple());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let (base, _) = admin_url.rsplit_once('/').expect("a database in the URL");
    let db = Database::connect(format!("{base}/{name}"))
        .await
        .expect("postgres");
    updates_keep_the_version_check(db.clone()).await;
    let _ = db.close().await;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .expect("drop database");
}
