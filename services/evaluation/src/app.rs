//! Wiring: database, NATS, the event consumers (one loop over three streams), the outbox relay and the gRPC server, run until
//! shutdown.

use crate::config::EvaluationConfig;
use crate::events::{CASES_CONSUMER, EVALUATION_CONSUMER, EvaluationEvents, WHISTLES_CONSUMER};
use crate::grpc::{EvaluationGrpc, SOURCE};
use crate::storage::Migrator;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use whistle_platform::clock::{SharedClock, to_millis};
use whistle_platform::grpc::{GrpcListener, HealthProbe};
use whistle_platform::inbox::{ConsumerSpec, run_consumers};
use whistle_platform::outbox::{OutboxRelay, OutboxSignal};
use whistle_platform::{db, grpc, nats};
use whistle_proto::evaluation::evaluation_service_server::EvaluationServiceServer;

/// Runs evaluation on `listener` until `shutdown` is cancelled; returns after the server drained
/// and the consumers acknowledged what they applied.
pub async fn run(
    config: EvaluationConfig,
    listener: GrpcListener,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let utc_offset = config.evaluation.utc_offset()?;
    let scoring = config.evaluation.scoring()?;

    // the credential check first: a service with no key refuses to start (exit 64)
    let auth = whistle_platform::auth::AuthLayer::new(
        whistle_platform::auth::Verifier::from_config(&config.auth)?,
        "evaluation",
        crate::policy::access,
    );
    // NATS first: a server that cannot hold our streams or events is a configuration error, found
    // before any migration runs
    let nats_client = nats::connect(&config.nats, SOURCE).await?;
    let jetstream = async_nats::jetstream::new(nats_client.clone());
    nats::ensure_streams(&jetstream, &config.nats).await?;
    nats::check_max_payload(&nats_client, config.limits.max_event_bytes)?;
    let db = db::connect(&config.database).await?;
    db::migrate::<Migrator>(&db).await?;
    if let Some(file) = &config.catalogue.file {
        crate::catalogue::load(&db, file).await?;
    }
    // rows kept before tallies existed: decided once, before any card is served
    let tallied = crate::cards::tally_missing(&db, to_millis(clock.now())).await?;
    if tallied > 0 {
        tracing::info!(
            cases = tallied,
            "tallies decided for cases kept before tallies existed"
        );
    }

    let shutdown = shutdown.child_token();
    // ratings, call-backs, closes and reopenings: applied in the request's transaction and
    // published through the outbox, so the event history alone gives the scorecards
    let signal = OutboxSignal::default();
    let relay = OutboxRelay::new(
        db.clone(),
        jetstream.clone(),
        signal.clone(),
        config.outbox.clone(),
        clock.clone(),
    );
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));

    // the three streams into one handler: a batch applies the case and whistle events of the same
    // cases (and evaluation's own) in one transaction, so they never lock each other's rows
    let specs = [
        (nats::CASES_STREAM, CASES_CONSUMER, "case.v1.>"),
        (nats::WHISTLES_STREAM, WHISTLES_CONSUMER, "whistle.v1.>"),
        (
            nats::EVALUATION_STREAM,
            EVALUATION_CONSUMER,
            "evaluation.v1.>",
        ),
    ]
    .map(|(stream, durable, filter_subject)| ConsumerSpec {
        stream: stream.to_string(),
        durable: durable.to_string(),
        filter_subject: filter_subject.to_string(),
        applied_subjects: Vec::new(),
        max_batch: config.evaluation.consumer_max_batch,
    });
    let consumers = tokio::spawn(run_consumers(
        jetstream.clone(),
        db.clone(),
        clock.clone(),
        specs.to_vec(),
        config.evaluation.batch_window(),
        Arc::new(EvaluationEvents::new(clock.clone())),
        shutdown.clone(),
    ));

    let reader = db::connect_reader(&config.database, &db).await?;
    let service = EvaluationGrpc {
        db: db.clone(),
        reader: reader.clone(),
        clock,
        utc_offset,
        scoring,
        limits: config.limits.clone(),
        signal,
    };
    let closer = tokio::spawn(crate::grpc::close_periods_automatically(
        service.clone(),
        config.evaluation.close_after_days,
        shutdown.clone(),
    ));
    let compactor = tokio::spawn(crate::cells::compact_continually(
        db.clone(),
        shutdown.clone(),
    ));
    let routes = tonic::service::Routes::new(
        EvaluationServiceServer::new(service)
            .max_decoding_message_size(config.limits.max_request_bytes),
    );
    let probe = HealthProbe {
        db: db.clone(),
        nats: nats_client,
        services: vec!["whistle.evaluation.v1.EvaluationService"],
        works_without_nats: false,
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
    let _ = consumers.await;
    let _ = closer.await;
    let _ = compactor.await;
    let _ = relay_task.await;
    reader.close().await?;
    db.close().await?;
    served
}
