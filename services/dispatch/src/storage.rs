//! Dispatch's tables and how the case aggregate is loaded and saved: cases, assignments, their
//! running clocks (indexed by due time, for the scanner), timeline, routes, the department registry,
//! fallback owners and processed department actions. Assignments keep their full state as JSON
//! next to the columns that are queried.

use crate::domain::{self, Assignment, Case, CaseStatus, Command, DeadlinePolicy, Emitted};
use crate::error::DispatchError;
use chrono::{DateTime, Utc};
use prost::Message;
use sea_orm::sea_query::{LockBehavior, LockType};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityName, EntityTrait, IdenStatic,
    IntoActiveModel, QueryFilter, QueryOrder, QuerySelect,
};
use sea_orm_migration::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use whistle_platform::clock::{from_millis, to_millis};
use whistle_platform::db::VersionedRow;
use whistle_platform::db::insert_rows;
use whistle_platform::db::migrations::create_column_indexes;
use whistle_platform::outbox;
use whistle_proto::events::CaseReported;
use whistle_proto::types::Region;

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
        /// `super::CaseState` as JSON: what the aggregate keeps beyond the columns (a deferral).
        pub state: String,
        /// A recurring problem (intake's `case.recurrent`), for `ListCases(recurrent_only)`.
        pub recurrent: bool,
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
        /// A clock of the assignment runs past its deadline (`ListCases(overdue_only)`).
        pub overdue: bool,
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

pub mod clock {
    use sea_orm::entity::prelude::*;

    /// A running clock with a step still to fire: the scanner's index. Rows follow the aggregate:
    /// they are rewritten whenever their assignment is saved, and a clock with nothing left to fire
    /// (met, stopped, paused, or escalated) has none.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "dispatch_clocks")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub assignment_id: String,
        /// `acknowledge`, `on_site` or `resolve`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub clock: String,
        pub case_id: String,
        pub department_code: String,
        /// `overdue` or `escalation`.
        pub step: String,
        pub due_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod department {
    use sea_orm::entity::prelude::*;

    /// A department of the registry, from the catalogue.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "dispatch_departments")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub code: String,
        /// `domain::Department` as JSON.
        pub definition: String,
        pub updated_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod pending {
    use sea_orm::entity::prelude::*;

    /// News from intake about a case dispatch has not opened yet (its `case.reported` is still
    /// to come): applied right after the case opens.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "dispatch_pending_news")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub case_id: String,
        /// The `whistle.events.v1.Event` as received (protobuf).
        pub event: Vec<u8>,
        pub received_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod fallback_owner {
    use sea_orm::entity::prelude::*;

    /// Who is whistled in an area when nobody the route names is responsible.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "dispatch_fallback_owners")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub area_code: String,
        pub department_code: String,
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
            Box::new(LifecycleTables),
            Box::new(RecurrentCases),
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
        create_column_indexes(
            manager,
            case::Entity,
            [
                ("dispatch_cases_status", C::Status),
                ("dispatch_cases_street", C::StreetSlug),
            ],
        )
        .await?;
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
        create_column_indexes(
            manager,
            assignment::Entity,
            [
                ("dispatch_assignments_case", A::CaseId),
                ("dispatch_assignments_department", A::DepartmentCode),
            ],
        )
        .await?;
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

/// Adds what the full lifecycle needs: the case's own state (a deferral), the assignments'
/// `overdue` column, the clocks the scanner reads, the department registry and the fallback owners.
/// Assignments stored before clocks existed get theirs from their deadlines and status
/// (`Assignment::upgrade`), with a row for each clock still to fire.
#[derive(Debug)]
struct LifecycleTables;

impl MigrationName for LifecycleTables {
    fn name(&self) -> &str {
        "m20261210_000001_dispatch_lifecycle"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for LifecycleTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use sea_orm_migration::schema::*;
        manager
            .alter_table(
                Table::alter()
                    .table(case::Entity)
                    .add_column(text(case::Column::State).default("{}"))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(assignment::Entity)
                    .add_column(boolean(assignment::Column::Overdue).default(false))
                    .to_owned(),
            )
            .await?;
        use clock::Column as K;
        manager
            .create_table(
                Table::create()
                    .table(clock::Entity)
                    .if_not_exists()
                    .col(string(K::AssignmentId))
                    .col(string(K::Clock))
                    .col(string(K::CaseId))
                    .col(string(K::DepartmentCode))
                    .col(string(K::Step))
                    .col(big_integer(K::DueAtMs))
                    .primary_key(Index::create().col(K::AssignmentId).col(K::Clock))
                    .to_owned(),
            )
            .await?;
        create_column_indexes(
            manager,
            clock::Entity,
            [
                ("dispatch_clocks_due", K::DueAtMs),
                ("dispatch_clocks_case", K::CaseId),
            ],
        )
        .await?;
        manager
            .create_table(
                Table::create()
                    .table(department::Entity)
                    .if_not_exists()
                    .col(string(department::Column::Code).primary_key())
                    .col(text(department::Column::Definition))
                    .col(big_integer(department::Column::UpdatedAtMs))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(fallback_owner::Entity)
                    .if_not_exists()
                    .col(string(fallback_owner::Column::AreaCode).primary_key())
                    .col(string(fallback_owner::Column::DepartmentCode))
                    .to_owned(),
            )
            .await?;
        // clocks for the assignments already stored
        let connection = manager.get_connection();
        for row in assignment::Entity::find().all(connection).await? {
            let mut assignment: Assignment = serde_json::from_str(&row.state).map_err(|error| {
                DbErr::Migration(format!("assignment {}: {error}", row.assignment_id))
            })?;
            assignment.upgrade();
            let state = serde_json::to_string(&assignment)
                .map_err(|error| DbErr::Migration(error.to_string()))?;
            assignment::Entity::update_many()
                .col_expr(assignment::Column::State, state.into())
                .filter(assignment::Column::AssignmentId.eq(row.assignment_id.as_str()))
                .exec(connection)
                .await?;
            let rows = clock_rows(&assignment);
            if !rows.is_empty() {
                clock::Entity::insert_many(rows)
                    .exec_without_returning(connection)
                    .await?;
            }
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

#[derive(Debug)]
struct RecurrentCases;

impl MigrationName for RecurrentCases {
    fn name(&self) -> &str {
        "m20261129_000001_dispatch_recurrent_cases"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for RecurrentCases {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use sea_orm_migration::schema::*;
        manager
            .alter_table(
                Table::alter()
                    .table(case::Entity)
                    .add_column(boolean(case::Column::Recurrent).default(false))
                    .to_owned(),
            )
            .await?;
        use pending::Column as P;
        manager
            .create_table(
                Table::create()
                    .table(pending::Entity)
                    .if_not_exists()
                    .col(string(P::EventId).primary_key())
                    .col(string(P::CaseId))
                    .col(blob(P::Event))
                    .col(big_integer(P::ReceivedAtMs))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("dispatch_pending_news_case")
                    .table(pending::Entity)
                    .col(P::CaseId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }
}

/// What a case keeps beyond its columns. Decodes from `{}` (rows written before it existed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CaseState {
    #[serde(default)]
    pub deferral: Option<domain::Deferral>,
    #[serde(default)]
    pub resolved_locally: bool,
    #[serde(default)]
    pub merged_reports: Vec<domain::CaseReport>,
    #[serde(default)]
    pub earlier_case_ids: Vec<String>,
    #[serde(default)]
    pub evidence: Vec<domain::Evidence>,
}

/// How a case is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// To look at.
    None,
    /// To change: the row stays locked until the transaction ends (PostgreSQL; SQLite has one
    /// writer), so concurrent changes of one case queue.
    ForUpdate,
    /// To change unless another transaction holds it (the scanner): `None` when it does.
    SkipLocked,
}

/// A timeline entry that no event of a case carries (news from intake).
#[derive(Debug, Clone)]
pub struct Note {
    pub at: DateTime<Utc>,
    pub kind: &'static str,
    pub actor: String,
    pub detail: String,
}

/// A case as stored: its row (place, category, description, the report) and its aggregate, with
/// what a change adds until it is saved.
#[derive(Debug)]
pub struct CaseRecord {
    pub row: case::Model,
    pub case: Case,
    original_version: Option<i64>,
    original_state: String,
    original_assignments: HashMap<String, u64>,
    /// The clock rows stored for each assignment when loaded (what [`clock_keys`] gave then), so a
    /// save writes only the rows that changed.
    original_clocks: HashMap<String, Vec<ClockRow>>,
    emitted: Vec<Emitted>,
    /// For each of `emitted`, the trace it was caused in when that is not the saving task's
    /// (an action written in a batch); `None`: the current span's when saved.
    traces: Vec<Option<String>>,
    /// Timeline entries no event carries, each with the number of events emitted before it.
    notes: Vec<(usize, timeline::ActiveModel)>,
    rewrite_clocks: bool,
}

impl CaseRecord {
    /// A new case from intake's `case.reported`, not saved yet.
    pub fn open(
        event: &whistle_proto::events::Event,
        reported: &CaseReported,
        now: DateTime<Utc>,
    ) -> Self {
        let region = event.region.clone().unwrap_or_default();
        let place = reported.place.clone().unwrap_or_default();
        let reported_at = event
            .occurred_at
            .as_ref()
            .and_then(whistle_platform::clock::from_proto_timestamp)
            .unwrap_or(now);
        let version = std::cmp::max(event.case_version, 1);
        let severity = crate::convert::severity_from_proto(reported.severity)
            .unwrap_or(domain::Severity::Routine);
        let row = case::Model {
            case_id: event.case_id.clone(),
            status: CaseStatus::Reported.as_str().to_string(),
            version: version as i64,
            city_code: region.city_code,
            district_code: region.district_code,
            street_code: region.street_code,
            street_slug: region.street_slug,
            community_code: region.community_code,
            grid_code: region.grid_code,
            category_code: reported.category_code.clone(),
            severity: reported.severity,
            channel: reported.channel,
            report_id: reported.report_id.clone(),
            description: reported.description.clone(),
            lat: place.lat,
            lng: place.lng,
            address: place.address,
            reported: reported.encode_to_vec(),
            reported_at_ms: to_millis(reported_at),
            reject_reason: String::new(),
            route_id: String::new(),
            updated_at_ms: to_millis(now),
            state: "{}".into(),
            recurrent: false,
        };
        let case = Case::reported(&event.case_id, version, severity, place.lat, place.lng);
        let note = timeline::ActiveModel {
            case_id: Set(event.case_id.clone()),
            at_ms: Set(to_millis(reported_at)),
            kind: Set("case.reported".into()),
            actor: Set(reported.reporter_id.clone()),
            assignment_id: Set(String::new()),
            detail: Set(reported.description.clone()),
            ..Default::default()
        };
        Self {
            row,
            case,
            original_version: None,
            original_state: String::new(),
            original_assignments: HashMap::new(),
            original_clocks: HashMap::new(),
            emitted: Vec::new(),
            traces: Vec::new(),
            notes: vec![(0, note)],
            rewrite_clocks: true,
        }
    }

    /// A stored case from its row and its assignments.
    pub fn stored(row: case::Model, assignments: Vec<Assignment>) -> Result<Self, DispatchError> {
        let state: CaseState = if row.state.trim().is_empty() {
            CaseState::default()
        } else {
            serde_json::from_str(&row.state).map_err(DispatchError::unexpected)?
        };
        let status = CaseStatus::parse(&row.status).ok_or_else(|| {
            DispatchError::unexpected(format!("case {} has status {:?}", row.case_id, row.status))
        })?;
        let case = Case {
            case_id: row.case_id.clone(),
            status,
            version: <u64 as TryFrom<i64>>::try_from(row.version).unwrap_or_default(),
            severity: crate::convert::severity_from_proto(row.severity)
                .unwrap_or(domain::Severity::Routine),
            lat: row.lat,
            lng: row.lng,
            reject_reason: row.reject_reason.clone(),
            deferral: state.deferral,
            resolved_locally: state.resolved_locally,
            assignments,
            merged_reports: state.merged_reports,
            earlier_case_ids: state.earlier_case_ids,
            recurrent: row.recurrent,
            evidence: state.evidence,
        };
        let deferred = case.deferral.is_some();
        Ok(Self {
            original_version: Some(row.version),
            original_state: row.state.clone(),
            original_assignments: case
                .assignments
                .iter()
                .map(|assignment| (assignment.assignment_id.clone(), assignment.version))
                .collect(),
            // a deferred case keeps no clock rows
            original_clocks: case
                .assignments
                .iter()
                .filter(|_| !deferred)
                .map(|assignment| (assignment.assignment_id.clone(), clock_keys(assignment)))
                .collect(),
            row,
            case,
            emitted: Vec::new(),
            traces: Vec::new(),
            notes: Vec::new(),
            rewrite_clocks: false,
        })
    }

    /// Runs a command on the aggregate at `now`; its events are saved with the case. Returns how
    /// many events it caused.
    pub fn execute(
        &mut self,
        command: Command,
        now: DateTime<Utc>,
        policy: &dyn DeadlinePolicy,
    ) -> Result<usize, domain::CaseError> {
        let events = self.case.execute(command, now, policy)?;
        let count = events.len();
        self.emitted.extend(events);
        self.traces.resize(self.emitted.len(), None);
        Ok(count)
    }

    /// [`Self::execute`], for a command received in the span `traceparent` names: its events
    /// carry that trace, whichever task saves them.
    pub fn execute_in_trace(
        &mut self,
        command: Command,
        now: DateTime<Utc>,
        policy: &dyn DeadlinePolicy,
        traceparent: Option<&str>,
    ) -> Result<usize, domain::CaseError> {
        let count = self.execute(command, now, policy)?;
        if let Some(traceparent) = traceparent {
            let from = self.emitted.len() - count;
            for trace in &mut self.traces[from..] {
                *trace = Some(traceparent.to_string());
            }
        }
        Ok(count)
    }

    /// [`Self::execute_in_trace`], with a timeline entry that no event of the case carries (news
    /// from intake) placed before the command's events. Refused, neither is kept.
    pub fn execute_noted(
        &mut self,
        command: Command,
        now: DateTime<Utc>,
        policy: &dyn DeadlinePolicy,
        traceparent: Option<&str>,
        note: Option<Note>,
    ) -> Result<usize, domain::CaseError> {
        let before = self.emitted.len();
        let count = self.execute_in_trace(command, now, policy, traceparent)?;
        if let Some(note) = note {
            self.notes.push((
                before,
                timeline::ActiveModel {
                    case_id: Set(self.row.case_id.clone()),
                    at_ms: Set(to_millis(note.at)),
                    kind: Set(note.kind.to_string()),
                    actor: Set(note.actor),
                    assignment_id: Set(String::new()),
                    detail: Set(note.detail),
                    ..Default::default()
                },
            ));
        }
        Ok(count)
    }

    /// Whether every event of this change can be published: each has a NATS subject (its region's
    /// and departments' codes make valid subject tokens). What saving would refuse is refused
    /// before the case joins a batch that saves later, so one bad event cannot fail the batch.
    pub fn check_publishable(&self) -> Result<(), DispatchError> {
        for emitted in &self.emitted {
            whistle_platform::envelope::subject(&crate::events::to_event(self, emitted))
                .map_err(DispatchError::unexpected)?;
        }
        Ok(())
    }

    /// The events of this change, oldest first.
    pub fn emitted(&self) -> &[Emitted] {
        &self.emitted
    }

    /// Takes the events emitted so far (they are then not saved with the case): for playing a case
    /// in memory, as the start-up limits check does.
    pub fn take_emitted(&mut self) -> Vec<Emitted> {
        self.traces.clear();
        std::mem::take(&mut self.emitted)
    }

    /// Rewrites every clock row of the case when saved (the scanner makes sure stale rows go).
    pub fn rewrite_clocks(&mut self) {
        self.rewrite_clocks = true;
    }

    pub fn region(&self) -> Region {
        Region {
            city_code: self.row.city_code.clone(),
            district_code: self.row.district_code.clone(),
            street_code: self.row.street_code.clone(),
            street_slug: self.row.street_slug.clone(),
            community_code: self.row.community_code.clone(),
            grid_code: self.row.grid_code.clone(),
        }
    }

    /// The report as intake published it (attachments, place).
    pub fn reported(&self) -> CaseReported {
        CaseReported::decode(self.row.reported.as_slice()).unwrap_or_default()
    }
}

/// Loads a case and its assignments.
pub async fn load<C: ConnectionTrait>(
    connection: &C,
    case_id: &str,
    lock: Lock,
) -> Result<Option<CaseRecord>, DispatchError> {
    load_where(connection, case::Column::CaseId.eq(case_id), lock).await
}

/// Loads the case an assignment belongs to, with all its assignments: the case is found through
/// the assignment inside the first statement, not by a lookup of the assignment before it.
pub async fn load_by_assignment<C: ConnectionTrait>(
    connection: &C,
    assignment_id: &str,
    lock: Lock,
) -> Result<Option<CaseRecord>, DispatchError> {
    let case_of_assignment = Query::select()
        .column(assignment::Column::CaseId)
        .from(assignment::Entity)
        .and_where(assignment::Column::AssignmentId.eq(assignment_id))
        .to_owned();
    load_where(
        connection,
        case::Column::CaseId.in_subquery(case_of_assignment),
        lock,
    )
    .await
}

/// Loads the one case `condition` selects.
async fn load_where<C: ConnectionTrait>(
    connection: &C,
    condition: sea_orm::sea_query::SimpleExpr,
    lock: Lock,
) -> Result<Option<CaseRecord>, DispatchError> {
    Ok(load_all_where(connection, condition, lock).await?.pop())
}

/// Loads, locked in the order of their ids, every case an assignment of `assignment_ids` belongs
/// to, each with all its assignments, in two statements (three past 256 cases). Locking in one
/// global order keeps two batches that lock overlapping cases from waiting on each other in a
/// cycle.
pub async fn load_by_assignments<C: ConnectionTrait>(
    connection: &C,
    assignment_ids: &[String],
    lock: Lock,
) -> Result<Vec<CaseRecord>, DispatchError> {
    let mut records = Vec::new();
    for ids in whistle_platform::db::in_lists(assignment_ids) {
        let cases_of_assignments = Query::select()
            .column(assignment::Column::CaseId)
            .from(assignment::Entity)
            .and_where(assignment::Column::AssignmentId.is_in(ids))
            .to_owned();
        records.extend(
            load_all_where(
                connection,
                case::Column::CaseId.in_subquery(cases_of_assignments),
                lock,
            )
            .await?,
        );
    }
    Ok(records)
}

/// Loads every case `condition` selects, in the order of their ids, with their assignments.
async fn load_all_where<C: ConnectionTrait>(
    connection: &C,
    condition: sea_orm::sea_query::SimpleExpr,
    lock: Lock,
) -> Result<Vec<CaseRecord>, DispatchError> {
    let mut query = case::Entity::find()
        .filter(condition)
        .order_by_asc(case::Column::CaseId);
    // sea-query writes no lock clause for SQLite, which has a single writer anyway
    if whistle_platform::db::is_postgres(connection) {
        query = match lock {
            Lock::None => query,
            Lock::ForUpdate => query.lock_exclusive(),
            Lock::SkipLocked => {
                query.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
            }
        };
    }
    let rows = query.all(connection).await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let case_ids: Vec<&str> = rows.iter().map(|row| row.case_id.as_str()).collect();
    let mut assignments: HashMap<String, Vec<Assignment>> = HashMap::new();
    for ids in whistle_platform::db::in_lists(&case_ids) {
        let stored = assignment::Entity::find()
            .filter(assignment::Column::CaseId.is_in(ids))
            .order_by_asc(assignment::Column::WhistledAtMs)
            .order_by_asc(assignment::Column::AssignmentId)
            .all(connection)
            .await?;
        for row in &stored {
            assignments
                .entry(row.case_id.clone())
                .or_default()
                .push(decode_assignment(row)?);
        }
    }
    rows.into_iter()
        .map(|row| {
            let of_case = assignments.remove(&row.case_id).unwrap_or_default();
            CaseRecord::stored(row, of_case)
        })
        .collect()
}

/// The actions already recorded under these (department, `action_id`) pairs, in one statement
/// per 64 of them. Each pair is matched whole (`(d = … AND a = …) OR …`), so both databases look
/// each one up in the primary key: a list of departments and a list of ids would match every
/// action of those departments in the index and filter them, a cost growing with the history.
pub async fn recorded_actions<C: ConnectionTrait>(
    connection: &C,
    keys: &[(String, String)],
) -> Result<HashMap<(String, String), action::Model>, DispatchError> {
    let mut recorded = HashMap::new();
    for chunk in keys.chunks(64) {
        // padded like an IN list, so a few statement texts stay prepared
        let mut any = Condition::any();
        for (department_code, action_id) in whistle_platform::db::in_lists(chunk).flatten() {
            any = any.add(
                Condition::all()
                    .add(action::Column::DepartmentCode.eq(department_code))
                    .add(action::Column::ActionId.eq(action_id)),
            );
        }
        for row in action::Entity::find().filter(any).all(connection).await? {
            recorded.insert((row.department_code.clone(), row.action_id.clone()), row);
        }
    }
    Ok(recorded)
}

/// An assignment from its row, upgraded when it was stored before clocks were kept.
pub fn decode_assignment(row: &assignment::Model) -> Result<Assignment, DispatchError> {
    let mut assignment: Assignment = serde_json::from_str(&row.state).map_err(|error| {
        DispatchError::unexpected(format!(
            "assignment {} does not decode: {error}",
            row.assignment_id
        ))
    })?;
    assignment.upgrade();
    Ok(assignment)
}

/// A clock row's own part: the clock, its next step and when that step is due.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClockRow {
    clock: &'static str,
    step: &'static str,
    due_at_ms: i64,
}

/// The scanner's rows for an assignment: one per clock with a step still to fire.
fn clock_keys(assignment: &Assignment) -> Vec<ClockRow> {
    if !assignment.status.is_open() {
        return Vec::new();
    }
    assignment
        .pending_steps()
        .into_iter()
        .map(|(kind, step, due)| ClockRow {
            clock: kind.as_str(),
            step: step.as_str(),
            due_at_ms: to_millis(due),
        })
        .collect()
}

fn clock_row(assignment: &Assignment, row: &ClockRow) -> clock::ActiveModel {
    clock::ActiveModel {
        assignment_id: Set(assignment.assignment_id.clone()),
        clock: Set(row.clock.to_string()),
        case_id: Set(assignment.case_id.clone()),
        department_code: Set(assignment.department_code.clone()),
        step: Set(row.step.to_string()),
        due_at_ms: Set(row.due_at_ms),
    }
}

fn clock_rows(assignment: &Assignment) -> Vec<clock::ActiveModel> {
    clock_keys(assignment)
        .iter()
        .map(|row| clock_row(assignment, row))
        .collect()
}

/// Saves a changed case: see [`save_all`].
pub async fn save<C: ConnectionTrait>(
    connection: &C,
    record: CaseRecord,
    now: DateTime<Utc>,
) -> Result<(), DispatchError> {
    save_all(connection, vec![record], now).await
}

/// The columns a command can change on a case row.
fn case_updates() -> [&'static str; 7] {
    use case::Column as C;
    [
        C::Status,
        C::Version,
        C::RejectReason,
        C::RouteId,
        C::UpdatedAtMs,
        C::State,
        C::Recurrent,
    ]
    .map(|column| column.as_str())
}

/// The columns of an assignment row, but its key.
fn assignment_updates() -> [&'static str; 10] {
    use assignment::Column as C;
    [
        C::CaseId,
        C::DepartmentCode,
        C::Status,
        C::Version,
        C::WhistledAtMs,
        C::AcknowledgeByMs,
        C::OnSiteByMs,
        C::ResolveByMs,
        C::State,
        C::Overdue,
    ]
    .map(|column| column.as_str())
}

/// Updates version-checked rows of `table`; a row changed meanwhile fails the save as a conflict.
async fn update_checked<C: ConnectionTrait>(
    connection: &C,
    table: &str,
    key: &str,
    columns: &[&str],
    rows: Vec<VersionedRow>,
) -> Result<(), DispatchError> {
    if rows.is_empty() {
        return Ok(());
    }
    let count = rows.len();
    let only = (count == 1).then(|| match &rows[0].key {
        sea_orm::Value::String(Some(key)) => key.clone(),
        key => format!("{key:?}"),
    });
    let updated =
        whistle_platform::db::update_rows(connection, table, key, "version", columns, rows).await?;
    if updated as usize != count {
        return Err(DispatchError::Conflict(match only {
            Some(key) => format!("{table} {key}"),
            None => format!("{} of {count} rows of {table}", count - updated as usize),
        }));
    }
    Ok(())
}

/// What saving a batch of cases writes.
#[derive(Default)]
struct Writes {
    /// Cases whose clock rows are all rewritten.
    rewritten: Vec<String>,
    /// Cases opened.
    new_cases: Vec<case::ActiveModel>,
    /// Cases changed, in the columns of [`case_updates`].
    case_updates: Vec<VersionedRow>,
    /// Assignments changed, in the columns of [`assignment_updates`].
    assignment_updates: Vec<VersionedRow>,
    /// Clock rows gone, as (assignment, its clocks).
    gone: Vec<(String, Vec<&'static str>)>,
    clocks: Vec<clock::ActiveModel>,
    new_assignments: Vec<assignment::ActiveModel>,
    notes: Vec<timeline::ActiveModel>,
    /// Each with the trace it was caused in.
    events: Vec<(whistle_proto::events::Event, Option<String>)>,
}

/// Saves changed cases: each version-checked, so a concurrent change makes this fail with
/// Conflict; their changed assignments, their clock rows, the timeline and the events (outbox),
/// all in the caller's transaction. Each write is a few statements for all the cases together:
/// case and assignment updates (`UPDATE … FROM (VALUES …)`, the version checked per row), clock
/// deletions, and the inserts (cases, assignments, clocks, timeline, outbox).
pub async fn save_all<C: ConnectionTrait>(
    connection: &C,
    records: Vec<CaseRecord>,
    now: DateTime<Utc>,
) -> Result<(), DispatchError> {
    let now_ms = to_millis(now);
    let mut writes = Writes::default();
    for record in records {
        save_rows(record, now_ms, &mut writes)?;
    }
    update_checked(
        connection,
        case::Entity.table_name(),
        case::Column::CaseId.as_str(),
        &case_updates(),
        writes.case_updates,
    )
    .await?;
    update_checked(
        connection,
        assignment::Entity.table_name(),
        assignment::Column::AssignmentId.as_str(),
        &assignment_updates(),
        writes.assignment_updates,
    )
    .await?;
    if !writes.rewritten.is_empty() {
        for case_ids in whistle_platform::db::in_lists(&writes.rewritten) {
            clock::Entity::delete_many()
                .filter(clock::Column::CaseId.is_in(case_ids))
                .exec(connection)
                .await?;
        }
    }
    for gone in writes.gone.chunks(64) {
        let mut any = Condition::any();
        for (assignment_id, clocks) in gone {
            any = any.add(
                Condition::all()
                    .add(clock::Column::AssignmentId.eq(assignment_id.as_str()))
                    .add(clock::Column::Clock.is_in(clocks.iter().copied())),
            );
        }
        clock::Entity::delete_many()
            .filter(any)
            .exec(connection)
            .await?;
    }
    insert_rows(connection, writes.new_cases, None).await?;
    insert_rows(connection, writes.new_assignments, None).await?;
    insert_rows(connection, writes.clocks, None).await?;
    insert_rows(connection, writes.notes, None).await?;
    let outbox_events = writes
        .events
        .into_iter()
        .map(|(event, trace)| whistle_platform::envelope::to_outbox_in_trace(&event, trace))
        .collect::<Result<Vec<_>, _>>()
        .map_err(DispatchError::unexpected)?;
    if !outbox_events.is_empty() {
        outbox::enqueue_many(connection, outbox_events, now_ms).await?;
    }
    Ok(())
}

/// Gathers what saving one case writes into `writes`: its row and changed assignments
/// (version-checked), their clock rows, timeline and events.
fn save_rows(
    mut record: CaseRecord,
    now_ms: i64,
    writes: &mut Writes,
) -> Result<(), DispatchError> {
    let case = &record.case;
    record.row.status = case.status.as_str().to_string();
    record.row.version = case.version as i64;
    record.row.reject_reason = case.reject_reason.clone();
    record.row.state = serde_json::to_string(&CaseState {
        deferral: case.deferral.clone(),
        resolved_locally: case.resolved_locally,
        merged_reports: case.merged_reports.clone(),
        earlier_case_ids: case.earlier_case_ids.clone(),
        evidence: case.evidence.clone(),
    })
    .map_err(DispatchError::unexpected)?;
    let recurrent_changed = record.row.recurrent != case.recurrent;
    record.row.recurrent = case.recurrent;
    let row_changed = record.original_version != Some(record.row.version)
        || record.original_state != record.row.state
        || recurrent_changed;
    if row_changed {
        record.row.updated_at_ms = now_ms;
    }
    match record.original_version {
        // new cases are inserted together, below
        None => writes
            .new_cases
            .push(record.row.clone().into_active_model()),
        // only what a command can change (`case_updates`): the report (its blob, text, place) stays
        // as written
        Some(original) if row_changed => writes.case_updates.push(VersionedRow {
            key: record.row.case_id.clone().into(),
            expected_version: original,
            values: vec![
                record.row.status.clone().into(),
                record.row.version.into(),
                record.row.reject_reason.clone().into(),
                record.row.route_id.clone().into(),
                record.row.updated_at_ms.into(),
                record.row.state.clone().into(),
                record.row.recurrent.into(),
            ],
        }),
        Some(_) => {}
    }
    if record.rewrite_clocks && record.original_version.is_some() {
        writes.rewritten.push(record.row.case_id.clone());
    }
    let deferred = record.case.deferral.is_some();
    let mut clocks = Vec::new();
    let mut new_assignments = Vec::new();
    for assignment in &record.case.assignments {
        let original = record
            .original_assignments
            .get(&assignment.assignment_id)
            .copied();
        let changed = original != Some(assignment.version);
        if record.rewrite_clocks {
            clocks.extend(clock_rows(assignment));
        } else if changed {
            // only the rows that differ: an acknowledgement deletes its clock's row and inserts
            // nothing; a change that moves no clock writes none
            let now_rows = if deferred {
                Vec::new()
            } else {
                clock_keys(assignment)
            };
            let stored = record
                .original_clocks
                .get(&assignment.assignment_id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let gone: Vec<&str> = stored
                .iter()
                .filter(|row| !now_rows.contains(row))
                .map(|row| row.clock)
                .collect();
            if !gone.is_empty() {
                writes.gone.push((assignment.assignment_id.clone(), gone));
            }
            clocks.extend(
                now_rows
                    .iter()
                    .filter(|row| !stored.contains(row))
                    .map(|row| clock_row(assignment, row)),
            );
        }
        if !changed {
            continue;
        }
        let row = assignment::Model {
            assignment_id: assignment.assignment_id.clone(),
            case_id: assignment.case_id.clone(),
            department_code: assignment.department_code.clone(),
            status: assignment.status.as_str().to_string(),
            version: assignment.version as i64,
            whistled_at_ms: to_millis(assignment.whistled_at),
            acknowledge_by_ms: to_millis(assignment.acknowledge_by),
            on_site_by_ms: to_millis(assignment.on_site_by),
            resolve_by_ms: to_millis(assignment.resolve_by),
            state: serde_json::to_string(assignment).map_err(DispatchError::unexpected)?,
            overdue: assignment.is_overdue(),
        };
        match original {
            // a whistle's new assignments are inserted together, below
            None => new_assignments.push(row.into_active_model()),
            // every column but the key (`assignment_updates`)
            Some(original) => writes.assignment_updates.push(VersionedRow {
                key: row.assignment_id.into(),
                expected_version: original as i64,
                values: vec![
                    row.case_id.into(),
                    row.department_code.into(),
                    row.status.into(),
                    row.version.into(),
                    row.whistled_at_ms.into(),
                    row.acknowledge_by_ms.into(),
                    row.on_site_by_ms.into(),
                    row.resolve_by_ms.into(),
                    row.state.into(),
                    row.overdue.into(),
                ],
            }),
        }
    }
    writes.new_assignments.extend(new_assignments);
    if record.case.deferral.is_some() {
        clocks.clear();
    }
    writes.clocks.extend(clocks);
    // each note goes before the events emitted after it was taken
    let mut taken = std::mem::take(&mut record.notes).into_iter().peekable();
    let mut notes = Vec::with_capacity(taken.len() + record.emitted.len());
    let mut events = Vec::with_capacity(record.emitted.len());
    for (index, (emitted, trace)) in record.emitted.iter().zip(&record.traces).enumerate() {
        while let Some((_, note)) = taken.next_if(|(before, _)| *before <= index) {
            notes.push(note);
        }
        let event = crate::events::to_event(&record, emitted);
        let kind = event
            .payload
            .as_ref()
            .map(|payload| whistle_platform::envelope::kind(payload).label())
            .unwrap_or_default();
        notes.push(timeline::ActiveModel {
            case_id: Set(record.row.case_id.clone()),
            at_ms: Set(to_millis(emitted.at)),
            kind: Set(kind),
            actor: Set(emitted.actor.clone()),
            assignment_id: Set(emitted
                .event
                .assignment()
                .map(|assignment| assignment.assignment_id.clone())
                .unwrap_or_default()),
            detail: Set(crate::events::timeline_detail(&emitted.event)),
            ..Default::default()
        });
        let trace = trace
            .clone()
            .or_else(whistle_platform::telemetry::current_traceparent);
        events.push((event, trace));
    }
    notes.extend(taken.map(|(_, note)| note));
    writes.notes.extend(notes);
    writes.events.extend(events);
    Ok(())
}

/// A case's clock rows as (assignment, clock, step, due at): those stored, and those its
/// aggregate gives now. Equal, except for a row gone stale, which the scanner replaces when it
/// comes due; for tests that hold the rows to the aggregate.
pub type ClockRowKey = (String, String, String, i64);

pub async fn clock_rows_of<C: ConnectionTrait>(
    connection: &C,
    case_id: &str,
) -> Result<
    (
        std::collections::BTreeSet<ClockRowKey>,
        std::collections::BTreeSet<ClockRowKey>,
    ),
    DispatchError,
> {
    let stored = clock::Entity::find()
        .filter(clock::Column::CaseId.eq(case_id))
        .all(connection)
        .await?
        .into_iter()
        .map(|row| (row.assignment_id, row.clock, row.step, row.due_at_ms))
        .collect();
    let mut expected = std::collections::BTreeSet::new();
    if let Some(record) = load(connection, case_id, Lock::None).await?
        && record.case.deferral.is_none()
    {
        for assignment in &record.case.assignments {
            for row in clock_keys(assignment) {
                expected.insert((
                    assignment.assignment_id.clone(),
                    row.clock.to_string(),
                    row.step.to_string(),
                    row.due_at_ms,
                ));
            }
        }
    }
    Ok((stored, expected))
}

/// Clock rows due at `now`, earliest first, at most `limit`: on PostgreSQL claimed with
/// `FOR UPDATE SKIP LOCKED`, so replicas scanning at once take different rows.
pub async fn claim_due_clocks<C: ConnectionTrait>(
    connection: &C,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<clock::Model>, DispatchError> {
    let mut query = clock::Entity::find()
        .filter(clock::Column::DueAtMs.lte(to_millis(now)))
        .order_by_asc(clock::Column::DueAtMs)
        .order_by_asc(clock::Column::AssignmentId)
        .limit(limit);
    if whistle_platform::db::is_postgres(connection) {
        query = query.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
    }
    Ok(query.all(connection).await?)
}

/// The earliest time a stored clock is due, if any.
pub async fn next_clock_due<C: ConnectionTrait>(
    connection: &C,
) -> Result<Option<DateTime<Utc>>, DispatchError> {
    Ok(clock::Entity::find()
        .order_by_asc(clock::Column::DueAtMs)
        .one(connection)
        .await?
        .map(|row| from_millis(row.due_at_ms)))
}

/// Every department of the registry.
pub async fn departments<C: ConnectionTrait>(
    connection: &C,
) -> Result<Vec<domain::Department>, DispatchError> {
    department::Entity::find()
        .order_by_asc(department::Column::Code)
        .all(connection)
        .await?
        .iter()
        .map(|row| {
            serde_json::from_str::<domain::Department>(&row.definition)
                .map_err(DispatchError::unexpected)
        })
        .collect()
}

/// Every fallback owner.
pub async fn fallback_owners<C: ConnectionTrait>(
    connection: &C,
) -> Result<Vec<domain::FallbackOwner>, DispatchError> {
    Ok(fallback_owner::Entity::find()
        .all(connection)
        .await?
        .into_iter()
        .map(|row| domain::FallbackOwner {
            area_code: row.area_code,
            department_code: row.department_code,
        })
        .collect())
}

/// One route, if it exists.
pub async fn route_by_id<C: ConnectionTrait>(
    connection: &C,
    route_id: &str,
) -> Result<Option<domain::Route>, DispatchError> {
    route::Entity::find_by_id(route_id)
        .one(connection)
        .await?
        .map(|row| {
            serde_json::from_str::<domain::Route>(&row.definition)
                .map_err(DispatchError::unexpected)
        })
        .transpose()
}

/// Routes of one category, parsed.
pub async fn routes_for_category<C: ConnectionTrait>(
    connection: &C,
    category_code: &str,
) -> Result<Vec<domain::Route>, DispatchError> {
    route::Entity::find()
        .filter(route::Column::CategoryCode.eq(category_code))
        .all(connection)
        .await?
        .iter()
        .map(|row| {
            serde_json::from_str::<domain::Route>(&row.definition)
                .map_err(DispatchError::unexpected)
        })
        .collect()
}

/// Which of `case_ids` are open (stored), one statement per 256 of them.
pub async fn open_cases<C: ConnectionTrait>(
    connection: &C,
    case_ids: &[&str],
) -> Result<HashSet<String>, DispatchError> {
    case_ids_among::<case::Entity, C>(connection, case::Column::CaseId, case_ids).await
}

/// Which of `case_ids` have news from intake kept pending, one statement per 256 of them.
pub async fn cases_with_pending_news<C: ConnectionTrait>(
    connection: &C,
    case_ids: &[&str],
) -> Result<HashSet<String>, DispatchError> {
    case_ids_among::<pending::Entity, C>(connection, pending::Column::CaseId, case_ids).await
}

/// Which of `case_ids` have a row in `E`, whose case id is `column`.
async fn case_ids_among<E: EntityTrait, C: ConnectionTrait>(
    connection: &C,
    column: E::Column,
    case_ids: &[&str],
) -> Result<HashSet<String>, DispatchError> {
    let mut found = HashSet::new();
    for case_ids in whistle_platform::db::in_lists(case_ids) {
        found.extend(
            E::find()
                .select_only()
                .column(column)
                .filter(column.is_in(case_ids))
                .into_tuple::<String>()
                .all(connection)
                .await?,
        );
    }
    Ok(found)
}

/// Open cases that have news kept pending (up to `limit`): news that arrived while another
/// replica was opening its case, so that neither saw the other.
pub async fn cases_with_stranded_news<C: ConnectionTrait>(
    connection: &C,
    limit: u64,
) -> Result<Vec<String>, DispatchError> {
    let statement = sea_orm::Statement::from_sql_and_values(
        connection.get_database_backend(),
        format!(
            "SELECT DISTINCT p.case_id FROM {pending} p WHERE EXISTS \
             (SELECT 1 FROM {cases} c WHERE c.case_id = p.case_id) ORDER BY p.case_id LIMIT $1",
            pending = pending::Entity.table_name(),
            cases = case::Entity.table_name(),
        ),
        [sea_orm::Value::from(limit as i64)],
    );
    connection
        .query_all_raw(statement)
        .await?
        .iter()
        .map(|row| {
            row.try_get::<String>("", "case_id")
                .map_err(DispatchError::from)
        })
        .collect()
}

/// The routes of each of `categories`, one statement per 256 of them (a category without routes
/// has no entry).
pub async fn routes_for_categories<C: ConnectionTrait>(
    connection: &C,
    categories: &[&str],
) -> Result<HashMap<String, Vec<domain::Route>>, DispatchError> {
    let mut routes: HashMap<String, Vec<domain::Route>> = HashMap::new();
    for categories in whistle_platform::db::in_lists(categories) {
        for row in route::Entity::find()
            .filter(route::Column::CategoryCode.is_in(categories))
            .all(connection)
            .await?
        {
            let route = serde_json::from_str::<domain::Route>(&row.definition)
                .map_err(DispatchError::unexpected)?;
            routes.entry(row.category_code).or_default().push(route);
        }
    }
    Ok(routes)
}

/// The timeline of a case, oldest first.
pub async fn timeline_of<C: ConnectionTrait>(
    connection: &C,
    case_id: &str,
) -> Result<Vec<timeline::Model>, DispatchError> {
    Ok(timeline::Entity::find()
        .filter(timeline::Column::CaseId.eq(case_id))
        .order_by_asc(timeline::Column::Id)
        .all(connection)
        .await?)
}
