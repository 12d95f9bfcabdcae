//! Property test at dispatch's event edge: whatever bytes arrive on the cases stream, decoding them
//! and applying what decodes with the case consumer never panics, against a real SQLite database
//! holding the demo routes (so reported cases are routed and whistled).

mod common;

use sea_orm::{EntityTrait, PaginatorTrait, TransactionTrait};
use std::sync::Arc;
use whistle_dispatch::consumer::ReportedCases;
use whistle_platform::SystemClock;
use whistle_platform::envelope;
use whistle_platform::inbox::{BatchEvent, EventHandler};
use whistle_platform::outbox::OutboxSignal;
use whistle_platform::testing::arbitrary::{event, wire_bytes};

#[test]
fn arbitrary_event_bytes_never_panic_the_case_consumer() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("folder");
    let url = format!("sqlite://{}", dir.path().join("dispatch.sqlite").display());
    let database = runtime.block_on(common::routed_database(url, 1));
    let handler = ReportedCases::new(
        Arc::new(SystemClock),
        Arc::new(whistle_dispatch::domain::CalendarTime),
        OutboxSignal::default(),
    );
    let applied = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 256,
        failure_persistence: None,
        ..Default::default()
    });
    runner
        .run(&wire_bytes(event()), |bytes| {
            runtime.block_on(async {
                let Ok(event) = envelope::decode(&bytes) else {
                    return;
                };
                let transaction = database.begin().await.expect("transaction");
                // as the consumer applies a batch (of one): what applied stays, so later events
                // meet the cases earlier ones opened
                let subject = "case.v1.test";
                handler
                    .before_batch(
                        &transaction,
                        &[BatchEvent {
                            subject,
                            event: &event,
                        }],
                    )
                    .await
                    .expect("a batch's reads never fail on what it carries");
                match handler.handle(&transaction, subject, &event).await {
                    Ok(()) => {
                        handler
                            .before_commit(&transaction)
                            .await
                            .expect("saving what applied");
                        transaction.commit().await.expect("commit");
                        applied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(_) => transaction.rollback().await.expect("rollback"),
                }
            });
            Ok(())
        })
        .expect("decoding and applying never panics");
    let applied = applied.into_inner();
    println!("{applied} of 256 inputs applied");
    assert!(applied > 0, "no input got past decoding and checks");
    let opened = runtime
        .block_on(whistle_dispatch::storage::case::Entity::find().count(&database))
        .expect("count");
    println!("{opened} cases opened");

    assert!(opened > 0, "no generated case.reported opened a case");
}
