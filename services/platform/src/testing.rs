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
        let dir = tempfile::tempdir().expect("temporary folder");
        let nats = LocalNatsServer::start(&dir.path().join("nats")).expect("nats-server");
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

/// Sends bytes as they are; reads and drops the answer.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

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
