//! The department gateway in-process on port 0, against a real nats-server started for the test and
//! a fresh SQLite file. Whistle events are published to JetStream the way dispatch's outbox does.

use async_nats::jetstream;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};
use tonic_types::StatusExt;
use whistle_department_gateway::GatewayConfig;
use whistle_department_gateway::storage::{delivery_cursor, notice};
use whistle_platform::SystemClock;
use whistle_platform::envelope::{self, Event, Payload};
use whistle_platform::local_nats::{LocalNatsServer, free_port};
use whistle_platform::testing::{TestBed, demo_region, publish_like_relay, serve};
use whistle_proto::events::{
    AssignmentAcknowledged, AssignmentClock, AssignmentProgressed, CaseDeferred, CaseEscalated,
    WhistleIssued,
};
use whistle_proto::gateway::department_gateway_client::DepartmentGatewayClient;
use whistle_proto::gateway::{
    AcknowledgeRequest, CheckInRequest, ListAssignmentsRequest, Notice, ReportProgressRequest,
    RequestExtensionRequest, ResolveRequest, ReturnRequest, SubscribeRequest,
};
use whistle_proto::types::{Assignment, AssignmentRole, AssignmentStatus, Severity};

const WAIT: Duration = Duration::from_secs(20);

struct Gateway {
    client: DepartmentGatewayClient<Channel>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Gateway {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("gateway stops in time")
            .expect("join")
            .expect("clean stop");
    }
}

fn credentials_path(dir: &Path) -> PathBuf {
    dir.join("demo-credentials.json")
}

fn config(dir: &Path, nats: &LocalNatsServer, dispatch_url: String) -> GatewayConfig {
    let mut config = GatewayConfig::default();
    // one service in-process: authentication is the end-to-end tests' (tests/tests/authorization.rs)
    config.auth.enabled = false;
    config.database.url = format!(
        "sqlite://{}",
        dir.join("department-gateway.sqlite").display()
    );
    config.nats.url = nats.url();
    config.dispatch.url = dispatch_url;
    config.dispatch.request_timeout_ms = 3_000;
    config.catalogue.file = Some(TestBed::demo_catalogue());
    config.catalogue.credentials_file = Some(credentials_path(dir));
    config
}

/// A dispatch address nobody listens on.
fn closed_dispatch_url() -> String {
    format!("http://127.0.0.1:{}", free_port().expect("free port"))
}

async fn start(config: GatewayConfig) -> Gateway {
    let served = serve(|listener, shutdown| {
        whistle_department_gateway::run(config, listener, Arc::new(SystemClock), shutdown)
    })
    .await;
    served.wait_listening().await;
    let (address, shutdown, task) = (served.address, served.shutdown, served.task);
    let mut client = DepartmentGatewayClient::connect(format!("http://{address}"))
        .await
        .expect("connect");
    // the port opens once start-up (migrations, catalogue, credentials, streams) is done
    let first_answer = tokio::time::timeout(
        WAIT,
        client.list_assignments(ListAssignmentsRequest::default()),
    )
    .await
    .expect("gateway ready in time")
    .expect_err("no token");
    assert_eq!(
        first_answer.code(),
        Code::Unauthenticated,
        "{first_answer:?}"
    );
    Gateway {
        client,
        shutdown,
        task,
    }
}

fn read_tokens(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).expect("credentials file");
    serde_json::from_str(&text).expect("credentials json")
}

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    request
}

fn assignment(
    assignment_id: &str,
    case_id: &str,
    department_code: &str,
    status: AssignmentStatus,
    version: u64,
) -> Assignment {
    Assignment {
        assignment_id: assignment_id.into(),
        case_id: case_id.into(),
        department_code: department_code.into(),
        role: AssignmentRole::Lead as i32,
        status: status as i32,
        version,
        ..Default::default()
    }
}

fn whistle_issued(assignment: Assignment) -> Event {
    let case_id = assignment.case_id.clone();
    envelope::new_event(
        &SystemClock,
        "whistle-dispatch",
        &case_id,
        2,
        Some(demo_region()),
        Payload::WhistleIssued(WhistleIssued {
            assignment: Some(assignment),
            category_code: "E-01-03".into(),
            severity: Severity::Urgent as i32,
            description: "中岳路2号垃圾桶满溢".into(),
            whistled_by: "street-operator-1".into(),
            ..Default::default()
        }),
    )
}

fn acknowledged(assignment: Assignment) -> Event {
    let case_id = assignment.case_id.clone();
    envelope::new_event(
        &SystemClock,
        "whistle-dispatch",
        &case_id,
        3,
        Some(demo_region()),
        Payload::AssignmentAcknowledged(AssignmentAcknowledged {
            assignment: Some(assignment),
            within_limit: true,
        }),
    )
}

fn progressed(assignment: Assignment, note: &str) -> Event {
    let case_id = assignment.case_id.clone();
    envelope::new_event(
        &SystemClock,
        "whistle-dispatch",
        &case_id,
        4,
        Some(demo_region()),
        Payload::AssignmentProgressed(AssignmentProgressed {
            assignment: Some(assignment),
            note: note.into(),
        }),
    )
}

/// Publishes as dispatch's outbox relay does, with `Nats-Msg-Id` = `message_id`.
async fn publish(js: &jetstream::Context, event: &Event, message_id: &str) {
    publish_like_relay(js, event, message_id).await;
}

async fn jetstream_of(nats: &LocalNatsServer) -> jetstream::Context {
    jetstream::new(async_nats::connect(nats.url()).await.expect("nats client"))
}

async fn next_notice(stream: &mut Streaming<Notice>) -> Notice {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("notice in time")
        .expect("stream healthy")
        .expect("stream open")
}

async fn subscribe(
    client: &mut DepartmentGatewayClient<Channel>,
    token: &str,
    after_sequence: u64,
) -> Streaming<Notice> {
    client
        .subscribe(authed(SubscribeRequest { after_sequence }, token))
        .await
        .expect("subscribe")
        .into_inner()
}

#[tokio::test]
async fn credentials_are_issued_once_and_authenticate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = LocalNatsServer::start(&dir.path().join("nats")).expect("nats-server");
    let mut gateway = start(config(dir.path(), &nats, closed_dispatch_url())).await;

    let tokens = read_tokens(&credentials_path(dir.path()));
    assert_eq!(tokens.len(), 15, "one token per demo department");
    let sanitation = tokens
        .get("zw-sanitation")
        .expect("sanitation token")
        .clone();
    assert_eq!(sanitation.len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(credentials_path(dir.path()))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "credentials are private");
    }

    let listed = gateway
        .client
        .list_assignments(authed(ListAssignmentsRequest::default(), &sanitation))
        .await
        .expect("a file token authenticates")
        .into_inner();
    assert!(listed.assignments.is_empty());

    let missing = gateway
        .client
        .list_assignments(ListAssignmentsRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(
        missing.message().contains("authorization"),
        "{}",
        missing.message()
    );
    let wrong = gateway
        .client
        .list_assignments(authed(ListAssignmentsRequest::default(), "not-a-token"))
        .await
        .expect_err("wrong token");
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let mut basic = Request::new(ListAssignmentsRequest::default());
    basic.metadata_mut().insert(
        "authorization",
        "Basic dXNlcjpwYXNz".parse().expect("metadata"),
    );
    let basic = gateway
        .client
        .list_assignments(basic)
        .await
        .expect_err("basic auth");
    assert_eq!(basic.code(), Code::Unauthenticated);
    let subscribe_without_token = gateway
        .client
        .subscribe(SubscribeRequest { after_sequence: 0 })
        .await
        .expect_err("subscribe needs a token");
    assert_eq!(subscribe_without_token.code(), Code::Unauthenticated);
    gateway.stop().await;

    // a restart with the same database and file issues nothing and the tokens keep working
    let mut gateway = start(config(dir.path(), &nats, closed_dispatch_url())).await;
    assert_eq!(read_tokens(&credentials_path(dir.path())), tokens);
    gateway
        .client
        .list_assignments(authed(ListAssignmentsRequest::default(), &sanitation))
        .await
        .expect("the token still works after a restart");
    gateway.stop().await;

    // a fresh database with the old file: the file's tokens are registered, not replaced
    let mut fresh = config(dir.path(), &nats, closed_dispatch_url());
    fresh.database.url = format!("sqlite://{}", dir.path().join("fresh.sqlite").display());
    let mut gateway = start(fresh).await;
    assert_eq!(read_tokens(&credentials_path(dir.path())), tokens);
    gateway
        .client
        .list_assignments(authed(ListAssignmentsRequest::default(), &sanitation))
        .await
        .expect("the file's token works against a fresh database");
    gateway.stop().await;
}

#[tokio::test]
async fn notices_are_per_department_in_order_without_duplicates_and_resumable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = LocalNatsServer::start(&dir.path().join("nats")).expect("nats-server");
    let mut gateway = start(config(dir.path(), &nats, closed_dispatch_url())).await;
    let tokens = read_tokens(&credentials_path(dir.path()));
    let sanitation = tokens["zw-sanitation"].clone();
    let enforcement = tokens["zw-enforcement"].clone();
    // the gateway serves, so its streams exist
    gateway
        .client
        .list_assignments(authed(ListAssignmentsRequest::default(), &sanitation))
        .await
        .expect("ready");
    let js = jetstream_of(&nats).await;

    let sanitation_whistled = assignment(
        "a-sanitation",
        "case-1",
        "zw-sanitation",
        AssignmentStatus::Whistled,
        1,
    );
    let issued_to_sanitation = whistle_issued(sanitation_whistled.clone());
    let issued_to_enforcement = whistle_issued(assignment(
        "a-enforcement",
        "case-1",
        "zw-enforcement",
        AssignmentStatus::Whistled,
        1,
    ));
    let mut sanitation_acknowledged = sanitation_whistled.clone();
    sanitation_acknowledged.status = AssignmentStatus::Acknowledged as i32;
    sanitation_acknowledged.responsible_person = "王师傅".into();
    sanitation_acknowledged.version = 2;
    let acknowledged_by_sanitation = acknowledged(sanitation_acknowledged.clone());

    publish(&js, &issued_to_sanitation, &issued_to_sanitation.event_id).await;
    publish(&js, &issued_to_enforcement, &issued_to_enforcement.event_id).await;
    publish(
        &js,
        &acknowledged_by_sanitation,
        &acknowledged_by_sanitation.event_id,
    )
    .await;
    // the same event again under another message id: JetStream keeps it, the inbox must drop it
    publish(
        &js,
        &issued_to_sanitation,
        "redelivered-by-a-retrying-relay",
    )
    .await;

    let mut stream = subscribe(&mut gateway.client, &sanitation, 0).await;
    let first = next_notice(&mut stream).await;
    assert_eq!(first.sequence, 1);
    assert_eq!(first.kind, "whistle.issued");
    assert_eq!(
        first.subject,
        "whistle.v1.420300.420303.chechenglu.zw-sanitation.issued"
    );
    assert_eq!(first.case_id, "case-1");
    assert_eq!(first.assignment_id, "a-sanitation");
    assert!(first.delivered_at.is_some());
    let event = first.event.clone().expect("event");
    assert_eq!(event.event_id, issued_to_sanitation.event_id);
    assert!(
        matches!(event.payload, Some(Payload::WhistleIssued(ref issued)) if issued.description == "中岳路2号垃圾桶满溢")
    );
    let second = next_notice(&mut stream).await;
    assert_eq!(second.sequence, 2);
    assert_eq!(second.kind, "whistle.acknowledged");
    assert_eq!(
        second.event.expect("event").event_id,
        acknowledged_by_sanitation.event_id
    );

    // published after subscribing: arrives live, and right after 2, so the duplicate made no notice
    let mut sanitation_progressed = sanitation_acknowledged.clone();
    sanitation_progressed.version = 3;
    let progress = progressed(sanitation_progressed, "已增加清运频次");
    publish(&js, &progress, &progress.event_id).await;
    let third = next_notice(&mut stream).await;
    assert_eq!(third.sequence, 3);
    assert_eq!(third.kind, "whistle.progressed");
    assert_eq!(third.event.expect("event").event_id, progress.event_id);
    // a subscription left open and idle still records how far it served (the cursor is written at
    // most once a second, and 2 was written just before 3 was sent)
    let db =
        whistle_platform::db::connect(&config(dir.path(), &nats, closed_dispatch_url()).database)
            .await
            .expect("database");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let cursor = delivery_cursor::Entity::find_by_id("zw-sanitation")
            .one(&db)
            .await
            .expect("cursor")
            .map(|cursor| cursor.delivered_sequence);
        if cursor == Some(3) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the open subscription's cursor stayed at {cursor:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.close().await.expect("close");
    drop(stream);

    // resume after 1: 2 comes next
    let mut resumed = subscribe(&mut gateway.client, &sanitation, 1).await;
    let again = next_notice(&mut resumed).await;
    assert_eq!(again.sequence, 2);
    assert_eq!(
        again.event.expect("event").event_id,
        acknowledged_by_sanitation.event_id
    );
    assert_eq!(next_notice(&mut resumed).await.sequence, 3);
    drop(resumed);

    // the other department sees only its own, numbered from 1
    let mut enforcement_stream = subscribe(&mut gateway.client, &enforcement, 0).await;
    let theirs = next_notice(&mut enforcement_stream).await;
    assert_eq!(theirs.sequence, 1);
    assert_eq!(theirs.assignment_id, "a-enforcement");
    assert_eq!(
        theirs.event.expect("event").event_id,
        issued_to_enforcement.event_id
    );

    // stopping the gateway ends open subscriptions with UNAVAILABLE, so callers reconnect elsewhere
    let shutdown = gateway.shutdown.clone();
    let task = gateway.task;
    shutdown.cancel();
    let ended = tokio::time::timeout(WAIT, enforcement_stream.message())
        .await
        .expect("subscription ends in time")
        .expect_err("ends with a status");
    assert_eq!(ended.code(), Code::Unavailable);
    assert!(
        ended.message().contains("after_sequence"),
        "{}",
        ended.message()
    );
    tokio::time::timeout(WAIT, task)
        .await
        .expect("gateway stops in time")
        .expect("join")
        .expect("clean stop");

    // the log holds each event once; operators see how far each department was served
    let db =
        whistle_platform::db::connect(&config(dir.path(), &nats, closed_dispatch_url()).database)
            .await
            .expect("database");
    let sanitation_notices = notice::Entity::find()
        .filter(notice::Column::DepartmentCode.eq("zw-sanitation"))
        .count(&db)
        .await
        .expect("count");
    assert_eq!(sanitation_notices, 3, "the duplicate made no notice");
    let cursors: BTreeMap<String, i64> = delivery_cursor::Entity::find()
        .all(&db)
        .await
        .expect("cursors")
        .into_iter()
        .map(|cursor| (cursor.department_code, cursor.delivered_sequence))
        .collect();
    assert_eq!(
        cursors,
        BTreeMap::from([
            ("zw-enforcement".to_string(), 1),
            ("zw-sanitation".to_string(), 3)
        ])
    );
    db.close().await.expect("close");
}

/// `case.escalated` reaches the supervision department's stream (督办) and the escalated
/// department's own, whose assignments list shows the flag; `case.deferred` reaches the department
/// of every assignment whose clocks stopped; other case events reach nobody.
#[tokio::test]
async fn escalations_reach_the_supervision_department_and_deferrals_the_departments() {
    use whistle_proto::types::{AssignmentFlag, Clock};
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = LocalNatsServer::start(&dir.path().join("nats")).expect("nats-server");
    let mut gateway = start(config(dir.path(), &nats, closed_dispatch_url())).await;
    let tokens = read_tokens(&credentials_path(dir.path()));
    let sanitation = tokens["zw-sanitation"].clone();
    let supervision = tokens["zw-supervision"].clone();
    let js = jetstream_of(&nats).await;

    let whistled = assignment(
        "a-sanitation",
        "case-9",
        "zw-sanitation",
        AssignmentStatus::Whistled,
        1,
    );
    let issued = whistle_issued(whistled.clone());
    publish(&js, &issued, &issued.event_id).await;
    // Whistles and case events come from two streams, each consumed in its own order; dispatch
    // escalates only after a deadline, long after the whistle, so the whistle is recorded first.
    let mut own = subscribe(&mut gateway.client, &sanitation, 0).await;
    let first = next_notice(&mut own).await;
    assert_eq!((first.sequence, first.kind.as_str()), (1, "whistle.issued"));
    let mut escalated_assignment = whistled.clone();
    escalated_assignment.version = 3;
    escalated_assignment.flags = vec![
        AssignmentFlag::AckOverdue as i32,
        AssignmentFlag::Escalated as i32,
    ];
    escalated_assignment.supervision_department_code = "zw-supervision".into();
    let escalated = envelope::new_event(
        &SystemClock,
        "whistle-dispatch",
        "case-9",
        4,
        Some(demo_region()),
        Payload::CaseEscalated(CaseEscalated {
            assignment_id: "a-sanitation".into(),
            department_code: "zw-sanitation".into(),
            supervisor_code: "zw-supervision".into(),
            reason: "zw-sanitation 报到 not met".into(),
            clock: Clock::Acknowledge as i32,
            assignment: Some(escalated_assignment),
            ..Default::default()
        }),
    );
    let accepted = envelope::new_event(
        &SystemClock,
        "whistle-dispatch",
        "case-9",
        5,
        Some(demo_region()),
        Payload::CaseAccepted(whistle_proto::events::CaseAccepted {
            accepted_by: "op".into(),
        }),
    );
    let deferred = envelope::new_event(
        &SystemClock,
        "whistle-dispatch",
        "case-9",
        6,
        Some(demo_region()),
        Payload::CaseDeferred(CaseDeferred {
            deferred_by: "op".into(),
            reason: "等待预算".into(),
            until: None,
            assignments: vec![AssignmentClock {
                assignment_id: "a-sanitation".into(),
                department_code: "zw-sanitation".into(),
                deadlines: None,
            }],
        }),
    );
    for event in [&escalated, &accepted, &deferred] {
        publish(&js, event, &event.event_id).await;
    }
    assert_eq!(
        envelope::subject(&escalated).expect("subject"),
        "case.v1.420300.420303.chechenglu.escalated"
    );

    let mut supervising = subscribe(&mut gateway.client, &supervision, 0).await;
    let notice = next_notice(&mut supervising).await;
    assert_eq!(notice.sequence, 1);
    assert_eq!(notice.kind, "case.escalated");
    assert_eq!(notice.subject, "case.v1.420300.420303.chechenglu.escalated");
    assert_eq!(notice.case_id, "case-9");
    assert_eq!(notice.assignment_id, "a-sanitation");
    assert!(matches!(
        notice.event.expect("event").payload,
        Some(Payload::CaseEscalated(ref escalated)) if escalated.department_code == "zw-sanitation"
    ));

    let kinds = [next_notice(&mut own).await, next_notice(&mut own).await]
        .map(|notice| (notice.sequence, notice.kind));
    assert_eq!(
        kinds,
        [
            (2, "case.escalated".to_string()),
            (3, "case.deferred".to_string())
        ]
    );
    let listed = gateway
        .client
        .list_assignments(authed(ListAssignmentsRequest::default(), &sanitation))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.assignments.len(), 1);
    assert!(
        listed.assignments[0]
            .flags
            .contains(&(AssignmentFlag::Escalated as i32))
    );
    let supervised = gateway
        .client
        .list_assignments(authed(ListAssignmentsRequest::default(), &supervision))
        .await
        .expect("list")
        .into_inner();
    assert!(
        supervised.assignments.is_empty(),
        "supervision sees the notice, not another department's assignment"
    );
    drop(supervising);
    drop(own);
    gateway.stop().await;
}

#[tokio::test]
async fn list_assignments_serves_the_latest_version_of_each_assignment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = LocalNatsServer::start(&dir.path().join("nats")).expect("nats-server");
    let mut gateway = start(config(dir.path(), &nats, closed_dispatch_url())).await;
    let tokens = read_tokens(&credentials_path(dir.path()));
    let housing = tokens["zw-housing"].clone();
    let traffic = tokens["zw-traffic-police"].clone();
    gateway
        .client
        .list_assignments(authed(ListAssignmentsRequest::default(), &housing))
        .await
        .expect("ready");
    let js = jetstream_of(&nats).await;

    for index in 1..=3 {
        let event = whistle_issued(assignment(
            &format!("a-housing-{index}"),
            &format!("case-{index}"),
            "zw-housing",
            AssignmentStatus::Whistled,
            1,
        ));
        publish(&js, &event, &event.event_id).await;
    }
    let traffic_event = whistle_issued(assignment(
        "a-traffic-1",
        "case-1",
        "zw-traffic-police",
        AssignmentStatus::Whistled,
        1,
    ));
    publish(&js, &traffic_event, &traffic_event.event_id).await;
    // assignment 2 moves to version 3, then a late event with version 2 arrives and is ignored
    let mut newer = assignment(
        "a-housing-2",
        "case-2",
        "zw-housing",
        AssignmentStatus::Acknowledged,
        3,
    );
    newer.responsible_person = "李科长".into();
    let newer_event = progressed(newer, "现场协调中");
    publish(&js, &newer_event, &newer_event.event_id).await;
    let late_event = acknowledged(assignment(
        "a-housing-2",
        "case-2",
        "zw-housing",
        AssignmentStatus::Acknowledged,
        2,
    ));
    publish(&js, &late_event, &late_event.event_id).await;

    // every event has been applied once the fifth notice is visible
    let mut stream = subscribe(&mut gateway.client, &housing, 4).await;
    let fifth = next_notice(&mut stream).await;
    assert_eq!(fifth.sequence, 5);
    assert_eq!(fifth.event.expect("event").event_id, late_event.event_id);
    drop(stream);

    let first_page = gateway
        .client
        .list_assignments(authed(
            ListAssignmentsRequest {
                page_size: 2,
                ..Default::default()
            },
            &housing,
        ))
        .await
        .expect("first page")
        .into_inner();
    let ids: Vec<&str> = first_page
        .assignments
        .iter()
        .map(|assignment| assignment.assignment_id.as_str())
        .collect();
    assert_eq!(ids, ["a-housing-1", "a-housing-2"]);
    assert!(!first_page.next_page_token.is_empty());
    let second = &first_page.assignments[1];
    assert_eq!(second.version, 3, "the late version 2 did not overwrite 3");
    assert_eq!(second.responsible_person, "李科长");
    assert_eq!(second.status, AssignmentStatus::Acknowledged as i32);

    let second_page = gateway
        .client
        .list_assignments(authed(
            ListAssignmentsRequest {
                page_size: 2,
                page_token: first_page.next_page_token.clone(),
                ..Default::default()
            },
            &housing,
        ))
        .await
        .expect("second page")
        .into_inner();
    assert_eq!(second_page.assignments.len(), 1);
    assert_eq!(second_page.assignments[0].assignment_id, "a-housing-3");
    assert!(second_page.next_page_token.is_empty());

    let whistled = gateway
        .client
        .list_assignments(authed(
            ListAssignmentsRequest {
                status: AssignmentStatus::Whistled as i32,
                ..Default::default()
            },
            &housing,
        ))
        .await
        .expect("filtered")
        .into_inner();
    let ids: Vec<&str> = whistled
        .assignments
        .iter()
        .map(|assignment| assignment.assignment_id.as_str())
        .collect();
    assert_eq!(ids, ["a-housing-1", "a-housing-3"]);

    let theirs = gateway
        .client
        .list_assignments(authed(ListAssignmentsRequest::default(), &traffic))
        .await
        .expect("traffic")
        .into_inner();
    assert_eq!(theirs.assignments.len(), 1);
    assert_eq!(theirs.assignments[0].assignment_id, "a-traffic-1");

    let bad_token = gateway
        .client
        .list_assignments(authed(
            ListAssignmentsRequest {
                page_token: "garbage".into(),
                ..Default::default()
            },
            &housing,
        ))
        .await
        .expect_err("foreign page token");
    assert_eq!(bad_token.code(), Code::InvalidArgument);
    assert!(bad_token.message().starts_with("page_token:"));
    let bad_status = gateway
        .client
        .list_assignments(authed(
            ListAssignmentsRequest {
                status: 42,
                ..Default::default()
            },
            &housing,
        ))
        .await
        .expect_err("unknown status");
    assert!(bad_status.message().starts_with("status:"));

    gateway.stop().await;
}

#[tokio::test]
async fn actions_are_checked_locally_and_dispatch_down_is_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = LocalNatsServer::start(&dir.path().join("nats")).expect("nats-server");
    let mut gateway = start(config(dir.path(), &nats, closed_dispatch_url())).await;
    let tokens = read_tokens(&credentials_path(dir.path()));
    let sanitation = tokens["zw-sanitation"].clone();

    let unauthenticated = gateway
        .client
        .acknowledge(AcknowledgeRequest {
            assignment_id: "a-1".into(),
            responsible_person: "王师傅".into(),
            ..Default::default()
        })
        .await
        .expect_err("no token");
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
    let wrong_token = gateway
        .client
        .resolve(authed(
            ResolveRequest {
                assignment_id: "a-1".into(),
                resolution: "done".into(),
                ..Default::default()
            },
            "wrong",
        ))
        .await
        .expect_err("wrong token");
    assert_eq!(wrong_token.code(), Code::Unauthenticated);

    let client = &mut gateway.client;
    let refusals = [
        (
            "assignment_id",
            client
                .check_in(authed(CheckInRequest::default(), &sanitation))
                .await,
        ),
        (
            "responsible_person",
            client
                .acknowledge(authed(
                    AcknowledgeRequest {
                        assignment_id: "a-1".into(),
                        ..Default::default()
                    },
                    &sanitation,
                ))
                .await,
        ),
        (
            "resolution",
            client
                .resolve(authed(
                    ResolveRequest {
                        assignment_id: "a-1".into(),
                        resolution: " ".into(),
                        ..Default::default()
                    },
                    &sanitation,
                ))
                .await,
        ),
        (
            "reason",
            client
                .r#return(authed(
                    ReturnRequest {
                        assignment_id: "a-1".into(),
                        ..Default::default()
                    },
                    &sanitation,
                ))
                .await,
        ),
        (
            "request_id",
            client
                .report_progress(authed(
                    ReportProgressRequest {
                        assignment_id: "a-1".into(),
                        request_id: "r".repeat(129),
                        note: "working".into(),
                        ..Default::default()
                    },
                    &sanitation,
                ))
                .await,
        ),
        (
            "assignment_id",
            client
                .request_extension(authed(RequestExtensionRequest::default(), &sanitation))
                .await,
        ),
    ];
    for (field, result) in refusals {
        let error = result.expect_err(field);
        assert_eq!(error.code(), Code::InvalidArgument, "{field}");
        assert!(
            error.message().starts_with(&format!("{field}:")),
            "{field}: {}",
            error.message()
        );
    }

    let unreachable = tokio::time::timeout(
        WAIT,
        gateway.client.acknowledge(authed(
            AcknowledgeRequest {
                assignment_id: "a-1".into(),
                request_id: "ack-1".into(),
                responsible_person: "王师傅".into(),
                ..Default::default()
            },
            &sanitation,
        )),
    )
    .await
    .expect("answer in time")
    .expect_err("dispatch is down");
    assert_eq!(unreachable.code(), Code::Unavailable);
    assert_eq!(unreachable.message(), "dispatch unreachable");

    gateway.stop().await;
}

#[tokio::test]
async fn subscriptions_are_bounded_per_department_and_every_ended_one_frees_its_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = LocalNatsServer::start(&dir.path().join("nats")).expect("nats-server");
    let mut settings = config(dir.path(), &nats, closed_dispatch_url());
    settings.subscriptions.max_per_department = 2;
    let database = settings.database.clone();
    let mut gateway = start(settings).await;
    let tokens = read_tokens(&credentials_path(dir.path()));
    let sanitation = tokens["zw-sanitation"].clone();
    let housing = tokens["zw-housing"].clone();
    let water = tokens["sy-water"].clone();

    let first = subscribe(&mut gateway.client, &sanitation, 0).await;
    let _second = subscribe(&mut gateway.client, &sanitation, 0).await;
    let refused = gateway
        .client
        .subscribe(authed(SubscribeRequest { after_sequence: 0 }, &sanitation))
        .await
        .expect_err("a third subscription is over the limit");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(
        refused.message(),
        "too many subscriptions: department zw-sanitation has 2 open, at most 2 \
         (subscriptions.max_per_department); close one before opening another"
    );
    let quota = refused.get_error_details();
    let violations = &quota.quota_failure().expect("quota failure").violations;
    assert_eq!(violations[0].subject, "department:zw-sanitation");
    // the limit is per department: another one is not affected
    let _housing = subscribe(&mut gateway.client, &housing, 0).await;

    // a caller that goes away frees its slot
    drop(first);
    let _third = subscribe_when_free(&mut gateway.client, &sanitation, 0).await;

    // a stream that ends with an error frees its slot, even while the caller still holds it
    // one slot held by a subscription past the broken notice, the other by the one that meets it
    let _water = subscribe(&mut gateway.client, &water, 1).await;
    let db = whistle_platform::db::connect(&database)
        .await
        .expect("database");
    notice::Entity::insert(notice::ActiveModel {
        department_code: sea_orm::ActiveValue::Set("sy-water".into()),
        sequence: sea_orm::ActiveValue::Set(1),
        event_id: sea_orm::ActiveValue::Set("not-an-event".into()),
        subject: sea_orm::ActiveValue::Set("whistle.v1.x.y.z.sy-water.issued".into()),
        kind: sea_orm::ActiveValue::Set("whistle.issued".into()),
        case_id: sea_orm::ActiveValue::Set("case-x".into()),
        assignment_id: sea_orm::ActiveValue::Set("a-x".into()),
        event: sea_orm::ActiveValue::Set(vec![0xff, 0xff, 0xff]),
        created_at_ms: sea_orm::ActiveValue::Set(0),
        ..Default::default()
    })
    .exec_without_returning(&db)
    .await
    .expect("a notice that does not decode");
    db.close().await.expect("close");
    let mut broken = subscribe(&mut gateway.client, &water, 0).await;
    let ended = tokio::time::timeout(WAIT, broken.message())
        .await
        .expect("ends in time")
        .expect_err("ends with an error");
    assert_eq!(ended.code(), Code::Internal);
    assert_eq!(ended.message(), "internal error", "nothing stored is told");
    let _after_the_broken_one = subscribe_when_free(&mut gateway.client, &water, 1).await;
    drop(broken);

    gateway.stop().await;
}

/// Subscribes once the department has a free slot again (the gateway frees it when it notices the
/// previous stream ended), polling with a deadline.
async fn subscribe_when_free(
    client: &mut DepartmentGatewayClient<Channel>,
    token: &str,
    after_sequence: u64,
) -> Streaming<Notice> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match client
            .subscribe(authed(SubscribeRequest { after_sequence }, token))
            .await
        {
            Ok(response) => return response.into_inner(),
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slot was never freed: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("subscribe failed: {status:?}"),
        }
    }
}

#[tokio::test]
async fn every_request_field_is_held_to_the_configured_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = LocalNatsServer::start(&dir.path().join("nats")).expect("nats-server");
    let mut settings = config(dir.path(), &nats, closed_dispatch_url());
    settings.limits.name_chars = 10;
    settings.limits.attachments = 1;
    let mut gateway = start(settings).await;
    let tokens = read_tokens(&credentials_path(dir.path()));
    let sanitation = tokens["zw-sanitation"].clone();
    let client = &mut gateway.client;

    let refusals = [
        (
            "responsible_person",
            "responsible_person: at most 10 characters",
            client
                .acknowledge(authed(
                    AcknowledgeRequest {
                        assignment_id: "a-1".into(),
                        responsible_person: "王".repeat(11),
                        ..Default::default()
                    },
                    &sanitation,
                ))
                .await,
        ),
        (
            "evidence",
            "evidence: at most 1 items",
            client
                .resolve(authed(
                    ResolveRequest {
                        assignment_id: "a-1".into(),
                        resolution: "已清运".into(),
                        evidence: vec![Default::default(), Default::default()],
                        ..Default::default()
                    },
                    &sanitation,
                ))
                .await,
        ),
        (
            "assignment_id",
            "assignment_id: at most 128 characters",
            client
                .check_in(authed(
                    CheckInRequest {
                        assignment_id: "a".repeat(129),
                        ..Default::default()
                    },
                    &sanitation,
                ))
                .await,
        ),
    ];
    for (field, message, result) in refusals {
        let status = result.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert_eq!(status.message(), message);
        let details = status.get_error_details();
        let violations = &details.bad_request().expect("bad request").field_violations;
        assert_eq!(violations[0].field, field);
    }
    let too_big_a_page = client
        .list_assignments(authed(
            ListAssignmentsRequest {
                page_size: 501,
                ..Default::default()
            },
            &sanitation,
        ))
        .await
        .expect_err("page over the limit");
    assert_eq!(too_big_a_page.message(), "page_size: at most 500");
    let huge_token = client
        .list_assignments(authed(
            ListAssignmentsRequest {
                page_token: "a".repeat(10_000),
                ..Default::default()
            },
            &sanitation,
        ))
        .await
        .expect_err("page token over the limit");
    assert!(
        huge_token.message().starts_with("page_token: at most"),
        "{}",
        huge_token.message()
    );
    gateway.stop().await;
}
