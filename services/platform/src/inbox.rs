//! The idempotent consumer: a durable JetStream pull consumer whose handler applies each event and
//! records `(consumer, event_id)` in the same transaction, so a redelivered event is acked and skipped.

use crate::clock::{SharedClock, to_millis};
use crate::envelope::{self, Event};
use async_nats::jetstream::consumer::{FromConsumer, pull};
use async_nats::jetstream::{self, AckKind};
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
    let pairs: Vec<(&str, &str)> = event_ids.iter().map(|id| (consumer, *id)).collect();
    Ok(record_pairs_once(connection, &pairs, now_ms)
        .await?
        .into_iter()
        .map(|(_, event_id)| event_id)
        .collect())
}

/// [`record_batch_once`] for events of several consumers at once (a batch of a
/// [`run_consumers`] group): records each `(consumer, event_id)` and returns the pairs not
/// recorded before.
pub async fn record_pairs_once<C: ConnectionTrait>(
    connection: &C,
    pairs: &[(&str, &str)],
    now_ms: i64,
) -> Result<std::collections::HashSet<(String, String)>, DbErr> {
    let backend = connection.get_database_backend();
    let mut fresh = std::collections::HashSet::with_capacity(pairs.len());
    // statements of a few fixed sizes, so each stays prepared (`db::statement_sizes`)
    let mut rest = pairs;
    for size in crate::db::statement_sizes(pairs.len()) {
        let (chunk, after) = rest.split_at(size);
        rest = after;
        let mut sql = String::from(
            "INSERT INTO whistle_inbox (consumer, event_id, outcome, processed_at_ms) VALUES ",
        );
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() * 4);
        for (index, (consumer, event_id)) in chunk.iter().enumerate() {
            let base = index * 4;
            if index > 0 {
                sql.push_str(", ");
            }
            for column in 1..=4 {
                sql.push_str(if column == 1 { "(" } else { ", " });
                crate::db::push_placeholder(&mut sql, backend, base + column);
            }
            sql.push(')');
            values.push((*consumer).into());
            values.push((*event_id).into());
            values.push("applied".into());
            values.push(now_ms.into());
        }
        sql.push_str(" ON CONFLICT (consumer, event_id) DO NOTHING RETURNING consumer, event_id");
        let statement = sea_orm::Statement::from_sql_and_values(backend, sql, values);
        for row in connection.query_all_raw(statement).await? {
            fresh.insert((
                row.try_get::<String>("", "consumer")?,
                row.try_get::<String>("", "event_id")?,
            ));
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

    /// Whether a batch that holds an event on `subject` may wait out the consumer's batch window
    /// ([`run_consumers`]) for more events. An event someone is waiting on (a department's first
    /// notice of a whistle) answers false: its batch is applied as soon as what is ready is in.
    /// Every event may wait, by default; without a window nothing waits either way.
    fn may_wait(&self, subject: &str) -> bool {
        let _ = subject;
        true
    }

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
    /// Every subject the consumer may be given (one subject: the only form NATS 2.9 takes).
    pub filter_subject: String,
    /// The subjects of the events the handler applies, each within `filter_subject`; empty for
    /// all of them. Where the server takes several filter subjects per consumer (NATS 2.10 and
    /// later) the consumer is narrowed to these, and the events the handler would skip are never
    /// delivered to it; on an older server it is given everything under `filter_subject` and the
    /// handler skips the rest ([`EventHandler::applies`]). So every event the handler applies
    /// must be on one of them.
    pub applied_subjects: Vec<String>,
    /// Events applied per transaction, at most.
    pub max_batch: usize,
}

impl ConsumerSpec {
    /// The consumer's filter on a server of `version`: the applied subjects where it takes several
    /// (2.10 and later), otherwise `filter_subject`.
    fn filter_on(&self, version: &str) -> Filter {
        if self.applied_subjects.is_empty() || !takes_several_filters(version) {
            Filter::One(self.filter_subject.clone())
        } else {
            let mut subjects = self.applied_subjects.clone();
            subjects.sort();
            subjects.dedup();
            Filter::Several(subjects)
        }
    }
}

/// What a durable consumer is given: everything under one subject, or several subjects.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Filter {
    One(String),
    Several(Vec<String>),
}

impl Filter {
    fn of(config: &jetstream::consumer::Config) -> Self {
        if config.filter_subjects.is_empty() {
            Filter::One(config.filter_subject.clone())
        } else {
            let mut subjects = config.filter_subjects.clone();
            subjects.sort();
            Filter::Several(subjects)
        }
    }

    fn apply_to(&self, config: &mut pull::Config) {
        match self {
            Filter::One(subject) => {
                config.filter_subject = subject.clone();
                config.filter_subjects = Vec::new();
            }
            Filter::Several(subjects) => {
                config.filter_subject = String::new();
                config.filter_subjects = subjects.clone();
            }
        }
    }
}

/// Whether a nats-server of `version` (`2.10.7`, `v2.11.0-beta.1`) takes several filter subjects
/// per consumer, which came in 2.10.
pub fn takes_several_filters(version: &str) -> bool {
    let mut numbers = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|part| part.parse::<u64>().unwrap_or(0));
    let major = numbers.next().unwrap_or(0);
    let minor = numbers.next().unwrap_or(0);
    (major, minor) >= (2, 10)
}

/// The durable pull consumer of `spec`, created if it is missing, its filter brought to what
/// [`ConsumerSpec::filter_on`] says for this server. Every replica of a service shares the consumer,
/// and whichever starts first creates or narrows it; a replica of an older version that finds it
/// narrowed reads it as it is (it skips nothing it would have applied). Where the server refuses
/// the change (a cluster whose JetStream leader is older than the server this client is connected
/// to), the consumer is read as it is: on the wider filter the handler skips what it does not apply.
async fn durable_consumer(
    jetstream: &jetstream::Context,
    spec: &ConsumerSpec,
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    let stream = jetstream.get_stream(&spec.stream).await?;
    let version = jetstream.client().server_info().version;
    let filter = spec.filter_on(&version);
    let config = |filter: &Filter| {
        let mut config = pull::Config {
            durable_name: Some(spec.durable.clone()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 10_000,
            ..Default::default()
        };
        filter.apply_to(&mut config);
        config
    };
    let mut consumer = match stream
        .get_or_create_consumer(&spec.durable, config(&filter))
        .await
    {
        Ok(consumer) => consumer,
        Err(error) if matches!(filter, Filter::Several(_)) => {
            // e.g. NATS permissions generated before consumers took several subjects
            tracing::warn!(consumer = %spec.durable, %error, "cannot create the consumer with several filter subjects: created on the whole of {} instead", spec.filter_subject);
            let whole = Filter::One(spec.filter_subject.clone());
            stream
                .get_or_create_consumer(&spec.durable, config(&whole))
                .await?
        }
        Err(error) => return Err(error.into()),
    };
    let found = Filter::of(&consumer.cached_info().config);
    if found != filter && takes_several_filters(&version) {
        // kept by an earlier version, or before the server took several filter subjects
        let mut changed =
            pull::Config::try_from_consumer_config(consumer.cached_info().config.clone())
                .map_err(|error| anyhow::anyhow!(error))?;
        filter.apply_to(&mut changed);
        match stream.update_consumer(changed).await {
            Ok(updated) => {
                tracing::info!(consumer = %spec.durable, from = ?found, to = ?filter, "consumer's filter changed");
                consumer = updated;
            }
            Err(error) => {
                tracing::warn!(consumer = %spec.durable, %error, filter = ?found, "consumer's filter left as it is");
            }
        }
    }
    Ok(consumer)
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
    run_consumers(
        jetstream,
        db,
        clock,
        vec![spec],
        Duration::ZERO,
        handler,
        shutdown,
    )
    .await;
}

/// Consumes several durable consumers (on different streams) into one handler, one batch at a
/// time: a batch holds what is ready on any of them, up to the largest `max_batch`, and their events
/// are applied in one transaction (each recorded in the inbox under its own consumer). A service
/// whose streams carry events about the same rows (evaluation's cases and whistles) so applies
/// them together instead of two transactions locking the same rows against each other.
///
/// `batch_window`: after a batch's first message, wait this long for more before applying it
/// (zero: apply what is ready at once). Fewer, larger transactions for a consumer off the latency
/// path; every event waits up to the window longer.
pub async fn run_consumers<H: EventHandler>(
    jetstream: jetstream::Context,
    db: DatabaseConnection,
    clock: SharedClock,
    specs: Vec<ConsumerSpec>,
    batch_window: Duration,
    handler: Arc<H>,
    shutdown: CancellationToken,
) {
    let name = specs
        .iter()
        .map(|spec| spec.durable.as_str())
        .collect::<Vec<_>>()
        .join("+");
    let mut backoff = RestartBackoff::default();
    while !shutdown.is_cancelled() {
        let started = tokio::time::Instant::now();
        let group = Group {
            specs: &specs,
            batch_window,
        };
        let result = consume(
            &jetstream,
            &db,
            &clock,
            group,
            &handler,
            &shutdown,
            &mut backoff,
        )
        .await;
        match result {
            Ok(()) => return,
            Err(error) => {
                let wait = backoff.interrupted(started.elapsed());
                tracing::warn!(consumer = %name, %error, ?wait, "consumer interrupted, restarting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// The consumers a loop reads together, and how it gathers a batch.
#[derive(Clone, Copy)]
struct Group<'a> {
    specs: &'a [ConsumerSpec],
    batch_window: Duration,
}

impl Group<'_> {
    fn max_batch(&self) -> usize {
        self.specs
            .iter()
            .map(|spec| spec.max_batch)
            .max()
            .unwrap_or(1)
            .max(1)
    }
}

/// A message and the consumer (index into the group) it came from.
type Delivery = (usize, Result<jetstream::Message, anyhow::Error>);

/// Gathers the next batch: waits for one message, then takes what is ready and, with a window,
/// what arrives within it, up to `max_batch`. A batch that holds an event that may not wait
/// (`may_wait` answers false for its subject) stops gathering at what is ready. Returns the batch
/// and whether the message stream ended; `None` when shutdown came first with nothing in hand.
async fn next_batch(
    messages: &mut (impl futures::Stream<Item = Delivery> + Unpin),
    group: Group<'_>,
    may_wait: impl Fn(&str) -> bool,
    shutdown: &CancellationToken,
) -> Option<(Vec<Delivery>, bool)> {
    let first = tokio::select! {
        _ = shutdown.cancelled() => return None,
        first = messages.next() => first,
    };
    let Some(first) = first else {
        return Some((Vec::new(), true));
    };
    let max_batch = group.max_batch();
    let deadline = tokio::time::Instant::now() + group.batch_window;
    let waits = |(_, message): &Delivery| {
        message
            .as_ref()
            .map_or(true, |message| may_wait(message.subject.as_str()))
    };
    let mut may_gather = !group.batch_window.is_zero() && waits(&first);
    let mut batch = vec![first];
    while batch.len() < max_batch {
        // what is ready now, without waiting
        let next = match futures::FutureExt::now_or_never(messages.next()) {
            Some(next) => next,
            None if !may_gather => break,
            None => tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => break,
                next = messages.next() => next,
            },
        };
        let Some(delivery) = next else {
            return Some((batch, true));
        };
        may_gather &= waits(&delivery);
        batch.push(delivery);
    }
    Some((batch, false))
}

async fn consume<H: EventHandler>(
    jetstream: &jetstream::Context,
    db: &DatabaseConnection,
    clock: &SharedClock,
    group: Group<'_>,
    handler: &Arc<H>,
    shutdown: &CancellationToken,
    backoff: &mut RestartBackoff,
) -> anyhow::Result<()> {
    let metrics = crate::metrics::metrics();
    let mut streams = Vec::with_capacity(group.specs.len());
    for (index, spec) in group.specs.iter().enumerate() {
        let consumer = durable_consumer(jetstream, spec).await?;
        metrics.initialise_consumer(&spec.durable);
        metrics.consumer_pending.record(
            consumer.cached_info().num_pending,
            &[crate::metrics::attribute("consumer", spec.durable.clone())],
        );
        let messages = consumer
            .stream()
            .max_messages_per_batch(spec.max_batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await?
            .map(move |message| (index, message.map_err(|error| anyhow::anyhow!(error))))
            // merged, an ended stream would drop out of the group unnoticed: it ends as an error,
            // which restarts the group
            .chain(futures::stream::once(futures::future::ready((
                index,
                Err(anyhow::anyhow!("message stream of {} ended", spec.durable)),
            ))))
            .boxed();
        streams.push(messages);
    }
    let mut messages = futures::stream::select_all(streams);
    loop {
        let Some((batch, ended)) = next_batch(
            &mut messages,
            group,
            |subject| handler.may_wait(subject),
            shutdown,
        )
        .await
        else {
            return Ok(());
        };
        let mut deliveries = Vec::with_capacity(batch.len());
        let mut failed = None;
        for (index, message) in batch {
            match message {
                Ok(message) => deliveries.push(Delivered {
                    consumer: group.specs[index].durable.as_str(),
                    message,
                }),
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
        }
        // what was delivered before a failure is applied and acknowledged before the restart,
        // instead of waiting out its ack_wait to be delivered again
        if !deliveries.is_empty() {
            apply_and_ack(db, clock, handler, &deliveries, backoff).await?;
        }
        if let Some(error) = failed {
            return Err(error);
        }
        if ended {
            anyhow::bail!("message stream ended");
        }
        if shutdown.is_cancelled() {
            return Ok(());
        }
    }
}

/// A message of a batch and the durable consumer that delivered it.
struct Delivered<'a> {
    consumer: &'a str,
    message: jetstream::Message,
}

/// Applies a gathered batch, records its metrics per consumer and acks its messages.
async fn apply_and_ack<H: EventHandler>(
    db: &DatabaseConnection,
    clock: &SharedClock,
    handler: &Arc<H>,
    deliveries: &[Delivered<'_>],
    backoff: &mut RestartBackoff,
) -> anyhow::Result<()> {
    let metrics = crate::metrics::metrics();
    let mut consumers: Vec<&str> = deliveries
        .iter()
        .map(|delivered| delivered.consumer)
        .collect();
    consumers.sort_unstable();
    consumers.dedup();
    for consumer in &consumers {
        let messages: Vec<&jetstream::Message> = deliveries
            .iter()
            .filter(|delivered| delivered.consumer == *consumer)
            .map(|delivered| &delivered.message)
            .collect();
        record_delivery(consumer, &messages);
    }
    let started = std::time::Instant::now();
    let applied = apply_batch(db, clock, handler, deliveries).await?;
    let duration = started.elapsed().as_secs_f64();
    for consumer in &consumers {
        let attributes = [crate::metrics::attribute("consumer", consumer.to_string())];
        let delivered = deliveries
            .iter()
            .filter(|delivered| delivered.consumer == *consumer)
            .count();
        let applied = applied.get(consumer).copied().unwrap_or(0);
        let skipped = delivered - applied;
        if skipped > 0 {
            metrics.events_skipped.add(skipped as u64, &attributes);
        }
        if applied > 0 {
            // the batch this consumer's events went into, however many consumers shared it
            metrics
                .consumer_batch_duration
                .record(duration, &attributes);
            metrics
                .consumer_batch_size
                .record(applied as u64, &attributes);
        }
    }
    if applied.values().any(|applied| *applied > 0) {
        handler.after_commit();
    }
    if backoff.succeeded() {
        tracing::info!(consumers = ?consumers, "consumer recovered");
    }
    for delivered in deliveries {
        if let Err(error) = delivered.message.ack().await {
            tracing::warn!(%error, "ack failed, the event will be redelivered and skipped");
        }
    }
    Ok(())
}

/// Records redeliveries and, from the batch's last message, how many messages still wait.
fn record_delivery(consumer: &str, messages: &[&jetstream::Message]) {
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
    /// The durable consumer that delivered it (its inbox rows are kept under this name).
    consumer: &'a str,
    subject: &'a str,
    traceparent: Option<&'a str>,
    /// `None` when the payload is not an event; it is recorded under `message_id` and dropped.
    event: Option<Event>,
    message_id: Option<&'a str>,
}

impl<'a> Inbound<'a> {
    fn decode(consumer: &'a str, message: &'a jetstream::Message) -> Self {
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
            consumer,
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

/// Applies a batch in one transaction and returns how many of each consumer's messages went into
/// it. The events the handler has no use for ([`EventHandler::applies`]) are left out; a batch of
/// nothing else opens no transaction. The fast path runs every handler directly in the
/// transaction; rejections are rare, so only a batch that meets one is redone with a savepoint per
/// event.
async fn apply_batch<'a, H: EventHandler>(
    db: &DatabaseConnection,
    clock: &SharedClock,
    handler: &Arc<H>,
    deliveries: &'a [Delivered<'a>],
) -> anyhow::Result<std::collections::HashMap<&'a str, usize>> {
    let inbound: Vec<Inbound<'_>> = deliveries
        .iter()
        .map(|delivered| Inbound::decode(delivered.consumer, &delivered.message))
        // an undecodable message is recorded as rejected, so it counts as one to apply
        .filter(|inbound| {
            inbound
                .event
                .as_ref()
                .is_none_or(|event| handler.applies(inbound.subject, event))
        })
        .collect();
    let mut applied = std::collections::HashMap::new();
    if inbound.is_empty() {
        return Ok(applied);
    }
    let mut outcome = staged(
        handler.as_ref(),
        apply_batch_isolated(db, clock, handler, &inbound, Isolation::Batch),
    )
    .await;
    if matches!(outcome, Ok(false)) {
        outcome = staged(
            handler.as_ref(),
            apply_batch_isolated(db, clock, handler, &inbound, Isolation::PerEvent),
        )
        .await;
    }
    if let Err(error) = outcome {
        // whatever failed (a deadlock, a lost connection), JetStream redelivers the batch soon
        // rather than after the ack wait
        for delivered in deliveries {
            let _ = delivered
                .message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
        return Err(error);
    }
    for inbound in &inbound {
        *applied.entry(inbound.consumer).or_insert(0) += 1;
    }
    Ok(applied)
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
            let mut pairs: Vec<(&str, &str)> = batch
                .iter()
                .filter_map(|inbound| {
                    Some((inbound.consumer, inbound.subject, inbound.event.as_ref()?))
                })
                .filter(|(_, subject, event)| crate::provenance::check(subject, event).is_ok())
                .map(|(consumer, _, event)| (consumer, event.event_id.as_str()))
                .collect();
            pairs.sort_unstable();
            pairs.dedup();
            let mut claimed: std::collections::HashMap<String, std::collections::HashSet<String>> =
                std::collections::HashMap::new();
            for (consumer, event_id) in
                record_pairs_once(&transaction, &pairs, to_millis(clock.now())).await?
            {
                claimed.entry(consumer).or_default().insert(event_id);
            }
            Some(claimed)
        }
        Isolation::PerEvent => {
            // a rejected event's savepoint is rolled back with what it enqueued: copies kept in
            // memory could name events that never committed, so the relay reads the table
            crate::outbox::stage_to_table();
            None
        }
    };
    for inbound in batch {
        let consumer = inbound.consumer;
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
        let fresh = claimed.as_mut().map(|claimed| {
            claimed
                .get_mut(consumer)
                .is_some_and(|ids| ids.remove(event.event_id.as_str()))
        });
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
    fn several_filter_subjects_from_nats_2_10() {
        for version in ["2.10.0", "v2.10.7", "2.11.0-beta.1", "2.15.1", "3.0.0"] {
            assert!(takes_several_filters(version), "{version}");
        }
        for version in ["2.9.10", "v2.9.25", "2.2.0", "1.4.1", "", "garbage"] {
            assert!(!takes_several_filters(version), "{version}");
        }
    }

    #[test]
    fn a_consumer_is_narrowed_only_where_it_names_subjects_and_the_server_takes_them() {
        let spec = |applied: &[&str]| ConsumerSpec {
            stream: "S".into(),
            durable: "d".into(),
            filter_subject: "case.v1.>".into(),
            applied_subjects: applied.iter().map(|subject| subject.to_string()).collect(),
            max_batch: 1,
        };
        let whole = Filter::One("case.v1.>".into());
        assert_eq!(spec(&[]).filter_on("2.15.1"), whole);
        assert_eq!(spec(&["case.v1.*.*.*.b"]).filter_on("2.9.10"), whole);
        assert_eq!(
            spec(&["case.v1.*.*.*.b", "case.v1.*.*.*.a", "case.v1.*.*.*.b"]).filter_on("2.10.0"),
            Filter::Several(vec!["case.v1.*.*.*.a".into(), "case.v1.*.*.*.b".into()])
        );
    }

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
