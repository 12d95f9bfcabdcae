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

/// Adds an event to the outbox inside the caller's transaction.
pub async fn enqueue<C: ConnectionTrait>(
    connection: &C,
    event: OutboxEvent,
    now_ms: i64,
) -> Result<(), DbErr> {
    let headers: serde_json::Map<String, serde_json::Value> = event
        .headers
        .into_iter()
        .map(|(name, value)| (name, serde_json::Value::String(value)))
        .collect();
    entity::Entity::insert(entity::ActiveModel {
        event_id: Set(event.event_id),
        subject: Set(event.subject),
        payload: Set(event.payload),
        headers: Set(serde_json::Value::Object(headers).to_string()),
        created_at_ms: Set(now_ms),
        sent_at_ms: Set(None),
        ..Default::default()
    })
    .exec_without_returning(connection)
    .await?;
    Ok(())
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
        loop {
            match self.drain().await {
                Ok(()) => failures = 0,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(%error, failures, "outbox relay round failed, retrying");
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

        let mut pending = Vec::with_capacity(rows.len());
        let mut publish_error = None;
        for row in &rows {
            let headers = nats_headers(row);
            match self
                .jetstream
                .publish_with_headers(row.subject.clone(), headers, row.payload.clone().into())
                .await
            {
                Ok(ack) => pending.push((row.id, row.subject.as_str(), ack)),
                Err(error) => {
                    publish_error = Some(error.to_string());
                    break;
                }
            }
        }
        let mut sent_ids = Vec::with_capacity(pending.len());
        for (id, subject, ack) in pending {
            match ack.await {
                Ok(_) => {
                    sent_ids.push(id);
                    crate::metrics::metrics()
                        .outbox_published
                        .add(1, &crate::metrics::subject_attributes(subject));
                }
                Err(error) => {
                    publish_error.get_or_insert_with(|| error.to_string());
                }
            }
        }
        if !sent_ids.is_empty() {
            let now_ms = to_millis(self.clock.now());
            let update = entity::Entity::update_many()
                .col_expr(entity::Column::SentAtMs, now_ms.into())
                .filter(entity::Column::Id.is_in(sent_ids.clone()));
            match &transaction {
                Some(transaction) => update.exec(transaction).await?,
                None => update.exec(&self.db).await?,
            };
        }
        if let Some(transaction) = transaction {
            transaction.commit().await?;
        }
        tracing::debug!(published = sent_ids.len(), "outbox batch relayed");
        if publish_error.is_some() {
            crate::metrics::metrics()
                .outbox_publish_failures
                .add(1, &[]);
        }
        match publish_error {
            Some(error) => Err(RelayError::Publish(error)),
            None => Ok(claimed),
        }
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

/// How many events wait to be published; for health and metrics.
pub async fn backlog(db: &DatabaseConnection) -> Result<u64, DbErr> {
    use sea_orm::PaginatorTrait;
    entity::Entity::find()
        .filter(entity::Column::SentAtMs.is_null())
        .count(db)
        .await
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
