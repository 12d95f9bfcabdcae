//! The per-caller rate limit of the platform's serving stack, on the gateway: a caller over
//! `grpc.rate_burst` calls at once gets RESOURCE_EXHAUSTED with a retry hint; another caller (its
//! own credential) is not held back by it.

use std::sync::Arc;
use tonic::{Code, Request};
use whistle_department_gateway::GatewayConfig;
use whistle_platform::SystemClock;
use whistle_platform::local_nats::{LocalNatsServer, free_port};
use whistle_platform::testing::{TestBed, serve};
use whistle_proto::gateway::ListAssignmentsRequest;
use whistle_proto::gateway::department_gateway_client::DepartmentGatewayClient;

fn with_token(token: &str) -> Request<ListAssignmentsRequest> {
    let mut request = Request::new(ListAssignmentsRequest::default());
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_rate_is_told_to_retry_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = LocalNatsServer::start(&dir.path().join("nats")).expect("nats-server");
    let mut config = GatewayConfig::default();
    config.database.url = format!(
        "sqlite://{}",
        dir.path().join("department-gateway.sqlite").display()
    );
    config.nats.url = nats.url();
    config.dispatch.url = format!("http://127.0.0.1:{}", free_port().expect("port"));
    config.catalogue.file = Some(TestBed::demo_catalogue());
    // the gateway's own department tokens are what this test is about; people's tokens are not
    config.auth.enabled = false;
    // one call a second sustained, three at once
    config.grpc.rate_per_second = 1;
    config.grpc.rate_burst = 3;
    let served = serve(|listener, shutdown| {
        whistle_department_gateway::run(config, listener, Arc::new(SystemClock), shutdown)
    })
    .await;
    served.wait_listening().await;
    let mut client = DepartmentGatewayClient::connect(served.url())
        .await
        .expect("connect");

    for _ in 0..3 {
        let status = client
            .list_assignments(with_token("caller-a"))
            .await
            .expect_err("unknown token");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let limited = client
        .list_assignments(with_token("caller-a"))
        .await
        .expect_err("over the rate");
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    assert!(limited.message().contains("retry after"), "{limited:?}");
    let retry_ms: u64 = limited
        .metadata()
        .get("retry-after-ms")
        .expect("retry hint")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("milliseconds");
    assert!((1..=1000).contains(&retry_ms), "{retry_ms}");

    // another caller on the same connection has its own allowance
    let other = client
        .list_assignments(with_token("caller-b"))
        .await
        .expect_err("unknown token");
    assert_eq!(other.code(), Code::Unauthenticated, "{other:?}");
    served.stop().await;
}
