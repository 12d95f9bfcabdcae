//! Wiring: database, NATS, outbox relay and the gRPC server, run until shutdown.

use crate::config::IntakeConfig;
use crate::grpc::IntakeGrpc;
use crate::storage::Migrator;
use tokio_util::sync::CancellationToken;
use whistle_platform::clock::SharedClock;
use whistle_platform::grpc::{GrpcListener, HealthProbe};
use whistle_platform::outbox::{OutboxRelay, OutboxSignal};
use whistle_platform::{db, grpc, nats};
use whistle_proto::intake::intake_service_server::IntakeServiceServer;

/// Runs intake on `listener` until `shutdown` is cancelled; returns after the server drained and
/// the outbox relay published what was committed.
pub async fn run(
    config: IntakeConfig,
    listener: GrpcListener,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // NATS first: a server that cannot hold our streams or events is a configuration error, found
    // before any migration runs
    let nats_client = nats::connect(&config.nats, crate::grpc::SOURCE).await?;
    let jetstream = async_nats::jetstream::new(nats_client.clone());
    nats::ensure_streams(&jetstream, &config.nats).await?;
    nats::check_max_payload(&nats_client, config.limits.max_event_bytes)?;
    let db = db::connect(&config.database).await?;
    db::migrate::<Migrator>(&db).await?;
    if let Some(file) = &config.catalogue.file {
        crate::catalogue::load(&db, file).await?;
    }

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
        limits: config.limits.clone(),
    };
    let routes = tonic::service::Routes::new(
        IntakeServiceServer::new(service)
            .max_decoding_message_size(config.limits.max_request_bytes),
    );
    let probe = HealthProbe {
        db: db.clone(),
        nats: nats_client,
        services: vec!["whistle.intake.v1.IntakeService"],
        works_without_nats: true,
    };
    let served = grpc::serve(listener, &config.grpc, routes, probe, shutdown.clone()).await;
    shutdown.cancel();
    let _ = relay_task.await;
    db.close().await?;
    served
}
