//! The consumer keeps a batch's cases in memory and writes them once, just before the commit
//! (`case_batch`). These tests check that the size of a batch never changes what is stored: a
//! generated history (out of order, with redeliveries) applied one event per batch and in batches
//! of 64 leaves the same assignments, facts, milestones, case states and card figures; and an
//! event rejected in the middle of a batch (rolled back to its savepoint, as the inbox does) leaves
//! the rows as if it had never come.

mod common;

use common::batches::{Path, apply_in_batches};
use common::history;
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, QueryOrder};
use std::collections::BTreeMap;
use whistle_evaluation::cells;
use whistle_evaluation::storage::{Migrator, assignment, case, case_state, fact, milestone};
use whistle_platform::config::DatabaseConfig;
use whistle_platform::db;
use whistle_platform::envelope::{Event, Payload};
use whistle_proto::events::{AssignmentAcknowledged, AssignmentVerdict, CaseVerified};

async fn database(folder: &tempfile::TempDir, name: &str) -> DatabaseConnection {
    let url = format!(
        "sqlite://{}?mode=rwc",
        folder.path().join(format!("{name}.sqlite")).display()
    );
    let database = db::connect(&DatabaseConfig::at(url, 1))
        .await
        .expect("database");
    db::migrate::<Migrator>(&database).await.expect("migrate");
    database
}

/// Everything the consumer keeps, comparable across databases: the rows (without the time each
/// was written) and the card figures summed per department and hour.
#[derive(Debug, PartialEq)]
struct Stored {
    assignments: Vec<assignment::Model>,
    facts: Vec<fact::Model>,
    milestones: Vec<milestone::Model>,
    states: Vec<case_state::Model>,
    cases: Vec<String>,
    figures: BTreeMap<(String, i64), Vec<i64>>,
}

async fn stored(database: &DatabaseConnection) -> Stored {
    let mut assignments = assignment::Entity::find()
        .order_by_asc(assignment::Column::AssignmentId)
        .all(database)
        .await
        .expect("assignments");
    for row in &mut assignments {
        row.updated_at_ms = 0;
    }
    let facts = fact::Entity::find()
        .order_by_asc(fact::Column::EventId)
        .order_by_asc(fact::Column::AssignmentId)
        .all(database)
        .await
        .expect("facts");
    let milestones = milestone::Entity::find()
        .order_by_asc(milestone::Column::EventId)
        .all(database)
        .await
        .expect("milestones");
    let states = case_state::Entity::find()
        .order_by_asc(case_state::Column::CaseId)
        .all(database)
        .await
        .expect("states");
    let cases = case::Entity::find()
        .order_by_asc(case::Column::CaseId)
        .all(database)
        .await
        .expect("cases")
        .into_iter()
        .map(|row| row.case_id)
        .collect();
    let mut sums = vec![
        "SUM(whistled)".to_string(),
        "SUM(returns_rejected)".into(),
        "SUM(due_set)".into(),
    ];
    sums.extend((0..17).map(|bit| format!("SUM(bit_{bit})")));
    let rows = database
        .query_all_raw(sea_orm::Statement::from_string(
            database.get_database_backend(),
            format!(
                "SELECT department_code, hour_ms, {} FROM {} GROUP BY department_code, hour_ms",
                sums.iter()
                    .enumerate()
                    .map(|(index, sum)| format!("{sum} AS s{index}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                cells::TABLE
            ),
        ))
        .await
        .expect("figures");
    let mut figures = BTreeMap::new();
    for row in rows {
        let department: String = row.try_get("", "department_code").expect("department");
        let hour: i64 = row.try_get("", "hour_ms").expect("hour");
        let values: Vec<i64> = (0..sums.len())
            .map(|index| row.try_get("", &format!("s{index}")).expect("sum"))
            .collect();
        figures.insert((department, hour), values);
    }
    Stored {
        assignments,
        facts,
        milestones,
        states,
        cases,
        figures,
    }
}

fn history_events() -> Vec<Event> {
    let cases = history::generate(60, 23);
    history::shuffled_with_redeliveries(&cases, 15, 23)
        .into_iter()
        .map(|(event, _)| event)
        .collect()
}

#[tokio::test]
async fn batches_of_any_size_store_the_same_rows() {
    let folder = tempfile::tempdir().expect("folder");
    let events = history_events();
    let one_by_one = database(&folder, "one").await;
    let batched = database(&folder, "batched").await;
    assert_eq!(
        apply_in_batches(&one_by_one, &events, 1, Path::Savepoints).await,
        0
    );
    assert_eq!(
        apply_in_batches(&batched, &events, 64, Path::Savepoints).await,
        0
    );

    let expected = stored(&one_by_one).await;
    assert!(
        expected.assignments.len() > 60
            && expected.facts.len() > 20
            && expected.milestones.len() > 100
            && !expected.figures.is_empty(),
        "the history stores something of every kind: {} assignments, {} facts, {} milestones",
        expected.assignments.len(),
        expected.facts.len(),
        expected.milestones.len()
    );
    assert!(
        expected
            .assignments
            .iter()
            .all(|row| row.tally_bits.is_some()),
        "every assignment's tally was decided"
    );
    assert_eq!(stored(&batched).await, expected);
}

#[tokio::test]
async fn an_event_rejected_in_a_batch_leaves_the_rest_as_if_it_never_came() {
    let folder = tempfile::tempdir().expect("folder");
    let events = history_events();
    // every tenth event is followed by one that is refused only after the checks have read it:
    // an acknowledgement without its assignment, a verification with a verdict naming none
    let mut with_refused = Vec::new();
    for (index, event) in events.iter().enumerate() {
        with_refused.push(event.clone());
        if index % 10 == 0 {
            let mut refused = event.clone();
            refused.event_id = format!("{}-refused", event.event_id);
            refused.payload = Some(if index % 20 == 0 {
                Payload::AssignmentAcknowledged(AssignmentAcknowledged::default())
            } else {
                Payload::CaseVerified(CaseVerified {
                    verdicts: vec![
                        AssignmentVerdict {
                            assignment_id: "a-valid".into(),
                            passed: true,
                            ..AssignmentVerdict::default()
                        },
                        AssignmentVerdict::default(),
                    ],
                    ..CaseVerified::default()
                })
            });
            with_refused.push(refused);
        }
    }
    let refused = with_refused.len() - events.len();

    let clean = database(&folder, "clean").await;
    let disturbed = database(&folder, "disturbed").await;
    assert_eq!(
        apply_in_batches(&clean, &events, 64, Path::Savepoints).await,
        0
    );
    assert_eq!(
        apply_in_batches(&disturbed, &with_refused, 64, Path::Savepoints).await,
        refused
    );
    assert_eq!(stored(&disturbed).await, stored(&clean).await);
}
