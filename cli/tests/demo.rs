//! `whistle up --demo` in-process: the platform on free ports with SQLite and a private NATS in a
//! temporary folder, and the five cases of the demo scenario played to the end: the fourth's
//! department does not report, goes overdue and is escalated to district supervision within
//! seconds; the fifth gets an approved extension.

use tokio_util::sync::CancellationToken;
use whistle::client::Endpoints;
use whistle::local::{LocalOptions, LocalPlatform};
use whistle_proto::dispatch::GetCaseRequest;
use whistle_proto::types::{AssignmentFlag, AssignmentStatus, CaseStatus, ReturnDecision};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_scenario_plays_to_the_end() {
    let folder = tempfile::tempdir().expect("tempdir");
    let mut platform = LocalPlatform::start(&LocalOptions {
        data_dir: folder.path().join("data"),
        intake_port: 0,
        dispatch_port: 0,
        gateway_port: 0,
        evaluation_port: 0,
        admin_ports: [0; 4],
        open311_port: 0,
        ..LocalOptions::default()
    })
    .await
    .expect("platform");
    platform.wait_ready().await.expect("ready");
    let endpoints = Endpoints {
        intake: format!("http://{}", platform.intake),
        dispatch: format!("http://{}", platform.dispatch),
        gateway: format!("http://{}", platform.gateway),
        evaluation: format!("http://{}", platform.evaluation),
    };
    let tokens = platform.credentials().await.expect("credentials");
    assert!(folder.path().join("data/demo-credentials.json").is_file());
    assert!(
        folder.path().join("data/nats").is_dir(),
        "the JetStream store lives in the data folder"
    );
    // intake's Open311 front door is up, with the demo key written for curl
    let key = std::fs::read_to_string(folder.path().join("data/open311-api-key")).expect("key");
    assert_eq!(key.trim().len(), 32, "{key:?}");
    let services = open311_get(platform.open311, "/services.json").await;
    assert!(services.starts_with("HTTP/1.1 200"), "{services}");
    assert!(
        services.contains("\"service_code\":\"E-01-03\""),
        "{services}"
    );

    let started = std::time::Instant::now();
    let outcome = whistle::demo::play(&endpoints, tokens).await.expect("demo");
    assert_eq!(outcome.case_ids.len(), 5);
    let mut dispatch = endpoints.dispatch().await.expect("dispatch");
    for case_id in &outcome.case_ids {
        let case = dispatch
            .get_case(GetCaseRequest {
                case_id: case_id.clone(),
            })
            .await
            .expect("case")
            .into_inner();
        assert_eq!(
            case.status,
            CaseStatus::Closed as i32,
            "case {case_id}: {case:?}"
        );
    }
    // the property case: the traffic police returned it, the property company was whistled instead,
    // and the work was redone once after a failed verification
    let property = dispatch
        .get_case(GetCaseRequest {
            case_id: outcome.case_ids[2].clone(),
        })
        .await
        .expect("case")
        .into_inner();
    let returned: Vec<&str> = property
        .assignments
        .iter()
        .filter(|a| a.status == AssignmentStatus::Returned as i32)
        .map(|a| a.department_code.as_str())
        .collect();
    assert_eq!(returned, vec!["zw-traffic-police"]);
    let police = property
        .assignments
        .iter()
        .find(|a| a.department_code == "zw-traffic-police")
        .expect("police");
    assert_eq!(
        police.return_decision,
        ReturnDecision::Upheld as i32,
        "the street upheld the return"
    );
    assert!(
        property
            .timeline
            .iter()
            .any(|entry| entry.kind == "case.reopened")
    );
    let timeline_of = |case: &whistle_proto::dispatch::Case| -> Vec<String> {
        case.timeline
            .iter()
            .map(|entry| entry.kind.clone())
            .collect()
    };

    // the vendors case: nobody reported, so it went overdue and was escalated to 督办
    let vendors = dispatch
        .get_case(GetCaseRequest {
            case_id: outcome.case_ids[3].clone(),
        })
        .await
        .expect("case")
        .into_inner();
    let enforcement = &vendors.assignments[0];
    assert_eq!(enforcement.department_code, "zw-enforcement");
    for flag in [AssignmentFlag::AckOverdue, AssignmentFlag::Escalated] {
        assert!(enforcement.flags.contains(&(flag as i32)), "{flag:?}");
    }
    let kinds = timeline_of(&vendors);
    let position = |kind: &str| kinds.iter().position(|seen| seen == kind);
    assert!(
        position("whistle.overdue") < position("case.escalated")
            && position("case.escalated") < position("whistle.acknowledged"),
        "{kinds:?}"
    );
    assert_eq!(
        outcome
            .supervision_notice
            .as_ref()
            .map(|notice| notice.0.as_str()),
        Some("case.escalated"),
        "district supervision's stream carried the escalation"
    );
    // the manhole case: an approved extension
    let manhole = dispatch
        .get_case(GetCaseRequest {
            case_id: outcome.case_ids[4].clone(),
        })
        .await
        .expect("case")
        .into_inner();
    let kinds = timeline_of(&manhole);
    assert!(
        kinds.contains(&"whistle.extension_requested".to_string())
            && kinds.contains(&"whistle.extended".to_string()),
        "{kinds:?}"
    );
    assert!(
        manhole.assignments[0]
            .flags
            .contains(&(AssignmentFlag::Extended as i32))
    );
    println!("the demo took {:?}", started.elapsed());

    // every department that worked has a composite; the sanitation office's is a perfect record
    for department in [
        "zw-sanitation",
        "zw-enforcement",
        "pm-zhongyue",
        "zw-fire-rescue",
        "zw-housing",
        "pm-jinding",
    ] {
        let composite = outcome.scorecards.get(department).copied().flatten();
        assert!(
            composite.is_some_and(|value| (0.0..=100.0).contains(&value)),
            "{department}: {composite:?}"
        );
    }
    assert!(
        outcome.scorecards["zw-sanitation"].expect("composite")
            > outcome.scorecards["zw-housing"].expect("composite"),
        "{:?}",
        outcome.scorecards
    );

    // the traffic police returned the 金鼎凤凰城 case in time and the street upheld it: neutral,
    // only 报到率 (1/1) is left, so 100; the enforcement bureau let the fourth case's acknowledge
    // clock run out (超期, then 督办): 报到率 1/2 pulls it below the sanitation office's 100
    assert_eq!(outcome.scorecards["zw-traffic-police"], Some(100.0));
    assert!(
        outcome.scorecards["zw-enforcement"].expect("composite")
            < outcome.scorecards["zw-sanitation"].expect("composite"),
        "{:?}",
        outcome.scorecards
    );

    let stop = CancellationToken::new();
    stop.cancel();
    platform.run_until(stop).await.expect("clean stop");
}

/// A plain HTTP/1.1 GET, the whole answer as text.
async fn open311_get(address: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("open311");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    String::from_utf8(answer).expect("utf-8")
}
