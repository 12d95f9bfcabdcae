//! Live cards as sums in the database. Every assignment row keeps its tally (what it adds to its
//! department's card, `domain::Tally`, decided from its facts when they change), so a card is one
//! aggregate over the period's rows plus the few ratings and call-backs of the period, instead of
//! loading and deciding every assignment and every fact of the period on every read. The result is
//! the same as `domain::scorecard` over the decided assignments (`tests/live_cards.rs` holds the
//! two side by side over a generated history).

use crate::domain::{
    self, CallbackResult, CardSums, CooperationRating, PeriodBounds, SatisfactionCallback,
    SatisfactionScope, ScorecardFigures, Scoring, TallyBit,
};
use crate::storage::{self, assignment, callback, case_state, fact, rating, rating_history};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Func, Query, SelectStatement, SimpleExpr};
use sea_orm::{ConnectionTrait, DbErr, EntityName, QueryResult, TransactionTrait};
use std::collections::{BTreeMap, BTreeSet};

/// Cases decided again per transaction when tallies are filled in at start-up.
const TALLY_BATCH: u64 = 200;

/// Every department's live figures for the period (only departments whistled in it), as of
/// `as_of_ms`; one department's with `department_code`, and only cases lying in `scope` (a street
/// or community code prefix) with it.
pub async fn live_figures<C: ConnectionTrait>(
    connection: &C,
    department_code: Option<&str>,
    bounds: PeriodBounds,
    scope: Option<&str>,
    as_of_ms: i64,
    scoring: &Scoring,
) -> Result<BTreeMap<String, ScorecardFigures>, DbErr> {
    let sums = match scope {
        // the running figures per hour (`crate::cells`): a few rows per department
        None if crate::cells::covers(bounds) => {
            crate::cells::sums(connection, department_code, bounds, as_of_ms).await?
        }
        // a street's or community's card sums the rows of its cases
        _ => card_sums(connection, department_code, bounds, scope, as_of_ms).await?,
    };
    let mut ratings = ratings_in(connection, department_code, bounds, scope).await?;
    let mut callbacks = callbacks_in(
        connection,
        department_code,
        bounds,
        scope,
        scoring.satisfaction_scope,
    )
    .await?;
    Ok(sums
        .into_iter()
        .map(|(department, sums)| {
            let ratings = ratings.remove(&department).unwrap_or_default();
            let callbacks = callbacks.remove(&department).unwrap_or_default();
            let figures = domain::figures(&sums, &ratings, &callbacks, scoring);
            (department, figures)
        })
        .collect())
}

/// The assignments of the period (of one department, of cases in `scope`).
fn period_filter(
    select: &mut SelectStatement,
    department_code: Option<&str>,
    bounds: PeriodBounds,
    scope: Option<&str>,
) {
    use assignment::Column as A;
    select
        .and_where(Expr::col((assignment::Entity, A::WhistledAtMs)).gte(bounds.start_ms))
        .and_where(Expr::col((assignment::Entity, A::WhistledAtMs)).lt(bounds.end_ms));
    if let Some(department_code) = department_code {
        select.and_where(Expr::col((assignment::Entity, A::DepartmentCode)).eq(department_code));
    }
    if let Some(scope) = scope {
        select.and_where(Expr::col((assignment::Entity, A::CaseId)).in_subquery(cases_in(scope)));
    }
}

/// The cases lying in `region_code` (`domain::CaseRegion::lies_in`): their community's code, or
/// their street's when the community is not known, begins with it.
fn cases_in(region_code: &str) -> SelectStatement {
    use case_state::Column as S;
    let begins_with = |column: S| -> SimpleExpr {
        let prefix = Func::cust(Alias::new("substr"))
            .arg(Expr::col(column))
            .arg(1)
            .arg(i32::try_from(region_code.chars().count()).unwrap_or(i32::MAX));
        SimpleExpr::from(prefix).eq(region_code)
    };
    Query::select()
        .column(S::CaseId)
        .from(case_state::Entity)
        .cond_where(
            Expr::col(S::CommunityCode)
                .ne("")
                .and(begins_with(S::CommunityCode))
                .or(Expr::col(S::CommunityCode)
                    .eq("")
                    .and(Expr::col(S::StreetCode).ne(""))
                    .and(begins_with(S::StreetCode))),
        )
        .to_owned()
}

/// The rows of a `SELECT` built for the connection's database.
pub(crate) async fn query<C: ConnectionTrait>(
    connection: &C,
    select: &SelectStatement,
) -> Result<Vec<QueryResult>, DbErr> {
    let statement = connection.get_database_backend().build(select);
    connection.query_all_raw(statement).await
}

/// How many of the summed assignment rows have `bit` in their tally (integers only are written
/// into the statement; cast so PostgreSQL answers BIGINT, not NUMERIC).
pub(crate) fn bit_sum(bit: TallyBit) -> String {
    format!(
        "CAST(SUM((tally_bits >> {}) & 1) AS BIGINT)",
        bit.position()
    )
}

/// The sums of the tallies per department, over the period's assignment rows.
pub async fn card_sums<C: ConnectionTrait>(
    connection: &C,
    department_code: Option<&str>,
    bounds: PeriodBounds,
    scope: Option<&str>,
    as_of_ms: i64,
) -> Result<BTreeMap<String, CardSums>, DbErr> {
    use assignment::Column as A;
    // integers only are written into the statement (bit positions and the moment); the sums are
    // cast so PostgreSQL answers BIGINT, not NUMERIC
    let mut select = Query::select();
    select
        .from(assignment::Entity)
        .column((assignment::Entity, A::DepartmentCode))
        .expr_as(Expr::cust("COUNT(*)"), Alias::new("whistled"))
        .expr_as(
            Expr::cust("CAST(SUM(returns_rejected_count) AS BIGINT)"),
            Alias::new("returns_rejected"),
        )
        .expr_as(
            Expr::cust(format!(
                "CAST(SUM(CASE WHEN due_from_ms <= {as_of_ms} THEN 1 ELSE 0 END) AS BIGINT)"
            )),
            Alias::new("due"),
        );
    for bit in TallyBit::ALL {
        let position = bit.position();
        select.expr_as(
            Expr::cust(bit_sum(bit)),
            Alias::new(format!("bit_{position}")),
        );
    }
    period_filter(&mut select, department_code, bounds, scope);
    select.group_by_col((assignment::Entity, A::DepartmentCode));
    let count = |row: &QueryResult, name: &str| -> Result<u64, DbErr> {
        let value: Option<i64> = row.try_get("", name)?;
        Ok(u64::try_from(value.unwrap_or_default()).unwrap_or_default())
    };
    let mut sums = BTreeMap::new();
    for row in query(connection, &select).await? {
        let department: String = row.try_get("", "department_code")?;
        let mut card = CardSums {
            whistled: count(&row, "whistled")?,
            returns_rejected: count(&row, "returns_rejected")?,
            due: count(&row, "due")?,
            ..CardSums::default()
        };
        for bit in TallyBit::ALL {
            let position = bit.position();
            card.bits[position as usize] = count(&row, &format!("bit_{position}"))?;
        }
        sums.insert(department, card);
    }
    Ok(sums)
}

/// The current ratings of the period's assignments, per department.
async fn ratings_in<C: ConnectionTrait>(
    connection: &C,
    department_code: Option<&str>,
    bounds: PeriodBounds,
    scope: Option<&str>,
) -> Result<BTreeMap<String, Vec<CooperationRating>>, DbErr> {
    use assignment::Column as A;
    let mut select = Query::select();
    select
        .column((assignment::Entity, A::DepartmentCode))
        .column((rating::Entity, rating::Column::AssignmentId))
        .column((rating::Entity, rating::Column::Score))
        .from(rating::Entity)
        .inner_join(
            assignment::Entity,
            Expr::col((assignment::Entity, A::AssignmentId))
                .equals((rating::Entity, rating::Column::AssignmentId)),
        );
    period_filter(&mut select, department_code, bounds, scope);
    let mut ratings: BTreeMap<String, Vec<CooperationRating>> = BTreeMap::new();
    for row in query(connection, &select).await? {
        let score: i32 = row.try_get("", "score")?;
        ratings
            .entry(row.try_get("", "department_code")?)
            .or_default()
            .push(CooperationRating {
                assignment_id: row.try_get("", "assignment_id")?,
                score: u8::try_from(score).unwrap_or_default(),
            });
    }
    Ok(ratings)
}

/// The call-backs that count for each department (`domain::callbacks_counted`): on cases where
/// one of its period's assignments counts for satisfaction under `satisfaction_scope`, once per
/// call-back id.
async fn callbacks_in<C: ConnectionTrait>(
    connection: &C,
    department_code: Option<&str>,
    bounds: PeriodBounds,
    scope: Option<&str>,
    satisfaction_scope: SatisfactionScope,
) -> Result<BTreeMap<String, Vec<SatisfactionCallback>>, DbErr> {
    use assignment::Column as A;
    let position = TallyBit::satisfaction(satisfaction_scope).position();
    let mut select = Query::select();
    select
        .distinct()
        .column((assignment::Entity, A::DepartmentCode))
        .column((callback::Entity, callback::Column::CallbackId))
        .column((callback::Entity, callback::Column::CaseId))
        .column((callback::Entity, callback::Column::Result))
        .from(callback::Entity)
        .inner_join(
            assignment::Entity,
            Expr::col((assignment::Entity, A::CaseId))
                .equals((callback::Entity, callback::Column::CaseId)),
        )
        .and_where(Expr::cust(format!(
            "((evaluation_assignments.tally_bits >> {position}) & 1) = 1"
        )));
    period_filter(&mut select, department_code, bounds, scope);
    let mut callbacks: BTreeMap<String, Vec<SatisfactionCallback>> = BTreeMap::new();
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    for row in query(connection, &select).await? {
        let department: String = row.try_get("", "department_code")?;
        let callback_id: String = row.try_get("", "callback_id")?;
        if !seen.insert((department.clone(), callback_id.clone())) {
            continue;
        }
        let result: String = row.try_get("", "result")?;
        let result = CallbackResult::parse(&result).ok_or_else(|| {
            DbErr::Custom(format!(
                "call-back {callback_id} has unknown result {result:?}"
            ))
        })?;
        callbacks
            .entry(department)
            .or_default()
            .push(SatisfactionCallback {
                callback_id,
                case_id: row.try_get("", "case_id")?,
                result,
            });
    }
    Ok(callbacks)
}

/// Per department, how many events about its period's assignments happened after `closed_at_ms`
/// (a frozen card's `after_close`): milestones reached later, facts published later (verdicts,
/// decisions, clocks), ratings given and call-backs recorded later.
pub async fn after_close<C: ConnectionTrait>(
    connection: &C,
    department_code: Option<&str>,
    bounds: PeriodBounds,
    closed_at_ms: i64,
) -> Result<BTreeMap<String, u64>, DbErr> {
    use assignment::Column as A;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut add = |rows: Vec<QueryResult>| -> Result<(), DbErr> {
        for row in rows {
            let later: Option<i64> = row.try_get("", "later")?;
            *counts
                .entry(row.try_get("", "department_code")?)
                .or_default() += u64::try_from(later.unwrap_or_default()).unwrap_or_default();
        }
        Ok(())
    };
    let later = |column: &str| format!("CASE WHEN {column} > {closed_at_ms} THEN 1 ELSE 0 END");

    let mut milestones = Query::select();
    milestones
        .from(assignment::Entity)
        .column((assignment::Entity, A::DepartmentCode))
        .expr_as(
            Expr::cust(format!(
                "CAST(SUM({} + {} + {} + {}) AS BIGINT)",
                later("acknowledged_at_ms"),
                later("on_site_at_ms"),
                later("resolved_at_ms"),
                later("returned_at_ms")
            )),
            Alias::new("later"),
        )
        .group_by_col((assignment::Entity, A::DepartmentCode));
    period_filter(&mut milestones, department_code, bounds, None);
    add(query(connection, &milestones).await?)?;

    // facts and ratings name their assignment
    for (table, assignment_column, at_column) in [
        (
            Alias::new(fact::Entity.table_name()),
            "assignment_id",
            "occurred_at_ms",
        ),
        (
            Alias::new(rating_history::Entity.table_name()),
            "assignment_id",
            "rated_at_ms",
        ),
    ] {
        let mut select = Query::select();
        select
            .from(table.clone())
            .column((assignment::Entity, A::DepartmentCode))
            .expr_as(Expr::cust("COUNT(*)"), Alias::new("later"))
            .inner_join(
                assignment::Entity,
                Expr::col((assignment::Entity, A::AssignmentId))
                    .equals((table.clone(), Alias::new(assignment_column))),
            )
            .and_where(Expr::col((table, Alias::new(at_column))).gt(closed_at_ms))
            .group_by_col((assignment::Entity, A::DepartmentCode));
        period_filter(&mut select, department_code, bounds, None);
        add(query(connection, &select).await?)?;
    }

    // call-backs name their case: once per department whose period holds the case
    let mut cases = Query::select();
    cases
        .distinct()
        .from(assignment::Entity)
        .column((assignment::Entity, A::DepartmentCode))
        .column((assignment::Entity, A::CaseId));
    period_filter(&mut cases, department_code, bounds, None);
    let period_cases = Alias::new("period_cases");
    let mut callbacks = Query::select();
    callbacks
        .from(callback::Entity)
        .column((period_cases.clone(), A::DepartmentCode))
        .expr_as(Expr::cust("COUNT(*)"), Alias::new("later"))
        .join_subquery(
            sea_orm::sea_query::JoinType::InnerJoin,
            cases,
            period_cases.clone(),
            Expr::col((period_cases.clone(), A::CaseId))
                .equals((callback::Entity, callback::Column::CaseId)),
        )
        .and_where(Expr::col((callback::Entity, callback::Column::RecordedAtMs)).gt(closed_at_ms))
        .group_by_col((period_cases, A::DepartmentCode));
    add(query(connection, &callbacks).await?)?;
    Ok(counts)
}

/// Decides the tallies of rows kept before tallies existed, a batch of cases per transaction;
/// returns how many cases were decided. Run at start-up (`now_ms`) before the cards are served.
pub async fn tally_missing(db: &sea_orm::DatabaseConnection, now_ms: i64) -> Result<u64, DbErr> {
    let mut decided = 0;
    loop {
        let transaction = db.begin().await?;
        let cases = storage::untallied_cases(&transaction, TALLY_BATCH).await?;
        if cases.is_empty() {
            transaction.commit().await?;
            return Ok(decided);
        }
        let keys: Vec<String> = cases
            .iter()
            .map(|case_id| storage::case_lock_key(case_id))
            .collect();
        whistle_platform::db::lock_keys(&transaction, keys.iter().map(String::as_str)).await?;
        let mut batch = crate::case_batch::CaseBatch::default();
        batch.hold(crate::case_batch::CaseBatch::read(&transaction, &cases).await?);
        batch.retally_all();
        batch.write(&transaction, now_ms).await?;
        transaction.commit().await?;
        decided += cases.len() as u64;
    }
}
