//! `db::update_rows` sets many rows with a few statements and keeps each row's version check: a
//! row whose version moved on is left as it was and is not counted. `db::StatementBatch` runs
//! several statements in one call on SQLite and answers each one's count, with every value bound
//! to its own statement. On a real SQLite file and on PostgreSQL (a fresh database, dropped
//! afterwards).

use sea_orm::{
    ActiveValue::Set, ConnectionTrait, Database, DatabaseConnection, Statement, TransactionTrait,
    Value,
};
use whistle_platform::db::{self, StatementBatch, VersionedRow};

mod item {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "items")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub version: i64,
        pub n: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn item(id: &str, n: i64) -> item::ActiveModel {
    item::ActiveModel {
        id: Set(id.to_string()),
        version: Set(1),
        n: Set(n),
    }
}

async fn items(db: &impl ConnectionTrait) -> Vec<(String, i64, i64)> {
    let statement = Statement::from_string(
        db.get_database_backend(),
        "SELECT id, version, n FROM items ORDER BY id",
    );
    db.query_all_raw(statement)
        .await
        .expect("select")
        .iter()
        .map(|row| {
            (
                row.try_get("", "id").expect("id"),
                row.try_get("", "version").expect("version"),
                row.try_get("", "n").expect("n"),
            )
        })
        .collect()
}

/// Inserts (two statements), a delete with its own parameter, a version-checked update with a stale
/// row and an insert that skips a taken key, in one batch: each statement's count comes back in
/// order, and each value lands where its statement put it. A batch whose second statement fails
/// fails as a whole, and the transaction's rollback leaves nothing of it.
async fn batches_answer_each_statement(db: DatabaseConnection) {
    let backend = db.get_database_backend();
    db.execute_unprepared(
        "CREATE TABLE items (id TEXT PRIMARY KEY, version BIGINT NOT NULL, n BIGINT NOT NULL)",
    )
    .await
    .expect("table");
    let mut batch = StatementBatch::new(backend);
    let inserted = batch.extend(db::insert_statements(
        backend,
        (0..40).map(|index| item(&format!("item-{index:02}"), index)),
        None,
    ));
    assert_eq!(inserted, 0..2, "40 rows: statements of 32 and 8");
    let mut delete = String::from("DELETE FROM items WHERE n < ");
    db::push_placeholder(&mut delete, backend, 1);
    batch.extend([Statement::from_sql_and_values(
        backend,
        delete,
        [Value::from(5i64)],
    )]);
    let updates = (10..13)
        .map(|index: i64| VersionedRow {
            key: format!("item-{index:02}").into(),
            // item-11 is expected at a version it never had
            expected_version: if index == 11 { 7 } else { 1 },
            values: vec![Value::from(index * 100), Value::from(2i64)],
        })
        .collect();
    batch.extend(
        db::update_statements(
            backend,
            "items",
            "id",
            "version",
            &["n", "version"],
            updates,
        )
        .expect("statements"),
    );
    let skip_taken = sea_orm::sea_query::OnConflict::column(item::Column::Id)
        .do_nothing()
        .to_owned();
    batch.extend(db::insert_statements(
        backend,
        [item("item-39", -1), item("item-40", 4000)],
        Some(skip_taken),
    ));
    // the update of three rows is two statements (2 and 1)
    assert_eq!(batch.len(), 6);
    let transaction = db.begin().await.expect("begin");
    let counts = batch.run(&transaction).await.expect("batch");
    transaction.commit().await.expect("commit");
    assert_eq!(counts, vec![32, 8, 5, 1, 1, 1]);
    let after = items(&db).await;
    assert_eq!(after.len(), 36);
    assert_eq!(after[0], ("item-05".to_string(), 1, 5));
    assert_eq!(after[5], ("item-10".to_string(), 2, 1000));
    assert_eq!(after[6], ("item-11".to_string(), 1, 11));
    assert_eq!(after[7], ("item-12".to_string(), 2, 1200));
    assert_eq!(after[34], ("item-39".to_string(), 1, 39));
    assert_eq!(after[35], ("item-40".to_string(), 1, 4000));

    // a key taken twice: the batch fails, and rolling back keeps the first insert out too
    let mut failing = StatementBatch::new(backend);
    failing.extend(db::insert_statements(backend, [item("item-41", 41)], None));
    failing.extend(db::insert_statements(backend, [item("item-05", 5)], None));
    failing.extend(db::insert_statements(backend, [item("item-42", 42)], None));
    let transaction = db.begin().await.expect("begin");
    let refused = failing.run(&transaction).await;
    assert!(refused.is_err(), "{refused:?}");
    transaction.rollback().await.expect("rollback");
    assert_eq!(items(&db).await, after);
}

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
async fn sqlite_batches_answer_each_statement() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("items.sqlite").display()
    );
    batches_answer_each_statement(Database::connect(url).await.expect("sqlite")).await;
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
    batches_answer_each_statement(db.clone()).await;
    let _ = db.close().await;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .expect("drop database");
}
