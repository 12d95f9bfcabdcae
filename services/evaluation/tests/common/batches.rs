//! Applying events to a database through evaluation's consumer handler, batch by batch, as the
//! inbox does: the batch's locks and reads, each event, the batch's writes, the commit.

#![allow(dead_code)]

use super::history::NOW;
use sea_orm::{DatabaseConnection, TransactionTrait};
use whistle_evaluation::events::EvaluationEvents;
use whistle_platform::ManualClock;
use whistle_platform::clock::from_millis;
use whistle_platform::envelope::Event;
use whistle_platform::inbox::{BatchEvent, EventHandler, HandleError};

/// How a batch's events are applied, as the inbox's two paths do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Every event directly in the batch's transaction (the inbox's usual path); a refused event
    /// fails the test.
    Direct,
    /// Each event in its own savepoint, a refused one rolled back alone (the path the inbox takes
    /// for a batch that met a refusal).
    Savepoints,
}

/// Applies `events` in batches of `size` at [`NOW`]; returns how many were refused.
pub async fn apply_in_batches(
    database: &DatabaseConnection,
    events: &[Event],
    size: usize,
    path: Path,
) -> usize {
    let handler = EvaluationEvents::new(std::sync::Arc::new(ManualClock::new(from_millis(NOW))));
    let mut refused = 0;
    for batch in events.chunks(size) {
        let transaction = database.begin().await.expect("begin");
        let batch_events: Vec<BatchEvent<'_>> = batch
            .iter()
            .map(|event| BatchEvent {
                subject: "test",
                event,
            })
            .collect();
        handler
            .before_batch(&transaction, &batch_events)
            .await
            .expect("locks and reads");
        for event in batch {
            if path == Path::Direct {
                handler
                    .handle(&transaction, "test", event)
                    .await
                    .expect("applied");
                continue;
            }
            let savepoint = transaction.begin().await.expect("savepoint");
            match handler.handle(&savepoint, "test", event).await {
                Ok(()) => savepoint.commit().await.expect("release"),
                Err(HandleError::Rejected(_)) => {
                    savepoint.rollback().await.expect("roll back");
                    refused += 1;
                }
                Err(HandleError::Transient(error)) => panic!("transient failure: {error}"),
            }
        }
        handler
            .before_commit(&transaction)
            .await
            .expect("batch written");
        transaction.commit().await.expect("commit");
    }
    refused
}
