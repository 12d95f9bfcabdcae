//! Consuming the whistle events: each event addressed to a department is appended to that
//! department's notice log and updates the assignments projection, in the inbox's transaction.

use crate::storage::{self, assignment, notice};
use prost::Message;
use sea_orm::{ActiveValue::Set, DatabaseTransaction, DbErr, EntityTrait};
use std::collections::BTreeSet;
use tokio::sync::watch;
use whistle_platform::clock::{SharedClock, to_millis};
use whistle_platform::envelope::{self, Event, assignment_of};
use whistle_platform::inbox::{BatchEvent, EventHandler, HandleError};

/// Durable consumer name, shared by every gateway replica.
pub const CONSUMER: &str = "department-gateway";
/// Every whistle event; those not addressed to a department are skipped.
pub const FILTER_SUBJECT: &str = "whistle.v1.>";

/// Tells waiting subscriptions that notices were committed in this process.
#[derive(Debug, Clone)]
pub struct NoticeSignal {
    sender: watch::Sender<u64>,
}

impl Default for NoticeSignal {
    fn default() -> Self {
        Self {
            sender: watch::Sender::new(0),
        }
    }
}

impl NoticeSignal {
    pub fn notify(&self) {
        self.sender
            .send_modify(|commits| *commits = commits.wrapping_add(1));
    }

    /// A receiver that sees every commit after this call.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.sender.subscribe()
    }
}

/// The inbox handler that writes notices and the assignments projection.
#[derive(Debug, Clone)]
pub struct NoticeRecorder {
    clock: SharedClock,
    signal: NoticeSignal,
}

impl NoticeRecorder {
    pub fn new(clock: SharedClock, signal: NoticeSignal) -> Self {
        Self { clock, signal }
    }
}

impl EventHandler for NoticeRecorder {
    /// Takes the notice counters of every department the batch addresses, in code order, before
    /// anything is written (see [`storage::lock_notice_counters`]).
    async fn before_batch(
        &self,
        transaction: &DatabaseTransaction,
        events: &[BatchEvent<'_>],
    ) -> Result<(), DbErr> {
        let departments: BTreeSet<&str> = events
            .iter()
            .filter_map(|batch_event| batch_event.event.payload.as_ref())
            .filter_map(envelope::department_of)
            .filter(|code| envelope::is_subject_token(code))
            .collect();
        storage::lock_notice_counters(transaction, &departments).await
    }

    async fn handle(
        &self,
        transaction: &DatabaseTransaction,
        subject: &str,
        event: &Event,
    ) -> Result<(), HandleError> {
        let Some(payload) = event.payload.as_ref() else {
            return Err(HandleError::Rejected("event has no payload".into()));
        };
        let Some(department_code) = envelope::department_of(payload) else {
            tracing::debug!(subject, event_id = %event.event_id, "event addressed to no department");
            return Ok(());
        };
        if !envelope::is_subject_token(department_code) {
            return Err(HandleError::Rejected(format!(
                "department_code {department_code:?} is not a valid department code"
            )));
        }
        let assignment = assignment_of(payload).cloned().unwrap_or_default();
        if assignment.assignment_id.is_empty() {
            return Err(HandleError::Rejected(
                "assignment has no assignment_id".into(),
            ));
        }
        let now_ms = to_millis(self.clock.now());
        let sequence = storage::next_notice_sequence(transaction, department_code).await?;
        let kind = envelope::kind(payload).label();
        notice::Entity::insert(notice::ActiveModel {
            department_code: Set(department_code.to_string()),
            sequence: Set(sequence),
            event_id: Set(event.event_id.clone()),
            subject: Set(subject.to_string()),
            kind: Set(kind.clone()),
            case_id: Set(event.case_id.clone()),
            assignment_id: Set(assignment.assignment_id.clone()),
            event: Set(event.encode_to_vec()),
            created_at_ms: Set(now_ms),
            ..Default::default()
        })
        .exec_without_returning(transaction)
        .await?;
        let case_id = if assignment.case_id.is_empty() {
            event.case_id.clone()
        } else {
            assignment.case_id.clone()
        };
        storage::upsert_assignment(
            transaction,
            assignment::Model {
                assignment_id: assignment.assignment_id.clone(),
                department_code: department_code.to_string(),
                case_id,
                status: assignment.status,
                version: i64::try_from(assignment.version).unwrap_or(i64::MAX),
                assignment: assignment.encode_to_vec(),
                updated_at_ms: now_ms,
            },
        )
        .await?;
        tracing::info!(
            department = %department_code,
            sequence,
            kind = %kind,
            case_id = %event.case_id,
            assignment_id = %assignment.assignment_id,
            "notice recorded"
        );
        Ok(())
    }

    fn after_commit(&self) {
        self.signal.notify();
    }
}
