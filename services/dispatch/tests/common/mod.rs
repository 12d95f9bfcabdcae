//! What several dispatch tests share.

use sea_orm::DatabaseConnection;
use whistle_dispatch::storage::Migrator;
use whistle_platform::config::DatabaseConfig;
use whistle_platform::db;
use whistle_platform::testing::TestBed;
use whistle_platform::validation::LimitsConfig;
use whistle_proto::types::Region;

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

/// A grid of the demo catalogue whose garbage-overflow route whistles three departments.
#[allow(dead_code)] // not every test binary uses every helper
pub const GRID: &str = "420303003001001";

/// The region of [`GRID`], as intake resolves it.
#[allow(dead_code)]
pub fn region() -> Region {
    Region {
        city_code: "420300".into(),
        district_code: "420303".into(),
        street_code: GRID[..9].into(),
        street_slug: "chechenglu".into(),
        community_code: GRID[..12].into(),
        grid_code: GRID.into(),
    }
}
