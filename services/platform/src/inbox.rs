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

/// Records that `consumer` handles each of `event_ids` in one statement (a multi-row
/// `INSERT … ON CONFLICT DO NOTHING RETURNING`); returns the ids it had not handled before. An id
/// another transaction is recording at the same moment (a replica given a redelivery) waits for it
/// and comes back only if that transaction rolled back, as with [`record_once`].
pub async fn record_batch_once<C: ConnectionTrait>(
    connection: &C,
    consumer: &str,
    event_ids: &[&str],
    now_ms: i64,
) -> Result<std::collections::HashSet<String>, DbErr> {
    let mut fresh = std::collections::HashSet::with_capacity(event_ids.len());
    // statements of a few fixed sizes, so each stays prepared (`db::statement_sizes`)
    let mut rest = event_ids;
    for size in crate::db::statement_sizes(event_ids.len()) {
        let (chunk, after) = rest.split_at(size);
        rest = after;
        let mut sql = String::from(
            "INSERT INTO whistle_inbox (consumer, event_id, outcome, processed_at_ms) VALUES ",
        );
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() * 4);
        for (index, event_id) in chunk.iter().enumerate() {
            let base = index * 4;
            if index > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${})",
                base + 1,
                base + 2,
                base + 3,
                base + 4
            ));
            values.push(consumer.into());
            values.push((*event_id).into());
            values.push("applied".into());
            values.push(now_ms.into());
        }
        sql.push_str(" ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id");
        let statement =
            sea_orm::Statement::from_sql_and_values(connection.get_database_backend(), sql, values);
        for row in connection.query_all_raw(statement).await? {
            fresh.insert(row.try_get::<String>("", "event_id")?);
        }
    }
    Ok(fresh)
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

/// One decoded event of a batch, as [`EventHandler::before_batch`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct BatchEvent<'a> {
    pub subject: &'a str,
    pub event: &'a Event,
}

/// Applies events inside the consumer's transaction.
pub trait EventHandler: Send + Sync + 'static {
    /// Whether [`EventHandler::handle`] would change anything for this event. Most consumers read
    /// a whole stream (one filter per consumer on NATS 2.9) and have no use for most of what is on
    /// it; an event for which this answers false is acknowledged without a transaction and without
    /// an inbox row, as applying it, once or twice, changes nothing. It must answer true for every
    /// event `handle` would apply or reject. Every event, by default.
    fn applies(&self, subject: &str, event: &Event) -> bool {
        let _ = (subject, event);
        true
    }

    fn handle(
        &self,
        transaction: &DatabaseTransaction,
        subject: &str,
        event: &Event,
    ) -> impl Future<Output = Result<(), HandleError>> + Send;

    /// Called at the start of each batch transaction, before any event is handled, with every
    /// decodable event of the batch (redeliveries included). A handler that locks rows per event
    /// takes those locks here, all at once and in one global order, so that replicas applying
    /// batches concurrently never wait on each other in a cycle. An error aborts the batch, which
    /// is redelivered. Does nothing by default.
    fn before_batch(
        &self,
        transaction: &DatabaseTransaction,
        events: &[BatchEvent<'_>],
    ) -> impl Future<Output = Result<(), DbErr>> + Send {
        let _ = (transaction, events);
        async { Ok(()) }
    }

    /// Called once every event of the batch was handled, just before the commit, in the batch's
    /// transaction. A handler that gathers a batch's rows in `handle` (taking its state afresh in
    /// `before_batch`) writes them here, a few statements for the whole batch instead of several
    /// per event. An error aborts the batch, which is redelivered. Does nothing by default.
    fn before_commit(
        &self,
        transaction: &DatabaseTransaction,
    ) -> impl Future<Output = Result<(), DbErr>> + Send {
        let _ = transaction;
        async { Ok(()) }
    }

    /// Called after a batch committed (to wake waiting subscribers).
    fn after_commit(&self) {}

    /// The outbox relay of the service, when the handler enqueues events: the events a batch
    /// enqueues are handed to it in memory once the batch commits ([`crate::outbox::Staging`]).
    fn outbox(&self) -> Option<&crate::outbox::OutboxSignal> {
        None
    }
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

/// The longest wait between restarts of an interrupted consumer.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(15);

/// The wait before restarting a consumer after its `consecutive_failures`-th interruption in a row
/// (counted from 1): 200 ms, doubling, at most [`MAX_RESTART_DELAY`].
fn restart_delay(consecutive_failures: u32) -> Duration {
    let doublings = consecutive_failures.saturating_sub(1).min(7);
    Duration::from_millis(200u64 << doublings).min(MAX_RESTART_DELAY)
}

/// Restart waits of one consumer: they grow while restarts keep failing and start over once the
/// consumer works again (a batch applied, or a run longer than the longest wait).
#[derive(Debug, Default)]
struct RestartBackoff {
    consecutive_failures: u32,
}

impl RestartBackoff {
    /// The wait after an interruption of a run that lasted `ran_for`.
    fn interrupted(&mut self, ran_for: Duration) -> Duration {
        if ran_for > MAX_RESTART_DELAY {
            // it fetched fine for a while: a fresh failure, not the same outage
            self.consecutive_failures = 0;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        restart_delay(self.consecutive_failures)
    }

    /// A batch was applied; returns whether this ends a run of failures.
    fn succeeded(&mut self) -> bool {
        std::mem::take(&mut self.consecutive_failures) > 0
    }
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
    let mut backoff = RestartBackoff::default();
    while !shutdown.is_cancelled() {
        let started = tokio::time::Instant::now();
        let result = consume(
            &jetstream,
            &db,
            &clock,
            &spec,
            &handler,
            &shutdown,
            &mut backoff,
        )
        .await;
        match result {
            Ok(()) => return,
            Err(error) => {
                let wait = backoff.interrupted(started.elapsed());
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
    backoff: &mut RestartBackoff,
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
    let metrics = crate::metrics::metrics();
    metrics.initialise_consumer(&spec.durable);
    metrics.consumer_pending.record(
        consumer.cached_info().num_pending,
        &[crate::metrics::attribute("consumer", spec.durable.clone())],
    );
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
        record_delivery(&spec.durable, &messages);
        let started = std::time::Instant::now();
        let applied = apply_batch(db, clock, &spec.durable, handler, &messages).await?;
        let attributes = [crate::metrics::attribute("consumer", spec.durable.clone())];
        let skipped = messages.len() - applied;
        if skipped > 0 {
            metrics.events_skipped.add(skipped as u64, &attributes);
        }
        if applied > 0 {
            metrics
                .consumer_batch_duration
                .record(started.elapsed().as_secs_f64(), &attributes);
            metrics
                .consumer_batch_size
                .record(applied as u64, &attributes);
            handler.after_commit();
        }
        if backoff.succeeded() {
            tracing::info!(consumer = %spec.durable, "consumer recovered");
        }
        for message in &messages {
            if let Err(error) = message.ack().await {
                tracing::warn!(%error, "ack failed, the event will be redelivered and skipped");
            }
        }
    }
}

/// Records redeliveries and, from the batch's last message, how many messages still wait.
fn record_delivery(consumer: &str, messages: &[jetstream::Message]) {
    let metrics = crate::metrics::metrics();
    let attributes = [crate::metrics::attribute("consumer", consumer.to_string())];
    let mut redelivered = 0;
    let mut pending = None;
    for message in messages {
        if let Ok(info) = message.info() {
            if info.delivered > 1 {
                redelivered += 1;
            }
            pending = Some(info.pending);
        }
    }
    if redelivered > 0 {
        metrics.consumer_redeliveries.add(redelivered, &attributes);
    }
    if let Some(pending) = pending {
        metrics.consumer_pending.record(pending, &attributes);
    }
}

/// Applies a history of events (with their subjects) in one transaction, as consumer batches would
/// have: each event is recorded in the inbox of the consumer `consumer_of` names for its subject
/// (none: not consumed here; nor is an event the handler has no use for, as a consumer would
/// skip it), and those not recorded before go through `before_batch` and `handle`
/// in order, then `before_commit`, the commit and `after_commit`. For bulk loading (`whistle bench --preload`): a refused event is an error naming it.
pub async fn apply_history<H: EventHandler>(
    db: &DatabaseConnection,
    handler: &H,
    consumer_of: impl Fn(&str) -> Option<String>,
    events: &[(String, Event)],
    now_ms: i64,
) -> anyhow::Result<()> {
    let transaction = db.begin().await?;
    let mut by_consumer: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    let mut consumed = Vec::with_capacity(events.len());
    for (subject, event) in events {
        if !handler.applies(subject, event) {
            continue;
        }
        if let Some(consumer) = consumer_of(subject) {
            by_consumer
                .entry(consumer)
                .or_default()
                .push(event.event_id.as_str());
            consumed.push((subject.as_str(), event));
        }
    }
    let mut fresh = std::collections::HashSet::new();
    for (consumer, ids) in &by_consumer {
        fresh.extend(record_batch_once(&transaction, consumer, ids, now_ms).await?);
    }
    consumed.retain(|(_, event)| fresh.contains(&event.event_id));
    let batch_events: Vec<BatchEvent<'_>> = consumed
        .iter()
        .map(|(subject, event)| BatchEvent { subject, event })
        .collect();
    handler.before_batch(&transaction, &batch_events).await?;
    for (subject, event) in consumed {
        match handler.handle(&transaction, subject, event).await {
            Ok(()) => {}
            Err(HandleError::Rejected(reason)) => {
                anyhow::bail!("preloaded event {} was refused: {reason}", event.event_id)
            }
            Err(HandleError::Transient(error)) => return Err(error.into()),
        }
    }
    handler.before_commit(&transaction).await?;
    transaction.commit().await?;
    handler.after_commit();
    Ok(())
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

/// A message of a batch, decoded once for every attempt at the batch.
struct Inbound<'a> {
    subject: &'a str,
    traceparent: Option<&'a str>,
    /// `None` when the payload is not an event; it is recorded under `message_id` and dropped.
    event: Option<Event>,
    message_id: Option<&'a str>,
}

impl<'a> Inbound<'a> {
    fn decode(consumer: &str, message: &'a jetstream::Message) -> Self {
        let subject = message.subject.as_str();
        let headers = message.headers.as_ref();
        let event = match envelope::decode(&message.payload) {
            Ok(event) => Some(event),
            Err(error) => {
                tracing::error!(consumer, subject, %error, "undecodable event dropped");
                None
            }
        };
        Self {
            subject,
            traceparent: headers
                .and_then(|headers| headers.get("traceparent"))
                .map(|value| value.as_str()),
            event,
            message_id: headers
                .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|value| value.as_str()),
        }
    }
}

/// Applies a batch in one transaction and returns how many of its messages went into it. The
/// events the handler has no use for ([`EventHandler::applies`]) are left out; a batch of nothing
/// else opens no transaction. The fast path runs every handler directly in the transaction;
/// rejections are rare, so only a batch that meets one is redone with a savepoint per event.
async fn apply_batch<H: EventHandler>(
    db: &DatabaseConnection,
    clock: &SharedClock,
    consumer: &str,
    handler: &Arc<H>,
    messages: &[jetstream::Message],
) -> anyhow::Result<usize> {
    let inbound: Vec<Inbound<'_>> = messages
        .iter()
        .map(|message| Inbound::decode(consumer, message))
        // an undecodable message is recorded as rejected, so it counts as one to apply
        .filter(|inbound| {
            inbound
                .event
                .as_ref()
                .is_none_or(|event| handler.applies(inbound.subject, event))
        })
        .collect();
    if inbound.is_empty() {
        return Ok(0);
    }
    let mut applied = staged(
        handler.as_ref(),
        apply_batch_isolated(db, clock, consumer, handler, &inbound, Isolation::Batch),
    )
    .await;
    if matches!(applied, Ok(false)) {
        applied = staged(
            handler.as_ref(),
            apply_batch_isolated(db, clock, consumer, handler, &inbound, Isolation::PerEvent),
        )
        .await;
    }
    if let Err(error) = applied {
        // whatever failed (a deadlock, a lost connection), JetStream redelivers the batch soon
        // rather than after the ack wait
        for message in messages {
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
        return Err(error);
    }
    Ok(inbound.len())
}

/// Runs one attempt at a batch ([`apply_batch_isolated`]) in a [`crate::outbox::Staging`] scope of
/// the handler's outbox: the events the batch enqueues are handed to the relay once it has
/// committed (`Ok(true)`).
async fn staged<H: EventHandler>(
    handler: &H,
    attempt: impl Future<Output = anyhow::Result<bool>>,
) -> anyhow::Result<bool> {
    let Some(signal) = handler.outbox() else {
        return attempt.await;
    };
    let staging = signal.staging();
    let applied = staging.scope(attempt).await;
    if matches!(applied, Ok(true)) {
        staging.committed();
    }
    applied
}

/// Returns false when the fast path met a rejection and rolled everything back.
async fn apply_batch_isolated<H: EventHandler>(
    db: &DatabaseConnection,
    clock: &SharedClock,
    consumer: &str,
    handler: &Arc<H>,
    batch: &[Inbound<'_>],
    isolation: Isolation,
) -> anyhow::Result<bool> {
    let transaction = db.begin().await?;
    let events: Vec<BatchEvent<'_>> = batch
        .iter()
        .filter_map(|inbound| {
            inbound.event.as_ref().map(|event| BatchEvent {
                subject: inbound.subject,
                event,
            })
        })
        .collect();
    handler.before_batch(&transaction, &events).await?;
    // the fast path records the whole batch in the inbox with one statement; the per-event path
    // (rare: a batch that met a rejection) records each event inside its own savepoint logic
    let mut claimed = match isolation {
        Isolation::Batch => {
            // an event provenance refuses is recorded below with its rejection, not claimed
            let mut ids: Vec<&str> = events
                .iter()
                .filter(|batch_event| {
                    crate::provenance::check(batch_event.subject, batch_event.event).is_ok()
                })
                .map(|batch_event| batch_event.event.event_id.as_str())
                .collect();
            ids.sort_unstable();
            ids.dedup();
            Some(record_batch_once(&transaction, consumer, &ids, to_millis(clock.now())).await?)
        }
        Isolation::PerEvent => {
            // a rejected event's savepoint is rolled back with what it enqueued: copies kept in
            // memory could name events that never committed, so the relay reads the table
            crate::outbox::stage_to_table();
            None
        }
    };
    for inbound in batch {
        let subject = inbound.subject;
        let Some(event) = inbound.event.as_ref() else {
            let id = inbound
                .message_id
                .map(str::to_string)
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
        };
        // an event whose source may not publish its kind is recorded as rejected, never applied
        if crate::provenance::refuse(
            &transaction,
            consumer,
            subject,
            event,
            to_millis(clock.now()),
        )
        .await?
        {
            continue;
        }
        let span = tracing::info_span!(
            "consume",
            otel.name = format!("{consumer} process {}", crate::outbox::kind_of_subject(subject)),
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.destination.name = subject,
            messaging.consumer.group.name = consumer,
            messaging.message.id = %event.event_id,
            consumer,
            subject,
            event_id = %event.event_id,
            case_id = %event.case_id,
            department = crate::outbox::department_of_subject(subject).unwrap_or_default(),
        );
        crate::telemetry::set_parent_from_traceparent(&span, inbound.traceparent);
        // an event recorded by this batch's claim is applied once: a second copy of it in the same
        // batch finds it taken and is skipped as a duplicate
        let fresh = claimed
            .as_mut()
            .map(|claimed| claimed.remove(event.event_id.as_str()));
        let outcome = apply_event(
            &transaction,
            clock,
            consumer,
            handler,
            subject,
            event,
            isolation,
            fresh,
        )
        .instrument(span)
        .await?;
        match outcome {
            EventOutcome::Done => {}
            EventOutcome::NeedsIsolation => {
                transaction.rollback().await?;
                return Ok(false);
            }
            EventOutcome::Transient(error) => return Err(error.into()),
        }
    }
    handler.before_commit(&transaction).await?;
    transaction.commit().await?;
    Ok(true)
}

/// Applies one event inside the batch transaction, directly or in a savepoint. `fresh` says whether
/// the batch's claim already recorded the event (`Some(true)`) or found it handled before
/// (`Some(false)`); `None`: record it here.
#[allow(clippy::too_many_arguments)]
async fn apply_event<H: EventHandler>(
    transaction: &DatabaseTransaction,
    clock: &SharedClock,
    consumer: &str,
    handler: &Arc<H>,
    subject: &str,
    event: &Event,
    isolation: Isolation,
    fresh: Option<bool>,
) -> Result<EventOutcome, DbErr> {
    let consumer_attribute = [crate::metrics::attribute("consumer", consumer.to_string())];
    let now_ms = to_millis(clock.now());
    let fresh = match fresh {
        Some(fresh) => fresh,
        None => record_once(transaction, consumer, &event.event_id, "applied", now_ms).await?,
    };
    if !fresh {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_delays_double_up_to_the_cap() {
        let delays: Vec<u64> = (1..=9)
            .map(|failures| restart_delay(failures).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [200, 400, 800, 1600, 3200, 6400, 12_800, 15_000, 15_000]
        );
        assert_eq!(restart_delay(u32::MAX), MAX_RESTART_DELAY);
    }

    #[test]
    fn an_applied_batch_starts_the_delays_over() {
        let quick = Duration::from_millis(10);
        let mut backoff = RestartBackoff::default();
        assert!(!backoff.succeeded(), "nothing to recover from yet");
        let waits: Vec<Duration> = (0..4).map(|_| backoff.interrupted(quick)).collect();
        assert_eq!(waits.last(), Some(&Duration::from_millis(1600)));
        assert!(backoff.succeeded(), "a batch after failures is a recovery");
        assert_eq!(backoff.interrupted(quick), Duration::from_millis(200));
        assert_eq!(backoff.interrupted(quick), Duration::from_millis(400));
    }

    #[test]
    fn a_long_healthy_run_counts_as_fresh() {
        let mut backoff = RestartBackoff::default();
        for _ in 0..10 {
            backoff.interrupted(Duration::ZERO);
        }
        assert_eq!(backoff.interrupted(Duration::ZERO), MAX_RESTART_DELAY);
        let after_an_idle_hour = backoff.interrupted(Duration::from_secs(3600));
        assert_eq!(after_an_idle_hour, Duration::from_millis(200));
    }
}
