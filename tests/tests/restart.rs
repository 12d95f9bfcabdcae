//! Nothing lost, nothing doubled: reports made while dispatch is down are whistled when it comes
//! back, and a dispatch killed (SIGKILL) in the middle of whistling issues each whistle exactly once.

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;
use whistle_e2e::{Platform, Storage, wait_serving};
use whistle_platform::envelope::{self, Payload};
use whistle_proto::intake::SubmitReportRequest;
use whistle_proto::intake::intake_service_client::IntakeServiceClient;
use whistle_proto::types::{Channel, Place, Severity};

const REPORTS: usize = 40;

fn report(index: usize) -> SubmitReportRequest {
    SubmitReportRequest {
        request_id: format!("restart-{index}"),
        channel: Channel::Hotline12345 as i32,
        reporter_id: "12345".into(),
        category_code: "E-05-07".into(),
        severity: Severity::Emergency as i32,
        description: format!("半山尚小区消防通道被占用 #{index}"),
        place: Some(Place {
            grid_code: "420303003003001".into(),
            lat: 32.64,
            lng: 110.80,
            address: "半山尚".into(),
        }),
        attachments: vec![],
        observed_at: None,
        ..Default::default()
    }
}

/// Every `whistle.issued` event on the stream for the fire department, by case: distinct event ids.
async fn issued_events_by_case(nats_url: &str) -> BTreeMap<String, Vec<String>> {
    let js = jetstream::new(async_nats::connect(nats_url).await.expect("nats"));
    let stream = js
        .get_stream(whistle_platform::nats::WHISTLES_STREAM)
        .await
        .expect("stream");
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: "whistle.v1.*.*.*.zw-fire-rescue.issued".into(),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let pending = consumer.clone().info().await.expect("info").num_pending as usize;
    let mut by_case: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut messages = consumer.messages().await.expect("messages");
    for _ in 0..pending {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("in time")
            .expect("some")
            .expect("ok");
        let event = envelope::decode(&message.payload).expect("decode");
        assert!(matches!(event.payload, Some(Payload::WhistleIssued(_))));
        by_case
            .entry(event.case_id.clone())
            .or_default()
            .push(event.event_id.clone());
        message.ack().await.expect("ack");
    }
    by_case
}

async fn wait_for_whistles(
    platform: &Platform,
    expected_cases: usize,
) -> BTreeMap<String, Vec<String>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let by_case = issued_events_by_case(&platform.nats.url()).await;
        if by_case.len() >= expected_cases {
            return by_case;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {expected_cases} cases whistled; dispatch log:\n{}",
            by_case.len(),
            platform.dispatch.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whistles_are_issued_exactly_once_across_dispatch_stops_and_crashes() {
    let mut platform = Platform::prepare(Storage::Sqlite).await;
    // dispatch is down while the reports come in
    platform.intake.start();
    platform.gateway.start();
    wait_serving(&platform.intake).await;
    let mut intake = IntakeServiceClient::new(platform.auth.channel(&platform.intake.url()));
    let mut case_ids = Vec::new();
    for index in 0..REPORTS / 2 {
        case_ids.push(
            intake
                .submit_report(report(index))
                .await
                .expect("submit")
                .into_inner()
                .case_id,
        );
    }

    // dispatch comes up: every waiting report is whistled once
    platform.dispatch.start();
    wait_serving(&platform.dispatch).await;
    let whistled = wait_for_whistles(&platform, REPORTS / 2).await;
    for case_id in &case_ids {
        assert_eq!(
            whistled.get(case_id).map(Vec::len),
            Some(1),
            "case {case_id} whistled {:?}",
            whistled.get(case_id)
        );
    }

    // a graceful stop between report and whistle
    platform.dispatch.stop();
    case_ids.push(
        intake
            .submit_report(report(REPORTS / 2))
            .await
            .expect("submit")
            .into_inner()
            .case_id,
    );
    platform.dispatch.start();
    wait_serving(&platform.dispatch).await;
    wait_for_whistles(&platform, REPORTS / 2 + 1).await;

    // a crash while whistling: kill dispatch as soon as the first of a burst is whistled
    platform.dispatch.stop();
    for index in REPORTS / 2 + 1..REPORTS {
        case_ids.push(
            intake
                .submit_report(report(index))
                .await
                .expect("submit")
                .into_inner()
                .case_id,
        );
    }
    platform.dispatch.start();
    wait_for_whistles(&platform, REPORTS / 2 + 2).await;
    platform.dispatch.kill();
    platform.dispatch.start();
    wait_serving(&platform.dispatch).await;

    let whistled = wait_for_whistles(&platform, REPORTS).await;
    assert_eq!(whistled.len(), REPORTS);
    for case_id in &case_ids {
        assert_eq!(
            whistled.get(case_id).map(Vec::len),
            Some(1),
            "case {case_id} whistled {:?}",
            whistled.get(case_id)
        );
    }
    platform.shutdown().await;
}
