//! Running card figures per department and hour, so a live card reads a few rows per department
//! whatever the history, instead of summing every assignment row of the period.
//!
//! Each time the consumer decides an assignment's tally again (`case_batch::CaseBatch::write`, once
//! per case per batch) it appends the difference (the old tally out, the new one in) as a *delta*
//! row of the department's hour (the hour, in UTC, its assignment was whistled in). Nothing is
//! updated in place, so consumers and replicas never wait on one hot row of the current hour. A
//! compaction ([`compact`], every few seconds) folds each hour's deltas into one *base* row: it
//! deletes the hour's rows it can see, with `RETURNING`, and writes their sum, in one transaction;
//! a delta committed meanwhile is left for the next round. A card for a period is the sum of its
//! hours' rows (≤ 24 × 31 base rows per department for a month, plus recent deltas).
//!
//! Periods start at local midnights at a whole-hour UTC offset, so every period is a union of
//! UTC hours and the rows need no rebuild when the configured offset changes.
//!
//! 按期办结率's denominator is the only count that depends on when a card is read: the cells keep
//! how many assignments *can* become due (`due_set`), and a read subtracts those of the period
//! not due yet, found by the index on `due_from_ms` (only open assignments have one in the
//! future).

use crate::cards::query;
use crate::domain::{CardSums, PeriodBounds, Tally, TallyBit};
use crate::storage::assignment;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, DbErr, QueryResult, TransactionTrait};
use std::collections::BTreeMap;

pub const TABLE: &str = "evaluation_card_cells";
const HOUR_MS: i64 = 3_600_000;
/// Hours compacted per transaction.
const COMPACT_GROUPS: u64 = 256;

/// The UTC hour `at_ms` lies in, as the instant it starts.
pub fn hour_of(at_ms: i64) -> i64 {
    at_ms - at_ms.rem_euclid(HOUR_MS)
}

fn bit_column(bit: TallyBit) -> String {
    format!("bit_{}", bit.position())
}

/// The count columns of a row, in the order [`Cell::values`] gives them.
fn count_columns() -> Vec<String> {
    let mut columns = vec![
        "whistled".to_string(),
        "returns_rejected".to_string(),
        "due_set".to_string(),
    ];
    columns.extend(TallyBit::ALL.into_iter().map(bit_column));
    columns
}

/// What some assignments add to one department's hour (a difference when it is a delta).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cell {
    pub whistled: i64,
    pub returns_rejected: i64,
    /// Assignments that are or will be due for resolution (`Tally::due_from_ms` set).
    pub due_set: i64,
    pub bits: [i64; TallyBit::ALL.len()],
}

impl Cell {
    /// Adds (`sign` 1) or takes out (`sign` -1) one assignment's tally.
    pub fn count(&mut self, tally: &Tally, sign: i64) {
        self.whistled += sign;
        self.returns_rejected += sign * tally.returns_rejected;
        self.due_set += sign * i64::from(tally.due_from_ms.is_some());
        for bit in TallyBit::ALL {
            if tally.has(bit) {
                self.bits[bit.position() as usize] += sign;
            }
        }
    }

    fn merge(&mut self, other: &Cell) {
        self.whistled += other.whistled;
        self.returns_rejected += other.returns_rejected;
        self.due_set += other.due_set;
        for (mine, theirs) in self.bits.iter_mut().zip(other.bits) {
            *mine += theirs;
        }
    }

    fn is_zero(&self) -> bool {
        *self == Cell::default()
    }

    fn values(&self) -> Vec<i64> {
        let mut values = vec![self.whistled, self.returns_rejected, self.due_set];
        values.extend(self.bits);
        values
    }

    fn read(row: &QueryResult) -> Result<Self, DbErr> {
        let get = |name: &str| -> Result<i64, DbErr> {
            let value: Option<i64> = row.try_get("", name)?;
            Ok(value.unwrap_or_default())
        };
        let mut cell = Cell {
            whistled: get("whistled")?,
            returns_rejected: get("returns_rejected")?,
            due_set: get("due_set")?,
            ..Cell::default()
        };
        for bit in TallyBit::ALL {
            cell.bits[bit.position() as usize] = get(&bit_column(bit))?;
        }
        Ok(cell)
    }
}

/// Differences per (department, hour), as a consumer transaction collects them.
pub type Deltas = BTreeMap<(String, i64), Cell>;

/// Appends the non-zero deltas, one row each, in the caller's transaction.
pub async fn record<C: ConnectionTrait>(connection: &C, deltas: &Deltas) -> Result<(), DbErr> {
    insert(
        connection,
        deltas.iter().filter(|(_, cell)| !cell.is_zero()),
        false,
    )
    .await
}

async fn insert<'a, C: ConnectionTrait>(
    connection: &C,
    cells: impl Iterator<Item = (&'a (String, i64), &'a Cell)>,
    base: bool,
) -> Result<(), DbErr> {
    let mut columns = vec![
        Alias::new("department_code"),
        Alias::new("hour_ms"),
        Alias::new("base"),
    ];
    columns.extend(count_columns().into_iter().map(Alias::new));
    let mut statement = Query::insert();
    statement.into_table(Alias::new(TABLE)).columns(columns);
    let mut any = false;
    for ((department_code, hour_ms), cell) in cells {
        let mut values: Vec<Expr> = vec![
            Expr::value(department_code.clone()),
            Expr::value(*hour_ms),
            Expr::value(base),
        ];
        values.extend(cell.values().into_iter().map(Expr::value));
        statement.values_panic(values);
        any = true;
    }
    if !any {
        return Ok(());
    }
    let statement = connection.get_database_backend().build(&statement);
    connection.execute_raw(statement).await?;
    Ok(())
}

/// Every department's sums over the period's hours (only departments whistled in it; one
/// department's with `department_code`), as of `as_of_ms`.
pub async fn sums<C: ConnectionTrait>(
    connection: &C,
    department_code: Option<&str>,
    bounds: PeriodBounds,
    as_of_ms: i64,
) -> Result<BTreeMap<String, CardSums>, DbErr> {
    let mut select = Query::select();
    select
        .from(Alias::new(TABLE))
        .column(Alias::new("department_code"))
        .and_where(Expr::col(Alias::new("hour_ms")).gte(hour_of(bounds.start_ms)))
        .and_where(Expr::col(Alias::new("hour_ms")).lt(bounds.end_ms))
        .group_by_col(Alias::new("department_code"));
    for column in count_columns() {
        select.expr_as(
            Expr::cust(format!("CAST(SUM({column}) AS BIGINT)")),
            Alias::new(column),
        );
    }
    if let Some(department_code) = department_code {
        select.and_where(Expr::col(Alias::new("department_code")).eq(department_code));
    }
    let not_due_yet = not_due_yet(connection, department_code, bounds, as_of_ms).await?;
    let mut sums = BTreeMap::new();
    for row in query(connection, &select).await? {
        let department: String = row.try_get("", "department_code")?;
        let cell = Cell::read(&row)?;
        if cell.whistled <= 0 {
            continue;
        }
        let count = |value: i64| u64::try_from(value).unwrap_or_default();
        let later = not_due_yet.get(&department).copied().unwrap_or_default();
        let mut card = CardSums {
            whistled: count(cell.whistled),
            returns_rejected: count(cell.returns_rejected),
            due: count(cell.due_set - later),
            ..CardSums::default()
        };
        for (sum, value) in card.bits.iter_mut().zip(cell.bits) {
            *sum = count(value);
        }
        sums.insert(department, card);
    }
    Ok(sums)
}

/// Per department, the period's assignments that will be due for resolution but are not yet at
/// `as_of_ms` (open ones whose limit lies ahead): a few rows, read through the index on
/// `due_from_ms`. The other conditions are written so that SQLite cannot prefer the index by
/// department and whistle time instead (it would, without statistics, and read the whole period);
/// the rows are counted here for the same reason (a `GROUP BY` makes it prefer that index too).
async fn not_due_yet<C: ConnectionTrait>(
    connection: &C,
    department_code: Option<&str>,
    bounds: PeriodBounds,
    as_of_ms: i64,
) -> Result<BTreeMap<String, i64>, DbErr> {
    use assignment::Column as A;
    let whistled_at = || Expr::col(A::WhistledAtMs).add(0);
    let mut select = Query::select();
    select
        .from(assignment::Entity)
        .column(A::DepartmentCode)
        .and_where(Expr::col(A::DueFromMs).gt(as_of_ms))
        .and_where(whistled_at().gte(bounds.start_ms))
        .and_where(whistled_at().lt(bounds.end_ms));
    let mut later = BTreeMap::new();
    for row in query(connection, &select).await? {
        let department: String = row.try_get("", "department_code")?;
        if department_code.is_none_or(|wanted| wanted == department) {
            *later.entry(department).or_default() += 1;
        }
    }
    Ok(later)
}

/// Whether the period is made of whole UTC hours, so the cells can answer for it.
pub fn covers(bounds: PeriodBounds) -> bool {
    bounds.start_ms.rem_euclid(HOUR_MS) == 0 && bounds.end_ms.rem_euclid(HOUR_MS) == 0
}

/// Folds every hour's deltas into one base row, a batch of hours per transaction; returns how
/// many hours were folded. Safe beside consumers and other replicas' compactions: each hour's
/// rows are deleted and summed by one statement, so a row is summed by at most one compaction,
/// and a delta committed after it stays for the next.
pub async fn compact(db: &sea_orm::DatabaseConnection) -> Result<u64, DbErr> {
    let mut folded = 0;
    loop {
        let transaction = db.begin().await?;
        let pending = Query::select()
            .distinct()
            .from(Alias::new(TABLE))
            .column(Alias::new("department_code"))
            .column(Alias::new("hour_ms"))
            .and_where(Expr::cust("NOT base"))
            // one order for every compaction, so two replicas' never wait on each other in a cycle
            .order_by(Alias::new("department_code"), Order::Asc)
            .order_by(Alias::new("hour_ms"), Order::Asc)
            .limit(COMPACT_GROUPS)
            .to_owned();
        let groups = query(&transaction, &pending).await?;
        if groups.is_empty() {
            transaction.commit().await?;
            return Ok(folded);
        }
        let mut bases = BTreeMap::new();
        for group in &groups {
            let department_code: String = group.try_get("", "department_code")?;
            let hour_ms: i64 = group.try_get("", "hour_ms")?;
            let delete = Query::delete()
                .from_table(Alias::new(TABLE))
                .and_where(Expr::col(Alias::new("department_code")).eq(department_code.as_str()))
                .and_where(Expr::col(Alias::new("hour_ms")).eq(hour_ms))
                .returning(Query::returning().columns(count_columns().into_iter().map(Alias::new)))
                .to_owned();
            let statement = transaction.get_database_backend().build(&delete);
            let mut sum = Cell::default();
            for row in transaction.query_all_raw(statement).await? {
                sum.merge(&Cell::read(&row)?);
            }
            if !sum.is_zero() {
                bases.insert((department_code, hour_ms), sum);
            }
        }
        insert(&transaction, bases.iter(), true).await?;
        transaction.commit().await?;
        folded += groups.len() as u64;
    }
}

/// How often [`compact_continually`] folds the deltas.
pub const COMPACT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Compacts now and then every [`COMPACT_EVERY`] until `shutdown`.
pub async fn compact_continually(
    db: sea_orm::DatabaseConnection,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        if let Err(error) = compact(&db).await {
            // nothing is lost: the deltas stay and are summed by every read until folded
            tracing::warn!(%error, "card cells not compacted");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(COMPACT_EVERY) => {}
        }
    }
}

/// Replaces every row by base rows summed from the tallies the assignments keep now (what the
/// migration did for a database kept before the cells existed), in the caller's transaction. Not
/// for use while consumers write: a delta committed between the two statements would be lost.
pub async fn rebuild<C: ConnectionTrait>(connection: &C) -> Result<(), DbErr> {
    connection
        .execute_unprepared(&format!("DELETE FROM {TABLE}"))
        .await?;
    connection.execute_unprepared(&fill_statement()).await?;
    Ok(())
}

/// Base rows for every tallied assignment, one per department and hour.
fn fill_statement() -> String {
    let mut sums = vec![
        "COUNT(*)".to_string(),
        "CAST(SUM(returns_rejected_count) AS BIGINT)".to_string(),
        "CAST(SUM(CASE WHEN due_from_ms IS NULL THEN 0 ELSE 1 END) AS BIGINT)".to_string(),
    ];
    sums.extend(TallyBit::ALL.into_iter().map(crate::cards::bit_sum));
    let hour = format!("whistled_at_ms - (whistled_at_ms % {HOUR_MS})");
    format!(
        "INSERT INTO {TABLE} (department_code, hour_ms, base, {}) \
         SELECT department_code, {hour}, TRUE, {} FROM evaluation_assignments \
         WHERE tally_bits IS NOT NULL GROUP BY department_code, {hour}",
        count_columns().join(", "),
        sums.join(", ")
    )
}

/// The statements that create the table and fill it from the tallies kept so far (as base rows).
pub fn migration_statements() -> Vec<String> {
    let mut columns: Vec<String> = vec![
        "department_code VARCHAR NOT NULL".into(),
        "hour_ms BIGINT NOT NULL".into(),
        "base BOOLEAN NOT NULL".into(),
    ];
    columns.extend(
        count_columns()
            .iter()
            .map(|column| format!("{column} BIGINT NOT NULL")),
    );
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} ({})",
            columns.join(", ")
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {TABLE}_department ON {TABLE} (department_code, hour_ms)"
        ),
        format!("CREATE INDEX IF NOT EXISTS {TABLE}_hour ON {TABLE} (hour_ms)"),
        // what the compaction looks for: only deltas, a handful at any time
        format!(
            "CREATE INDEX IF NOT EXISTS {TABLE}_deltas ON {TABLE} (department_code, hour_ms) WHERE NOT base"
        ),
        // open assignments whose resolution limit lies ahead (`not_due_yet`)
        "CREATE INDEX IF NOT EXISTS evaluation_assignments_due_later ON evaluation_assignments \
         (due_from_ms, department_code, whistled_at_ms)"
            .to_string(),
        fill_statement(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hour_starts_at_a_whole_utc_hour() {
        assert_eq!(hour_of(0), 0);
        assert_eq!(hour_of(HOUR_MS - 1), 0);
        assert_eq!(hour_of(HOUR_MS), HOUR_MS);
        assert_eq!(hour_of(-1), -HOUR_MS);
    }

    #[test]
    fn a_changed_tally_is_the_new_one_less_the_old_one() {
        let old = Tally {
            bits: 1 << TallyBit::Acknowledged.position(),
            returns_rejected: 0,
            due_from_ms: Some(10),
        };
        let new = Tally {
            bits: (1 << TallyBit::Acknowledged.position())
                | (1 << TallyBit::ResolutionNumerator.position()),
            returns_rejected: 2,
            due_from_ms: Some(i64::MIN),
        };
        let mut delta = Cell::default();
        delta.count(&old, -1);
        delta.count(&new, 1);
        let mut expected = Cell {
            returns_rejected: 2,
            ..Cell::default()
        };
        expected.bits[TallyBit::ResolutionNumerator.position() as usize] = 1;
        assert_eq!(delta, expected);
        let mut first = Cell::default();
        first.count(&old, 1);
        first.merge(&delta);
        let mut whole = Cell::default();
        whole.count(&new, 1);
        assert_eq!(first, whole);
    }
}
