//! The gateway's tables: the department registry, credentials, each department's notice log with
//! its sequence counter, the assignments projection and the delivery cursors.

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use sea_orm_migration::prelude::*;
use std::collections::{BTreeSet, HashMap};
use whistle_platform::db::insert_rows;

pub mod department {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "gateway_departments")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub code: String,
        pub name: String,
        /// `district`, `city`, `property`, ... as in the catalogue.
        pub level: String,
        pub region_code: String,
        pub updated_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod credential {
    use sea_orm::entity::prelude::*;

    /// A department's bearer token, kept only as its SHA-256.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "gateway_credentials")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub token_sha256: String,
        pub department_code: String,
        pub created_at_ms: i64,
        /// After this instant the token is refused as expired; `None`: it does not expire.
        pub expires_at_ms: Option<i64>,
        /// When the operator revoked it; a revoked token is refused.
        pub revoked_at_ms: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod notice_counter {
    use sea_orm::entity::prelude::*;

    /// The last sequence handed out in a department's notice log.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "gateway_notice_counters")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub department_code: String,
        pub last_sequence: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod notice {
    use sea_orm::entity::prelude::*;

    /// One event addressed to a department, at its place in the department's own log.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "gateway_notices")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub department_code: String,
        /// 1, 2, 3, ... per department, without gaps.
        pub sequence: i64,
        pub event_id: String,
        pub subject: String,
        /// `whistle.issued`, `whistle.acknowledged`, ...
        pub kind: String,
        pub case_id: String,
        pub assignment_id: String,
        /// The `whistle.events.v1.Event`, protobuf-encoded.
        pub event: Vec<u8>,
        pub created_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod assignment {
    use sea_orm::entity::prelude::*;

    /// The latest version of an assignment seen in the events, to list a department's work locally.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "gateway_assignments")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub assignment_id: String,
        pub department_code: String,
        pub case_id: String,
        /// `whistle.types.v1.AssignmentStatus` number.
        pub status: i32,
        pub version: i64,
        /// The `whistle.types.v1.Assignment`, protobuf-encoded.
        pub assignment: Vec<u8>,
        pub updated_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod assignment_trace {
    use sea_orm::entity::prelude::*;

    /// The trace an assignment's first notice was consumed in (a W3C `traceparent`), so the
    /// department's actions on it continue the case's trace even when the department system sends
    /// no trace context of its own.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "gateway_assignment_traces")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub assignment_id: String,
        pub traceparent: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Remembers the trace of each assignment's first notice (assignment id → `traceparent`, one entry
/// per assignment); an assignment remembered before keeps its first. One statement per chunk.
/// Returns the entries written now (those not remembered before), which are what the table holds.
pub async fn remember_assignment_traces<C: ConnectionTrait>(
    connection: &C,
    traces: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, DbErr> {
    let mut entries = traces.iter();
    let mut written = Vec::new();
    for size in whistle_platform::db::statement_sizes(traces.len()) {
        let mut insert = Query::insert();
        insert.into_table(assignment_trace::Entity).columns([
            assignment_trace::Column::AssignmentId,
            assignment_trace::Column::Traceparent,
        ]);
        for (assignment_id, traceparent) in entries.by_ref().take(size) {
            insert.values_panic([assignment_id.as_str().into(), traceparent.as_str().into()]);
        }
        insert
            .on_conflict(
                OnConflict::column(assignment_trace::Column::AssignmentId)
                    .do_nothing()
                    .to_owned(),
            )
            .returning_col(assignment_trace::Column::AssignmentId);
        for row in connection.query_all(&insert).await? {
            let assignment_id: String = row.try_get("", "assignment_id")?;
            if let Some(traceparent) = traces.get(&assignment_id) {
                written.push((assignment_id, traceparent.clone()));
            }
        }
    }
    Ok(written)
}

/// Assignments' `traceparent`s already read, so the second and third action on an assignment
/// (acknowledge, check in, resolve) cost no lookup. An assignment's row never changes once written
/// (the first notice's trace is kept), so a remembered one is never stale; assignments without a
/// row are not remembered. The notice consumers put in what they write, so on one replica an
/// action finds its assignment's trace without a lookup. At most [`TraceCache::ENTRIES`], then it
/// starts over.
#[derive(Debug, Clone, Default)]
pub struct TraceCache {
    entries: std::sync::Arc<std::sync::Mutex<HashMap<String, String>>>,
}

impl TraceCache {
    pub const ENTRIES: usize = 4096;

    /// The assignment's `traceparent`: remembered, or read from the database.
    pub async fn traceparent<C: ConnectionTrait>(
        &self,
        connection: &C,
        assignment_id: &str,
    ) -> Result<Option<String>, DbErr> {
        if let Some(known) = self.lock().get(assignment_id) {
            return Ok(Some(known.clone()));
        }
        let found = assignment_traceparent(connection, assignment_id).await?;
        if let Some(traceparent) = &found {
            self.remember([(assignment_id.to_string(), traceparent.clone())]);
        }
        Ok(found)
    }

    /// Remembers traces as stored (committed rows of `gateway_assignment_traces`).
    pub fn remember(&self, traces: impl IntoIterator<Item = (String, String)>) {
        let mut entries = self.lock();
        for (assignment_id, traceparent) in traces {
            if entries.len() >= Self::ENTRIES {
                entries.clear();
            }
            entries.insert(assignment_id, traceparent);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The `traceparent` remembered for an assignment, if any.
pub async fn assignment_traceparent<C: ConnectionTrait>(
    connection: &C,
    assignment_id: &str,
) -> Result<Option<String>, DbErr> {
    Ok(assignment_trace::Entity::find_by_id(assignment_id)
        .one(connection)
        .await?
        .map(|row| row.traceparent))
}

pub mod delivery_cursor {
    use sea_orm::entity::prelude::*;

    /// The highest notice sequence sent to a department's subscribers, for operators.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "gateway_delivery_cursors")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub department_code: String,
        pub delivered_sequence: i64,
        pub delivered_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The credential of a token digest: its department, expiry and revocation.
pub async fn credential_of_token<C: ConnectionTrait>(
    connection: &C,
    token_sha256: &str,
) -> Result<Option<credential::Model>, DbErr> {
    credential::Entity::find_by_id(token_sha256)
        .one(connection)
        .await
}

/// Creates the notice counters of `department_codes` that do not exist yet, locks them all until
/// the transaction ends, in ascending code order (PostgreSQL; SQLite has one writer at a time and
/// needs no lock), and returns each one's last sequence. A consumer batch takes every counter it
/// will use this way before it writes anything, so two replicas never hold one counter each while
/// waiting for the other's; the batch then numbers its notices from these values and writes the
/// counters back once, before it commits ([`set_notice_counters`]).
pub async fn lock_notice_counters<C: ConnectionTrait>(
    connection: &C,
    department_codes: &BTreeSet<&str>,
) -> Result<std::collections::HashMap<String, i64>, DbErr> {
    if department_codes.is_empty() {
        return Ok(Default::default());
    }
    // rows are inserted in the order given, so new counters are also taken in code order
    notice_counter::Entity::insert_many(department_codes.iter().map(|code| {
        notice_counter::ActiveModel {
            department_code: Set(String::from(*code)),
            last_sequence: Set(0),
        }
    }))
    .on_conflict_do_nothing()
    .exec_without_returning(connection)
    .await?;
    let mut query = notice_counter::Entity::find()
        .filter(notice_counter::Column::DepartmentCode.is_in(department_codes.iter().copied()))
        .order_by_asc(notice_counter::Column::DepartmentCode);
    if connection.get_database_backend() == DbBackend::Postgres {
        query = query.lock_exclusive();
    }
    let counters: std::collections::HashMap<String, i64> = query
        .all(connection)
        .await?
        .into_iter()
        .map(|counter| (counter.department_code, counter.last_sequence))
        .collect();
    if counters.len() != department_codes.len() {
        return Err(DbErr::Custom(format!(
            "locked {} of {} notice counters",
            counters.len(),
            department_codes.len()
        )));
    }
    Ok(counters)
}

/// Writes back the last sequence of each department a batch numbered notices for (its counters
/// were taken with [`lock_notice_counters`] in the same transaction, `locked` gives what they held
/// then): one `UPDATE … FROM (VALUES …)` for the batch, which also checks that no counter moved
/// since it was taken.
pub async fn set_notice_counters<C: ConnectionTrait>(
    connection: &C,
    locked: &std::collections::HashMap<String, i64>,
    last_sequences: &std::collections::BTreeMap<String, i64>,
) -> Result<(), DbErr> {
    let mut rows = Vec::with_capacity(last_sequences.len());
    for (department_code, last_sequence) in last_sequences {
        let Some(expected) = locked.get(department_code) else {
            return Err(DbErr::Custom(format!(
                "notice counter of {department_code} was not taken by this batch"
            )));
        };
        rows.push(whistle_platform::db::VersionedRow {
            key: department_code.as_str().into(),
            expected_version: *expected,
            values: vec![(*last_sequence).into()],
        });
    }
    let count = rows.len() as u64;
    let updated = whistle_platform::db::update_rows(
        connection,
        "gateway_notice_counters",
        "department_code",
        "last_sequence",
        &["last_sequence"],
        rows,
    )
    .await?;
    if updated != count {
        return Err(DbErr::Custom(format!(
            "{} of {count} notice counters moved or vanished while taken",
            count - updated
        )));
    }
    Ok(())
}

/// Inserts a batch's notices, a few hundred per statement.
pub async fn insert_notices<C: ConnectionTrait>(
    connection: &C,
    notices: Vec<notice::ActiveModel>,
) -> Result<(), DbErr> {
    insert_rows(connection, notices, None).await?;
    Ok(())
}

/// Every department's last notice sequence, as committed.
pub async fn notice_counters<C: ConnectionTrait>(
    connection: &C,
) -> Result<Vec<(String, i64)>, DbErr> {
    Ok(notice_counter::Entity::find()
        .all(connection)
        .await?
        .into_iter()
        .map(|counter| (counter.department_code, counter.last_sequence))
        .collect())
}

/// Up to `limit` notices of a department after `after_sequence`, oldest first.
pub async fn notices_after<C: ConnectionTrait>(
    connection: &C,
    department_code: &str,
    after_sequence: i64,
    limit: u64,
) -> Result<Vec<notice::Model>, DbErr> {
    notice::Entity::find()
        .filter(notice::Column::DepartmentCode.eq(department_code))
        .filter(notice::Column::Sequence.gt(after_sequence))
        .order_by_asc(notice::Column::Sequence)
        .limit(limit)
        .all(connection)
        .await
}

/// Stores each assignment unless a newer version of it is already stored: one conditional upsert
/// per chunk (a row updates only when the stored version is not newer than the one written). The
/// models must name distinct assignments: PostgreSQL refuses to update one row twice in a statement.
pub async fn upsert_assignments<C: ConnectionTrait>(
    connection: &C,
    models: Vec<assignment::Model>,
) -> Result<(), DbErr> {
    let newer_wins = OnConflict::column(assignment::Column::AssignmentId)
        .update_columns([
            assignment::Column::DepartmentCode,
            assignment::Column::CaseId,
            assignment::Column::Status,
            assignment::Column::Version,
            assignment::Column::Assignment,
            assignment::Column::UpdatedAtMs,
        ])
        .action_and_where(
            Expr::col((assignment::Entity, assignment::Column::Version))
                .lte(Expr::cust("excluded.version")),
        )
        .to_owned();
    insert_rows(
        connection,
        models.into_iter().map(assignment::ActiveModel::from),
        Some(newer_wins),
    )
    .await?;
    Ok(())
}

/// Raises a department's delivery cursor to `sequence` (never lowers it).
pub async fn advance_delivery_cursor<C: ConnectionTrait>(
    connection: &C,
    department_code: &str,
    sequence: i64,
    now_ms: i64,
) -> Result<(), DbErr> {
    let raised = delivery_cursor::Entity::update_many()
        .col_expr(delivery_cursor::Column::DeliveredSequence, sequence.into())
        .col_expr(delivery_cursor::Column::DeliveredAtMs, now_ms.into())
        .filter(delivery_cursor::Column::DepartmentCode.eq(department_code))
        .filter(delivery_cursor::Column::DeliveredSequence.lt(sequence))
        .exec(connection)
        .await?;
    if raised.rows_affected > 0 {
        return Ok(());
    }
    delivery_cursor::Entity::insert(delivery_cursor::ActiveModel {
        department_code: Set(department_code.to_string()),
        delivered_sequence: Set(sequence),
        delivered_at_ms: Set(now_ms),
    })
    .on_conflict(
        OnConflict::column(delivery_cursor::Column::DepartmentCode)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(connection)
    .await?;
    Ok(())
}

/// The gateway's migrations, oldest first.
#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        whistle_platform::db::migrations::with_platform(vec![
            Box::new(CreateGatewayTables),
            Box::new(CreateAssignmentTraces),
            Box::new(AddCredentialExpiry),
        ])
    }
}

#[derive(Debug)]
struct AddCredentialExpiry;

impl MigrationName for AddCredentialExpiry {
    fn name(&self) -> &str {
        "m20261129_000002_gateway_credential_expiry"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AddCredentialExpiry {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use sea_orm_migration::schema::*;
        // one column per statement: SQLite adds one at a time
        for column in [
            credential::Column::ExpiresAtMs,
            credential::Column::RevokedAtMs,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(credential::Entity)
                        .add_column(big_integer_null(column))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            credential::Column::ExpiresAtMs,
            credential::Column::RevokedAtMs,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(credential::Entity)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct CreateAssignmentTraces;

impl MigrationName for CreateAssignmentTraces {
    fn name(&self) -> &str {
        "m20261129_000001_gateway_assignment_traces"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateAssignmentTraces {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use sea_orm_migration::schema::*;
        manager
            .create_table(
                Table::create()
                    .table(assignment_trace::Entity)
                    .if_not_exists()
                    .col(string(assignment_trace::Column::AssignmentId).primary_key())
                    .col(string(assignment_trace::Column::Traceparent))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(assignment_trace::Entity)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

#[derive(Debug)]
struct CreateGatewayTables;

impl MigrationName for CreateGatewayTables {
    fn name(&self) -> &str {
        "m20261128_000003_department_gateway_tables"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateGatewayTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use sea_orm_migration::schema::*;
        manager
            .create_table(
                Table::create()
                    .table(department::Entity)
                    .if_not_exists()
                    .col(string(department::Column::Code).primary_key())
                    .col(string(department::Column::Name))
                    .col(string(department::Column::Level))
                    .col(string(department::Column::RegionCode))
                    .col(big_integer(department::Column::UpdatedAtMs))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(credential::Entity)
                    .if_not_exists()
                    .col(string(credential::Column::TokenSha256).primary_key())
                    .col(string(credential::Column::DepartmentCode))
                    .col(big_integer(credential::Column::CreatedAtMs))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("gateway_credentials_department")
                    .table(credential::Entity)
                    .col(credential::Column::DepartmentCode)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(notice_counter::Entity)
                    .if_not_exists()
                    .col(string(notice_counter::Column::DepartmentCode).primary_key())
                    .col(big_integer(notice_counter::Column::LastSequence))
                    .to_owned(),
            )
            .await?;
        use notice::Column as N;
        manager
            .create_table(
                Table::create()
                    .table(notice::Entity)
                    .if_not_exists()
                    .col(big_pk_auto(N::Id))
                    .col(string(N::DepartmentCode))
                    .col(big_integer(N::Sequence))
                    .col(string(N::EventId))
                    .col(string(N::Subject))
                    .col(string(N::Kind))
                    .col(string(N::CaseId))
                    .col(string(N::AssignmentId))
                    .col(blob(N::Event))
                    .col(big_integer(N::CreatedAtMs))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("gateway_notices_department_sequence")
                    .table(notice::Entity)
                    .col(N::DepartmentCode)
                    .col(N::Sequence)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        use assignment::Column as A;
        manager
            .create_table(
                Table::create()
                    .table(assignment::Entity)
                    .if_not_exists()
                    .col(string(A::AssignmentId).primary_key())
                    .col(string(A::DepartmentCode))
                    .col(string(A::CaseId))
                    .col(integer(A::Status))
                    .col(big_integer(A::Version))
                    .col(blob(A::Assignment))
                    .col(big_integer(A::UpdatedAtMs))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("gateway_assignments_department")
                    .table(assignment::Entity)
                    .col(A::DepartmentCode)
                    .col(A::AssignmentId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("gateway_assignments_department_status")
                    .table(assignment::Entity)
                    .col(A::DepartmentCode)
                    .col(A::Status)
                    .col(A::AssignmentId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(delivery_cursor::Entity)
                    .if_not_exists()
                    .col(string(delivery_cursor::Column::DepartmentCode).primary_key())
                    .col(big_integer(delivery_cursor::Column::DeliveredSequence))
                    .col(big_integer(delivery_cursor::Column::DeliveredAtMs))
                    .to_owned(),
            )
            .await
    }
}
