//! Consuming the cases stream (`case.v1.>`, in stream order): every reported case is opened,
//! routed and, when its route says so, whistled; intake's news about it (`case.merged`,
//! `case.split`, `case.recurrent`, `case.evidence_attached`) is applied to it, or kept pending
//! until it opens. Everything else on the stream (dispatch's own `case.*` events) is skipped. All
//! in the inbox's transaction.

use crate::domain::DeadlinePolicy;
use crate::service;
use sea_orm::DatabaseTransaction;
use std::sync::{Arc, Mutex};
use whistle_platform::clock::SharedClock;
use whistle_platform::envelope::{Event, Payload};
use whistle_platform::inbox::{BatchEvent, EventHandler, HandleError};
use whistle_platform::metrics::{attribute, metrics};
use whistle_platform::outbox::OutboxSignal;

/// Durable consumer name on the cases stream (it replaced `dispatch`, which saw
/// `case.reported` only).
pub const CONSUMER: &str = "dispatch-cases";
/// Every case event; those dispatch does not apply are skipped.
pub const FILTER_SUBJECT: &str = "case.v1.>";
/// The consumer this one replaced, removed at start.
pub const LEGACY_CONSUMER: &str = "dispatch";

/// Applies intake's events to dispatch's cases.
#[derive(Debug, Clone)]
pub struct ReportedCases {
    pub clock: SharedClock,
    /// How deadlines count (calendar time, or a working-hour calendar).
    pub policy: Arc<dyn DeadlinePolicy>,
    pub outbox_signal: OutboxSignal,
    /// Categories of the cases this batch flagged recurrent, counted once it committed.
    pub recurrent: Arc<Mutex<Vec<String>>>,
}

impl ReportedCases {
    fn flagged_recurrent(&self, categories: impl IntoIterator<Item = String>) {
        if let Ok(mut recurrent) = self.recurrent.lock() {
            recurrent.extend(categories);
        }
    }
}

impl EventHandler for ReportedCases {
    async fn handle(
        &self,
        transaction: &DatabaseTransaction,
        _subject: &str,
        event: &Event,
    ) -> Result<(), HandleError> {
        let reported = match &event.payload {
            Some(Payload::CaseReported(reported)) => reported,
            Some(payload) if service::is_report_news(payload) => {
                if event.case_id.is_empty() {
                    return Err(HandleError::Rejected("news without case id".into()));
                }
                let flagged = service::apply_report_news(
                    transaction,
                    self.clock.now(),
                    self.policy.as_ref(),
                    event,
                )
                .await
                .map_err(handle_error)?;
                self.flagged_recurrent(flagged);
                return Ok(());
            }
            _ => return Ok(()),
        };
        if event.case_id.is_empty() || event.region.is_none() {
            return Err(HandleError::Rejected(
                "case.reported without case id or region".into(),
            ));
        }
        let opened = service::open_reported_case(
            transaction,
            self.clock.now(),
            self.policy.as_ref(),
            event,
            reported,
        )
        .await;
        match opened {
            Ok(opened) => {
                if !opened.applied {
                    tracing::debug!(case_id = %event.case_id, "case already open");
                }
                self.flagged_recurrent(opened.flagged_recurrent);
                Ok(())
            }
            Err(error) => Err(handle_error(error)),
        }
    }

    fn before_batch(
        &self,
        _transaction: &DatabaseTransaction,
        _events: &[BatchEvent<'_>],
    ) -> impl Future<Output = Result<(), sea_orm::DbErr>> + Send {
        // what a batch that rolled back counted is forgotten
        if let Ok(mut recurrent) = self.recurrent.lock() {
            recurrent.clear();
        }
        async { Ok(()) }
    }

    fn after_commit(&self) {
        self.outbox_signal.notify();
        let flagged = self
            .recurrent
            .lock()
            .map(|mut recurrent| std::mem::take(&mut *recurrent))
            .unwrap_or_default();
        for category in flagged {
            metrics()
                .cases_recurrent
                .add(1, &[attribute("category", category)]);
        }
    }
}

/// Database trouble and concurrent changes are tried again; anything else can never apply.
fn handle_error(error: crate::error::DispatchError) -> HandleError {
    match error {
        crate::error::DispatchError::Database(error) => HandleError::Transient(error),
        crate::error::DispatchError::Conflict(what) => {
            HandleError::Transient(sea_orm::DbErr::Custom(format!("conflict on {what}")))
        }
        error => HandleError::Rejected(error.to_string()),
    }
}
