//! Intake keeps taking reports while NATS is down, and stays ready (its outbox holds them); when
//! NATS returns, every one of them is whistled, exactly once. Real binaries, a real nats-server
//! killed with SIGKILL and restarted on the same port and store, SQLite.

use futures::StreamExt;
use std::collections::BTreeSet;
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use whistle_e2e::{Platform, Storage, garbage_report, with_token};
use whistle_proto::gateway::SubscribeRequest;
use whistle_proto::gateway::department_gateway_client::DepartmentGatewayClient;
use whistle_proto::intake::SubmitReportRequest;
use whistle_proto::intake::intake_service_client::IntakeServiceClient;

const REPORTS: usize = 5;

fn report(index: usize) -> SubmitReportRequest {
    SubmitReportRequest {
        description: format!("中岳路2号垃圾满溢 #{index}"),
        ..garbage_report(&format!("outage-{index}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_made_while_nats_is_down_are_whistled_when_it_returns() {
    let mut platform = Platform::start(Storage::Sqlite).await;
    let tokens = platform.credentials().await;
    let sanitation = tokens.get("zw-sanitation").expect("token").clone();
    let channel = tonic::transport::Endpoint::from_shared(platform.intake.url())
        .expect("url")
        .connect()
        .await
        .expect("intake");
    let mut intake = IntakeServiceClient::new(platform.auth.wrap(channel.clone()));
    let mut health = HealthClient::new(channel);

    platform.nats.kill();
    let mut cases = BTreeSet::new();
    for index in 0..REPORTS {
        let accepted = intake
            .submit_report(report(index))
            .await
            .expect("intake takes reports while NATS is down")
            .into_inner();
        cases.insert(accepted.case_id);
    }
    // three health probes' worth: intake stays ready without NATS
    let outage_until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < outage_until {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "intake stays ready");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    platform.nats.restart().expect("nats back");
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
    let mut whistled = Vec::new();
    while whistled.len() < REPORTS {
        let notice = tokio::time::timeout(Duration::from_secs(60), notices.next())
            .await
            .expect("every report is whistled within 60 s of NATS returning")
            .expect("stream open")
            .expect("notice");
        if notice.kind == "whistle.issued" {
            whistled.push(notice.case_id);
        }
    }
    let distinct: BTreeSet<String> = whistled.iter().cloned().collect();
    assert_eq!(distinct, cases, "each report whistled");
    assert_eq!(distinct.len(), whistled.len(), "and only once");
    drop(notices);
    platform.shutdown().await;
}
