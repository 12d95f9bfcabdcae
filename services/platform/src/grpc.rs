//! Serving gRPC: the service's own routes plus `grpc.health.v1.Health` (SERVING only while the
//! database and NATS are reachable) and server reflection, with graceful shutdown.

use sea_orm::DatabaseConnection;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// What the health check watches.
#[derive(Debug, Clone)]
pub struct HealthProbe {
    pub db: DatabaseConnection,
    pub nats: async_nats::Client,
    /// Fully qualified gRPC service names served, e.g. `whistle.intake.v1.IntakeService`.
    pub services: Vec<&'static str>,
}

impl HealthProbe {
    /// Whether the database answers and NATS is connected.
    pub async fn healthy(&self) -> bool {
        let nats_up = self.nats.connection_state() == async_nats::connection::State::Connected;
        let db_up = tokio::time::timeout(Duration::from_secs(2), self.db.ping())
            .await
            .is_ok_and(|ping| ping.is_ok());
        nats_up && db_up
    }
}

/// Serves `routes` on `listener` until `shutdown`, then lets in-flight calls finish.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    probe: HealthProbe,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let watcher = tokio::spawn(watch_health(reporter, probe, shutdown.clone()));
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(whistle_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(whistle_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let routes = routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            shutdown.clone().cancelled_owned(),
        )
        .await;
    watcher.abort();
    result.map_err(Into::into)
}

async fn watch_health(reporter: HealthReporter, probe: HealthProbe, shutdown: CancellationToken) {
    let mut last = None;
    loop {
        let status = if probe.healthy().await {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            if status == ServingStatus::NotServing {
                tracing::warn!("health: not serving (database or nats unreachable)");
            }
            reporter.set_service_status("", status).await;
            for service in &probe.services {
                reporter.set_service_status(*service, status).await;
            }
            last = Some(status);
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                reporter.set_service_status("", ServingStatus::NotServing).await;
                return;
            }
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Binds a listener, with an error that names the address.
pub async fn bind(address: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen on {address}: {error}"))
}
