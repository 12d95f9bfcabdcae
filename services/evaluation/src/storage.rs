//! Evaluation's tables: the department registry, per-assignment facts, what the case events said
//! (the facts the producers publish), cooperation ratings and satisfaction call-backs; and the queries
//! over them.

use crate::domain::{
    self, AssignmentFacts, AssignmentRole, AssignmentState, CallbackResult, CaseFact,
    CooperationRating, DepartmentLevel, DerivedOutcome, FactKind, PeriodBounds, ReportedVerdict,
    SatisfactionCallback,
};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, Iterable, QueryFilter,
    QueryOrder, QuerySelect,
};
use whistle_platform::db::{in_lists, insert_rows};

pub use migration::Migrator;

pub mod department {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "evaluation_departments")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub code: String,
        pub name: String,
        /// `city`, `district` or `property`.
        pub level: String,
        /// Division code of the area the department serves, e.g. `420303`.
        pub region_code: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod assignment {
    use sea_orm::entity::prelude::*;

    /// One assignment's facts (see `domain::AssignmentFacts`).
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "evaluation_assignments")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub assignment_id: String,
        pub case_id: String,
        pub department_code: String,
        /// `lead`, `co` or `unspecified`.
        pub role: String,
        /// `whistled`, `acknowledged`, `on_site`, `resolved` or `returned`.
        pub state: String,
        pub version: i64,
        pub whistled_at_ms: i64,
        pub acknowledge_by_ms: Option<i64>,
        pub on_site_by_ms: Option<i64>,
        pub resolve_by_ms: Option<i64>,
        pub requires_on_site: bool,
        pub acknowledged_at_ms: Option<i64>,
        /// Dispatch's verdict from `AssignmentAcknowledged.within_limit`, and the version it came with.
        pub acknowledged_within_limit: Option<bool>,
        pub acknowledged_verdict_version: Option<i64>,
        pub on_site_at_ms: Option<i64>,
        pub on_site_within_limit: Option<bool>,
        pub on_site_verdict_version: Option<i64>,
        pub resolved_at_ms: Option<i64>,
        pub first_resolved_at_ms: Option<i64>,
        pub resolved_within_limit: Option<bool>,
        pub resolved_verdict_version: Option<i64>,
        pub returned_at_ms: Option<i64>,
        pub deferred: bool,
        pub extended: bool,
        pub escalated: bool,
        /// No longer read: outcomes are derived from `fact` rows when scoring
        /// (`domain::derive_outcome`); kept for the first migration.
        pub verified: bool,
        pub reopen_count: i32,
        pub return_accepted: bool,
        pub updated_at_ms: i64,
        /// What the assignment adds to its department's card (`domain::Tally`), kept current
        /// whenever its facts or its case's facts change; `None` until first decided.
        pub tally_bits: Option<i64>,
        pub returns_rejected_count: i64,
        pub due_from_ms: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod case {
    use sea_orm::entity::prelude::*;

    /// A case seen in any event, and the latest time its verification passed (or it was closed).
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "evaluation_cases")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub case_id: String,
        pub first_seen_at_ms: i64,
        pub passed_verification_at_ms: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod reopening {
    use sea_orm::entity::prelude::*;

    /// One `CaseReopened` event. No longer written: rework is counted from the verification's
    /// per-assignment verdicts (`fact`); the table stays for the first migration.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "evaluation_reopenings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub case_id: String,
        pub reopened_at_ms: i64,
        /// JSON array of assignment ids; empty means every resolved assignment of the case.
        pub assignment_ids: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod fact {
    use sea_orm::entity::prelude::*;

    /// One decision an event published about an assignment (see `domain::CaseFact`); the
    /// assignment id is empty for a fact about the whole case.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "evaluation_case_facts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub assignment_id: String,
        pub case_id: String,
        /// `domain::FactKind::as_str`.
        pub kind: String,
        /// `upheld` of a return decision, `passed` of a verdict.
        pub flag: bool,
        pub occurred_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod rating {
    use sea_orm::entity::prelude::*;

    /// One cooperation rating (配合度); a rater's new rating of the same assignment replaces it.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "evaluation_cooperation_ratings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub assignment_id: String,
        /// `street` or `community`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub rater: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub rater_id: String,
        pub score: i32,
        pub comment: String,
        pub rated_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod callback {
    use sea_orm::entity::prelude::*;

    /// One resident call-back (回访) on a case.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "evaluation_satisfaction_callbacks")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub callback_id: String,
        pub case_id: String,
        /// `satisfied`, `basically_satisfied` or `dissatisfied`.
        pub result: String,
        pub note: String,
        pub recorded_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod case_state {
    use sea_orm::entity::prelude::*;

    /// Where a case is (from the events' region) and whether it is closed now, by the case version
    /// of the latest `case.closed`/`case.reopened` seen.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "evaluation_case_states")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub case_id: String,
        pub street_code: String,
        pub community_code: String,
        pub closed: bool,
        /// Case version of the close or reopening `closed` comes from; 0 before either.
        pub status_version: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod rating_history {
    use sea_orm::entity::prelude::*;

    /// Every cooperation rating ever given (`evaluation.cooperation_rated`); the latest of a rater
    /// and assignment is the one in `evaluation_cooperation_ratings`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "evaluation_cooperation_rating_history")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub assignment_id: String,
        pub rater: String,
        pub rater_id: String,
        pub score: i32,
        pub comment: String,
        pub rated_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod milestone {
    use sea_orm::entity::prelude::*;

    /// A whistle event that carried one of an assignment's milestones (whistled, acknowledged, on
    /// site, resolved, returned): what ExplainScore names besides the deciding facts.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "evaluation_milestone_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub assignment_id: String,
        /// `whistled`, `acknowledged`, `on_site`, `resolved` or `returned`.
        pub kind: String,
        pub occurred_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod period_state {
    use sea_orm::entity::prelude::*;

    /// A period that was closed at least once: its latest close or reopening (by occurred time,
    /// then event id) and, while closed, the frozen cards as published.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "evaluation_periods")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub period: String,
        pub closed: bool,
        pub closed_at_ms: Option<i64>,
        pub sha256: String,
        pub frozen_scorecards_json: String,
        pub scoring_config: String,
        /// The reason of the latest reopening, empty while never reopened.
        pub reopen_reason: String,
        pub last_event_at_ms: i64,
        pub last_event_id: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A department of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Department {
    pub code: String,
    pub level: Option<DepartmentLevel>,
    pub region_code: String,
}

fn version_to_db(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

fn version_from_db(version: i64) -> u64 {
    u64::try_from(version).unwrap_or_default()
}

fn verdict_from_db(within_limit: Option<bool>, version: Option<i64>) -> Option<ReportedVerdict> {
    Some(ReportedVerdict {
        within_limit: within_limit?,
        version: version_from_db(version.unwrap_or_default()),
    })
}

fn facts_from_row(row: assignment::Model) -> Result<AssignmentFacts, DbErr> {
    let state = AssignmentState::parse(&row.state).ok_or_else(|| {
        DbErr::Custom(format!(
            "assignment {} has unknown state {:?}",
            row.assignment_id, row.state
        ))
    })?;
    Ok(AssignmentFacts {
        role: AssignmentRole::parse(&row.role),
        state,
        version: version_from_db(row.version),
        whistled_at_ms: row.whistled_at_ms,
        acknowledge_by_ms: row.acknowledge_by_ms,
        on_site_by_ms: row.on_site_by_ms,
        resolve_by_ms: row.resolve_by_ms,
        requires_on_site: row.requires_on_site,
        acknowledged_at_ms: row.acknowledged_at_ms,
        acknowledged_verdict: verdict_from_db(
            row.acknowledged_within_limit,
            row.acknowledged_verdict_version,
        ),
        on_site_at_ms: row.on_site_at_ms,
        on_site_verdict: verdict_from_db(row.on_site_within_limit, row.on_site_verdict_version),
        resolved_at_ms: row.resolved_at_ms,
        first_resolved_at_ms: row.first_resolved_at_ms,
        resolved_verdict: verdict_from_db(row.resolved_within_limit, row.resolved_verdict_version),
        returned_at_ms: row.returned_at_ms,
        deferred: row.deferred,
        extended: row.extended,
        escalated: row.escalated,
        outcome: DerivedOutcome::default(),
        assignment_id: row.assignment_id,
        case_id: row.case_id,
        department_code: row.department_code,
    })
}

fn row_from_facts(
    facts: &AssignmentFacts,
    tally: &domain::Tally,
    now_ms: i64,
) -> assignment::ActiveModel {
    let verdict_parts = |verdict: Option<ReportedVerdict>| {
        (
            verdict.map(|verdict| verdict.within_limit),
            verdict.map(|verdict| version_to_db(verdict.version)),
        )
    };
    let (acknowledged_within_limit, acknowledged_verdict_version) =
        verdict_parts(facts.acknowledged_verdict);
    let (on_site_within_limit, on_site_verdict_version) = verdict_parts(facts.on_site_verdict);
    let (resolved_within_limit, resolved_verdict_version) = verdict_parts(facts.resolved_verdict);
    assignment::ActiveModel {
        assignment_id: Set(facts.assignment_id.clone()),
        case_id: Set(facts.case_id.clone()),
        department_code: Set(facts.department_code.clone()),
        role: Set(facts.role.as_str().to_string()),
        state: Set(facts.state.as_str().to_string()),
        version: Set(version_to_db(facts.version)),
        whistled_at_ms: Set(facts.whistled_at_ms),
        acknowledge_by_ms: Set(facts.acknowledge_by_ms),
        on_site_by_ms: Set(facts.on_site_by_ms),
        resolve_by_ms: Set(facts.resolve_by_ms),
        requires_on_site: Set(facts.requires_on_site),
        acknowledged_at_ms: Set(facts.acknowledged_at_ms),
        acknowledged_within_limit: Set(acknowledged_within_limit),
        acknowledged_verdict_version: Set(acknowledged_verdict_version),
        on_site_at_ms: Set(facts.on_site_at_ms),
        on_site_within_limit: Set(on_site_within_limit),
        on_site_verdict_version: Set(on_site_verdict_version),
        resolved_at_ms: Set(facts.resolved_at_ms),
        first_resolved_at_ms: Set(facts.first_resolved_at_ms),
        resolved_within_limit: Set(resolved_within_limit),
        resolved_verdict_version: Set(resolved_verdict_version),
        returned_at_ms: Set(facts.returned_at_ms),
        deferred: Set(facts.deferred),
        extended: Set(facts.extended),
        escalated: Set(facts.escalated),
        verified: Set(facts.outcome.verified),
        reopen_count: Set(i32::try_from(facts.outcome.reopen_count).unwrap_or(i32::MAX)),
        return_accepted: Set(facts.outcome.return_accepted),
        updated_at_ms: Set(now_ms),
        tally_bits: Set(Some(tally.bits)),
        returns_rejected_count: Set(tally.returns_rejected),
        due_from_ms: Set(tally.due_from_ms),
    }
}

/// The key a transaction locks (`whistle_platform::db::lock_keys`) before it merges anything into
/// the rows kept per case: its assignments, their tallies, its state, ratings and call-backs.
pub fn case_lock_key(case_id: &str) -> String {
    format!("case:{case_id}")
}

/// The assignments of the given cases, each with its tally as stored (`None` when never decided).
pub async fn assignments_of_cases<C: ConnectionTrait>(
    connection: &C,
    case_ids: &[String],
) -> Result<Vec<(AssignmentFacts, Option<domain::Tally>)>, DbErr> {
    let mut assignments = Vec::new();
    for list in in_lists(case_ids) {
        for row in assignment::Entity::find()
            .filter(assignment::Column::CaseId.is_in(list))
            .all(connection)
            .await?
        {
            let tally = row.tally_bits.map(|bits| domain::Tally {
                bits,
                returns_rejected: row.returns_rejected_count,
                due_from_ms: row.due_from_ms,
            });
            assignments.push((facts_from_row(row)?, tally));
        }
    }
    Ok(assignments)
}

/// Cases with an assignment whose tally was never decided (rows kept before tallies existed), at
/// most `limit`.
pub async fn untallied_cases<C: ConnectionTrait>(
    connection: &C,
    limit: u64,
) -> Result<Vec<String>, DbErr> {
    assignment::Entity::find()
        .select_only()
        .column(assignment::Column::CaseId)
        .distinct()
        .filter(assignment::Column::TallyBits.is_null())
        .limit(limit)
        .into_tuple::<String>()
        .all(connection)
        .await
}

/// The facts of one assignment, when any event about it arrived.
pub async fn find_assignment<C: ConnectionTrait>(
    connection: &C,
    assignment_id: &str,
) -> Result<Option<AssignmentFacts>, DbErr> {
    assignment::Entity::find_by_id(assignment_id)
        .one(connection)
        .await?
        .map(facts_from_row)
        .transpose()
}

/// Inserts or replaces assignments, each with its facts, derived outcome and tally.
pub async fn upsert_assignments<C: ConnectionTrait>(
    connection: &C,
    assignments: &[(AssignmentFacts, domain::Tally)],
    now_ms: i64,
) -> Result<(), DbErr> {
    insert_rows(
        connection,
        assignments
            .iter()
            .map(|(facts, tally)| row_from_facts(facts, tally, now_ms)),
        Some(
            OnConflict::column(assignment::Column::AssignmentId)
                .update_columns(
                    assignment::Column::iter()
                        .filter(|column| !matches!(column, assignment::Column::AssignmentId)),
                )
                .to_owned(),
        ),
    )
    .await?;
    Ok(())
}

/// Notes that a case exists (any event named it); keeps what is already known about it.
pub async fn remember_case<C: ConnectionTrait>(
    connection: &C,
    case_id: &str,
    now_ms: i64,
) -> Result<(), DbErr> {
    case::Entity::insert(case::ActiveModel {
        case_id: Set(case_id.to_string()),
        first_seen_at_ms: Set(now_ms),
        passed_verification_at_ms: Set(None),
    })
    .on_conflict(
        OnConflict::column(case::Column::CaseId)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(connection)
    .await?;
    Ok(())
}

/// Notes that cases exist (with when each was first seen); keeps what is already known of them.
pub async fn remember_cases<C: ConnectionTrait>(
    connection: &C,
    cases: &std::collections::BTreeMap<String, i64>,
) -> Result<(), DbErr> {
    let rows = cases
        .iter()
        .map(|(case_id, first_seen_at_ms)| case::ActiveModel {
            case_id: Set(case_id.clone()),
            first_seen_at_ms: Set(*first_seen_at_ms),
            passed_verification_at_ms: Set(None),
        });
    let skip_known = OnConflict::column(case::Column::CaseId)
        .do_nothing()
        .to_owned();
    insert_rows(connection, rows, Some(skip_known)).await?;
    Ok(())
}

/// Whether any event named the case.
pub async fn case_known<C: ConnectionTrait>(connection: &C, case_id: &str) -> Result<bool, DbErr> {
    Ok(case::Entity::find_by_id(case_id)
        .one(connection)
        .await?
        .is_some())
}

/// Stores published facts; a redelivered event changes nothing.
pub async fn insert_facts<C: ConnectionTrait>(
    connection: &C,
    facts: &[CaseFact],
) -> Result<(), DbErr> {
    let rows = facts.iter().map(|fact| fact::ActiveModel {
        event_id: Set(fact.event_id.clone()),
        assignment_id: Set(fact.assignment_id.clone()),
        case_id: Set(fact.case_id.clone()),
        kind: Set(fact.kind.as_str().to_string()),
        flag: Set(fact.flag),
        occurred_at_ms: Set(fact.occurred_at_ms),
    });
    let skip_known = OnConflict::columns([fact::Column::EventId, fact::Column::AssignmentId])
        .do_nothing()
        .to_owned();
    insert_rows(connection, rows, Some(skip_known)).await?;
    Ok(())
}

/// Every fact published about the given cases.
pub async fn facts_on<C: ConnectionTrait>(
    connection: &C,
    case_ids: &[String],
) -> Result<Vec<CaseFact>, DbErr> {
    let mut facts = Vec::new();
    for list in in_lists(case_ids) {
        for row in fact::Entity::find()
            .filter(fact::Column::CaseId.is_in(list))
            .all(connection)
            .await?
        {
            let kind = FactKind::parse(&row.kind).ok_or_else(|| {
                DbErr::Custom(format!(
                    "fact {} has unknown kind {:?}",
                    row.event_id, row.kind
                ))
            })?;
            facts.push(CaseFact {
                event_id: row.event_id,
                case_id: row.case_id,
                assignment_id: row.assignment_id,
                kind,
                flag: row.flag,
                occurred_at_ms: row.occurred_at_ms,
            });
        }
    }
    Ok(facts)
}

/// The assignments whistled in `bounds`, to one department or to all.
pub async fn assignments_whistled_in<C: ConnectionTrait>(
    connection: &C,
    department_code: Option<&str>,
    bounds: PeriodBounds,
) -> Result<Vec<AssignmentFacts>, DbErr> {
    let mut query = assignment::Entity::find()
        .filter(assignment::Column::WhistledAtMs.gte(bounds.start_ms))
        .filter(assignment::Column::WhistledAtMs.lt(bounds.end_ms))
        .order_by_asc(assignment::Column::AssignmentId);
    if let Some(department_code) = department_code {
        query = query.filter(assignment::Column::DepartmentCode.eq(department_code));
    }
    let mut assignments = query
        .all(connection)
        .await?
        .into_iter()
        .map(facts_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let case_ids: Vec<String> = assignments
        .iter()
        .map(|assignment| assignment.case_id.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    // each assignment is decided by its own case's facts: grouped once, so a card over N cases
    // costs N lookups rather than N scans of every fact
    let mut facts_by_case: std::collections::HashMap<String, Vec<CaseFact>> =
        std::collections::HashMap::with_capacity(case_ids.len());
    for fact in facts_on(connection, &case_ids).await? {
        facts_by_case
            .entry(fact.case_id.clone())
            .or_default()
            .push(fact);
    }
    for assignment in &mut assignments {
        let facts = facts_by_case
            .get(&assignment.case_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        assignment.outcome = domain::derive_outcome(assignment, facts);
    }
    Ok(assignments)
}

/// The cooperation ratings of the given assignments.
pub async fn ratings_of<C: ConnectionTrait>(
    connection: &C,
    assignment_ids: &[String],
) -> Result<Vec<CooperationRating>, DbErr> {
    let mut ratings = Vec::new();
    for list in in_lists(assignment_ids) {
        let rows = rating::Entity::find()
            .filter(rating::Column::AssignmentId.is_in(list))
            .all(connection)
            .await?;
        ratings.extend(rows.into_iter().map(|row| CooperationRating {
            assignment_id: row.assignment_id,
            score: u8::try_from(row.score).unwrap_or_default(),
        }));
    }
    Ok(ratings)
}

/// The satisfaction call-backs on the given cases.
pub async fn callbacks_on<C: ConnectionTrait>(
    connection: &C,
    case_ids: &[String],
) -> Result<Vec<SatisfactionCallback>, DbErr> {
    let mut callbacks = Vec::new();
    for list in in_lists(case_ids) {
        let rows = callback::Entity::find()
            .filter(callback::Column::CaseId.is_in(list))
            .all(connection)
            .await?;
        for row in rows {
            let result = CallbackResult::parse(&row.result).ok_or_else(|| {
                DbErr::Custom(format!(
                    "call-back {} has unknown result {:?}",
                    row.callback_id, row.result
                ))
            })?;
            callbacks.push(SatisfactionCallback {
                callback_id: row.callback_id,
                case_id: row.case_id,
                result,
            });
        }
    }
    Ok(callbacks)
}

/// Stores a rating, replacing the same rater's earlier rating of the assignment.
pub async fn save_rating<C: ConnectionTrait>(
    connection: &C,
    model: rating::Model,
) -> Result<(), DbErr> {
    use rating::Column as R;
    rating::Entity::insert(rating::ActiveModel::from(model))
        .on_conflict(
            OnConflict::columns([R::AssignmentId, R::Rater, R::RaterId])
                .update_columns([R::Score, R::Comment, R::RatedAtMs])
                .to_owned(),
        )
        .exec_without_returning(connection)
        .await?;
    Ok(())
}

pub async fn find_callback<C: ConnectionTrait>(
    connection: &C,
    callback_id: &str,
) -> Result<Option<callback::Model>, DbErr> {
    callback::Entity::find_by_id(callback_id)
        .one(connection)
        .await
}

/// Stores a call-back; false when its id was already taken.
pub async fn insert_callback<C: ConnectionTrait>(
    connection: &C,
    model: callback::Model,
) -> Result<bool, DbErr> {
    let inserted = callback::Entity::insert(callback::ActiveModel::from(model))
        .on_conflict(
            OnConflict::column(callback::Column::CallbackId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(connection)
        .await?;
    Ok(inserted == 1)
}

/// Every department of the registry.
pub async fn departments<C: ConnectionTrait>(connection: &C) -> Result<Vec<Department>, DbErr> {
    Ok(department::Entity::find()
        .order_by_asc(department::Column::Code)
        .all(connection)
        .await?
        .into_iter()
        .map(|row| Department {
            level: DepartmentLevel::parse(&row.level).ok(),
            code: row.code,
            region_code: row.region_code,
        })
        .collect())
}

/// Whether the department is in the registry or was ever whistled.
pub async fn department_known<C: ConnectionTrait>(
    connection: &C,
    department_code: &str,
) -> Result<bool, DbErr> {
    if department::Entity::find_by_id(department_code)
        .one(connection)
        .await?
        .is_some()
    {
        return Ok(true);
    }
    Ok(assignment::Entity::find()
        .filter(assignment::Column::DepartmentCode.eq(department_code))
        .one(connection)
        .await?
        .is_some())
}

/// Inserts or updates one department of the registry.
pub async fn save_department<C: ConnectionTrait>(
    connection: &C,
    model: department::Model,
) -> Result<(), DbErr> {
    use department::Column as D;
    department::Entity::insert(department::ActiveModel::from(model))
        .on_conflict(
            OnConflict::column(D::Code)
                .update_columns([D::Name, D::Level, D::RegionCode])
                .to_owned(),
        )
        .exec_without_returning(connection)
        .await?;
    Ok(())
}

/// Where the case is, when an event named its region.
pub async fn case_region<C: ConnectionTrait>(
    connection: &C,
    case_id: &str,
) -> Result<Option<domain::CaseRegion>, DbErr> {
    Ok(case_state::Entity::find_by_id(case_id)
        .one(connection)
        .await?
        .map(|row| domain::CaseRegion {
            street_code: row.street_code,
            community_code: row.community_code,
        }))
}

/// Whether the case is closed now (false when unknown).
pub async fn case_closed<C: ConnectionTrait>(connection: &C, case_id: &str) -> Result<bool, DbErr> {
    Ok(case_state::Entity::find_by_id(case_id)
        .one(connection)
        .await?
        .is_some_and(|row| row.closed))
}

/// The states of the given cases that have one.
pub async fn case_states<C: ConnectionTrait>(
    connection: &C,
    case_ids: &[String],
) -> Result<Vec<case_state::Model>, DbErr> {
    let mut states = Vec::new();
    for list in in_lists(case_ids) {
        states.extend(
            case_state::Entity::find()
                .filter(case_state::Column::CaseId.is_in(list))
                .all(connection)
                .await?,
        );
    }
    Ok(states)
}

/// Inserts or replaces case states.
pub async fn upsert_case_states<C: ConnectionTrait>(
    connection: &C,
    states: Vec<case_state::Model>,
) -> Result<(), DbErr> {
    use case_state::Column as S;
    insert_rows(
        connection,
        states.into_iter().map(case_state::ActiveModel::from),
        Some(
            OnConflict::column(S::CaseId)
                .update_columns([S::StreetCode, S::CommunityCode, S::Closed, S::StatusVersion])
                .to_owned(),
        ),
    )
    .await?;
    Ok(())
}

/// The regions of the given cases.
pub async fn case_regions<C: ConnectionTrait>(
    connection: &C,
    case_ids: &[String],
) -> Result<std::collections::BTreeMap<String, domain::CaseRegion>, DbErr> {
    let mut regions = std::collections::BTreeMap::new();
    for list in in_lists(case_ids) {
        for row in case_state::Entity::find()
            .filter(case_state::Column::CaseId.is_in(list))
            .all(connection)
            .await?
        {
            regions.insert(
                row.case_id,
                domain::CaseRegion {
                    street_code: row.street_code,
                    community_code: row.community_code,
                },
            );
        }
    }
    Ok(regions)
}

/// Applies one published rating: kept in the history, and the current rating of its rater and
/// assignment when it is the latest (by time, then event id). Redelivery changes nothing.
pub async fn apply_rating<C: ConnectionTrait>(
    connection: &C,
    event_id: &str,
    model: rating::Model,
) -> Result<(), DbErr> {
    rating_history::Entity::insert(rating_history::ActiveModel {
        event_id: Set(event_id.to_string()),
        assignment_id: Set(model.assignment_id.clone()),
        rater: Set(model.rater.clone()),
        rater_id: Set(model.rater_id.clone()),
        score: Set(model.score),
        comment: Set(model.comment.clone()),
        rated_at_ms: Set(model.rated_at_ms),
    })
    .on_conflict(
        OnConflict::column(rating_history::Column::EventId)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(connection)
    .await?;
    // the current rating is the latest in the history, whatever order the events came in
    use rating_history::Column as H;
    let latest = rating_history::Entity::find()
        .filter(H::AssignmentId.eq(model.assignment_id.as_str()))
        .filter(H::Rater.eq(model.rater.as_str()))
        .filter(H::RaterId.eq(model.rater_id.as_str()))
        .order_by_desc(H::RatedAtMs)
        .order_by_desc(H::EventId)
        .one(connection)
        .await?;
    let Some(latest) = latest else {
        return Ok(());
    };
    save_rating(
        connection,
        rating::Model {
            assignment_id: latest.assignment_id,
            rater: latest.rater,
            rater_id: latest.rater_id,
            score: latest.score,
            comment: latest.comment,
            rated_at_ms: latest.rated_at_ms,
        },
    )
    .await
}

/// How many ratings the history holds for an assignment (every rater, every replacement).
pub async fn rating_history_count<C: ConnectionTrait>(
    connection: &C,
    assignment_id: &str,
) -> Result<u64, DbErr> {
    use sea_orm::PaginatorTrait;
    rating_history::Entity::find()
        .filter(rating_history::Column::AssignmentId.eq(assignment_id))
        .count(connection)
        .await
}

/// The close state of a period, when it was ever closed.
pub async fn find_period<C: ConnectionTrait>(
    connection: &C,
    period: &str,
) -> Result<Option<period_state::Model>, DbErr> {
    period_state::Entity::find_by_id(period)
        .one(connection)
        .await
}

/// Every period that was ever closed.
pub async fn periods<C: ConnectionTrait>(
    connection: &C,
) -> Result<Vec<period_state::Model>, DbErr> {
    period_state::Entity::find()
        .order_by_asc(period_state::Column::Period)
        .all(connection)
        .await
}

/// Applies a close or a reopening when it is later (by time, then event id) than the one stored;
/// an earlier one arriving late changes nothing.
pub async fn apply_period_event<C: ConnectionTrait>(
    connection: &C,
    update: period_state::Model,
) -> Result<bool, DbErr> {
    let existing = find_period(connection, &update.period).await?;
    if let Some(existing) = &existing {
        let stored = (existing.last_event_at_ms, existing.last_event_id.as_str());
        if stored >= (update.last_event_at_ms, update.last_event_id.as_str()) {
            return Ok(false);
        }
    }
    // a reopening keeps the last frozen cards for the record; they are not served while open
    let mut update = update;
    if let (Some(existing), false) = (&existing, update.closed) {
        update.closed_at_ms = existing.closed_at_ms;
        update.sha256.clone_from(&existing.sha256);
        update
            .frozen_scorecards_json
            .clone_from(&existing.frozen_scorecards_json);
        update.scoring_config.clone_from(&existing.scoring_config);
    }
    use period_state::Column as P;
    period_state::Entity::insert(period_state::ActiveModel::from(update))
        .on_conflict(
            OnConflict::column(P::Period)
                .update_columns([
                    P::Closed,
                    P::ClosedAtMs,
                    P::Sha256,
                    P::FrozenScorecardsJson,
                    P::ScoringConfig,
                    P::ReopenReason,
                    P::LastEventAtMs,
                    P::LastEventId,
                ])
                .to_owned(),
        )
        .exec_without_returning(connection)
        .await?;
    Ok(true)
}

/// Notes the events that carried assignments' milestones; redelivery changes nothing.
pub async fn insert_milestones<C: ConnectionTrait>(
    connection: &C,
    milestones: Vec<milestone::Model>,
) -> Result<(), DbErr> {
    let skip_known = OnConflict::column(milestone::Column::EventId)
        .do_nothing()
        .to_owned();
    insert_rows(
        connection,
        milestones.into_iter().map(milestone::ActiveModel::from),
        Some(skip_known),
    )
    .await?;
    Ok(())
}

/// The milestone events of the given assignments, each assignment's in the order they happened.
pub async fn milestones_of<C: ConnectionTrait>(
    connection: &C,
    assignment_ids: &[String],
) -> Result<std::collections::BTreeMap<String, Vec<String>>, DbErr> {
    let mut rows = Vec::new();
    for list in in_lists(assignment_ids) {
        rows.extend(
            milestone::Entity::find()
                .filter(milestone::Column::AssignmentId.is_in(list))
                .all(connection)
                .await?,
        );
    }
    rows.sort_by(|left, right| {
        (left.occurred_at_ms, &left.event_id).cmp(&(right.occurred_at_ms, &right.event_id))
    });
    let mut by_assignment: std::collections::BTreeMap<String, Vec<String>> =
        std::collections::BTreeMap::new();
    for row in rows {
        by_assignment
            .entry(row.assignment_id)
            .or_default()
            .push(row.event_id);
    }
    Ok(by_assignment)
}

/// Whether the database holds no evaluation facts yet (a rebuild's target must be empty).
pub async fn is_empty<C: ConnectionTrait>(connection: &C) -> Result<bool, DbErr> {
    Ok(assignment::Entity::find().one(connection).await?.is_none()
        && fact::Entity::find().one(connection).await?.is_none()
        && rating_history::Entity::find()
            .one(connection)
            .await?
            .is_none()
        && callback::Entity::find().one(connection).await?.is_none()
        && period_state::Entity::find()
            .one(connection)
            .await?
            .is_none())
}

/// Evaluation's schema.
mod migration {
    use super::{
        assignment, callback, case, case_state, department, fact, milestone, period_state, rating,
        rating_history, reopening,
    };
    use sea_orm_migration::prelude::*;

    /// Evaluation's migrations, oldest first.
    #[derive(Debug)]
    pub struct Migrator;

    impl MigratorTrait for Migrator {
        fn migrations() -> Vec<Box<dyn MigrationTrait>> {
            whistle_platform::db::migrations::with_platform(vec![
                Box::new(CreateEvaluationTables),
                Box::new(CreateFactTable),
                Box::new(CreateRaterAndPeriodTables),
                Box::new(AddAssignmentTallies),
                Box::new(AddCardCells),
            ])
        }
    }

    #[derive(Debug)]
    struct CreateEvaluationTables;

    impl MigrationName for CreateEvaluationTables {
        fn name(&self) -> &str {
            "m20261128_000001_evaluation_tables"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for CreateEvaluationTables {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            use assignment::Column as A;
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
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table(assignment::Entity)
                        .if_not_exists()
                        .col(string(A::AssignmentId).primary_key())
                        .col(string(A::CaseId))
                        .col(string(A::DepartmentCode))
                        .col(string(A::Role))
                        .col(string(A::State))
                        .col(big_integer(A::Version))
                        .col(big_integer(A::WhistledAtMs))
                        .col(big_integer_null(A::AcknowledgeByMs))
                        .col(big_integer_null(A::OnSiteByMs))
                        .col(big_integer_null(A::ResolveByMs))
                        .col(boolean(A::RequiresOnSite))
                        .col(big_integer_null(A::AcknowledgedAtMs))
                        .col(boolean_null(A::AcknowledgedWithinLimit))
                        .col(big_integer_null(A::AcknowledgedVerdictVersion))
                        .col(big_integer_null(A::OnSiteAtMs))
                        .col(boolean_null(A::OnSiteWithinLimit))
                        .col(big_integer_null(A::OnSiteVerdictVersion))
                        .col(big_integer_null(A::ResolvedAtMs))
                        .col(big_integer_null(A::FirstResolvedAtMs))
                        .col(boolean_null(A::ResolvedWithinLimit))
                        .col(big_integer_null(A::ResolvedVerdictVersion))
                        .col(big_integer_null(A::ReturnedAtMs))
                        .col(boolean(A::Deferred))
                        .col(boolean(A::Extended))
                        .col(boolean(A::Escalated))
                        .col(boolean(A::Verified))
                        .col(integer(A::ReopenCount))
                        .col(boolean(A::ReturnAccepted))
                        .col(big_integer(A::UpdatedAtMs))
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .name("evaluation_assignments_department_period")
                        .table(assignment::Entity)
                        .col(A::DepartmentCode)
                        .col(A::WhistledAtMs)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .name("evaluation_assignments_period")
                        .table(assignment::Entity)
                        .col(A::WhistledAtMs)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .name("evaluation_assignments_case")
                        .table(assignment::Entity)
                        .col(A::CaseId)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table(case::Entity)
                        .if_not_exists()
                        .col(string(case::Column::CaseId).primary_key())
                        .col(big_integer(case::Column::FirstSeenAtMs))
                        .col(big_integer_null(case::Column::PassedVerificationAtMs))
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table(reopening::Entity)
                        .if_not_exists()
                        .col(string(reopening::Column::EventId).primary_key())
                        .col(string(reopening::Column::CaseId))
                        .col(big_integer(reopening::Column::ReopenedAtMs))
                        .col(text(reopening::Column::AssignmentIds))
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .name("evaluation_reopenings_case")
                        .table(reopening::Entity)
                        .col(reopening::Column::CaseId)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table(rating::Entity)
                        .if_not_exists()
                        .col(string(rating::Column::AssignmentId))
                        .col(string(rating::Column::Rater))
                        .col(string(rating::Column::RaterId))
                        .col(integer(rating::Column::Score))
                        .col(text(rating::Column::Comment))
                        .col(big_integer(rating::Column::RatedAtMs))
                        .primary_key(
                            Index::create()
                                .col(rating::Column::AssignmentId)
                                .col(rating::Column::Rater)
                                .col(rating::Column::RaterId),
                        )
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table(callback::Entity)
                        .if_not_exists()
                        .col(string(callback::Column::CallbackId).primary_key())
                        .col(string(callback::Column::CaseId))
                        .col(string(callback::Column::Result))
                        .col(text(callback::Column::Note))
                        .col(big_integer(callback::Column::RecordedAtMs))
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .name("evaluation_satisfaction_callbacks_case")
                        .table(callback::Entity)
                        .col(callback::Column::CaseId)
                        .if_not_exists()
                        .to_owned(),
                )
                .await
        }
    }

    /// The facts the producers publish (issue 8): return decisions, verdicts, overdue clocks,
    /// escalations, deferrals and 自办.
    #[derive(Debug)]
    struct CreateFactTable;

    impl MigrationName for CreateFactTable {
        fn name(&self) -> &str {
            "m20261129_000001_evaluation_case_facts"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for CreateFactTable {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            use sea_orm_migration::schema::*;
            manager
                .create_table(
                    Table::create()
                        .table(fact::Entity)
                        .if_not_exists()
                        .col(string(fact::Column::EventId))
                        .col(string(fact::Column::AssignmentId))
                        .col(string(fact::Column::CaseId))
                        .col(string(fact::Column::Kind))
                        .col(boolean(fact::Column::Flag))
                        .col(big_integer(fact::Column::OccurredAtMs))
                        .primary_key(
                            Index::create()
                                .col(fact::Column::EventId)
                                .col(fact::Column::AssignmentId),
                        )
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .name("evaluation_case_facts_case")
                        .table(fact::Entity)
                        .col(fact::Column::CaseId)
                        .if_not_exists()
                        .to_owned(),
                )
                .await
        }
    }

    /// Who may rate (the cases' regions and closed state), the rating history and closed periods
    /// (issue 8).
    #[derive(Debug)]
    struct CreateRaterAndPeriodTables;

    impl MigrationName for CreateRaterAndPeriodTables {
        fn name(&self) -> &str {
            "m20261129_000002_evaluation_raters_and_periods"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for CreateRaterAndPeriodTables {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            use sea_orm_migration::schema::*;
            manager
                .create_table(
                    Table::create()
                        .table(case_state::Entity)
                        .if_not_exists()
                        .col(string(case_state::Column::CaseId).primary_key())
                        .col(string(case_state::Column::StreetCode))
                        .col(string(case_state::Column::CommunityCode))
                        .col(boolean(case_state::Column::Closed))
                        .col(big_integer(case_state::Column::StatusVersion))
                        .to_owned(),
                )
                .await?;
            use rating_history::Column as H;
            manager
                .create_table(
                    Table::create()
                        .table(rating_history::Entity)
                        .if_not_exists()
                        .col(string(H::EventId).primary_key())
                        .col(string(H::AssignmentId))
                        .col(string(H::Rater))
                        .col(string(H::RaterId))
                        .col(integer(H::Score))
                        .col(text(H::Comment))
                        .col(big_integer(H::RatedAtMs))
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .name("evaluation_cooperation_rating_history_assignment")
                        .table(rating_history::Entity)
                        .col(H::AssignmentId)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
            use milestone::Column as M;
            manager
                .create_table(
                    Table::create()
                        .table(milestone::Entity)
                        .if_not_exists()
                        .col(string(M::EventId).primary_key())
                        .col(string(M::AssignmentId))
                        .col(string(M::Kind))
                        .col(big_integer(M::OccurredAtMs))
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .name("evaluation_milestone_events_assignment")
                        .table(milestone::Entity)
                        .col(M::AssignmentId)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
            use period_state::Column as P;
            manager
                .create_table(
                    Table::create()
                        .table(period_state::Entity)
                        .if_not_exists()
                        .col(string(P::Period).primary_key())
                        .col(boolean(P::Closed))
                        .col(big_integer_null(P::ClosedAtMs))
                        .col(string(P::Sha256))
                        .col(text(P::FrozenScorecardsJson))
                        .col(string(P::ScoringConfig))
                        .col(text(P::ReopenReason))
                        .col(big_integer(P::LastEventAtMs))
                        .col(string(P::LastEventId))
                        .to_owned(),
                )
                .await
        }
    }

    /// What each assignment adds to its department's card, so a live card is a sum in the
    /// database. Rows kept before this are decided at start-up (`crate::cards::tally_missing`).
    #[derive(Debug)]
    struct AddAssignmentTallies;

    impl MigrationName for AddAssignmentTallies {
        fn name(&self) -> &str {
            "m20261130_000001_assignment_tallies"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for AddAssignmentTallies {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            use assignment::Column as A;
            use sea_orm_migration::schema::*;
            // one column per statement: SQLite adds one at a time
            for column in [
                big_integer_null(A::TallyBits),
                big_integer(A::ReturnsRejectedCount).default(0).to_owned(),
                big_integer_null(A::DueFromMs),
            ] {
                let mut column = column;
                manager
                    .alter_table(
                        Table::alter()
                            .table(assignment::Entity)
                            .add_column(&mut column)
                            .to_owned(),
                    )
                    .await?;
            }
            manager
                .create_index(
                    Index::create()
                        .name("evaluation_assignments_untallied")
                        .table(assignment::Entity)
                        .col(A::TallyBits)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
            // a card's sums read this index alone, never the table
            manager
                .create_index(
                    Index::create()
                        .name("evaluation_assignments_card")
                        .table(assignment::Entity)
                        .col(A::DepartmentCode)
                        .col(A::WhistledAtMs)
                        .col(A::TallyBits)
                        .col(A::ReturnsRejectedCount)
                        .col(A::DueFromMs)
                        .col(A::CaseId)
                        .if_not_exists()
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            use assignment::Column as A;
            for index in [
                "evaluation_assignments_untallied",
                "evaluation_assignments_card",
            ] {
                manager
                    .drop_index(
                        Index::drop()
                            .name(index)
                            .table(assignment::Entity)
                            .to_owned(),
                    )
                    .await?;
            }
            for column in [A::TallyBits, A::ReturnsRejectedCount, A::DueFromMs] {
                manager
                    .alter_table(
                        Table::alter()
                            .table(assignment::Entity)
                            .drop_column(column)
                            .to_owned(),
                    )
                    .await?;
            }
            Ok(())
        }
    }

    /// Running card figures per department and hour (`crate::cells`), filled from the tallies
    /// kept so far.
    #[derive(Debug)]
    struct AddCardCells;

    impl MigrationName for AddCardCells {
        fn name(&self) -> &str {
            "m20261203_000001_card_cells"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for AddCardCells {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            let connection = manager.get_connection();
            for statement in crate::cells::migration_statements() {
                connection.execute_unprepared(&statement).await?;
            }
            Ok(())
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            let connection = manager.get_connection();
            connection
                .execute_unprepared("DROP INDEX IF EXISTS evaluation_assignments_due_later")
                .await?;
            connection
                .execute_unprepared(&format!("DROP TABLE IF EXISTS {}", crate::cells::TABLE))
                .await?;
            Ok(())
        }
    }
}
