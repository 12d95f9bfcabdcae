//! Two streets of one district and a street of another, end to end: an operator of one street
//! neither sees nor acts on the other's cases, a district supervisor sees both streets of its
//! district and not the other district's, a city supervisor sees all, and the department notices
//! carry the street of their case.

use futures::StreamExt;
use std::collections::BTreeSet;
use std::time::Duration;
use whistle_e2e::{AuthedChannel, Platform, Storage, with_token};
use whistle_platform::auth::{BearerLayer, Role};
use whistle_proto::dispatch::dispatch_service_client::DispatchServiceClient;
use whistle_proto::dispatch::{AcceptCaseRequest, GetCaseRequest, ListCasesRequest};
use whistle_proto::gateway::SubscribeRequest;
use whistle_proto::gateway::department_gateway_client::DepartmentGatewayClient;
use whistle_proto::intake::SubmitReportRequest;
use whistle_proto::intake::intake_service_client::IntakeServiceClient;
use whistle_proto::types::{Channel, Place, Severity};

/// A client of dispatch as one person.
fn dispatch_as(
    platform: &Platform,
    subject: &str,
    role: Role,
    region: &str,
) -> DispatchServiceClient<whistle_platform::auth::WithBearer<tonic::transport::Channel>> {
    let token = platform.auth.token(subject, role, region);
    let channel = tonic::transport::Endpoint::from_shared(platform.dispatch.url())
        .expect("url")
        .connect_lazy();
    DispatchServiceClient::new(tower::Layer::layer(&BearerLayer::new(token), channel))
}

fn garbage_at(
    request_id: &str,
    grid: &str,
    lat: f64,
    lng: f64,
    address: &str,
) -> SubmitReportRequest {
    SubmitReportRequest {
        request_id: request_id.into(),
        channel: Channel::GridPatrol as i32,
        category_code: "E-01-03".into(),
        severity: Severity::Urgent as i32,
        description: "垃圾满溢".into(),
        place: Some(Place {
            grid_code: grid.into(),
            lat,
            lng,
            address: address.into(),
        }),
        ..Default::default()
    }
}

async fn listed(
    client: &mut DispatchServiceClient<
        whistle_platform::auth::WithBearer<tonic::transport::Channel>,
    >,
) -> BTreeSet<String> {
    client
        .list_cases(ListCasesRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("list cases")
        .into_inner()
        .cases
        .into_iter()
        .map(|case| case.case_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streets_and_districts_are_isolated_on_sqlite() {
    streets_and_districts_are_isolated(Storage::Sqlite).await;
}

/// The region filters are SQL (intake's report list): PostgreSQL too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streets_and_districts_are_isolated_on_postgres() {
    streets_and_districts_are_isolated(Storage::Postgres {
        admin_url: whistle_e2e::postgres_admin_url(),
    })
    .await;
}

async fn streets_and_districts_are_isolated(storage: Storage) {
    let platform = Platform::start(storage).await;
    let city_reporter = platform.auth.token("hotline-7", Role::Reporter, "420300");
    let mut intake: IntakeServiceClient<AuthedChannel> =
        IntakeServiceClient::new(tower::Layer::layer(
            &BearerLayer::new(city_reporter),
            tonic::transport::Endpoint::from_shared(platform.intake.url())
                .expect("url")
                .connect_lazy(),
        ));
    // 车城路 (张湾区), 汉江路 (张湾区), 武当路 (茅箭区)
    let mut case_ids = Vec::new();
    let mut report_ids = Vec::new();
    for (key, grid, lat, lng) in [
        ("chechenglu", "420303003001001", 32.6369, 110.7986),
        ("hanjianglu", "420303004001001", 32.6375, 110.7775),
        ("wudanglu", "420302001001001", 32.6375, 110.8375),
    ] {
        let submitted = intake
            .submit_report(garbage_at(key, grid, lat, lng, key))
            .await
            .unwrap_or_else(|status| panic!("report in {key}: {status:?}"))
            .into_inner();
        case_ids.push(submitted.case_id);
        report_ids.push(submitted.report_id);
    }
    let [chechenglu, hanjianglu, wudanglu]: [String; 3] = case_ids.try_into().expect("three");

    // intake too: another street's report is neither readable nor listed
    let hanjianglu_intake_token =
        platform
            .auth
            .token("hanjianglu-dispatch", Role::StreetOperator, "420303004");
    let mut hanjianglu_intake = IntakeServiceClient::new(tower::Layer::layer(
        &BearerLayer::new(hanjianglu_intake_token),
        tonic::transport::Endpoint::from_shared(platform.intake.url())
            .expect("url")
            .connect_lazy(),
    ));
    let denied = hanjianglu_intake
        .get_report(whistle_proto::intake::GetReportRequest {
            report_id: report_ids[0].clone(),
        })
        .await
        .expect_err("another street's report");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    hanjianglu_intake
        .get_report(whistle_proto::intake::GetReportRequest {
            report_id: report_ids[1].clone(),
        })
        .await
        .expect("its own street's report");
    let listed_reports: BTreeSet<String> = hanjianglu_intake
        .list_reports(whistle_proto::intake::ListReportsRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("list reports")
        .into_inner()
        .reports
        .into_iter()
        .map(|report| report.report_id)
        .collect();
    assert!(
        listed_reports.contains(&report_ids[1]),
        "{listed_reports:?}"
    );
    assert!(
        !listed_reports.contains(&report_ids[0]) && !listed_reports.contains(&report_ids[2]),
        "{listed_reports:?}"
    );
    // the region is chosen by the query, not after paging: a page of one holds the street's own
    // report although another street's report is newer
    let first_page = hanjianglu_intake
        .list_reports(whistle_proto::intake::ListReportsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("a page of one")
        .into_inner();
    let first: Vec<String> = first_page
        .reports
        .into_iter()
        .map(|report| report.report_id)
        .collect();
    assert_eq!(first, vec![report_ids[1].clone()]);

    let mut city = dispatch_as(&platform, "shiyan-supervisor", Role::Supervisor, "420300");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = listed(&mut city).await;
        if [&chechenglu, &hanjianglu, &wudanglu]
            .iter()
            .all(|id| seen.contains(*id))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the three cases never reached dispatch; seen {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // a street operator sees and acts on its own street only
    let mut chechenglu_operator = dispatch_as(
        &platform,
        "chechenglu-dispatch",
        Role::StreetOperator,
        "420303003",
    );
    let mut hanjianglu_operator = dispatch_as(
        &platform,
        "hanjianglu-dispatch",
        Role::StreetOperator,
        "420303004",
    );
    let seen = listed(&mut chechenglu_operator).await;
    assert!(seen.contains(&chechenglu), "{seen:?}");
    assert!(
        !seen.contains(&hanjianglu) && !seen.contains(&wudanglu),
        "{seen:?}"
    );
    let seen = listed(&mut hanjianglu_operator).await;
    assert!(seen.contains(&hanjianglu), "{seen:?}");
    assert!(
        !seen.contains(&chechenglu) && !seen.contains(&wudanglu),
        "{seen:?}"
    );
    for (client, foreign) in [
        (chechenglu_operator.clone(), &hanjianglu),
        (chechenglu_operator.clone(), &wudanglu),
        (hanjianglu_operator.clone(), &chechenglu),
    ] {
        let mut client = client;
        let read = client
            .get_case(GetCaseRequest {
                case_id: foreign.clone(),
            })
            .await
            .expect_err("another street's case is not readable");
        assert_eq!(read.code(), tonic::Code::PermissionDenied, "{read:?}");
        let act = client
            .accept_case(AcceptCaseRequest {
                case_id: foreign.clone(),
                ..Default::default()
            })
            .await
            .expect_err("another street's case is not actionable");
        assert_eq!(act.code(), tonic::Code::PermissionDenied, "{act:?}");
        assert!(act.message().contains("outside"), "{act:?}");
    }
    chechenglu_operator
        .get_case(GetCaseRequest {
            case_id: chechenglu.clone(),
        })
        .await
        .expect("its own case is readable");

    // a district supervisor sees both streets of 张湾区, not 茅箭区
    let mut zhangwan = dispatch_as(&platform, "zhangwan-supervisor", Role::Supervisor, "420303");
    let seen = listed(&mut zhangwan).await;
    assert!(
        seen.contains(&chechenglu) && seen.contains(&hanjianglu),
        "{seen:?}"
    );
    assert!(!seen.contains(&wudanglu), "{seen:?}");
    let denied = zhangwan
        .get_case(GetCaseRequest {
            case_id: wudanglu.clone(),
        })
        .await
        .expect_err("another district's case");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    // and may read but not act
    let denied = zhangwan
        .accept_case(AcceptCaseRequest {
            case_id: hanjianglu.clone(),
            ..Default::default()
        })
        .await
        .expect_err("supervisors do not act");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    // 茅箭区's supervisor sees its own street only
    let mut maojian = dispatch_as(&platform, "maojian-supervisor", Role::Supervisor, "420302");
    let seen = listed(&mut maojian).await;
    assert!(seen.contains(&wudanglu), "{seen:?}");
    assert!(
        !seen.contains(&chechenglu) && !seen.contains(&hanjianglu),
        "{seen:?}"
    );

    // department notices carry the street of their case
    let tokens = platform.credentials().await;
    let mut gateway = DepartmentGatewayClient::connect(platform.gateway.url())
        .await
        .expect("gateway");
    for (department, expected) in [
        (
            "zw-sanitation",
            vec![(&chechenglu, "chechenglu"), (&hanjianglu, "hanjianglu")],
        ),
        ("mj-sanitation", vec![(&wudanglu, "wudanglu")]),
    ] {
        let token = tokens.get(department).expect("department token");
        let mut notices = gateway
            .subscribe(with_token(SubscribeRequest { after_sequence: 0 }, token))
            .await
            .expect("subscribe")
            .into_inner();
        let mut pending: Vec<(&String, &str)> = expected.clone();
        while !pending.is_empty() {
            let notice = tokio::time::timeout(Duration::from_secs(30), notices.next())
                .await
                .unwrap_or_else(|_| panic!("{department}: no notice for {pending:?} within 30s"))
                .expect("stream open")
                .expect("notice");
            if notice.kind != "whistle.issued" {
                continue;
            }
            // whistle.v1.<city>.<district>.<street>.<department>.<event>
            let tokens: Vec<&str> = notice.subject.split('.').collect();
            assert_eq!(
                tokens.get(5).copied(),
                Some(department),
                "{}",
                notice.subject
            );
            let foreign = [&chechenglu, &hanjianglu, &wudanglu]
                .into_iter()
                .any(|id| *id == notice.case_id)
                && !expected.iter().any(|(id, _)| **id == notice.case_id);
            assert!(!foreign, "{department} was whistled for {}", notice.case_id);
            if let Some(position) = pending.iter().position(|(id, _)| **id == notice.case_id) {
                let (_, street) = pending.remove(position);
                assert_eq!(tokens.get(4).copied(), Some(street), "{}", notice.subject);
            }
        }
    }
    platform.shutdown().await;
}
