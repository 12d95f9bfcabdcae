//! Deadlines that fire exactly once, on the real binaries with the system clock and limits of two
//! seconds: every overdue and every escalation is published once per clock when dispatch is killed
//! (SIGKILL) while clocks are due, and when two dispatch processes scan one PostgreSQL database.
//! Events are counted on NATS by kind and assignment + clock, after every process stopped (and
//! drained its outbox), so a late duplicate would be counted too.

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;
use whistle_e2e::{Platform, ServiceProcess, Storage, postgres_admin_url, wait_serving};
use whistle_platform::envelope::{self, Payload};
use whistle_proto::dispatch::dispatch_service_client::DispatchServiceClient;
use whistle_proto::dispatch::{GetCaseRequest, LimitOverrides, WhistleCaseRequest};
use whistle_proto::intake::SubmitReportRequest;
use whistle_proto::intake::intake_service_client::IntakeServiceClient;
use whistle_proto::types::{CaseStatus, Channel, Clock, Place, Severity};

/// The acknowledge limit and the second interval of every whistle here.
const LIMIT_SECS: i64 = 2;

/// `(kind, assignment, clock)` → how many times it was published.
type Counts = BTreeMap<(&'static str, String, i32), usize>;

fn report(run: &str, index: usize) -> SubmitReportRequest {
    SubmitReportRequest {
        request_id: format!("{run}-{index}"),
        channel: Channel::GridPatrol as i32,
        reporter_id: "grid-worker-17".into(),
        // the property route does not whistle by itself: the street whistles with short limits
        category_code: "E-06-01".into(),
        severity: Severity::Urgent as i32,
        description: format!("金鼎凤凰城物业管理混乱 #{index}"),
        place: Some(Place {
            grid_code: "420303003002001".into(),
            lat: 32.6335,
            lng: 110.7901,
            address: "金鼎凤凰城".into(),
        }),
        attachments: vec![],
        observed_at: None,
        ..Default::default()
    }
}

/// Reports `count` cases through intake and waits until dispatch opened each.
async fn reported_cases(
    intake: &mut IntakeServiceClient<whistle_e2e::AuthedChannel>,
    dispatch: &mut DispatchServiceClient<whistle_e2e::AuthedChannel>,
    run: &str,
    count: usize,
) -> Vec<String> {
    let mut case_ids = Vec::with_capacity(count);
    for index in 0..count {
        case_ids.push(
            intake
                .submit_report(report(run, index))
                .await
                .expect("submit")
                .into_inner()
                .case_id,
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for case_id in &case_ids {
        loop {
            let status = dispatch
                .get_case(GetCaseRequest {
                    case_id: case_id.clone(),
                })
                .await
                .map(|case| case.into_inner().status)
                .ok();
            if status == Some(CaseStatus::Reported as i32) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "case {case_id} not opened by dispatch"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    case_ids
}

/// Whistles each case to the housing bureau: 报到 within two seconds, 督办 two seconds later.
/// Returns the assignment ids.
async fn whistle(
    dispatch: &mut DispatchServiceClient<whistle_e2e::AuthedChannel>,
    case_ids: &[String],
) -> Vec<String> {
    let seconds = |value: i64| prost_types::Duration {
        seconds: value,
        nanos: 0,
    };
    let mut assignments = Vec::with_capacity(case_ids.len());
    for case_id in case_ids {
        let case = dispatch
            .whistle_case(WhistleCaseRequest {
                case_id: case_id.clone(),
                operator_id: "chechenglu-dispatch".into(),
                lead_department_code: "zw-housing".into(),
                co_department_codes: vec![],
                limits: Some(LimitOverrides {
                    acknowledge_within: Some(seconds(LIMIT_SECS)),
                    acknowledge_escalate_after: Some(seconds(LIMIT_SECS)),
                    ..Default::default()
                }),
            })
            .await
            .expect("whistle")
            .into_inner();
        assignments.push(case.assignments[0].assignment_id.clone());
    }
    assignments
}

/// Every overdue and escalation on the streams, counted by kind, assignment and clock.
async fn clock_events(nats_url: &str) -> Counts {
    let js = jetstream::new(async_nats::connect(nats_url).await.expect("nats"));
    let mut counts = Counts::new();
    for (stream, filter) in [
        (
            whistle_platform::nats::WHISTLES_STREAM,
            "whistle.v1.*.*.*.*.overdue",
        ),
        (
            whistle_platform::nats::CASES_STREAM,
            "case.v1.*.*.*.escalated",
        ),
    ] {
        let stream = js.get_stream(stream).await.expect("stream");
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: filter.into(),
                ..Default::default()
            })
            .await
            .expect("consumer");
        let pending = consumer.clone().info().await.expect("info").num_pending as usize;
        let mut messages = consumer.messages().await.expect("messages");
        for _ in 0..pending {
            let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .expect("in time")
                .expect("some")
                .expect("ok");
            let event = envelope::decode(&message.payload).expect("decode");
            let key = match event.payload {
                Some(Payload::AssignmentOverdue(overdue)) => (
                    "overdue",
                    overdue.assignment.expect("assignment").assignment_id,
                    overdue.clock,
                ),
                Some(Payload::CaseEscalated(escalated)) => {
                    ("escalated", escalated.assignment_id, escalated.clock)
                }
                other => panic!("unexpected event {other:?}"),
            };
            *counts.entry(key).or_default() += 1;
            message.ack().await.expect("ack");
        }
    }
    counts
}

/// Polls the streams until at least `expected` clock events are there.
async fn wait_for_clock_events(
    platform: &Platform,
    expected: usize,
    logs: &[&ServiceProcess],
) -> Counts {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let counts = clock_events(&platform.nats.url()).await;
        let total: usize = counts.values().sum();
        if total >= expected {
            return counts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{total} of {expected} clock events published; dispatch logs:\n{}",
            logs.iter()
                .map(|process| process.log_tail())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every assignment's acknowledge clock went overdue once and escalated once, and nothing else.
fn assert_each_once(counts: &Counts, assignments: &[String]) {
    let mut expected = Counts::new();
    for assignment in assignments {
        for kind in ["overdue", "escalated"] {
            expected.insert((kind, assignment.clone(), Clock::Acknowledge as i32), 1);
        }
    }
    let wrong: Vec<_> = counts
        .iter()
        .filter(|(key, count)| expected.get(*key) != Some(count))
        .collect();
    assert!(wrong.is_empty(), "fired other than once: {wrong:?}");
    assert_eq!(counts.len(), expected.len(), "missing: {counts:?}");
}

fn fired_in_log(process: &ServiceProcess) -> (usize, usize) {
    let log = process.log_text();
    (
        log.matches("clock overdue").count(),
        log.matches("case escalated").count(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_clock_fires_once_when_dispatch_is_killed_while_clocks_are_due() {
    const WHILE_DOWN: usize = 12;
    const IN_THE_MIDDLE: usize = 30;
    let mut platform = Platform::prepare(Storage::Sqlite).await;
    // one clock per transaction, so a kill lands between firings
    platform
        .dispatch
        .set_env("WHISTLE_DISPATCH__SCANNER__BATCH_SIZE", "1");
    platform.intake.start();
    platform.dispatch.start();
    wait_serving(&platform.intake).await;
    wait_serving(&platform.dispatch).await;
    let mut intake = IntakeServiceClient::new(platform.auth.channel(&platform.intake.url()));
    let mut dispatch = DispatchServiceClient::new(platform.auth.channel(&platform.dispatch.url()));

    // 1. killed before the deadlines, down while both steps of every clock come due
    let cases = reported_cases(&mut intake, &mut dispatch, "down", WHILE_DOWN).await;
    let mut assignments = whistle(&mut dispatch, &cases).await;
    platform.dispatch.kill();
    // the real clock has to pass both steps of the last whistle's clock while dispatch is down
    tokio::time::sleep(Duration::from_secs(2 * LIMIT_SECS as u64 + 1)).await;
    platform.dispatch.start();
    wait_serving(&platform.dispatch).await;
    let counts = wait_for_clock_events(&platform, 2 * WHILE_DOWN, &[&platform.dispatch]).await;
    assert_each_once(&counts, &assignments);

    // 2. killed in the middle of firing: as soon as the first overdue of the burst is on NATS
    let mut dispatch = DispatchServiceClient::new(platform.auth.channel(&platform.dispatch.url()));
    let cases = reported_cases(&mut intake, &mut dispatch, "burst", IN_THE_MIDDLE).await;
    assignments.extend(whistle(&mut dispatch, &cases).await);
    let before = 2 * WHILE_DOWN;
    let at_kill = wait_for_clock_events(&platform, before + 1, &[&platform.dispatch]).await;
    platform.dispatch.kill();
    let published_at_kill: usize = at_kill.values().sum::<usize>() - before;
    platform.dispatch.start();
    wait_serving(&platform.dispatch).await;
    wait_for_clock_events(
        &platform,
        2 * (WHILE_DOWN + IN_THE_MIDDLE),
        &[&platform.dispatch],
    )
    .await;

    // everything stops cleanly; only then is every event counted
    platform.dispatch.stop();
    let counts = clock_events(&platform.nats.url()).await;
    assert_each_once(&counts, &assignments);
    let overdue = counts.keys().filter(|key| key.0 == "overdue").count();
    let escalated = counts.keys().filter(|key| key.0 == "escalated").count();
    println!(
        "SIGKILL: {overdue} overdue and {escalated} escalations, each published once; {published_at_kill} of the burst's {} were on NATS when dispatch was killed",
        2 * IN_THE_MIDDLE
    );
    platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatch_replicas_on_one_postgres_fire_every_clock_once() {
    const CASES: usize = 40;
    let mut platform = Platform::prepare(Storage::Postgres {
        admin_url: postgres_admin_url(),
    })
    .await;
    // both replicas scan often and one clock at a time, so they compete for every row
    platform
        .dispatch
        .set_env("WHISTLE_DISPATCH__SCANNER__BATCH_SIZE", "1");
    platform
        .dispatch
        .set_env("WHISTLE_DISPATCH__SCANNER__INTERVAL_MS", "50");
    let mut replica = platform.dispatch.replica("b");
    platform.intake.start();
    platform.dispatch.start();
    wait_serving(&platform.intake).await;
    wait_serving(&platform.dispatch).await;
    replica.start();
    wait_serving(&replica).await;
    let mut intake = IntakeServiceClient::new(platform.auth.channel(&platform.intake.url()));
    let mut first = DispatchServiceClient::new(platform.auth.channel(&platform.dispatch.url()));
    let mut second = DispatchServiceClient::new(platform.auth.channel(&replica.url()));
    let cases = reported_cases(&mut intake, &mut first, "replicas", CASES).await;
    // the street's whistles go to either replica
    let (one, other) = cases.split_at(CASES / 2);
    let mut assignments = whistle(&mut first, one).await;
    assignments.extend(whistle(&mut second, other).await);

    wait_for_clock_events(&platform, 2 * CASES, &[&platform.dispatch, &replica]).await;
    replica.stop();
    platform.dispatch.stop();
    let counts = clock_events(&platform.nats.url()).await;
    assert_each_once(&counts, &assignments);
    let (first_overdue, first_escalated) = fired_in_log(&platform.dispatch);
    let (second_overdue, second_escalated) = fired_in_log(&replica);
    println!(
        "replicas: {} overdue and {} escalations, each published once; replica a fired {first_overdue} + {first_escalated}, replica b {second_overdue} + {second_escalated}",
        counts.keys().filter(|key| key.0 == "overdue").count(),
        counts.keys().filter(|key| key.0 == "escalated").count(),
    );
    assert_eq!(
        first_overdue + second_overdue,
        CASES,
        "each overdue fired by exactly one replica"
    );
    platform.shutdown().await;
}
