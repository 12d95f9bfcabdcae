//! The scorecards follow from the event history alone: a generated history of thousands of cases
//! (shuffled, some events redelivered), ratings and call-backs through the service, a period
//! closed, changed after the close, reopened and closed again; then `rebuild` replays the streams
//! into an empty database, a second evaluation serves it, and every card, frozen or live, scoped
//! or not, and every ranking equals the live one field for field. On SQLite, and (a separate test)
//! into PostgreSQL at 127.0.0.1:5432.

mod common;

use async_nats::jetstream;
use common::history::{self, COMMUNITIES, GeneratedCase, NOW, STREET};
use sea_orm::{ConnectionTrait, Database};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;
use whistle_evaluation::EvaluationConfig;
use whistle_platform::ManualClock;
use whistle_platform::clock::from_millis;
use whistle_platform::testing::{Served, TestBed, serve};
use whistle_proto::evaluation::evaluation_service_client::EvaluationServiceClient;
use whistle_proto::evaluation::{
    ClosePeriodRequest, GetPeriodScorecardsRequest, GetRankingRequest, GetScorecardRequest,
    PeriodScorecards, Ranking, RateCooperationRequest, Rater, RecordSatisfactionRequest,
    ReopenPeriodRequest, Satisfaction, Scorecard,
};

type Client = EvaluationServiceClient<tonic::transport::Channel>;

const CASES: usize = 3_000;

async fn start(bed: &TestBed, database_url: String, clock: Arc<ManualClock>) -> (Served, Client) {
    let mut config = EvaluationConfig::default();
    // one service in-process: authentication is the end-to-end tests' (tests/tests/authorization.rs)
    config.auth.enabled = false;
    config.database.url = database_url;
    config.nats.url = bed.nats.url();
    config.catalogue.file = Some(TestBed::demo_catalogue());
    config.evaluation.close_after_days = 0;
    let served =
        serve(|listener, shutdown| whistle_evaluation::run(config, listener, clock, shutdown))
            .await;
    let client = EvaluationServiceClient::connect(served.url())
        .await
        .expect("connect");
    (served, client)
}

/// Waits until evaluation's three durable consumers have applied everything in their streams.
async fn wait_until_consumed(jetstream: &jetstream::Context, evaluation_events: u64) {
    let deadline = Instant::now() + Duration::from_secs(180);
    for (stream, durable) in [
        (whistle_platform::nats::CASES_STREAM, "evaluation-cases"),
        (
            whistle_platform::nats::WHISTLES_STREAM,
            "evaluation-whistles",
        ),
        (whistle_platform::nats::EVALUATION_STREAM, "evaluation-own"),
    ] {
        loop {
            let stream_messages = jetstream
                .get_stream(stream)
                .await
                .expect("stream")
                .info()
                .await
                .expect("stream info")
                .state
                .messages;
            let relayed = stream != whistle_platform::nats::EVALUATION_STREAM
                || stream_messages >= evaluation_events;
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
            if relayed && consumed {
                break;
            }
            assert!(Instant::now() < deadline, "{durable} did not catch up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Everything a district office or a street can read: every period's cards, each street's and
/// community's view of every department, and the rankings by the cases' region.
#[derive(Debug, PartialEq)]
struct Readings {
    periods: Vec<PeriodScorecards>,
    scoped: Vec<Scorecard>,
    rankings: Vec<Ranking>,
}

async fn read_everything(client: &mut Client) -> Readings {
    let mut periods = Vec::new();
    for period in ["2026-10", "2026-11", "2026-Q4", "2026"] {
        periods.push(
            client
                .get_period_scorecards(GetPeriodScorecardsRequest {
                    period: period.into(),
                })
                .await
                .expect("period scorecards")
                .into_inner(),
        );
    }
    let mut scoped = Vec::new();
    let mut rankings = Vec::new();
    for region in std::iter::once(STREET).chain(COMMUNITIES) {
        for department in history::DEPARTMENTS {
            for period in ["2026-10", "2026-11"] {
                scoped.push(
                    client
                        .get_scorecard(GetScorecardRequest {
                            department_code: department.into(),
                            period: period.into(),
                            region_code: region.into(),
                        })
                        .await
                        .expect("scoped scorecard")
                        .into_inner(),
                );
            }
        }
    }
    for case_region_code in ["", STREET, COMMUNITIES[0], COMMUNITIES[3]] {
        for period in ["2026-10", "2026-11"] {
            rankings.push(
                client
                    .get_ranking(GetRankingRequest {
                        period: period.into(),
                        case_region_code: case_region_code.into(),
                        ..Default::default()
                    })
                    .await
                    .expect("ranking")
                    .into_inner(),
            );
        }
    }
    Readings {
        periods,
        scoped,
        rankings,
    }
}

/// Ratings from the case's street and community (some replaced), call-backs on closed cases; the
/// number of evaluation events they published.
async fn rate_and_call_back(client: &mut Client, cases: &[GeneratedCase]) -> u64 {
    let mut published = 0;
    for (index, case) in cases.iter().enumerate().take(400) {
        for (assignment_id, _) in &case.assignments {
            for (rater, rater_id, score) in [
                (Rater::Street, STREET, 1 + (index % 5) as u32),
                (
                    Rater::Community,
                    case.community.as_str(),
                    5 - (index % 3) as u32,
                ),
                // the street changes its mind on some: the second replaces the first
                (
                    Rater::Street,
                    STREET,
                    if index.is_multiple_of(7) { 2 } else { 0 },
                ),
            ] {
                if score == 0 {
                    continue;
                }
                let rated = client
                    .rate_cooperation(RateCooperationRequest {
                        assignment_id: assignment_id.clone(),
                        rater: rater as i32,
                        rater_id: rater_id.into(),
                        score,
                        comment: String::new(),
                    })
                    .await;
                match rated {
                    Ok(_) => published += 1,
                    // an assignment still waiting for its department: nothing to rate yet
                    Err(status) if status.code() == Code::FailedPrecondition => {}
                    Err(status) => panic!("rating refused: {status:?}"),
                }
            }
        }
        let recorded = client
            .record_satisfaction(RecordSatisfactionRequest {
                case_id: case.case_id.clone(),
                callback_id: format!("callback-{}", case.case_id),
                result: [
                    Satisfaction::Satisfied,
                    Satisfaction::BasicallySatisfied,
                    Satisfaction::Dissatisfied,
                ][index % 3] as i32,
                note: String::new(),
            })
            .await;
        match recorded {
            Ok(_) => {
                assert!(case.closed, "a call-back on open case {}", case.case_id);
                published += 1;
            }
            Err(status) => {
                assert!(
                    !case.closed,
                    "call-back on closed {} refused: {status:?}",
                    case.case_id
                );
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            }
        }
    }
    published
}

async fn live_equals_rebuilt(rebuild_into: impl FnOnce(&TestBed) -> String) {
    let bed = TestBed::new().await;
    let clock = Arc::new(ManualClock::new(from_millis(NOW)));
    let (live, mut client) = start(&bed, bed.sqlite_url("evaluation-live"), clock.clone()).await;

    let cases = history::generate(CASES, 8);
    let messages = history::shuffled_with_redeliveries(&cases, 5, 9);
    assert!(
        messages.len() > 5 * CASES,
        "a history of {} events",
        messages.len()
    );
    history::publish_all(&bed.jetstream, &messages).await;
    wait_until_consumed(&bed.jetstream, 0).await;

    // who scores whom: another community, or a community posing as the street, is refused
    let case = &cases[1];
    let other_community = COMMUNITIES
        .iter()
        .find(|code| **code != case.community)
        .expect("another community");
    for (rater, rater_id) in [
        (Rater::Community, *other_community),
        (Rater::Street, "420303004"),
        (Rater::Street, case.community.as_str()),
    ] {
        let refused = client
            .rate_cooperation(RateCooperationRequest {
                assignment_id: case.assignments[0].0.clone(),
                rater: rater as i32,
                rater_id: rater_id.into(),
                score: 5,
                comment: String::new(),
            })
            .await
            .expect_err("not the case's rater");
        assert!(
            matches!(
                refused.code(),
                Code::PermissionDenied | Code::InvalidArgument
            ),
            "{refused:?}"
        );
        assert!(refused.message().contains("rater_id"), "{refused:?}");
    }

    let mut evaluation_events = rate_and_call_back(&mut client, &cases).await;
    assert!(
        evaluation_events > 500,
        "{evaluation_events} ratings and call-backs"
    );

    // close October: not before it ended, once only
    for (period, code) in [("2026-11", Code::FailedPrecondition)] {
        let refused = client
            .close_period(ClosePeriodRequest {
                period: period.into(),
            })
            .await
            .expect_err("november has not ended");
        assert_eq!(refused.code(), code);
    }
    let closed = client
        .close_period(ClosePeriodRequest {
            period: "2026-10".into(),
        })
        .await
        .expect("close october")
        .into_inner();
    evaluation_events += 1;
    assert!(closed.closed);
    assert_eq!(
        closed.sha256,
        whistle_evaluation::domain::sha256_hex(&closed.frozen_scorecards_json),
        "the published hash covers the published cards"
    );
    assert_eq!(
        closed.scorecards.len(),
        15,
        "the demo catalogue's departments"
    );
    let again = client
        .close_period(ClosePeriodRequest {
            period: "2026-10".into(),
        })
        .await
        .expect_err("already closed");
    assert_eq!(again.code(), Code::FailedPrecondition);

    // a rating after the close is kept and counted "after close", the frozen card does not move
    let october_case = cases
        .iter()
        .step_by(2)
        .skip(500)
        .find(|case| case.closed)
        .expect("a closed october case");
    let (assignment_id, department) = october_case.assignments[0].clone();
    let frozen_before = client
        .get_scorecard(GetScorecardRequest {
            department_code: department.clone(),
            period: "2026-10".into(),
            ..Default::default()
        })
        .await
        .expect("frozen card")
        .into_inner();
    assert!(frozen_before.frozen && frozen_before.after_close == 0);
    clock.advance(chrono::Duration::minutes(5));
    client
        .rate_cooperation(RateCooperationRequest {
            assignment_id: assignment_id.clone(),
            rater: Rater::Street as i32,
            rater_id: STREET.into(),
            score: 1,
            comment: "事后评价".into(),
        })
        .await
        .expect("rating after the close");
    evaluation_events += 1;
    let frozen_after = client
        .get_scorecard(GetScorecardRequest {
            department_code: department.clone(),
            period: "2026-10".into(),
            ..Default::default()
        })
        .await
        .expect("frozen card")
        .into_inner();
    assert_eq!(frozen_after.after_close, 1);
    assert_eq!(
        Scorecard {
            after_close: 0,
            ..frozen_after.clone()
        },
        frozen_before,
        "a frozen card never changes silently"
    );

    // reopened (logged, with a reason): live again; closed again: recomputed, a new hash
    let refused = client
        .reopen_period(ReopenPeriodRequest {
            period: "2026-10".into(),
            reason: String::new(),
        })
        .await
        .expect_err("a reason is required");
    assert_eq!(refused.code(), Code::InvalidArgument);
    client
        .reopen_period(ReopenPeriodRequest {
            period: "2026-10".into(),
            reason: "街道申诉: 补录评价".into(),
        })
        .await
        .expect("reopen");
    evaluation_events += 1;
    let reopened = client
        .get_scorecard(GetScorecardRequest {
            department_code: department.clone(),
            period: "2026-10".into(),
            ..Default::default()
        })
        .await
        .expect("live card")
        .into_inner();
    assert!(!reopened.frozen);
    clock.advance(chrono::Duration::minutes(5));
    let closed_again = client
        .close_period(ClosePeriodRequest {
            period: "2026-10".into(),
        })
        .await
        .expect("close october again")
        .into_inner();
    evaluation_events += 1;
    assert_ne!(closed_again.sha256, closed.sha256, "the late rating is in");

    wait_until_consumed(&bed.jetstream, evaluation_events).await;
    let live_readings = read_everything(&mut client).await;
    assert!(live_readings.periods[0].closed && !live_readings.periods[1].closed);
    live.stop().await;

    // the live durable consumers are where they were after the rebuild
    let positions = durable_positions(&bed.jetstream).await;
    let into = rebuild_into(&bed);
    let report = whistle_evaluation::rebuild::rebuild(&bed.nats.url(), &into, clock.clone())
        .await
        .expect("rebuild");
    assert!(report.duplicates > 0, "{report:?}");
    assert_eq!(report.rejected, 0, "{report:?}");
    assert_eq!(
        report.applied + report.duplicates,
        report.messages,
        "{report:?}"
    );
    assert_eq!(durable_positions(&bed.jetstream).await, positions);
    let refused = whistle_evaluation::rebuild::rebuild(&bed.nats.url(), &into, clock.clone())
        .await
        .expect_err("the database is no longer empty");
    assert!(refused.to_string().contains("empty"), "{refused}");

    let (rebuilt, mut rebuilt_client) = start(&bed, into, clock.clone()).await;
    let rebuilt_readings = read_everything(&mut rebuilt_client).await;
    assert_eq!(rebuilt_readings.periods, live_readings.periods);
    assert_eq!(rebuilt_readings.scoped, live_readings.scoped);
    assert_eq!(rebuilt_readings.rankings, live_readings.rankings);
    rebuilt.stop().await;
}

async fn durable_positions(jetstream: &jetstream::Context) -> Vec<(String, u64, u64)> {
    let mut positions = Vec::new();
    for (stream, durable) in [
        (whistle_platform::nats::CASES_STREAM, "evaluation-cases"),
        (
            whistle_platform::nats::WHISTLES_STREAM,
            "evaluation-whistles",
        ),
        (whistle_platform::nats::EVALUATION_STREAM, "evaluation-own"),
    ] {
        let mut consumer = jetstream
            .get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(durable, stream)
            .await
            .expect("durable consumer");
        let info = consumer.info().await.expect("consumer info");
        positions.push((
            durable.to_string(),
            info.delivered.stream_sequence,
            info.ack_floor.stream_sequence,
        ));
    }
    positions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_sqlite_database_serves_the_live_scorecards() {
    live_equals_rebuilt(|bed| bed.sqlite_url("evaluation-rebuilt")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_postgres_database_serves_the_live_scorecards() {
    let name = format!("whistle_rebuild_{}", uuid::Uuid::now_v7().simple());
    let admin = Database::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .expect("postgres at 127.0.0.1:5432");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    live_equals_rebuilt(|_| url.clone()).await;
    admin
        .execute_unprepared(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .expect("drop database");
}
