//! Reports from anywhere, end to end through the real binaries and a real nats-server: two reports
//! of the same problem at the same place become one case (intake merges the second), the lead
//! department is whistled once, and its notice stream gets one merge notice for the second report.

use futures::StreamExt;
use std::time::Duration;
use whistle_e2e::{Platform, Storage, garbage_report, with_token};
use whistle_proto::dispatch::GetCaseRequest;
use whistle_proto::dispatch::dispatch_service_client::DispatchServiceClient;
use whistle_proto::gateway::department_gateway_client::DepartmentGatewayClient;
use whistle_proto::gateway::{Notice, SubscribeRequest};
use whistle_proto::intake::intake_service_client::IntakeServiceClient;

async fn next_notice(notices: &mut tonic::Streaming<Notice>) -> Notice {
    tokio::time::timeout(Duration::from_secs(30), notices.next())
        .await
        .expect("a notice within 30s")
        .expect("stream open")
        .expect("notice")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reports_of_one_problem_make_one_case_one_whistle_and_a_merge_notice() {
    let mut platform = Platform::prepare(Storage::Sqlite).await;
    // the harness turns merging off for the tests that count whistles per report; on here
    platform
        .intake
        .set_env("WHISTLE_INTAKE__MERGING__ENABLED", "true");
    platform.start_all().await;
    let tokens = platform.credentials().await;
    let sanitation = tokens.get("zw-sanitation").expect("token").clone();
    let mut intake = IntakeServiceClient::new(platform.auth.channel(&platform.intake.url()));
    let mut dispatch = DispatchServiceClient::new(platform.auth.channel(&platform.dispatch.url()));
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

    let first = intake
        .submit_report(garbage_report("merge-1"))
        .await
        .expect("first")
        .into_inner();
    assert!(!first.merged);
    let issued = next_notice(&mut notices).await;
    assert_eq!(issued.kind, "whistle.issued");
    assert_eq!(issued.case_id, first.case_id);

    let mut again = garbage_report("merge-2");
    again.reporter_id = "resident-88".into();
    again.description = "中岳路2号垃圾桶又满了".into();
    let second = intake
        .submit_report(again)
        .await
        .expect("second")
        .into_inner();
    assert!(second.merged, "{second:?}");
    assert_eq!(second.case_id, first.case_id);

    // the next notice on the lead's stream is the merge notice, not another whistle
    let merged = next_notice(&mut notices).await;
    assert_eq!(merged.kind, "whistle.report_merged");
    assert_eq!(merged.case_id, first.case_id);
    assert_eq!(
        merged.subject,
        "whistle.v1.420300.420303.chechenglu.zw-sanitation.report_merged"
    );
    assert_eq!(merged.sequence, issued.sequence + 1);

    let case = dispatch
        .get_case(GetCaseRequest {
            case_id: first.case_id.clone(),
        })
        .await
        .expect("case")
        .into_inner();
    let reporters: Vec<&str> = case
        .reports
        .iter()
        .map(|report| report.reporter_id.as_str())
        .collect();
    assert_eq!(reporters, vec!["grid-worker-17", "resident-88"]);
    let leads = case
        .assignments
        .iter()
        .filter(|assignment| assignment.department_code == "zw-sanitation")
        .count();
    assert_eq!(leads, 1);
    // closed before the services stop (multi-threaded runtime: the connections' tasks run while
    // `shutdown` waits), or each server's graceful shutdown waits for them
    drop((notices, intake, dispatch, gateway));
    platform.shutdown().await;
}
