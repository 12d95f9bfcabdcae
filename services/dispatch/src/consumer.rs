//! Consuming `case.reported`: every reported case is opened, routed and, when its route says so,
//! whistled, in the inbox's transaction.

use crate::domain::DeadlinePolicy;
use crate::service;
use sea_orm::DatabaseTransaction;
use std::sync::Arc;
use whistle_platform::clock::SharedClock;
use whistle_platform::envelope::{Event, Payload};
use whistle_platform::inbox::{EventHandler, HandleError};
use whistle_platform::outbox::OutboxSignal;

/// Applies intake's events to dispatch's cases.
#[derive(Debug, Clone)]
pub struct ReportedCases {
    pub clock: SharedClock,
    /// How deadlines count (calendar time, or a working-hour calendar).
    pub policy: Arc<dyn DeadlinePolicy>,
    pub outbox_signal: OutboxSignal,
}

impl EventHandler for ReportedCases {
    async fn handle(
        &self,
        transaction: &DatabaseTransaction,
        _subject: &str,
        event: &Event,
    ) -> Result<(), HandleError> {
        let Some(Payload::CaseReported(reported)) = &event.payload else {
            return Ok(());
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
                if !opened {
                    tracing::debug!(case_id = %event.case_id, "case already open");
                }
                Ok(())
            }
            Err(crate::error::DispatchError::Database(error)) => Err(HandleError::Transient(error)),
            Err(crate::error::DispatchError::Conflict(what)) => Err(HandleError::Transient(
                sea_orm::DbErr::Custom(format!("conflict on {what}")),
            )),
            Err(error) => Err(HandleError::Rejected(error.to_string())),
        }
    }

    fn after_commit(&self) {
        self.outbox_signal.notify();
    }
}
