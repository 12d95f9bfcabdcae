//! Prometheus `/metrics` on each service's admin port: every counter is there at 0 before its first
//! event, and after a case flows through the four real binaries every metric that a dashboard in
//! deploy/grafana queries is served by at least one of them.

use futures::StreamExt;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use whistle_e2e::{Platform, Storage};
use whistle_proto::gateway::department_gateway_client::DepartmentGatewayClient;
use whistle_proto::gateway::{AcknowledgeRequest, Notice, SubscribeRequest};
use whistle_proto::intake::SubmitReportRequest;
use whistle_proto::intake::intake_service_client::IntakeServiceClient;
use whistle_proto::types::{Channel, Place, Severity};

/// GET `path` on the admin port: (status code, body).
async fn get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|error| panic!("admin port {address}: {error}"));
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The metric names of a Prometheus text exposition (`# TYPE` lines and samples).
fn served_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Removes `{…}` label matchers and `by (…)` / `without (…)` groupings, which name labels.
fn strip_labels(expression: &str) -> String {
    let mut text = String::new();
    let mut depth = 0;
    for character in expression.chars() {
        match character {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ if depth == 0 => text.push(character),
            _ => {}
        }
    }
    for keyword in ["by (", "without ("] {
        while let Some(start) = text.find(keyword) {
            let end = text[start..]
                .find(')')
                .map_or(text.len(), |end| start + end + 1);
            text.replace_range(start..end, " ");
        }
    }
    text
}

/// Every whistle_* and rpc_* metric name a dashboard's queries use, with the dashboard's file.
fn dashboard_metric_names() -> BTreeSet<(String, String)> {
    fn expressions(value: &serde_json::Value, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(fields) => {
                for (key, value) in fields {
                    match (key.as_str(), value) {
                        ("expr" | "query", serde_json::Value::String(text)) => {
                            found.push(text.clone())
                        }
                        _ => expressions(value, found),
                    }
                }
            }
            serde_json::Value::Array(items) => {
                items.iter().for_each(|item| expressions(item, found))
            }
            _ => {}
        }
    }
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana");
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(&folder).expect("deploy/grafana") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|extension| extension.to_str()) != Some("json") {
            continue;
        }
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read"))
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        let mut found = Vec::new();
        expressions(&dashboard, &mut found);
        let file = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        for expression in found {
            for token in strip_labels(&expression)
                .split(|character: char| !(character.is_ascii_alphanumeric() || character == '_'))
            {
                if token.starts_with("whistle_") || token.starts_with("rpc_") {
                    names.insert((file.clone(), token.to_string()));
                }
            }
        }
    }
    names
}

async fn scrape_all(platform: &Platform) -> BTreeSet<String> {
    let mut served = BTreeSet::new();
    for process in [
        &platform.intake,
        &platform.dispatch,
        &platform.gateway,
        &platform.evaluation,
    ] {
        let (status, body) = get(process.admin_address, "/metrics").await;
        assert_eq!(status, 200, "{} /metrics", process.service);
        served.extend(served_names(&body));
    }
    served
}

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

#[test]
fn dashboard_queries_are_parsed() {
    assert_eq!(
        strip_labels(
            r#"sum by (service_name, rpc_method) (rate(rpc_server_duration_milliseconds_count{rpc_grpc_status_code!="0"}[5m]))"#
        )
        .split(|character: char| !(character.is_ascii_alphanumeric() || character == '_'))
        .filter(|token| token.starts_with("rpc_"))
        .collect::<Vec<_>>(),
        ["rpc_server_duration_milliseconds_count"]
    );
    assert!(
        !dashboard_metric_names().is_empty(),
        "the dashboards query nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_a_dashboard_queries_is_served() {
    let platform = Platform::start(Storage::Sqlite).await;
    for process in [
        &platform.intake,
        &platform.dispatch,
        &platform.gateway,
        &platform.evaluation,
    ] {
        assert_eq!(get(process.admin_address, "/healthz").await.0, 200);
        // SERVING was seen over gRPC; the admin port says the same
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while get(process.admin_address, "/readyz").await.0 != 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} /readyz",
                process.service
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // before any event, every counter a dashboard queries is there (at 0), so its panel shows 0
    let expected = dashboard_metric_names();
    let before = scrape_all(&platform).await;
    for (dashboard, name) in &expected {
        if name.ends_with("_total") {
            assert!(
                before.contains(name),
                "{dashboard} queries {name}, which no service serves before its first event"
            );
        }
    }
    for counter in [
        "whistle_inbox_duplicates_total",
        "whistle_inbox_rejected_total",
        "whistle_inbox_skipped_total",
        "whistle_outbox_publish_failures_total",
        "whistle_outbox_table_reads_total",
        "whistle_outbox_parked_total",
        "whistle_consumer_redeliveries_total",
    ] {
        assert!(before.contains(counter), "{counter} is not at 0 at start");
    }

    // a case: report, whistle, acknowledgement
    let tokens = platform.credentials().await;
    let fire = tokens.get("zw-fire-rescue").expect("token").clone();
    let mut gateway = DepartmentGatewayClient::connect(platform.gateway.url())
        .await
        .expect("gateway");
    let mut subscribe = tonic::Request::new(SubscribeRequest { after_sequence: 0 });
    subscribe.metadata_mut().insert(
        "authorization",
        format!("Bearer {fire}").parse().expect("header"),
    );
    let mut notices = gateway
        .subscribe(subscribe)
        .await
        .expect("subscribe")
        .into_inner();
    let mut intake = IntakeServiceClient::new(platform.auth.channel(&platform.intake.url()));
    intake
        .submit_report(SubmitReportRequest {
            request_id: "metrics-1".into(),
            channel: Channel::Hotline12345 as i32,
            reporter_id: "hotline-operator-3".into(),
            category_code: "E-05-07".into(),
            severity: Severity::Emergency as i32,
            description: "半山尚小区消防通道被私家车堵塞".into(),
            place: Some(Place {
                grid_code: "420303003003001".into(),
                lat: 32.6402,
                lng: 110.8013,
                address: "半山尚小区".into(),
            }),
            attachments: vec![],
            observed_at: None,
            ..Default::default()
        })
        .await
        .expect("submit");
    let issued = next_notice(&mut notices, "whistle.issued").await;
    let mut acknowledge = tonic::Request::new(AcknowledgeRequest {
        assignment_id: issued.assignment_id.clone(),
        responsible_person: "消防大队 赵站长".into(),
        ..Default::default()
    });
    acknowledge.metadata_mut().insert(
        "authorization",
        format!("Bearer {fire}").parse().expect("header"),
    );
    gateway.acknowledge(acknowledge).await.expect("acknowledge");
    next_notice(&mut notices, "whistle.acknowledged").await;

    // every name a dashboard queries is served, polled until evaluation applied the events
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let served = scrape_all(&platform).await;
        let missing: Vec<&(String, String)> = expected
            .iter()
            .filter(|(_, name)| !served.contains(name))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queried by a dashboard but served by no service: {missing:?}\nserved: {served:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // the gRPC series carry the semantic-convention labels the dashboards group by
    let (_, intake_metrics) = get(platform.intake.admin_address, "/metrics").await;
    assert!(
        intake_metrics.lines().any(|line| line
            .starts_with("rpc_server_duration_milliseconds_count{")
            && line.contains(r#"rpc_method="SubmitReport""#)
            && line.contains(r#"rpc_service="whistle.intake.v1.IntakeService""#)
            && line.contains(r#"rpc_grpc_status_code="0""#)),
        "{intake_metrics}"
    );
    platform.shutdown().await;
}
