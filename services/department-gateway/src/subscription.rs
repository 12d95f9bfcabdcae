//! One department's subscription: its notices after the sequence the caller names, read from the
//! database in batches, then live. An idle subscription costs no query: it waits until the
//! department's last committed sequence (see [`NoticeSignal`]) passes what it has sent. Live
//! notices this process committed are handed over from memory ([`NoticeSignal::recent_after`]);
//! the database is read for the rest (a start, a gap, another replica's notices).
//!
//! The subscription is the stream tonic sends from, with no task or buffer of its own: when the
//! caller goes away tonic drops it, and with it the department's slot.

use crate::error::GatewayError;
use crate::notices::{NoticeSignal, NoticeWatch};
use crate::slots::{SubscriptionSlot, SubscriptionSlots};
use crate::storage::{self, notice};
use futures::Stream;
use sea_orm::DatabaseConnection;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use whistle_platform::clock::{SharedClock, to_millis, to_proto_timestamp};
use whistle_platform::envelope;
use whistle_proto::gateway::Notice;

/// Notices read from the database per query.
const BATCH_SIZE: u64 = 256;

/// How often, at most, a subscription writes how far it has served its department (the delivery
/// cursor, for operators). Written at once when the stream ends; under load not once per notice
/// batch, which cost a statement and a commit per notice when every batch held one.
const RECORD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What every subscription shares.
#[derive(Debug, Clone)]
pub struct Subscriptions {
    pub db: DatabaseConnection,
    pub clock: SharedClock,
    pub signal: NoticeSignal,
    /// Cancelled when the gateway stops: open subscriptions end with UNAVAILABLE so callers reconnect.
    pub shutdown: CancellationToken,
    /// Open subscriptions per department, bounded by `subscriptions.max_per_department`.
    pub slots: SubscriptionSlots,
}

/// The stream handed to tonic for one subscription.
pub type NoticeStream = Pin<Box<dyn Stream<Item = Result<Notice, Status>> + Send + 'static>>;

impl Subscriptions {
    /// Streams `department_code`'s notices with a sequence above `after_sequence`, unless the
    /// department already has as many subscriptions open as it may.
    pub fn open(
        &self,
        department_code: String,
        after_sequence: u64,
    ) -> Result<NoticeStream, GatewayError> {
        let slot = self.slots.try_acquire(&department_code).map_err(|taken| {
            tracing::debug!(department = %department_code, open = taken.open, limit = taken.limit, "subscription refused");
            GatewayError::TooManySubscriptions {
                department_code: department_code.clone(),
                open: taken.open,
                limit: taken.limit,
            }
        })?;
        tracing::info!(department = %department_code, after_sequence, "subscription opened");
        let subscription = Subscription {
            // kept from before the first read, so no notice committed after it is missed in memory
            _watch: self.signal.watch(&department_code),
            latest: self.signal.subscribe(),
            shared: self.clone(),
            after: i64::try_from(after_sequence).unwrap_or(i64::MAX),
            recorded: i64::try_from(after_sequence).unwrap_or(i64::MAX),
            record_due: tokio::time::Instant::now(),
            department_code,
            pending: VecDeque::new(),
            must_read: true,
            finished: false,
            _slot: slot,
        };
        Ok(Box::pin(futures::stream::unfold(
            subscription,
            |mut subscription| async move {
                let item = subscription.next().await?;
                Some((item, subscription))
            },
        )))
    }
}

/// The state of one open subscription.
struct Subscription {
    shared: Subscriptions,
    department_code: String,
    /// The last sequence handed to tonic.
    after: i64,
    /// The last sequence written to the delivery cursor.
    recorded: i64,
    /// When the cursor may be written next ([`RECORD_INTERVAL`] after the last write).
    record_due: tokio::time::Instant,
    /// Read but not yet handed out.
    pending: VecDeque<notice::Model>,
    /// Read even if the signal says nothing new: at the start, and after a full batch.
    must_read: bool,
    latest: watch::Receiver<HashMap<String, i64>>,
    finished: bool,
    _watch: NoticeWatch,
    _slot: SubscriptionSlot,
}

impl Subscription {
    /// The next notice; an error status ends the stream, `None` ends it without one.
    async fn next(&mut self) -> Option<Result<Notice, Status>> {
        if self.finished {
            return None;
        }
        loop {
            if self.shared.shutdown.is_cancelled() {
                self.record_due = tokio::time::Instant::now();
                self.record_delivery().await;
                return self.finish(shutting_down());
            }
            if let Some(row) = self.pending.pop_front() {
                let sequence = row.sequence;
                return match self.to_notice(row) {
                    Ok(notice) => {
                        self.after = sequence;
                        whistle_platform::metrics::metrics().notices_delivered.add(
                            1,
                            &[whistle_platform::metrics::attribute(
                                "department",
                                self.department_code.clone(),
                            )],
                        );
                        Some(Ok(notice))
                    }
                    Err(error) => self.finish(error.into()),
                };
            }
            self.record_delivery().await;
            // mark what has been seen before reading, so a commit during the read wakes us again
            let latest = self
                .latest
                .borrow_and_update()
                .get(&self.department_code)
                .copied();
            let behind = latest.is_some_and(|latest| latest > self.after);
            if behind && !self.must_read {
                let recent = self.shared.signal.recent_after(
                    &self.department_code,
                    self.after,
                    BATCH_SIZE as usize,
                );
                if !recent.is_empty() {
                    self.pending = recent.into();
                    continue;
                }
            }
            if self.must_read || behind {
                match storage::notices_after(
                    &self.shared.db,
                    &self.department_code,
                    self.after,
                    BATCH_SIZE,
                )
                .await
                {
                    Ok(batch) => {
                        self.must_read = batch.len() as u64 == BATCH_SIZE;
                        if !batch.is_empty() {
                            self.pending = batch.into();
                            continue;
                        }
                    }
                    Err(error) => return self.finish(GatewayError::Database(error).into()),
                }
            }
            // an idle subscription still records what it served, once the interval has passed
            let unrecorded = self.after > self.recorded;
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => {}
                changed = self.latest.changed() => {
                    if changed.is_err() {
                        return self.finish(shutting_down());
                    }
                }
                _ = tokio::time::sleep_until(self.record_due), if unrecorded => {}
            }
        }
    }

    fn finish(&mut self, status: Status) -> Option<Result<Notice, Status>> {
        self.finished = true;
        Some(Err(status))
    }

    /// Raises the department's delivery cursor to what has been handed out, for operators: at most
    /// once per [`RECORD_INTERVAL`].
    async fn record_delivery(&mut self) {
        let now = tokio::time::Instant::now();
        if self.after <= self.recorded || now < self.record_due {
            return;
        }
        self.record_due = now + RECORD_INTERVAL;
        let now_ms = to_millis(self.shared.clock.now());
        match storage::advance_delivery_cursor(
            &self.shared.db,
            &self.department_code,
            self.after,
            now_ms,
        )
        .await
        {
            Ok(()) => self.recorded = self.after,
            Err(error) => {
                tracing::warn!(department = %self.department_code, sequence = self.after, %error, "recording the delivery cursor failed");
            }
        }
    }

    fn to_notice(&self, row: notice::Model) -> Result<Notice, GatewayError> {
        let event = envelope::decode(&row.event).map_err(|error| {
            GatewayError::Unexpected(format!(
                "stored notice {} of {} does not decode: {error}",
                row.sequence, row.department_code
            ))
        })?;
        Ok(Notice {
            sequence: u64::try_from(row.sequence).unwrap_or_default(),
            subject: row.subject,
            kind: row.kind,
            case_id: row.case_id,
            assignment_id: row.assignment_id,
            delivered_at: Some(to_proto_timestamp(self.shared.clock.now())),
            event: Some(event),
        })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // A client that hangs up right after its last notice cancels the stream before it records
        // how far it was served (that write runs when the next notice is asked for): record it
        // here, apart from the cancelled stream. The cursor only ever rises, so the order of such
        // writes does not matter.
        if self.after > self.recorded
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let db = self.shared.db.clone();
            let department_code = self.department_code.clone();
            let sequence = self.after;
            let now_ms = to_millis(self.shared.clock.now());
            runtime.spawn(async move {
                if let Err(error) =
                    storage::advance_delivery_cursor(&db, &department_code, sequence, now_ms).await
                {
                    tracing::warn!(department = %department_code, sequence, %error, "recording the delivery cursor failed");
                }
            });
        }
        tracing::info!(department = %self.department_code, last_sent = self.after, "subscription closed");
    }
}

fn shutting_down() -> Status {
    GatewayError::ShuttingDown(
        "gateway shutting down: reconnect with after_sequence set to the last sequence you processed"
            .into(),
    )
    .into()
}
