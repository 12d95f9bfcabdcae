//! Consuming the cases stream (`case.v1.>`, in stream order): every reported case is opened,
//! routed and, when its route says so, whistled; intake's news about it (`case.merged`,
//! `case.split`, `case.recurrent`, `case.evidence_attached`) is applied to it, or kept pending
//! until it opens. All in the inbox's transaction. Everything else on the stream (dispatch's own
//! `case.*` events) is acknowledged without one ([`EventHandler::applies`]).

use crate::domain::DeadlinePolicy;
use crate::service::{self, OpeningCatalogue};
use crate::storage::{self, CaseRecord};
use sea_orm::DatabaseTransaction;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use whistle_platform::clock::SharedClock;
use whistle_platform::envelope::{Event, Payload};
use whistle_platform::inbox::{BatchEvent, EventHandler, HandleError};
use whistle_platform::metrics::{attribute, metrics};
use whistle_platform::outbox::OutboxSignal;
use whistle_proto::events::CaseReported;

/// Durable consumer name on the cases stream (it replaced `dispatch`, which saw
/// `case.reported` only).
pub const CONSUMER: &str = "dispatch-cases";
/// Every case event; those dispatch does not apply are skipped.
pub const FILTER_SUBJECT: &str = "case.v1.>";

/// The events dispatch applies: every one intake publishes (`case.reported` and its news). Where
/// NATS takes several filter subjects (2.10 and later) the consumer is given only these, not
/// dispatch's own case events.
pub fn applied_subjects() -> Vec<String> {
    whistle_platform::provenance::publish_subjects(whistle_platform::provenance::Producer::Intake)
}
/// Whether dispatch applies an event of this payload: a reported case and intake's news about one.
fn applied(payload: &Payload) -> bool {
    matches!(payload, Payload::CaseReported(_)) || service::is_report_news(payload)
}

/// The consumer this one replaced, removed at start.
pub const LEGACY_CONSUMER: &str = "dispatch";

/// Applies intake's events to dispatch's cases.
///
/// The reported cases of a batch are opened together: the batch reads which of them are open
/// already, which have news waiting, and the routes and registry they need, once
/// ([`EventHandler::before_batch`]); each is routed and whistled in memory as it is handled, news
/// about it later in the batch (a `case.recurrent` follows its `case.reported`) applies to it in
/// memory too, and all are saved with a few statements just before the commit. A reported case
/// with news waiting (kept pending, or ahead of it in the batch) opens on its own, with its news.
#[derive(Debug, Clone)]
pub struct ReportedCases {
    clock: SharedClock,
    /// How deadlines count (calendar time, or a working-hour calendar).
    policy: Arc<dyn DeadlinePolicy>,
    outbox_signal: OutboxSignal,
    /// Categories of the cases this batch flagged recurrent, counted once it committed.
    recurrent: Arc<Mutex<Vec<String>>>,
    /// The batch being applied (one at a time: the consumer applies its batches in order).
    batch: Arc<Mutex<Batch>>,
}

/// What a batch reads once and the cases it opens.
#[derive(Debug, Default)]
struct Batch {
    /// Whether its reported cases are opened together (`before_batch` read what they need).
    together: bool,
    /// Its reported cases that were open before it, or that it opened.
    open: HashSet<String>,
    /// Its reported cases with news kept pending, each opened on its own with its news.
    with_news: HashSet<String>,
    catalogue: OpeningCatalogue,
    /// The cases it opened, saved together before the commit.
    opened: Vec<CaseRecord>,
}

impl ReportedCases {
    pub fn new(
        clock: SharedClock,
        policy: Arc<dyn DeadlinePolicy>,
        outbox_signal: OutboxSignal,
    ) -> Self {
        Self {
            clock,
            policy,
            outbox_signal,
            recurrent: Default::default(),
            batch: Default::default(),
        }
    }

    fn flagged_recurrent(&self, categories: impl IntoIterator<Item = String>) {
        if let Ok(mut recurrent) = self.recurrent.lock() {
            recurrent.extend(categories);
        }
    }

    fn batch(&self) -> std::sync::MutexGuard<'_, Batch> {
        // a panic elsewhere cannot leave a batch half-read: each starts afresh in before_batch
        self.batch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens a reported case with news waiting, or any case reported outside a batch.
    async fn open_alone(
        &self,
        transaction: &DatabaseTransaction,
        event: &Event,
        reported: &CaseReported,
    ) -> Result<(), HandleError> {
        let opened = service::open_reported_case(
            transaction,
            self.clock.now(),
            self.policy.as_ref(),
            event,
            reported,
        )
        .await
        .map_err(handle_error)?;
        if !opened.applied {
            tracing::debug!(case_id = %event.case_id, "case already open");
        }
        self.flagged_recurrent(opened.flagged_recurrent);
        Ok(())
    }
}

impl EventHandler for ReportedCases {
    /// Reported cases and intake's news about them; dispatch's own events on the stream are not
    /// read.
    fn applies(&self, _subject: &str, event: &Event) -> bool {
        event.payload.as_ref().is_some_and(applied)
    }

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
                // news about a case this batch opened applies to it in memory
                let in_batch = self
                    .batch()
                    .opened
                    .iter_mut()
                    .find(|record| record.row.case_id == event.case_id)
                    .map(|record| {
                        service::apply_news(record, self.clock.now(), self.policy.as_ref(), event)
                    });
                let flagged = match in_batch {
                    Some(applied) => applied,
                    None => {
                        service::apply_report_news(
                            transaction,
                            self.clock.now(),
                            self.policy.as_ref(),
                            event,
                        )
                        .await
                    }
                }
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
        {
            let mut batch = self.batch();
            if batch.together && !batch.with_news.contains(&event.case_id) {
                if !batch.open.insert(event.case_id.clone()) {
                    tracing::debug!(case_id = %event.case_id, "case already open");
                    return Ok(());
                }
                // refused here, as saving it alone would have: saved with the batch, it would
                // fail every event of the batch, again at each redelivery
                let record = service::open_record(
                    self.clock.now(),
                    self.policy.as_ref(),
                    event,
                    reported,
                    &batch.catalogue,
                )
                .and_then(|record| record.check_publishable().map(|()| record));
                match record {
                    Ok(record) => batch.opened.push(record),
                    Err(error) => {
                        batch.open.remove(&event.case_id);
                        return Err(handle_error(error));
                    }
                }
                return Ok(());
            }
        }
        self.open_alone(transaction, event, reported).await
    }

    async fn before_batch(
        &self,
        transaction: &DatabaseTransaction,
        events: &[BatchEvent<'_>],
    ) -> Result<(), sea_orm::DbErr> {
        // what a batch that rolled back counted or opened is forgotten
        if let Ok(mut recurrent) = self.recurrent.lock() {
            recurrent.clear();
        }
        *self.batch() = Batch::default();
        // each case reported in the batch (its first case.reported), by where it comes
        let mut reported: HashMap<&str, (usize, &str)> = HashMap::new();
        for (index, batch_event) in events.iter().enumerate() {
            if let Some(Payload::CaseReported(case)) = &batch_event.event.payload
                && !batch_event.event.case_id.is_empty()
            {
                reported
                    .entry(batch_event.event.case_id.as_str())
                    .or_insert((index, case.category_code.as_str()));
            }
        }
        if reported.is_empty() {
            return Ok(());
        }
        let case_ids: Vec<&str> = reported.keys().copied().collect();
        let mut with_news = storage::cases_with_pending_news(transaction, &case_ids)
            .await
            .map_err(database_error)?;
        // news ahead of its case.reported in this batch is kept pending when handled, so that
        // case opens on its own, with its news, too
        for (index, batch_event) in events.iter().enumerate() {
            let news = batch_event
                .event
                .payload
                .as_ref()
                .is_some_and(service::is_report_news);
            if news
                && let Some((reported_at, _)) = reported.get(batch_event.event.case_id.as_str())
                && *reported_at > index
            {
                with_news.insert(batch_event.event.case_id.clone());
            }
        }
        let open = storage::open_cases(transaction, &case_ids)
            .await
            .map_err(database_error)?;
        let categories: BTreeSet<&str> = reported
            .iter()
            .filter(|(case_id, _)| !open.contains(**case_id) && !with_news.contains(**case_id))
            .map(|(_, (_, category))| *category)
            .collect();
        let catalogue = OpeningCatalogue::read(transaction, categories)
            .await
            .map_err(database_error)?;
        *self.batch() = Batch {
            together: true,
            open,
            with_news,
            catalogue,
            opened: Vec::new(),
        };
        Ok(())
    }

    async fn before_commit(&self, transaction: &DatabaseTransaction) -> Result<(), sea_orm::DbErr> {
        let opened = std::mem::take(&mut self.batch().opened);
        if opened.is_empty() {
            return Ok(());
        }
        let count = opened.len();
        storage::save_all(transaction, opened, self.clock.now())
            .await
            .map_err(database_error)?;
        tracing::debug!(count, "reported cases opened together");
        Ok(())
    }

    fn outbox(&self) -> Option<&OutboxSignal> {
        Some(&self.outbox_signal)
    }

    fn after_commit(&self) {
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

/// A failure while reading or saving a whole batch: the batch is redelivered (a case opened
/// meanwhile by another replica shows as a conflict, and is found open the next time).
fn database_error(error: crate::error::DispatchError) -> sea_orm::DbErr {
    match error {
        crate::error::DispatchError::Database(error) => error,
        error => sea_orm::DbErr::Custom(error.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use whistle_platform::envelope;
    use whistle_platform::provenance::kind_subjects;

    /// Narrowed to [`applied_subjects`] (NATS 2.10 and later), the consumer is given every event
    /// it applies, and only those.
    #[test]
    fn the_applied_subjects_are_exactly_the_events_it_applies() {
        let subjects = applied_subjects();
        for payload in whistle_platform::testing::every_payload() {
            let kind = envelope::kind(&payload);
            let named = subjects.contains(&kind_subjects(kind.family, kind.name));
            assert_eq!(applied(&payload), named, "{}", kind.label());
        }
    }
}
