//! Wiring: database, NATS, outbox relay, the case-lifecycle consumer, the registry follower, the
//! gRPC server and (when enabled) Open311, run until shutdown.

use crate::catalogue::{Registry, SharedRegistry};
use crate::config::IntakeConfig;
use crate::grpc::IntakeGrpc;
use crate::service::Intake;
use crate::storage::Migrator;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use whistle_platform::clock::{SharedClock, to_millis};
use whistle_platform::config::ConfigError;
use whistle_platform::grpc::{GrpcListener, HealthProbe};
use whistle_platform::outbox::{OutboxRelay, OutboxSignal};
use whistle_platform::{db, grpc, inbox, nats};
use whistle_proto::intake::intake_service_server::IntakeServiceServer;

/// Runs intake on `listener` until `shutdown` is cancelled; Open311, when enabled, on
/// `open311.listen`. Returns after the servers drained and the outbox relay published what was
/// committed.
pub async fn run(
    config: IntakeConfig,
    listener: GrpcListener,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let open311 = if config.open311.enabled {
        let address = config.open311.listen;
        let bound = std::net::TcpListener::bind(address).map_err(|error| {
            anyhow::Error::new(ConfigError::Invalid(format!(
                "open311.listen {address} cannot be used: {error}"
            )))
        })?;
        Some(bound)
    } else {
        None
    };
    run_with_open311(config, listener, open311, clock, shutdown).await
}

/// [`run`] with the Open311 listener bound by the caller (port 0 in tests, `whistle up`'s port);
/// `None` serves no Open311 whatever the configuration says.
pub async fn run_with_open311(
    config: IntakeConfig,
    listener: GrpcListener,
    open311_listener: Option<std::net::TcpListener>,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // the credential check first: a service with no key refuses to start (exit 64)
    let auth = whistle_platform::auth::AuthLayer::new(
        whistle_platform::auth::Verifier::from_config(&config.auth)?,
        "intake",
        crate::policy::access,
    );
    // NATS first: a server that cannot hold our streams or events is a configuration error, found
    // before any migration runs
    let nats_client = nats::connect(&config.nats, crate::service::SOURCE).await?;
    let jetstream = async_nats::jetstream::new(nats_client.clone());
    nats::ensure_streams(&jetstream, &config.nats).await?;
    nats::check_max_payload(&nats_client, config.limits.max_event_bytes)?;
    let db = db::connect(&config.database).await?;
    db::migrate::<Migrator>(&db).await?;
    if let Some(file) = &config.catalogue.file {
        crate::catalogue::load(&db, file, &config.catalogue, to_millis(clock.now())).await?;
    }
    let keys = match (&open311_listener, &config.open311.api_keys_file) {
        (Some(_), Some(file)) => crate::open311::ApiKeys::read(file)
            .map_err(|error| ConfigError::Invalid(format!("open311.api_keys_file: {error}")))?,
        (Some(_), None) => {
            return Err(ConfigError::Invalid(
                "open311.api_keys_file is required to serve open311".into(),
            )
            .into());
        }
        (None, _) => crate::open311::ApiKeys::default(),
    };

    let shutdown = shutdown.child_token();
    let outbox_signal = OutboxSignal::default();
    let relay = OutboxRelay::new(
        db.clone(),
        jetstream.clone(),
        outbox_signal.clone(),
        config.outbox.clone(),
        clock.clone(),
    );
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let consumer_task = tokio::spawn(inbox::run_consumer(
        jetstream,
        db.clone(),
        clock.clone(),
        crate::lifecycle::consumer_spec(),
        Arc::new(crate::lifecycle::CaseLifecycle),
        shutdown.clone(),
    ));

    let registry = Arc::new(SharedRegistry::new(Registry::load(&db).await?));
    let follower_task = tokio::spawn(registry.clone().follow(
        db.clone(),
        Duration::from_millis(config.catalogue.reload_interval_ms),
        shutdown.clone(),
    ));
    let limits = config.limits.clone();
    let open311_config = config.open311.clone();
    let intake = Intake {
        db: db.clone(),
        clock,
        outbox_signal,
        registry,
        config: Arc::new(config.clone()),
    };
    let open311_task = match open311_listener {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            Some(tokio::spawn(crate::open311::serve(
                listener,
                intake.clone(),
                keys,
                open311_config,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let routes = tonic::service::Routes::new(
        IntakeServiceServer::new(IntakeGrpc { intake })
            .max_decoding_message_size(limits.max_request_bytes),
    );
    let probe = HealthProbe {
        db: db.clone(),
        nats: nats_client,
        services: vec!["whistle.intake.v1.IntakeService"],
        works_without_nats: true,
    };
    let served = grpc::serve(
        listener,
        &config.grpc,
        routes,
        probe,
        auth,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    if let Some(task) = open311_task {
        match task.await {
            Ok(Err(error)) => tracing::warn!(%error, "open311 stopped with an error"),
            Err(error) => tracing::warn!(%error, "open311 task failed"),
            Ok(Ok(())) => {}
        }
    }
    let _ = consumer_task.await;
    let _ = follower_task.await;
    let _ = relay_task.await;
    db.close().await?;
    served
}
