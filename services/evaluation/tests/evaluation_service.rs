//! Evaluation in-process on port 0, against a real nats-server started for the test and a fresh
//! SQLite file. Events are published to JetStream the way dispatch's outbox relay publishes them.

use async_nats::jetstream;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;
use whistle_evaluation::EvaluationConfig;
use whistle_platform::ManualClock;
use whistle_platform::clock::{from_millis, to_proto_timestamp};
use whistle_platform::envelope::{self, Event, Payload};
use whistle_platform::testing::{Served, TestBed, demo_region, publish_like_relay, serve};
use whistle_proto::evaluation::evaluation_service_client::EvaluationServiceClient;
use whistle_proto::evaluation::{
    ClosePeriodRequest, ExplainScoreRequest, GetPeriodScorecardsRequest, GetRankingRequest,
    GetScorecardRequest, RateCooperationRequest, Rater, RecordSatisfactionRequest, Satisfaction,
    Scorecard, ScorecardCounts,
};
use whistle_proto::events::{
    AssignmentAcknowledged, AssignmentCheckedIn, AssignmentOverdue, AssignmentResolved,
    AssignmentReturnDecided, AssignmentReturned, AssignmentVerdict, CaseClosed, CaseEscalated,
    CaseReopened, CaseVerified, WhistleIssued,
};
use whistle_proto::types::{
    Assignment, AssignmentFlag, AssignmentRole, AssignmentStatus, Deadlines, Severity,
};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
/// 2026-11-10T09:00:00+08:00, when the street whistles.
const WHISTLED: i64 = 1_794_272_400_000;
/// 2026-11-20T12:00:00+08:00, the service's (manual) clock.
const NOW: i64 = WHISTLED + 10 * 24 * HOUR + 3 * HOUR;
const PERIOD: &str = "2026-11";

type Client = EvaluationServiceClient<tonic::transport::Channel>;

struct Harness {
    bed: TestBed,
    jetstream: jetstream::Context,
    client: Client,
    served: Served,
}

impl Harness {
    async fn stop(self) {
        self.served.stop().await;
        drop(self.bed);
    }
}

async fn start() -> Harness {
    let bed = TestBed::new().await;
    let mut config = EvaluationConfig::default();
    // one service in-process: authentication is the end-to-end tests' (tests/tests/authorization.rs)
    config.auth.enabled = false;
    config.database.url = bed.sqlite_url("evaluation");
    config.nats.url = bed.nats.url();
    config.catalogue.file = Some(TestBed::demo_catalogue());
    let clock = Arc::new(ManualClock::new(from_millis(NOW)));
    let served =
        serve(|listener, shutdown| whistle_evaluation::run(config, listener, clock, shutdown))
            .await;
    let client = EvaluationServiceClient::connect(served.url())
        .await
        .expect("connect");
    let jetstream = bed.jetstream.clone();
    Harness {
        bed,
        jetstream,
        client,
        served,
    }
}

fn at(millis: i64) -> Option<prost_types::Timestamp> {
    Some(to_proto_timestamp(from_millis(millis)))
}

/// A freshly whistled assignment with limits in hours from [`WHISTLED`].
fn whistled(
    assignment_id: &str,
    case_id: &str,
    department_code: &str,
    role: AssignmentRole,
    limits_hours: (f64, f64, f64),
) -> Assignment {
    let after = |hours: f64| at(WHISTLED + (hours * HOUR as f64) as i64);
    Assignment {
        assignment_id: assignment_id.into(),
        case_id: case_id.into(),
        department_code: department_code.into(),
        role: role as i32,
        status: AssignmentStatus::Whistled as i32,
        whistled_at: at(WHISTLED),
        deadlines: Some(Deadlines {
            acknowledge_by: after(limits_hours.0),
            on_site_by: after(limits_hours.1),
            resolve_by: after(limits_hours.2),
        }),
        requires_on_site: true,
        version: 1,
        ..Assignment::default()
    }
}

/// The assignment after the next step: version bumped, status set.
fn next(assignment: &Assignment, status: AssignmentStatus) -> Assignment {
    Assignment {
        status: status as i32,
        version: assignment.version + 1,
        ..assignment.clone()
    }
}

/// An event as dispatch would publish it, stamped at `occurred_at`.
fn event(case_id: &str, occurred_at: i64, payload: Payload) -> Event {
    envelope::new_event(
        &ManualClock::new(from_millis(occurred_at)),
        "whistle-dispatch",
        case_id,
        1,
        Some(demo_region()),
        payload,
    )
}

fn issued(assignment: &Assignment) -> Event {
    event(
        &assignment.case_id,
        WHISTLED,
        Payload::WhistleIssued(WhistleIssued {
            assignment: Some(assignment.clone()),
            category_code: "E-01-03".into(),
            severity: Severity::Urgent as i32,
            description: "中岳路2号垃圾桶满溢".into(),
            whistled_by: "chechenglu-dispatch".into(),
            ..WhistleIssued::default()
        }),
    )
}

/// Publishes like the outbox relay: CloudEvents headers and `Nats-Msg-Id`, waiting for the ack.
async fn publish_with_message_id(jetstream: &jetstream::Context, event: &Event, message_id: &str) {
    publish_like_relay(jetstream, event, message_id).await;
}

async fn publish(jetstream: &jetstream::Context, events: &[&Event]) {
    for event in events {
        publish_with_message_id(jetstream, event, &event.event_id).await;
    }
}

async fn scorecard(client: &mut Client, department_code: &str) -> Scorecard {
    client
        .get_scorecard(GetScorecardRequest {
            department_code: department_code.into(),
            period: PERIOD.into(),
            ..Default::default()
        })
        .await
        .expect("scorecard")
        .into_inner()
}

/// Polls the department's scorecard until `ready` holds, for at most 20 seconds.
async fn scorecard_when(
    client: &mut Client,
    department_code: &str,
    ready: impl Fn(&ScorecardCounts) -> bool,
) -> Scorecard {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let card = scorecard(client, department_code).await;
        let counts = card.counts.unwrap_or_default();
        if ready(&counts) {
            return card;
        }
        assert!(
            Instant::now() < deadline,
            "{department_code} never got there: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until both evaluation consumers have applied and acknowledged everything published.
async fn wait_until_consumed(jetstream: &jetstream::Context) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for (stream, durable) in [
        (whistle_platform::nats::CASES_STREAM, "evaluation-cases"),
        (
            whistle_platform::nats::WHISTLES_STREAM,
            "evaluation-whistles",
        ),
    ] {
        loop {
            let consumed = match jetstream
                .get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(
                    durable, stream,
                )
                .await
            {
                Ok(mut consumer) => consumer
                    .info()
                    .await
                    .is_ok_and(|info| info.num_pending == 0 && info.num_ack_pending == 0),
                Err(_) => false,
            };
            if consumed {
                break;
            }
            assert!(Instant::now() < deadline, "{durable} did not catch up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn verdict(assignment_id: &str, department_code: &str, passed: bool) -> AssignmentVerdict {
    AssignmentVerdict {
        assignment_id: assignment_id.into(),
        department_code: department_code.into(),
        passed,
    }
}

fn assert_close(actual: Option<f64>, expected: f64, what: &str) {
    let actual = actual.unwrap_or_else(|| panic!("{what} is absent"));
    assert!(
        (actual - expected).abs() < 1e-9,
        "{what}: expected {expected}, got {actual}"
    );
}

#[tokio::test]
async fn a_whistle_flows_into_the_scorecard_once() {
    let mut harness = start().await;
    let js = harness.jetstream.clone();
    let case_id = "case-zhongyue-2";
    // urgent: acknowledge within 30 min, on site within 2 h, resolve within 24 h
    let sanitation = whistled(
        "a-sanitation",
        case_id,
        "zw-sanitation",
        AssignmentRole::Lead,
        (0.5, 2.0, 24.0),
    );
    let mut acknowledged = next(&sanitation, AssignmentStatus::Acknowledged);
    acknowledged.acknowledged_at = at(WHISTLED + 10 * MINUTE);
    acknowledged.responsible_person = "王科长".into();
    let mut on_site = next(&acknowledged, AssignmentStatus::OnSite);
    on_site.on_site_at = at(WHISTLED + 40 * MINUTE);
    let mut resolved = next(&on_site, AssignmentStatus::Resolved);
    resolved.resolved_at = at(WHISTLED + 5 * HOUR);
    resolved.resolution = "增加清运频次，物业与业主分摊费用".into();

    let acknowledged_event = event(
        case_id,
        WHISTLED + 10 * MINUTE,
        Payload::AssignmentAcknowledged(AssignmentAcknowledged {
            assignment: Some(acknowledged),
            within_limit: true,
        }),
    );
    publish(
        &js,
        &[
            &issued(&sanitation),
            &acknowledged_event,
            &event(
                case_id,
                WHISTLED + 40 * MINUTE,
                Payload::AssignmentCheckedIn(AssignmentCheckedIn {
                    assignment: Some(on_site),
                    within_limit: true,
                    distance_meters: 12.0,
                }),
            ),
            &event(
                case_id,
                WHISTLED + 5 * HOUR,
                Payload::AssignmentResolved(AssignmentResolved {
                    assignment: Some(resolved),
                    within_limit: true,
                }),
            ),
            &event(
                case_id,
                WHISTLED + 6 * HOUR,
                Payload::CaseVerified(CaseVerified {
                    verified_by: "420303003001".into(),
                    passed: true,
                    note: String::new(),
                    verdicts: vec![verdict("a-sanitation", "zw-sanitation", true)],
                }),
            ),
            &event(
                case_id,
                WHISTLED + 6 * HOUR,
                Payload::CaseClosed(CaseClosed {}),
            ),
        ],
    )
    .await;

    let card = scorecard_when(&mut harness.client, "zw-sanitation", |counts| {
        counts.verified == 1
    })
    .await;
    let expected_counts = ScorecardCounts {
        whistled: 1,
        acknowledged: 1,
        acknowledged_within_limit: 1,
        required_on_site: 1,
        on_site_within_limit: 1,
        resolved: 1,
        resolved_within_limit: 1,
        verified: 1,
        due_in_period: 1,
        ..ScorecardCounts::default()
    };
    assert_eq!(card.counts, Some(expected_counts));
    assert_eq!(card.period, PERIOD);
    assert_eq!(
        card.period_start,
        at(1_793_462_400_000),
        "2026-11-01T00:00+08:00"
    );
    assert_eq!(card.computed_at, at(NOW));
    let indicators = card.indicators.expect("indicators");
    assert_close(indicators.report_rate, 1.0, "report rate");
    assert_close(indicators.on_site_rate, 1.0, "on-site rate");
    assert_close(indicators.resolution_rate, 1.0, "resolution rate");
    assert_close(indicators.on_time_rate, 1.0, "on-time rate");
    assert_close(indicators.rework_rate, 0.0, "rework rate");
    assert_eq!(indicators.cooperation, None);
    assert_eq!(indicators.satisfaction, None);
    // re-weighted over report (25), resolution (30) and rework (10): all perfect
    assert_close(card.composite, 100.0, "composite");
    assert!(card.rated);
    assert!(
        card.scoring_config.starts_with("scoring-"),
        "{}",
        card.scoring_config
    );

    // only assignments whistled in the period count
    for (period, whistled) in [("2026-10", 0), ("2026-Q4", 1), ("2026", 1), ("2027-Q1", 0)] {
        let card = harness
            .client
            .get_scorecard(GetScorecardRequest {
                department_code: "zw-sanitation".into(),
                period: period.into(),
                ..Default::default()
            })
            .await
            .expect("scorecard")
            .into_inner();
        assert_eq!(
            card.counts.map(|counts| counts.whistled),
            Some(whistled),
            "{period}"
        );
    }

    // a redelivered event (same event id, new Nats-Msg-Id so JetStream keeps it) is applied once;
    // the co-department's whistle after it shows when the duplicate has been consumed
    publish_with_message_id(
        &js,
        &acknowledged_event,
        &format!("redelivery-{}", acknowledged_event.event_id),
    )
    .await;
    let enforcement = whistled(
        "a-enforcement",
        case_id,
        "zw-enforcement",
        AssignmentRole::Co,
        (0.5, 2.0, 24.0),
    );
    publish(&js, &[&issued(&enforcement)]).await;
    scorecard_when(&mut harness.client, "zw-enforcement", |counts| {
        counts.whistled == 1
    })
    .await;
    wait_until_consumed(&js).await;
    let again = scorecard(&mut harness.client, "zw-sanitation").await;
    assert_eq!(again.counts, Some(expected_counts));

    // 配合度 from the street and the community; the street's second rating replaces its first
    for (rater, rater_id, score) in [
        (Rater::Street, "420303003", 3),
        (Rater::Community, "420303003001", 5),
        (Rater::Street, "420303003", 4),
    ] {
        harness
            .client
            .rate_cooperation(RateCooperationRequest {
                assignment_id: "a-sanitation".into(),
                rater: rater as i32,
                rater_id: rater_id.into(),
                score,
                comment: "到场及时".into(),
            })
            .await
            .expect("rate");
    }
    // the co-department was whistled but has done nothing yet: nothing to rate
    let premature = harness
        .client
        .rate_cooperation(RateCooperationRequest {
            assignment_id: "a-enforcement".into(),
            rater: Rater::Street as i32,
            rater_id: "420303003".into(),
            score: 1,
            comment: String::new(),
        })
        .await
        .expect_err("rated before the department acted");
    assert_eq!(premature.code(), Code::FailedPrecondition, "{premature:?}");
    // 满意度: one call-back, retried once with the same id
    let callback = RecordSatisfactionRequest {
        case_id: case_id.into(),
        callback_id: "callback-1".into(),
        result: Satisfaction::BasicallySatisfied as i32,
        note: "清运及时了".into(),
    };
    for _ in 0..2 {
        harness
            .client
            .record_satisfaction(callback.clone())
            .await
            .expect("call-back");
    }
    let reused = harness
        .client
        .record_satisfaction(RecordSatisfactionRequest {
            result: Satisfaction::Dissatisfied as i32,
            ..callback
        })
        .await
        .expect_err("a different call-back under the same id");
    assert_eq!(reused.code(), Code::AlreadyExists);
    assert!(reused.message().starts_with("callback_id:"), "{reused:?}");

    let card = scorecard(&mut harness.client, "zw-sanitation").await;
    let counts = card.counts.expect("counts");
    assert_eq!(counts.cooperation_ratings, 2);
    assert_eq!(counts.satisfaction_callbacks, 1);
    let indicators = card.indicators.expect("indicators");
    // mean of 4 and 5 = 4.5 -> (4.5 - 1) / 4 * 100
    assert_close(indicators.cooperation, 87.5, "cooperation");
    assert_close(indicators.satisfaction, 0.9, "satisfaction");
    // 25·1 + 30·1 + 15·0.875 + 20·0.9 + 10·(1 − 0)
    assert_close(card.composite, 96.125, "composite");

    let explanation = harness
        .client
        .explain_score(ExplainScoreRequest {
            department_code: "zw-sanitation".into(),
            period: PERIOD.into(),
            indicator: "report_rate".into(),
        })
        .await
        .expect("explain")
        .into_inner();
    assert_eq!(explanation.numerator_assignment_ids, vec!["a-sanitation"]);
    assert_eq!(explanation.denominator_assignment_ids, vec!["a-sanitation"]);

    // the co-department never reported: report 0, resolution 0/1; the call-back counts for the
    // lead department only -> (25·0 + 30·0) / 55 · 100 = 0
    let ranking = harness
        .client
        .get_ranking(GetRankingRequest {
            period: PERIOD.into(),
            level: "district".into(),
            region_code: "420303".into(),
            ..Default::default()
        })
        .await
        .expect("ranking")
        .into_inner();
    let summary: Vec<(u32, &str, u64)> = ranking
        .entries
        .iter()
        .map(|entry| (entry.rank, entry.department_code.as_str(), entry.whistled))
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, "zw-sanitation", 1),
            (2, "zw-enforcement", 1),
            (3, "zw-fire-rescue", 0),
            (3, "zw-government", 0),
            (3, "zw-housing", 0),
            (3, "zw-supervision", 0),
            (3, "zw-traffic-police", 0),
        ]
    );
    assert_close(ranking.entries[0].composite, 96.125, "first composite");
    assert_close(ranking.entries[1].composite, 0.0, "second composite");
    assert_eq!(ranking.entries[2].composite, None);

    harness.stop().await;
}

#[tokio::test]
async fn case_events_before_whistle_events_rework_and_returns() {
    let mut harness = start().await;
    let js = harness.jetstream.clone();
    let case_id = "case-jinding";
    // routine: acknowledge within 2 h, on site within 24 h, resolve within 7 days
    let housing = whistled(
        "a-housing",
        case_id,
        "zw-housing",
        AssignmentRole::Lead,
        (2.0, 24.0, 168.0),
    );
    let traffic = whistled(
        "a-traffic",
        case_id,
        "zw-traffic-police",
        AssignmentRole::Co,
        (2.0, 24.0, 168.0),
    );
    let reopened = event(
        case_id,
        WHISTLED + 30 * HOUR,
        Payload::CaseReopened(CaseReopened {
            reason: "车辆仍乱停".into(),
            assignment_ids: vec!["a-housing".into()],
        }),
    );
    let failed_verification = event(
        case_id,
        WHISTLED + 30 * HOUR,
        Payload::CaseVerified(CaseVerified {
            verified_by: "jingtan-community".into(),
            passed: false,
            note: "未整改到位".into(),
            verdicts: vec![verdict("a-housing", "zw-housing", false)],
        }),
    );
    // the case stream runs ahead: verification fails, the case is reopened, then passes
    publish(
        &js,
        &[
            &failed_verification,
            &reopened,
            &event(
                case_id,
                WHISTLED + 60 * HOUR,
                Payload::CaseVerified(CaseVerified {
                    verified_by: "jingtan-community".into(),
                    passed: true,
                    note: String::new(),
                    verdicts: vec![verdict("a-housing", "zw-housing", true)],
                }),
            ),
            // closed after the passed verification (a later case version than the reopening)
            &Event {
                case_version: 5,
                ..event(
                    case_id,
                    WHISTLED + 60 * HOUR,
                    Payload::CaseClosed(CaseClosed {}),
                )
            },
            // the housing bureau missed its acknowledge clock (2 h) and was escalated (督办)
            &event(
                case_id,
                WHISTLED + 2 * HOUR,
                Payload::CaseEscalated(CaseEscalated {
                    assignment_id: "a-housing".into(),
                    department_code: "zw-housing".into(),
                    supervisor_code: "zw-supervision".into(),
                    reason: "逾期未签收".into(),
                    ..CaseEscalated::default()
                }),
            ),
        ],
    )
    .await;
    // a call-back is accepted once the case is known and closed
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let recorded = harness
            .client
            .record_satisfaction(RecordSatisfactionRequest {
                case_id: case_id.into(),
                callback_id: "callback-jinding".into(),
                result: Satisfaction::Satisfied as i32,
                note: String::new(),
            })
            .await;
        match recorded {
            Ok(_) => break,
            Err(status)
                if matches!(status.code(), Code::NotFound | Code::FailedPrecondition)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("call-back refused: {status:?}"),
        }
    }
    // every case event is applied before any whistle event arrives
    wait_until_consumed(&js).await;

    // then the whistle stream: acknowledged late, on site in time, resolved, reworked, resolved
    let mut acknowledged = next(&housing, AssignmentStatus::Acknowledged);
    acknowledged.acknowledged_at = at(WHISTLED + 3 * HOUR);
    let mut on_site = next(&acknowledged, AssignmentStatus::OnSite);
    on_site.on_site_at = at(WHISTLED + 5 * HOUR);
    let mut resolved = next(&on_site, AssignmentStatus::Resolved);
    resolved.resolved_at = at(WHISTLED + 24 * HOUR);
    let mut resolved_again = next(&resolved, AssignmentStatus::Resolved);
    resolved_again.version += 1;
    resolved_again.resolved_at = at(WHISTLED + 50 * HOUR);
    let mut returned = next(&traffic, AssignmentStatus::Returned);
    returned.returned_at = at(WHISTLED + HOUR);
    returned.return_reason = "小区内部道路不属交警管辖".into();
    let upheld = next(&returned, AssignmentStatus::Returned);
    let mut overdue = housing.clone();
    overdue.flags = vec![AssignmentFlag::AckOverdue as i32];
    publish(
        &js,
        &[
            &issued(&housing),
            &issued(&traffic),
            &event(
                case_id,
                WHISTLED + HOUR,
                Payload::AssignmentReturned(AssignmentReturned {
                    assignment: Some(returned),
                }),
            ),
            &event(
                case_id,
                WHISTLED + 90 * MINUTE,
                Payload::AssignmentReturnDecided(AssignmentReturnDecided {
                    assignment: Some(upheld),
                    upheld: true,
                    decided_by: "420303003".into(),
                    note: "小区内部道路，由物业管理".into(),
                    fallback_department_code: String::new(),
                }),
            ),
            &event(
                case_id,
                WHISTLED + 2 * HOUR,
                Payload::AssignmentOverdue(AssignmentOverdue {
                    assignment: Some(overdue),
                    flag: AssignmentFlag::AckOverdue as i32,
                    ..AssignmentOverdue::default()
                }),
            ),
            &event(
                case_id,
                WHISTLED + 3 * HOUR,
                Payload::AssignmentAcknowledged(AssignmentAcknowledged {
                    assignment: Some(acknowledged),
                    within_limit: false,
                }),
            ),
            &event(
                case_id,
                WHISTLED + 5 * HOUR,
                Payload::AssignmentCheckedIn(AssignmentCheckedIn {
                    assignment: Some(on_site),
                    within_limit: true,
                    distance_meters: 30.0,
                }),
            ),
            &event(
                case_id,
                WHISTLED + 24 * HOUR,
                Payload::AssignmentResolved(AssignmentResolved {
                    assignment: Some(resolved),
                    within_limit: true,
                }),
            ),
            &event(
                case_id,
                WHISTLED + 50 * HOUR,
                Payload::AssignmentResolved(AssignmentResolved {
                    assignment: Some(resolved_again),
                    within_limit: true,
                }),
            ),
        ],
    )
    .await;
    // and the reopening once more, as a redelivery
    publish_with_message_id(&js, &reopened, "redelivered-reopening").await;

    let card = scorecard_when(&mut harness.client, "zw-housing", |counts| {
        counts.verified == 1 && counts.reopened == 1
    })
    .await;
    wait_until_consumed(&js).await;
    let card = {
        let settled = scorecard(&mut harness.client, "zw-housing").await;
        assert_eq!(settled.counts, card.counts);
        settled
    };
    assert_eq!(
        card.counts,
        Some(ScorecardCounts {
            whistled: 1,
            acknowledged: 1,
            acknowledged_within_limit: 0,
            required_on_site: 1,
            on_site_within_limit: 1,
            resolved: 1,
            resolved_within_limit: 1,
            verified: 1,
            reopened: 1,
            due_in_period: 1,
            satisfaction_callbacks: 1,
            overdue: 1,
            escalated: 1,
            ..ScorecardCounts::default()
        })
    );
    let indicators = card.indicators.expect("indicators");
    assert_close(indicators.report_rate, 0.0, "report rate");
    assert_close(indicators.on_site_rate, 1.0, "on-site rate");
    assert_close(indicators.resolution_rate, 1.0, "resolution rate");
    assert_close(indicators.on_time_rate, 1.0, "on-time rate");
    assert_close(indicators.rework_rate, 1.0, "rework rate");
    assert_close(indicators.satisfaction, 1.0, "satisfaction");
    // (25·0 + 30·1 + 20·1 + 10·(1 − 1)) / 85 · 100
    assert_close(card.composite, 50.0 / 85.0 * 100.0, "composite");
    let rework = harness
        .client
        .explain_score(ExplainScoreRequest {
            department_code: "zw-housing".into(),
            period: PERIOD.into(),
            indicator: "rework_rate".into(),
        })
        .await
        .expect("explain")
        .into_inner();
    assert_eq!(rework.numerator_assignment_ids, vec!["a-housing"]);
    assert_eq!(rework.value, Some(1.0));
    let housing_facts = &rework.assignments[0];
    assert_eq!(housing_facts.assignment_id, "a-housing");
    // escalated at 2 h, overdue at 2 h, failed at 30 h, passed at 60 h: four deciding events
    assert_eq!(housing_facts.deciding_event_ids.len(), 4);
    // and the events that carried its milestones: whistled, acknowledged, on site, resolved twice
    assert_eq!(housing_facts.milestone_event_ids.len(), 5);
    assert!(
        housing_facts
            .deciding_event_ids
            .contains(&failed_verification.event_id)
    );
    let composite = harness
        .client
        .explain_score(ExplainScoreRequest {
            department_code: "zw-housing".into(),
            period: PERIOD.into(),
            indicator: "composite".into(),
        })
        .await
        .expect("explain composite")
        .into_inner();
    assert!(composite.rated);
    assert_close(composite.value, 50.0 / 85.0 * 100.0, "explained composite");
    let shares: Vec<(&str, f64, f64)> = composite
        .composite_parts
        .iter()
        .map(|part| (part.indicator.as_str(), part.weight, part.effective_weight))
        .collect();
    // present: report 25, resolution 30, satisfaction 20, rework 10 -> out of 85; cooperation
    // (no rating) and the zero-weighted on-site and on-time rates are left out
    assert_eq!(
        shares,
        vec![
            ("report_rate", 25.0, 25.0 / 85.0),
            ("on_site_rate", 0.0, 0.0),
            ("resolution_rate", 30.0, 30.0 / 85.0),
            ("on_time_rate", 0.0, 0.0),
            ("cooperation", 15.0, 0.0),
            ("satisfaction", 20.0, 20.0 / 85.0),
            ("rework_rate", 10.0, 10.0 / 85.0),
        ]
    );
    let satisfaction = harness
        .client
        .explain_score(ExplainScoreRequest {
            department_code: "zw-housing".into(),
            period: PERIOD.into(),
            indicator: "satisfaction".into(),
        })
        .await
        .expect("explain satisfaction")
        .into_inner();
    assert_eq!(satisfaction.callback_ids, vec!["callback-jinding"]);
    assert_eq!(satisfaction.denominator_assignment_ids, vec!["a-housing"]);

    // the traffic police returned the case within the 2 h ack limit (1 h) and the street upheld
    // the return: a timely response for 报到率, and out of every other denominator
    let traffic_card = scorecard(&mut harness.client, "zw-traffic-police").await;
    let counts = traffic_card.counts.expect("counts");
    assert_eq!(
        (
            counts.whistled,
            counts.returned,
            counts.returns_accepted,
            counts.returns_rejected,
            counts.acknowledged_within_limit,
            counts.required_on_site,
            counts.due_in_period
        ),
        (1, 1, 1, 0, 1, 0, 0)
    );
    assert_eq!(counts.satisfaction_callbacks, 0);
    let indicators = traffic_card.indicators.expect("indicators");
    assert_eq!(indicators.resolution_rate, None);
    assert_eq!(indicators.on_site_rate, None);
    assert_eq!(indicators.satisfaction, None);
    assert_close(indicators.report_rate, 1.0, "report rate");
    // only 报到率 is present: 25·1 / 25 · 100
    assert_close(traffic_card.composite, 100.0, "composite");

    harness.stop().await;
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let mut harness = start().await;
    for period in ["2026-13", "2026-Q5", "", "Nov 2026", "2026-11-01"] {
        let error = harness
            .client
            .get_scorecard(GetScorecardRequest {
                department_code: "zw-sanitation".into(),
                period: period.into(),
                ..Default::default()
            })
            .await
            .expect_err("bad period");
        assert_eq!(error.code(), Code::InvalidArgument, "{period:?}");
        assert!(error.message().starts_with("period:"), "{error:?}");
    }
    let error = harness
        .client
        .get_scorecard(GetScorecardRequest {
            department_code: String::new(),
            period: PERIOD.into(),
            ..Default::default()
        })
        .await
        .expect_err("no department");
    assert!(error.message().starts_with("department_code:"), "{error:?}");
    let error = harness
        .client
        .get_scorecard(GetScorecardRequest {
            department_code: "nobody".into(),
            period: PERIOD.into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown department");
    assert_eq!(error.code(), Code::NotFound);

    // a catalogue department with no whistles has a scorecard with nothing in it
    let idle = scorecard(&mut harness.client, "sy-water").await;
    assert_eq!(idle.counts, Some(ScorecardCounts::default()));
    assert_eq!(idle.composite, None);
    assert_eq!(idle.indicators.expect("indicators").report_rate, None);

    let rating = RateCooperationRequest {
        assignment_id: "never-whistled".into(),
        rater: Rater::Street as i32,
        rater_id: "420303003".into(),
        score: 4,
        comment: String::new(),
    };
    for (field, request) in [
        (
            "score",
            RateCooperationRequest {
                score: 0,
                ..rating.clone()
            },
        ),
        (
            "score",
            RateCooperationRequest {
                score: 6,
                ..rating.clone()
            },
        ),
        (
            "rater",
            RateCooperationRequest {
                rater: Rater::Unspecified as i32,
                ..rating.clone()
            },
        ),
        (
            "rater_id",
            RateCooperationRequest {
                rater_id: String::new(),
                ..rating.clone()
            },
        ),
        (
            "assignment_id",
            RateCooperationRequest {
                assignment_id: String::new(),
                ..rating.clone()
            },
        ),
    ] {
        let error = harness
            .client
            .rate_cooperation(request)
            .await
            .expect_err("bad rating");
        assert_eq!(error.code(), Code::InvalidArgument, "{field}");
        assert!(
            error.message().starts_with(&format!("{field}:")),
            "{error:?}"
        );
    }
    let error = harness
        .client
        .rate_cooperation(rating)
        .await
        .expect_err("unknown assignment");
    assert_eq!(error.code(), Code::NotFound);

    let error = harness
        .client
        .record_satisfaction(RecordSatisfactionRequest {
            case_id: "never-seen".into(),
            callback_id: "callback-x".into(),
            result: Satisfaction::Satisfied as i32,
            note: String::new(),
        })
        .await
        .expect_err("unknown case");
    assert_eq!(error.code(), Code::NotFound);
    let error = harness
        .client
        .record_satisfaction(RecordSatisfactionRequest {
            case_id: "never-seen".into(),
            callback_id: "callback-x".into(),
            result: Satisfaction::Unspecified as i32,
            note: String::new(),
        })
        .await
        .expect_err("no result");
    assert!(error.message().starts_with("result:"), "{error:?}");

    for (field, request) in [
        (
            "level",
            GetRankingRequest {
                period: PERIOD.into(),
                level: "street".into(),
                region_code: String::new(),
                ..Default::default()
            },
        ),
        (
            "region_code",
            GetRankingRequest {
                period: PERIOD.into(),
                level: String::new(),
                region_code: "zhangwan".into(),
                ..Default::default()
            },
        ),
        (
            "period",
            GetRankingRequest {
                period: "2026-Q0".into(),
                level: String::new(),
                region_code: String::new(),
                ..Default::default()
            },
        ),
    ] {
        let error = harness
            .client
            .get_ranking(request)
            .await
            .expect_err("bad ranking");
        assert_eq!(error.code(), Code::InvalidArgument, "{field}");
        assert!(
            error.message().starts_with(&format!("{field}:")),
            "{error:?}"
        );
    }
    let error = harness
        .client
        .explain_score(ExplainScoreRequest {
            department_code: "zw-sanitation".into(),
            period: PERIOD.into(),
            indicator: "happiness".into(),
        })
        .await
        .expect_err("bad indicator");
    assert!(error.message().starts_with("indicator:"), "{error:?}");

    // every catalogue department is ranked, none has whistles yet
    let ranking = harness
        .client
        .get_ranking(GetRankingRequest {
            period: "2026".into(),
            level: String::new(),
            region_code: String::new(),
            ..Default::default()
        })
        .await
        .expect("ranking")
        .into_inner();
    assert_eq!(ranking.period, "2026");
    assert_eq!(
        ranking.entries.len(),
        15,
        "the demo catalogue's departments"
    );
    assert!(ranking.entries.iter().all(|entry| entry.rank == 1));

    // every field is bounded by the limits table; the field travels as a BadRequest detail
    use tonic_types::StatusExt;
    let error = harness
        .client
        .rate_cooperation(RateCooperationRequest {
            assignment_id: "never-whistled".into(),
            rater: Rater::Street as i32,
            rater_id: "420303003".into(),
            score: 4,
            comment: "好".repeat(2001),
        })
        .await
        .expect_err("comment too long");
    assert_eq!(error.code(), Code::InvalidArgument);
    let details = error.get_error_details();
    let violation = &details.bad_request().expect("bad request").field_violations[0];
    assert_eq!(violation.field, "comment");
    assert_eq!(violation.description, "at most 2000 characters");
    let error = harness
        .client
        .get_scorecard(GetScorecardRequest {
            department_code: "d".repeat(65),
            period: PERIOD.into(),
            ..Default::default()
        })
        .await
        .expect_err("department code too long");
    assert!(
        error.message() == "department_code: at most 64 characters",
        "{error:?}"
    );

    // a department code that is not UTF-8 is INVALID_ARGUMENT naming it, not INTERNAL
    let error = whistle_platform::testing::call_raw(
        &harness.served.url(),
        "/whistle.evaluation.v1.EvaluationService/GetScorecard",
        vec![0x0a, 0x02, 0xc3, 0x28],
    )
    .await
    .expect_err("not UTF-8");
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(
        error
            .message()
            .starts_with("department_code: invalid string value"),
        "{error:?}"
    );

    harness.stop().await;
}

#[tokio::test]
async fn a_month_is_closed_automatically_after_the_dispute_window() {
    // the clock is 2026-11-20; October ended on 1 November, 申诉期 10 days (the default): closed
    let mut harness = start().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let october = loop {
        let october = harness
            .client
            .get_period_scorecards(GetPeriodScorecardsRequest {
                period: "2026-10".into(),
            })
            .await
            .expect("october")
            .into_inner();
        if october.closed {
            break october;
        }
        assert!(Instant::now() < deadline, "october was not closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        october.sha256,
        whistle_evaluation::domain::sha256_hex(&october.frozen_scorecards_json)
    );
    assert_eq!(
        october.scorecards.len(),
        15,
        "the demo catalogue's departments"
    );
    assert!(
        october
            .scorecards
            .iter()
            .all(|card| card.frozen && !card.rated)
    );
    // November is still open, and cannot be closed before it ends
    let november = harness
        .client
        .get_period_scorecards(GetPeriodScorecardsRequest {
            period: PERIOD.into(),
        })
        .await
        .expect("november")
        .into_inner();
    assert!(!november.closed && november.sha256.is_empty());
    let refused = harness
        .client
        .close_period(ClosePeriodRequest {
            period: PERIOD.into(),
        })
        .await
        .expect_err("november has not ended");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    harness.stop().await;
}
