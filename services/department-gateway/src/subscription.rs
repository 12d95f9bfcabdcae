//! One department's subscription: its notices after the sequence the caller names, read from the
//! database in batches, then live, woken by commits in this process and by a poll (other replicas
//! write the same log).

use crate::error::GatewayError;
use crate::notices::NoticeSignal;
use crate::storage::{self, notice};
use sea_orm::DatabaseConnection;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use whistle_platform::clock::{SharedClock, to_millis, to_proto_timestamp};
use whistle_platform::envelope;
use whistle_proto::gateway::Notice;

/// Notices read from the database per query.
const BATCH_SIZE: u64 = 256;
/// Notices buffered between the reader and the caller's connection.
const BUFFER: usize = 64;
/// How often an idle subscription looks for notices written by other replicas.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What every subscription shares.
#[derive(Debug, Clone)]
pub struct Subscriptions {
    pub db: DatabaseConnection,
    pub clock: SharedClock,
    pub signal: NoticeSignal,
    /// Cancelled when the gateway stops: open subscriptions end with UNAVAILABLE so callers reconnect.
    pub shutdown: CancellationToken,
}

/// The stream handed to tonic for one subscription.
pub type NoticeStream = ReceiverStream<Result<Notice, Status>>;

impl Subscriptions {
    /// Starts streaming `department_code`'s notices with a sequence above `after_sequence`.
    pub fn open(&self, department_code: String, after_sequence: u64) -> NoticeStream {
        let (sender, receiver) = mpsc::channel(BUFFER);
        let subscriptions = self.clone();
        tokio::spawn(async move {
            tracing::info!(department = %department_code, after_sequence, "subscription opened");
            let last = subscriptions
                .stream(&department_code, after_sequence, sender)
                .await;
            tracing::info!(department = %department_code, last_sent = last, "subscription closed");
        });
        ReceiverStream::new(receiver)
    }

    /// Sends notices until the caller goes away, the gateway stops or the database fails; returns
    /// the last sequence sent.
    async fn stream(
        &self,
        department_code: &str,
        after_sequence: u64,
        sender: mpsc::Sender<Result<Notice, Status>>,
    ) -> i64 {
        let mut commits = self.signal.subscribe();
        let mut after = i64::try_from(after_sequence).unwrap_or(i64::MAX);
        loop {
            // mark what has been seen before reading, so a commit during the read wakes us again
            commits.borrow_and_update();
            let batch =
                match storage::notices_after(&self.db, department_code, after, BATCH_SIZE).await {
                    Ok(batch) => batch,
                    Err(error) => {
                        let status = Status::from(GatewayError::Database(error));
                        let _ = sender.send(Err(status)).await;
                        return after;
                    }
                };
            let Some(last_in_batch) = batch.last().map(|row| row.sequence) else {
                tokio::select! {
                    _ = self.shutdown.cancelled() => {
                        let _ = sender.try_send(Err(shutting_down()));
                        return after;
                    }
                    _ = sender.closed() => return after,
                    Ok(()) = commits.changed() => {}
                    _ = tokio::time::sleep(POLL_INTERVAL) => {}
                }
                continue;
            };
            for row in batch {
                let sequence = row.sequence;
                let notice = match self.to_notice(row) {
                    Ok(notice) => notice,
                    Err(error) => {
                        let _ = sender.send(Err(Status::from(error))).await;
                        return after;
                    }
                };
                tokio::select! {
                    sent = sender.send(Ok(notice)) => {
                        if sent.is_err() {
                            return after;
                        }
                        whistle_platform::metrics::metrics().notices_delivered.add(
                            1,
                            &[whistle_platform::metrics::attribute("department", department_code.to_string())],
                        );
                    }
                    _ = self.shutdown.cancelled() => {
                        let _ = sender.try_send(Err(shutting_down()));
                        return after;
                    }
                }
                after = sequence;
            }
            debug_assert_eq!(after, last_in_batch);
            let now_ms = to_millis(self.clock.now());
            if let Err(error) =
                storage::advance_delivery_cursor(&self.db, department_code, after, now_ms).await
            {
                tracing::warn!(department = %department_code, sequence = after, %error, "recording the delivery cursor failed");
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
            delivered_at: Some(to_proto_timestamp(self.clock.now())),
            event: Some(event),
        })
    }
}

fn shutting_down() -> Status {
    GatewayError::ShuttingDown(
        "gateway shutting down: reconnect with after_sequence set to the last sequence you processed"
            .into(),
    )
    .into()
}
