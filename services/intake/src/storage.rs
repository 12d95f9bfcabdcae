//! Intake's tables: reports, the cases they opened or joined (as intake knows them), evidence, the
//! street/community/grid registry with boundaries, and the category catalogue.

use sea_orm_migration::prelude::*;
use whistle_platform::db::migrations::create_column_indexes;

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
        pub recurrent: bool,
        /// JSON array of case ids.
        pub earlier_case_ids: String,
        /// The case a split report was merged into before; empty otherwise.
        pub split_from_case_id: String,
        pub media_url: String,
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

pub mod community {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "intake_communities")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub code: String,
        pub street_code: String,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Boundaries of streets, communities and grids (WKT, WGS-84, x = longitude).
pub mod boundary {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "intake_boundaries")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub code: String,
        /// `street`, `community` or `grid`.
        pub level: String,
        pub wkt: String,
        pub updated_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One row (`id` 1) counting registry changes, so every replica sees when to reload.
pub mod registry_version {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "intake_registry_version")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        pub version: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Cases as intake knows them: opened by a report, joined by merged ones, their state learned from
/// dispatch's `case.closed` / `case.rejected` / `case.reopened`.
pub mod case {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "intake_cases")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub case_id: String,
        pub category_code: String,
        pub street_code: String,
        pub community_code: String,
        /// The first report's WGS-84 position.
        pub lat: f64,
        pub lng: f64,
        pub opened_at_ms: i64,
        /// `whistle.intake.v1.CaseState` number.
        pub state: i32,
        /// When dispatch last changed the case (its state or its note); for a closed case, when it
        /// closed.
        pub state_changed_at_ms: i64,
        /// Why the state is what it is (a rejection's reason), for Open311's status_notes.
        pub state_note: String,
        pub report_count: i32,
        pub evidence_count: i32,
        pub recurrent: bool,
        pub first_report_id: String,
        /// The case version of dispatch's event that set `state` or `state_note` (0: none yet):
        /// an older event arriving later changes nothing. A note (accepted, escalated) comes only
        /// while dispatch has the case open, and is applied only to an open case, so a state
        /// older than a note it skips could only have left the case open.
        pub state_version: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Rows locked (`INSERT .. ON CONFLICT DO UPDATE`) before a report of a category looks for an open
/// duplicate, one per area around it (`merging::merge_areas`), so two reports that could join one
/// case decide one after the other.
pub mod merge_area {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "intake_merge_areas")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub category_code: String,
        /// `street:row:column` of a cell about as large as the merge distance.
        #[sea_orm(primary_key, auto_increment = false)]
        pub area: String,
        /// How many decisions took this lock; nothing reads it.
        pub decisions: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The merge locks of releases before `merge_area`: one per category and street, which made every
/// report of a category in a street wait for the one before. Kept (unused) for a replica of the
/// previous release during a rolling upgrade.
pub mod merge_lock {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "intake_merge_locks")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub category_code: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub street_code: String,
        pub decisions: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Photo references attached to a case after its report.
pub mod evidence {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "intake_evidence")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub request_id: String,
        /// SHA-256 of the request, to tell a retry from a reuse of the key.
        pub fingerprint: String,
        pub case_id: String,
        pub attached_by: String,
        pub by_community: bool,
        pub uri: String,
        pub sha256: String,
        pub media_type: String,
        pub size_bytes: i64,
        pub attached_at_ms: i64,
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
        whistle_platform::db::migrations::with_platform(vec![
            Box::new(CreateIntakeTables),
            Box::new(GeometryCasesEvidence),
            Box::new(ClosedCasesByPlace),
            Box::new(CaseStateVersion),
            Box::new(MergeAreas),
        ])
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

/// Boundaries, communities, the registry version, cases, merge locks, evidence, and the report
/// columns of merging, recurrence, splitting and media URLs. Reports stored before get a case row
/// each (open); intake's consumer then learns their real state from the stream's history.
#[derive(Debug)]
struct GeometryCasesEvidence;

impl MigrationName for GeometryCasesEvidence {
    fn name(&self) -> &str {
        "m20261201_000001_intake_geometry_cases_evidence"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for GeometryCasesEvidence {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use report::Column as R;
        use sea_orm_migration::schema::*;
        // SQLite alters one column per statement
        for column in [
            boolean(R::Recurrent).default(false).to_owned(),
            text(R::EarlierCaseIds).default("[]").to_owned(),
            string(R::SplitFromCaseId).default("").to_owned(),
            text(R::MediaUrl).default("").to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(report::Entity)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("intake_reports_received")
                    .table(report::Entity)
                    .col(R::ReceivedAtMs)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(community::Entity)
                    .if_not_exists()
                    .col(string(community::Column::Code).primary_key())
                    .col(string(community::Column::StreetCode))
                    .col(string(community::Column::Name))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(boundary::Entity)
                    .if_not_exists()
                    .col(string(boundary::Column::Code).primary_key())
                    .col(string(boundary::Column::Level))
                    .col(text(boundary::Column::Wkt))
                    .col(big_integer(boundary::Column::UpdatedAtMs))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(registry_version::Entity)
                    .if_not_exists()
                    .col(integer(registry_version::Column::Id).primary_key())
                    .col(big_integer(registry_version::Column::Version))
                    .to_owned(),
            )
            .await?;
        use case::Column as C;
        manager
            .create_table(
                Table::create()
                    .table(case::Entity)
                    .if_not_exists()
                    .col(string(C::CaseId).primary_key())
                    .col(string(C::CategoryCode))
                    .col(string(C::StreetCode))
                    .col(string(C::CommunityCode))
                    .col(double(C::Lat))
                    .col(double(C::Lng))
                    .col(big_integer(C::OpenedAtMs))
                    .col(integer(C::State))
                    .col(big_integer(C::StateChangedAtMs))
                    .col(text(C::StateNote))
                    .col(integer(C::ReportCount))
                    .col(integer(C::EvidenceCount))
                    .col(boolean(C::Recurrent))
                    .col(string(C::FirstReportId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("intake_cases_open")
                    .table(case::Entity)
                    .col(C::CategoryCode)
                    .col(C::StreetCode)
                    .col(C::State)
                    .col(C::OpenedAtMs)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("intake_cases_closed")
                    .table(case::Entity)
                    .col(C::CategoryCode)
                    .col(C::State)
                    .col(C::StateChangedAtMs)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(merge_lock::Entity)
                    .if_not_exists()
                    .col(string(merge_lock::Column::CategoryCode))
                    .col(string(merge_lock::Column::StreetCode))
                    .col(big_integer(merge_lock::Column::Decisions))
                    .primary_key(
                        Index::create()
                            .col(merge_lock::Column::CategoryCode)
                            .col(merge_lock::Column::StreetCode),
                    )
                    .to_owned(),
            )
            .await?;
        use evidence::Column as E;
        manager
            .create_table(
                Table::create()
                    .table(evidence::Entity)
                    .if_not_exists()
                    .col(big_pk_auto(E::Id))
                    .col(string(E::RequestId))
                    .col(string(E::Fingerprint))
                    .col(string(E::CaseId))
                    .col(string(E::AttachedBy))
                    .col(boolean(E::ByCommunity))
                    .col(text(E::Uri))
                    .col(string(E::Sha256))
                    .col(string(E::MediaType))
                    .col(big_integer(E::SizeBytes))
                    .col(big_integer(E::AttachedAtMs))
                    .to_owned(),
            )
            .await?;
        create_column_indexes(
            manager,
            evidence::Entity,
            [
                ("intake_evidence_case", E::CaseId),
                ("intake_evidence_request", E::RequestId),
            ],
        )
        .await?;
        // a case row for every report stored before (each report opened its case then)
        manager
            .get_connection()
            .execute_unprepared(
                "INSERT INTO intake_cases (case_id, category_code, street_code, community_code, lat, lng, \
                 opened_at_ms, state, state_changed_at_ms, state_note, report_count, evidence_count, \
                 recurrent, first_report_id) \
                 SELECT case_id, category_code, street_code, community_code, lat, lng, received_at_ms, 1, \
                 received_at_ms, '', 1, 0, false, report_id FROM intake_reports",
            )
            .await?;
        Ok(())
    }
}

/// Recurrence looks for earlier closed cases of the category around the report's place. The index
/// by closing time made that a scan of every case of the category closed in the look-back window
/// (100,000 preloaded cases: intake's CPU per report ×4); by latitude first, the search box
/// narrows it to the cases at about the same latitude, and the longitude and closing time are
/// checked in the index.
#[derive(Debug)]
struct ClosedCasesByPlace;

impl MigrationName for ClosedCasesByPlace {
    fn name(&self) -> &str {
        "m20261202_000001_intake_closed_cases_by_place"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for ClosedCasesByPlace {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use case::Column as C;
        manager
            .create_index(
                Index::create()
                    .name("intake_cases_closed_by_place")
                    .table(case::Entity)
                    .col(C::CategoryCode)
                    .col(C::State)
                    .col(C::Lat)
                    .col(C::Lng)
                    .col(C::StateChangedAtMs)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("intake_cases_closed_by_place")
                    .table(case::Entity)
                    .to_owned(),
            )
            .await
    }
}

/// The version of dispatch's event behind each case's state, so events applied out of order (a
/// close after a later reopen) leave the newest state.
#[derive(Debug)]
struct CaseStateVersion;

impl MigrationName for CaseStateVersion {
    fn name(&self) -> &str {
        "m20261204_000001_intake_case_state_version"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CaseStateVersion {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use sea_orm_migration::schema::big_integer;
        manager
            .alter_table(
                Table::alter()
                    .table(case::Entity)
                    .add_column(big_integer(case::Column::StateVersion).default(0))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(case::Entity)
                    .drop_column(case::Column::StateVersion)
                    .to_owned(),
            )
            .await
    }
}

/// Merge locks per area around a report instead of per street.
#[derive(Debug)]
struct MergeAreas;

impl MigrationName for MergeAreas {
    fn name(&self) -> &str {
        "m20261205_000001_intake_merge_areas"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for MergeAreas {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use sea_orm_migration::schema::{big_integer, string};
        manager
            .create_table(
                Table::create()
                    .table(merge_area::Entity)
                    .if_not_exists()
                    .col(string(merge_area::Column::CategoryCode))
                    .col(string(merge_area::Column::Area))
                    .col(big_integer(merge_area::Column::Decisions))
                    .primary_key(
                        Index::create()
                            .col(merge_area::Column::CategoryCode)
                            .col(merge_area::Column::Area),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(merge_area::Entity).to_owned())
            .await
    }
}
