//! Intake's tables: reports, the street/grid registry and the category catalogue.

use sea_orm_migration::prelude::*;

pub mod report {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "intake_reports")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub report_id: String,
        #[sea_orm(unique)]
        pub request_id: String,
        /// SHA-256 of the request, to tell a retry from a reuse of the key.
        pub fingerprint: String,
        pub case_id: String,
        pub channel: i32,
        pub reporter_id: String,
        pub category_code: String,
        pub severity: i32,
        pub description: String,
        pub grid_code: String,
        pub lat: f64,
        pub lng: f64,
        pub address: String,
        /// JSON array of attachments.
        pub attachments: String,
        pub observed_at_ms: i64,
        pub received_at_ms: i64,
        pub city_code: String,
        pub district_code: String,
        pub street_code: String,
        pub street_slug: String,
        pub community_code: String,
        pub merged: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod street {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "intake_streets")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub code: String,
        pub slug: String,
        pub name: String,
        pub district_code: String,
        pub city_code: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod grid {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "intake_grids")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub code: String,
        pub community_code: String,
        pub street_code: String,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod category {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "intake_categories")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub code: String,
        /// `component` or `event`.
        pub kind: String,
        pub major_name: String,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Intake's migrations, oldest first.
#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        whistle_platform::db::migrations::with_platform(vec![Box::new(CreateIntakeTables)])
    }
}

#[derive(Debug)]
struct CreateIntakeTables;

impl MigrationName for CreateIntakeTables {
    fn name(&self) -> &str {
        "m20261128_000001_intake_tables"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateIntakeTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use report::Column as R;
        use sea_orm_migration::schema::*;
        manager
            .create_table(
                Table::create()
                    .table(report::Entity)
                    .if_not_exists()
                    .col(string(R::ReportId).primary_key())
                    .col(string(R::RequestId).unique_key())
                    .col(string(R::Fingerprint))
                    .col(string(R::CaseId))
                    .col(integer(R::Channel))
                    .col(string(R::ReporterId))
                    .col(string(R::CategoryCode))
                    .col(integer(R::Severity))
                    .col(text(R::Description))
                    .col(string(R::GridCode))
                    .col(double(R::Lat))
                    .col(double(R::Lng))
                    .col(text(R::Address))
                    .col(text(R::Attachments))
                    .col(big_integer(R::ObservedAtMs))
                    .col(big_integer(R::ReceivedAtMs))
                    .col(string(R::CityCode))
                    .col(string(R::DistrictCode))
                    .col(string(R::StreetCode))
                    .col(string(R::StreetSlug))
                    .col(string(R::CommunityCode))
                    .col(boolean(R::Merged))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("intake_reports_case")
                    .table(report::Entity)
                    .col(R::CaseId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(street::Entity)
                    .if_not_exists()
                    .col(string(street::Column::Code).primary_key())
                    .col(string(street::Column::Slug).unique_key())
                    .col(string(street::Column::Name))
                    .col(string(street::Column::DistrictCode))
                    .col(string(street::Column::CityCode))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(grid::Entity)
                    .if_not_exists()
                    .col(string(grid::Column::Code).primary_key())
                    .col(string(grid::Column::CommunityCode))
                    .col(string(grid::Column::StreetCode))
                    .col(string(grid::Column::Name))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(category::Entity)
                    .if_not_exists()
                    .col(string(category::Column::Code).primary_key())
                    .col(string(category::Column::Kind))
                    .col(string(category::Column::MajorName))
                    .col(string(category::Column::Name))
                    .to_owned(),
            )
            .await
    }
}
