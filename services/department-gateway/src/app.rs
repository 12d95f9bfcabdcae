//! Wiring: database, department registry and credentials, the whistle and case consumers, the
//! dispatch client and the gRPC server, run until shutdown.

use crate::config::GatewayConfig;
use crate::credentials::CredentialCache;
use crate::forwarding::DispatchForwarder;
use crate::grpc::GatewayGrpc;
use crate::notices::{self, NoticeRecorder, NoticeSignal};
use crate::slots::SubscriptionSlots;
use crate::storage::Migrator;
use crate::subscription::Subscriptions;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use whistle_platform::clock::{SharedClock, to_millis};
use whistle_platform::config::ConfigError;
use whistle_platform::grpc::{GrpcListener, HealthProbe};
use whistle_platform::inbox::{self, ConsumerSpec};
use whistle_platform::{db, grpc, nats};
use whistle_proto::gateway::department_gateway_server::DepartmentGatewayServer;

/// Events applied per consumer transaction, at most.
const CONSUMER_BATCH: usize = 128;

/// Runs the gateway on `listener` until `shutdown` is cancelled; returns after open subscriptions
/// ended, the server drained and the consumer acknowledged what it applied.
pub async fn run(
    config: GatewayConfig,
    listener: GrpcListener,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // the credential check first: a service with no key refuses to start (exit 64)
    let auth = whistle_platform::auth::AuthLayer::new(
        whistle_platform::auth::Verifier::from_config(&config.auth)?,
        "department-gateway",
        crate::policy::access,
    );
    // NATS first: a server that cannot hold our streams or events is a configuration error, found
    // before any migration runs
    let nats_client = nats::connect(&config.nats, crate::grpc::SOURCE).await?;
    let jetstream = async_nats::jetstream::new(nats_client.clone());
    nats::ensure_streams(&jetstream, &config.nats).await?;
    nats::check_max_payload(&nats_client, config.limits.max_event_bytes)?;
    let db = db::connect(&config.database).await?;
    db::migrate::<Migrator>(&db).await?;
    if let Some(file) = &config.catalogue.file {
        crate::catalogue::load(&db, file, to_millis(clock.now())).await?;
    }
    if let Some(file) = &config.catalogue.credentials_file {
        crate::credentials::issue_missing_credentials(&db, file).await?;
    }
    let service_token = match &config.dispatch.service_token_file {
        Some(file) => Some(
            whistle_platform::auth::read_token_file(file).map_err(|error| {
                anyhow::Error::new(ConfigError::Invalid(format!(
                    "dispatch.service_token_file: {error}"
                )))
            })?,
        ),
        None if config.auth.enabled => {
            return Err(ConfigError::Invalid(
                "dispatch.service_token_file is required with auth on: dispatch accepts department actions only from the gateway's service identity".into(),
            )
            .into());
        }
        None => None,
    };
    let dispatch = DispatchForwarder::new(&config.dispatch, service_token).map_err(|error| {
        anyhow::anyhow!(
            "dispatch.url {:?} is unusable: {error}",
            config.dispatch.url
        )
    })?;

    let shutdown = shutdown.child_token();
    let signal = NoticeSignal::default();
    // one recorder per consumer: each gathers the rows of its own batch in progress
    let traces = crate::storage::TraceCache::default();
    let recorder = Arc::new(NoticeRecorder::new(
        clock.clone(),
        signal.clone(),
        traces.clone(),
    ));
    let cases_recorder = Arc::new(NoticeRecorder::new(
        clock.clone(),
        signal.clone(),
        traces.clone(),
    ));
    // a whistle's notice is written as soon as it is in; the echoes of departments' own actions
    // may wait a little to share a transaction (`NoticeRecorder::may_wait`)
    let consumer_task = tokio::spawn(inbox::run_consumers(
        jetstream.clone(),
        db.clone(),
        clock.clone(),
        vec![ConsumerSpec {
            stream: nats::WHISTLES_STREAM.to_string(),
            durable: notices::CONSUMER.to_string(),
            filter_subject: notices::FILTER_SUBJECT.to_string(),
            applied_subjects: Vec::new(),
            max_batch: CONSUMER_BATCH,
        }],
        config.subscriptions.own_action_window(),
        recorder,
        shutdown.clone(),
    ));
    // escalations to supervision and deferrals are case events, addressed by the payload
    let cases_task = tokio::spawn(inbox::run_consumer(
        jetstream,
        db.clone(),
        clock.clone(),
        ConsumerSpec {
            stream: nats::CASES_STREAM.to_string(),
            durable: notices::CASES_CONSUMER.to_string(),
            filter_subject: notices::CASES_FILTER_SUBJECT.to_string(),
            applied_subjects: notices::CASES_ADDRESSING
                .iter()
                .map(|name| whistle_platform::provenance::kind_subjects("case", name))
                .collect(),
            max_batch: CONSUMER_BATCH,
        },
        cases_recorder,
        shutdown.clone(),
    ));

    let counters_task = tokio::spawn(notices::follow_notice_counters(
        db.clone(),
        signal.clone(),
        Duration::from_millis(config.subscriptions.poll_interval_ms),
        shutdown.clone(),
    ));

    let service = GatewayGrpc {
        db: db.clone(),
        dispatch,
        credentials: CredentialCache::default(),
        traces,
        subscriptions: Subscriptions {
            db: db.clone(),
            clock,
            signal,
            shutdown: shutdown.clone(),
            slots: SubscriptionSlots::new(config.subscriptions.max_per_department),
        },
        limits: config.limits.clone(),
    };
    let routes = tonic::service::Routes::new(
        DepartmentGatewayServer::new(service)
            .max_decoding_message_size(config.limits.max_request_bytes),
    );
    let probe = HealthProbe {
        db: db.clone(),
        nats: nats_client,
        services: vec!["whistle.gateway.v1.DepartmentGateway"],
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
    let _ = consumer_task.await;
    let _ = cases_task.await;
    let _ = counters_task.await;
    db.close().await?;
    served
}
