//! Intake in-process on port 0 (gRPC, and Open311 when asked), against a real nats-server started
//! for the test and a fresh SQLite file or PostgreSQL database; what it published, read back from
//! the stream.

#![allow(dead_code)]

use async_nats::jetstream::consumer::pull;
use futures::StreamExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use whistle_intake::IntakeConfig;
use whistle_platform::envelope::{self, Event, Payload};
use whistle_platform::testing::{Served, TestBed, serve};
use whistle_platform::{Clock, ManualClock};
use whistle_proto::intake::SubmitReportRequest;
use whistle_proto::intake::intake_service_client::IntakeServiceClient;
use whistle_proto::types::{Channel, Place, Severity};

pub struct Harness {
    pub bed: TestBed,
    pub client: IntakeServiceClient<tonic::transport::Channel>,
    pub served: Served,
    pub clock: Arc<ManualClock>,
    pub database_url: String,
    pub open311: Option<SocketAddr>,
    pub config: IntakeConfig,
}

pub const API_KEY: &str = "test-key-0190";

/// Starts intake on SQLite with the demo catalogue; `configure` may change the configuration.
pub async fn start(configure: impl FnOnce(&mut IntakeConfig)) -> Harness {
    start_on(None, false, configure).await
}

/// Starts intake on `database_url` (a fresh SQLite file when `None`), serving Open311 on a port of
/// its own when `open311` is true.
pub async fn start_on(
    database_url: Option<String>,
    open311: bool,
    configure: impl FnOnce(&mut IntakeConfig),
) -> Harness {
    let bed = TestBed::new().await;
    let database_url = database_url.unwrap_or_else(|| bed.sqlite_url("intake"));
    let mut config = IntakeConfig::default();
    // one service in-process: authentication is the end-to-end tests' (tests/tests/authorization.rs)
    config.auth.enabled = false;
    config.database.url = database_url.clone();
    config.nats.url = bed.nats.url();
    config.catalogue.file = Some(TestBed::demo_catalogue());
    config.outbox.poll_interval_ms = 100;
    if open311 {
        let keys = bed.dir.path().join("open311-api-keys");
        std::fs::write(&keys, format!("# test\n{API_KEY} test-client\n")).expect("keys");
        config.open311.enabled = true;
        config.open311.api_keys_file = Some(keys);
    }
    configure(&mut config);
    let clock = Arc::new(ManualClock::new(whistle_platform::SystemClock.now()));
    let open311_listener =
        open311.then(|| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
    let open311_address = open311_listener
        .as_ref()
        .map(|listener| listener.local_addr().expect("address"));
    let run_config = config.clone();
    let run_clock = clock.clone();
    let served = serve(move |listener, shutdown| {
        whistle_intake::run_with_open311(
            run_config,
            listener,
            open311_listener,
            run_clock,
            shutdown,
        )
    })
    .await;
    assert!(!served.task.is_finished(), "intake stopped during start-up");
    let client = IntakeServiceClient::connect(served.url())
        .await
        .expect("connect");
    Harness {
        bed,
        client,
        served,
        clock,
        database_url,
        open311: open311_address,
        config,
    }
}

/// A grid worker's report of the overflowing bin at 中岳路2号, by grid code.
pub fn garbage_report(request_id: &str) -> SubmitReportRequest {
    SubmitReportRequest {
        request_id: request_id.into(),
        channel: Channel::GridPatrol as i32,
        reporter_id: "grid-worker-17".into(),
        category_code: "E-01-03".into(),
        severity: Severity::Urgent as i32,
        description: "中岳路2号垃圾桶满溢，垃圾堆到路面".into(),
        place: Some(Place {
            grid_code: "420303003001001".into(),
            lat: 32.6369,
            lng: 110.7986,
            address: "中岳路2号".into(),
        }),
        ..Default::default()
    }
}

/// The same report `meters` north of 中岳路2号, found by position (no grid code).
pub fn garbage_report_north(request_id: &str, meters: f64) -> SubmitReportRequest {
    let mut request = garbage_report(request_id);
    let place = request.place.as_mut().expect("place");
    place.grid_code.clear();
    place.lat += meters / 111_195.0;
    request
}

impl Harness {
    pub async fn db(&self) -> sea_orm::DatabaseConnection {
        sea_orm::Database::connect(self.database_url.as_str())
            .await
            .expect("intake database")
    }

    /// Waits until the outbox published everything, then returns every `case.v1.>` event on the
    /// stream, in stream order.
    pub async fn case_events(&self) -> Vec<Event> {
        let db = self.db().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while whistle_platform::outbox::backlog(&db)
            .await
            .expect("backlog")
            != 0
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the outbox did not drain"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = db.close().await;
        let stream = self
            .bed
            .jetstream
            .get_stream(whistle_platform::nats::CASES_STREAM)
            .await
            .expect("stream");
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: "case.v1.>".into(),
                ..Default::default()
            })
            .await
            .expect("consumer");
        let pending = consumer.clone().info().await.expect("info").num_pending as usize;
        let mut messages = consumer.messages().await.expect("messages");
        let mut events = Vec::with_capacity(pending);
        for _ in 0..pending {
            let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .expect("in time")
                .expect("some")
                .expect("ok");
            events.push(envelope::decode(&message.payload).expect("decode"));
        }
        events
    }

    /// Publishes a fact of dispatch about `case_id`, as dispatch's relay would.
    pub async fn dispatch_publishes(&self, case_id: &str, payload: Payload) {
        self.dispatch_publishes_at(case_id, 2, payload).await;
    }

    /// As dispatch would, at the case's `version`.
    pub async fn dispatch_publishes_at(&self, case_id: &str, version: u64, payload: Payload) {
        let region = whistle_platform::testing::demo_region();
        let event = envelope::new_event(
            self.clock.as_ref(),
            "whistle-dispatch",
            case_id,
            version,
            Some(region),
            payload,
        );
        self.bed.publish(&event).await;
    }

    /// Waits until intake learned that `report_id`'s case is in `state`.
    pub async fn wait_case_state(
        &mut self,
        report_id: &str,
        state: whistle_proto::intake::CaseState,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let report = self
                .client
                .get_report(whistle_proto::intake::GetReportRequest {
                    report_id: report_id.into(),
                })
                .await
                .expect("get")
                .into_inner();
            if report.case_state == state as i32 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "case of report {report_id} never became {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The kind of each event (`case.reported`, ...).
pub fn kinds(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|event| envelope::kind(event.payload.as_ref().expect("payload")).label())
        .collect()
}

/// An HTTP answer: status, content type, body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl HttpAnswer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }
}

/// One plain HTTP/1.1 exchange over a fresh connection (`Connection: close`).
pub async fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    stream.write_all(body).await.expect("send body");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let header = |wanted: &str| {
        head.lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
            .map(|(_, value)| value.trim().to_string())
    };
    assert!(
        header("transfer-encoding").is_none(),
        "answers carry a Content-Length"
    );
    HttpAnswer {
        status,
        content_type: header("content-type").unwrap_or_default(),
        body: body.to_string(),
    }
}

/// A form body from pairs, URL-encoded.
pub fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        serializer.append_pair(name, value);
    }
    serializer.finish().into_bytes()
}
