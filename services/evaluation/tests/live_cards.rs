//! Live cards summed in the database (`cards::live_figures`, over the tallies the consumer keeps
//! per assignment) against the same cards decided in memory from every assignment and fact of the
//! period (`domain::scorecard`), over a generated history applied out of order with redeliveries,
//! with ratings and call-backs: every department, both periods, every kind of scope, several
//! moments and both satisfaction scopes; on SQLite and on PostgreSQL. Then the tallies are erased,
//! as in a database kept before they existed, and filled in again at start-up
//! (`cards::tally_missing`): the cards are the same. Unscoped cards are read from the running
//! figures per department and hour (`cells`): with half the history folded into base rows and the
//! rest as deltas, folded again, and rebuilt from the tallies as the migration does.

mod common;

use common::batches::{Path, apply_in_batches};

use common::history::{self, DAY, NOVEMBER, NOW, OCTOBER};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use std::collections::{BTreeMap, BTreeSet};
use whistle_evaluation::domain::{
    self, Period, SatisfactionScope, ScorecardFigures, Scoring, UtcOffset,
};
use whistle_evaluation::storage::{self, Migrator};
use whistle_evaluation::{cards, cells};
use whistle_platform::ManualClock;
use whistle_platform::clock::{from_millis, to_proto_timestamp};
use whistle_platform::envelope::{self, Event, Payload};
use whistle_platform::testing::TestPostgres;
use whistle_proto::events::{EvaluationCooperationRated, EvaluationSatisfactionRecorded};

/// The history, shuffled with redeliveries, and ratings and call-backs on some of its cases.
fn history() -> Vec<Event> {
    let cases = history::generate(160, 7);
    let mut events: Vec<Event> = history::shuffled_with_redeliveries(&cases, 10, 7)
        .into_iter()
        .map(|(event, _)| event)
        .collect();
    let clock = ManualClock::new(from_millis(NOW));
    for (index, case) in cases.iter().enumerate() {
        let community = &case.community;
        for (position, (assignment_id, _)) in case.assignments.iter().enumerate() {
            if (index + position) % 3 == 0 {
                events.push(envelope::new_event(
                    &clock,
                    "whistle-evaluation",
                    &case.case_id,
                    0,
                    None,
                    Payload::EvaluationCooperationRated(EvaluationCooperationRated {
                        assignment_id: assignment_id.clone(),
                        rater: "community".into(),
                        rater_id: community.clone(),
                        score: 1 + (index % 5) as u32,
                        comment: String::new(),
                        rated_at: Some(to_proto_timestamp(from_millis(NOW - DAY))),
                    }),
                ));
            }
        }
        if case.closed && index % 3 != 0 {
            events.push(envelope::new_event(
                &clock,
                "whistle-evaluation",
                &case.case_id,
                0,
                None,
                Payload::EvaluationSatisfactionRecorded(EvaluationSatisfactionRecorded {
                    callback_id: format!("callback-{index}"),
                    result: ["satisfied", "basically_satisfied", "dissatisfied"][index % 3].into(),
                    note: String::new(),
                    recorded_at: Some(to_proto_timestamp(from_millis(NOW - DAY))),
                }),
            ));
        }
    }
    events
}

/// The cards decided in memory from every assignment and fact of the period.
async fn decided(
    db: &DatabaseConnection,
    period: Period,
    scope: Option<&str>,
    as_of_ms: i64,
    scoring: &Scoring,
) -> BTreeMap<String, ScorecardFigures> {
    let bounds = period.bounds(UtcOffset::from_hours(8).expect("offset"));
    let mut assignments = storage::assignments_whistled_in(db, None, bounds)
        .await
        .expect("assignments");
    let case_ids: Vec<String> = assignments
        .iter()
        .map(|assignment| assignment.case_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if let Some(scope) = scope {
        let regions = storage::case_regions(db, &case_ids).await.expect("regions");
        assignments.retain(|assignment| {
            regions
                .get(&assignment.case_id)
                .is_some_and(|region| region.lies_in(scope))
        });
    }
    let assignment_ids: Vec<String> = assignments
        .iter()
        .map(|assignment| assignment.assignment_id.clone())
        .collect();
    let ratings = storage::ratings_of(db, &assignment_ids)
        .await
        .expect("ratings");
    let callbacks = storage::callbacks_on(db, &case_ids)
        .await
        .expect("callbacks");
    let mut by_department: BTreeMap<String, Vec<domain::AssignmentFacts>> = BTreeMap::new();
    for assignment in assignments {
        by_department
            .entry(assignment.department_code.clone())
            .or_default()
            .push(assignment);
    }
    by_department
        .into_iter()
        .map(|(department, assignments)| {
            let figures = domain::scorecard(&assignments, &ratings, &callbacks, as_of_ms, scoring);
            (department, figures)
        })
        .collect()
}

/// Each department's `after_close`, counted in memory: milestones of its period's assignments
/// reached after `closed_at_ms`, and facts, ratings and call-backs on them recorded after it.
async fn after_close_decided(
    db: &DatabaseConnection,
    period: Period,
    closed_at_ms: i64,
) -> BTreeMap<String, u64> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    use whistle_evaluation::storage::{callback, fact, rating_history};
    let bounds = period.bounds(UtcOffset::from_hours(8).expect("offset"));
    let assignments = storage::assignments_whistled_in(db, None, bounds)
        .await
        .expect("assignments");
    let facts = fact::Entity::find()
        .filter(fact::Column::OccurredAtMs.gt(closed_at_ms))
        .all(db)
        .await
        .expect("facts");
    let ratings = rating_history::Entity::find()
        .filter(rating_history::Column::RatedAtMs.gt(closed_at_ms))
        .all(db)
        .await
        .expect("ratings");
    let callbacks = callback::Entity::find()
        .filter(callback::Column::RecordedAtMs.gt(closed_at_ms))
        .all(db)
        .await
        .expect("callbacks");
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut cases: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for assignment in &assignments {
        let later = [
            assignment.acknowledged_at_ms,
            assignment.on_site_at_ms,
            assignment.resolved_at_ms,
            assignment.returned_at_ms,
        ]
        .into_iter()
        .flatten()
        .filter(|at_ms| *at_ms > closed_at_ms)
        .count()
            + facts
                .iter()
                .filter(|fact| fact.assignment_id == assignment.assignment_id)
                .count()
            + ratings
                .iter()
                .filter(|rating| rating.assignment_id == assignment.assignment_id)
                .count();
        *counts
            .entry(assignment.department_code.clone())
            .or_default() += later as u64;
        cases
            .entry(assignment.department_code.clone())
            .or_default()
            .insert(assignment.case_id.clone());
    }
    for (department, cases) in cases {
        *counts.entry(department).or_default() += callbacks
            .iter()
            .filter(|callback| cases.contains(&callback.case_id))
            .count() as u64;
    }
    counts
}

/// Every card both ways; returns how many were compared.
async fn compare_every_card(db: &DatabaseConnection) -> usize {
    let offset = UtcOffset::from_hours(8).expect("offset");
    let scopes = [
        None,
        Some("4203"),
        Some(history::STREET),
        Some(history::COMMUNITIES[0]),
        Some(history::COMMUNITIES[2]),
        Some("4204"),
    ];
    let moments = [OCTOBER + 10 * DAY, NOVEMBER + 5 * DAY, NOW];
    let scorings = [
        Scoring::default(),
        Scoring {
            satisfaction_scope: SatisfactionScope::Resolvers,
            minimum_assignments: 5,
            ..Scoring::default()
        },
    ];
    let mut compared = 0;
    for label in ["2026-10", "2026-11", "2026-Q4"] {
        let period = Period::parse(label).expect("period");
        for scope in scopes {
            for as_of_ms in moments {
                for scoring in &scorings {
                    let summed = cards::live_figures(
                        db,
                        None,
                        period.bounds(offset),
                        scope,
                        as_of_ms,
                        scoring,
                    )
                    .await
                    .expect("summed");
                    let expected = decided(db, period, scope, as_of_ms, scoring).await;
                    assert_eq!(
                        summed, expected,
                        "{label}, scope {scope:?}, as of {as_of_ms}, {scoring:?}"
                    );
                    // one department alone gives its line of the whole
                    if let Some((department, figures)) = expected.iter().next() {
                        let alone = cards::live_figures(
                            db,
                            Some(department),
                            period.bounds(offset),
                            scope,
                            as_of_ms,
                            scoring,
                        )
                        .await
                        .expect("one department");
                        assert_eq!(alone.get(department), Some(figures));
                        assert_eq!(alone.len(), 1);
                    }
                    compared += expected.len();
                }
            }
        }
    }
    compared
}

/// Delta rows not folded yet.
async fn deltas(db: &DatabaseConnection) -> i64 {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM evaluation_card_cells WHERE NOT base",
        ))
        .await
        .expect("count deltas")
        .expect("a row");
    row.try_get("", "n").expect("n")
}

async fn summed_cards_equal_decided_cards(url: &str) {
    let db = Database::connect(url).await.expect("connect");
    whistle_platform::db::migrate::<Migrator>(&db)
        .await
        .expect("migrate");
    // half the history folded into base rows, the other half on top of them as deltas
    let events = history();
    let (first, rest) = events.split_at(events.len() / 2);
    assert_eq!(apply_in_batches(&db, first, 16, Path::Direct).await, 0);
    assert!(cells::compact(&db).await.expect("compact") > 0);
    assert_eq!(deltas(&db).await, 0, "every delta folded");
    assert_eq!(apply_in_batches(&db, rest, 16, Path::Direct).await, 0);
    assert!(deltas(&db).await > 0, "the second half left deltas");
    let compared = compare_every_card(&db).await;
    assert!(compared > 100, "only {compared} cards compared");
    // folded again, by two compactions at once (two replicas): the same cards from base rows alone
    let (one, other) = tokio::join!(cells::compact(&db), cells::compact(&db));
    assert!(one.expect("compact") + other.expect("compact") > 0);
    assert_eq!(deltas(&db).await, 0);
    assert_eq!(compare_every_card(&db).await, compared);
    // what the migration writes from the tallies equals what the consumer and compaction kept
    cells::rebuild(&db).await.expect("rebuild");
    assert_eq!(compare_every_card(&db).await, compared);
    // a frozen card's after_close, at several closing moments
    let offset = UtcOffset::from_hours(8).expect("offset");
    let mut later_events = 0;
    for (label, closed_at_ms) in [
        ("2026-10", NOVEMBER + 2 * DAY),
        ("2026-10", NOVEMBER + 10 * DAY),
        ("2026-11", NOW - 2 * DAY),
    ] {
        let period = Period::parse(label).expect("period");
        let summed = cards::after_close(&db, None, period.bounds(offset), closed_at_ms)
            .await
            .expect("after close");
        let expected = after_close_decided(&db, period, closed_at_ms).await;
        let nonzero = |counts: &BTreeMap<String, u64>| -> BTreeMap<String, u64> {
            counts
                .iter()
                .filter(|(_, count)| **count > 0)
                .map(|(department, count)| (department.clone(), *count))
                .collect()
        };
        assert_eq!(
            nonzero(&summed),
            nonzero(&expected),
            "{label} closed at {closed_at_ms}"
        );
        later_events += expected.values().sum::<u64>();
    }
    assert!(
        later_events > 0,
        "no event after any close: nothing compared"
    );
    // a card over cases with verdicts, call-backs and ratings, so the sums carry something
    let offset = UtcOffset::from_hours(8).expect("offset");
    let november = cards::live_figures(
        &db,
        None,
        Period::parse("2026-11").expect("period").bounds(offset),
        None,
        NOW,
        &Scoring::default(),
    )
    .await
    .expect("cards");
    let total = |pick: fn(&ScorecardFigures) -> u64| november.values().map(pick).sum::<u64>();
    assert!(total(|figures| figures.counts.verified) > 0);
    assert!(total(|figures| figures.counts.cooperation_ratings) > 0);
    assert!(total(|figures| figures.counts.satisfaction_callbacks) > 0);
    assert!(total(|figures| figures.counts.due_in_period) > 0);

    // a database kept before tallies existed: filled in at start-up, the same cards
    db.execute_unprepared(
        "UPDATE evaluation_assignments SET tally_bits = NULL, returns_rejected_count = 0, due_from_ms = NULL",
    )
    .await
    .expect("erase tallies");
    db.execute_unprepared("DELETE FROM evaluation_card_cells")
        .await
        .expect("no cells before tallies");
    let decided_cases = cards::tally_missing(&db, NOW).await.expect("tally");
    assert_eq!(decided_cases, 160, "every case decided once");
    assert_eq!(cards::tally_missing(&db, NOW).await.expect("again"), 0);
    assert_eq!(compare_every_card(&db).await, compared);
    db.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summed_cards_equal_decided_cards_on_sqlite() {
    let folder = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        folder.path().join("evaluation.sqlite").display()
    );
    summed_cards_equal_decided_cards(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summed_cards_equal_decided_cards_on_postgres() {
    let postgres = TestPostgres::create().await;
    summed_cards_equal_decided_cards(&postgres.url).await;
    postgres.drop_database().await;
}
