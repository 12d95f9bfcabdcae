//! The whistle flows end to end through the four real binaries and a real nats-server:
//! SubmitReport -> case.reported -> dispatch routes and whistles -> the department's Subscribe
//! -> Acknowledge / CheckIn / Resolve -> dispatch records them -> evaluation counts them.
//! Once on SQLite, once on PostgreSQL.

use futures::StreamExt;
use std::time::Duration;
use tonic::Code;
use whistle_e2e::{
    Platform, Storage, garbage_report, postgres_admin_url, reflected_services, with_token,
};
use whistle_proto::dispatch::dispatch_service_client::DispatchServiceClient;
use whistle_proto::dispatch::{DecideExtensionRequest, GetCaseRequest};
use whistle_proto::evaluation::GetScorecardRequest;
use whistle_proto::evaluation::evaluation_service_client::EvaluationServiceClient;
use whistle_proto::gateway::RequestExtensionRequest;
use whistle_proto::gateway::department_gateway_client::DepartmentGatewayClient;
use whistle_proto::gateway::{
    AcknowledgeRequest, CheckInRequest, Notice, ResolveRequest, SubscribeRequest,
};
use whistle_proto::intake::intake_service_client::IntakeServiceClient;
use whistle_proto::types::{AssignmentRole, AssignmentStatus};

async fn next_notice(notices: &mut tonic::Streaming<Notice>, kind: &str) -> Notice {
    loop {
        let notice = tokio::time::timeout(Duration::from_secs(30), notices.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} notice within 30s"))
            .expect("stream open")
            .expect("notice");
        if notice.kind == kind {
            return notice;
        }
    }
}

async fn walk_the_whistle(storage: Storage) {
    let platform = Platform::start(storage).await;
    // every service answers health checks (Platform::start waited for SERVING) and lists its API
    // through reflection, as `grpcurl -plaintext <address> list` does
    for (process, api) in [
        (&platform.intake, "whistle.intake.v1.IntakeService"),
        (&platform.dispatch, "whistle.dispatch.v1.DispatchService"),
        (&platform.gateway, "whistle.gateway.v1.DepartmentGateway"),
        (
            &platform.evaluation,
            "whistle.evaluation.v1.EvaluationService",
        ),
    ] {
        let services = reflected_services(process).await;
        assert!(
            services.iter().any(|name| name == api),
            "{} lists {services:?}",
            process.service
        );
        // only what this port serves: its API, health and reflection
        assert!(
            services.iter().all(|name| name == api
                || name == "grpc.health.v1.Health"
                || name.starts_with("grpc.reflection.")),
            "{} lists services it does not serve: {services:?}",
            process.service
        );
        assert!(
            services.iter().any(|name| name == "grpc.health.v1.Health"),
            "{} lists {services:?}",
            process.service
        );
    }
    let tokens = platform.credentials().await;
    let sanitation = tokens
        .get("zw-sanitation")
        .expect("sanitation token")
        .clone();
    let enforcement = tokens
        .get("zw-enforcement")
        .expect("enforcement token")
        .clone();

    let mut intake = IntakeServiceClient::new(platform.auth.channel(&platform.intake.url()));
    let mut dispatch = DispatchServiceClient::new(platform.auth.channel(&platform.dispatch.url()));
    let mut gateway = DepartmentGatewayClient::connect(platform.gateway.url())
        .await
        .expect("gateway");
    let mut evaluation =
        EvaluationServiceClient::new(platform.auth.channel(&platform.evaluation.url()));

    let unauthenticated = gateway
        .subscribe(SubscribeRequest { after_sequence: 0 })
        .await
        .expect_err("no token");
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
    let mut notices = gateway
        .subscribe(with_token(
            SubscribeRequest { after_sequence: 0 },
            &sanitation,
        ))
        .await
        .expect("subscribe")
        .into_inner();

    // 2. a grid worker's report becomes a case, routed and whistled to the lead department
    let submitted = intake
        .submit_report(garbage_report("e2e-1"))
        .await
        .expect("submit")
        .into_inner();
    let issued = next_notice(&mut notices, "whistle.issued").await;
    assert_eq!(issued.case_id, submitted.case_id);
    assert_eq!(
        issued.subject,
        "whistle.v1.420300.420303.chechenglu.zw-sanitation.issued"
    );
    assert_eq!(issued.sequence, 1);
    let event = issued.event.clone().expect("event");
    assert_eq!(event.case_id, submitted.case_id);
    let assignment_id = issued.assignment_id.clone();

    let case = dispatch
        .get_case(GetCaseRequest {
            case_id: submitted.case_id.clone(),
        })
        .await
        .expect("case")
        .into_inner();
    let lead = case
        .assignments
        .iter()
        .find(|a| a.assignment_id == assignment_id)
        .expect("lead assignment");
    assert_eq!(lead.department_code, "zw-sanitation");
    assert_eq!(lead.role, AssignmentRole::Lead as i32);
    assert!(
        case.assignments
            .iter()
            .any(|a| a.department_code == "zw-enforcement"),
        "co-department whistled too"
    );

    // 3. the department reports for duty, arrives and resolves
    let wrong_department = gateway
        .acknowledge(with_token(
            AcknowledgeRequest {
                assignment_id: assignment_id.clone(),
                responsible_person: "李".into(),
                ..Default::default()
            },
            &enforcement,
        ))
        .await
        .expect_err("not theirs");
    assert_eq!(wrong_department.code(), Code::PermissionDenied);
    let missing_person = gateway
        .acknowledge(with_token(
            AcknowledgeRequest {
                assignment_id: assignment_id.clone(),
                ..Default::default()
            },
            &sanitation,
        ))
        .await
        .expect_err("person required");
    assert_eq!(missing_person.code(), Code::InvalidArgument);
    assert!(
        missing_person.message().contains("responsible_person"),
        "{}",
        missing_person.message()
    );

    let acknowledged = gateway
        .acknowledge(with_token(
            AcknowledgeRequest {
                assignment_id: assignment_id.clone(),
                request_id: "ack-1".into(),
                responsible_person: "王主任".into(),
                contact_phone: "0719-8000000".into(),
                promised_at: None,
            },
            &sanitation,
        ))
        .await
        .expect("acknowledge")
        .into_inner();
    assert_eq!(acknowledged.status, AssignmentStatus::Acknowledged as i32);
    gateway
        .check_in(with_token(
            CheckInRequest {
                assignment_id: assignment_id.clone(),
                request_id: "in-1".into(),
                lat: 32.6370,
                lng: 110.7985,
                person: "王主任".into(),
                datum: 0,
            },
            &sanitation,
        ))
        .await
        .expect("check in");
    // 延期: the department asks for more time; the street approves; the deadline moves
    let requested = gateway
        .request_extension(with_token(
            RequestExtensionRequest {
                assignment_id: assignment_id.clone(),
                request_id: "ext-1".into(),
                extra: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                reason: "需要协调物业".into(),
            },
            &sanitation,
        ))
        .await
        .expect("extension requested")
        .into_inner();
    let resolve_by = |assignment: &whistle_proto::types::Assignment| {
        assignment
            .deadlines
            .and_then(|deadlines| deadlines.resolve_by)
            .expect("resolve_by")
            .seconds
    };
    let before = resolve_by(&requested);
    let case = dispatch
        .decide_extension(DecideExtensionRequest {
            case_id: submitted.case_id.clone(),
            assignment_id: assignment_id.clone(),
            operator_id: "chechenglu-dispatch".into(),
            approved: true,
            note: "同意".into(),
        })
        .await
        .expect("approve")
        .into_inner();
    let extended = case
        .assignments
        .iter()
        .find(|a| a.assignment_id == assignment_id)
        .expect("lead");
    assert_eq!(resolve_by(extended), before + 3600);
    let again = gateway
        .request_extension(with_token(
            RequestExtensionRequest {
                assignment_id: assignment_id.clone(),
                request_id: "ext-2".into(),
                extra: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                reason: "再延一次".into(),
            },
            &sanitation,
        ))
        .await
        .expect_err("one request per clock");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");

    let resolved = gateway
        .resolve(with_token(
            ResolveRequest {
                assignment_id: assignment_id.clone(),
                request_id: "done-1".into(),
                resolution: "增加清运频次，物业与业主分担费用".into(),
                evidence: vec![],
            },
            &sanitation,
        ))
        .await
        .expect("resolve")
        .into_inner();
    assert_eq!(resolved.status, AssignmentStatus::Resolved as i32);

    // the department's stream carries its own actions and the street's decision back, in order
    let acknowledged_notice = next_notice(&mut notices, "whistle.acknowledged").await;
    let extended_notice = next_notice(&mut notices, "whistle.extended").await;
    let resolved_notice = next_notice(&mut notices, "whistle.resolved").await;
    assert!(acknowledged_notice.sequence < extended_notice.sequence);
    assert!(extended_notice.sequence < resolved_notice.sequence);

    // dispatch recorded both
    let case = dispatch
        .get_case(GetCaseRequest {
            case_id: submitted.case_id.clone(),
        })
        .await
        .expect("case")
        .into_inner();
    let lead = case
        .assignments
        .iter()
        .find(|a| a.assignment_id == assignment_id)
        .expect("lead");
    assert_eq!(lead.status, AssignmentStatus::Resolved as i32);
    assert_eq!(lead.responsible_person, "王主任");
    let kinds: Vec<&str> = case
        .timeline
        .iter()
        .map(|entry| entry.kind.as_str())
        .collect();
    for kind in [
        "case.reported",
        "case.accepted",
        "whistle.issued",
        "whistle.acknowledged",
        "whistle.on_site",
        "whistle.resolved",
    ] {
        assert!(kinds.contains(&kind), "timeline lacks {kind}: {kinds:?}");
    }

    // evaluation counts the whistle, the acknowledgement and the resolution
    let period = (chrono_like_month()).to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let scorecard = evaluation
            .get_scorecard(GetScorecardRequest {
                department_code: "zw-sanitation".into(),
                period: period.clone(),
                ..Default::default()
            })
            .await
            .expect("scorecard")
            .into_inner();
        let counts = scorecard.counts.unwrap_or_default();
        if counts.whistled == 1 && counts.acknowledged == 1 && counts.resolved == 1 {
            assert_eq!(counts.acknowledged_within_limit, 1);
            let indicators = scorecard.indicators.expect("indicators");
            assert_eq!(indicators.report_rate, Some(1.0));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "scorecard never counted the flow: {scorecard:?}\n{}",
            platform.evaluation.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(notices);
    platform.shutdown().await;
}

/// The current month in China time, as evaluation periods are named.
fn chrono_like_month() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs() as i64
        + 8 * 3600;
    // civil-from-days (Howard Hinnant), to avoid a date dependency here
    let days = now.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whistle_flows_end_to_end_on_sqlite() {
    walk_the_whistle(Storage::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whistle_flows_end_to_end_on_postgres() {
    walk_the_whistle(Storage::Postgres {
        admin_url: postgres_admin_url(),
    })
    .await;
}
