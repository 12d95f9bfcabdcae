//! Wiring: database, NATS, outbox relay and the gRPC server, run until shutdown.

use crate::config::IntakeConfig;
use crate::grpc::IntakeGrpc;
use crate::storage::Migrator;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use whistle_platform::clock::SharedClock;
use whistle_platform::grpc::HealthProbe;
use whistle_platform::outbox::{OutboxRelay, OutboxSignal};
use whistle_platform::{db, grpc, nats};
use whistle_proto::intake::intake_service_server::IntakeServiceServer;

/// Runs intake on `listener` until `shutdown` is cancelled; returns after the server drained and
/// the outbox relay published what was committed.
pub async fn run(
    config: IntakeConfig,
    listener: TcpListener,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let db = db::connect(&config.database).await?;
    db::migrate::<Migrator>(&db).await?;
    if let Some(file) = &config.catalogue.file {
        crate::catalogue::load(&db, file).await?;
    }
    let nats_client = nats::connect(&config.nats, crate::grpc::SOURCE).await?;
    let jetstream = async_nats::jetstream::new(nats_client.clone());
    nats::ensure_streams(&jetstream, &config.nats).await?;

    let shutdown = shutdown.child_token();
    let outbox_signal = OutboxSignal::default();
    let relay = OutboxRelay::new(
        db.clone(),
        jetstream,
        outbox_signal.clone(),
        config.outbox.clone(),
        clock.clone(),
    );
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));

    let registry = std::sync::Arc::new(crate::catalogue::Registry::load(&db).await?);
    let service = IntakeGrpc {
        db: db.clone(),
        clock,
        outbox_signal,
        registry,
    };
    let routes = tonic::service::Routes::new(IntakeServiceServer::new(service));
    let probe = HealthProbe {
        db: db.clone(),
        nats: nats_client,
        services: vec!["whistle.intake.v1.IntakeService"],
    };
    let served = grpc::serve(listener, routes, probe, shutdown.clone()).await;
    shutdown.cancel();
    let _ = relay_task.await;
    db.close().await?;
    served
}
