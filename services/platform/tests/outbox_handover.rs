//! A committed transaction hands its events to the outbox relay in memory: the relay publishes
//! them without reading them back, in the order the transactions took their places in line, marks
//! them sent afterwards, and never publishes what was not committed. Real nats-server, real SQLite
//! files.
//!
//! To show which way an event went, most tests give the relay a database of its own, which never
//! holds the events: what reaches NATS can only have come from memory.

use futures::StreamExt;
use sea_orm::{DatabaseConnection, DbErr, TransactionTrait};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use whistle_platform::SystemClock;
use whistle_platform::config::OutboxConfig;
use whistle_platform::outbox::{self, OutboxEvent, OutboxRelay, OutboxSignal};
use whistle_platform::testing::TestBed;

const SUBJECT: &str = "case.v1.420300.420303.chechenglu.reported";

fn event(id: &str) -> OutboxEvent {
    OutboxEvent {
        event_id: id.to_string(),
        subject: SUBJECT.to_string(),
        payload: id.as_bytes().to_vec(),
        headers: vec![("ce-id".to_string(), id.to_string())],
    }
}

/// A relay on `database` that reads its table only at start and when told to.
struct Relay {
    signal: OutboxSignal,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Relay {
    /// Starts a relay on `database` and waits for its first reading of the table, which publishes
    /// a row written there before it started; answers what that reading published.
    async fn start(
        bed: &TestBed,
        database: &DatabaseConnection,
        subscriber: &mut async_nats::Subscriber,
    ) -> (Self, Vec<String>) {
        outbox::enqueue(database, event("started"), 0)
            .await
            .expect("enqueued");
        let signal = OutboxSignal::default();
        let config = OutboxConfig {
            poll_interval_ms: 3_600_000,
            ..OutboxConfig::default()
        };
        let relay = OutboxRelay::new(
            database.clone(),
            bed.jetstream.clone(),
            signal.clone(),
            config,
            Arc::new(SystemClock),
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(relay.run(shutdown.clone()));
        let mut read = Vec::new();
        while read.last().map(String::as_str) != Some("started") {
            read.extend(received(subscriber, 1).await);
        }
        let relay = Self {
            signal,
            shutdown,
            task,
        };
        (relay, read)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("relay stopped");
    }
}

/// The ids of the next `count` events published on [`SUBJECT`], in the order they arrive.
async fn received(subscriber: &mut async_nats::Subscriber, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(10), subscriber.next())
            .await
            .unwrap_or_else(|_| panic!("only {ids:?} published within 10 s"))
            .expect("subscription open");
        ids.push(String::from_utf8(message.payload.to_vec()).expect("utf-8"));
    }
    ids
}

/// Nothing more is published within half a second.
async fn assert_quiet(subscriber: &mut async_nats::Subscriber, why: &str) {
    if let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(500), subscriber.next()).await
    {
        panic!("{why}: {:?} was published", message.payload);
    }
}

async fn subscribe(bed: &TestBed) -> async_nats::Subscriber {
    let client = bed.jetstream.client();
    let subscriber = client.subscribe(SUBJECT).await.expect("subscribe");
    client.flush().await.expect("flush");
    subscriber
}

/// Commits `ids` to `database` in one transaction, handed over to `signal`.
async fn commit(signal: &OutboxSignal, database: &DatabaseConnection, ids: &[&str]) {
    signal
        .committing(async {
            let transaction = database.begin().await?;
            outbox::enqueue_many(&transaction, ids.iter().map(|id| event(id)), 0).await?;
            transaction.commit().await?;
            Ok::<_, DbErr>(())
        })
        .await
        .expect("committed");
}

#[tokio::test]
async fn committed_events_are_published_from_memory_and_then_marked_sent() {
    let bed = TestBed::new().await;
    let mut subscriber = subscribe(&bed).await;

    // the relay reads a table the events never reach: they can only come from memory
    let elsewhere = bed.platform_database("elsewhere").await;
    let (relay, _) = Relay::start(&bed, &elsewhere, &mut subscriber).await;
    let written = bed.platform_database("written").await;
    commit(&relay.signal, &written, &["a-1", "a-2"]).await;
    assert_eq!(received(&mut subscriber, 2).await, ["a-1", "a-2"]);
    relay.stop().await;
    assert_eq!(
        outbox::backlog(&written).await.expect("backlog"),
        2,
        "nothing read or marked the table the events were written to"
    );

    // with its own table, the relay marks what it published from memory, within the mark delay
    let (relay, read) = Relay::start(&bed, &written, &mut subscriber).await;
    // its start reads the table: the two rows above go out again (JetStream drops the copies)
    assert_eq!(read, ["a-1", "a-2", "started"]);
    commit(&relay.signal, &written, &["b-1"]).await;
    assert_eq!(received(&mut subscriber, 1).await, ["b-1"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while outbox::backlog(&written).await.expect("backlog") > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the events published from memory are marked sent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.stop().await;
}

#[tokio::test]
async fn handed_over_events_wait_for_the_transactions_ahead_of_them() {
    let bed = TestBed::new().await;
    let mut subscriber = subscribe(&bed).await;
    let elsewhere = bed.platform_database("elsewhere").await;
    let (relay, _) = Relay::start(&bed, &elsewhere, &mut subscriber).await;
    let written = bed.platform_database("written").await;

    // the first transaction takes its place in line when it enqueues, and commits last
    let first = relay.signal.staging();
    first
        .scope(outbox::enqueue(&written, event("first"), 0))
        .await
        .expect("enqueued");
    commit(&relay.signal, &written, &["second"]).await;
    assert_quiet(
        &mut subscriber,
        "a transaction behind one that has not committed waits",
    )
    .await;
    first.committed();
    assert_eq!(received(&mut subscriber, 2).await, ["first", "second"]);
    relay.stop().await;
}

#[tokio::test]
async fn a_rolled_back_transaction_publishes_nothing_and_holds_nothing_up() {
    let bed = TestBed::new().await;
    let mut subscriber = subscribe(&bed).await;
    let database = bed.platform_database("outbox").await;
    let (relay, _) = Relay::start(&bed, &database, &mut subscriber).await;

    let rolled_back = relay.signal.staging();
    let transaction = database.begin().await.expect("begin");
    rolled_back
        .scope(outbox::enqueue(&transaction, event("rolled-back"), 0))
        .await
        .expect("enqueued");
    transaction.rollback().await.expect("rolled back");
    // dropped without `committed`: its place is resolved, and the relay reads the table for it
    drop(rolled_back);
    commit(&relay.signal, &database, &["after"]).await;
    assert_eq!(received(&mut subscriber, 1).await, ["after"]);
    relay.stop().await;
    // the stream keeps each event once (a copy the table's reading published again is dropped by
    // its id): the row written before the relay started and the committed one
    let stream = bed
        .jetstream
        .get_stream(whistle_platform::nats::CASES_STREAM)
        .await
        .expect("stream");
    let mut payloads = Vec::new();
    for sequence in 1..=stream.cached_info().state.last_sequence {
        let message = stream.get_raw_message(sequence).await.expect("message");
        payloads.push(String::from_utf8(message.payload.to_vec()).expect("utf-8"));
    }
    assert_eq!(
        payloads,
        ["started", "after"],
        "what was not committed is never published"
    );
}

#[tokio::test]
async fn rows_written_outside_a_staging_go_out_when_the_relay_is_told() {
    let bed = TestBed::new().await;
    let mut subscriber = subscribe(&bed).await;
    let database = bed.platform_database("outbox").await;
    let (relay, _) = Relay::start(&bed, &database, &mut subscriber).await;
    commit(&relay.signal, &database, &["handed-over"]).await;
    assert_eq!(received(&mut subscriber, 1).await, ["handed-over"]);

    outbox::enqueue(&database, event("from-the-table"), 0)
        .await
        .expect("enqueued");
    assert_quiet(&mut subscriber, "the relay reads its table when told").await;
    relay.signal.notify();
    assert_eq!(received(&mut subscriber, 1).await, ["from-the-table"]);
    relay.stop().await;
}

#[tokio::test]
async fn a_consumer_batch_hands_its_events_over_once_committed() {
    use whistle_platform::envelope::{Event, Payload};
    use whistle_platform::inbox::{self, ConsumerSpec, EventHandler, HandleError};
    use whistle_platform::testing::demo_region;
    use whistle_proto::events::CaseAccepted;

    /// Enqueues one event per handled event, as dispatch's consumer does.
    struct Forwarder(OutboxSignal);

    impl EventHandler for Forwarder {
        async fn handle(
            &self,
            transaction: &sea_orm::DatabaseTransaction,
            _subject: &str,
            event: &Event,
        ) -> Result<(), HandleError> {
            outbox::enqueue(transaction, self::event(&event.case_id), 0)
                .await
                .map_err(HandleError::Transient)
        }

        fn outbox(&self) -> Option<&OutboxSignal> {
            Some(&self.0)
        }
    }

    let bed = TestBed::new().await;
    let mut subscriber = subscribe(&bed).await;
    let elsewhere = bed.platform_database("elsewhere").await;
    let (relay, _) = Relay::start(&bed, &elsewhere, &mut subscriber).await;
    let consumed = bed.platform_database("consumer").await;
    let shutdown = CancellationToken::new();
    let consumer = tokio::spawn(inbox::run_consumer(
        bed.jetstream.clone(),
        consumed.clone(),
        Arc::new(SystemClock),
        ConsumerSpec {
            stream: whistle_platform::nats::CASES_STREAM.to_string(),
            durable: "forwarder".to_string(),
            filter_subject: "case.v1.*.*.*.accepted".to_string(),
            applied_subjects: Vec::new(),
            max_batch: 16,
        },
        Arc::new(Forwarder(relay.signal.clone())),
        shutdown.clone(),
    ));
    // accepted cases in, one event per case out on the reported subject
    for case in ["c-1", "c-2", "c-3"] {
        let accepted = whistle_platform::envelope::new_event(
            &SystemClock,
            "whistle-dispatch",
            case,
            2,
            Some(demo_region()),
            Payload::CaseAccepted(CaseAccepted::default()),
        );
        bed.publish(&accepted).await;
    }
    assert_eq!(received(&mut subscriber, 3).await, ["c-1", "c-2", "c-3"]);
    shutdown.cancel();
    let _ = consumer.await;
    relay.stop().await;
}
