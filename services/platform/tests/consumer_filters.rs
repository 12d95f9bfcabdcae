//! Where nats-server takes several filter subjects per consumer (2.10 and later), a consumer is
//! given only the events its handler applies: a consumer an earlier version left on the whole
//! stream is narrowed at start, the events it would have skipped are never delivered, a service's
//! NATS user may do that, and with permissions from before it the consumer reads the whole stream
//! as on 2.9. Real nats-server (2.10 or later: see
//! `nats_server_taking_several_filters`), real SQLite file.

use async_nats::jetstream::{self, consumer::pull};
use sea_orm::DatabaseTransaction;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use whistle_platform::envelope::{self, Event, Payload};
use whistle_platform::inbox::{self, ConsumerSpec, EventHandler, HandleError};
use whistle_platform::local_nats::LocalNatsServer;
use whistle_platform::nats_accounts::Registry;
use whistle_platform::provenance::{self, Producer};
use whistle_platform::testing::{TestBed, demo_region, nats_server_taking_several_filters};
use whistle_platform::{SystemClock, nats};
use whistle_proto::events::{CaseAccepted, CaseRecurrent, CaseReported};

/// Applies intake's events, as dispatch's consumer does; counts every event it is given.
#[derive(Default)]
struct IntakesEvents {
    given: AtomicUsize,
    handled: Mutex<Vec<String>>,
}

impl EventHandler for IntakesEvents {
    fn applies(&self, _subject: &str, event: &Event) -> bool {
        self.given.fetch_add(1, Ordering::SeqCst);
        matches!(
            event.payload,
            Some(Payload::CaseReported(_) | Payload::CaseRecurrent(_))
        )
    }

    async fn handle(
        &self,
        _transaction: &DatabaseTransaction,
        subject: &str,
        _event: &Event,
    ) -> Result<(), HandleError> {
        self.handled
            .lock()
            .expect("handled")
            .push(subject.to_string());
        Ok(())
    }
}

fn spec(durable: &str) -> ConsumerSpec {
    ConsumerSpec {
        stream: nats::CASES_STREAM.to_string(),
        durable: durable.to_string(),
        filter_subject: "case.v1.>".to_string(),
        applied_subjects: provenance::publish_subjects(Producer::Intake),
        max_batch: 16,
    }
}

fn event(source: &str, case_id: &str, payload: Payload) -> Event {
    envelope::new_event(
        &SystemClock,
        source,
        case_id,
        1,
        Some(demo_region()),
        payload,
    )
}

/// Two of intake's events among three of dispatch's.
fn events() -> Vec<Event> {
    vec![
        event(
            "whistle-dispatch",
            "case-0",
            Payload::CaseAccepted(CaseAccepted::default()),
        ),
        event(
            "whistle-intake",
            "case-1",
            Payload::CaseReported(CaseReported::default()),
        ),
        event(
            "whistle-dispatch",
            "case-1",
            Payload::CaseAccepted(CaseAccepted::default()),
        ),
        event(
            "whistle-intake",
            "case-1",
            Payload::CaseRecurrent(CaseRecurrent::default()),
        ),
        event(
            "whistle-dispatch",
            "case-2",
            Payload::CaseAccepted(CaseAccepted::default()),
        ),
    ]
}

/// Waits until the consumer exists and has nothing pending or unacknowledged, and returns its
/// info.
async fn settled(jetstream: &jetstream::Context, durable: &str) -> jetstream::consumer::Info {
    let stream = jetstream
        .get_stream(nats::CASES_STREAM)
        .await
        .expect("stream");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info = stream.consumer_info(durable).await;
        if let Ok(info) = &info
            && info.num_pending == 0
            && info.num_ack_pending == 0
            && info.delivered.stream_sequence > 0
        {
            return info.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates `durable` on the whole cases stream, as an earlier version (or NATS 2.9) left it.
async fn on_the_whole_stream(jetstream: &jetstream::Context, durable: &str) {
    jetstream
        .get_stream(nats::CASES_STREAM)
        .await
        .expect("stream")
        .get_or_create_consumer(
            durable,
            pull::Config {
                durable_name: Some(durable.into()),
                filter_subject: "case.v1.>".into(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .expect("the consumer on the whole stream");
}

fn server() -> Option<std::path::PathBuf> {
    let binary = nats_server_taking_several_filters();
    if binary.is_none() {
        eprintln!(
            "no nats-server of 2.10 or later here (set WHISTLE_TEST_NATS_2_10_BIN, or run .ci/run, \
             which installs one): the several-filter path is not tested in this run"
        );
    }
    binary
}

#[tokio::test]
async fn a_consumer_left_on_the_whole_stream_is_narrowed_to_what_its_handler_applies() {
    let Some(binary) = server() else { return };
    let bed = TestBed::on(&binary).await;
    let jetstream = bed.jetstream.clone();
    // as an earlier version left it: the whole stream, with a backlog
    on_the_whole_stream(&jetstream, "dispatch-cases").await;
    for event in events() {
        bed.publish(&event).await;
    }

    let database = bed.platform_database("inbox").await;
    let handler = Arc::new(IntakesEvents::default());
    let shutdown = CancellationToken::new();
    let consumer = tokio::spawn(inbox::run_consumer(
        jetstream.clone(),
        database,
        Arc::new(SystemClock),
        spec("dispatch-cases"),
        handler.clone(),
        shutdown.clone(),
    ));
    let info = settled(&jetstream, "dispatch-cases").await;
    let mut wanted = provenance::publish_subjects(Producer::Intake);
    wanted.sort();
    let mut filters = info.config.filter_subjects.clone();
    filters.sort();
    assert_eq!(filters, wanted, "narrowed");
    assert_eq!(info.config.filter_subject, "", "no single filter left");
    assert_eq!(
        info.delivered.consumer_sequence, 2,
        "only intake's two events were delivered: {info:?}"
    );
    assert_eq!(handler.given.load(Ordering::SeqCst), 2, "given only those");
    assert_eq!(
        handler.handled.lock().expect("handled").len(),
        2,
        "and applied both"
    );

    // the next events too: of three, the one it applies
    let later = [
        event(
            "whistle-dispatch",
            "case-3",
            Payload::CaseAccepted(CaseAccepted::default()),
        ),
        event(
            "whistle-intake",
            "case-4",
            Payload::CaseReported(CaseReported::default()),
        ),
    ];
    for event in &later {
        bed.publish(event).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while handler.handled.lock().expect("handled").len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "case-4 not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let info = settled(&jetstream, "dispatch-cases").await;
    assert_eq!(info.delivered.consumer_sequence, 3, "{info:?}");
    assert_eq!(handler.given.load(Ordering::SeqCst), 3);
    shutdown.cancel();
    consumer.await.expect("consumer task");
}

/// A service's NATS user (the generated permissions) may create its consumer with several
/// filter subjects, and narrow one it finds on the whole stream.
#[tokio::test]
async fn a_services_nats_user_may_narrow_its_consumer() {
    let Some(binary) = server() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::from_catalogue_json(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s/base/catalogue.json"),
        )
        .expect("catalogue"),
    )
    .expect("registry");
    let server = LocalNatsServer::start_binary_with_accounts(&binary, dir.path(), &registry)
        .expect("nats-server");
    let config = whistle_platform::config::NatsConfig {
        url: server.url(),
        nkey_seed_file: server.seed_file("dispatch"),
        ..Default::default()
    };
    let client = nats::connect(&config, "dispatch")
        .await
        .expect("connect as dispatch");
    let jetstream = jetstream::new(client);
    nats::ensure_streams(&jetstream, &config)
        .await
        .expect("streams");
    on_the_whole_stream(&jetstream, "dispatch-cases").await;

    let handler = Arc::new(IntakesEvents::default());
    let shutdown = CancellationToken::new();
    // (the bed's own server is not used: only its folder and database)
    let bed = TestBed::on(&binary).await;
    let database = bed.platform_database("inbox").await;
    let consumer = tokio::spawn(inbox::run_consumer(
        jetstream.clone(),
        database,
        Arc::new(SystemClock),
        spec("dispatch-cases"),
        handler,
        shutdown.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut consumer_handle = jetstream
        .get_stream(nats::CASES_STREAM)
        .await
        .expect("stream")
        .get_consumer::<pull::Config>("dispatch-cases")
        .await
        .expect("consumer");
    loop {
        let info = consumer_handle.info().await.expect("info");
        if !info.config.filter_subjects.is_empty() {
            assert_eq!(info.config.filter_subject, "");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not narrowed under dispatch's permissions: {:?}",
            info.config
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    consumer.await.expect("consumer task");
}

/// NATS permissions generated before consumers took several subjects (no create subject without
/// a filter): the service still consumes everything it applies. A consumer it creates is created
/// on the whole stream, and one it finds there is left so; its handler skips the rest, as on 2.9.
#[tokio::test]
async fn with_permissions_from_before_the_consumer_reads_the_whole_stream() {
    let Some(binary) = server() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let consumers = ["created-old", "found-old"];
    let mut allowed = vec!["case.v1.>".to_string()];
    for stream in [
        nats::CASES_STREAM,
        nats::WHISTLES_STREAM,
        nats::EVALUATION_STREAM,
    ] {
        allowed.push(format!("$JS.API.STREAM.INFO.{stream}"));
        allowed.push(format!("$JS.API.STREAM.CREATE.{stream}"));
    }
    for name in consumers {
        let stream = nats::CASES_STREAM;
        allowed.extend([
            format!("$JS.API.CONSUMER.INFO.{stream}.{name}"),
            format!("$JS.API.CONSUMER.CREATE.{stream}.{name}.case.v1.>"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"),
            format!("$JS.ACK.{stream}.{name}.>"),
            format!("$JS.ACK.*.*.{stream}.{name}.>"),
        ]);
    }
    let quoted: Vec<String> = allowed
        .iter()
        .map(|subject| format!("{subject:?}"))
        .collect();
    let config = dir.path().join("old-permissions.conf");
    std::fs::write(
        &config,
        format!(
            "accounts {{ W {{ jetstream: enabled, users: [ {{ user: svc, password: pw, \
             permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [\"_INBOX.>\"] }} }} }} ] }} }}\n",
            quoted.join(", ")
        ),
    )
    .expect("config");
    let server = LocalNatsServer::start_binary(
        &binary,
        &dir.path().join("nats"),
        &["-c", &config.display().to_string()],
    )
    .expect("nats-server");
    let client = async_nats::ConnectOptions::with_user_and_password("svc".into(), "pw".into())
        .connect(server.url())
        .await
        .expect("connect");
    let jetstream = jetstream::new(client);
    nats::ensure_streams(&jetstream, &whistle_platform::config::NatsConfig::default())
        .await
        .expect("streams");
    // one consumer an earlier version left on the whole stream
    on_the_whole_stream(&jetstream, "found-old").await;
    for event in events() {
        let outbox = envelope::to_outbox(&event).expect("envelope");
        jetstream
            .publish_with_headers(
                outbox.subject.clone(),
                whistle_platform::outbox::headers_for(&event.event_id, &outbox.headers),
                outbox.payload.into(),
            )
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    let bed = TestBed::on(&binary).await;
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    let mut handlers = Vec::new();
    for name in consumers {
        let handler = Arc::new(IntakesEvents::default());
        handlers.push(handler.clone());
        tasks.push(tokio::spawn(inbox::run_consumer(
            jetstream.clone(),
            bed.platform_database(name).await,
            Arc::new(SystemClock),
            spec(name),
            handler,
            shutdown.clone(),
        )));
    }
    for (name, handler) in consumers.iter().zip(&handlers) {
        let info = settled(&jetstream, name).await;
        assert_eq!(info.config.filter_subject, "case.v1.>", "{name}: {info:?}");
        assert!(info.config.filter_subjects.is_empty(), "{name}");
        assert_eq!(
            info.delivered.consumer_sequence, 5,
            "{name}: the whole stream"
        );
        assert_eq!(
            handler.handled.lock().expect("handled").len(),
            2,
            "{name}: applied intake's two"
        );
    }
    shutdown.cancel();
    for task in tasks {
        task.await.expect("consumer task");
    }
}
