//! One request can no longer stop the pipeline. The report that did (an attachment `media_type` of
//! 1.2 MB, whose event exceeded NATS's 1 MiB `max_payload`) is refused by default; and on a platform
//! whose limits were raised too far, its event is parked in intake's outbox while later reports
//! are still whistled. Real binaries, real nats-server, SQLite.

use futures::StreamExt;
use std::time::Duration;
use tonic::Code;
use whistle_e2e::{Platform, Storage, wait_serving};
use whistle_proto::gateway::department_gateway_client::DepartmentGatewayClient;
use whistle_proto::gateway::{Notice, SubscribeRequest};
use whistle_proto::intake::SubmitReportRequest;
use whistle_proto::intake::intake_service_client::IntakeServiceClient;
use whistle_proto::types::{Attachment, Channel, Place, Severity};

fn report(request_id: &str, media_type: String) -> SubmitReportRequest {
    SubmitReportRequest {
        request_id: request_id.into(),
        channel: Channel::ResidentApp as i32,
        reporter_id: "resident-1".into(),
        category_code: "E-01-03".into(),
        severity: Severity::Urgent as i32,
        description: "中岳路2号垃圾满溢".into(),
        place: Some(Place {
            grid_code: "420303003001001".into(),
            lat: 32.6369,
            lng: 110.7986,
            address: "中岳路2号".into(),
        }),
        attachments: vec![Attachment {
            uri: "https://photos.example/1.jpg".into(),
            sha256: "a".repeat(64),
            media_type,
            size_bytes: 1000,
        }],
        observed_at: None,
    }
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

/// Waits for the `whistle.issued` notice of `case_id` on a department's stream.
async fn whistled(notices: &mut tonic::Streaming<Notice>, case_id: &str) {
    loop {
        let notice = tokio::time::timeout(Duration::from_secs(30), notices.next())
            .await
            .unwrap_or_else(|_| panic!("case {case_id} was not whistled within 30 s"))
            .expect("stream open")
            .expect("notice");
        if notice.kind == "whistle.issued" && notice.case_id == case_id {
            return;
        }
    }
}

// multi-threaded: `stop()` blocks its thread while the clients answer the server's GOAWAY
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_report_never_stops_later_whistles() {
    let mut platform = Platform::prepare(Storage::Sqlite).await;
    // an operator raised the limits far beyond what NATS can carry (the start-up check compares
    // only max_event_bytes with the server): the outbox is the last line of defence
    platform
        .intake
        .set_env("WHISTLE_INTAKE__LIMITS__MEDIA_TYPE_CHARS", "2000000");
    platform
        .intake
        .set_env("WHISTLE_INTAKE__LIMITS__MAX_REQUEST_BYTES", "4000000");
    platform
        .intake
        .set_env("WHISTLE_INTAKE__OUTBOX__MAX_ATTEMPTS", "2");
    for process in [
        &mut platform.intake,
        &mut platform.dispatch,
        &mut platform.gateway,
        &mut platform.evaluation,
    ] {
        process.start();
    }
    for process in [
        &platform.intake,
        &platform.dispatch,
        &platform.gateway,
        &platform.evaluation,
    ] {
        wait_serving(process).await;
    }
    let tokens = platform.credentials().await;
    let sanitation = tokens.get("zw-sanitation").expect("token").clone();
    let mut gateway = DepartmentGatewayClient::connect(platform.gateway.url())
        .await
        .expect("gateway");
    let mut notices = gateway
        .subscribe(with_token(SubscribeRequest { after_sequence: 0 }, &sanitation))
        .await
        .expect("subscribe")
        .into_inner();
    let mut intake = IntakeServiceClient::connect(platform.intake.url())
        .await
        .expect("intake")
        .max_encoding_message_size(8 * 1024 * 1024);

    let oversized = intake
        .submit_report(report("poison-1", "image/".to_string() + &"x".repeat(1_200_000)))
        .await
        .expect("accepted: the limits allow it here")
        .into_inner();
    let normal = intake
        .submit_report(report("normal-1", "image/jpeg".into()))
        .await
        .expect("a normal report")
        .into_inner();
    whistled(&mut notices, &normal.case_id).await;

    // the oversized event sits parked in intake's outbox, visible to the operator
    let database = sea_orm::Database::connect(platform.intake.database_url())
        .await
        .expect("intake database");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let parked = loop {
        let parked = whistle_platform::outbox::list_parked(&database)
            .await
            .expect("parked");
        if !parked.is_empty() {
            break parked;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing was parked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert!(
        parked[0].subject.ends_with(".reported"),
        "{}",
        parked[0].subject
    );
    assert!(
        parked[0]
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("max_payload")),
        "{:?}",
        parked[0].last_error
    );
    assert!(
        platform.intake.log_text().contains("event parked"),
        "parking is logged"
    );
    // and it stays parked after a restart, while reports keep flowing
    platform.intake.stop();
    platform.intake.start();
    wait_serving(&platform.intake).await;
    let mut intake = IntakeServiceClient::connect(platform.intake.url())
        .await
        .expect("intake");
    let after_restart = intake
        .submit_report(report("normal-2", "image/png".into()))
        .await
        .expect("a report after the restart")
        .into_inner();
    whistled(&mut notices, &after_restart.case_id).await;
    assert_ne!(oversized.case_id, normal.case_id);
    platform.shutdown().await;
}

/// With the shipped limits, the same request is refused up front, naming the field and the limit.
#[tokio::test]
async fn the_default_limits_refuse_the_oversized_report() {
    let platform = Platform::start(Storage::Sqlite).await;
    let mut intake = IntakeServiceClient::connect(platform.intake.url())
        .await
        .expect("intake")
        .max_encoding_message_size(8 * 1024 * 1024);
    let refused = intake
        .submit_report(report("poison-2", "image/".to_string() + &"x".repeat(1_200_000)))
        .await
        .expect_err("refused");
    // over the request size limit the transport refuses it before any field is read
    assert!(
        matches!(refused.code(), Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted),
        "{refused:?}"
    );
    let refused = intake
        .submit_report(report("poison-3", "image/".to_string() + &"x".repeat(200)))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("attachments[0].media_type"),
        "{}",
        refused.message()
    );
    platform.shutdown().await;
}
