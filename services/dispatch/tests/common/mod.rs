//! What several dispatch tests share.

use sea_orm::DatabaseConnection;
use whistle_dispatch::storage::Migrator;
use whistle_platform::config::DatabaseConfig;
use whistle_platform::db;
use whistle_platform::testing::TestBed;
use whistle_platform::validation::LimitsConfig;

/// Dispatch's database at `url`, migrated, with the demo catalogue's routes and departments, so
/// reported cases are routed and whistled.
pub async fn routed_database(url: String, connections: u32) -> DatabaseConnection {
    let database = db::connect(&DatabaseConfig::at(url, connections))
        .await
        .expect("database");
    db::migrate::<Migrator>(&database).await.expect("migrate");
    whistle_dispatch::catalogue::load(
        &database,
        &TestBed::demo_catalogue(),
        &LimitsConfig::default(),
        0,
    )
    .await
    .expect("routes");
    database
}
