//! The transactional outbox: a state change and the events it causes commit in one transaction;
//! the relay publishes committed events to JetStream (async publish, `Nats-Msg-Id` = event id) and
//! marks them sent. A committed transaction hands its events to the relay in memory ([`Staging`]);
//! the table is read at start, when told, after failures and as a periodic safety net.

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

/// Adds an event to the outbox inside the caller's transaction (and, inside a [`Staging`] scope,
/// keeps a copy for the relay).
pub async fn enqueue<C: ConnectionTrait>(
    connection: &C,
    event: OutboxEvent,
    now_ms: i64,
) -> Result<(), DbErr> {
    stage(std::slice::from_ref(&event));
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
    let events: Vec<OutboxEvent> = events.into_iter().collect();
    stage(&events);
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

/// The relay's side of a service: wakes it, and hands it the events of committed transactions.
///
/// Transactions that enqueue their events inside [`OutboxSignal::committing`] (or a
/// [`Staging`] scope) hand them to the relay in memory once they have committed: the relay
/// publishes them at once, without reading them back, and marks them sent a little later, many in
/// one statement. Rows written any other way are found by reading the table: call
/// [`OutboxSignal::notify`] after such a commit. See docs/design-notes.md, "The outbox relay".
#[derive(Debug, Clone, Default)]
pub struct OutboxSignal(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    wake: Notify,
    handoff: std::sync::Mutex<Handoff>,
}

/// The most event bytes handed over and not yet published; beyond it a transaction's events are
/// left to the table (the relay reads it next), so a stalled NATS cannot grow the memory.
const HANDOFF_BYTES: usize = 1 << 20;

impl OutboxSignal {
    /// Wakes the relay to read the table: call it after committing rows enqueued outside a
    /// [`Staging`] scope.
    pub fn notify(&self) {
        self.handoff().rescan = true;
        self.0.wake.notify_one();
    }

    /// Runs `transaction` (from `begin` to its commit) in a [`Staging`] scope and, when it returns
    /// `Ok`, hands the events it enqueued to the relay. The future must end with the commit: an
    /// `Ok` says the transaction committed.
    pub async fn committing<T, E>(
        &self,
        transaction: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let staging = self.staging();
        let outcome = staging.scope(transaction).await;
        if outcome.is_ok() {
            staging.committed();
        }
        outcome
    }

    /// [`enqueue_many`] in the caller's transaction, keeping the events for the relay: call
    /// [`Staging::committed`] on the answer once the transaction has committed.
    pub async fn enqueue_staged<C: ConnectionTrait>(
        &self,
        connection: &C,
        events: Vec<OutboxEvent>,
        now_ms: i64,
    ) -> Result<Staging, DbErr> {
        let staging = self.staging();
        staging
            .scope(enqueue_many(connection, events, now_ms))
            .await?;
        Ok(staging)
    }

    /// A scope for one transaction's events; see [`Staging`].
    pub fn staging(&self) -> Staging {
        Staging(Arc::new(std::sync::Mutex::new(StagingState {
            signal: Some(self.clone()),
            ticket: None,
            events: Vec::new(),
            to_table: false,
        })))
    }

    fn handoff(&self) -> std::sync::MutexGuard<'_, Handoff> {
        self.0
            .handoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn notified(&self) {
        self.0.wake.notified().await;
    }
}

tokio::task_local! {
    static STAGING: Arc<std::sync::Mutex<StagingState>>;
}

/// The events one transaction enqueues, kept for the relay until the transaction has committed.
///
/// [`enqueue`] and [`enqueue_many`] called inside [`Staging::scope`] (on the same task) keep a
/// copy of their events here. The first one takes the transaction's place in line (a ticket): the
/// relay publishes handed-over events in ticket order, and a transaction that took its ticket
/// earlier holds back those behind it until it commits or is dropped. A transaction takes its
/// ticket when it enqueues, after the locks it conflicts on, so of two transactions that meet on a
/// row the first to commit has the lower ticket, as its rows have the lower ids in the table.
///
/// [`Staging::committed`] after the commit hands the events over. Dropped without it (rolled back,
/// or an error after the commit), its place is resolved as unknown and the relay reads the table.
#[derive(Debug)]
pub struct Staging(Arc<std::sync::Mutex<StagingState>>);

#[derive(Debug)]
struct StagingState {
    signal: Option<OutboxSignal>,
    ticket: Option<u64>,
    events: Vec<OutboxEvent>,
    /// Set when part of the transaction may have been rolled back (a savepoint): its events are
    /// left to the table.
    to_table: bool,
}

impl Staging {
    /// Runs `work` with this staging as the scope of the task's enqueues.
    pub async fn scope<F: Future>(&self, work: F) -> F::Output {
        STAGING.scope(self.0.clone(), work).await
    }

    /// Hands the events over to the relay: call it once the transaction has committed.
    pub fn committed(self) {
        let mut state = self.state();
        let (Some(signal), Some(ticket)) = (state.signal.take(), state.ticket.take()) else {
            return;
        };
        let events = std::mem::take(&mut state.events);
        let to_table = state.to_table;
        drop(state);
        signal
            .handoff()
            .resolve(ticket, (!to_table).then_some(events));
        signal.0.wake.notify_one();
    }

    fn state(&self) -> std::sync::MutexGuard<'_, StagingState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let mut state = self.state();
        if let (Some(signal), Some(ticket)) = (state.signal.take(), state.ticket.take()) {
            drop(state);
            signal.handoff().resolve(ticket, None);
            signal.0.wake.notify_one();
        }
    }
}

/// Leaves the events of the current [`Staging`] scope to the table: call it when part of the
/// transaction may be rolled back on its own (a savepoint), since the copies kept could then name
/// events that never committed.
pub fn stage_to_table() {
    let _ = STAGING.try_with(|staging| {
        staging
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .to_table = true;
    });
}

/// Keeps a copy of `events` in the current [`Staging`] scope, if any.
fn stage(events: &[OutboxEvent]) {
    let _ = STAGING.try_with(|staging| {
        let mut state = staging
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(signal) = state.signal.clone() else {
            return;
        };
        if state.ticket.is_none() {
            state.ticket = Some(signal.handoff().take_ticket());
        }
        if !state.to_table {
            state.events.extend(events.iter().cloned());
        }
    });
}

/// The bytes handed-over events hold, as counted against [`HANDOFF_BYTES`].
fn weight(events: &[OutboxEvent]) -> usize {
    events
        .iter()
        .map(|event| event.payload.len() + event.subject.len())
        .sum()
}

/// The relay's line of transactions that enqueued events: tickets in the order they were taken.
#[derive(Debug, Default)]
struct Handoff {
    next_ticket: u64,
    line: std::collections::VecDeque<(u64, Place)>,
    bytes: usize,
    /// Set when the table holds committed events the line does not (written outside a staging,
    /// dropped, too many bytes, a failed publication): the relay reads the table next.
    rescan: bool,
}

#[derive(Debug)]
enum Place {
    /// Its transaction has not committed (or been dropped) yet.
    Open,
    /// Committed; these events wait to be published.
    Ready(Vec<OutboxEvent>),
    /// Committed or not, its events are left to the table.
    Unknown,
}

impl Handoff {
    fn take_ticket(&mut self) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.line.push_back((ticket, Place::Open));
        ticket
    }

    fn resolve(&mut self, ticket: u64, events: Option<Vec<OutboxEvent>>) {
        let Some(front) = self.line.front().map(|(ticket, _)| *ticket) else {
            return;
        };
        let Some((_, place)) = ticket
            .checked_sub(front)
            .and_then(|index| self.line.get_mut(index as usize))
        else {
            // already covered by a reading of the table
            return;
        };
        let bytes = events.as_deref().map_or(0, weight);
        *place = match events {
            Some(events) if self.bytes + bytes <= HANDOFF_BYTES => {
                self.bytes += bytes;
                Place::Ready(events)
            }
            // the relay reads the table when this place reaches the front of the line
            _ => Place::Unknown,
        };
    }

    /// The committed events at the front of the line, up to the first transaction still open or
    /// left to the table.
    fn take_ready(&mut self) -> Vec<OutboxEvent> {
        let mut ready = Vec::new();
        while let Some((_, Place::Ready(_))) = self.line.front() {
            if let Some((_, Place::Ready(events))) = self.line.pop_front() {
                self.bytes -= weight(&events);
                ready.extend(events);
            }
        }
        if matches!(self.line.front(), Some((_, Place::Unknown))) {
            self.rescan = true;
        }
        ready
    }

    /// The first ticket still open: every transaction before it has committed or been dropped, so
    /// a reading of the table that starts now sees all their events.
    fn resolved_before(&self) -> u64 {
        self.line
            .iter()
            .find(|(_, place)| matches!(place, Place::Open))
            .map_or(self.next_ticket, |(ticket, _)| *ticket)
    }

    /// Forgets the places before `ticket`, whose events a reading of the table published.
    fn covered(&mut self, ticket: u64) {
        while let Some((front, _)) = self.line.front() {
            if *front >= ticket {
                break;
            }
            if let Some((_, Place::Ready(events))) = self.line.pop_front() {
                self.bytes -= weight(&events);
            }
        }
        // a place left to the table behind an open one asks for a reading when it reaches the
        // front (`take_ready`), not now: reading before the open one resolves would not cover it
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

/// How long events published from memory wait to be marked sent, so that many share a statement.
/// Should the process stop before, they are published again at start (JetStream drops the copies
/// within its duplicate window, and consumers' inboxes after it).
pub const MARK_DELAY: Duration = Duration::from_millis(100);

/// Event ids published from memory and not yet marked sent.
#[derive(Debug, Default)]
struct Marks {
    event_ids: Vec<String>,
    since: Option<std::time::Instant>,
}

impl Marks {
    fn add(&mut self, event_ids: impl IntoIterator<Item = String>) {
        let before = self.event_ids.len();
        self.event_ids.extend(event_ids);
        if self.event_ids.len() > before && self.since.is_none() {
            self.since = Some(std::time::Instant::now());
        }
    }

    /// How long until the marks are due; `None` when there are none.
    fn due_in(&self) -> Option<Duration> {
        self.since
            .map(|since| MARK_DELAY.saturating_sub(since.elapsed()))
    }
}

/// An event on its way to JetStream, from the table or from memory.
struct Outgoing {
    event_id: String,
    subject: String,
    payload: Vec<u8>,
    headers: async_nats::HeaderMap,
}

/// What became of a batch of [`Outgoing`] events, by index.
#[derive(Default)]
struct Published {
    sent: Vec<usize>,
    /// Refused while NATS was reachable.
    refused: Vec<(usize, String)>,
    /// Larger than the server's `max_payload`.
    oversized: Vec<(usize, String)>,
    /// NATS unreachable: the events after the failure were not tried.
    outage: Option<String>,
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
    ///
    /// Each round publishes the events handed over in memory ([`Staging`]); it reads the table
    /// when told to ([`OutboxSignal::notify`], or something handed over could not be kept or
    /// published), after a failure, at start, and every `poll_interval_ms` for what no handover
    /// covers (another replica that stopped, a transaction that took longer than that). Events
    /// published from memory are marked sent within [`MARK_DELAY`], many in one statement.
    pub async fn run(self, shutdown: CancellationToken) {
        let poll = Duration::from_millis(self.config.poll_interval_ms);
        let mut failures: u32 = 0;
        let mut marks = Marks::default();
        let mut last_read: Option<std::time::Instant> = None;
        let mut last_purge = std::time::Instant::now();
        let mut last_backlog = std::time::Instant::now() - Duration::from_secs(1);
        loop {
            let outcome = self
                .round(&mut marks, &mut last_read, failures > 0, poll)
                .await;
            match outcome {
                Ok(()) => failures = 0,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    self.signal.handoff().rescan = true;
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
                // at once when the round found the table must be read (`take_ready`)
                let next_read = match last_read {
                    Some(at) if !self.signal.handoff().rescan => poll.saturating_sub(at.elapsed()),
                    _ => Duration::ZERO,
                };
                marks.due_in().map_or(next_read, |due| due.min(next_read))
            } else {
                Duration::from_millis(100u64 << failures.min(8)).min(Duration::from_secs(30))
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.signal.notified(), if failures == 0 => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let last = async {
            self.publish_handed_over(&mut marks).await?;
            self.mark_sent(&mut marks).await?;
            self.drain().await
        };
        if let Err(error) = last.await {
            tracing::warn!(%error, "outbox relay stopped with unpublished events; they go out on next start");
        }
    }

    /// One round: the table when it must be read, then what was handed over, then the marks that
    /// are due.
    async fn round(
        &self,
        marks: &mut Marks,
        last_read: &mut Option<std::time::Instant>,
        retrying: bool,
        poll: Duration,
    ) -> Result<(), RelayError> {
        let rescan = std::mem::take(&mut self.signal.handoff().rescan);
        let first = last_read.is_none();
        let polled = last_read.is_none_or(|at| at.elapsed() >= poll);
        if rescan || retrying || polled {
            // rows published from memory are marked first, so the reading does not publish them again
            self.mark_sent(marks).await?;
            *last_read = Some(std::time::Instant::now());
            let reason = match (first, retrying, rescan) {
                (true, _, _) => "start",
                (_, true, _) => "retry",
                (_, _, true) => "told",
                _ => "poll",
            };
            crate::metrics::metrics()
                .outbox_table_reads
                .add(1, &[crate::metrics::attribute("reason", reason)]);
            if rescan || retrying || first {
                let covered = self.signal.handoff().resolved_before();
                self.drain().await?;
                self.signal.handoff().covered(covered);
            } else {
                // the safety-net poll leaves rows younger than a poll to their own transaction's
                // handover (and to other replicas' relays)
                let older_than = to_millis(self.clock.now()) - poll.as_millis() as i64;
                self.drain_older_than(Some(older_than)).await?;
            }
        }
        self.publish_handed_over(marks).await?;
        if marks.due_in() == Some(Duration::ZERO) {
            self.mark_sent(marks).await?;
        }
        Ok(())
    }

    /// Publishes what committed transactions handed over, in ticket order.
    async fn publish_handed_over(&self, marks: &mut Marks) -> Result<(), RelayError> {
        loop {
            let ready = self.signal.handoff().take_ready();
            if ready.is_empty() {
                return Ok(());
            }
            let mut outgoing: Vec<Outgoing> = ready
                .into_iter()
                .map(|event| Outgoing {
                    headers: headers_for(&event.event_id, &event.headers),
                    event_id: event.event_id,
                    subject: event.subject,
                    payload: event.payload,
                })
                .collect();
            let published = self.publish(&mut outgoing).await;
            marks.add(
                published
                    .sent
                    .iter()
                    .map(|&index| outgoing[index].event_id.clone()),
            );
            if !published.refused.is_empty()
                || !published.oversized.is_empty()
                || published.outage.is_some()
            {
                // the table has them: reading it counts their attempts, parks what never fits
                self.signal.handoff().rescan = true;
            }
            if let Some(error) = published.outage {
                return Err(RelayError::Publish(error));
            }
        }
    }

    /// Marks the events published from memory sent, in statements of a few fixed sizes.
    async fn mark_sent(&self, marks: &mut Marks) -> Result<(), DbErr> {
        if marks.event_ids.is_empty() {
            return Ok(());
        }
        let now_ms = to_millis(self.clock.now());
        let mut unmarked = marks.event_ids.as_slice();
        for size in crate::db::statement_sizes(unmarked.len()) {
            let (chunk, rest) = unmarked.split_at(size);
            entity::Entity::update_many()
                .col_expr(entity::Column::SentAtMs, now_ms.into())
                .filter(entity::Column::EventId.is_in(chunk.iter().map(String::as_str)))
                .exec(&self.db)
                .await?;
            unmarked = rest;
        }
        marks.event_ids.clear();
        marks.since = None;
        Ok(())
    }

    /// Publishes batches from the table until it holds no unsent row.
    pub async fn drain(&self) -> Result<(), RelayError> {
        self.drain_older_than(None).await
    }

    async fn drain_older_than(&self, older_than: Option<i64>) -> Result<(), RelayError> {
        loop {
            let published = self.relay_batch(older_than).await?;
            if published < self.config.batch_size {
                return Ok(());
            }
        }
    }

    /// Publishes one batch read from the table; returns how many events were claimed.
    ///
    /// A row that cannot be published while NATS is reachable (too large for the server, refused
    /// by it) gets an attempt counted; after `outbox.max_attempts` it is parked, so it never blocks
    /// the rows behind it. A row larger than the server's `max_payload` is parked at once. Failures
    /// while NATS is unreachable count against no row: they end the round and are retried.
    async fn relay_batch(&self, older_than: Option<i64>) -> Result<u64, RelayError> {
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
        if let Some(older_than) = older_than {
            query = query.filter(entity::Column::CreatedAtMs.lte(older_than));
        }
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

        let mut outgoing: Vec<Outgoing> = rows
            .iter()
            .map(|row| Outgoing {
                event_id: row.event_id.clone(),
                subject: row.subject.clone(),
                payload: row.payload.clone(),
                headers: nats_headers(row),
            })
            .collect();
        let published = self.publish(&mut outgoing).await;
        for (index, reason) in published.oversized {
            self.park(transaction.as_ref(), &rows[index], reason)
                .await?;
        }
        // marked in statements of a few fixed sizes, so each stays prepared (`db::statement_sizes`)
        let sent_ids: Vec<i64> = published.sent.iter().map(|&index| rows[index].id).collect();
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
        let failures = published.refused.len();
        for (index, error) in published.refused {
            let row = &rows[index];
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
        match (published.outage, failures) {
            (Some(error), _) => Err(RelayError::Publish(error)),
            (None, 0) => Ok(claimed),
            (None, failures) => Err(RelayError::Publish(format!(
                "{failures} events failed to publish; they are retried and parked after {} attempts",
                self.config.max_attempts
            ))),
        }
    }

    /// Publishes `events` with their acks in flight together and sorts out what became of each
    /// (by index). Stops at the first failure while NATS is unreachable. The payloads and headers
    /// are moved out to the client (no copy); ids and subjects stay for the caller.
    async fn publish(&self, events: &mut [Outgoing]) -> Published {
        let max_payload = self.jetstream.client().server_info().max_payload;
        let mut published = Published::default();
        let mut pending = Vec::with_capacity(events.len());
        for (index, event) in events.iter_mut().enumerate() {
            let mut headers = std::mem::take(&mut event.headers);
            // the relay's producer span continues the trace of the transaction that committed the
            // event, and the consumers continue the relay's span
            let span = publish_span(&event.subject, &event.event_id, &headers);
            if let Some(traceparent) = span.in_scope(crate::telemetry::current_traceparent) {
                headers.insert("traceparent", traceparent.as_str());
            }
            let size = event.payload.len() + headers_size(&headers) + event.subject.len();
            if max_payload > 0 && size > max_payload {
                published.oversized.push((
                    index,
                    format!("event of {size} bytes exceeds the nats server's max_payload of {max_payload}"),
                ));
                continue;
            }
            match self
                .jetstream
                .publish_with_headers(
                    event.subject.clone(),
                    headers,
                    std::mem::take(&mut event.payload).into(),
                )
                .instrument(span)
                .await
            {
                Ok(ack) => pending.push((index, ack)),
                Err(error) if self.connected() => {
                    published.refused.push((index, error.to_string()))
                }
                Err(error) => {
                    published.outage = Some(error.to_string());
                    break;
                }
            }
        }
        for (index, ack) in pending {
            match ack.await {
                Ok(_) => {
                    published.sent.push(index);
                    crate::metrics::metrics().outbox_published.add(
                        1,
                        &crate::metrics::subject_attributes(&events[index].subject),
                    );
                }
                Err(error) if self.connected() => {
                    published.refused.push((index, error.to_string()))
                }
                Err(error) => {
                    published.outage.get_or_insert_with(|| error.to_string());
                }
            }
        }
        if published.outage.is_some() || !published.refused.is_empty() {
            crate::metrics::metrics()
                .outbox_publish_failures
                .add(1, &[]);
        }
        published
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
fn publish_span(subject: &str, event_id: &str, headers: &async_nats::HeaderMap) -> tracing::Span {
    let header = |name: &str| headers.get(name).map(|value| value.as_str().to_string());
    let case_id = header("ce-subject").unwrap_or_default();
    let department = department_of_subject(subject).unwrap_or_default();
    let span = tracing::info_span!(
        "publish",
        otel.name = format!("publish {}", kind_of_subject(subject)),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.destination.name = %subject,
        messaging.message.id = %event_id,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, bytes: usize) -> OutboxEvent {
        OutboxEvent {
            event_id: id.to_string(),
            subject: String::new(),
            payload: vec![0; bytes],
            headers: Vec::new(),
        }
    }

    fn ids(events: &[OutboxEvent]) -> Vec<&str> {
        events.iter().map(|event| event.event_id.as_str()).collect()
    }

    #[test]
    fn the_line_waits_for_open_places_and_reads_the_table_for_unknown_ones() {
        let mut line = Handoff::default();
        let first = line.take_ticket();
        let second = line.take_ticket();
        let third = line.take_ticket();
        line.resolve(second, Some(vec![event("second", 1)]));
        assert!(line.take_ready().is_empty(), "the first place is open");
        assert_eq!(line.resolved_before(), first);

        line.resolve(first, Some(vec![event("first", 1)]));
        assert_eq!(ids(&line.take_ready()), ["first", "second"]);
        assert!(!line.rescan);

        let fourth = line.take_ticket();
        line.resolve(third, None);
        line.resolve(fourth, Some(vec![event("fourth", 1)]));
        assert!(!line.rescan, "not before the unknown place is at the front");
        assert!(
            line.take_ready().is_empty(),
            "an unknown place stops the line"
        );
        assert!(line.rescan, "and asks for the table");
        assert_eq!(line.resolved_before(), fourth + 1);
        line.covered(fourth + 1);
        assert!(line.take_ready().is_empty(), "the reading published them");
        assert_eq!(line.bytes, 0);
    }

    #[test]
    fn events_beyond_the_memory_bound_are_left_to_the_table() {
        let mut line = Handoff::default();
        let kept = line.take_ticket();
        let too_many = line.take_ticket();
        line.resolve(kept, Some(vec![event("kept", HANDOFF_BYTES / 2)]));
        line.resolve(
            too_many,
            Some(vec![event("too-many", HANDOFF_BYTES / 2 + 1)]),
        );
        assert_eq!(ids(&line.take_ready()), ["kept"]);
        assert!(line.rescan, "the table has the events not kept");
        assert_eq!(line.bytes, 0);
        assert!(line.take_ready().is_empty());
    }
}
