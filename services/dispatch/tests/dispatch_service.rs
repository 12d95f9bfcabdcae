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
    AcceptCaseRequest, AcknowledgeAction, CheckInAction, DecideReturnRequest, GetCaseRequest,
    ListCasesRequest, ProgressAction, RecordDepartmentActionRequest, RejectCaseRequest,
    ResolveAction, ReturnAction, VerifyCaseRequest, WhistleCaseRequest,
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
    start_on(None).await
}

/// Dispatch on `database_url`, or on a fresh SQLite file when `None`.
async fn start_on(database_url: Option<String>) -> Harness {
    let bed = TestBed::new().await;
    let mut config = DispatchConfig::default();
    // one service in-process: authentication is the end-to-end tests' (tests/tests/authorization.rs)
    config.auth.enabled = false;
    config.database.url = database_url.unwrap_or_else(|| bed.sqlite_url("dispatch"));
    config.nats.url = bed.nats.url();
    config.catalogue.file = Some(catalogue_with_test_departments(&bed));
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

/// The demo catalogue with departments `dept-00` … `dept-19` added to the registry, for tests
/// that whistle many departments at once.
fn catalogue_with_test_departments(bed: &TestBed) -> std::path::PathBuf {
    let text = std::fs::read_to_string(TestBed::demo_catalogue()).expect("demo catalogue");
    let mut catalogue: serde_json::Value = serde_json::from_str(&text).expect("json");
    let departments = catalogue["departments"]
        .as_array_mut()
        .expect("departments");
    for index in 0..20 {
        departments.push(serde_json::json!({
            "code": format!("dept-{index:02}"),
            "name": format!("测试部门 {index}"),
            "level": "district",
            "region_code": "420303",
        }));
    }
    let path = bed.dir.path().join("catalogue.json");
    std::fs::write(&path, catalogue.to_string()).expect("write catalogue");
    path
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
        datum: 0,
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
        datum: 0,
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
    // the street decides the return before it verifies: upheld, enforcement was not responsible
    h.client
        .decide_return(DecideReturnRequest {
            case_id: case_id.clone(),
            assignment_id: co.clone(),
            operator_id: "chechenglu-dispatch".into(),
            upheld: true,
            note: "清运属环卫职责".into(),
        })
        .await
        .expect("uphold the return");
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
            failed_assignment_ids: vec![],
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
            failed_assignment_ids: vec![],
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

fn acknowledge(who: &str) -> Action {
    Action::Acknowledge(AcknowledgeAction {
        responsible_person: who.into(),
        contact_phone: String::new(),
        promised_at: None,
    })
}

fn evidence(count: usize) -> Vec<whistle_proto::types::Attachment> {
    (0..count)
        .map(|index| whistle_proto::types::Attachment {
            uri: format!("https://files.example/{index}.jpg"),
            ..Default::default()
        })
        .collect()
}

fn progress(note: &str, evidence: Vec<whistle_proto::types::Attachment>) -> Action {
    Action::Progress(ProgressAction {
        note: note.into(),
        evidence,
    })
}

/// `RecordDepartmentActions` answers each action as `RecordDepartmentAction` would have, in order:
/// one action's refusal (with its field details) is its own result, the others are recorded, and
/// a repeated id within the call answers the assignment as it is.
#[tokio::test]
async fn forwarded_actions_are_answered_each_in_order() {
    use tonic_types::StatusExt;
    use whistle_proto::dispatch::recorded_department_action::Outcome;
    use whistle_proto::dispatch::{ForwardedDepartmentAction, RecordDepartmentActionsRequest};
    let mut h = start().await;
    let case_id = report(&h.bed, "E-01-03", "420303003001001").await;
    let case = wait_for_status(&mut h.client, &case_id, CaseStatus::Whistled).await;
    let [lead, co] = [0, 1].map(|i| case.assignments[i].assignment_id.clone());
    let forwarded = |request: RecordDepartmentActionRequest| ForwardedDepartmentAction {
        action: Some(request),
        traceparent: String::new(),
    };
    let actions = vec![
        forwarded(action("b-1", &lead, "zw-sanitation", acknowledge("王"))),
        // another department's assignment
        forwarded(action("b-2", &co, "zw-sanitation", acknowledge("王"))),
        forwarded(action(
            "b-3",
            &co,
            "zw-enforcement",
            progress("x", evidence(11)),
        )),
        forwarded(action("b-4", &co, "zw-enforcement", acknowledge("李"))),
        // the first one again
        forwarded(action("b-1", &lead, "zw-sanitation", acknowledge("王"))),
    ];
    let results = h
        .client
        .record_department_actions(RecordDepartmentActionsRequest { actions })
        .await
        .expect("the call")
        .into_inner()
        .results;
    assert_eq!(results.len(), 5, "{results:?}");
    let outcome = |index: usize| results[index].outcome.clone().expect("an outcome");
    let recorded = |index: usize| match outcome(index) {
        Outcome::Assignment(assignment) => assignment,
        other => panic!("action {index} refused: {other:?}"),
    };
    let refused = |index: usize| match outcome(index) {
        Outcome::Refusal(refusal) => refusal.into_status(),
        other => panic!("action {index} recorded: {other:?}"),
    };
    let first = recorded(0);
    assert_eq!(first.assignment_id, lead);
    assert_eq!(first.status, AssignmentStatus::Acknowledged as i32);
    assert_eq!(
        refused(1).code(),
        Code::PermissionDenied,
        "{:?}",
        refused(1)
    );
    let too_many = refused(2);
    assert_eq!(too_many.code(), Code::InvalidArgument);
    assert!(
        too_many
            .message()
            .starts_with("progress.evidence: at most 10"),
        "{too_many:?}"
    );
    let violations = too_many
        .get_details_bad_request()
        .expect("field details travel with the refusal")
        .field_violations;
    assert_eq!(violations[0].field, "progress.evidence", "{violations:?}");
    assert_eq!(recorded(3).status, AssignmentStatus::Acknowledged as i32);
    assert_eq!(
        recorded(4).version,
        first.version,
        "a repeat changes nothing"
    );

    // the same refusals as one call per action
    let unary = h
        .client
        .record_department_action(action("u-2", &co, "zw-sanitation", acknowledge("王")))
        .await
        .expect_err("another department's assignment");
    assert_eq!(unary.code(), refused(1).code());
    assert_eq!(unary.message(), refused(1).message());

    // a call is bounded
    let over = h
        .client
        .record_department_actions(RecordDepartmentActionsRequest {
            actions: (0..=whistle_dispatch::grpc::MAX_FORWARDED_ACTIONS)
                .map(|index| {
                    forwarded(action(
                        &format!("o-{index}"),
                        &lead,
                        "zw-sanitation",
                        acknowledge("王"),
                    ))
                })
                .collect(),
        })
        .await
        .expect_err("257 actions");
    assert_eq!(over.code(), Code::InvalidArgument);
    assert!(over.message().starts_with("actions:"), "{over:?}");
}

/// `action_id`s belong to their department: another department may use the same one, and a reuse
/// is explained with the department's own data only. Evidence is bounded per action and per
/// assignment; fields and timestamps are held to the limits; a string that is not UTF-8 is
/// INVALID_ARGUMENT.
#[tokio::test]
async fn department_actions_are_scoped_to_their_department_and_bounded() {
    use tonic_types::StatusExt;
    let mut h = start().await;
    let case_id = report(&h.bed, "E-01-03", "420303003001001").await;
    let case = wait_for_status(&mut h.client, &case_id, CaseStatus::Whistled).await;
    let [lead, co] = [0, 1].map(|i| case.assignments[i].assignment_id.clone());

    h.client
        .record_department_action(action(
            "shared-1",
            &lead,
            "zw-sanitation",
            acknowledge("王"),
        ))
        .await
        .expect("the lead acknowledges");
    // the same id, chosen independently by another department, is its own
    let co_acknowledged = h
        .client
        .record_department_action(action("shared-1", &co, "zw-enforcement", acknowledge("李")))
        .await
        .expect("another department's id does not collide")
        .into_inner();
    assert_eq!(
        co_acknowledged.status,
        AssignmentStatus::Acknowledged as i32
    );
    let again = h
        .client
        .record_department_action(action("shared-1", &co, "zw-enforcement", acknowledge("李")))
        .await
        .expect("a repeat answers the assignment")
        .into_inner();
    assert_eq!(again.version, co_acknowledged.version, "nothing changed");
    let reused = h
        .client
        .record_department_action(action(
            "shared-1",
            &co,
            "zw-enforcement",
            progress("在路上", vec![]),
        ))
        .await
        .expect_err("the department reused its own id");
    assert_eq!(reused.code(), Code::InvalidArgument);
    assert!(reused.message().starts_with("action_id:"), "{reused:?}");
    assert!(
        !reused.message().contains(&lead),
        "another department's assignment is never named: {}",
        reused.message()
    );

    // evidence: at most 10 per action, at most 50 kept by the assignment
    let too_many = h
        .client
        .record_department_action(action(
            "p-0",
            &lead,
            "zw-sanitation",
            progress("x", evidence(11)),
        ))
        .await
        .expect_err("11 items");
    assert_eq!(too_many.code(), Code::InvalidArgument);
    assert!(
        too_many
            .message()
            .starts_with("progress.evidence: at most 10"),
        "{too_many:?}"
    );
    let mut long_uri = evidence(4);
    long_uri[3].uri = format!("https://files.example/{}", "好".repeat(2100));
    let error = h
        .client
        .record_department_action(action(
            "p-0",
            &lead,
            "zw-sanitation",
            progress("x", long_uri),
        ))
        .await
        .expect_err("uri too long");
    let details = error.get_error_details();
    let violation = &details.bad_request().expect("bad request").field_violations[0];
    assert_eq!(violation.field, "progress.evidence[3].uri");
    assert_eq!(violation.description, "at most 2048 characters");
    for round in 1..=5 {
        h.client
            .record_department_action(action(
                &format!("p-{round}"),
                &lead,
                "zw-sanitation",
                progress("清运中", evidence(10)),
            ))
            .await
            .expect("within the assignment's 50");
    }
    let full = h
        .client
        .record_department_action(action(
            "p-6",
            &lead,
            "zw-sanitation",
            progress("x", evidence(1)),
        ))
        .await
        .expect_err("the 51st item");
    assert_eq!(full.code(), Code::FailedPrecondition);
    assert!(
        full.message().contains("keeps 50 of at most 50"),
        "{full:?}"
    );

    // timestamps and lists
    let long_ago = Action::Acknowledge(AcknowledgeAction {
        responsible_person: "张".into(),
        contact_phone: String::new(),
        promised_at: Some(prost_types::Timestamp {
            seconds: 900_000_000,
            nanos: 0,
        }),
    });
    let error = h
        .client
        .record_department_action(action(
            "t-1",
            &case.assignments[2].assignment_id,
            "pm-zhongyue",
            long_ago,
        ))
        .await
        .expect_err("1998");
    assert!(
        error.message().starts_with("acknowledge.promised_at:"),
        "{error:?}"
    );
    let error = h
        .client
        .list_cases(ListCasesRequest {
            page_size: 501,
            ..Default::default()
        })
        .await
        .expect_err("page too large");
    assert_eq!(error.message(), "page_size: at most 500");
    let error = h
        .client
        .whistle_case(WhistleCaseRequest {
            case_id: case_id.clone(),
            operator_id: "op".into(),
            lead_department_code: "zw-housing".into(),
            co_department_codes: (0..20).map(|i| format!("dept-{i}")).collect(),
            limits: None,
        })
        .await
        .expect_err("21 departments");
    assert_eq!(error.message(), "co_department_codes: at most 19 items");

    // action_id "u", assignment_id "a", department_code the bytes c3 28
    let error = whistle_platform::testing::call_raw(
        &h.served.url(),
        "/whistle.dispatch.v1.DispatchService/RecordDepartmentAction",
        vec![0x0a, 0x01, b'u', 0x12, 0x01, b'a', 0x1a, 0x02, 0xc3, 0x28],
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
    h.served.stop().await;
}

/// Many departments act on one case at the same moment: every action succeeds (no ABORTED), none
/// is lost, and a request repeated at the same moment is applied once.
async fn concurrent_actions_on_one_case(database_url: Option<String>) {
    const DEPARTMENTS: usize = 12;
    let mut h = start_on(database_url).await;
    let case_id = report(&h.bed, "E-06-01", "420303003002001").await;
    wait_for_status(&mut h.client, &case_id, CaseStatus::Reported).await;
    let codes: Vec<String> = (0..DEPARTMENTS).map(|i| format!("dept-{i:02}")).collect();
    let whistled = h
        .client
        .whistle_case(WhistleCaseRequest {
            case_id: case_id.clone(),
            operator_id: "chechenglu-dispatch".into(),
            lead_department_code: codes[0].clone(),
            co_department_codes: codes[1..].to_vec(),
            limits: None,
        })
        .await
        .expect("whistle")
        .into_inner();
    assert_eq!(whistled.assignments.len(), DEPARTMENTS);
    let near = Action::CheckIn(CheckInAction {
        lat: 32.6370,
        lng: 110.7987,
        person: "王".into(),
        datum: 0,
    });
    let steps: [(&str, Action); 4] = [
        ("ack", acknowledge("负责人")),
        ("check-in", near),
        ("progress", progress("处理中", evidence(2))),
        (
            "resolve",
            Action::Resolve(ResolveAction {
                resolution: "已处理".into(),
                evidence: evidence(1),
            }),
        ),
    ];
    for (step, step_action) in steps {
        // the first department also sends its action four times at once, as a client retrying
        // a timeout would: one applies, the others answer as repeats
        let senders = whistled
            .assignments
            .iter()
            .chain(std::iter::repeat_n(&whistled.assignments[0], 3));
        let calls = senders.map(|assignment| {
            let mut client = h.client.clone();
            let request = action(
                &format!("{step}-1"),
                &assignment.assignment_id,
                &assignment.department_code,
                step_action.clone(),
            );
            tokio::spawn(async move { client.record_department_action(request).await })
        });
        let outcomes = futures::future::join_all(calls).await;
        let refused: Vec<String> = outcomes
            .into_iter()
            .map(|joined| joined.expect("task"))
            .filter_map(|outcome| outcome.err())
            .map(|status| format!("{:?}: {}", status.code(), status.message()))
            .collect();
        assert!(
            refused.is_empty(),
            "{step}: {} of {} refused: {refused:?}",
            refused.len(),
            DEPARTMENTS + 3
        );
    }
    let done = h
        .client
        .get_case(GetCaseRequest {
            case_id: case_id.clone(),
        })
        .await
        .expect("case")
        .into_inner();
    assert_eq!(done.status, CaseStatus::AwaitingVerification as i32);
    assert_eq!(
        done.version,
        whistled.version + 4 * DEPARTMENTS as u64,
        "every action counted once"
    );
    assert!(
        done.assignments
            .iter()
            .all(|a| a.status == AssignmentStatus::Resolved as i32)
    );
    h.served.stop().await;
}

#[tokio::test]
async fn concurrent_department_actions_all_succeed_on_sqlite() {
    concurrent_actions_on_one_case(None).await;
}

#[tokio::test]
async fn concurrent_department_actions_all_succeed_on_postgres() {
    let database = whistle_platform::testing::TestPostgres::create().await;
    concurrent_actions_on_one_case(Some(database.url.clone())).await;
    database.drop_database().await;
}

/// The action table's key moves from `action_id` to (department, `action_id`) on a database that
/// already holds actions, keeping them.
async fn action_keys_migrate(database_url: &str) {
    use sea_orm::{ConnectionTrait, Statement};
    use sea_orm_migration::MigratorTrait;
    use whistle_dispatch::storage::Migrator;
    let db = sea_orm::Database::connect(database_url)
        .await
        .expect("database");
    // the platform's two migrations and dispatch's first: the schema before this change
    Migrator::up(&db, Some(3)).await.expect("old schema");
    let insert = |department: &str, action_id: &str| {
        format!(
            "INSERT INTO dispatch_department_actions (action_id, assignment_id, department_code, kind, at_ms) \
             VALUES ('{action_id}', 'a-{department}', '{department}', 'acknowledge', 1)"
        )
    };
    db.execute_unprepared(&insert("zw-sanitation", "r-1"))
        .await
        .expect("old row");
    db.execute_unprepared(&insert("zw-enforcement", "r-2"))
        .await
        .expect("old row");
    assert!(
        db.execute_unprepared(&insert("zw-enforcement", "r-1"))
            .await
            .is_err(),
        "before: one namespace for every department"
    );
    Migrator::up(&db, None).await.expect("migrate");
    db.execute_unprepared(&insert("zw-enforcement", "r-1"))
        .await
        .expect("after: the same id for another department");
    assert!(
        db.execute_unprepared(&insert("zw-enforcement", "r-1"))
            .await
            .is_err(),
        "after: unique per department"
    );
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT department_code, action_id, assignment_id FROM dispatch_department_actions ORDER BY department_code, action_id",
        ))
        .await
        .expect("rows");
    let rows: Vec<(String, String, String)> = rows
        .iter()
        .map(|row| {
            (
                row.try_get("", "department_code").expect("department"),
                row.try_get("", "action_id").expect("action"),
                row.try_get("", "assignment_id").expect("assignment"),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                "zw-enforcement".into(),
                "r-1".into(),
                "a-zw-enforcement".into()
            ),
            (
                "zw-enforcement".into(),
                "r-2".into(),
                "a-zw-enforcement".into()
            ),
            (
                "zw-sanitation".into(),
                "r-1".into(),
                "a-zw-sanitation".into()
            ),
        ]
    );
    // a second run finds nothing to do
    Migrator::up(&db, None).await.expect("idempotent");
    db.close().await.expect("close");
}

#[tokio::test]
async fn action_keys_migrate_on_an_existing_sqlite_database() {
    let dir = tempfile::tempdir().expect("folder");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("dispatch.sqlite").display()
    );
    action_keys_migrate(&url).await;
}

#[tokio::test]
async fn action_keys_migrate_on_an_existing_postgres_database() {
    let database = whistle_platform::testing::TestPostgres::create().await;
    action_keys_migrate(&database.url).await;
    database.drop_database().await;
}

// ---- intake's news about a reported case: merged and split reports, recurrence, evidence ----

/// Publishes intake's news about `case_id` with the case's region; returns the event.
async fn news(bed: &TestBed, case_id: &str, payload: Payload) -> whistle_proto::events::Event {
    let event = envelope::new_event(
        &SystemClock,
        "whistle-intake",
        case_id,
        1,
        Some(region("420303003001001")),
        payload,
    );
    bed.publish(&event).await;
    event
}

fn merged(case_id: &str, report_id: &str, reporter_id: &str) -> Payload {
    Payload::CaseMerged(whistle_proto::events::CaseMerged {
        report_id: report_id.into(),
        merged_into_case_id: case_id.into(),
        channel: Channel::ResidentApp as i32,
        reporter_id: reporter_id.into(),
        category_code: "E-01-03".into(),
        severity: Severity::Urgent as i32,
        description: "垃圾桶又满了".into(),
        place: Some(Place {
            grid_code: "420303003001001".into(),
            lat: 32.63695,
            lng: 110.79862,
            address: "中岳路2号对面".into(),
        }),
        attachments: vec![],
        observed_at: None,
        distance_meters: 6.0,
        report_count: 2,
    })
}

fn recurrent(earlier: &[&str]) -> Payload {
    Payload::CaseRecurrent(whistle_proto::events::CaseRecurrent {
        earlier_case_ids: earlier.iter().map(|id| id.to_string()).collect(),
        threshold: 2,
        window_days: 90,
        distance_meters: 200.0,
    })
}

/// Polls the case until `done` holds for it (the consumer applies events asynchronously).
async fn wait_for_case(
    client: &mut Client,
    case_id: &str,
    what: &str,
    done: impl Fn(&whistle_proto::dispatch::Case) -> bool,
) -> whistle_proto::dispatch::Case {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(case) = client
            .get_case(GetCaseRequest {
                case_id: case_id.into(),
            })
            .await
        {
            let case = case.into_inner();
            if done(&case) {
                return case;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "case {case_id} never got {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many events of `kind` (e.g. `report_merged`) the whistles stream holds for the case.
async fn whistle_events(
    bed: &TestBed,
    case_id: &str,
    kind: &str,
) -> Vec<whistle_proto::events::Event> {
    let stream = bed
        .jetstream
        .get_stream(whistle_platform::nats::WHISTLES_STREAM)
        .await
        .expect("stream");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: format!("whistle.v1.*.*.*.*.{kind}"),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut consumer = consumer;
    let pending = consumer.info().await.expect("info").num_pending as usize;
    let mut events = Vec::new();
    if pending > 0 {
        let mut messages = consumer
            .fetch()
            .max_messages(pending)
            .messages()
            .await
            .expect("fetch");
        while let Some(message) = messages.next().await {
            let message = message.expect("message");
            events.push(envelope::decode(&message.payload).expect("decode"));
        }
    }
    events.retain(|event| event.case_id == case_id);
    events
}

/// Waits until the relay has published `count` events of `kind` for the case (it publishes after
/// the commit, in outbox order: once an event is on the stream, every earlier one of the case is).
async fn wait_for_whistle_events(
    bed: &TestBed,
    case_id: &str,
    kind: &str,
    count: usize,
) -> Vec<whistle_proto::events::Event> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let events = whistle_events(bed, case_id, kind).await;
        if events.len() >= count {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} {kind} events for case {case_id}, expected {count}",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_merged_report_joins_the_case_once_and_tells_each_open_department_once() {
    merged_report_joins_once(None).await;
}

#[tokio::test]
async fn a_merged_report_joins_the_case_once_on_postgres() {
    let database = whistle_platform::testing::TestPostgres::create().await;
    merged_report_joins_once(Some(database.url.clone())).await;
    database.drop_database().await;
}

async fn merged_report_joins_once(database_url: Option<String>) {
    let mut h = start_on(database_url).await;
    let case_id = report(&h.bed, "E-01-03", "420303003001001").await;
    let before = wait_for_status(&mut h.client, &case_id, CaseStatus::Whistled).await;
    assert_eq!(before.reports.len(), 1);

    let first = news(&h.bed, &case_id, merged(&case_id, "r-2", "resident-88")).await;
    // redelivered by JetStream under another message id, and published again as a new event
    h.bed.publish_as(&first, "redelivery-of-r-2").await;
    news(&h.bed, &case_id, merged(&case_id, "r-2", "resident-88")).await;
    // a later event on the same stream: once it is applied, the copies before it were too
    news(&h.bed, &case_id, recurrent(&["earlier-1"])).await;
    let case = wait_for_case(&mut h.client, &case_id, "the recurrence", |case| {
        case.recurrent
    })
    .await;

    let reporters: Vec<&str> = case
        .reports
        .iter()
        .map(|r| r.reporter_id.as_str())
        .collect();
    assert_eq!(reporters, vec!["grid-worker-17", "resident-88"]);
    assert_eq!(
        case.timeline
            .iter()
            .filter(|entry| entry.kind == "case.merged")
            .count(),
        1
    );
    // not whistled again, no clock changed
    assert_eq!(case.assignments.len(), before.assignments.len());
    for (now, then) in case.assignments.iter().zip(&before.assignments) {
        assert_eq!(now.deadlines, then.deadlines);
        assert_eq!(now.status, then.status);
    }
    // the recurrence notices follow the merge notices in the outbox
    wait_for_whistle_events(&h.bed, &case_id, "recurrent", 3).await;
    assert_eq!(whistle_events(&h.bed, &case_id, "issued").await.len(), 3);
    // one notice per open department
    let notices = whistle_events(&h.bed, &case_id, "report_merged").await;
    let mut departments: Vec<String> = notices
        .iter()
        .map(|event| {
            let Some(Payload::AssignmentReportMerged(notice)) = &event.payload else {
                panic!("not a merge notice: {event:?}")
            };
            assert_eq!(notice.report_id, "r-2");
            assert_eq!(notice.report_count, 2);
            notice
                .assignment
                .as_ref()
                .expect("assignment")
                .department_code
                .clone()
        })
        .collect();
    departments.sort();
    assert_eq!(
        departments,
        vec!["pm-zhongyue", "zw-enforcement", "zw-sanitation"]
    );

    // a split takes the report and its reporter off the case again
    news(
        &h.bed,
        &case_id,
        Payload::ReportSplit(whistle_proto::events::ReportSplit {
            report_id: "r-2".into(),
            reporter_id: "resident-88".into(),
            new_case_id: uuid::Uuid::now_v7().to_string(),
            split_by: "op-1".into(),
            reason: "another bin".into(),
            report_count: 1,
        }),
    )
    .await;
    let case = wait_for_case(&mut h.client, &case_id, "the split", |case| {
        case.reports.len() == 1
    })
    .await;
    assert_eq!(case.reports[0].reporter_id, "grid-worker-17");
    assert!(case.timeline.iter().any(|entry| entry.kind == "case.split"));
    h.served.stop().await;
}

#[tokio::test]
async fn news_about_a_case_not_reported_yet_waits_for_it() {
    news_waits_for_its_case(None).await;
}

#[tokio::test]
async fn news_about_a_case_not_reported_yet_waits_for_it_on_postgres() {
    let database = whistle_platform::testing::TestPostgres::create().await;
    news_waits_for_its_case(Some(database.url.clone())).await;
    database.drop_database().await;
}

async fn news_waits_for_its_case(database_url: Option<String>) {
    let mut h = start_on(database_url).await;
    let case_id = uuid::Uuid::now_v7().to_string();
    news(&h.bed, &case_id, merged(&case_id, "r-early", "resident-1")).await;
    // published after the merge, as if intake's events crossed
    let event = envelope::new_event(
        &SystemClock,
        "whistle-intake",
        &case_id,
        1,
        Some(region("420303003001001")),
        Payload::CaseReported(CaseReported {
            report_id: "r-first".into(),
            channel: Channel::GridPatrol as i32,
            reporter_id: "grid-worker-17".into(),
            category_code: "E-01-03".into(),
            severity: Severity::Urgent as i32,
            description: "垃圾满溢".into(),
            place: Some(Place {
                grid_code: "420303003001001".into(),
                lat: 32.6369,
                lng: 110.7986,
                address: "中岳路2号".into(),
            }),
            attachments: vec![],
            observed_at: None,
        }),
    );
    h.bed.publish(&event).await;
    let case = wait_for_case(&mut h.client, &case_id, "both reports", |case| {
        case.reports.len() == 2
    })
    .await;
    assert_eq!(case.reports[1].report_id, "r-early");
    assert_eq!(case.status, CaseStatus::Whistled as i32);
    // the case is committed before the relay publishes its events: wait for them, then count
    assert_eq!(
        wait_for_whistle_events(&h.bed, &case_id, "report_merged", 3)
            .await
            .len(),
        3
    );
    h.served.stop().await;
}

#[tokio::test]
async fn recurrent_cases_are_flagged_listed_and_told_and_evidence_is_shown() {
    let mut h = start().await;
    let plain = report(&h.bed, "E-01-03", "420303003001001").await;
    let case_id = report(&h.bed, "E-01-03", "420303003001001").await;
    wait_for_status(&mut h.client, &plain, CaseStatus::Whistled).await;
    wait_for_status(&mut h.client, &case_id, CaseStatus::Whistled).await;
    news(&h.bed, &case_id, recurrent(&["old-1", "old-2"])).await;
    let photos = evidence(2);
    let attached = Payload::CaseEvidenceAttached(whistle_proto::events::CaseEvidenceAttached {
        attached_by: "420303003001".into(),
        by_community: true,
        attachments: photos.clone(),
        evidence_count: 2,
    });
    news(&h.bed, &case_id, attached.clone()).await;
    // the same photos again are not news
    news(&h.bed, &case_id, attached).await;
    news(&h.bed, &case_id, recurrent(&["old-1", "old-2"])).await;
    // a barrier: a merge after them
    news(
        &h.bed,
        &case_id,
        merged(&case_id, "r-barrier", "resident-2"),
    )
    .await;
    let case = wait_for_case(&mut h.client, &case_id, "the barrier", |case| {
        case.reports.len() == 2
    })
    .await;
    assert!(case.recurrent);
    assert_eq!(case.earlier_case_ids, vec!["old-1", "old-2"]);
    assert_eq!(case.evidence, photos);

    let listed = h
        .client
        .list_cases(ListCasesRequest {
            recurrent_only: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<&str> = listed.cases.iter().map(|c| c.case_id.as_str()).collect();
    assert_eq!(ids, vec![case_id.as_str()]);

    // the barrier's notices are the last of the case in the outbox
    wait_for_whistle_events(&h.bed, &case_id, "report_merged", 3).await;
    let recurrent_notices = whistle_events(&h.bed, &case_id, "recurrent").await;
    assert_eq!(recurrent_notices.len(), 3);
    let Some(Payload::AssignmentRecurrent(notice)) = &recurrent_notices[0].payload else {
        panic!("not a recurrence notice")
    };
    assert_eq!(notice.earlier_case_ids, vec!["old-1", "old-2"]);
    assert_eq!(
        whistle_events(&h.bed, &case_id, "evidence_attached")
            .await
            .len(),
        3
    );
    assert!(whistle_events(&h.bed, &plain, "recurrent").await.is_empty());

    // a whistle issued after the flag carries it
    let lead = case.assignments[0].assignment_id.clone();
    h.client
        .record_department_action(action(
            "ret-1",
            &lead,
            "zw-sanitation",
            Action::ReturnAssignment(ReturnAction {
                reason: "not ours".into(),
                suggested_department_code: String::new(),
            }),
        ))
        .await
        .expect("return");
    h.client
        .whistle_case(WhistleCaseRequest {
            case_id: case_id.clone(),
            operator_id: "op-1".into(),
            lead_department_code: "zw-housing".into(),
            ..Default::default()
        })
        .await
        .expect("whistle");
    let issued = wait_for_whistle_events(&h.bed, &case_id, "issued", 4).await;
    let Some(Payload::WhistleIssued(last)) = &issued.last().expect("issued").payload else {
        panic!("not a whistle")
    };
    assert!(last.recurrent);
    assert_eq!(last.earlier_case_ids, vec!["old-1", "old-2"]);
    h.served.stop().await;
}

#[tokio::test]
async fn a_gcj02_check_in_at_the_place_is_accepted_and_a_far_one_refused() {
    use whistle_proto::datum::from_wgs84;
    use whistle_proto::types::Datum;
    let mut h = start().await;
    let case_id = report(&h.bed, "E-01-03", "420303003001001").await;
    let case = wait_for_status(&mut h.client, &case_id, CaseStatus::Whistled).await;
    let lead = case.assignments[0].assignment_id.clone();
    h.client
        .record_department_action(action("g-1", &lead, "zw-sanitation", acknowledge("王")))
        .await
        .expect("ack");
    let check_in = |(lat, lng): (f64, f64)| {
        Action::CheckIn(CheckInAction {
            lat,
            lng,
            person: "王".into(),
            datum: Datum::Gcj02 as i32,
        })
    };
    // 2 km north, as an AMap phone reports it
    let far = from_wgs84(Datum::Gcj02, 32.655, 110.7986);
    let refused = h
        .client
        .record_department_action(action("g-2", &lead, "zw-sanitation", check_in(far)))
        .await
        .expect_err("far");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    // the case's place as AMap shows it: off by the GCJ-02 offset, accepted after conversion
    let here = from_wgs84(Datum::Gcj02, 32.6369, 110.7986);
    let assignment = h
        .client
        .record_department_action(action("g-3", &lead, "zw-sanitation", check_in(here)))
        .await
        .expect("on site")
        .into_inner();
    assert_eq!(assignment.status, AssignmentStatus::OnSite as i32);
    h.served.stop().await;
}
