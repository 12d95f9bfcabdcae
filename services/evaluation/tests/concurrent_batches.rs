//! Two batches applying events of the same case at once, on PostgreSQL, as two replicas of
//! evaluation (or its cases and whistles consumers) do: the later event must survive an earlier one
//! applied concurrently. Each batch merges its event into the assignment's row (read, merge, write
//! back), so without the batch's case lock the second writer would overwrite the first with a merge
//! of the row as it was before — a resolution dropped from the scorecard.

mod common;

use common::history;
use sea_orm::{Database, TransactionTrait};
use std::time::Duration;
use whistle_evaluation::domain::AssignmentState;
use whistle_evaluation::events::EvaluationEvents;
use whistle_evaluation::storage::{self, Migrator};
use whistle_platform::ManualClock;
use whistle_platform::clock::from_millis;
use whistle_platform::envelope::{Event, Payload};
use whistle_platform::inbox::{BatchEvent, EventHandler};
use whistle_platform::testing::TestPostgres;

/// The assignment a whistle event carries.
fn assignment_of(event: &Event) -> Option<&str> {
    let assignment = match event.payload.as_ref()? {
        Payload::WhistleIssued(issued) => issued.assignment.as_ref(),
        Payload::AssignmentAcknowledged(acknowledged) => acknowledged.assignment.as_ref(),
        Payload::AssignmentCheckedIn(checked_in) => checked_in.assignment.as_ref(),
        Payload::AssignmentResolved(resolved) => resolved.assignment.as_ref(),
        _ => None,
    }?;
    Some(assignment.assignment_id.as_str())
}

/// Applies one event as a batch of one, in `transaction`: the batch's locks and reads, the handler,
/// and the batch's writes (the caller commits).
async fn apply(
    handler: &EvaluationEvents,
    transaction: &sea_orm::DatabaseTransaction,
    event: &Event,
) {
    let batch = [BatchEvent {
        subject: "whistle.v1.test",
        event,
    }];
    handler
        .before_batch(transaction, &batch)
        .await
        .expect("batch locks");
    handler
        .handle(transaction, "whistle.v1.test", event)
        .await
        .expect("applied");
    handler
        .before_commit(transaction)
        .await
        .expect("batch written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolution_survives_an_earlier_event_of_its_case_applied_at_the_same_time() {
    let postgres = TestPostgres::create().await;
    let db = Database::connect(postgres.url.as_str())
        .await
        .expect("connect");
    whistle_platform::db::migrate::<Migrator>(&db)
        .await
        .expect("migrate");
    // one handler per batch in progress, as each consumer has its own
    let clock: whistle_platform::clock::SharedClock =
        std::sync::Arc::new(ManualClock::new(from_millis(history::NOW)));
    let handler = EvaluationEvents::new(clock.clone());

    // a generated case with an assignment that was acknowledged and later resolved
    let cases = history::generate(40, 11);
    let (case, acknowledged, resolved) = cases
        .iter()
        .find_map(|case| {
            let position = |kind: fn(&Payload) -> bool| {
                case.events
                    .iter()
                    .position(|event| event.payload.as_ref().is_some_and(kind))
            };
            let acknowledged =
                position(|payload| matches!(payload, Payload::AssignmentAcknowledged(_)))?;
            let resolved = case.events.iter().position(|event| {
                matches!(event.payload, Some(Payload::AssignmentResolved(_)))
                    && assignment_of(event) == assignment_of(&case.events[acknowledged])
            })?;
            Some((case, acknowledged, resolved))
        })
        .expect("a generated case acknowledged and resolved");
    let assignment_id = assignment_of(&case.events[resolved])
        .expect("assignment")
        .to_string();

    // everything before the acknowledgement is known (the whistle: the assignment's row exists)
    let known = db.begin().await.expect("begin");
    for event in &case.events[..acknowledged] {
        apply(&handler, &known, event).await;
    }
    known.commit().await.expect("commit");

    // the resolution is being applied by one replica while the other applies the acknowledgement
    let resolving = db.begin().await.expect("begin");
    apply(&handler, &resolving, &case.events[resolved]).await;
    let acknowledging = {
        let db = db.clone();
        let handler = EvaluationEvents::new(clock.clone());
        let event = case.events[acknowledged].clone();
        tokio::spawn(async move {
            let transaction = db.begin().await.expect("begin");
            apply(&handler, &transaction, &event).await;
            transaction.commit().await.expect("commit");
        })
    };
    // the second batch has started and waits for the first; then the first commits
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !acknowledging.is_finished(),
        "the second batch did not wait for the first, which still holds its case"
    );
    resolving.commit().await.expect("commit");
    acknowledging.await.expect("second batch");

    let stored = storage::find_assignment(&db, &assignment_id)
        .await
        .expect("read")
        .expect("assignment kept");
    assert_eq!(
        stored.state,
        AssignmentState::Resolved,
        "the concurrent acknowledgement overwrote the resolution: {stored:?}"
    );
    assert!(
        stored.acknowledged_verdict.is_some() && stored.resolved_verdict.is_some(),
        "both milestones are kept: {stored:?}"
    );
    db.close().await.expect("close");
    postgres.drop_database().await;
}
