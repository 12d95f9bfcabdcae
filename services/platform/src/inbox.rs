//! The idempotent consumer: a durable JetStream pull consumer whose handler applies each event and
//! records `(consumer, event_id)` in the same transaction, so a redelivered event is acked and skipped.

use crate::clock::{SharedClock, to_millis};
use crate::envelope::{self, Event};
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr,
    EntityTrait, QueryFilter, TransactionTrait,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The `whistle_inbox` table: events a consumer has applied (or refused for good).
pub mod entity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "whistle_inbox")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub consumer: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        /// `applied` or `rejected: <reason>`.
        pub outcome: String,
        pub processed_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Records that `consumer` handled `event_id`; false when it already had.
pub async fn record_once<C: ConnectionTrait>(
    connection: &C,
    consumer: &str,
    event_id: &str,
    outcome: &str,
    now_ms: i64,
) -> Result<bool, DbErr> {
    let inserted = entity::Entity::insert(entity::ActiveModel {
        consumer: Set(consumer.to_string()),
        event_id: Set(event_id.to_string()),
        outcome: Set(outcome.to_string()),
        processed_at_ms: Set(now_ms),
    })
    .on_conflict(
        OnConflict::columns([entity::Column::Consumer, entity::Column::EventId])
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(connection)
    .await?;
    Ok(inserted == 1)
}

/// What went wrong applying one event.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The event can never be applied (malformed, refers to nothing): it is recorded and dropped.
    #[error("event rejected: {0}")]
    Rejected(String),
    /// Try again later (database unavailable, ...): the whole batch is redelivered.
    #[error("transient failure: {0}")]
    Transient(#[from] DbErr),
}

/// Applies events inside the consumer's transaction.
pub trait EventHandler: Send + Sync + 'static {
    fn handle(
        &self,
        transaction: &DatabaseTransaction,
        subject: &str,
        event: &Event,
    ) -> impl Future<Output = Result<(), HandleError>> + Send;

    /// Called after a batch committed (to wake an outbox relay or waiting subscribers).
    fn after_commit(&self) {}
}

/// A durable pull consumer on one stream.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub stream: String,
    /// Durable name, shared by every replica of the service (they split the work).
    pub durable: String,
    pub filter_subject: String,
    /// Events applied per transaction, at most.
    pub max_batch: usize,
}

/// Consumes until `shutdown`: stops fetching, finishes the batch in hand, acks it, returns.
pub async fn run_consumer<H: EventHandler>(
    jetstream: jetstream::Context,
    db: DatabaseConnection,
    clock: SharedClock,
    spec: ConsumerSpec,
    handler: Arc<H>,
    shutdown: CancellationToken,
) {
    let mut failures: u32 = 0;
    while !shutdown.is_cancelled() {
        match consume(&jetstream, &db, &clock, &spec, &handler, &shutdown).await {
            Ok(()) => return,
            Err(error) => {
                failures = failures.saturating_add(1);
                let wait =
                    Duration::from_millis(200u64 << failures.min(7)).min(Duration::from_secs(15));
                tracing::warn!(consumer = %spec.durable, %error, ?wait, "consumer interrupted, restarting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

async fn consume<H: EventHandler>(
    jetstream: &jetstream::Context,
    db: &DatabaseConnection,
    clock: &SharedClock,
    spec: &ConsumerSpec,
    handler: &Arc<H>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let stream = jetstream.get_stream(&spec.stream).await?;
    let consumer = stream
        .get_or_create_consumer(
            &spec.durable,
            pull::Config {
                durable_name: Some(spec.durable.clone()),
                filter_subject: spec.filter_subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 10_000,
                ..Default::default()
            },
        )
        .await?;
    let mut batches = consumer
        .stream()
        .max_messages_per_batch(spec.max_batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?
        .ready_chunks(spec.max_batch);
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            batch = batches.next() => batch,
        };
        let Some(batch) = batch else {
            anyhow::bail!("message stream ended");
        };
        let mut messages = Vec::with_capacity(batch.len());
        for message in batch {
            messages.push(message.map_err(|error| anyhow::anyhow!(error))?);
        }
        apply_batch(db, clock, &spec.durable, handler, &messages).await?;
        handler.after_commit();
        for message in &messages {
            if let Err(error) = message.ack().await {
                tracing::warn!(%error, "ack failed, the event will be redelivered and skipped");
            }
        }
    }
}

/// How a batch isolates its events from each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// Every handler runs directly in the batch transaction: the fast path.
    Batch,
    /// A savepoint around each event, so a rejected one is rolled back alone.
    PerEvent,
}

/// What applying one event asks of the batch.
enum EventOutcome {
    Done,
    /// A rejection on the fast path: redo the batch with a savepoint per event.
    NeedsIsolation,
    /// Abort the batch and let JetStream redeliver it.
    Transient(DbErr),
}

/// Applies a batch in one transaction. The fast path runs every handler directly in it; rejections
/// are rare, so only a batch that meets one is redone with a savepoint per event.
async fn apply_batch<H: EventHandler>(
    db: &DatabaseConnection,
    clock: &SharedClock,
    consumer: &str,
    handler: &Arc<H>,
    messages: &[jetstream::Message],
) -> anyhow::Result<()> {
    if apply_batch_isolated(db, clock, consumer, handler, messages, Isolation::Batch).await? {
        return Ok(());
    }
    apply_batch_isolated(db, clock, consumer, handler, messages, Isolation::PerEvent).await?;
    Ok(())
}

/// Returns false when the fast path met a rejection and rolled everything back.
async fn apply_batch_isolated<H: EventHandler>(
    db: &DatabaseConnection,
    clock: &SharedClock,
    consumer: &str,
    handler: &Arc<H>,
    messages: &[jetstream::Message],
    isolation: Isolation,
) -> anyhow::Result<bool> {
    let transaction = db.begin().await?;
    for message in messages {
        let subject = message.subject.as_str();
        let traceparent = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get("traceparent"))
            .map(|value| value.as_str().to_string());
        let event = match envelope::decode(&message.payload) {
            Ok(event) => event,
            Err(error) => {
                tracing::error!(consumer, subject, %error, "undecodable event dropped");
                let id = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
                    .map(|value| value.as_str().to_string())
                    .unwrap_or_else(|| format!("undecodable:{subject}"));
                record_once(
                    &transaction,
                    consumer,
                    &id,
                    "rejected: undecodable",
                    to_millis(clock.now()),
                )
                .await?;
                continue;
            }
        };
        let span = tracing::info_span!("consume", consumer, subject, event_id = %event.event_id, case_id = %event.case_id);
        crate::telemetry::set_parent_from_traceparent(&span, traceparent.as_deref());
        let outcome = apply_event(
            &transaction,
            clock,
            consumer,
            handler,
            subject,
            &event,
            isolation,
        )
        .instrument(span)
        .await?;
        match outcome {
            EventOutcome::Done => {}
            EventOutcome::NeedsIsolation => {
                transaction.rollback().await?;
                return Ok(false);
            }
            EventOutcome::Transient(error) => {
                for message in messages {
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                }
                return Err(error.into());
            }
        }
    }
    transaction.commit().await?;
    Ok(true)
}

/// Applies one event inside the batch transaction, directly or in a savepoint.
async fn apply_event<H: EventHandler>(
    transaction: &DatabaseTransaction,
    clock: &SharedClock,
    consumer: &str,
    handler: &Arc<H>,
    subject: &str,
    event: &Event,
    isolation: Isolation,
) -> Result<EventOutcome, DbErr> {
    let consumer_attribute = [crate::metrics::attribute("consumer", consumer.to_string())];
    let now_ms = to_millis(clock.now());
    if !record_once(transaction, consumer, &event.event_id, "applied", now_ms).await? {
        tracing::debug!(consumer, event_id = %event.event_id, "duplicate event skipped");
        crate::metrics::metrics()
            .events_duplicate
            .add(1, &consumer_attribute);
        return Ok(EventOutcome::Done);
    }
    if isolation == Isolation::Batch {
        return Ok(match handler.handle(transaction, subject, event).await {
            Ok(()) => {
                record_applied(clock, &consumer_attribute, event);
                EventOutcome::Done
            }
            Err(HandleError::Rejected(_)) => EventOutcome::NeedsIsolation,
            Err(HandleError::Transient(error)) => EventOutcome::Transient(error),
        });
    }
    let savepoint = transaction.begin().await?;
    match handler.handle(&savepoint, subject, event).await {
        Ok(()) => {
            savepoint.commit().await?;
            record_applied(clock, &consumer_attribute, event);
        }
        Err(HandleError::Rejected(reason)) => {
            savepoint.rollback().await?;
            crate::metrics::metrics()
                .events_rejected
                .add(1, &consumer_attribute);
            tracing::error!(consumer, event_id = %event.event_id, %reason, "event rejected");
            entity::Entity::update_many()
                .col_expr(
                    entity::Column::Outcome,
                    format!("rejected: {reason}").into(),
                )
                .filter(entity::Column::Consumer.eq(consumer))
                .filter(entity::Column::EventId.eq(event.event_id.as_str()))
                .exec(transaction)
                .await?;
        }
        Err(HandleError::Transient(error)) => {
            drop(savepoint);
            return Ok(EventOutcome::Transient(error));
        }
    }
    Ok(EventOutcome::Done)
}

fn record_applied(
    clock: &SharedClock,
    consumer_attribute: &[opentelemetry::KeyValue],
    event: &Event,
) {
    let metrics = crate::metrics::metrics();
    metrics.events_applied.add(1, consumer_attribute);
    if let Some(occurred_at) = event
        .occurred_at
        .as_ref()
        .and_then(crate::clock::from_proto_timestamp)
    {
        let lag = (clock.now() - occurred_at).num_milliseconds().max(0) as f64 / 1000.0;
        metrics.event_delivery_lag.record(lag, consumer_attribute);
    }
}
