//! Dispatch in-process on port 0, against a real nats-server started for the test and a fresh
//! SQLite file. Reports arrive as real `case.reported` events on JetStream.

use async_nats::jetstream;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use whistle_dispatch::DispatchConfig;
use whistle_platform::SystemClock;
use whistle_platform::envelope::{self, Payload};
use whistle_platform::testing::{Served, TestBed, serve};
use whistle_proto::dispatch::dispatch_service_client::DispatchServiceClient;
use whistle_proto::dispatch::record_department_action_request::Action;
use whistle_proto::dispatch::{
    AcceptCaseRequest, AcknowledgeAction, CheckInAction, GetCaseRequest, ListCasesRequest,
    RecordDepartmentActionRequest, RejectCaseRequest, ResolveAction, ReturnAction,
    VerifyCaseRequest, WhistleCaseRequest,
};
use whistle_proto::events::CaseReported;
use whistle_proto::types::{
    AssignmentRole, AssignmentStatus, CaseStatus, Channel, Place, Region, Severity,
};

type Client = DispatchServiceClient<tonic::transport::Channel>;

struct Harness {
    bed: TestBed,
    client: Client,
    served: Served,
}

async fn start() -> Harness {
    let bed = TestBed::new().await;
    let mut config = DispatchConfig::default();
    config.database.url = bed.sqlite_url("dispatch");
    config.nats.url = bed.nats.url();
    config.catalogue.file = Some(TestBed::demo_catalogue());
    let served = serve(|listener, shutdown| {
        whistle_dispatch::run(config, listener, Arc::new(SystemClock), shutdown)
    })
    .await;
    let client = DispatchServiceClient::connect(served.url())
        .await
        .expect("connect");
    Harness {
        bed,
        client,
        served,
    }
}

fn region(grid: &str) -> Region {
    Region {
        city_code: "420300".into(),
        district_code: "420303".into(),
        street_code: grid[..9].into(),
        street_slug: "chechenglu".into(),
        community_code: grid[..12].into(),
        grid_code: grid.into(),
    }
}

/// Publishes a `case.reported` as intake would; returns the case id.
async fn report(bed: &TestBed, category: &str, grid: &str) -> String {
    let case_id = uuid::Uuid::now_v7().to_string();
    let event = envelope::new_event(
        &SystemClock,
        "whistle-intake",
        &case_id,
        1,
        Some(region(grid)),
        Payload::CaseReported(CaseReported {
            report_id: uuid::Uuid::now_v7().to_string(),
            channel: Channel::GridPatrol as i32,
            reporter_id: "grid-worker-17".into(),
            category_code: category.into(),
            severity: Severity::Urgent as i32,
            description: "垃圾满溢".into(),
            place: Some(Place {
                grid_code: grid.into(),
                lat: 32.6369,
                lng: 110.7986,
                address: "中岳路2号".into(),
            }),
            attachments: vec![],
            observed_at: None,
        }),
    );
    bed.publish(&event).await;
    case_id
}

async fn wait_for_status(
    client: &mut Client,
    case_id: &str,
    status: CaseStatus,
) -> whistle_proto::dispatch::Case {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match client
            .get_case(GetCaseRequest {
                case_id: case_id.into(),
            })
            .await
        {
            Ok(case) if case.get_ref().status == status as i32 => return case.into_inner(),
            Ok(_) | Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("case {case_id} never reached {status:?}: {other:?}"),
        }
    }
}

fn action(
    action_id: &str,
    assignment_id: &str,
    department: &str,
    action: Action,
) -> RecordDepartmentActionRequest {
    RecordDepartmentActionRequest {
        action_id: action_id.into(),
        assignment_id: assignment_id.into(),
        department_code: department.into(),
        action: Some(action),
    }
}

#[tokio::test]
async fn a_routed_report_is_whistled_and_worked_to_closure() {
    let mut h = start().await;
    let case_id = report(&h.bed, "E-01-03", "420303003001001").await;
    let case = wait_for_status(&mut h.client, &case_id, CaseStatus::Whistled).await;
    assert_eq!(case.route_id, "garbage-overflow-zhongyue");
    let departments: Vec<(&str, i32)> = case
        .assignments
        .iter()
        .map(|a| (a.department_code.as_str(), a.role))
        .collect();
    assert_eq!(
        departments,
        vec![
            ("zw-sanitation", AssignmentRole::Lead as i32),
            ("zw-enforcement", AssignmentRole::Co as i32),
            ("pm-zhongyue", AssignmentRole::Co as i32)
        ]
    );
    let kinds: Vec<&str> = case
        .timeline
        .iter()
        .map(|entry| entry.kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "case.reported",
            "case.accepted",
            "whistle.issued",
            "whistle.issued",
            "whistle.issued"
        ]
    );

    // exactly one whistle per department on the stream, on the department's subject
    let stream = h
        .bed
        .jetstream
        .get_stream(whistle_platform::nats::WHISTLES_STREAM)
        .await
        .expect("stream");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: "whistle.v1.*.*.*.zw-sanitation.>".into(),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let issued = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .expect("in time")
        .expect("some")
        .expect("ok");
    assert_eq!(
        issued.subject.as_str(),
        "whistle.v1.420300.420303.chechenglu.zw-sanitation.issued"
    );
    let event = envelope::decode(&issued.payload).expect("decode");
    let Some(Payload::WhistleIssued(whistle)) = event.payload else {
        panic!("not a whistle: {event:?}")
    };
    assert_eq!(
        whistle.co_department_codes,
        vec!["zw-enforcement", "pm-zhongyue"]
    );
    assert_eq!(whistle.place.expect("place").address, "中岳路2号");

    let [lead, co, property] = [0, 1, 2].map(|i| case.assignments[i].assignment_id.clone());
    let ack = |_assignment: &str, who: &str| {
        Action::Acknowledge(AcknowledgeAction {
            responsible_person: who.into(),
            contact_phone: String::new(),
            promised_at: None,
        })
    };

    // another department cannot act on the lead's assignment
    let denied = h
        .client
        .record_department_action(action("x-1", &lead, "zw-enforcement", ack(&lead, "李")))
        .await
        .expect_err("denied");
    assert_eq!(denied.code(), Code::PermissionDenied);
    // idempotent on action_id
    let first = h
        .client
        .record_department_action(action("a-1", &lead, "zw-sanitation", ack(&lead, "王主任")))
        .await
        .expect("ack")
        .into_inner();
    let again = h
        .client
        .record_department_action(action("a-1", &lead, "zw-sanitation", ack(&lead, "王主任")))
        .await
        .expect("repeat")
        .into_inner();
    assert_eq!(first, again);
    assert_eq!(first.status, AssignmentStatus::Acknowledged as i32);
    // acknowledging twice with a new action id is an illegal transition naming the state
    let twice = h
        .client
        .record_department_action(action("a-2", &lead, "zw-sanitation", ack(&lead, "王主任")))
        .await
        .expect_err("twice");
    assert_eq!(twice.code(), Code::FailedPrecondition);
    assert!(
        twice.message().contains("ACKNOWLEDGED"),
        "{}",
        twice.message()
    );
    // resolving before the required check-in is refused
    let resolve = |text: &str| {
        Action::Resolve(ResolveAction {
            resolution: text.into(),
            evidence: vec![],
        })
    };
    let early = h
        .client
        .record_department_action(action("a-3", &lead, "zw-sanitation", resolve("done")))
        .await
        .expect_err("early");
    assert_eq!(early.code(), Code::FailedPrecondition);
    // a check-in 2 km away is refused; on the spot it is accepted
    let far = Action::CheckIn(CheckInAction {
        lat: 32.655,
        lng: 110.7986,
        person: "王".into(),
    });
    let refused = h
        .client
        .record_department_action(action("a-4", &lead, "zw-sanitation", far))
        .await
        .expect_err("far");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let near = Action::CheckIn(CheckInAction {
        lat: 32.6370,
        lng: 110.7987,
        person: "王".into(),
    });
    h.client
        .record_department_action(action("a-5", &lead, "zw-sanitation", near.clone()))
        .await
        .expect("check in");
    h.client
        .record_department_action(action(
            "a-6",
            &lead,
            "zw-sanitation",
            resolve("增加清运频次，已清理"),
        ))
        .await
        .expect("resolve");
    // the co-departments: one returns, one works
    let returned = Action::ReturnAssignment(ReturnAction {
        reason: "not ours".into(),
        suggested_department_code: String::new(),
    });
    h.client
        .record_department_action(action("b-1", &co, "zw-enforcement", returned))
        .await
        .expect("return");
    h.client
        .record_department_action(action(
            "c-1",
            &property,
            "pm-zhongyue",
            ack(&property, "物业张经理"),
        ))
        .await
        .expect("ack");
    h.client
        .record_department_action(action("c-2", &property, "pm-zhongyue", near))
        .await
        .expect("check in");
    let still = h
        .client
        .get_case(GetCaseRequest {
            case_id: case_id.clone(),
        })
        .await
        .expect("case")
        .into_inner();
    assert_eq!(
        still.status,
        CaseStatus::Whistled as i32,
        "the property company is not done yet"
    );
    h.client
        .record_department_action(action(
            "c-3",
            &property,
            "pm-zhongyue",
            resolve("物业与业主分担费用"),
        ))
        .await
        .expect("resolve");
    let waiting = h
        .client
        .get_case(GetCaseRequest {
            case_id: case_id.clone(),
        })
        .await
        .expect("case")
        .into_inner();
    assert_eq!(waiting.status, CaseStatus::AwaitingVerification as i32);

    // verification fails once (返工), the lead resolves again, verification passes
    let failed = h
        .client
        .verify_case(VerifyCaseRequest {
            case_id: case_id.clone(),
            verifier_id: "jingtan".into(),
            passed: false,
            note: "路面仍有垃圾".into(),
        })
        .await
        .expect("verify")
        .into_inner();
    assert_eq!(failed.status, CaseStatus::Reopened as i32);
    h.client
        .record_department_action(action("a-7", &lead, "zw-sanitation", resolve("再次清理")))
        .await
        .expect("resolve again");
    h.client
        .record_department_action(action("c-4", &property, "pm-zhongyue", resolve("再次清理")))
        .await
        .expect("resolve again");
    let passed = h
        .client
        .verify_case(VerifyCaseRequest {
            case_id: case_id.clone(),
            verifier_id: "jingtan".into(),
            passed: true,
            note: String::new(),
        })
        .await
        .expect("verify")
        .into_inner();
    assert_eq!(passed.status, CaseStatus::Closed as i32);

    let listed = h
        .client
        .list_cases(ListCasesRequest {
            department_code: "pm-zhongyue".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.cases.len(), 1);
    assert_eq!(listed.cases[0].case_id, case_id);
    h.served.stop().await;
}

#[tokio::test]
async fn the_street_accepts_rejects_and_whistles_by_hand() {
    let mut h = start().await;
    // the property route of 金鼎凤凰城 does not whistle automatically
    let case_id = report(&h.bed, "E-06-01", "420303003002001").await;
    let case = wait_for_status(&mut h.client, &case_id, CaseStatus::Reported).await;
    assert_eq!(case.route_id, "property-jinding");
    let whistle = |lead: &str| WhistleCaseRequest {
        case_id: case_id.clone(),
        operator_id: "chechenglu-dispatch".into(),
        lead_department_code: lead.into(),
        co_department_codes: vec!["zw-traffic-police".into()],
        limits: None,
    };
    let bad = h
        .client
        .whistle_case(whistle("Not A Code"))
        .await
        .expect_err("bad code");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message().starts_with("lead_department_code:"),
        "{}",
        bad.message()
    );
    let accepted = h
        .client
        .accept_case(AcceptCaseRequest {
            case_id: case_id.clone(),
            operator_id: "op".into(),
        })
        .await
        .expect("accept")
        .into_inner();
    assert_eq!(accepted.status, CaseStatus::Accepted as i32);
    let whistled = h
        .client
        .whistle_case(whistle("zw-housing"))
        .await
        .expect("whistle")
        .into_inner();
    assert_eq!(whistled.status, CaseStatus::Whistled as i32);
    assert_eq!(whistled.assignments.len(), 2);
    let reject = h
        .client
        .reject_case(RejectCaseRequest {
            case_id: case_id.clone(),
            operator_id: "op".into(),
            reason: "late".into(),
        })
        .await
        .expect_err("too late");
    assert_eq!(reject.code(), Code::FailedPrecondition);
    assert!(
        reject.message().contains("WHISTLED"),
        "{}",
        reject.message()
    );

    let unknown = h
        .client
        .get_case(GetCaseRequest {
            case_id: "nope".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
    let empty = h
        .client
        .get_case(GetCaseRequest {
            case_id: String::new(),
        })
        .await
        .expect_err("empty");
    assert_eq!(empty.code(), Code::InvalidArgument);
    let no_action = h
        .client
        .record_department_action(RecordDepartmentActionRequest {
            action_id: "z".into(),
            assignment_id: "a".into(),
            department_code: "zw-housing".into(),
            action: None,
        })
        .await
        .expect_err("no action");
    assert_eq!(no_action.code(), Code::InvalidArgument);
    assert!(
        no_action.message().starts_with("action:"),
        "{}",
        no_action.message()
    );
    let missing = h
        .client
        .record_department_action(action(
            "z2",
            "no-such-assignment",
            "zw-housing",
            Action::Resolve(ResolveAction {
                resolution: "x".into(),
                evidence: vec![],
            }),
        ))
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), Code::NotFound);

    // a report nobody is responsible for waits for the street
    let orphan = report(&h.bed, "C-03-02", "420303003001001").await;
    let waiting = wait_for_status(&mut h.client, &orphan, CaseStatus::Reported).await;
    assert_eq!(waiting.route_id, "");
    let rejected = h
        .client
        .reject_case(RejectCaseRequest {
            case_id: orphan.clone(),
            operator_id: "op".into(),
            reason: "重复上报".into(),
        })
        .await
        .expect("reject")
        .into_inner();
    assert_eq!(rejected.status, CaseStatus::Rejected as i32);
    // stopping must not hang when NATS is already gone
    h.bed.nats.kill();
    h.served.shutdown.cancel();
    let _ = h.served.task.await;
}

/// An event that can never apply (a `case.reported` without a region) is recorded as rejected in
/// the inbox and does not hold back the events after it.
#[tokio::test]
async fn a_poison_event_is_rejected_and_the_stream_moves_on() {
    use sea_orm::{ConnectionTrait, Statement};
    let mut h = start().await;
    let case_id = uuid::Uuid::now_v7().to_string();
    let mut poison = envelope::new_event(
        &SystemClock,
        "whistle-intake",
        &case_id,
        1,
        Some(region("420303003001001")),
        Payload::CaseReported(CaseReported {
            category_code: "E-01-03".into(),
            ..Default::default()
        }),
    );
    let subject = envelope::subject(&poison).expect("subject");
    poison.region = None;
    let headers = whistle_platform::outbox::headers_for(&poison.event_id, &[]);
    h.bed
        .jetstream
        .publish_with_headers(
            subject,
            headers,
            prost::Message::encode_to_vec(&poison).into(),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");
    let good = report(&h.bed, "E-01-03", "420303003001001").await;
    wait_for_status(&mut h.client, &good, CaseStatus::Whistled).await;
    let missing = h
        .client
        .get_case(GetCaseRequest {
            case_id: case_id.clone(),
        })
        .await
        .expect_err("never opened");
    assert_eq!(missing.code(), Code::NotFound);

    let db = sea_orm::Database::connect(h.bed.sqlite_url("dispatch"))
        .await
        .expect("dispatch database");
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT outcome FROM whistle_inbox WHERE event_id = '{}'",
                poison.event_id
            ),
        ))
        .await
        .expect("query")
        .expect("the poison event is recorded");
    let outcome: String = row.try_get("", "outcome").expect("outcome");
    assert!(outcome.starts_with("rejected:"), "{outcome}");
    h.served.stop().await;
}
