//! While PostgreSQL is unreachable, calls fail fast with UNAVAILABLE instead of hanging until the
//! caller's deadline, readiness says NOT_SERVING while liveness stays SERVING, and everything works
//! again when the database returns. The outage is made by a TCP relay between intake (the real
//! binary) and the real PostgreSQL server, which the test cuts and restores.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use whistle_e2e::{Platform, Storage, garbage_report, postgres_admin_url, wait_serving};
use whistle_proto::intake::SubmitReportRequest;
use whistle_proto::intake::intake_service_client::IntakeServiceClient;

/// Forwards every connection on `address` to PostgreSQL until dropped; dropping it closes the
/// listener and every relayed connection, as a network partition would.
struct Relay {
    connections: JoinSet<()>,
}

impl Relay {
    async fn start(address: SocketAddr, upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind(address).await.expect("relay listens");
        let mut connections = JoinSet::new();
        connections.spawn(async move {
            let mut relayed = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                relayed.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Relay { connections }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.connections.abort_all();
    }
}

fn report(request_id: &str) -> tonic::Request<SubmitReportRequest> {
    let mut request = tonic::Request::new(garbage_report(request_id));
    // far beyond how fast an outage must be reported
    request.set_timeout(Duration::from_secs(20));
    request
}

async fn readiness(health: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_fast_while_the_database_is_down() {
    let admin_url = postgres_admin_url();
    let mut platform = Platform::prepare(Storage::Postgres {
        admin_url: admin_url.clone(),
    })
    .await;
    let upstream: SocketAddr = {
        let authority = admin_url
            .split_once('@')
            .map_or(admin_url.as_str(), |(_, rest)| rest);
        let host_port = authority.split('/').next().expect("host:port");
        tokio::net::lookup_host(host_port)
            .await
            .expect("postgres address")
            .next()
            .expect("an address")
    };
    let relay_address: SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        probe.local_addr().expect("address")
    };
    let through_relay = platform
        .intake
        .database_url()
        .replace(&upstream.to_string(), &relay_address.to_string())
        .replace("localhost:5432", &relay_address.to_string());
    assert!(
        through_relay.contains(&relay_address.to_string()),
        "{through_relay}"
    );
    platform
        .intake
        .set_env("WHISTLE_INTAKE__DATABASE__URL", through_relay);
    platform
        .intake
        .set_env("WHISTLE_INTAKE__DATABASE__ACQUIRE_TIMEOUT_MS", "2000");

    let relay = Relay::start(relay_address, upstream).await;
    platform.intake.start();
    wait_serving(&platform.intake).await;
    let channel = tonic::transport::Endpoint::from_shared(platform.intake.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut intake = IntakeServiceClient::new(platform.auth.wrap(channel.clone()));
    let mut health = HealthClient::new(channel);
    intake
        .submit_report(report("before"))
        .await
        .expect("accepted");

    // the database goes away
    drop(relay);
    // a call right away, before the health probe noticed: the pool gives up after its acquire
    // timeout (2 s here), far inside the caller's 20 s deadline
    let started = tokio::time::Instant::now();
    let refused = intake
        .submit_report(report("during-1"))
        .await
        .expect_err("no database");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while readiness(&mut health, "").await != ServingStatus::NotServing as i32 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness never NOT_SERVING"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        readiness(&mut health, whistle_platform::grpc::LIVENESS_SERVICE).await,
        ServingStatus::Serving as i32,
        "liveness is not readiness: no restart for a database outage"
    );
    // once the outage is known, calls are refused at once
    let refused = intake
        .submit_report(report("during-2"))
        .await
        .expect_err("no database");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("database"),
        "{}",
        refused.message()
    );

    // the database returns
    let _relay = Relay::start(relay_address, upstream).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while readiness(&mut health, "").await != ServingStatus::Serving as i32 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness never SERVING again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    intake
        .submit_report(report("after"))
        .await
        .expect("accepted after the outage");
    platform.shutdown().await;
}
