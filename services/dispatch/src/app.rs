//! Wiring: database, NATS, the case consumer, the deadline scanner, the outbox relay and the gRPC
//! server.

use crate::actions::{ActionQueue, ActionWriters};
use crate::config::DispatchConfig;
use crate::consumer::ReportedCases;
use crate::domain::ActionRules;
use crate::domain::DeadlinePolicy;
use crate::grpc::DispatchGrpc;
use crate::scanner::Scanner;
use crate::storage::Migrator;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use whistle_platform::clock::{SharedClock, to_millis};
use whistle_platform::grpc::{GrpcListener, HealthProbe};
use whistle_platform::inbox::{ConsumerSpec, run_consumer};
use whistle_platform::outbox::{OutboxRelay, OutboxSignal};
use whistle_platform::{db, grpc, nats};
use whistle_proto::dispatch::dispatch_service_server::DispatchServiceServer;

/// Runs dispatch on `listener` until `shutdown`; returns once the server, the consumer and the
/// relay have stopped.
pub async fn run(
    config: DispatchConfig,
    listener: GrpcListener,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // the credential check first: a service with no key refuses to start (exit 64)
    let auth = whistle_platform::auth::AuthLayer::new(
        whistle_platform::auth::Verifier::from_config(&config.auth)?,
        "dispatch",
        crate::policy::access,
    );
    // NATS first: a server that cannot hold our streams or events is a configuration error, found
    // before any migration runs
    let nats_client = nats::connect(&config.nats, crate::service::SOURCE).await?;
    let jetstream = async_nats::jetstream::new(nats_client.clone());
    nats::ensure_streams(&jetstream, &config.nats).await?;
    // the consumer that saw `case.reported` only is replaced by one on every case event
    if let Ok(stream) = jetstream.get_stream(nats::CASES_STREAM).await
        && stream
            .delete_consumer(crate::consumer::LEGACY_CONSUMER)
            .await
            .is_ok()
    {
        tracing::info!(
            consumer = crate::consumer::LEGACY_CONSUMER,
            "removed the consumer of case.reported only"
        );
    }
    nats::check_max_payload(&nats_client, config.limits.max_event_bytes)?;
    let db = db::connect(&config.database).await?;
    db::migrate::<Migrator>(&db).await?;
    if let Some(file) = &config.catalogue.file {
        crate::catalogue::load(&db, file, &config.limits, to_millis(clock.now())).await?;
    }

    // every deadline is computed by this policy: calendar time, or a working-hour calendar
    let policy: Arc<dyn DeadlinePolicy> = config.deadline_policy()?;

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
    let consumer_task = tokio::spawn(run_consumer(
        jetstream,
        db.clone(),
        clock.clone(),
        ConsumerSpec {
            stream: nats::CASES_STREAM.to_string(),
            durable: crate::consumer::CONSUMER.to_string(),
            filter_subject: crate::consumer::FILTER_SUBJECT.to_string(),
            applied_subjects: crate::consumer::applied_subjects(),
            max_batch: config.dispatch.consumer_batch,
        },
        Arc::new(ReportedCases::new(
            clock.clone(),
            policy.clone(),
            outbox_signal.clone(),
        )),
        shutdown.clone(),
    ));
    let scanner_task = tokio::spawn(
        Scanner {
            db: db.clone(),
            clock: clock.clone(),
            policy: policy.clone(),
            outbox_signal: outbox_signal.clone(),
            config: config.scanner.clone(),
        }
        .run(shutdown.clone()),
    );

    let (actions, action_writers) = ActionQueue::start(ActionWriters {
        db: db.clone(),
        clock: clock.clone(),
        policy: policy.clone(),
        outbox_signal: outbox_signal.clone(),
        rules: ActionRules {
            check_in_radius_meters: config.dispatch.check_in_radius_meters,
            evidence_per_assignment: config.limits.evidence_per_assignment,
        },
        batch: config.dispatch.action_batch,
        // a SQLite file has one writer connection: more writers would only split the batches
        writers: if db::is_postgres(&db) {
            config.dispatch.action_writers
        } else {
            1
        },
        conflict_retries: config.dispatch.conflict_retries,
    });
    let service = DispatchGrpc {
        db: db.clone(),
        clock,
        policy,
        outbox_signal,
        settings: config.dispatch.clone(),
        limits: config.limits.clone(),
        actions,
    };
    let routes = tonic::service::Routes::new(
        DispatchServiceServer::new(service)
            .max_decoding_message_size(config.limits.max_request_bytes),
    );
    let probe = HealthProbe {
        db: db.clone(),
        nats: nats_client,
        services: vec!["whistle.dispatch.v1.DispatchService"],
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
    // the server has dropped the queue: the writers finish what was queued, then stop
    action_writers.join_all().await;
    let _ = consumer_task.await;
    let _ = scanner_task.await;
    let _ = relay_task.await;
    db.close().await?;
    served
}
