//! Property test at evaluation's event edge: whatever bytes arrive on the case and whistle
//! streams, decoding them and applying what decodes never panics, against a real SQLite database.

use sea_orm::TransactionTrait;
use std::sync::Arc;
use whistle_evaluation::events::EvaluationEvents;
use whistle_evaluation::storage::Migrator;
use whistle_platform::config::DatabaseConfig;
use whistle_platform::envelope;
use whistle_platform::inbox::{BatchEvent, EventHandler};
use whistle_platform::testing::arbitrary::{event, wire_bytes};
use whistle_platform::{SystemClock, db};

#[test]
fn arbitrary_event_bytes_never_panic_the_evaluation_consumers() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("folder");
    let url = format!(
        "sqlite://{}",
        dir.path().join("evaluation.sqlite").display()
    );
    let database = runtime.block_on(async {
        let database = db::connect(&DatabaseConfig::at(url, 1))
            .await
            .expect("database");
        db::migrate::<Migrator>(&database).await.expect("migrate");
        database
    });
    let handler = EvaluationEvents::new(Arc::new(SystemClock));
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
                let batch = [BatchEvent {
                    subject: "whistle.v1.test",
                    event: &event,
                }];
                handler
                    .before_batch(&transaction, &batch)
                    .await
                    .expect("batch locks and reads");
                // what applied stays, so later events meet the facts earlier ones stored
                match handler
                    .handle(&transaction, "whistle.v1.test", &event)
                    .await
                {
                    Ok(()) => {
                        handler
                            .before_commit(&transaction)
                            .await
                            .expect("batch written");
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
}
