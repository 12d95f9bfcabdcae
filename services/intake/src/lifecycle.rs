//! What intake learns from dispatch: which of its cases closed, were rejected or reopened, from
//! the `case.v1.>` events on `WHISTLE_CASES`, through the platform's idempotent inbox consumer.
//! Merging joins open cases only; recurrence counts closed ones; Open311 shows the state.

use crate::storage::case;
use sea_orm::{ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, sea_query::Expr};
use whistle_platform::clock::{from_proto_timestamp, to_millis};
use whistle_platform::envelope::{Event, Payload};
use whistle_platform::inbox::{ConsumerSpec, EventHandler, HandleError};
use whistle_platform::provenance::kind_subjects;
use whistle_proto::intake::CaseState;

/// The case events intake applies ([`change_of`]), by name.
const APPLIED: [&str; 5] = ["accepted", "rejected", "closed", "reopened", "escalated"];

/// The durable consumer every intake replica shares.
pub fn consumer_spec() -> ConsumerSpec {
    ConsumerSpec {
        stream: whistle_platform::nats::CASES_STREAM.to_string(),
        durable: "intake-cases".to_string(),
        filter_subject: "case.v1.>".to_string(),
        // on NATS 2.9 (one filter subject) intake is given its own events too, and skips them
        applied_subjects: APPLIED
            .iter()
            .map(|name| kind_subjects("case", name))
            .collect(),
        max_batch: 128,
    }
}

/// A case's state change, decided from one event. Pure.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The state and note to set.
    State { state: CaseState, note: String },
    /// Only the note (an acceptance, an escalation).
    Note(String),
}

pub fn change_of(payload: &Payload) -> Option<Change> {
    match payload {
        Payload::CaseClosed(_) => Some(Change::State {
            state: CaseState::Closed,
            note: "closed after verification (结案)".into(),
        }),
        Payload::CaseRejected(rejected) => Some(Change::State {
            state: CaseState::Rejected,
            note: format!("not accepted (不予立案): {}", rejected.reason),
        }),
        Payload::CaseReopened(reopened) => Some(Change::State {
            state: CaseState::Open,
            note: format!("reopened (返工): {}", reopened.reason),
        }),
        Payload::CaseAccepted(_) => Some(Change::Note("accepted (立案)".into())),
        Payload::CaseEscalated(_) => Some(Change::Note("escalated to supervision (督办)".into())),
        _ => None,
    }
}

/// Applies dispatch's case events to intake's cases.
#[derive(Debug, Default)]
pub struct CaseLifecycle;

impl EventHandler for CaseLifecycle {
    /// The events that change a case's state or note ([`change_of`]); intake's own events, and
    /// the rest of dispatch's, are not read.
    fn applies(&self, _subject: &str, event: &Event) -> bool {
        event.payload.as_ref().and_then(change_of).is_some()
    }

    async fn handle(
        &self,
        transaction: &DatabaseTransaction,
        _subject: &str,
        event: &Event,
    ) -> Result<(), HandleError> {
        let Some(change) = event.payload.as_ref().and_then(change_of) else {
            return Ok(());
        };
        let at_ms = event
            .occurred_at
            .as_ref()
            .and_then(from_proto_timestamp)
            .map(to_millis)
            .ok_or_else(|| HandleError::Rejected("event has no valid occurred_at".into()))?;
        // events can arrive out of order (redelivery, several consumers): only an event at least
        // as new as the one behind the stored state changes it
        let version = i64::try_from(event.case_version).unwrap_or(i64::MAX);
        let mut update = case::Entity::update_many()
            .filter(case::Column::CaseId.eq(event.case_id.as_str()))
            .filter(case::Column::StateVersion.lte(version))
            .col_expr(case::Column::StateVersion, Expr::value(version));
        match change {
            Change::State { state, note } => {
                update = update
                    .col_expr(case::Column::State, Expr::value(state as i32))
                    .col_expr(case::Column::StateChangedAtMs, Expr::value(at_ms))
                    .col_expr(case::Column::StateNote, Expr::value(note));
            }
            Change::Note(note) => {
                update = update
                    .col_expr(case::Column::StateChangedAtMs, Expr::value(at_ms))
                    .col_expr(case::Column::StateNote, Expr::value(note))
                    .filter(case::Column::State.eq(CaseState::Open as i32));
            }
        }
        // a case intake does not know (another intake's database) changes nothing
        let updated = update.exec(transaction).await?;
        tracing::debug!(case_id = %event.case_id, rows = updated.rows_affected, "case state learned");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use whistle_proto::events::{CaseClosed, CaseRejected, CaseReopened, CaseReported};

    /// Narrowed to its applied subjects (NATS 2.10 and later), the consumer is given every event
    /// intake applies, and only those.
    #[test]
    fn the_applied_subjects_are_exactly_the_events_it_applies() {
        let subjects = consumer_spec().applied_subjects;
        for payload in whistle_platform::testing::every_payload() {
            let kind = whistle_platform::envelope::kind(&payload);
            let named = subjects.contains(&kind_subjects(kind.family, kind.name));
            assert_eq!(change_of(&payload).is_some(), named, "{}", kind.label());
        }
    }

    #[test]
    fn closing_rejecting_and_reopening() {
        assert!(matches!(
            change_of(&Payload::CaseClosed(CaseClosed {})),
            Some(Change::State {
                state: CaseState::Closed,
                ..
            })
        ));
        let rejected = change_of(&Payload::CaseRejected(CaseRejected {
            rejected_by: "street".into(),
            reason: "不属于受理范围".into(),
        }));
        assert!(
            matches!(rejected, Some(Change::State { state: CaseState::Rejected, ref note, .. }) if note.contains("不属于受理范围"))
        );
        assert!(matches!(
            change_of(&Payload::CaseReopened(CaseReopened::default())),
            Some(Change::State {
                state: CaseState::Open,
                ..
            })
        ));
        assert_eq!(
            change_of(&Payload::CaseReported(CaseReported::default())),
            None,
            "intake's own events change nothing"
        );
    }
}
