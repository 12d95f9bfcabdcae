//! For service tests (feature `testing`): a temporary folder, a private nats-server with the
//! Whistle streams, publishing events exactly as an outbox relay does, and serving a service
//! in-process on port 0.

use crate::envelope::{self, Event};
use crate::grpc::GrpcListener;
use crate::local_nats::LocalNatsServer;
use async_nats::jetstream;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A temporary folder with a private nats-server whose streams exist.
#[derive(Debug)]
pub struct TestBed {
    pub dir: tempfile::TempDir,
    pub nats: LocalNatsServer,
    pub jetstream: jetstream::Context,
}

impl TestBed {
    pub async fn new() -> Self {
        Self::on(&LocalNatsServer::find_binary().expect("nats-server")).await
    }

    /// A test bed whose nats-server is the one at `binary`.
    pub async fn on(binary: &std::path::Path) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let nats = LocalNatsServer::start_binary(binary, &dir.path().join("nats"), &[])
            .expect("nats-server");
        let client = async_nats::connect(nats.url()).await.expect("nats client");
        let jetstream = jetstream::new(client);
        crate::nats::ensure_streams(&jetstream, &crate::config::NatsConfig::default())
            .await
            .expect("streams");
        Self {
            dir,
            nats,
            jetstream,
        }
    }

    /// A SQLite URL for a fresh database file in the folder.
    pub fn sqlite_url(&self, name: &str) -> String {
        format!(
            "sqlite://{}",
            self.dir.path().join(format!("{name}.sqlite")).display()
        )
    }

    /// A fresh SQLite database file in the folder holding only the platform's own tables (outbox,
    /// inbox), one connection: for tests of the outbox and the inbox without a service's schema.
    pub async fn platform_database(&self, name: &str) -> sea_orm::DatabaseConnection {
        struct PlatformTablesOnly;
        impl sea_orm_migration::MigratorTrait for PlatformTablesOnly {
            fn migrations() -> Vec<Box<dyn sea_orm_migration::MigrationTrait>> {
                crate::db::migrations::with_platform(Vec::new())
            }
        }
        let database =
            crate::db::connect(&crate::config::DatabaseConfig::at(self.sqlite_url(name), 1))
                .await
                .expect("database");
        crate::db::migrate::<PlatformTablesOnly>(&database)
            .await
            .expect("migrations");
        database
    }

    /// The demo catalogue of the repository (`deploy/demo/catalogue.json`).
    pub fn demo_catalogue() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/demo/catalogue.json"
        ))
    }

    /// Publishes an event as a relay does (`Nats-Msg-Id` = event id) and waits for the ack.
    pub async fn publish(&self, event: &Event) {
        self.publish_as(event, &event.event_id).await;
    }

    /// Publishes with another `Nats-Msg-Id`, so JetStream keeps a redelivery of the same event.
    pub async fn publish_as(&self, event: &Event, message_id: &str) {
        publish_like_relay(&self.jetstream, event, message_id).await;
    }
}

/// The demo catalogue's 车城路 street (十堰市 张湾区), a region every test event can carry.
pub fn demo_region() -> whistle_proto::types::Region {
    whistle_proto::types::Region {
        city_code: "420300".into(),
        district_code: "420303".into(),
        street_code: "420303003".into(),
        street_slug: "chechenglu".into(),
        community_code: "420303003001".into(),
        grid_code: "420303003001001".into(),
    }
}

/// Publishes an event with the relay's headers and `Nats-Msg-Id` = `message_id`; waits for the ack.
pub async fn publish_like_relay(jetstream: &jetstream::Context, event: &Event, message_id: &str) {
    let outbox = envelope::to_outbox(event).expect("envelope");
    let headers = crate::outbox::headers_for(message_id, &outbox.headers);
    jetstream
        .publish_with_headers(outbox.subject, headers, outbox.payload.into())
        .await
        .expect("publish")
        .await
        .expect("jetstream ack");
}

/// A service running in-process on a loopback port.
#[derive(Debug)]
pub struct Served {
    pub address: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Served {
    /// `http://<address>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Waits until the service listens (it opens its port once it serves), at most 30 s.
    pub async fn wait_listening(&self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while tokio::net::TcpStream::connect(self.address).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "service at {} did not start listening within 30 s",
                self.address
            );
            assert!(
                !self.task.is_finished(),
                "service at {} stopped during start-up",
                self.address
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Cancels and asserts the service stopped cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("service task").expect("clean stop");
    }
}

/// Binds port 0, spawns `run(listener, shutdown)` and waits until it listens (or has stopped).
pub async fn serve<F, Fut>(run: F) -> Served
where
    F: FnOnce(GrpcListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = GrpcListener::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let address = listener.local_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(listener, shutdown.clone()));
    // the port opens once the service serves; a service that fails to start is left to the test
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !task.is_finished()
        && tokio::time::Instant::now() < deadline
        && tokio::net::TcpStream::connect(address).await.is_err()
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Served {
        address,
        shutdown,
        task,
    }
}

/// Calls the unary method `path` (`/whistle.intake.v1.IntakeService/SubmitReport`) of the service
/// at `url` with `body` as the encoded request, bypassing the client's encoding, so a test can send
/// what a well-behaved client never would (a string that is not UTF-8). Returns the answer's status.
pub async fn call_raw(url: &str, path: &'static str, body: Vec<u8>) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    grpc.unary(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(|_| ())
}

/// Sends bytes as they are; reads and drops the answer (requests built by hand, e.g. undecodable
/// ones or the authorization matrix's).
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Self::Item,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Self::Item>, Self::Error> {
        let remaining = bytes::Buf::remaining(buf);
        bytes::Buf::advance(buf, remaining);
        Ok(Some(()))
    }
}

/// A fresh PostgreSQL database for one test, on the server at `WHISTLE_TEST_POSTGRES_URL`
/// (default `postgres://postgres@127.0.0.1:5432/postgres`); [`TestPostgres::drop_database`]
/// removes it again.
#[derive(Debug)]
pub struct TestPostgres {
    admin_url: String,
    name: String,
    /// The URL of the new database.
    pub url: String,
}

impl TestPostgres {
    /// Creates the database; panics, naming the server, when PostgreSQL cannot be reached.
    pub async fn create() -> Self {
        let admin_url = std::env::var("WHISTLE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
        let admin = sea_orm::Database::connect(admin_url.as_str())
            .await
            .unwrap_or_else(|error| {
                panic!("PostgreSQL at {admin_url} is required for this test: {error}")
            });
        let name = format!("whistle_test_{}", uuid::Uuid::now_v7().simple());
        sea_orm::ConnectionTrait::execute_unprepared(&admin, &format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        let _ = admin.close().await;
        let base = admin_url
            .rsplit_once('/')
            .map(|(base, _)| base.to_string())
            .expect("the admin URL names a database");
        Self {
            url: format!("{base}/{name}"),
            admin_url,
            name,
        }
    }

    /// Drops the database, closing what is still connected to it.
    pub async fn drop_database(self) {
        let admin = sea_orm::Database::connect(self.admin_url.as_str())
            .await
            .expect("admin connection");
        sea_orm::ConnectionTrait::execute_unprepared(
            &admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        )
        .await
        .expect("drop database");
        let _ = admin.close().await;
    }
}

/// Property-test inputs for decoders: bytes as a request or an event might arrive.
pub mod arbitrary {
    use proptest::prelude::*;
    use prost::Message;
    use prost_types::Timestamp;
    use whistle_proto::events::{
        AssignmentAcknowledged, AssignmentCheckedIn, AssignmentExtended, AssignmentOverdue,
        AssignmentProgressed, AssignmentResolved, AssignmentReturned, CaseAccepted, CaseClosed,
        CaseEscalated, CaseMerged, CaseRejected, CaseReopened, CaseReported, CaseVerified,
        EvaluationPeriodClosed, Event, WhistleIssued, event::Payload,
    };
    use whistle_proto::types::{Assignment, Attachment, Deadlines, Place, Region};

    /// Bytes a decoder may meet: anything at all, the encoding of one of `messages`, or such an
    /// encoding with a few bytes overwritten or cut short (strings that are no longer UTF-8,
    /// lengths that overrun).
    pub fn wire_bytes<M>(
        messages: impl Strategy<Value = M> + Clone + 'static,
    ) -> BoxedStrategy<Vec<u8>>
    where
        M: Message + std::fmt::Debug + 'static,
    {
        prop_oneof![
            1 => proptest::collection::vec(any::<u8>(), 0..200),
            2 => messages.clone().prop_map(|message| message.encode_to_vec()),
            2 => (
                messages,
                proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
                any::<prop::sample::Index>(),
                any::<bool>(),
            )
                .prop_map(|(message, changes, cut, truncate)| {
                    let mut bytes = message.encode_to_vec();
                    if bytes.is_empty() {
                        return bytes;
                    }
                    for (index, byte) in changes {
                        let at = index.index(bytes.len());
                        bytes[at] = byte;
                    }
                    if truncate {
                        bytes.truncate(cut.index(bytes.len()));
                    }
                    bytes
                }),
        ]
        .boxed()
    }

    /// Text of 0..=`limit + 2` characters: mostly letters, some 4-byte characters, blanks, line
    /// breaks and control characters, so a limit is met from both sides.
    pub fn text(limit: usize) -> BoxedStrategy<String> {
        let character = prop_oneof![
            6 => proptest::char::range('a', 'z'),
            2 => Just('𝄞'),
            1 => Just(' '),
            1 => Just('\n'),
            1 => any::<char>(),
        ];
        proptest::collection::vec(character, 0..=limit + 2)
            .prop_map(|characters| characters.into_iter().collect())
            .boxed()
    }

    /// One of `fixed` (values the rules accept), three times in four, or any text up to
    /// `limit + 2` characters.
    pub fn one_of_or_text(fixed: &[&'static str], limit: usize) -> BoxedStrategy<String> {
        let fixed: Vec<String> = fixed.iter().map(|value| value.to_string()).collect();
        prop_oneof![
            3 => prop::sample::select(fixed),
            1 => text(limit),
        ]
        .boxed()
    }

    /// Like [`one_of_or_text`], with the accepted values nine times in ten: for requests with
    /// many fields, so that some requests pass every check.
    pub fn mostly(fixed: &[&'static str], limit: usize) -> BoxedStrategy<String> {
        let fixed: Vec<String> = fixed.iter().map(|value| value.to_string()).collect();
        prop_oneof![
            9 => prop::sample::select(fixed),
            1 => text(limit),
        ]
        .boxed()
    }

    /// A timestamp: none, a plausible one, or any seconds and nanoseconds at all.
    pub fn timestamp() -> BoxedStrategy<Option<Timestamp>> {
        prop_oneof![
            1 => Just(None),
            3 => (1_700_000_000i64..1_900_000_000, 0i32..1_000_000_000)
                .prop_map(|(seconds, nanos)| Some(Timestamp { seconds, nanos })),
            1 => (any::<i64>(), any::<i32>())
                .prop_map(|(seconds, nanos)| Some(Timestamp { seconds, nanos })),
        ]
        .boxed()
    }

    /// An attachment whose fields are well-formed or not, around `limit` characters.
    pub fn attachment(limit: usize) -> BoxedStrategy<Attachment> {
        (
            one_of_or_text(&["https://files.example/1.jpg", "s3://b/k", ""], limit),
            one_of_or_text(
                &[
                    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                    "",
                ],
                limit,
            ),
            one_of_or_text(&["image/jpeg", "a/b", ""], limit),
            any::<u64>(),
        )
            .prop_map(|(uri, sha256, media_type, size_bytes)| Attachment {
                uri,
                sha256,
                media_type,
                size_bytes,
            })
            .boxed()
    }

    fn region() -> BoxedStrategy<Option<Region>> {
        let demo = super::demo_region();
        prop_oneof![
            1 => Just(None),
            3 => Just(Some(demo)),
            1 => (text(8), text(8), text(8), text(8), text(8), text(16)).prop_map(
                |(city_code, district_code, street_code, street_slug, community_code, grid_code)| {
                    Some(Region {
                        city_code,
                        district_code,
                        street_code,
                        street_slug,
                        community_code,
                        grid_code,
                    })
                }
            ),
        ]
        .boxed()
    }

    fn assignment() -> BoxedStrategy<Assignment> {
        let ids = (
            one_of_or_text(&["a1", "a2", ""], 8),
            one_of_or_text(&["c1", "c2", ""], 8),
            one_of_or_text(&["zw-sanitation", "pm-zhongyue", ""], 8),
            0i32..4,
            0i32..7,
            proptest::collection::vec(0i32..8, 0..4),
            any::<u64>(),
            any::<bool>(),
        );
        let times = (
            timestamp(),
            timestamp(),
            timestamp(),
            timestamp(),
            timestamp(),
            timestamp(),
            timestamp(),
            timestamp(),
        );
        let texts = (
            text(6),
            text(6),
            proptest::collection::vec(attachment(8), 0..3),
            text(6),
            text(6),
        );
        (ids, times, texts)
            .prop_map(
                |(
                    (
                        assignment_id,
                        case_id,
                        department_code,
                        role,
                        status,
                        flags,
                        version,
                        on_site,
                    ),
                    (
                        whistled,
                        acknowledge_by,
                        resolve_by,
                        acknowledged,
                        on_site_at,
                        resolved,
                        returned,
                        promised,
                    ),
                    (responsible_person, resolution, evidence, return_reason, suggested),
                )| Assignment {
                    assignment_id,
                    case_id,
                    department_code,
                    role,
                    status,
                    flags,
                    whistled_at: whistled,
                    deadlines: Some(Deadlines {
                        acknowledge_by,
                        on_site_by: None,
                        resolve_by,
                    }),
                    requires_on_site: on_site,
                    acknowledged_at: acknowledged,
                    responsible_person,
                    contact_phone: String::new(),
                    promised_at: promised,
                    on_site_at,
                    resolved_at: resolved,
                    resolution,
                    evidence,
                    returned_at: returned,
                    return_reason,
                    suggested_department_code: suggested,
                    version,
                    ..Assignment::default()
                },
            )
            .boxed()
    }

    fn case_reported() -> BoxedStrategy<CaseReported> {
        (
            (
                text(6),
                0i32..7,
                text(6),
                one_of_or_text(&["E-01-03", "E-06-01", "C-01-01"], 8),
                0i32..6,
                text(8),
            ),
            (
                one_of_or_text(&["420303003001001", "420303003002001"], 16),
                -100.0f64..100.0,
                -200.0f64..200.0,
                text(8),
            ),
            proptest::collection::vec(attachment(8), 0..3),
            timestamp(),
        )
            .prop_map(
                |(
                    (report_id, channel, reporter_id, category_code, severity, description),
                    (grid_code, lat, lng, address),
                    attachments,
                    observed_at,
                )| CaseReported {
                    report_id,
                    channel,
                    reporter_id,
                    category_code,
                    severity,
                    description,
                    place: Some(Place {
                        grid_code,
                        lat,
                        lng,
                        address,
                    }),
                    attachments,
                    observed_at,
                },
            )
            .boxed()
    }

    fn payload() -> BoxedStrategy<Option<Payload>> {
        let with_assignment = (
            proptest::option::of(assignment()),
            any::<bool>(),
            0u8..8,
            text(6),
            any::<f64>(),
            0i32..8,
            timestamp(),
        )
            .prop_map(
                |(assignment, within_limit, kind, note, distance, flag, at)| {
                    Some(match kind {
                        0 => Payload::WhistleIssued(WhistleIssued {
                            assignment,
                            description: note,
                            ..WhistleIssued::default()
                        }),
                        1 => Payload::AssignmentAcknowledged(AssignmentAcknowledged {
                            assignment,
                            within_limit,
                        }),
                        2 => Payload::AssignmentCheckedIn(AssignmentCheckedIn {
                            assignment,
                            within_limit,
                            distance_meters: distance,
                        }),
                        3 => {
                            Payload::AssignmentProgressed(AssignmentProgressed { assignment, note })
                        }
                        4 => Payload::AssignmentResolved(AssignmentResolved {
                            assignment,
                            within_limit,
                        }),
                        5 => Payload::AssignmentReturned(AssignmentReturned { assignment }),
                        6 => Payload::AssignmentOverdue(AssignmentOverdue {
                            assignment,
                            flag,
                            ..AssignmentOverdue::default()
                        }),
                        _ => Payload::AssignmentExtended(AssignmentExtended {
                            assignment,
                            new_resolve_by: at,
                            ..AssignmentExtended::default()
                        }),
                    })
                },
            );
        let case_level = (
            0u8..8,
            text(6),
            any::<bool>(),
            proptest::collection::vec(one_of_or_text(&["a1", "a2"], 6), 0..3),
        )
            .prop_map(|(kind, text, passed, assignment_ids)| match kind {
                0 => None,
                1 => Some(Payload::CaseMerged(CaseMerged {
                    report_id: text.clone(),
                    merged_into_case_id: text,
                    ..CaseMerged::default()
                })),
                2 => Some(Payload::CaseAccepted(CaseAccepted { accepted_by: text })),
                3 => Some(Payload::CaseRejected(CaseRejected {
                    rejected_by: text.clone(),
                    reason: text,
                })),
                4 => Some(Payload::CaseVerified(CaseVerified {
                    verified_by: text.clone(),
                    passed,
                    note: text,
                    verdicts: Vec::new(),
                })),
                5 => Some(Payload::CaseClosed(CaseClosed {})),
                6 => Some(Payload::CaseReopened(CaseReopened {
                    reason: text,
                    assignment_ids,
                })),
                _ => Some(if passed {
                    Payload::CaseEscalated(CaseEscalated {
                        assignment_id: text,
                        ..CaseEscalated::default()
                    })
                } else {
                    Payload::EvaluationPeriodClosed(EvaluationPeriodClosed {
                        period: text,
                        ..EvaluationPeriodClosed::default()
                    })
                }),
            });
        prop_oneof![
            2 => case_reported().prop_map(|reported| Some(Payload::CaseReported(reported))),
            3 => with_assignment,
            2 => case_level,
        ]
        .boxed()
    }

    /// Events as a consumer may receive them: well-formed or not, with ids that repeat across
    /// events so that later events meet what earlier ones stored.
    pub fn event() -> BoxedStrategy<Event> {
        (
            one_of_or_text(&["e1", "e2", "e3"], 8),
            timestamp(),
            one_of_or_text(&["c1", "c2", ""], 8),
            any::<u64>(),
            region(),
            payload(),
        )
            .prop_map(
                |(event_id, occurred_at, case_id, case_version, region, payload)| Event {
                    event_id,
                    occurred_at,
                    case_id,
                    case_version,
                    region,
                    source: "whistle-test".into(),
                    payload,
                },
            )
            .boxed()
    }
}

/// Runs `cases` inputs of `bytes` through `property`, which decodes and validates one input and
/// answers whether it passed validation (failing the case when what passed breaks a limit). Fails
/// on a panic, on a failed case, and when no input passed at all: a property over inputs that are
/// all refused proves nothing.
pub fn run_decoder_property<F>(
    name: &str,
    cases: u32,
    bytes: proptest::strategy::BoxedStrategy<Vec<u8>>,
    property: F,
) where
    F: Fn(&[u8]) -> Result<bool, proptest::test_runner::TestCaseError>,
{
    use proptest::test_runner::{Config, TestRunner};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let accepted = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&bytes, |input| {
        if property(&input)? {
            accepted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    if let Err(error) = outcome {
        panic!("{name}: {error}");
    }
    let accepted = accepted.load(Ordering::Relaxed);
    println!("{name}: {accepted} of {cases} inputs passed validation");
    assert!(
        accepted > 0,
        "{name}: no input passed validation in {cases} cases"
    );
}

/// A nats-server that takes several filter subjects per consumer (2.10 or later), for the tests of
/// that path: `WHISTLE_TEST_NATS_2_10_BIN`, else the one `.ci/run` installs from PyPI
/// (`target/ci-tools/venv/bin/nats-server`), else the one the other tests use if it is new enough.
/// `None` when there is none (Debian 12's own is 2.9): the caller says so and tests nothing.
/// `.ci/run` sets the variable, so there the tests cannot pass by finding none.
///
/// # Panics
/// When `WHISTLE_TEST_NATS_2_10_BIN` names no nats-server of 2.10 or later.
pub fn nats_server_taking_several_filters() -> Option<PathBuf> {
    if let Some(binary) = std::env::var_os("WHISTLE_TEST_NATS_2_10_BIN").map(PathBuf::from) {
        let version = LocalNatsServer::version_of(&binary);
        assert!(
            version
                .as_deref()
                .is_some_and(crate::inbox::takes_several_filters),
            "WHISTLE_TEST_NATS_2_10_BIN={} is not a nats-server of 2.10 or later ({version:?})",
            binary.display()
        );
        return Some(binary);
    }
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    [workspace.join("target/ci-tools/venv/bin/nats-server")]
        .into_iter()
        .chain(LocalNatsServer::find_binary().ok())
        .filter(|binary| binary.is_file())
        .find(|binary| {
            LocalNatsServer::version_of(binary)
                .is_some_and(|version| crate::inbox::takes_several_filters(&version))
        })
}

/// One payload of every kind, at its default value; a new kind of payload does not compile until
/// it is listed here (and `provenance`'s test then asks for its producer).
pub fn every_payload() -> Vec<whistle_proto::events::event::Payload> {
    use whistle_proto::events::event::Payload;
    let payloads = vec![
        Payload::CaseReported(Default::default()),
        Payload::CaseMerged(Default::default()),
        Payload::CaseAccepted(Default::default()),
        Payload::CaseRejected(Default::default()),
        Payload::CaseVerified(Default::default()),
        Payload::CaseClosed(Default::default()),
        Payload::CaseReopened(Default::default()),
        Payload::CaseEscalated(Default::default()),
        Payload::CaseEvidenceAttached(Default::default()),
        Payload::CaseRecurrent(Default::default()),
        Payload::ReportSplit(Default::default()),
        Payload::WhistleIssued(Default::default()),
        Payload::AssignmentAcknowledged(Default::default()),
        Payload::AssignmentCheckedIn(Default::default()),
        Payload::AssignmentProgressed(Default::default()),
        Payload::AssignmentResolved(Default::default()),
        Payload::AssignmentReturned(Default::default()),
        Payload::AssignmentOverdue(Default::default()),
        Payload::AssignmentExtended(Default::default()),
        Payload::EvaluationPeriodClosed(Default::default()),
        Payload::CaseResolvedLocally(Default::default()),
        Payload::CaseDeferred(Default::default()),
        Payload::CaseResumed(Default::default()),
        Payload::AssignmentExtensionRequested(Default::default()),
        Payload::AssignmentExtensionRefused(Default::default()),
        Payload::AssignmentReturnDecided(Default::default()),
        Payload::AssignmentReportMerged(Default::default()),
        Payload::AssignmentEvidenceAttached(Default::default()),
        Payload::AssignmentRecurrent(Default::default()),
        Payload::EvaluationPeriodReopened(Default::default()),
        Payload::EvaluationCooperationRated(Default::default()),
        Payload::EvaluationSatisfactionRecorded(Default::default()),
    ];
    payloads.iter().for_each(listed);
    payloads
}

/// No wildcard: a new kind of payload does not compile until it is listed above.
fn listed(payload: &whistle_proto::events::event::Payload) {
    use whistle_proto::events::event::Payload;
    match payload {
        Payload::CaseReported(_) => {}
        Payload::CaseMerged(_) => {}
        Payload::CaseAccepted(_) => {}
        Payload::CaseRejected(_) => {}
        Payload::CaseVerified(_) => {}
        Payload::CaseClosed(_) => {}
        Payload::CaseReopened(_) => {}
        Payload::CaseEscalated(_) => {}
        Payload::CaseEvidenceAttached(_) => {}
        Payload::CaseRecurrent(_) => {}
        Payload::ReportSplit(_) => {}
        Payload::WhistleIssued(_) => {}
        Payload::AssignmentAcknowledged(_) => {}
        Payload::AssignmentCheckedIn(_) => {}
        Payload::AssignmentProgressed(_) => {}
        Payload::AssignmentResolved(_) => {}
        Payload::AssignmentReturned(_) => {}
        Payload::AssignmentOverdue(_) => {}
        Payload::AssignmentExtended(_) => {}
        Payload::EvaluationPeriodClosed(_) => {}
        Payload::CaseResolvedLocally(_) => {}
        Payload::CaseDeferred(_) => {}
        Payload::CaseResumed(_) => {}
        Payload::AssignmentExtensionRequested(_) => {}
        Payload::AssignmentExtensionRefused(_) => {}
        Payload::AssignmentReturnDecided(_) => {}
        Payload::AssignmentReportMerged(_) => {}
        Payload::AssignmentEvidenceAttached(_) => {}
        Payload::AssignmentRecurrent(_) => {}
        Payload::EvaluationPeriodReopened(_) => {}
        Payload::EvaluationCooperationRated(_) => {}
        Payload::EvaluationSatisfactionRecorded(_) => {}
    }
}
