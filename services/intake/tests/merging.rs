//! Duplicate merging, concurrent duplicates on SQLite and PostgreSQL, recurrence, splitting and
//! evidence, with intake in-process against a real nats-server, dispatch's case events published
//! onto the stream as dispatch's relay would.

mod common;

use common::{Harness, garbage_report, garbage_report_north, kinds, start, start_on};
use sea_orm::EntityTrait;
use std::collections::BTreeSet;
use tonic::Code;
use whistle_intake::storage::case as intake_case;
use whistle_platform::envelope::Payload;
use whistle_platform::testing::TestPostgres;
use whistle_proto::events::{CaseClosed, CaseRejected, CaseReopened};
use whistle_proto::intake::{
    AttachEvidenceRequest, CaseState, GetReportRequest, ListReportsRequest, SplitReportRequest,
    SubmitReportResponse,
};
use whistle_proto::types::Attachment;

/// The events intake published (dispatch's, published by the test, left out: their place on the
/// stream relative to intake's depends on when the relay ran).
async fn intake_events(harness: &Harness) -> Vec<whistle_platform::envelope::Event> {
    harness
        .case_events()
        .await
        .into_iter()
        .filter(|event| event.source == "whistle-intake")
        .collect()
}

async fn submit(
    harness: &mut Harness,
    request: whistle_proto::intake::SubmitReportRequest,
) -> SubmitReportResponse {
    harness
        .client
        .submit_report(request)
        .await
        .expect("submit")
        .into_inner()
}

#[tokio::test]
async fn duplicates_join_an_open_case_within_distance_and_window() {
    let mut harness = start(|config| config.merging.always_separate = vec!["E-05-07".into()]).await;

    let first = submit(&mut harness, garbage_report_north("first", 0.0)).await;
    assert!(!first.merged);
    let mut near = garbage_report_north("30-m-north", 30.0);
    near.reporter_id = "resident-42".into();
    near.attachments = vec![Attachment {
        uri: "https://photos.example/bin.jpg".into(),
        sha256: "a".repeat(64),
        media_type: "image/jpeg".into(),
        size_bytes: 1024,
    }];
    let joined = submit(&mut harness, near).await;
    assert!(joined.merged, "30 m away within the hour: merged");
    assert_eq!(joined.case_id, first.case_id);
    let far = submit(&mut harness, garbage_report_north("80-m-north", 80.0)).await;
    assert!(!far.merged, "80 m away: a case of its own");
    assert_ne!(far.case_id, first.case_id);
    // another category at the same place is another problem
    let mut other = garbage_report_north("exposed-garbage", 0.0);
    other.category_code = "E-01-02".into();
    assert!(!submit(&mut harness, other).await.merged);
    // a category configured always separate never merges
    let mut fire = garbage_report("fire-lane-1");
    fire.category_code = "E-05-07".into();
    let fire_first = submit(&mut harness, fire.clone()).await;
    fire.request_id = "fire-lane-2".into();
    let fire_second = submit(&mut harness, fire).await;
    assert!(!fire_second.merged);
    assert_ne!(fire_first.case_id, fire_second.case_id);

    // 25 hours later the first case is outside the window
    harness.clock.advance(chrono::Duration::hours(25));
    let late = submit(&mut harness, garbage_report_north("25-h-later", 10.0)).await;
    assert!(!late.merged, "outside the 24 h window");
    assert_ne!(late.case_id, first.case_id);
    // within the window of the new case, but dispatch rejects that case: no longer open
    harness
        .dispatch_publishes(
            &late.case_id,
            Payload::CaseRejected(CaseRejected {
                rejected_by: "street".into(),
                reason: "重复上报".into(),
            }),
        )
        .await;
    harness
        .wait_case_state(&late.report_id, CaseState::Rejected)
        .await;
    let after_rejection = submit(&mut harness, garbage_report_north("after-rejection", 5.0)).await;
    assert!(
        !after_rejection.merged,
        "a rejected case takes no duplicates"
    );

    let events = intake_events(&harness).await;
    assert_eq!(
        kinds(&events),
        [
            "case.reported",
            "case.merged",
            "case.reported",
            "case.reported",
            "case.reported",
            "case.reported",
            "case.reported",
            "case.reported"
        ]
    );
    let Some(Payload::CaseMerged(merged)) = &events[1].payload else {
        panic!("case.merged expected");
    };
    assert_eq!(events[1].case_id, first.case_id);
    assert_eq!(merged.merged_into_case_id, first.case_id);
    assert_eq!(merged.report_id, joined.report_id);
    assert_eq!(merged.reporter_id, "resident-42");
    assert_eq!(merged.category_code, "E-01-03");
    assert_eq!(merged.report_count, 2);
    assert!(
        (29.0..31.0).contains(&merged.distance_meters),
        "{}",
        merged.distance_meters
    );
    assert_eq!(merged.attachments.len(), 1);
    assert_eq!(
        merged.place.as_ref().expect("place").grid_code,
        "420303003001001"
    );
    assert_eq!(
        events[1].region.as_ref().expect("region").street_slug,
        "chechenglu"
    );
    harness.served.stop().await;
}

/// Eight grid workers report the same bin at the same moment: one case, seven merges.
async fn concurrent_duplicates_make_one_case(database_url: Option<String>) {
    let harness = start_on(database_url, false, |_| {}).await;
    let mut calls = Vec::new();
    for index in 0..8 {
        let mut client = harness.client.clone();
        let mut request = garbage_report_north(&format!("at-once-{index}"), f64::from(index));
        request.reporter_id = format!("grid-worker-{index}");
        calls.push(tokio::spawn(async move {
            client
                .submit_report(request)
                .await
                .map(|answer| answer.into_inner())
        }));
    }
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.expect("task").expect("submit"));
    }
    let cases: BTreeSet<&str> = answers
        .iter()
        .map(|answer| answer.case_id.as_str())
        .collect();
    assert_eq!(cases.len(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|answer| answer.merged).count(), 7);
    let kinds = kinds(&harness.case_events().await);
    assert_eq!(
        kinds.iter().filter(|kind| *kind == "case.reported").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|kind| *kind == "case.merged").count(),
        7,
        "{kinds:?}"
    );
    let mut client = harness.client.clone();
    let on_case = client
        .list_reports(ListReportsRequest {
            case_id: answers[0].case_id.clone(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(on_case.reports.len(), 8);
    harness.served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reports_at_once_make_one_case_on_sqlite() {
    concurrent_duplicates_make_one_case(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reports_at_once_make_one_case_on_postgres() {
    let database = TestPostgres::create().await;
    concurrent_duplicates_make_one_case(Some(database.url.clone())).await;
    database.drop_database().await;
}

/// Dispatch's events about a case can reach intake out of order (redeliveries, several
/// consumers): the state intake shows is the newest event's, whatever the order.
#[tokio::test]
async fn case_states_applied_out_of_order_leave_the_newest() {
    let mut harness = start(|_| {}).await;
    let answer = submit(&mut harness, garbage_report_north("out-of-order", 0.0)).await;
    // the reopening (version 7) arrives before the close it followed (version 5)
    harness
        .dispatch_publishes_at(
            &answer.case_id,
            7,
            Payload::CaseReopened(CaseReopened {
                reason: "污水又冒出来了".into(),
                ..Default::default()
            }),
        )
        .await;
    harness
        .dispatch_publishes_at(&answer.case_id, 5, Payload::CaseClosed(CaseClosed {}))
        .await;
    // a later event, applied after both, shows both were consumed
    harness
        .dispatch_publishes_at(
            &answer.case_id,
            8,
            Payload::CaseEscalated(Default::default()),
        )
        .await;
    let db = sea_orm::Database::connect(harness.database_url.as_str())
        .await
        .expect("intake's database");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let stored = intake_case::Entity::find_by_id(answer.case_id.as_str())
            .one(&db)
            .await
            .expect("read")
            .expect("the case");
        if stored.state_version == 8 {
            assert!(stored.state_note.contains("督办"), "{stored:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the escalation never arrived: {stored:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    db.close().await.expect("close");
    let report = harness
        .client
        .get_report(whistle_proto::intake::GetReportRequest {
            report_id: answer.report_id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(report.case_state(), CaseState::Open, "{report:?}");
    // and the close that really came last closes it
    harness
        .dispatch_publishes_at(&answer.case_id, 9, Payload::CaseClosed(CaseClosed {}))
        .await;
    harness
        .wait_case_state(&answer.report_id, CaseState::Closed)
        .await;
}

#[tokio::test]
async fn a_problem_closed_three_times_in_a_month_recurs() {
    let mut harness = start(|_| {}).await;
    let mut earlier = Vec::new();
    for round in 0..3 {
        let answer = submit(
            &mut harness,
            garbage_report_north(&format!("round-{round}"), f64::from(round) * 10.0),
        )
        .await;
        assert!(!answer.recurrent, "round {round}");
        assert!(!answer.merged, "the case before was closed");
        harness
            .dispatch_publishes(&answer.case_id, Payload::CaseClosed(CaseClosed {}))
            .await;
        harness
            .wait_case_state(&answer.report_id, CaseState::Closed)
            .await;
        earlier.push(answer.case_id);
        harness.clock.advance(chrono::Duration::days(9));
    }
    // 200 m away the problem is another one
    let elsewhere = submit(&mut harness, garbage_report_north("elsewhere", 200.0)).await;
    assert!(!elsewhere.recurrent);
    let again = submit(&mut harness, garbage_report_north("fourth-time", 5.0)).await;
    assert!(again.recurrent, "three closures within 30 days and 50 m");
    assert_eq!(again.earlier_case_ids, earlier);

    let recurrent = harness
        .client
        .list_reports(ListReportsRequest {
            recurrent_only: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .reports;
    assert_eq!(recurrent.len(), 1);
    assert_eq!(recurrent[0].report_id, again.report_id);
    assert_eq!(recurrent[0].earlier_case_ids, earlier);

    let events = intake_events(&harness).await;
    let position = events
        .iter()
        .position(|event| matches!(event.payload, Some(Payload::CaseRecurrent(_))))
        .expect("case.recurrent");
    assert!(matches!(
        events[position - 1].payload,
        Some(Payload::CaseReported(_))
    ));
    assert_eq!(events[position - 1].case_id, again.case_id);
    assert_eq!(events[position].case_id, again.case_id);
    let Some(Payload::CaseRecurrent(flag)) = &events[position].payload else {
        unreachable!()
    };
    assert_eq!(flag.earlier_case_ids, earlier);
    assert_eq!((flag.threshold, flag.window_days), (3, 30));
    assert_eq!(
        events
            .iter()
            .filter(|event| matches!(event.payload, Some(Payload::CaseRecurrent(_))))
            .count(),
        1
    );

    // eleven days on the first closure is 38 days old; the second (29 days), the third and the
    // fourth case, closed now, still make three
    harness.clock.advance(chrono::Duration::days(11));
    harness
        .dispatch_publishes(&again.case_id, Payload::CaseClosed(CaseClosed {}))
        .await;
    harness
        .wait_case_state(&again.report_id, CaseState::Closed)
        .await;
    let later = submit(&mut harness, garbage_report_north("much-later", 0.0)).await;
    assert!(
        later.recurrent,
        "rounds 1, 2 and the fourth case are within 30 days"
    );
    assert_eq!(
        later.earlier_case_ids,
        [
            earlier[1].clone(),
            earlier[2].clone(),
            again.case_id.clone()
        ]
    );
    harness.served.stop().await;
}

#[tokio::test]
async fn a_wrongly_merged_report_is_split_into_its_own_case() {
    let mut harness = start(|_| {}).await;
    let first = submit(&mut harness, garbage_report_north("bin", 0.0)).await;
    let mut other = garbage_report_north("actually-another-bin", 20.0);
    other.reporter_id = "resident-9".into();
    let merged = submit(&mut harness, other).await;
    assert!(merged.merged);

    let split = SplitReportRequest {
        report_id: merged.report_id.clone(),
        operator_id: "street-operator-3".into(),
        reason: "两个不同的垃圾桶".into(),
    };
    let answer = harness
        .client
        .split_report(split.clone())
        .await
        .expect("split")
        .into_inner();
    assert_eq!(answer.split_from_case_id, first.case_id);
    assert_ne!(answer.case_id, first.case_id);
    let again = harness
        .client
        .split_report(split)
        .await
        .expect("a repeated split answers the same")
        .into_inner();
    assert_eq!(again, answer);
    let report = harness
        .client
        .get_report(GetReportRequest {
            report_id: merged.report_id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert!(!report.merged);
    assert_eq!(report.case_id, answer.case_id);
    assert_eq!(report.split_from_case_id, first.case_id);

    let not_merged = harness
        .client
        .split_report(SplitReportRequest {
            report_id: first.report_id.clone(),
            operator_id: "street-operator-3".into(),
            reason: "试一下".into(),
        })
        .await
        .expect_err("never merged");
    assert_eq!(not_merged.code(), Code::FailedPrecondition);
    let no_reason = harness
        .client
        .split_report(SplitReportRequest {
            report_id: first.report_id.clone(),
            operator_id: "street-operator-3".into(),
            reason: " ".into(),
        })
        .await
        .expect_err("reason");
    assert!(
        no_reason.message().starts_with("reason:"),
        "{}",
        no_reason.message()
    );

    let events = harness.case_events().await;
    assert_eq!(
        kinds(&events),
        [
            "case.reported",
            "case.merged",
            "case.split",
            "case.reported"
        ]
    );
    let Some(Payload::ReportSplit(fact)) = &events[2].payload else {
        unreachable!()
    };
    assert_eq!(
        events[2].case_id, first.case_id,
        "the fact belongs to the old case"
    );
    assert_eq!(fact.new_case_id, answer.case_id);
    assert_eq!(fact.reporter_id, "resident-9");
    assert_eq!(fact.report_count, 1);
    assert_eq!(events[3].case_id, answer.case_id);
    harness.served.stop().await;
}

fn photo(index: usize) -> Attachment {
    Attachment {
        uri: format!("https://photos.example/{index}.jpg"),
        sha256: format!("{index:064x}"),
        media_type: "image/jpeg".into(),
        size_bytes: 200_000,
    }
}

#[tokio::test]
async fn reporters_and_the_community_attach_evidence_to_open_cases() {
    let mut harness = start(|config| config.evidence.max_per_case = 12).await;
    let report = submit(&mut harness, garbage_report("with-photos")).await;
    let request = |id: &str, reporter: &str, community: &str, photos: Vec<Attachment>| {
        AttachEvidenceRequest {
            request_id: id.into(),
            case_id: report.case_id.clone(),
            reporter_id: reporter.into(),
            community_code: community.into(),
            attachments: photos,
        }
    };
    let by_reporter = request("e-1", "grid-worker-17", "", vec![photo(1), photo(2)]);
    let answer = harness
        .client
        .attach_evidence(by_reporter.clone())
        .await
        .expect("the reporter")
        .into_inner();
    assert_eq!(answer.evidence_count, 2);
    let retried = harness
        .client
        .attach_evidence(by_reporter)
        .await
        .expect("a retry")
        .into_inner();
    assert_eq!(retried.evidence_count, 2, "nothing added twice");
    let community = harness
        .client
        .attach_evidence(request("e-2", "", "420303003001", vec![photo(3)]))
        .await
        .expect("the community")
        .into_inner();
    assert_eq!(community.evidence_count, 3);

    let refused = |status: tonic::Status| (status.code(), status.message().to_string());
    let stranger = refused(
        harness
            .client
            .attach_evidence(request("e-3", "someone-else", "", vec![photo(4)]))
            .await
            .expect_err("not a reporter"),
    );
    assert_eq!(stranger.0, Code::InvalidArgument);
    assert!(stranger.1.starts_with("reporter_id:"), "{}", stranger.1);
    let other_community = refused(
        harness
            .client
            .attach_evidence(request("e-4", "", "420303003002", vec![photo(4)]))
            .await
            .expect_err("another community"),
    );
    assert!(
        other_community.1.starts_with("community_code:"),
        "{}",
        other_community.1
    );
    let both = refused(
        harness
            .client
            .attach_evidence(request(
                "e-5",
                "grid-worker-17",
                "420303003001",
                vec![photo(4)],
            ))
            .await
            .expect_err("both"),
    );
    assert_eq!(both.0, Code::InvalidArgument);
    let mut pdf = photo(5);
    pdf.media_type = "application/pdf".into();
    let document = refused(
        harness
            .client
            .attach_evidence(request("e-6", "grid-worker-17", "", vec![pdf]))
            .await
            .expect_err("not a photo or video"),
    );
    assert!(
        document.1.starts_with("attachments[0].media_type:"),
        "{}",
        document.1
    );
    let reused = refused(
        harness
            .client
            .attach_evidence(request("e-1", "grid-worker-17", "", vec![photo(9)]))
            .await
            .expect_err("key reused"),
    );
    assert_eq!(reused.0, Code::AlreadyExists);
    let too_many = refused(
        harness
            .client
            .attach_evidence(request(
                "e-7",
                "grid-worker-17",
                "",
                (10..20).map(photo).collect(),
            ))
            .await
            .expect_err("over evidence.max_per_case"),
    );
    assert_eq!(too_many.0, Code::FailedPrecondition);
    assert!(
        too_many.1.contains("evidence.max_per_case"),
        "{}",
        too_many.1
    );

    harness
        .dispatch_publishes(&report.case_id, Payload::CaseClosed(CaseClosed {}))
        .await;
    harness
        .wait_case_state(&report.report_id, CaseState::Closed)
        .await;
    let closed = refused(
        harness
            .client
            .attach_evidence(request("e-8", "grid-worker-17", "", vec![photo(6)]))
            .await
            .expect_err("closed"),
    );
    assert_eq!(closed.0, Code::FailedPrecondition);
    assert!(closed.1.contains("CASE_STATE_CLOSED"), "{}", closed.1);

    let events = harness.case_events().await;
    let attached: Vec<_> = events
        .iter()
        .filter_map(|event| match &event.payload {
            Some(Payload::CaseEvidenceAttached(attached)) => {
                Some((event.case_id.clone(), attached.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(attached.len(), 2, "{:?}", kinds(&events));
    assert_eq!(attached[0].0, report.case_id);
    assert_eq!(attached[0].1.attached_by, "grid-worker-17");
    assert_eq!(attached[0].1.attachments.len(), 2);
    assert!(attached[1].1.by_community);
    assert_eq!(attached[1].1.evidence_count, 3);
    harness.served.stop().await;
}
