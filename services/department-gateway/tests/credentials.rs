//! Department tokens with expiry and revocation, against the gateway running in-process on a real
//! nats-server and SQLite: an expired and a revoked token are UNAUTHENTICATED with a message saying
//! which, a revoked token that was just used (and so is remembered) stops working within the
//! cache's bound, and a rotation leaves the old token a grace period only.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Request};
use whistle_department_gateway::GatewayConfig;
use whistle_department_gateway::credentials::{self, CREDENTIAL_CACHE_TTL};
use whistle_platform::clock::{Clock, SystemClock, to_millis};
use whistle_platform::local_nats::{LocalNatsServer, free_port};
use whistle_platform::testing::{TestBed, serve};
use whistle_proto::gateway::ListAssignmentsRequest;
use whistle_proto::gateway::department_gateway_client::DepartmentGatewayClient;

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    request
}

async fn call(
    client: &mut DepartmentGatewayClient<Channel>,
    token: &str,
) -> Result<(), tonic::Status> {
    client
        .list_assignments(authed(ListAssignmentsRequest::default(), token))
        .await
        .map(|_| ())
}

fn now_ms() -> i64 {
    to_millis(SystemClock.now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_revoked_tokens_are_refused_saying_which() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = LocalNatsServer::start(&dir.path().join("nats")).expect("nats-server");
    let mut config = GatewayConfig::default();
    let database_url = format!(
        "sqlite://{}",
        dir.path().join("department-gateway.sqlite").display()
    );
    config.database.url = database_url.clone();
    config.nats.url = nats.url();
    config.dispatch.url = format!("http://127.0.0.1:{}", free_port().expect("port"));
    config.catalogue.file = Some(TestBed::demo_catalogue());
    // the gateway's own department tokens are what this test is about; people's tokens are not
    config.auth.enabled = false;
    let served = serve(|listener, shutdown| {
        whistle_department_gateway::run(config, listener, Arc::new(SystemClock), shutdown)
    })
    .await;
    served.wait_listening().await;
    let mut client = DepartmentGatewayClient::connect(served.url())
        .await
        .expect("connect");
    // the gateway migrated and loaded the registry before it listened
    let db = sea_orm::Database::connect(database_url.as_str())
        .await
        .expect("database");

    // a live token works; one that expired is refused as expired
    let live = credentials::issue_token(&db, "zw-sanitation", None, now_ms())
        .await
        .expect("issue");
    call(&mut client, &live).await.expect("live token");
    let expired = credentials::issue_token(&db, "zw-sanitation", Some(now_ms() - 1_000), now_ms())
        .await
        .expect("issue");
    let refused = call(&mut client, &expired).await.expect_err("expired");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().contains("token expired at"),
        "{refused:?}"
    );

    // revoking the live token (just used, so remembered): refused within the cache's bound
    let revoked_at = Instant::now();
    let count = credentials::revoke(&db, "zw-sanitation", None, now_ms())
        .await
        .expect("revoke");
    assert_eq!(count, 2, "both tokens of the department");
    let refused = loop {
        match call(&mut client, &live).await {
            Ok(()) => {
                assert!(
                    revoked_at.elapsed() <= CREDENTIAL_CACHE_TTL + Duration::from_secs(1),
                    "a revoked token still worked {:?} after revocation",
                    revoked_at.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => break status,
        }
    };
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().contains("token revoked at"),
        "{refused:?}"
    );

    // a rotation: the new token works, the old one only until its grace period ends
    let old = credentials::issue_token(&db, "zw-housing", None, now_ms())
        .await
        .expect("issue");
    let new = credentials::issue_token(&db, "zw-housing", None, now_ms())
        .await
        .expect("issue");
    let grace_ends = now_ms() + 60_000;
    let shortened = credentials::expire_live_tokens(
        &db,
        "zw-housing",
        grace_ends,
        &whistle_department_gateway::domain::token_digest(&new),
    )
    .await
    .expect("rotate");
    assert_eq!(shortened, 1);
    call(&mut client, &old)
        .await
        .expect("old token in its grace period");
    call(&mut client, &new).await.expect("new token");
    let listed = credentials::list(&db).await.expect("list");
    let housing: Vec<_> = listed
        .iter()
        .filter(|credential| credential.department_code == "zw-housing")
        .collect();
    assert_eq!(housing.len(), 2);
    assert!(
        housing
            .iter()
            .any(|credential| credential.expires_at_ms == Some(grace_ends))
    );
    assert!(
        housing
            .iter()
            .any(|credential| credential.expires_at_ms.is_none())
    );

    served.stop().await;
}
