//! The case lifecycle in-process, on SQLite and on PostgreSQL, against a real nats-server: clocks
//! that fire exactly once (time moved by a `ManualClock`, scans triggered with `scan_once`),
//! escalation to supervision, extensions, deferral, decided returns both ways, the fallback owner,
//! and verification that reworks only the failed assignments. Every check of what was published
//! reads the events on JetStream after dispatch stopped (and drained its outbox).

use async_nats::jetstream::consumer::pull;
use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use sea_orm::DatabaseConnection;
use std::collections::BTreeMap;
use std::sync::Arc;
use tonic::Code;
use whistle_dispatch::DispatchConfig;
use whistle_dispatch::domain::CalendarTime;
use whistle_dispatch::scanner::{ScanReport, scan_once};
use whistle_platform::ManualClock;
use whistle_platform::config::DatabaseConfig;
use whistle_platform::envelope::{self, Event, Payload};
use whistle_platform::testing::{Served, TestBed, TestPostgres, serve};
use whistle_proto::dispatch::dispatch_service_client::DispatchServiceClient;
use whistle_proto::dispatch::record_department_action_request::Action;
use whistle_proto::dispatch::{
    AcknowledgeAction, Case, CheckInAction, DecideExtensionRequest, DecideReturnRequest,
    DeferCaseRequest, ExtensionRequestAction, GetCaseRequest, LimitOverrides, ListCasesRequest,
    RecordDepartmentActionRequest, ResolveAction, ResolveLocallyRequest, ResumeCaseRequest,
    ReturnAction, VerifyCaseRequest, WhistleCaseRequest,
};
use whistle_proto::events::CaseReported;
use whistle_proto::types::{
    AssignmentFlag, AssignmentStatus, CaseStatus, Channel, Clock, Place, Region, ReturnDecision,
    Severity,
};

type Client = DispatchServiceClient<tonic::transport::Channel>;

struct Harness {
    bed: TestBed,
    client: Client,
    served: Served,
    clock: Arc<ManualClock>,
    /// The test's own connection to dispatch's database, to scan with.
    db: DatabaseConnection,
    postgres: Option<TestPostgres>,
}

fn start_of_test() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("now")
}

/// Dispatch with a manual clock and no scanner of its own: the test scans itself.
async fn start(postgres: bool) -> Harness {
    let bed = TestBed::new().await;
    let postgres = if postgres {
        Some(TestPostgres::create().await)
    } else {
        None
    };
    let url = postgres
        .as_ref()
        .map(|database| database.url.clone())
        .unwrap_or_else(|| bed.sqlite_url("dispatch"));
    let mut config = DispatchConfig::default();
    // one service in-process: authentication is the end-to-end tests' (tests/tests/authorization.rs)
    config.auth.enabled = false;
    config.database.url = url.clone();
    config.nats.url = bed.nats.url();
    config.catalogue.file = Some(TestBed::demo_catalogue());
    config.outbox.poll_interval_ms = 50;
    config.scanner.enabled = false;
    let clock = Arc::new(ManualClock::new(start_of_test()));
    let shared = clock.clone();
    let served =
        serve(|listener, shutdown| whistle_dispatch::run(config, listener, shared, shutdown)).await;
    served.wait_listening().await;
    let client = DispatchServiceClient::connect(served.url())
        .await
        .expect("connect");
    let db = whistle_platform::db::connect(&DatabaseConfig::at(url, 2))
        .await
        .expect("test connection");
    Harness {
        bed,
        client,
        served,
        clock,
        db,
        postgres,
    }
}

impl Harness {
    /// One scan at the manual clock's time. On SQLite the test's connection is a second writer
    /// besides dispatch's own (which production never has): a scan that meets a write of the
    /// service (`database is locked`) is run again, within a deadline.
    async fn scan(&self) -> ScanReport {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match scan_once(&self.db, self.clock.as_ref(), &CalendarTime, 100).await {
                Ok(report) => return report,
                Err(error)
                    if error.to_string().contains("database is locked")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await
                }
                Err(error) => panic!("scan: {error:?}"),
            }
        }
    }

    fn advance_to(&self, at: DateTime<Utc>) {
        self.clock.set(at);
    }

    /// The case as dispatch answers it; its stored clock rows are checked against its aggregate
    /// on the way (a save writes only the rows that changed, and must leave them exact).
    async fn case(&mut self, case_id: &str) -> Case {
        let (stored, expected) = whistle_dispatch::storage::clock_rows_of(&self.db, case_id)
            .await
            .expect("clock rows");
        assert_eq!(stored, expected, "clock rows of case {case_id}");
        self.client
            .get_case(GetCaseRequest {
                case_id: case_id.into(),
            })
            .await
            .expect("case")
            .into_inner()
    }

    /// Stops dispatch (its outbox drains) and returns every event it published, oldest first.
    async fn stop(self) -> (Vec<(String, Event)>, Option<TestPostgres>, TestBed) {
        self.served.stop().await;
        self.db.close().await.expect("close");
        let mut events = Vec::new();
        for (stream, filter) in [
            (whistle_platform::nats::WHISTLES_STREAM, "whistle.v1.>"),
            (whistle_platform::nats::CASES_STREAM, "case.v1.>"),
        ] {
            events.extend(published(&self.bed, stream, filter).await);
        }
        events.sort_by_key(|(_, event)| (event.case_id.clone(), event.case_version));
        (events, self.postgres, self.bed)
    }
}

async fn finish(postgres: Option<TestPostgres>) {
    if let Some(database) = postgres {
        database.drop_database().await;
    }
}

/// Every message on `stream` matching `filter`, with its subject.
async fn published(bed: &TestBed, stream: &str, filter: &str) -> Vec<(String, Event)> {
    let stream = bed.jetstream.get_stream(stream).await.expect("stream");
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: filter.into(),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let pending = consumer.clone().info().await.expect("info").num_pending as usize;
    let mut messages = consumer.messages().await.expect("messages");
    let mut events = Vec::with_capacity(pending);
    for _ in 0..pending {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), messages.next())
            .await
            .expect("in time")
            .expect("some")
            .expect("ok");
        events.push((
            message.subject.to_string(),
            envelope::decode(&message.payload).expect("decode"),
        ));
        message.ack().await.expect("ack");
    }
    events
}

fn kind_of(event: &Event) -> String {
    event
        .payload
        .as_ref()
        .map(|payload| envelope::kind(payload).label())
        .unwrap_or_default()
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

/// Publishes a `case.reported` as intake would; waits until dispatch opened the case.
async fn report(h: &mut Harness, category: &str, grid: &str, status: CaseStatus) -> String {
    let case_id = uuid::Uuid::now_v7().to_string();
    let event = envelope::new_event(
        h.clock.as_ref(),
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
            description: "金鼎凤凰城物业管理混乱".into(),
            place: Some(Place {
                grid_code: grid.into(),
                lat: 32.6335,
                lng: 110.7901,
                address: "金鼎凤凰城".into(),
            }),
            attachments: vec![],
            observed_at: None,
        }),
    );
    h.bed.publish(&event).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if let Ok(case) = h
            .client
            .get_case(GetCaseRequest {
                case_id: case_id.clone(),
            })
            .await
            && case.get_ref().status == status as i32
        {
            return case_id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "case {case_id} never reached {status:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn seconds(value: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: value,
        nanos: 0,
    }
}

fn act(
    assignment_id: &str,
    department: &str,
    action_id: &str,
    action: Action,
) -> RecordDepartmentActionRequest {
    RecordDepartmentActionRequest {
        action_id: action_id.into(),
        assignment_id: assignment_id.into(),
        department_code: department.into(),
        action: Some(action),
    }
}

fn acknowledge() -> Action {
    Action::Acknowledge(AcknowledgeAction {
        responsible_person: "负责人".into(),
        contact_phone: String::new(),
        promised_at: None,
    })
}

fn check_in() -> Action {
    Action::CheckIn(CheckInAction {
        lat: 32.6336,
        lng: 110.7901,
        person: "王".into(),
        datum: 0,
    })
}

fn resolve() -> Action {
    Action::Resolve(ResolveAction {
        resolution: "已处理".into(),
        evidence: vec![],
    })
}

fn give_back(reason: &str) -> Action {
    Action::ReturnAssignment(ReturnAction {
        reason: reason.into(),
        suggested_department_code: String::new(),
    })
}

fn assignment_of<'a>(case: &'a Case, department: &str) -> &'a whistle_proto::types::Assignment {
    case.assignments
        .iter()
        .rev()
        .find(|assignment| assignment.department_code == department)
        .unwrap_or_else(|| panic!("{department} not on {case:?}"))
}

fn at(timestamp: &Option<prost_types::Timestamp>) -> DateTime<Utc> {
    timestamp
        .as_ref()
        .and_then(whistle_platform::clock::from_proto_timestamp)
        .expect("timestamp")
}

/// Clocks fire at their deadline and escalate after the second interval, each step once; a met
/// clock never fires; the city department escalates to the city's supervision.
async fn deadlines_fire_once_and_escalate(postgres: bool) {
    let mut h = start(postgres).await;
    let t0 = h.clock.now_for_test();
    let case_id = report(&mut h, "E-06-01", "420303003002001", CaseStatus::Reported).await;
    let case = h
        .client
        .whistle_case(WhistleCaseRequest {
            case_id: case_id.clone(),
            operator_id: "chechenglu-dispatch".into(),
            lead_department_code: "zw-housing".into(),
            co_department_codes: vec!["sy-water".into()],
            limits: Some(LimitOverrides {
                acknowledge_within: Some(seconds(60)),
                acknowledge_escalate_after: Some(seconds(30)),
                ..Default::default()
            }),
        })
        .await
        .expect("whistle")
        .into_inner();
    let housing = assignment_of(&case, "zw-housing").clone();
    let water = assignment_of(&case, "sy-water").clone();
    assert_eq!(housing.supervision_department_code, "zw-supervision");
    assert_eq!(water.supervision_department_code, "sy-supervision");
    assert_eq!(
        at(&housing.deadlines.expect("deadlines").acknowledge_by),
        t0 + Duration::seconds(60)
    );

    h.advance_to(t0 + Duration::seconds(59));
    assert_eq!(h.scan().await.fired(), 0, "nothing before the deadline");
    h.advance_to(t0 + Duration::seconds(61));
    let report = h.scan().await;
    assert_eq!((report.overdue, report.escalated), (2, 0));
    assert_eq!(h.scan().await.fired(), 0, "each step once");
    let case = h.case(&case_id).await;
    for assignment in &case.assignments {
        assert!(assignment.overdue, "{assignment:?}");
        assert!(
            assignment
                .flags
                .contains(&(AssignmentFlag::AckOverdue as i32))
        );
    }
    let overdue_entries = case
        .timeline
        .iter()
        .filter(|entry| entry.kind == "whistle.overdue")
        .count();
    assert_eq!(overdue_entries, 2);
    let listed = h
        .client
        .list_cases(ListCasesRequest {
            overdue_only: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.cases.len(), 1);
    assert_eq!(listed.cases[0].case_id, case_id);

    // the housing bureau acknowledges late: its clock is met and never escalates
    let acknowledged = h
        .client
        .record_department_action(act(
            &housing.assignment_id,
            "zw-housing",
            "ack-1",
            acknowledge(),
        ))
        .await
        .expect("late acknowledgement")
        .into_inner();
    assert!(!acknowledged.overdue);
    h.advance_to(t0 + Duration::seconds(91));
    let report = h.scan().await;
    assert_eq!((report.overdue, report.escalated), (0, 1));
    h.advance_to(t0 + Duration::hours(1));
    assert_eq!(h.scan().await.fired(), 0);
    let case = h.case(&case_id).await;
    assert!(
        assignment_of(&case, "sy-water")
            .flags
            .contains(&(AssignmentFlag::Escalated as i32))
    );
    assert!(
        !assignment_of(&case, "zw-housing")
            .flags
            .contains(&(AssignmentFlag::Escalated as i32))
    );

    let (events, postgres, _bed) = h.stop().await;
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (subject, event) in &events {
        match &event.payload {
            Some(Payload::AssignmentOverdue(overdue)) => {
                let assignment = overdue.assignment.as_ref().expect("assignment");
                assert_eq!(overdue.clock, Clock::Acknowledge as i32);
                assert_eq!(
                    subject,
                    &format!(
                        "whistle.v1.420300.420303.chechenglu.{}.overdue",
                        assignment.department_code
                    ),
                    "on the department's subject: it is notified again"
                );
                assert_eq!(at(&overdue.due_at), t0 + Duration::seconds(60));
                assert_eq!(overdue.late_by, Some(seconds(1)));
                assert_eq!(at(&overdue.escalates_at), t0 + Duration::seconds(90));
                *counts
                    .entry(("overdue".into(), assignment.assignment_id.clone()))
                    .or_default() += 1;
            }
            Some(Payload::CaseEscalated(escalated)) => {
                assert_eq!(subject, "case.v1.420300.420303.chechenglu.escalated");
                assert_eq!(escalated.department_code, "sy-water");
                assert_eq!(escalated.supervisor_code, "sy-supervision");
                assert_eq!(escalated.clock, Clock::Acknowledge as i32);
                assert_eq!(escalated.overdue_by, Some(seconds(31)));
                *counts
                    .entry(("escalated".into(), escalated.assignment_id.clone()))
                    .or_default() += 1;
            }
            _ => {}
        }
    }
    assert_eq!(
        counts,
        BTreeMap::from([
            (("overdue".to_string(), housing.assignment_id.clone()), 1),
            (("overdue".to_string(), water.assignment_id.clone()), 1),
            (("escalated".to_string(), water.assignment_id.clone()), 1),
        ])
    );
    finish(postgres).await;
}

#[tokio::test]
async fn deadlines_fire_once_and_escalate_on_sqlite() {
    deadlines_fire_once_and_escalate(false).await;
}

#[tokio::test]
async fn deadlines_fire_once_and_escalate_on_postgres() {
    deadlines_fire_once_and_escalate(true).await;
}

/// An approved extension moves the resolve deadline (the old one never fires); a deferral stops
/// every clock and resuming continues with the time left.
async fn extension_and_deferral_move_deadlines(postgres: bool) {
    let mut h = start(postgres).await;
    let t0 = h.clock.now_for_test();
    let case_id = report(&mut h, "E-06-01", "420303003002001", CaseStatus::Reported).await;
    let case = h
        .client
        .whistle_case(WhistleCaseRequest {
            case_id: case_id.clone(),
            operator_id: "op".into(),
            lead_department_code: "zw-housing".into(),
            co_department_codes: vec![],
            limits: Some(LimitOverrides {
                resolve_within: Some(seconds(3600)),
                ..Default::default()
            }),
        })
        .await
        .expect("whistle")
        .into_inner();
    let housing = assignment_of(&case, "zw-housing").assignment_id.clone();
    let send = |action_id: &str, action: Action| act(&housing, "zw-housing", action_id, action);
    h.client
        .record_department_action(send("ack", acknowledge()))
        .await
        .expect("ack");
    h.client
        .record_department_action(send("in", check_in()))
        .await
        .expect("check in");
    let extension = |extra: i64| {
        Action::RequestExtension(ExtensionRequestAction {
            extra: Some(seconds(extra)),
            reason: "等待备件".into(),
        })
    };
    let missing = h
        .client
        .record_department_action(send(
            "ext-0",
            Action::RequestExtension(ExtensionRequestAction {
                extra: None,
                reason: "x".into(),
            }),
        ))
        .await
        .expect_err("no extra");
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(missing.message().starts_with("request_extension.extra:"));
    let requested = h
        .client
        .record_department_action(send("ext-1", extension(7200)))
        .await
        .expect("request")
        .into_inner();
    assert_eq!(
        requested.extension.expect("extension").extra,
        Some(seconds(7200))
    );
    let again = h
        .client
        .record_department_action(send("ext-2", extension(60)))
        .await
        .expect_err("once per clock");
    assert_eq!(again.code(), Code::FailedPrecondition);
    let case = h
        .client
        .decide_extension(DecideExtensionRequest {
            case_id: case_id.clone(),
            assignment_id: housing.clone(),
            operator_id: "op".into(),
            approved: true,
            note: "同意".into(),
        })
        .await
        .expect("approve")
        .into_inner();
    let extended = assignment_of(&case, "zw-housing");
    let resolve_by = at(&extended.deadlines.expect("deadlines").resolve_by);
    assert_eq!(resolve_by, t0 + Duration::seconds(3600 + 7200));
    assert!(extended.flags.contains(&(AssignmentFlag::Extended as i32)));

    // the old deadline passes: nothing fires
    h.advance_to(t0 + Duration::seconds(3601));
    assert_eq!(h.scan().await.fired(), 0);

    // 缓办 for five hours
    let deferred_at = t0 + Duration::seconds(4000);
    h.advance_to(deferred_at);
    let missing_reason = h
        .client
        .defer_case(DeferCaseRequest {
            case_id: case_id.clone(),
            operator_id: "op".into(),
            reason: " ".into(),
            until: None,
        })
        .await
        .expect_err("reason required");
    assert_eq!(missing_reason.code(), Code::InvalidArgument);
    let deferred = h
        .client
        .defer_case(DeferCaseRequest {
            case_id: case_id.clone(),
            operator_id: "op".into(),
            reason: "等待专项资金".into(),
            until: None,
        })
        .await
        .expect("defer")
        .into_inner();
    assert_eq!(deferred.defer_reason, "等待专项资金");
    assert_eq!(at(&deferred.deferred_at), deferred_at);
    h.advance_to(resolve_by + Duration::hours(1));
    assert_eq!(
        h.scan().await.fired(),
        0,
        "a deferred case's clocks stand still"
    );
    let refused = h
        .client
        .record_department_action(send("done", resolve()))
        .await
        .expect_err("deferred");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let resumed_at = deferred_at + Duration::hours(5);
    h.advance_to(resumed_at);
    let resumed = h
        .client
        .resume_case(ResumeCaseRequest {
            case_id: case_id.clone(),
            operator_id: "op".into(),
            note: "资金到位".into(),
        })
        .await
        .expect("resume")
        .into_inner();
    assert_eq!(resumed.deferred_at, None);
    let new_resolve_by = at(&assignment_of(&resumed, "zw-housing")
        .deadlines
        .expect("deadlines")
        .resolve_by);
    assert_eq!(
        new_resolve_by,
        resolve_by + Duration::hours(5),
        "the time it had left"
    );
    h.advance_to(new_resolve_by - Duration::seconds(1));
    assert_eq!(h.scan().await.fired(), 0);
    h.advance_to(new_resolve_by);
    assert_eq!(h.scan().await.overdue, 1);

    let (events, postgres, _bed) = h.stop().await;
    let kinds: Vec<String> = events.iter().map(|(_, event)| kind_of(event)).collect();
    for kind in [
        "whistle.extension_requested",
        "whistle.extended",
        "case.deferred",
        "case.resumed",
        "whistle.overdue",
    ] {
        assert_eq!(
            kinds.iter().filter(|seen| *seen == kind).count(),
            1,
            "{kind} in {kinds:?}"
        );
    }
    for (_, event) in &events {
        match &event.payload {
            Some(Payload::AssignmentExtended(extended)) => {
                assert_eq!(at(&extended.new_resolve_by), resolve_by);
                assert_eq!(
                    at(&extended.previous_resolve_by),
                    t0 + Duration::seconds(3600)
                );
                assert_eq!(extended.extra, Some(seconds(7200)));
            }
            Some(Payload::CaseResumed(resumed)) => {
                assert_eq!(resumed.deferred_for, Some(seconds(5 * 3600)));
                assert_eq!(resumed.assignments.len(), 1);
            }
            Some(Payload::AssignmentOverdue(overdue)) => {
                assert_eq!(overdue.clock, Clock::Resolve as i32);
                assert_eq!(at(&overdue.due_at), new_resolve_by);
            }
            _ => {}
        }
    }
    finish(postgres).await;
}

#[tokio::test]
async fn extension_and_deferral_move_deadlines_on_sqlite() {
    extension_and_deferral_move_deadlines(false).await;
}

#[tokio::test]
async fn extension_and_deferral_move_deadlines_on_postgres() {
    extension_and_deferral_move_deadlines(true).await;
}

/// Returns decided both ways: rejected (推诿) sends the assignment back with fresh clocks; upheld
/// closes it; every assignment returned puts the case back in the street's queue; when the route
/// names nobody else, the area's fallback owner is whistled. An unknown department is refused.
async fn returns_are_decided_both_ways(postgres: bool) {
    let mut h = start(postgres).await;
    let case_id = report(&mut h, "E-06-01", "420303003002001", CaseStatus::Reported).await;
    let whistle = |lead: &str, co: Vec<String>| WhistleCaseRequest {
        case_id: case_id.clone(),
        operator_id: "op".into(),
        lead_department_code: lead.into(),
        co_department_codes: co,
        limits: None,
    };
    let unknown = h
        .client
        .whistle_case(whistle("zw-housing", vec!["zw-nobody".into()]))
        .await
        .expect_err("unknown department");
    assert_eq!(unknown.code(), Code::InvalidArgument);
    assert!(
        unknown
            .message()
            .starts_with("co_department_codes[0]: unknown department zw-nobody"),
        "{unknown:?}"
    );
    let case = h
        .client
        .whistle_case(whistle("zw-housing", vec!["zw-traffic-police".into()]))
        .await
        .expect("whistle")
        .into_inner();
    let housing = assignment_of(&case, "zw-housing").assignment_id.clone();
    let police = assignment_of(&case, "zw-traffic-police")
        .assignment_id
        .clone();
    let decide = |assignment_id: &str, upheld: bool| DecideReturnRequest {
        case_id: case_id.clone(),
        assignment_id: assignment_id.into(),
        operator_id: "op".into(),
        upheld,
        note: "街道裁定".into(),
    };
    let not_returned = h
        .client
        .decide_return(decide(&police, true))
        .await
        .expect_err("not returned");
    assert_eq!(not_returned.code(), Code::FailedPrecondition);

    // the traffic police return it; the street rejects the return: they must take it back
    h.advance_to(h.clock.now_for_test() + Duration::minutes(10));
    h.client
        .record_department_action(act(
            &police,
            "zw-traffic-police",
            "r-1",
            give_back("非本部门职责"),
        ))
        .await
        .expect("return");
    let case = h
        .client
        .decide_return(decide(&police, false))
        .await
        .expect("reject the return")
        .into_inner();
    let taken_back = assignment_of(&case, "zw-traffic-police");
    assert_eq!(taken_back.status, AssignmentStatus::Whistled as i32);
    assert_eq!(taken_back.return_decision, ReturnDecision::Rejected as i32);
    assert_eq!(taken_back.rejected_returns, 1);
    assert_eq!(
        at(&taken_back.deadlines.expect("deadlines").acknowledge_by),
        h.clock.now_for_test() + Duration::minutes(30),
        "fresh clocks"
    );
    // they return it again; this time the street upholds it
    h.client
        .record_department_action(act(
            &police,
            "zw-traffic-police",
            "r-2",
            give_back("小区内部道路"),
        ))
        .await
        .expect("return again");
    let case = h
        .client
        .decide_return(decide(&police, true))
        .await
        .expect("uphold")
        .into_inner();
    assert_eq!(
        assignment_of(&case, "zw-traffic-police").return_decision,
        ReturnDecision::Upheld as i32
    );
    assert_eq!(
        case.status,
        CaseStatus::Whistled as i32,
        "housing still works"
    );

    // the housing bureau returns too: nobody left, the case is back in the street's queue
    h.client
        .record_department_action(act(&housing, "zw-housing", "r-3", give_back("物业纠纷")))
        .await
        .expect("return");
    let queued = h
        .client
        .list_cases(ListCasesRequest {
            status: CaseStatus::Accepted as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(queued.cases.iter().any(|case| case.case_id == case_id));
    // upheld, but the route names the property company, not yet tried: the street re-whistles
    let case = h
        .client
        .decide_return(decide(&housing, true))
        .await
        .expect("uphold")
        .into_inner();
    assert_eq!(case.status, CaseStatus::Accepted as i32);
    let case = h
        .client
        .whistle_case(whistle("pm-jinding", vec![]))
        .await
        .expect("re-whistle")
        .into_inner();
    let property = assignment_of(&case, "pm-jinding").assignment_id.clone();
    h.client
        .record_department_action(act(
            &property,
            "pm-jinding",
            "r-4",
            give_back("业委会未授权"),
        ))
        .await
        .expect("return");
    // upheld, and every department of the route was tried: the district government owns it
    let case = h
        .client
        .decide_return(decide(&property, true))
        .await
        .expect("uphold")
        .into_inner();
    assert_eq!(case.status, CaseStatus::Whistled as i32);
    let government = assignment_of(&case, "zw-government");
    assert_eq!(government.status, AssignmentStatus::Whistled as i32);

    let (events, postgres, _bed) = h.stop().await;
    let decisions: Vec<(String, bool, String)> = events
        .iter()
        .filter_map(|(subject, event)| match &event.payload {
            Some(Payload::AssignmentReturnDecided(decided)) => {
                let assignment = decided.assignment.as_ref().expect("assignment");
                assert!(
                    subject.ends_with(&format!("{}.return_decided", assignment.department_code))
                );
                Some((
                    assignment.department_code.clone(),
                    decided.upheld,
                    decided.fallback_department_code.clone(),
                ))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        decisions,
        vec![
            ("zw-traffic-police".to_string(), false, String::new()),
            ("zw-traffic-police".to_string(), true, String::new()),
            ("zw-housing".to_string(), true, String::new()),
            ("pm-jinding".to_string(), true, "zw-government".to_string()),
        ]
    );
    finish(postgres).await;
}

#[tokio::test]
async fn returns_are_decided_both_ways_on_sqlite() {
    returns_are_decided_both_ways(false).await;
}

#[tokio::test]
async fn returns_are_decided_both_ways_on_postgres() {
    returns_are_decided_both_ways(true).await;
}

/// A failed verification reworks only the assignments it names; `case.verified` carries a verdict
/// per assignment; 自办 publishes `case.resolved_locally`.
async fn verification_reworks_only_the_failed_assignments(postgres: bool) {
    let mut h = start(postgres).await;
    let case_id = report(&mut h, "E-01-03", "420303003001001", CaseStatus::Whistled).await;
    let case = h.case(&case_id).await;
    for assignment in &case.assignments {
        for (step, action) in [
            ("ack", acknowledge()),
            ("in", check_in()),
            ("done", resolve()),
        ] {
            h.client
                .record_department_action(act(
                    &assignment.assignment_id,
                    &assignment.department_code,
                    step,
                    action,
                ))
                .await
                .unwrap_or_else(|error| panic!("{step} {}: {error:?}", assignment.department_code));
        }
    }
    let sanitation = assignment_of(&case, "zw-sanitation").assignment_id.clone();
    let verify = |failed: Vec<String>| VerifyCaseRequest {
        case_id: case_id.clone(),
        verifier_id: "zhongyue-community".into(),
        passed: false,
        note: "路面仍有垃圾".into(),
        failed_assignment_ids: failed,
    };
    let wrong = h
        .client
        .verify_case(verify(vec!["not-an-assignment".into()]))
        .await
        .expect_err("unknown assignment");
    assert_eq!(wrong.code(), Code::InvalidArgument);
    assert!(wrong.message().starts_with("failed_assignment_ids[0]:"));
    let case = h
        .client
        .verify_case(verify(vec![sanitation.clone()]))
        .await
        .expect("verify")
        .into_inner();
    assert_eq!(case.status, CaseStatus::Reopened as i32);
    for assignment in &case.assignments {
        let expected = if assignment.assignment_id == sanitation {
            AssignmentStatus::OnSite
        } else {
            AssignmentStatus::Resolved
        };
        assert_eq!(
            assignment.status, expected as i32,
            "{}",
            assignment.department_code
        );
    }

    // 自办 on another case
    let local = report(&mut h, "C-03-02", "420303003001001", CaseStatus::Reported).await;
    let resolved = h
        .client
        .resolve_locally(ResolveLocallyRequest {
            case_id: local.clone(),
            operator_id: "zhongyue-community".into(),
            resolution: "社区志愿者已更换垃圾箱".into(),
        })
        .await
        .expect("自办")
        .into_inner();
    assert_eq!(resolved.status, CaseStatus::AwaitingVerification as i32);

    let (events, postgres, _bed) = h.stop().await;
    let verified: Vec<_> = events
        .iter()
        .filter_map(|(_, event)| match &event.payload {
            Some(Payload::CaseVerified(verified)) => Some(verified.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(verified.len(), 1);
    let verdicts: BTreeMap<String, bool> = verified[0]
        .verdicts
        .iter()
        .map(|verdict| (verdict.department_code.clone(), verdict.passed))
        .collect();
    assert_eq!(
        verdicts,
        BTreeMap::from([
            ("pm-zhongyue".to_string(), true),
            ("zw-enforcement".to_string(), true),
            ("zw-sanitation".to_string(), false),
        ])
    );
    let reopened: Vec<_> = events
        .iter()
        .filter_map(|(_, event)| match &event.payload {
            Some(Payload::CaseReopened(reopened)) => Some(reopened.assignment_ids.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(reopened, vec![vec![sanitation]]);
    let local_events: Vec<_> = events
        .iter()
        .filter(|(_, event)| event.case_id == local && event.source == "whistle-dispatch")
        .map(|(subject, event)| (subject.clone(), kind_of(event)))
        .collect();
    assert_eq!(
        local_events,
        vec![(
            "case.v1.420300.420303.chechenglu.resolved_locally".to_string(),
            "case.resolved_locally".to_string()
        )]
    );
    finish(postgres).await;
}

#[tokio::test]
async fn verification_reworks_only_the_failed_assignments_on_sqlite() {
    verification_reworks_only_the_failed_assignments(false).await;
}

#[tokio::test]
async fn verification_reworks_only_the_failed_assignments_on_postgres() {
    verification_reworks_only_the_failed_assignments(true).await;
}

/// Reading the manual clock in the test.
trait NowForTest {
    fn now_for_test(&self) -> DateTime<Utc>;
}

impl NowForTest for ManualClock {
    fn now_for_test(&self) -> DateTime<Utc> {
        whistle_platform::Clock::now(self)
    }
}
