//! Dispatch's tables: cases, assignments, timeline, routes and processed department actions.
//! Assignments keep their full state as JSON next to the columns that are queried.

use sea_orm_migration::prelude::*;

pub mod case {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "dispatch_cases")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub case_id: String,
        pub status: String,
        pub version: i64,
        pub city_code: String,
        pub district_code: String,
        pub street_code: String,
        pub street_slug: String,
        pub community_code: String,
        pub grid_code: String,
        pub category_code: String,
        pub severity: i32,
        pub channel: i32,
        pub report_id: String,
        pub description: String,
        pub lat: f64,
        pub lng: f64,
        pub address: String,
        /// The `CaseReported` payload as received (protobuf), for attachments and details.
        pub reported: Vec<u8>,
        pub reported_at_ms: i64,
        pub reject_reason: String,
        pub route_id: String,
        pub updated_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod assignment {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "dispatch_assignments")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub assignment_id: String,
        pub case_id: String,
        pub department_code: String,
        pub status: String,
        pub version: i64,
        pub whistled_at_ms: i64,
        pub acknowledge_by_ms: i64,
        pub on_site_by_ms: i64,
        pub resolve_by_ms: i64,
        /// `domain::Assignment` as JSON.
        pub state: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod timeline {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "dispatch_timeline")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub case_id: String,
        pub at_ms: i64,
        pub kind: String,
        pub actor: String,
        pub assignment_id: String,
        pub detail: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod route {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "dispatch_routes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub route_id: String,
        pub category_code: String,
        pub area_code: String,
        /// `domain::Route` as JSON.
        pub definition: String,
        pub version: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod action {
    use sea_orm::entity::prelude::*;

    /// A department action already recorded, keyed by the department and its own `action_id`:
    /// each department chooses its ids without seeing any other department's.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "dispatch_department_actions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub department_code: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub action_id: String,
        pub assignment_id: String,
        pub kind: String,
        pub at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Dispatch's migrations, oldest first.
#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        whistle_platform::db::migrations::with_platform(vec![
            Box::new(CreateDispatchTables),
            Box::new(ActionKeysPerDepartment),
        ])
    }
}

#[derive(Debug)]
struct CreateDispatchTables;

impl MigrationName for CreateDispatchTables {
    fn name(&self) -> &str {
        "m20261128_000001_dispatch_tables"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateDispatchTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use case::Column as C;
        use sea_orm_migration::schema::*;
        manager
            .create_table(
                Table::create()
                    .table(case::Entity)
                    .if_not_exists()
                    .col(string(C::CaseId).primary_key())
                    .col(string(C::Status))
                    .col(big_integer(C::Version))
                    .col(string(C::CityCode))
                    .col(string(C::DistrictCode))
                    .col(string(C::StreetCode))
                    .col(string(C::StreetSlug))
                    .col(string(C::CommunityCode))
                    .col(string(C::GridCode))
                    .col(string(C::CategoryCode))
                    .col(integer(C::Severity))
                    .col(integer(C::Channel))
                    .col(string(C::ReportId))
                    .col(text(C::Description))
                    .col(double(C::Lat))
                    .col(double(C::Lng))
                    .col(text(C::Address))
                    .col(blob(C::Reported))
                    .col(big_integer(C::ReportedAtMs))
                    .col(text(C::RejectReason))
                    .col(string(C::RouteId))
                    .col(big_integer(C::UpdatedAtMs))
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            ("dispatch_cases_status", C::Status),
            ("dispatch_cases_street", C::StreetSlug),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(case::Entity)
                        .col(column)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
        }
        use assignment::Column as A;
        manager
            .create_table(
                Table::create()
                    .table(assignment::Entity)
                    .if_not_exists()
                    .col(string(A::AssignmentId).primary_key())
                    .col(string(A::CaseId))
                    .col(string(A::DepartmentCode))
                    .col(string(A::Status))
                    .col(big_integer(A::Version))
                    .col(big_integer(A::WhistledAtMs))
                    .col(big_integer(A::AcknowledgeByMs))
                    .col(big_integer(A::OnSiteByMs))
                    .col(big_integer(A::ResolveByMs))
                    .col(text(A::State))
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            ("dispatch_assignments_case", A::CaseId),
            ("dispatch_assignments_department", A::DepartmentCode),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(assignment::Entity)
                        .col(column)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
        }
        use timeline::Column as T;
        manager
            .create_table(
                Table::create()
                    .table(timeline::Entity)
                    .if_not_exists()
                    .col(big_pk_auto(T::Id))
                    .col(string(T::CaseId))
                    .col(big_integer(T::AtMs))
                    .col(string(T::Kind))
                    .col(string(T::Actor))
                    .col(string(T::AssignmentId))
                    .col(text(T::Detail))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("dispatch_timeline_case")
                    .table(timeline::Entity)
                    .col(T::CaseId)
                    .col(T::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        use route::Column as R;
        manager
            .create_table(
                Table::create()
                    .table(route::Entity)
                    .if_not_exists()
                    .col(string(R::RouteId).primary_key())
                    .col(string(R::CategoryCode))
                    .col(string(R::AreaCode))
                    .col(text(R::Definition))
                    .col(big_integer(R::Version))
                    .to_owned(),
            )
            .await?;
        use action::Column as D;
        manager
            .create_table(
                Table::create()
                    .table(action::Entity)
                    .if_not_exists()
                    .col(string(D::ActionId).primary_key())
                    .col(string(D::AssignmentId))
                    .col(string(D::DepartmentCode))
                    .col(string(D::Kind))
                    .col(big_integer(D::AtMs))
                    .to_owned(),
            )
            .await
    }
}

/// Department actions are keyed by (department, action_id) instead of action_id alone. Neither
/// SQLite nor a portable statement changes a primary key in place, so the table is copied into
/// one with the new key, in one transaction on both backends.
#[derive(Debug)]
struct ActionKeysPerDepartment;

impl MigrationName for ActionKeysPerDepartment {
    fn name(&self) -> &str {
        "m20261201_000001_dispatch_action_keys_per_department"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for ActionKeysPerDepartment {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use action::Column as D;
        use sea_orm_migration::schema::*;
        let rekeyed = Alias::new("dispatch_department_actions_rekeyed");
        manager
            .create_table(
                Table::create()
                    .table(rekeyed.clone())
                    .col(string(D::DepartmentCode))
                    .col(string(D::ActionId))
                    .col(string(D::AssignmentId))
                    .col(string(D::Kind))
                    .col(big_integer(D::AtMs))
                    .primary_key(Index::create().col(D::DepartmentCode).col(D::ActionId))
                    .to_owned(),
            )
            .await?;
        let columns = [
            D::DepartmentCode,
            D::ActionId,
            D::AssignmentId,
            D::Kind,
            D::AtMs,
        ];
        let copy = Query::insert()
            .into_table(rekeyed.clone())
            .columns(columns)
            .select_from(
                Query::select()
                    .columns(columns)
                    .from(action::Entity)
                    .to_owned(),
            )
            .map_err(|error| DbErr::Migration(error.to_string()))?
            .to_owned();
        manager.exec_stmt(copy).await?;
        manager
            .drop_table(Table::drop().table(action::Entity).to_owned())
            .await?;
        manager
            .rename_table(Table::rename().table(rekeyed, action::Entity).to_owned())
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
