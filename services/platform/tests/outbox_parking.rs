//! The outbox cannot be poisoned: an event the server will never take (larger than its
//! `max_payload`, or refused by JetStream) is parked, and the events behind it are still published.
//! Real nats-server, real SQLite file.

use async_nats::jetstream;
use futures::StreamExt;
use sea_orm_migration::{MigrationTrait, MigratorTrait};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use whistle_platform::config::{DatabaseConfig, NatsConfig, OutboxConfig};
use whistle_platform::local_nats::LocalNatsServer;
use whistle_platform::outbox::{self, OutboxEvent, OutboxRelay, OutboxSignal};
use whistle_platform::{SystemClock, db, nats};

struct PlatformTablesOnly;

impl MigratorTrait for PlatformTablesOnly {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        db::migrations::with_platform(Vec::new())
    }
}

fn event(id: &str, subject: &str, payload: Vec<u8>) -> OutboxEvent {
    OutboxEvent {
        event_id: id.to_string(),
        subject: subject.to_string(),
        payload,
        headers: vec![("ce-id".to_string(), id.to_string())],
    }
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn events_that_cannot_be_published_are_parked_and_the_rest_flow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = LocalNatsServer::start(&dir.path().join("nats")).expect("nats-server");
    let client = async_nats::connect(server.url()).await.expect("nats");
    let max_payload = client.server_info().max_payload;
    let jetstream = jetstream::new(client);
    nats::ensure_streams(&jetstream, &NatsConfig::default())
        .await
        .expect("streams");
    let database = db::connect(&DatabaseConfig::at(
        format!("sqlite://{}", dir.path().join("outbox.sqlite").display()),
        1,
    ))
    .await
    .expect("database");
    db::migrate::<PlatformTablesOnly>(&database)
        .await
        .expect("migrations");

    let subject = "case.v1.420300.420303.chechenglu.reported";
    let now = 0;
    for outbox_event in [
        event("before", subject, b"small".to_vec()),
        // 1.2 MB: over the server's 1 MiB max_payload, as in the report that stopped intake
        event("too-large", subject, vec![b'x'; 1_200_000]),
        // no stream takes this subject: JetStream answers "no responders" on every try
        event("unroutable", "nowhere.v1.nothing", b"lost".to_vec()),
        event("after", subject, b"small too".to_vec()),
    ] {
        outbox::enqueue(&database, outbox_event, now)
            .await
            .expect("enqueue");
    }

    let config = OutboxConfig {
        max_attempts: 2,
        poll_interval_ms: 50,
        ..OutboxConfig::default()
    };
    let signal = OutboxSignal::default();
    let relay = OutboxRelay::new(
        database.clone(),
        jetstream.clone(),
        signal.clone(),
        config,
        Arc::new(SystemClock),
    );
    let shutdown = CancellationToken::new();
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    signal.notify();

    wait_until("both bad events are parked", || async {
        outbox::list_parked(&database).await.expect("parked").len() == 2
    })
    .await;
    wait_until("the good events are all published", || async {
        outbox::backlog(&database).await.expect("backlog") == 0
    })
    .await;

    let parked = outbox::list_parked(&database).await.expect("parked");
    let too_large = parked
        .iter()
        .find(|row| row.event_id == "too-large")
        .expect("too-large parked");
    assert_eq!(
        too_large.attempts, 1,
        "an oversized event is parked at once"
    );
    let reason = too_large.last_error.as_deref().unwrap_or_default();
    assert!(
        reason.contains("max_payload") && reason.contains(&max_payload.to_string()),
        "{reason}"
    );
    let unroutable = parked
        .iter()
        .find(|row| row.event_id == "unroutable")
        .expect("unroutable parked");
    assert_eq!(unroutable.attempts, 2, "parked after outbox.max_attempts");

    // what reached JetStream: exactly the two good events, in order
    let stream = jetstream
        .get_stream(nats::CASES_STREAM)
        .await
        .expect("stream");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut payloads = Vec::new();
    for _ in 0..2 {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("published")
            .expect("message")
            .expect("ok");
        payloads.push(message.payload.to_vec());
    }
    assert_eq!(payloads, [b"small".to_vec(), b"small too".to_vec()]);
    assert_eq!(stream.clone().info().await.expect("info").state.messages, 2);

    // an operator puts the parked events back in line (after fixing the cause); unfixed, they are
    // parked again and still block nothing
    assert_eq!(
        outbox::retry_parked(&database, &[]).await.expect("retry"),
        2
    );
    outbox::enqueue(&database, event("later", subject, b"later".to_vec()), now)
        .await
        .expect("enqueue");
    signal.notify();
    wait_until("parked again, the later event published", || async {
        outbox::list_parked(&database).await.expect("parked").len() == 2
            && outbox::backlog(&database).await.expect("backlog") == 0
    })
    .await;
    assert_eq!(stream.clone().info().await.expect("info").state.messages, 3);

    shutdown.cancel();
    relay_task.await.expect("relay stops");
}
