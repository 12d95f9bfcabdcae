//! Several durable consumers read into one handler (`inbox::run_consumers`): what is ready on any
//! of them goes into one batch and one transaction, each event recorded in the inbox under the
//! consumer that delivered it; a batch window gathers events that arrive apart; a shutdown during
//! the window applies and acknowledges what is in hand; a durable deleted under the group is made
//! again and nothing is lost. Real nats-server, real SQLite file.

use async_nats::jetstream;
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, Statement};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use whistle_platform::envelope::{self, Event, Payload};
use whistle_platform::inbox::{self, BatchEvent, ConsumerSpec, EventHandler, HandleError};
use whistle_platform::testing::{TestBed, demo_region};
use whistle_platform::{SystemClock, nats};
use whistle_proto::events::{CaseReported, WhistleIssued};
use whistle_proto::types::Assignment;

const CASES: &str = "group-cases";
const WHISTLES: &str = "group-whistles";

/// Remembers the events of each committed batch, in the order they were handled.
#[derive(Default)]
struct Batches {
    open: Mutex<Vec<String>>,
    committed: Mutex<Vec<Vec<String>>>,
    /// Whether whistles are urgent: a batch holding one does not wait out the window.
    whistles_urgent: bool,
}

impl Batches {
    fn committed(&self) -> Vec<Vec<String>> {
        self.committed.lock().expect("committed").clone()
    }
}

impl EventHandler for Batches {
    fn may_wait(&self, subject: &str) -> bool {
        !(self.whistles_urgent && subject.ends_with(".issued"))
    }

    async fn before_batch(
        &self,
        _transaction: &DatabaseTransaction,
        _events: &[BatchEvent<'_>],
    ) -> Result<(), sea_orm::DbErr> {
        self.open.lock().expect("open").clear();
        Ok(())
    }

    async fn handle(
        &self,
        _transaction: &DatabaseTransaction,
        _subject: &str,
        event: &Event,
    ) -> Result<(), HandleError> {
        self.open.lock().expect("open").push(event.event_id.clone());
        Ok(())
    }

    fn after_commit(&self) {
        let batch = std::mem::take(&mut *self.open.lock().expect("open"));
        self.committed.lock().expect("committed").push(batch);
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

fn issued(case_id: &str) -> Event {
    envelope::new_event(
        &SystemClock,
        "whistle-dispatch",
        case_id,
        2,
        Some(demo_region()),
        Payload::WhistleIssued(WhistleIssued {
            assignment: Some(Assignment {
                assignment_id: format!("{case_id}-a1"),
                case_id: case_id.to_string(),
                department_code: "zw-sanitation".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
}

fn specs() -> Vec<ConsumerSpec> {
    vec![
        ConsumerSpec {
            stream: nats::CASES_STREAM.to_string(),
            durable: CASES.to_string(),
            filter_subject: "case.v1.>".to_string(),
            applied_subjects: Vec::new(),
            max_batch: 64,
        },
        ConsumerSpec {
            stream: nats::WHISTLES_STREAM.to_string(),
            durable: WHISTLES.to_string(),
            filter_subject: "whistle.v1.>".to_string(),
            applied_subjects: Vec::new(),
            max_batch: 64,
        },
    ]
}

/// `(consumer, event_id)` of every inbox row.
async fn inbox_rows(db: &DatabaseConnection) -> Vec<(String, String)> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT consumer, event_id FROM whistle_inbox ORDER BY consumer, event_id".to_string(),
        ))
        .await
        .expect("inbox");
    rows.iter()
        .map(|row| {
            (
                row.try_get::<String>("", "consumer").expect("consumer"),
                row.try_get::<String>("", "event_id").expect("event_id"),
            )
        })
        .collect()
}

/// Waits until both consumers have nothing pending or unacknowledged (at least `delivered`
/// messages delivered between them).
async fn wait_acknowledged(jetstream: &jetstream::Context, delivered: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut total = 0;
        let mut settled = true;
        for (stream, durable) in [
            (nats::CASES_STREAM, CASES),
            (nats::WHISTLES_STREAM, WHISTLES),
        ] {
            // the consumer task creates its durables when it starts, which may be after this
            let consumer = jetstream
                .get_stream(stream)
                .await
                .expect("stream")
                .get_consumer::<jetstream::consumer::pull::Config>(durable)
                .await;
            let Ok(mut consumer) = consumer else {
                settled = false;
                continue;
            };
            let info = consumer.info().await.expect("consumer info");
            total += info.delivered.stream_sequence;
            settled &= info.num_ack_pending == 0 && info.num_pending == 0;
        }
        if settled && total >= delivered {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not acknowledged: {total} of {delivered} delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn(
    bed: &TestBed,
    database: &DatabaseConnection,
    window: Duration,
    handler: &Arc<Batches>,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(inbox::run_consumers(
        bed.jetstream.clone(),
        database.clone(),
        Arc::new(SystemClock),
        specs(),
        window,
        handler.clone(),
        shutdown.clone(),
    ))
}

#[tokio::test]
async fn two_streams_are_applied_in_one_transaction_each_event_under_its_consumer() {
    let bed = TestBed::new().await;
    let database = bed.platform_database("group").await;
    let report = reported("case-1");
    let whistle = issued("case-1");
    let seen_by_cases = reported("case-2");
    let seen_by_whistles = issued("case-3");
    // recorded before: case-2's report by the cases consumer (so skipped as a redelivery);
    // case-3's whistle under the *cases* consumer, which says nothing of the whistles consumer
    for (consumer, event_id) in [
        (CASES, seen_by_cases.event_id.as_str()),
        (CASES, seen_by_whistles.event_id.as_str()),
    ] {
        inbox::record_once(&database, consumer, event_id, "applied", 0)
            .await
            .expect("recorded");
    }
    for event in [&report, &whistle, &seen_by_cases, &seen_by_whistles] {
        bed.publish(event).await;
    }
    let handler = Arc::new(Batches::default());
    let shutdown = CancellationToken::new();
    // everything is on the streams before the consumers start, and the window is long: one batch
    let consumer = spawn(&bed, &database, Duration::from_secs(1), &handler, &shutdown);
    wait_acknowledged(&bed.jetstream, 4).await;

    let committed = handler.committed();
    assert_eq!(committed.len(), 1, "one transaction: {committed:?}");
    let mut handled = committed[0].clone();
    handled.sort();
    let mut expected = vec![
        report.event_id.clone(),
        whistle.event_id.clone(),
        seen_by_whistles.event_id.clone(),
    ];
    expected.sort();
    assert_eq!(
        handled, expected,
        "the recorded report skipped, the rest applied"
    );
    let mut rows = vec![
        (CASES.to_string(), report.event_id.clone()),
        (CASES.to_string(), seen_by_cases.event_id.clone()),
        (CASES.to_string(), seen_by_whistles.event_id.clone()),
        (WHISTLES.to_string(), whistle.event_id.clone()),
        (WHISTLES.to_string(), seen_by_whistles.event_id.clone()),
    ];
    rows.sort();
    assert_eq!(inbox_rows(&database).await, rows);

    shutdown.cancel();
    consumer.await.expect("consumer task");
}

/// Publishes a report, then a whistle and another report, 200 ms apart.
async fn publish_apart(bed: &TestBed, prefix: &str) {
    for event in [
        reported(&format!("{prefix}-1")),
        issued(&format!("{prefix}-1")),
        reported(&format!("{prefix}-2")),
    ] {
        bed.publish(&event).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_batch_window_gathers_events_that_arrive_apart() {
    // without a window, events 200 ms apart are applied as they come
    let bed = TestBed::new().await;
    let db = bed.platform_database("no-window").await;
    let handler = Arc::new(Batches::default());
    let shutdown = CancellationToken::new();
    let consumer = spawn(&bed, &db, Duration::ZERO, &handler, &shutdown);
    publish_apart(&bed, "apart").await;
    wait_acknowledged(&bed.jetstream, 3).await;
    let committed = handler.committed();
    assert!(committed.len() > 1, "applied as they came: {committed:?}");
    assert_eq!(committed.concat().len(), 3);
    shutdown.cancel();
    consumer.await.expect("consumer task");

    // with a window longer than the whole run, one batch holds the three
    let bed = TestBed::new().await;
    let db = bed.platform_database("window").await;
    let handler = Arc::new(Batches::default());
    let shutdown = CancellationToken::new();
    let consumer = spawn(&bed, &db, Duration::from_secs(3), &handler, &shutdown);
    publish_apart(&bed, "gathered").await;
    wait_acknowledged(&bed.jetstream, 3).await;
    let committed = handler.committed();
    assert_eq!(committed.len(), 1, "one batch: {committed:?}");
    assert_eq!(committed[0].len(), 3);
    shutdown.cancel();
    consumer.await.expect("consumer task");
}

#[tokio::test]
async fn a_shutdown_during_the_window_applies_and_acknowledges_what_is_in_hand() {
    let bed = TestBed::new().await;
    let db = bed.platform_database("shutdown").await;
    let handler = Arc::new(Batches::default());
    let shutdown = CancellationToken::new();
    let consumer = spawn(&bed, &db, Duration::from_secs(600), &handler, &shutdown);
    let report = reported("case-1");
    bed.publish(&report).await;
    // delivered, and held by the window
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let cases = bed
            .jetstream
            .get_stream(nats::CASES_STREAM)
            .await
            .expect("stream")
            .get_consumer::<jetstream::consumer::pull::Config>(CASES)
            .await;
        // (not found until the consumer task has created its durable)
        if let Ok(mut cases) = cases
            && cases.info().await.expect("info").num_ack_pending == 1
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(handler.committed().is_empty(), "held by the window");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), consumer)
        .await
        .expect("returns on shutdown")
        .expect("consumer task");
    assert_eq!(handler.committed(), vec![vec![report.event_id.clone()]]);
    wait_acknowledged(&bed.jetstream, 1).await;
}

#[tokio::test]
async fn a_consumer_deleted_under_the_group_is_made_again_and_nothing_is_lost() {
    let bed = TestBed::new().await;
    let db = bed.platform_database("deleted").await;
    let handler = Arc::new(Batches::default());
    let shutdown = CancellationToken::new();
    let consumer = spawn(&bed, &db, Duration::ZERO, &handler, &shutdown);
    let before = reported("case-1");
    bed.publish(&before).await;
    wait_acknowledged(&bed.jetstream, 1).await;

    // an operator (or a stream's recreation) removes one of the group's durables
    bed.jetstream
        .get_stream(nats::WHISTLES_STREAM)
        .await
        .expect("stream")
        .delete_consumer(WHISTLES)
        .await
        .expect("deleted");
    let after = [issued("case-2"), reported("case-3")];
    for event in &after {
        bed.publish(event).await;
    }

    // the group notices, starts again with both durables, and applies what came meanwhile
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut wanted: Vec<String> = after.iter().map(|event| event.event_id.clone()).collect();
    wanted.push(before.event_id.clone());
    wanted.sort();
    loop {
        let mut applied = handler.committed().concat();
        applied.sort();
        if applied == wanted {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "applied {applied:?}, wanted {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_acknowledged(&bed.jetstream, 3).await;
    shutdown.cancel();
    consumer.await.expect("consumer task");
    assert_eq!(inbox_rows(&db).await.len(), 3);
}

/// Waits until the handler has committed `count` events in all.
async fn wait_committed(handler: &Batches, count: usize) -> Vec<Vec<String>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let committed = handler.committed();
        if committed.concat().len() >= count {
            return committed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "committed {committed:?}, waiting for {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_event_that_may_not_wait_closes_the_window() {
    // a window far longer than the test may take: only the urgent event can close it
    let bed = TestBed::new().await;
    let db = bed.platform_database("urgent").await;
    let handler = Arc::new(Batches {
        whistles_urgent: true,
        ..Batches::default()
    });
    let shutdown = CancellationToken::new();
    let consumer = spawn(&bed, &db, Duration::from_secs(600), &handler, &shutdown);

    // a report may wait: it is held, then the whistle comes and the batch goes with both
    let report = reported("case-1");
    bed.publish(&report).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(handler.committed().is_empty(), "the report waits");
    let whistle = issued("case-1");
    bed.publish(&whistle).await;
    let committed = wait_committed(&handler, 2).await;
    assert_eq!(
        committed,
        vec![vec![report.event_id.clone(), whistle.event_id.clone()]]
    );

    // a whistle first is applied at once
    let alone = issued("case-2");
    bed.publish(&alone).await;
    let committed = wait_committed(&handler, 3).await;
    assert_eq!(committed.last(), Some(&vec![alone.event_id.clone()]));
    shutdown.cancel();
    consumer.await.expect("consumer task");
}
