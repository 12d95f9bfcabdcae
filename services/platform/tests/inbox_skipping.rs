//! A consumer reads a whole stream but applies only what its handler has a use for: the other
//! events are acknowledged without a transaction and leave no inbox row, and a batch of nothing
//! else does not wake the handler's `after_commit`. Real nats-server, real SQLite file.

use async_nats::jetstream;
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, Statement};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use whistle_platform::envelope::{self, Event, Payload};
use whistle_platform::inbox::{self, ConsumerSpec, EventHandler, HandleError};
use whistle_platform::testing::{TestBed, demo_region};
use whistle_platform::{SystemClock, nats};
use whistle_proto::events::{CaseAccepted, CaseReported};

/// Applies reported cases only, as dispatch's consumer does.
#[derive(Default)]
struct ReportsOnly {
    handled: Mutex<Vec<String>>,
    commits: AtomicUsize,
}

impl EventHandler for ReportsOnly {
    fn applies(&self, _subject: &str, event: &Event) -> bool {
        matches!(event.payload, Some(Payload::CaseReported(_)))
    }

    async fn handle(
        &self,
        _transaction: &DatabaseTransaction,
        _subject: &str,
        event: &Event,
    ) -> Result<(), HandleError> {
        self.handled
            .lock()
            .expect("handled")
            .push(event.case_id.clone());
        Ok(())
    }

    fn after_commit(&self) {
        self.commits.fetch_add(1, Ordering::SeqCst);
    }
}

/// Waits until the consumer was delivered the stream up to `sequence` and acknowledged all of it.
async fn wait_acknowledged(jetstream: &jetstream::Context, sequence: u64) {
    let mut consumer = jetstream
        .get_stream(nats::CASES_STREAM)
        .await
        .expect("stream")
        .get_consumer::<jetstream::consumer::pull::Config>("reports-only")
        .await
        .expect("consumer");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info = consumer.info().await.expect("consumer info");
        if info.delivered.stream_sequence >= sequence && info.num_ack_pending == 0 {
            assert_eq!(info.num_pending, 0, "{info:?}");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not acknowledged up to {sequence}: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn reported(case_id: &str) -> Event {
    envelope::new_event(
        &SystemClock,
        "whistle-intake",
        case_id,
        1,
        Some(demo_region()),
        Payload::CaseReported(CaseReported::default()),
    )
}

fn accepted(case_id: &str) -> Event {
    envelope::new_event(
        &SystemClock,
        "whistle-dispatch",
        case_id,
        2,
        Some(demo_region()),
        Payload::CaseAccepted(CaseAccepted::default()),
    )
}

async fn inbox_rows(db: &DatabaseConnection) -> Vec<String> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT event_id FROM whistle_inbox ORDER BY event_id".to_string(),
        ))
        .await
        .expect("inbox");
    rows.iter()
        .map(|row| row.try_get::<String>("", "event_id").expect("event_id"))
        .collect()
}

#[tokio::test]
async fn events_the_handler_has_no_use_for_are_acknowledged_without_a_transaction() {
    let bed = TestBed::new().await;
    let jetstream = bed.jetstream.clone();
    let database = bed.platform_database("inbox").await;
    let handler = Arc::new(ReportsOnly::default());
    let shutdown = CancellationToken::new();
    let consumer = tokio::spawn(inbox::run_consumer(
        jetstream.clone(),
        database.clone(),
        Arc::new(SystemClock),
        ConsumerSpec {
            stream: nats::CASES_STREAM.to_string(),
            durable: "reports-only".to_string(),
            filter_subject: "case.v1.>".to_string(),
            applied_subjects: Vec::new(),
            max_batch: 16,
        },
        handler.clone(),
        shutdown.clone(),
    ));

    // one reported case among events the handler does not read
    let first = reported("case-1");
    for event in [accepted("case-0"), first.clone(), accepted("case-1")] {
        bed.publish(&event).await;
    }
    wait_acknowledged(&jetstream, 3).await;
    assert_eq!(handler.commits.load(Ordering::SeqCst), 1, "one commit");

    // then nothing but events it does not read: acknowledged, no commit
    for n in 2..6 {
        bed.publish(&accepted(&format!("case-{n}"))).await;
    }
    wait_acknowledged(&jetstream, 7).await;
    assert_eq!(
        handler.commits.load(Ordering::SeqCst),
        1,
        "no commit for them"
    );

    let second = reported("case-6");
    bed.publish(&second).await;
    wait_acknowledged(&jetstream, 8).await;
    assert_eq!(handler.commits.load(Ordering::SeqCst), 2, "one more commit");
    assert_eq!(
        *handler.handled.lock().expect("handled"),
        vec!["case-1".to_string(), "case-6".to_string()]
    );
    let mut applied = vec![first.event_id.clone(), second.event_id.clone()];
    applied.sort();
    assert_eq!(inbox_rows(&database).await, applied, "only applied events");

    shutdown.cancel();
    consumer.await.expect("consumer task");
}
