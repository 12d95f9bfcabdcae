//! The transactional outbox: a state change and the events it causes commit in one transaction;
//! the relay publishes committed events to JetStream (async publish, `Nats-Msg-Id` = event id),
//! marks them sent, and is woken right after commit.

use crate::clock::{SharedClock, to_millis};
use crate::config::OutboxConfig;
use crate::db::is_postgres;
use async_nats::jetstream;
use sea_orm::sea_query::{LockBehavior, LockType};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The `whistle_outbox` table.
pub mod entity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "whistle_outbox")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        #[sea_orm(unique)]
        pub event_id: String,
        pub subject: String,
        pub payload: Vec<u8>,
        /// JSON object of NATS headers (CloudEvents attributes, traceparent).
        pub headers: String,
        pub created_at_ms: i64,
        pub sent_at_ms: Option<i64>,
        /// Failed publications while NATS was reachable.
        pub attempts: i32,
        /// Set when the event was given up on; parked events are skipped by the relay.
        pub parked_at_ms: Option<i64>,
        pub last_error: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One event waiting to be published.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub event_id: String,
    pub subject: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl OutboxEvent {
    /// What NATS counts against its `max_payload` when the relay publishes this event: payload,
    /// subject and headers (with `Nats-Msg-Id`), as the relay measures it before publishing.
    pub fn wire_bytes(&self) -> usize {
        let headers = headers_for(&self.event_id, &self.headers);
        self.payload.len() + headers_size(&headers) + self.subject.len()
    }

    /// [`OutboxEvent::wire_bytes`], counting a W3C `traceparent` header even when this event was
    /// made outside a trace: the size the event has when a traced request causes it.
    pub fn traced_wire_bytes(&self) -> usize {
        const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let traced = self.headers.iter().any(|(name, _)| name == "traceparent");
        let extra = if traced {
            0
        } else {
            "traceparent".len() + TRACEPARENT.len() + 4
        };
        self.wire_bytes() + extra
    }
}

/// Adds an event to the outbox inside the caller's transaction.
pub async fn enqueue<C: ConnectionTrait>(
    connection: &C,
    event: OutboxEvent,
    now_ms: i64,
) -> Result<(), DbErr> {
    entity::Entity::insert(row_of(event, now_ms))
        .exec_without_returning(connection)
        .await?;
    Ok(())
}

/// Enqueues several events with multi-row `INSERT`s, in their order (the relay publishes by id):
/// a statement per size of [`crate::db::statement_sizes`] instead of one per event.
pub async fn enqueue_many<C: ConnectionTrait>(
    connection: &C,
    events: impl IntoIterator<Item = OutboxEvent>,
    now_ms: i64,
) -> Result<(), DbErr> {
    let rows = events.into_iter().map(|event| row_of(event, now_ms));
    crate::db::insert_rows(connection, rows, None).await?;
    Ok(())
}

fn row_of(event: OutboxEvent, now_ms: i64) -> entity::ActiveModel {
    let headers: serde_json::Map<String, serde_json::Value> = event
        .headers
        .into_iter()
        .map(|(name, value)| (name, serde_json::Value::String(value)))
        .collect();
    entity::ActiveModel {
        event_id: Set(event.event_id),
        subject: Set(event.subject),
        payload: Set(event.payload),
        headers: Set(serde_json::Value::Object(headers).to_string()),
        created_at_ms: Set(now_ms),
        sent_at_ms: Set(None),
        attempts: Set(0),
        parked_at_ms: Set(None),
        last_error: Set(None),
        ..Default::default()
    }
}

/// Wakes the relay; call [`OutboxSignal::notify`] right after a commit that enqueued events.
#[derive(Debug, Clone, Default)]
pub struct OutboxSignal(Arc<Notify>);

impl OutboxSignal {
    pub fn notify(&self) {
        self.0.notify_one();
    }

    async fn notified(&self) {
        self.0.notified().await;
    }
}

/// Why a relay round stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox database error: {0}")]
    Database(#[from] DbErr),
    #[error("publishing to jetstream failed: {0}")]
    Publish(String),
}

/// Publishes committed events until shut down.
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    db: DatabaseConnection,
    jetstream: jetstream::Context,
    signal: OutboxSignal,
    config: OutboxConfig,
    clock: SharedClock,
}

impl OutboxRelay {
    pub fn new(
        db: DatabaseConnection,
        jetstream: jetstream::Context,
        signal: OutboxSignal,
        config: OutboxConfig,
        clock: SharedClock,
    ) -> Self {
        Self {
            db,
            jetstream,
            signal,
            config,
            clock,
        }
    }

    /// Runs until `shutdown`, then makes one last attempt to publish what is committed.
    pub async fn run(self, shutdown: CancellationToken) {
        let poll = Duration::from_millis(self.config.poll_interval_ms);
        let mut failures: u32 = 0;
        let mut last_purge = std::time::Instant::now();
        let mut last_backlog = std::time::Instant::now() - Duration::from_secs(1);
        loop {
            match self.drain().await {
                Ok(()) => failures = 0,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(%error, failures, "outbox relay round failed, retrying");
                }
            }
            if last_backlog.elapsed() >= Duration::from_secs(1) {
                last_backlog = std::time::Instant::now();
                if let Err(error) = self.record_backlog().await {
                    tracing::debug!(%error, "measuring the outbox backlog failed");
                }
            }
            if last_purge.elapsed() > Duration::from_secs(60) {
                last_purge = std::time::Instant::now();
                if let Err(error) = self.purge_sent().await {
                    tracing::warn!(%error, "purging sent outbox rows failed");
                }
            }
            // back off exponentially while publishing fails, up to 30 seconds
            let wait = if failures == 0 {
                poll
            } else {
                Duration::from_millis(100u64 << failures.min(8)).min(Duration::from_secs(30))
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.signal.notified(), if failures == 0 => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if let Err(error) = self.drain().await {
            tracing::warn!(%error, "outbox relay stopped with unpublished events; they go out on next start");
        }
    }

    /// Publishes batches until the outbox is empty.
    pub async fn drain(&self) -> Result<(), RelayError> {
        loop {
            let published = self.relay_batch().await?;
            if published < self.config.batch_size {
                return Ok(());
            }
        }
    }

    /// Publishes one batch; returns how many events were claimed.
    ///
    /// A row that cannot be published while NATS is reachable (too large for the server, refused
    /// by it) gets an attempt counted; after `outbox.max_attempts` it is parked, so it never blocks
    /// the rows behind it. A row larger than the server's `max_payload` is parked at once. Failures
    /// while NATS is unreachable count against no row: they end the round and are retried.
    async fn relay_batch(&self) -> Result<u64, RelayError> {
        let postgres = is_postgres(&self.db);
        // On PostgreSQL several replicas relay at once: each claims rows with SKIP LOCKED inside a
        // transaction held across the publish. SQLite has one writer and one replica, so no claim.
        let transaction = if postgres {
            Some(self.db.begin().await?)
        } else {
            None
        };
        let mut query = entity::Entity::find()
            .filter(entity::Column::SentAtMs.is_null())
            .filter(entity::Column::ParkedAtMs.is_null())
            .order_by_asc(entity::Column::Id)
            .limit(self.config.batch_size);
        if postgres {
            query = query.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let rows = match &transaction {
            Some(transaction) => query.all(transaction).await?,
            None => query.all(&self.db).await?,
        };
        let claimed = rows.len() as u64;
        if rows.is_empty() {
            if let Some(transaction) = transaction {
                transaction.commit().await?;
            }
            return Ok(0);
        }

        let max_payload = self.jetstream.client().server_info().max_payload;
        let mut pending = Vec::with_capacity(rows.len());
        let mut failed: Vec<(&entity::Model, String)> = Vec::new();
        let mut outage = None;
        for row in &rows {
            let mut headers = nats_headers(row);
            // the relay's producer span continues the trace of the transaction that committed the
            // event, and the consumers continue the relay's span
            let span = publish_span(row, &headers);
            if let Some(traceparent) = span.in_scope(crate::telemetry::current_traceparent) {
                headers.insert("traceparent", traceparent.as_str());
            }
            let size = row.payload.len() + headers_size(&headers) + row.subject.len();
            if max_payload > 0 && size > max_payload {
                self.park(
                    transaction.as_ref(),
                    row,
                    format!("event of {size} bytes exceeds the nats server's max_payload of {max_payload}"),
                )
                .await?;
                continue;
            }
            match self
                .jetstream
                .publish_with_headers(row.subject.clone(), headers, row.payload.clone().into())
                .instrument(span)
                .await
            {
                Ok(ack) => pending.push((row, ack)),
                Err(error) if self.connected() => failed.push((row, error.to_string())),
                Err(error) => {
                    outage = Some(error.to_string());
                    break;
                }
            }
        }
        let mut sent_ids = Vec::with_capacity(pending.len());
        for (row, ack) in pending {
            match ack.await {
                Ok(_) => {
                    sent_ids.push(row.id);
                    crate::metrics::metrics()
                        .outbox_published
                        .add(1, &crate::metrics::subject_attributes(&row.subject));
                }
                Err(error) if self.connected() => failed.push((row, error.to_string())),
                Err(error) => {
                    outage.get_or_insert_with(|| error.to_string());
                }
            }
        }
        // marked in statements of a few fixed sizes, so each stays prepared (`db::statement_sizes`)
        let now_ms = to_millis(self.clock.now());
        let mut unmarked = sent_ids.as_slice();
        for size in crate::db::statement_sizes(sent_ids.len()) {
            let (chunk, rest) = unmarked.split_at(size);
            unmarked = rest;
            let update = entity::Entity::update_many()
                .col_expr(entity::Column::SentAtMs, now_ms.into())
                .filter(entity::Column::Id.is_in(chunk.iter().copied()));
            match &transaction {
                Some(transaction) => update.exec(transaction).await?,
                None => update.exec(&self.db).await?,
            };
        }
        let failures = failed.len();
        for (row, error) in failed {
            let attempts = row.attempts.saturating_add(1);
            if attempts >= self.config.max_attempts as i32 {
                self.park(transaction.as_ref(), row, error).await?;
            } else {
                tracing::warn!(outbox_id = row.id, event_id = %row.event_id, subject = %row.subject, attempts, %error, "publishing an event failed, will retry");
                let update = entity::Entity::update_many()
                    .col_expr(entity::Column::Attempts, attempts.into())
                    .col_expr(entity::Column::LastError, Some(error).into())
                    .filter(entity::Column::Id.eq(row.id));
                match &transaction {
                    Some(transaction) => update.exec(transaction).await?,
                    None => update.exec(&self.db).await?,
                };
            }
        }
        if let Some(transaction) = transaction {
            transaction.commit().await?;
        }
        tracing::debug!(published = sent_ids.len(), "outbox batch relayed");
        if outage.is_some() || failures > 0 {
            crate::metrics::metrics()
                .outbox_publish_failures
                .add(1, &[]);
        }
        match (outage, failures) {
            (Some(error), _) => Err(RelayError::Publish(error)),
            (None, 0) => Ok(claimed),
            (None, failures) => Err(RelayError::Publish(format!(
                "{failures} events failed to publish; they are retried and parked after {} attempts",
                self.config.max_attempts
            ))),
        }
    }

    fn connected(&self) -> bool {
        self.jetstream.client().connection_state() == async_nats::connection::State::Connected
    }

    /// Gives up on a row: it stays in the table, visible and retryable, and no longer blocks.
    async fn park(
        &self,
        transaction: Option<&sea_orm::DatabaseTransaction>,
        row: &entity::Model,
        reason: String,
    ) -> Result<(), DbErr> {
        tracing::error!(outbox_id = row.id, event_id = %row.event_id, subject = %row.subject, %reason, "event parked: it cannot be published; see whistle outbox list-parked");
        crate::metrics::metrics()
            .outbox_parked
            .add(1, &crate::metrics::subject_attributes(&row.subject));
        let update = entity::Entity::update_many()
            .col_expr(
                entity::Column::ParkedAtMs,
                Some(to_millis(self.clock.now())).into(),
            )
            .col_expr(
                entity::Column::Attempts,
                row.attempts.saturating_add(1).into(),
            )
            .col_expr(entity::Column::LastError, Some(reason).into())
            .filter(entity::Column::Id.eq(row.id));
        match transaction {
            Some(transaction) => update.exec(transaction).await?,
            None => update.exec(&self.db).await?,
        };
        Ok(())
    }

    /// Records the backlog and the age of the oldest unsent event as gauges.
    async fn record_backlog(&self) -> Result<(), DbErr> {
        let (count, oldest_ms) = backlog_and_oldest(&self.db).await?;
        let metrics = crate::metrics::metrics();
        metrics.outbox_backlog.record(count, &[]);
        let age = oldest_ms.map_or(0.0, |oldest| {
            (to_millis(self.clock.now()) - oldest).max(0) as f64 / 1000.0
        });
        metrics.outbox_oldest_unsent_age.record(age, &[]);
        Ok(())
    }

    async fn purge_sent(&self) -> Result<(), DbErr> {
        let cutoff = to_millis(self.clock.now()) - (self.config.retain_sent_secs as i64) * 1000;
        entity::Entity::delete_many()
            .filter(entity::Column::SentAtMs.lt(cutoff))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}

/// How many events wait to be published (parked ones excluded); for health and metrics.
pub async fn backlog(db: &DatabaseConnection) -> Result<u64, DbErr> {
    Ok(backlog_and_oldest(db).await?.0)
}

/// The number of unsent, unparked events and the creation time of the oldest.
async fn backlog_and_oldest(db: &DatabaseConnection) -> Result<(u64, Option<i64>), DbErr> {
    use sea_orm::PaginatorTrait;
    let waiting = || {
        entity::Entity::find()
            .filter(entity::Column::SentAtMs.is_null())
            .filter(entity::Column::ParkedAtMs.is_null())
    };
    let count = waiting().count(db).await?;
    let oldest = if count == 0 {
        None
    } else {
        waiting()
            .order_by_asc(entity::Column::Id)
            .one(db)
            .await?
            .map(|row| row.created_at_ms)
    };
    Ok((count, oldest))
}

/// Parked events, oldest first: what `whistle outbox list-parked` shows.
pub async fn list_parked(db: &DatabaseConnection) -> Result<Vec<entity::Model>, DbErr> {
    entity::Entity::find()
        .filter(entity::Column::ParkedAtMs.is_not_null())
        .filter(entity::Column::SentAtMs.is_null())
        .order_by_asc(entity::Column::Id)
        .all(db)
        .await
}

/// Puts parked events back in line (all of them when `ids` is empty), e.g. after the server's
/// `max_payload` was raised; returns how many.
pub async fn retry_parked(db: &DatabaseConnection, ids: &[i64]) -> Result<u64, DbErr> {
    let mut update = entity::Entity::update_many()
        .col_expr(entity::Column::ParkedAtMs, Option::<i64>::None.into())
        .col_expr(entity::Column::Attempts, 0.into())
        .filter(entity::Column::ParkedAtMs.is_not_null())
        .filter(entity::Column::SentAtMs.is_null());
    if !ids.is_empty() {
        update = update.filter(entity::Column::Id.is_in(ids.to_vec()));
    }
    Ok(update.exec(db).await?.rows_affected)
}

/// What the relay does with a preloaded history's outbox rows (`whistle bench --preload`), one
/// chunk of history at a time: reads back the rows added since the last chunk (the events the other
/// services consume), deletes those made longer ago than the relay keeps sent rows, and marks the
/// rest sent when they were made. It finds the chunk's rows by id, after the last one it relayed:
/// a search for `sent_at_ms IS NULL` would walk the index entries every earlier chunk left dead
/// (until a vacuum), longer with every chunk.
#[derive(Debug, Default)]
pub struct HistoryRelay {
    relayed_up_to: i64,
}

impl HistoryRelay {
    /// Relays the rows enqueued since the last call, in `transaction`; returns them as
    /// `(subject, event)`, oldest first.
    pub async fn relay<C: ConnectionTrait>(
        &mut self,
        transaction: &C,
        now_ms: i64,
    ) -> anyhow::Result<Vec<(String, crate::envelope::Event)>> {
        let after = entity::Column::Id.gt(self.relayed_up_to);
        let rows = entity::Entity::find()
            .filter(after.clone())
            .order_by_asc(entity::Column::Id)
            .all(transaction)
            .await?;
        let Some(last) = rows.last().map(|row| row.id) else {
            return Ok(Vec::new());
        };
        let retain_ms = (OutboxConfig::default().retain_sent_secs as i64) * 1000;
        entity::Entity::delete_many()
            .filter(after.clone())
            .filter(entity::Column::CreatedAtMs.lt(now_ms - retain_ms))
            .exec(transaction)
            .await?;
        entity::Entity::update_many()
            .col_expr(
                entity::Column::SentAtMs,
                sea_orm::sea_query::Expr::col(entity::Column::CreatedAtMs),
            )
            .filter(after)
            .exec(transaction)
            .await?;
        self.relayed_up_to = last;
        rows.into_iter()
            .map(|row| Ok((row.subject, crate::envelope::decode(&row.payload)?)))
            .collect()
    }
}

/// A producer span for publishing `row`, child of the trace its `traceparent` header names.
fn publish_span(row: &entity::Model, headers: &async_nats::HeaderMap) -> tracing::Span {
    let header = |name: &str| headers.get(name).map(|value| value.as_str().to_string());
    let case_id = header("ce-subject").unwrap_or_default();
    let department = department_of_subject(&row.subject).unwrap_or_default();
    let span = tracing::info_span!(
        "publish",
        otel.name = format!("publish {}", kind_of_subject(&row.subject)),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.destination.name = %row.subject,
        messaging.message.id = %row.event_id,
        case_id = %case_id,
        department = %department,
    );
    crate::telemetry::set_parent_from_traceparent(&span, header("traceparent").as_deref());
    span
}

/// `whistle.issued` from `whistle.v1.<city>.<district>.<street>.<department>.issued`.
pub(crate) fn kind_of_subject(subject: &str) -> String {
    let family = subject.split('.').next().unwrap_or_default();
    let name = subject.rsplit('.').next().unwrap_or_default();
    format!("{family}.{name}")
}

/// The department of a whistle subject, `None` for case subjects.
pub(crate) fn department_of_subject(subject: &str) -> Option<String> {
    let tokens: Vec<&str> = subject.split('.').collect();
    (tokens.first() == Some(&"whistle") && tokens.len() == 7).then(|| tokens[5].to_string())
}

fn headers_size(headers: &async_nats::HeaderMap) -> usize {
    // "NATS/1.0\r\n" + "name: value\r\n" per header + "\r\n"
    12 + headers
        .iter()
        .map(|(name, values)| {
            values
                .iter()
                .map(|value| AsRef::<str>::as_ref(name).len() + value.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum::<usize>()
}

fn nats_headers(row: &entity::Model) -> async_nats::HeaderMap {
    let stored: Vec<(String, String)> = match serde_json::from_str(&row.headers) {
        Ok(serde_json::Value::Object(stored)) => stored
            .into_iter()
            .filter_map(|(name, value)| match value {
                serde_json::Value::String(value) => Some((name, value)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    headers_for(&row.event_id, &stored)
}

/// The NATS headers of an event as the relay publishes it: `Nats-Msg-Id` = `message_id` (the event
/// id, so JetStream drops re-publications) and the event's own headers.
pub fn headers_for(message_id: &str, headers: &[(String, String)]) -> async_nats::HeaderMap {
    let mut map = async_nats::HeaderMap::new();
    map.insert(async_nats::header::NATS_MESSAGE_ID, message_id);
    for (name, value) in headers {
        map.insert(name.as_str(), value.as_str());
    }
    map
}
