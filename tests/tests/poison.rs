//! One request can no longer stop the pipeline. The report that did (an attachment `media_type` of
//! 1.2 MB, whose event exceeded NATS's 1 MiB `max_payload` and stopped intake's publishing for good)
//! is refused, and later reports are still whistled. Real binaries, real nats-server, SQLite.

use futures::StreamExt;
use std::time::Duration;
use tonic::Code;
use whistle_e2e::{Platform, Storage, garbage_report, with_token};
use whistle_proto::gateway::department_gateway_client::DepartmentGatewayClient;
use whistle_proto::gateway::{Notice, SubscribeRequest};
use whistle_proto::intake::SubmitReportRequest;
use whistle_proto::intake::intake_service_client::IntakeServiceClient;
use whistle_proto::types::Attachment;

fn report(request_id: &str, media_type: String) -> SubmitReportRequest {
    SubmitReportRequest {
        attachments: vec![Attachment {
            uri: "https://photos.example/1.jpg".into(),
            sha256: "a".repeat(64),
            media_type,
            size_bytes: 1000,
        }],
        ..garbage_report(request_id)
    }
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

/// The report that stopped intake for good is refused, naming the field and the limit, and the
/// next normal report is whistled. (An event that still cannot be published — e.g. after the NATS
/// server's `max_payload` was lowered — is parked by the outbox and blocks nothing: see
/// `services/platform/tests/outbox_parking.rs`. Limits that would allow an event over
/// `limits.max_event_bytes`, or a `max_event_bytes` over the server's `max_payload`, stop the
/// service at start: see `config_errors.rs`.)
// multi-threaded: `shutdown()` blocks its thread while the clients answer the servers' GOAWAY
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_report_is_refused_and_later_reports_are_whistled() {
    let platform = Platform::start(Storage::Sqlite).await;
    let tokens = platform.credentials().await;
    let sanitation = tokens.get("zw-sanitation").expect("token").clone();
    let mut gateway = DepartmentGatewayClient::connect(platform.gateway.url())
        .await
        .expect("gateway");
    let mut notices = gateway
        .subscribe(with_token(
            SubscribeRequest { after_sequence: 0 },
            &sanitation,
        ))
        .await
        .expect("subscribe")
        .into_inner();
    let mut intake = IntakeServiceClient::new(platform.auth.channel(&platform.intake.url()))
        .max_encoding_message_size(8 * 1024 * 1024);

    // 1.2 MB: over the request size limit, refused before any field is read
    let refused = intake
        .submit_report(report(
            "poison-1",
            "image/".to_string() + &"x".repeat(1_200_000),
        ))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    // small enough to decode, over the field's limit: refused naming the field and the limit
    let refused = intake
        .submit_report(report("poison-2", "image/".to_string() + &"x".repeat(200)))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("attachments[0].media_type")
            && refused.message().contains("127"),
        "{}",
        refused.message()
    );
    let normal = intake
        .submit_report(report("normal-1", "image/jpeg".into()))
        .await
        .expect("a normal report")
        .into_inner();
    whistled(&mut notices, &normal.case_id).await;
    let database = sea_orm::Database::connect(platform.intake.database_url())
        .await
        .expect("intake database");
    assert!(
        whistle_platform::outbox::list_parked(&database)
            .await
            .expect("parked")
            .is_empty(),
        "nothing was parked"
    );
    drop(notices);
    platform.shutdown().await;
}
