//! Rebuilding an evaluation database from the JetStream history alone: the case and whistle
//! events and evaluation's own (ratings, call-backs, closes, reopenings), read through ephemeral
//! consumers that leave the live durable consumers untouched.

use crate::events::{CASES_CONSUMER, EVALUATION_CONSUMER, EvaluationEvents, WHISTLES_CONSUMER};
use crate::storage::{self, Migrator};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use sea_orm::{DatabaseConnection, TransactionTrait};
use std::time::{Duration, Instant};
use whistle_platform::clock::{SharedClock, to_millis};
use whistle_platform::config::{DatabaseConfig, NatsConfig};
use whistle_platform::envelope;
use whistle_platform::inbox::{BatchEvent, EventHandler, HandleError, record_once};
use whistle_platform::{db, nats};

/// Events applied per database transaction.
const BATCH: usize = 512;

/// What a rebuild read and applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Messages read from the three streams.
    pub messages: u64,
    /// Events applied (the rest were duplicates of an event already applied, or rejected).
    pub applied: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub elapsed: Duration,
}

/// Replays the `WHISTLE_CASES`, `WHISTLE_WHISTLES` and `WHISTLE_EVALUATION` streams, up to their
/// last message at the start, into the empty evaluation database at `database_url` (migrated
/// first; refused when it already holds facts). Each event is recorded in the inbox under the
/// live consumer's name, so a service started on the rebuilt database skips what it already holds.
pub async fn rebuild(
    nats_url: &str,
    database_url: &str,
    clock: SharedClock,
) -> anyhow::Result<RebuildReport> {
    let started = Instant::now();
    let nats_config = NatsConfig {
        url: nats_url.to_string(),
        ..NatsConfig::default()
    };
    let client = nats::connect(&nats_config, "whistle-evaluation-rebuild").await?;
    let jetstream = jetstream::new(client);
    let database = db::connect(&DatabaseConfig {
        acquire_timeout_ms: 30_000,
        read_connections: 1,
        ..DatabaseConfig::at(database_url, 4)
    })
    .await?;
    db::migrate::<Migrator>(&database).await?;
    if !storage::is_empty(&database).await? {
        anyhow::bail!(
            "the database at --into already holds evaluation facts; rebuild into an empty database"
        );
    }
    let handler = EvaluationEvents::new(clock.clone());
    let mut report = RebuildReport::default();
    for (stream_name, consumer_name) in [
        (nats::CASES_STREAM, CASES_CONSUMER),
        (nats::WHISTLES_STREAM, WHISTLES_CONSUMER),
        (nats::EVALUATION_STREAM, EVALUATION_CONSUMER),
    ] {
        replay_stream(
            &jetstream,
            &database,
            &handler,
            &clock,
            stream_name,
            consumer_name,
            &mut report,
        )
        .await?;
    }
    // the running card figures the replay appended, folded as the service would have
    crate::cells::compact(&database).await?;
    database.close().await?;
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn replay_stream(
    jetstream: &jetstream::Context,
    database: &DatabaseConnection,
    handler: &EvaluationEvents,
    clock: &SharedClock,
    stream_name: &str,
    consumer_name: &str,
    report: &mut RebuildReport,
) -> anyhow::Result<()> {
    let mut stream = jetstream
        .get_stream(stream_name)
        .await
        .map_err(|error| anyhow::anyhow!("cannot read stream {stream_name}: {error}"))?;
    let last_sequence = stream.info().await?.state.last_sequence;
    if last_sequence == 0 {
        return Ok(());
    }
    // ephemeral: no durable name, no acknowledgements, gone a minute after we stop reading
    let ephemeral = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..consumer::pull::Config::default()
        })
        .await?;
    let ephemeral_name = ephemeral.cached_info().name.clone();
    let mut messages = ephemeral.messages().await?;
    let mut batch = Vec::with_capacity(BATCH);
    let mut reached_end = false;
    while !reached_end {
        let Some(message) = messages.next().await else {
            break;
        };
        let message = message?;
        let sequence = message.info().map(|info| info.stream_sequence).unwrap_or(0);
        reached_end = sequence >= last_sequence;
        report.messages += 1;
        batch.push((message.subject.to_string(), message.payload.clone()));
        if batch.len() >= BATCH || reached_end {
            apply_batch(database, handler, clock, consumer_name, &batch, report).await?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        apply_batch(database, handler, clock, consumer_name, &batch, report).await?;
    }
    drop(messages);
    let _ = stream.delete_consumer(&ephemeral_name).await;
    tracing::info!(stream = stream_name, last_sequence, "stream replayed");
    Ok(())
}

async fn apply_batch(
    database: &DatabaseConnection,
    handler: &EvaluationEvents,
    clock: &SharedClock,
    consumer_name: &str,
    batch: &[(String, bytes::Bytes)],
    report: &mut RebuildReport,
) -> anyhow::Result<()> {
    let transaction = database.begin().await?;
    let mut fresh = Vec::with_capacity(batch.len());
    for (subject, payload) in batch {
        let now_ms = to_millis(clock.now());
        let Ok(event) = envelope::decode(payload) else {
            report.rejected += 1;
            continue;
        };
        if !record_once(
            &transaction,
            consumer_name,
            &event.event_id,
            "applied",
            now_ms,
        )
        .await?
        {
            report.duplicates += 1;
            continue;
        }
        fresh.push((subject.as_str(), event));
    }
    let batch_events: Vec<BatchEvent<'_>> = fresh
        .iter()
        .map(|(subject, event)| BatchEvent { subject, event })
        .collect();
    handler.before_batch(&transaction, &batch_events).await?;
    for (subject, event) in &fresh {
        let savepoint = transaction.begin().await?;
        match handler.handle(&savepoint, subject, event).await {
            Ok(()) => {
                savepoint.commit().await?;
                report.applied += 1;
            }
            Err(HandleError::Rejected(reason)) => {
                savepoint.rollback().await?;
                tracing::warn!(event_id = %event.event_id, %reason, "event rejected");
                report.rejected += 1;
            }
            Err(HandleError::Transient(error)) => return Err(error.into()),
        }
    }
    handler.before_commit(&transaction).await?;
    transaction.commit().await?;
    Ok(())
}
