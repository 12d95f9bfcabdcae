//! The authorization matrix against the real binaries: every RPC of the four services × every role
//! × a credential inside and outside the region of what the call touches, plus the credentials
//! that must never get in (none, expired, forged signature, unknown key id, revoked), generated
//! from one table below. Each cell asserts the exact outcome: UNAUTHENTICATED, PERMISSION_DENIED,
//! or admitted (any answer of the service itself: OK, INVALID_ARGUMENT, NOT_FOUND, ...).

use prost::Message;
use std::time::Duration;
use whistle_e2e::{Platform, Storage, garbage_report};
use whistle_platform::auth::{Claims, Role, SigningKey};
use whistle_proto::dispatch as dispatch_pb;
use whistle_proto::evaluation as evaluation_pb;
use whistle_proto::gateway as gateway_pb;
use whistle_proto::intake as intake_pb;

/// What the call touches, and so which region a credential needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Nothing regional: every allowed role is admitted anywhere.
    Open,
    /// The demo case / report / grid in 车城路 (community 中岳): outside its region → PERMISSION_DENIED.
    Regional,
    /// A listing: admitted anywhere, filtered to the caller's region (checked separately below).
    Listing,
    /// The department gateway: only department credentials, a person's token is UNAUTHENTICATED.
    Gateway,
}

/// One row of the table: a method, the roles that may call it, its scope and a valid request.
struct Row {
    path: &'static str,
    allowed: &'static [Role],
    scope: Scope,
    request: fn(&Fixture) -> Vec<u8>,
}

/// Ids of real things the requests name.
struct Fixture {
    case_id: String,
    report_id: String,
}

const STREET: &[Role] = &[Role::StreetOperator];
const CASE_READERS: &[Role] = &[
    Role::StreetOperator,
    Role::CommunityWorker,
    Role::CallbackOperator,
    Role::Supervisor,
];
const REPORT_READERS: &[Role] = &[
    Role::Reporter,
    Role::CommunityWorker,
    Role::StreetOperator,
    Role::CallbackOperator,
    Role::Supervisor,
];
const EVERYONE: &[Role] = &Role::ALL;
const NOBODY: &[Role] = &[];

fn table() -> Vec<Row> {
    use Scope::*;
    vec![
        // dispatch
        Row {
            path: "/whistle.dispatch.v1.DispatchService/GetCase",
            allowed: CASE_READERS,
            scope: Regional,
            request: |f| {
                dispatch_pb::GetCaseRequest {
                    case_id: f.case_id.clone(),
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.dispatch.v1.DispatchService/ListCases",
            allowed: CASE_READERS,
            scope: Listing,
            request: |_| dispatch_pb::ListCasesRequest::default().encode_to_vec(),
        },
        Row {
            path: "/whistle.dispatch.v1.DispatchService/AcceptCase",
            allowed: STREET,
            scope: Regional,
            request: |f| {
                dispatch_pb::AcceptCaseRequest {
                    case_id: f.case_id.clone(),
                    ..Default::default()
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.dispatch.v1.DispatchService/RejectCase",
            allowed: STREET,
            scope: Regional,
            request: |f| {
                dispatch_pb::RejectCaseRequest {
                    case_id: f.case_id.clone(),
                    reason: "duplicate".into(),
                    ..Default::default()
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.dispatch.v1.DispatchService/WhistleCase",
            allowed: STREET,
            scope: Regional,
            request: |f| {
                dispatch_pb::WhistleCaseRequest {
                    case_id: f.case_id.clone(),
                    lead_department_code: "zw-sanitation".into(),
                    ..Default::default()
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.dispatch.v1.DispatchService/ResolveLocally",
            allowed: STREET,
            scope: Regional,
            request: |f| {
                dispatch_pb::ResolveLocallyRequest {
                    case_id: f.case_id.clone(),
                    resolution: "the community cleaned it".into(),
                    ..Default::default()
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.dispatch.v1.DispatchService/VerifyCase",
            allowed: &[Role::CommunityWorker],
            scope: Regional,
            request: |f| {
                dispatch_pb::VerifyCaseRequest {
                    case_id: f.case_id.clone(),
                    passed: true,
                    ..Default::default()
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.dispatch.v1.DispatchService/DecideExtension",
            allowed: STREET,
            scope: Regional,
            request: |f| {
                dispatch_pb::DecideExtensionRequest {
                    case_id: f.case_id.clone(),
                    assignment_id: "no-such-assignment".into(),
                    approved: true,
                    note: "ok".into(),
                    ..Default::default()
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.dispatch.v1.DispatchService/DecideReturn",
            allowed: STREET,
            scope: Regional,
            request: |f| {
                dispatch_pb::DecideReturnRequest {
                    case_id: f.case_id.clone(),
                    assignment_id: "no-such-assignment".into(),
                    upheld: true,
                    note: "ok".into(),
                    ..Default::default()
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.dispatch.v1.DispatchService/DeferCase",
            allowed: STREET,
            scope: Regional,
            request: |f| {
                dispatch_pb::DeferCaseRequest {
                    case_id: f.case_id.clone(),
                    reason: "budget".into(),
                    ..Default::default()
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.dispatch.v1.DispatchService/ResumeCase",
            allowed: STREET,
            scope: Regional,
            request: |f| {
                dispatch_pb::ResumeCaseRequest {
                    case_id: f.case_id.clone(),
                    note: "budget came".into(),
                    ..Default::default()
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.dispatch.v1.DispatchService/PutRoute",
            allowed: &[Role::Admin],
            scope: Regional,
            request: |_| {
                dispatch_pb::PutRouteRequest {
                    route: Some(dispatch_pb::Route {
                        route_id: "matrix-route".into(),
                        category_code: "E-01-02".into(),
                        area_code: "420303003".into(),
                        lead_department_code: "zw-sanitation".into(),
                        ..Default::default()
                    }),
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.dispatch.v1.DispatchService/ListRoutes",
            allowed: &[Role::Admin, Role::StreetOperator, Role::Supervisor],
            scope: Open,
            request: |_| dispatch_pb::ListRoutesRequest::default().encode_to_vec(),
        },
        Row {
            path: "/whistle.dispatch.v1.DispatchService/RecordDepartmentAction",
            allowed: &[Role::Service],
            scope: Open,
            request: |_| {
                dispatch_pb::RecordDepartmentActionRequest {
                    action_id: "matrix".into(),
                    assignment_id: "no-such-assignment".into(),
                    department_code: "zw-sanitation".into(),
                    action: None,
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.dispatch.v1.DispatchService/RecordDepartmentActions",
            allowed: &[Role::Service],
            scope: Open,
            request: |_| {
                dispatch_pb::RecordDepartmentActionsRequest {
                    actions: vec![dispatch_pb::ForwardedDepartmentAction {
                        action: Some(dispatch_pb::RecordDepartmentActionRequest {
                            action_id: "matrix".into(),
                            assignment_id: "no-such-assignment".into(),
                            department_code: "zw-sanitation".into(),
                            action: None,
                        }),
                        traceparent: String::new(),
                    }],
                }
                .encode_to_vec()
            },
        },
        // intake
        Row {
            path: "/whistle.intake.v1.IntakeService/SubmitReport",
            allowed: &[Role::Reporter, Role::CommunityWorker],
            scope: Regional,
            request: |_| garbage_report(&uuid::Uuid::now_v7().to_string()).encode_to_vec(),
        },
        Row {
            path: "/whistle.intake.v1.IntakeService/GetReport",
            allowed: REPORT_READERS,
            scope: Regional,
            request: |f| {
                intake_pb::GetReportRequest {
                    report_id: f.report_id.clone(),
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.intake.v1.IntakeService/ListCategories",
            allowed: EVERYONE,
            scope: Open,
            request: |_| intake_pb::ListCategoriesRequest::default().encode_to_vec(),
        },
        Row {
            path: "/whistle.intake.v1.IntakeService/LocateGrid",
            allowed: EVERYONE,
            scope: Open,
            request: |_| {
                intake_pb::LocateGridRequest {
                    lat: 32.6369,
                    lng: 110.7986,
                    ..Default::default()
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.intake.v1.IntakeService/ImportGrids",
            allowed: &[Role::Admin],
            scope: Regional,
            request: |_| {
                intake_pb::ImportGridsRequest {
                    areas: vec![intake_pb::Area {
                        code: "420303003099".into(),
                        ..Default::default()
                    }],
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.intake.v1.IntakeService/ListReports",
            allowed: REPORT_READERS,
            scope: Listing,
            request: |_| intake_pb::ListReportsRequest::default().encode_to_vec(),
        },
        Row {
            path: "/whistle.intake.v1.IntakeService/SplitReport",
            allowed: STREET,
            scope: Regional,
            request: |f| {
                intake_pb::SplitReportRequest {
                    report_id: f.report_id.clone(),
                    reason: "two problems".into(),
                    ..Default::default()
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.intake.v1.IntakeService/AttachEvidence",
            allowed: &[Role::Reporter, Role::CommunityWorker, Role::StreetOperator],
            scope: Regional,
            request: |f| {
                intake_pb::AttachEvidenceRequest {
                    request_id: uuid::Uuid::now_v7().to_string(),
                    case_id: f.case_id.clone(),
                    community_code: "420303003001".into(),
                    ..Default::default()
                }
                .encode_to_vec()
            },
        },
        // evaluation: a rating's region is its rater (the credential's street or community,
        // checked against the rated case inside, after the assignment is found: evaluation's own
        // tests); call-backs within the case's region; cards and rankings within the region read
        Row {
            path: "/whistle.evaluation.v1.EvaluationService/RateCooperation",
            allowed: &[Role::StreetOperator, Role::CommunityWorker],
            scope: Open,
            request: |_| {
                evaluation_pb::RateCooperationRequest {
                    assignment_id: "no-such-assignment".into(),
                    score: 4,
                    ..Default::default()
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.evaluation.v1.EvaluationService/RecordSatisfaction",
            allowed: &[Role::CallbackOperator],
            scope: Regional,
            request: |f| {
                evaluation_pb::RecordSatisfactionRequest {
                    case_id: f.case_id.clone(),
                    callback_id: uuid::Uuid::now_v7().to_string(),
                    result: evaluation_pb::Satisfaction::Satisfied as i32,
                    note: String::new(),
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.evaluation.v1.EvaluationService/GetScorecard",
            allowed: &[Role::Supervisor, Role::StreetOperator],
            scope: Regional,
            request: |_| {
                evaluation_pb::GetScorecardRequest {
                    department_code: "zw-sanitation".into(),
                    period: "2026-11".into(),
                    // 车城路's view of the department
                    region_code: "420303003".into(),
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.evaluation.v1.EvaluationService/GetRanking",
            allowed: &[Role::Supervisor, Role::StreetOperator],
            scope: Regional,
            request: |_| {
                evaluation_pb::GetRankingRequest {
                    period: "2026-11".into(),
                    level: "district".into(),
                    case_region_code: "420303003".into(),
                    ..Default::default()
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.evaluation.v1.EvaluationService/ExplainScore",
            allowed: &[Role::Supervisor],
            scope: Regional,
            request: |_| {
                evaluation_pb::ExplainScoreRequest {
                    department_code: "zw-sanitation".into(),
                    period: "2026-11".into(),
                    ..Default::default()
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.evaluation.v1.EvaluationService/ClosePeriod",
            allowed: &[Role::Admin],
            scope: Open,
            request: |_| {
                // not ended yet on the day this was written: refused as a precondition, admitted
                evaluation_pb::ClosePeriodRequest {
                    period: "2099-01".into(),
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.evaluation.v1.EvaluationService/ReopenPeriod",
            allowed: &[Role::Admin],
            scope: Open,
            request: |_| {
                evaluation_pb::ReopenPeriodRequest {
                    period: "2099-01".into(),
                    reason: "matrix".into(),
                }
                .encode_to_vec()
            },
        },
        Row {
            path: "/whistle.evaluation.v1.EvaluationService/GetPeriodScorecards",
            allowed: &[Role::Supervisor, Role::Admin],
            scope: Open,
            request: |_| {
                evaluation_pb::GetPeriodScorecardsRequest {
                    period: "2026-11".into(),
                }
                .encode_to_vec()
            },
        },
        // the department gateway: department credentials only
        Row {
            path: "/whistle.gateway.v1.DepartmentGateway/Subscribe",
            allowed: NOBODY,
            scope: Gateway,
            request: |_| gateway_pb::SubscribeRequest::default().encode_to_vec(),
        },
        Row {
            path: "/whistle.gateway.v1.DepartmentGateway/Acknowledge",
            allowed: NOBODY,
            scope: Gateway,
            request: |_| gateway_pb::AcknowledgeRequest::default().encode_to_vec(),
        },
        Row {
            path: "/whistle.gateway.v1.DepartmentGateway/CheckIn",
            allowed: NOBODY,
            scope: Gateway,
            request: |_| gateway_pb::CheckInRequest::default().encode_to_vec(),
        },
        Row {
            path: "/whistle.gateway.v1.DepartmentGateway/ReportProgress",
            allowed: NOBODY,
            scope: Gateway,
            request: |_| gateway_pb::ReportProgressRequest::default().encode_to_vec(),
        },
        Row {
            path: "/whistle.gateway.v1.DepartmentGateway/Resolve",
            allowed: NOBODY,
            scope: Gateway,
            request: |_| gateway_pb::ResolveRequest::default().encode_to_vec(),
        },
        Row {
            path: "/whistle.gateway.v1.DepartmentGateway/Return",
            allowed: NOBODY,
            scope: Gateway,
            request: |_| gateway_pb::ReturnRequest::default().encode_to_vec(),
        },
        Row {
            path: "/whistle.gateway.v1.DepartmentGateway/RequestExtension",
            allowed: NOBODY,
            scope: Gateway,
            request: |_| gateway_pb::RequestExtensionRequest::default().encode_to_vec(),
        },
        Row {
            path: "/whistle.gateway.v1.DepartmentGateway/ListAssignments",
            allowed: NOBODY,
            scope: Gateway,
            request: |_| gateway_pb::ListAssignmentsRequest::default().encode_to_vec(),
        },
    ]
}

/// A person of `role` whose region covers the demo case (in) or does not (out).
fn person(role: Role, inside: bool) -> (&'static str, &'static str) {
    match (role, inside) {
        (Role::StreetOperator, true) => ("chechenglu-dispatch", "420303003"),
        (Role::StreetOperator, false) => ("other-street-dispatch", "420303004"),
        (Role::CommunityWorker, true) => ("zhongyue-community", "420303003001"),
        (Role::CommunityWorker, false) => ("jingtan-community", "420303003002"),
        (Role::Admin, true) => ("catalogue-admin", "420300"),
        (Role::Admin, false) => ("other-city-admin", "430300"),
        (Role::Service, _) => ("department-gateway", "420300"),
        (_, true) => ("zhangwan-person", "420303"),
        (_, false) => ("maojian-person", "420302"),
    }
}

/// What a cell must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Unauthenticated,
    Denied,
    Admitted,
}

fn expected(row: &Row, role: Role, inside: bool) -> Expect {
    if row.scope == Scope::Gateway {
        return Expect::Unauthenticated;
    }
    if !row.allowed.contains(&role) {
        return Expect::Denied;
    }
    if row.scope == Scope::Regional && !inside && role != Role::Service {
        return Expect::Denied;
    }
    Expect::Admitted
}

fn outcome(result: &Result<(), tonic::Status>) -> (Expect, String) {
    match result {
        Ok(()) => (Expect::Admitted, "OK".into()),
        Err(status) => {
            let kind = match status.code() {
                tonic::Code::Unauthenticated => Expect::Unauthenticated,
                tonic::Code::PermissionDenied => Expect::Denied,
                _ => Expect::Admitted,
            };
            (kind, format!("{:?}: {}", status.code(), status.message()))
        }
    }
}

/// Calls `path` with an encoded request and an optional bearer token.
async fn call(
    channel: &tonic::transport::Channel,
    path: &'static str,
    body: Vec<u8>,
    token: Option<&str>,
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let mut request = tonic::Request::new(body);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    grpc.unary(
        request,
        http::uri::PathAndQuery::from_static(path),
        whistle_platform::testing::RawCodec,
    )
    .await
    .map(|_| ())
}

fn service_of(platform: &Platform, path: &str) -> String {
    if path.starts_with("/whistle.dispatch.") {
        platform.dispatch.url()
    } else if path.starts_with("/whistle.intake.") {
        platform.intake.url()
    } else if path.starts_with("/whistle.evaluation.") {
        platform.evaluation.url()
    } else {
        platform.gateway.url()
    }
}

fn claims(subject: &str, role: Role, region: &str, jti: &str, exp_offset: i64) -> Claims {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    Claims {
        sub: subject.into(),
        role,
        region: region.into(),
        department: None,
        iss: "whistle".into(),
        aud: "whistle".into(),
        iat: (now - 10) as u64,
        exp: (now + exp_offset) as u64,
        jti: jti.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_every_role_in_and_out_of_region() {
    let mut platform = Platform::prepare(Storage::Sqlite).await;
    // a revoked token id, read by every service at start
    let revoked = platform.dir.path().join("revoked-tokens.txt");
    std::fs::write(&revoked, "# revoked\nrevoked-token-1\n").expect("revoked list");
    for process in [
        &mut platform.intake,
        &mut platform.dispatch,
        &mut platform.gateway,
        &mut platform.evaluation,
    ] {
        let prefix = whistle_platform::config::env_prefix(process.service);
        process.set_env(
            format!("{prefix}__AUTH__REVOKED_TOKENS_FILE"),
            revoked.display().to_string(),
        );
    }
    platform.start_all().await;

    // one real report and case in 中岳社区, 车城路街道
    let mut intake = whistle_proto::intake::intake_service_client::IntakeServiceClient::new(
        platform.channel(&platform.intake),
    );
    let submitted = intake
        .submit_report(garbage_report("matrix-case"))
        .await
        .expect("report")
        .into_inner();
    let mut dispatch = whistle_proto::dispatch::dispatch_service_client::DispatchServiceClient::new(
        platform.channel(&platform.dispatch),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while dispatch
        .get_case(dispatch_pb::GetCaseRequest {
            case_id: submitted.case_id.clone(),
        })
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "case never reached dispatch"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // evaluation knows the case (and so its region) once a call-back on it is refused as "not
    // closed" rather than "not found"
    let callback_operator =
        platform
            .auth
            .token("zhangwan-person", Role::CallbackOperator, "420303");
    let evaluation_url = platform.evaluation.url();
    let evaluation_channel = tonic::transport::Endpoint::from_shared(evaluation_url)
        .expect("url")
        .connect()
        .await
        .expect("connect evaluation");
    loop {
        let answer = call(
            &evaluation_channel,
            "/whistle.evaluation.v1.EvaluationService/RecordSatisfaction",
            evaluation_pb::RecordSatisfactionRequest {
                case_id: submitted.case_id.clone(),
                callback_id: "probe".into(),
                result: evaluation_pb::Satisfaction::Satisfied as i32,
                note: String::new(),
            }
            .encode_to_vec(),
            Some(&callback_operator),
        )
        .await;
        match answer {
            Err(status) if status.code() == tonic::Code::FailedPrecondition => break,
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "evaluation never learned the case: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let fixture = Fixture {
        case_id: submitted.case_id.clone(),
        report_id: submitted.report_id.clone(),
    };

    let key = &platform.auth.key;
    let stranger = SigningKey::generate().expect("key");
    let mut forged_signer = stranger.clone();
    forged_signer.kid = key.kid.clone();
    let bad_credentials: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        (
            "expired",
            Some(
                key.sign(&claims(
                    "chechenglu-dispatch",
                    Role::StreetOperator,
                    "420303003",
                    "e",
                    -3600,
                ))
                .expect("token"),
            ),
        ),
        (
            "forged signature",
            Some(
                forged_signer
                    .sign(&claims(
                        "chechenglu-dispatch",
                        Role::Admin,
                        "420300",
                        "f",
                        3600,
                    ))
                    .expect("token"),
            ),
        ),
        (
            "unknown kid",
            Some(
                stranger
                    .sign(&claims(
                        "chechenglu-dispatch",
                        Role::Admin,
                        "420300",
                        "u",
                        3600,
                    ))
                    .expect("token"),
            ),
        ),
        (
            "revoked",
            Some(
                key.sign(&claims(
                    "chechenglu-dispatch",
                    Role::StreetOperator,
                    "420303003",
                    "revoked-token-1",
                    3600,
                ))
                .expect("token"),
            ),
        ),
        ("not a jwt", Some("garbage".into())),
    ];

    let mut channels = std::collections::BTreeMap::new();
    for url in [
        platform.intake.url(),
        platform.dispatch.url(),
        platform.gateway.url(),
        platform.evaluation.url(),
    ] {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        channels.insert(url, channel);
    }

    let rows = table();
    // the table names every method of the four services, no more
    let descriptors =
        <prost_types::FileDescriptorSet as Message>::decode(whistle_proto::FILE_DESCRIPTOR_SET)
            .expect("descriptors");
    let mut served: Vec<String> = descriptors
        .file
        .iter()
        .flat_map(|file| {
            file.service.iter().flat_map(move |service| {
                service.method.iter().map(move |method| {
                    format!("/{}.{}/{}", file.package(), service.name(), method.name())
                })
            })
        })
        .collect();
    served.sort();
    let mut listed: Vec<String> = rows.iter().map(|row| row.path.to_string()).collect();
    listed.sort();
    assert_eq!(
        listed, served,
        "the matrix must list every RPC exactly once"
    );
    let mut cells = 0usize;
    let mut failures = Vec::new();
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for row in &rows {
        let channel = &channels[&service_of(&platform, row.path)];
        // out of region first: a refused call changes nothing, an admitted one may
        for inside in [false, true] {
            for role in Role::ALL {
                let (subject, region) = person(role, inside);
                let token = platform.auth.token(subject, role, region);
                let result = call(channel, row.path, (row.request)(&fixture), Some(&token)).await;
                let want = expected(row, role, inside);
                let (got, detail) = outcome(&result);
                cells += 1;
                *counts
                    .entry(match want {
                        Expect::Admitted => "admitted",
                        Expect::Denied => "permission denied",
                        Expect::Unauthenticated => "unauthenticated",
                    })
                    .or_default() += 1;
                if got != want {
                    failures.push(format!(
                        "{} as {role} {} region {region}: want {want:?}, got {detail}",
                        row.path,
                        if inside { "in" } else { "out of" }
                    ));
                }
            }
        }
        for (what, token) in &bad_credentials {
            let result = call(channel, row.path, (row.request)(&fixture), token.as_deref()).await;
            cells += 1;
            *counts.entry("unauthenticated").or_default() += 1;
            match &result {
                Err(status) if status.code() == tonic::Code::Unauthenticated => {}
                other => failures.push(format!(
                    "{} with {what}: want UNAUTHENTICATED, got {}",
                    row.path,
                    outcome(other).1
                )),
            }
        }
    }
    // a service identity that is not the gateway may not record department actions
    let impostor = platform.auth.token("evaluation", Role::Service, "420300");
    let result = call(
        &channels[&platform.dispatch.url()],
        "/whistle.dispatch.v1.DispatchService/RecordDepartmentAction",
        dispatch_pb::RecordDepartmentActionRequest {
            action_id: "impostor".into(),
            assignment_id: "no-such-assignment".into(),
            department_code: "zw-sanitation".into(),
            action: None,
        }
        .encode_to_vec(),
        Some(&impostor),
    )
    .await;
    cells += 1;
    assert_eq!(
        result.expect_err("impostor refused").code(),
        tonic::Code::PermissionDenied
    );
    let result = call(
        &channels[&platform.dispatch.url()],
        "/whistle.dispatch.v1.DispatchService/RecordDepartmentActions",
        dispatch_pb::RecordDepartmentActionsRequest { actions: vec![] }.encode_to_vec(),
        Some(&impostor),
    )
    .await;
    cells += 1;
    assert_eq!(
        result
            .expect_err("impostor refused the batched call")
            .code(),
        tonic::Code::PermissionDenied
    );
    // an actor field that names someone else is refused
    let operator = platform
        .auth
        .token("chechenglu-dispatch", Role::StreetOperator, "420303003");
    let result = call(
        &channels[&platform.dispatch.url()],
        "/whistle.dispatch.v1.DispatchService/AcceptCase",
        dispatch_pb::AcceptCaseRequest {
            case_id: fixture.case_id.clone(),
            operator_id: "somebody-else".into(),
        }
        .encode_to_vec(),
        Some(&operator),
    )
    .await;
    cells += 1;
    let refused = result.expect_err("actor mismatch refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(refused.message().contains("operator_id"), "{refused:?}");

    println!(
        "authorization matrix: {} RPCs x {} roles x in/out of region + {} bad credentials each = {cells} cells ({counts:?})",
        rows.len(),
        Role::ALL.len(),
        bad_credentials.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {cells} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // refusals are counted, by reason and service
    let metrics = reqwest_metrics(&platform).await;
    assert!(
        metrics.contains("whistle_auth_refusals_total"),
        "no refusal counter in:\n{metrics}"
    );
    platform.shutdown().await;
}

/// The dispatch admin port's /metrics text.
async fn reqwest_metrics(platform: &Platform) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(platform.dispatch.admin_address)
        .await
        .expect("admin port");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("response");
    text
}

#[test]
fn a_service_with_auth_on_and_no_key_exits_64_naming_the_setting() {
    let output = std::process::Command::new(whistle_e2e::binary("dispatch"))
        .env("WHISTLE_DISPATCH__ADMIN__LISTEN", "127.0.0.1:0")
        .env("WHISTLE_DISPATCH__GRPC__LISTEN", "127.0.0.1:0")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("auth.keys"), "{stderr}");
}
