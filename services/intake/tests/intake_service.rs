//! Intake in-process on port 0, against a real nats-server started for the test and a fresh SQLite file.

use async_nats::jetstream;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use whistle_intake::IntakeConfig;
use whistle_platform::SystemClock;
use whistle_platform::envelope::{self, Payload};
use whistle_platform::testing::{Served, TestBed, serve};
use whistle_proto::intake::intake_service_client::IntakeServiceClient;
use whistle_proto::intake::{GetReportRequest, ListCategoriesRequest, SubmitReportRequest};
use whistle_proto::types::{Channel, Place, Severity};

struct Harness {
    bed: TestBed,
    client: IntakeServiceClient<tonic::transport::Channel>,
    served: Served,
}

async fn start() -> Harness {
    let bed = TestBed::new().await;
    let mut config = IntakeConfig::default();
    // one service in-process: authentication is the end-to-end tests' (tests/tests/authorization.rs)
    config.auth.enabled = false;
    config.database.url = bed.sqlite_url("intake");
    config.nats.url = bed.nats.url();
    config.catalogue.file = Some(TestBed::demo_catalogue());
    let served = serve(|listener, shutdown| {
        whistle_intake::run(config, listener, Arc::new(SystemClock), shutdown)
    })
    .await;
    let client = IntakeServiceClient::connect(served.url())
        .await
        .expect("connect");
    Harness {
        bed,
        client,
        served,
    }
}

fn garbage_report(request_id: &str) -> SubmitReportRequest {
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
        attachments: vec![],
        observed_at: None,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_report_becomes_a_case_reported_event_once() {
    let mut harness = start().await;

    let first = harness
        .client
        .submit_report(garbage_report("r-1"))
        .await
        .expect("submit")
        .into_inner();
    let again = harness
        .client
        .submit_report(garbage_report("r-1"))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(first, again, "a retry returns the first answer");
    assert!(!first.merged);
    let region = first.region.clone().expect("region");
    assert_eq!(region.street_slug, "chechenglu");
    assert_eq!(region.community_code, "420303003001");

    let mut changed = garbage_report("r-1");
    changed.description = "something else".into();
    let error = harness
        .client
        .submit_report(changed)
        .await
        .expect_err("key reuse");
    assert_eq!(error.code(), Code::AlreadyExists);
    assert!(
        error.message().contains("request_id"),
        "{}",
        error.message()
    );

    let report = harness
        .client
        .get_report(GetReportRequest {
            report_id: first.report_id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(report.case_id, first.case_id);
    assert_eq!(report.place.expect("place").address, "中岳路2号");

    // exactly one case.reported on the stream
    let stream = harness
        .bed
        .jetstream
        .get_stream(whistle_platform::nats::CASES_STREAM)
        .await
        .expect("stream");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: "case.v1.420300.420303.chechenglu.reported".into(),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .expect("event in time")
        .expect("some")
        .expect("ok");
    let headers = message.headers.clone().expect("headers");
    assert_eq!(
        headers.get("ce-type").map(|v| v.as_str()),
        Some("whistle.case.reported.v1")
    );
    assert_eq!(
        headers.get("ce-subject").map(|v| v.as_str()),
        Some(first.case_id.as_str())
    );
    let event = envelope::decode(&message.payload).expect("decode");
    assert_eq!(event.case_id, first.case_id);
    assert!(
        matches!(event.payload, Some(Payload::CaseReported(ref reported)) if reported.report_id == first.report_id)
    );
    message.ack().await.expect("ack");
    let info = consumer.clone().info().await.expect("info").clone();
    assert_eq!(info.num_pending, 0, "the retry published nothing");

    harness.served.stop().await;
}

/// A change that makes a valid report invalid.
type Mutation = Box<dyn Fn(&mut SubmitReportRequest)>;

#[tokio::test]
async fn bad_reports_name_the_field() {
    let mut harness = start().await;
    let cases: Vec<(&str, Mutation)> = vec![
        ("request_id", Box::new(|r| r.request_id.clear())),
        ("channel", Box::new(|r| r.channel = 0)),
        ("reporter_id", Box::new(|r| r.reporter_id.clear())),
        (
            "category_code",
            Box::new(|r| r.category_code = "garbage".into()),
        ),
        (
            "category_code",
            Box::new(|r| r.category_code = "E-99-99".into()),
        ),
        ("severity", Box::new(|r| r.severity = 42)),
        ("description", Box::new(|r| r.description = "   ".into())),
        ("place", Box::new(|r| r.place = None)),
        (
            "place.grid_code",
            Box::new(|r| r.place.as_mut().expect("place").grid_code = "12".into()),
        ),
        (
            "place.grid_code",
            Box::new(|r| r.place.as_mut().expect("place").grid_code = "110101001001001".into()),
        ),
        (
            "place.lat",
            Box::new(|r| r.place.as_mut().expect("place").lat = 123.0),
        ),
        (
            "place.lat",
            Box::new(|r| {
                let p = r.place.as_mut().expect("place");
                p.lat = 0.0;
                p.lng = 0.0;
            }),
        ),
    ];
    for (index, (field, mutate)) in cases.iter().enumerate() {
        let mut request = garbage_report(&format!("bad-{index}"));
        mutate(&mut request);
        let error = harness
            .client
            .submit_report(request)
            .await
            .expect_err("must be refused");
        assert_eq!(error.code(), Code::InvalidArgument, "case {index}");
        assert!(
            error.message().starts_with(&format!("{field}:")),
            "case {index}: {}",
            error.message()
        );
    }
    let missing = harness
        .client
        .get_report(GetReportRequest {
            report_id: "nope".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), Code::NotFound);

    let categories = harness
        .client
        .list_categories(ListCategoriesRequest { kind: 0 })
        .await
        .expect("list")
        .into_inner();
    assert!(
        categories
            .categories
            .iter()
            .any(|category| category.code == "E-01-03")
    );
    harness.served.stop().await;
}

/// Every field is bounded by the limits table, and the error names the field (with its index)
/// in a `google.rpc.BadRequest`; a request too large to decode is refused before it is read; a
/// string that is not UTF-8 is INVALID_ARGUMENT naming the field, not INTERNAL.
#[tokio::test]
async fn limits_bound_every_field_and_undecodable_requests_are_invalid_arguments() {
    use tonic_types::StatusExt;
    let mut harness = start().await;
    let attachment = |media_type: String| whistle_proto::types::Attachment {
        uri: "https://files.example/1.jpg".into(),
        sha256: "a".repeat(64),
        media_type,
        size_bytes: 1024,
    };
    let mut request = garbage_report("too-long-media-type");
    request.attachments = vec![
        attachment("image/jpeg".into()),
        attachment(format!("image/{}", "好".repeat(200))),
    ];
    let error = harness
        .client
        .submit_report(request)
        .await
        .expect_err("media type too long");
    assert_eq!(error.code(), Code::InvalidArgument);
    let details = error.get_error_details();
    let violation = &details.bad_request().expect("bad request").field_violations[0];
    assert_eq!(violation.field, "attachments[1].media_type");
    assert_eq!(violation.description, "at most 127 characters");

    // issue 5: a 1.2 MB media type is refused before it is decoded
    let mut request = garbage_report("huge-media-type");
    request.attachments = vec![attachment(format!("image/{}", "x".repeat(1_200_000)))];
    let error = harness
        .client
        .submit_report(request)
        .await
        .expect_err("too large");
    assert_eq!(error.code(), Code::OutOfRange, "{error:?}");

    // request_id "r-utf8", then an attachment whose media_type is the bytes ff fe
    let attachment_bytes = [0x1a, 0x02, 0xff, 0xfe];
    let mut body = vec![0x0a, 0x06];
    body.extend_from_slice(b"r-utf8");
    body.extend_from_slice(&[0x42, attachment_bytes.len() as u8]);
    body.extend_from_slice(&attachment_bytes);
    let error = whistle_platform::testing::call_raw(
        &harness.served.url(),
        "/whistle.intake.v1.IntakeService/SubmitReport",
        body,
    )
    .await
    .expect_err("not UTF-8");
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    let details = error.get_error_details();
    let violation = &details.bad_request().expect("bad request").field_violations[0];
    assert_eq!(violation.field, "attachments.media_type");
    harness.served.stop().await;
}

/// Intake keeps serving while NATS is down (readiness stays SERVING: its outbox holds the reports);
/// a report made during the outage waits in the outbox and is published once NATS is back.
#[tokio::test]
async fn reports_survive_a_nats_outage_and_intake_stays_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut harness = start().await;
    let channel = tonic::transport::Endpoint::from_shared(harness.served.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let health = HealthClient::new(channel);
    let wait_for = |wanted: ServingStatus| {
        let mut health = health.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let status = health
                    .check(HealthCheckRequest {
                        service: "whistle.intake.v1.IntakeService".into(),
                    })
                    .await
                    .map(|answer| answer.into_inner().status);
                if status.as_ref().is_ok_and(|status| *status == wanted as i32) {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "health never became {wanted:?}: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for(ServingStatus::Serving).await;

    harness.bed.nats.kill();
    let accepted = harness
        .client
        .submit_report(garbage_report("during-outage"))
        .await
        .expect("intake accepts reports while NATS is down")
        .into_inner();
    let db = sea_orm::Database::connect(harness.bed.sqlite_url("intake"))
        .await
        .expect("intake database");
    assert_eq!(
        whistle_platform::outbox::backlog(&db)
            .await
            .expect("backlog"),
        1,
        "the report waits in the outbox"
    );
    // health is probed every 2 s: over three probes during the outage it stays SERVING
    let outage_until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < outage_until {
        let status = health
            .clone()
            .check(HealthCheckRequest {
                service: "whistle.intake.v1.IntakeService".into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        assert_eq!(
            status,
            ServingStatus::Serving as i32,
            "intake stays ready without NATS"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let liveness = health
        .clone()
        .check(HealthCheckRequest {
            service: whistle_platform::grpc::LIVENESS_SERVICE.into(),
        })
        .await
        .expect("liveness answers")
        .into_inner()
        .status;
    assert_eq!(liveness, ServingStatus::Serving as i32);

    harness.bed.nats.restart().expect("nats back");
    let stream = harness
        .bed
        .jetstream
        .get_stream(whistle_platform::nats::CASES_STREAM)
        .await
        .expect("stream");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: "case.v1.>".into(),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let message = tokio::time::timeout(Duration::from_secs(40), messages.next())
        .await
        .expect("the outbox publishes once NATS is back")
        .expect("some")
        .expect("ok");
    let event = envelope::decode(&message.payload).expect("decode");
    assert_eq!(event.case_id, accepted.case_id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while whistle_platform::outbox::backlog(&db)
        .await
        .expect("backlog")
        != 0
    {
        assert!(tokio::time::Instant::now() < deadline, "the outbox empties");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    harness.served.stop().await;
}
