//! Consuming the case and whistle events into per-assignment facts. Each event is applied inside
//! the inbox transaction, so a redelivered event changes nothing; handlers accept the two streams'
//! events in either order (see `domain::merge_snapshot` and `domain::derive_outcome`). Decisions
//! (return decided, verdicts, overdue, escalation, deferral, 自办) are stored as the events publish
//! them and folded when scoring; nothing is inferred.

use crate::case_batch::CaseBatch;
use crate::domain::{
    self, AssignmentRole, AssignmentSnapshot, AssignmentState, CallbackResult, CaseFact,
    CaseRegion, FactKind, Milestone,
};
use crate::storage::{self, callback, milestone, period_state, rating};
use sea_orm::{DatabaseTransaction, DbErr};
use whistle_platform::clock::{SharedClock, from_proto_timestamp, to_millis};
use whistle_platform::envelope::{self, Event, Payload};
use whistle_platform::inbox::{BatchEvent, EventHandler, HandleError};
use whistle_proto::events::{
    EvaluationCooperationRated, EvaluationPeriodClosed, EvaluationPeriodReopened,
    EvaluationSatisfactionRecorded,
};
use whistle_proto::types::{Assignment, AssignmentFlag, AssignmentStatus};

/// Durable consumer of `case.v1.>` on the cases stream.
pub const CASES_CONSUMER: &str = "evaluation-cases";
/// Durable consumer of `whistle.v1.>` on the whistles stream.
pub const WHISTLES_CONSUMER: &str = "evaluation-whistles";
/// Durable consumer of `evaluation.v1.>` (evaluation's own ratings, call-backs, closes), so the
/// scorecards follow from the event history alone.
pub const EVALUATION_CONSUMER: &str = "evaluation-own";

/// Applies case and whistle events to evaluation's tables. Case and whistle events change a
/// batch's working copy of their cases ([`CaseBatch`]), written just before the commit; ratings,
/// call-backs and period events (evaluation's own, rare) are written as they come, into tables the
/// copy never holds. A consumer loop applies one batch at a time, so each loop needs its own
/// handler.
#[derive(Debug)]
pub struct EvaluationEvents {
    clock: SharedClock,
    batch: std::sync::Mutex<CaseBatch>,
}

/// What one whistle event adds to its assignment's snapshot.
#[derive(Debug, Default)]
struct WhistleExtras {
    verdict: Option<(Milestone, bool)>,
    raised_flag: Option<i32>,
    new_resolve_by_ms: Option<i64>,
    /// The decision this event publishes about its assignment: kind and flag.
    fact: Option<(FactKind, bool)>,
}

/// What an event reads, merges and writes back, as the key its batch locks: its case (the
/// assignments, the case's state, ratings and call-backs are all kept per case) or its period.
fn lock_key(event: &Event) -> Option<String> {
    match &event.payload {
        Some(Payload::EvaluationPeriodClosed(closed)) => Some(format!("period:{}", closed.period)),
        Some(Payload::EvaluationPeriodReopened(reopened)) => {
            Some(format!("period:{}", reopened.period))
        }
        _ if !event.case_id.is_empty() => Some(storage::case_lock_key(&event.case_id)),
        _ => None,
    }
}

/// The cases a case or whistle event changes (its own, and its assignment's when that names one).
fn cases_of(event: &Event) -> Vec<String> {
    let Some(payload) = event.payload.as_ref() else {
        return Vec::new();
    };
    if envelope::kind(payload).family == "evaluation" {
        return Vec::new();
    }
    let mut cases = Vec::with_capacity(1);
    if !event.case_id.is_empty() {
        cases.push(event.case_id.clone());
    }
    if let Some(assignment) = envelope::assignment_of(payload)
        && !assignment.case_id.is_empty()
        && assignment.case_id != event.case_id
    {
        cases.push(assignment.case_id.clone());
    }
    cases
}

impl EvaluationEvents {
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            batch: std::sync::Mutex::default(),
        }
    }

    fn batch(&self) -> std::sync::MutexGuard<'_, CaseBatch> {
        // a panic while the lock was held leaves a copy the next batch's `before_batch` discards
        self.batch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the cases the batch does not hold yet.
    async fn read_cases(
        &self,
        transaction: &DatabaseTransaction,
        mut case_ids: Vec<String>,
    ) -> Result<(), DbErr> {
        {
            let batch = self.batch();
            case_ids.retain(|case_id| !batch.holds(case_id));
        }
        if case_ids.is_empty() {
            return Ok(());
        }
        case_ids.sort_unstable();
        case_ids.dedup();
        let views = CaseBatch::read(transaction, &case_ids).await?;
        self.batch().hold(views);
        Ok(())
    }
}

impl EventHandler for EvaluationEvents {
    /// Everything but dispatch's notices to departments that evaluation does not count (see
    /// `handle`).
    fn applies(&self, _subject: &str, event: &Event) -> bool {
        !matches!(
            event.payload,
            Some(
                Payload::AssignmentReportMerged(_)
                    | Payload::AssignmentEvidenceAttached(_)
                    | Payload::AssignmentRecurrent(_)
            )
        )
    }

    /// Every case (and period) of the batch is locked before anything is read: every replica's
    /// consumer loop merges events into the same rows, and two merges of one case at once on
    /// PostgreSQL would each start from the row as it was, the later write dropping the earlier
    /// event (seen as a resolution missing from a scorecard with two replicas). Within a replica
    /// one loop reads the three streams (`app.rs`), so its case and whistle events about a case
    /// share a batch instead of waiting on each other's locks. Then the batch's cases are read,
    /// once.
    async fn before_batch(
        &self,
        transaction: &DatabaseTransaction,
        events: &[BatchEvent<'_>],
    ) -> Result<(), DbErr> {
        *self.batch() = CaseBatch::default();
        let keys: Vec<String> = events
            .iter()
            .filter_map(|batch_event| lock_key(batch_event.event))
            .collect();
        whistle_platform::db::lock_keys(transaction, keys.iter().map(String::as_str)).await?;
        let cases = events
            .iter()
            .flat_map(|batch_event| cases_of(batch_event.event))
            .collect();
        self.read_cases(transaction, cases).await
    }

    async fn handle(
        &self,
        transaction: &DatabaseTransaction,
        _subject: &str,
        event: &Event,
    ) -> Result<(), HandleError> {
        let Some(payload) = &event.payload else {
            return Err(HandleError::Rejected("event has no payload".into()));
        };
        match payload {
            Payload::EvaluationCooperationRated(rated) => {
                return apply_rating(transaction, event, rated).await;
            }
            Payload::EvaluationSatisfactionRecorded(recorded) => {
                return apply_callback(transaction, event, recorded).await;
            }
            Payload::EvaluationPeriodClosed(closed) => {
                return apply_period_closed(transaction, event, closed).await;
            }
            Payload::EvaluationPeriodReopened(reopened) => {
                return apply_period_reopened(transaction, event, reopened).await;
            }
            // dispatch's notices to departments (a merged report, photos, recurrence): no clock,
            // no status, nothing evaluation counts
            Payload::AssignmentReportMerged(_)
            | Payload::AssignmentEvidenceAttached(_)
            | Payload::AssignmentRecurrent(_) => return Ok(()),
            _ => {}
        }
        // checked whole before the batch's copy changes, so a rejected event leaves it as it was
        let change = CaseChange::of(event, payload).map_err(HandleError::Rejected)?;
        // the batch read its cases at its start; an event handled alone reads its own here
        self.read_cases(transaction, cases_of(event)).await?;
        let now_ms = to_millis(self.clock.now());
        change.apply(&mut self.batch(), now_ms)?;
        Ok(())
    }

    /// Decides the tallies of the batch's cases and writes what its events changed.
    async fn before_commit(&self, transaction: &DatabaseTransaction) -> Result<(), DbErr> {
        let batch = std::mem::take(&mut *self.batch());
        batch.write(transaction, to_millis(self.clock.now())).await
    }
}

/// What an event says of its case: where it is and (a close or a reopening) its status, with the
/// case version that set it.
#[derive(Debug)]
struct StateNote {
    case_id: String,
    region: Option<CaseRegion>,
    closed: Option<(bool, u64)>,
}

/// What one case or whistle event changes in its case, checked whole before anything changes.
#[derive(Debug, Default)]
struct CaseChange {
    /// The case the event names, remembered.
    case_id: String,
    state: Option<StateNote>,
    /// The assignment's snapshot and the verdict the event reports.
    assignment: Option<(AssignmentSnapshot, Option<(Milestone, bool)>)>,
    milestone: Option<milestone::Model>,
    facts: Vec<CaseFact>,
}

impl CaseChange {
    fn of(event: &Event, payload: &Payload) -> Result<Self, String> {
        let mut change = CaseChange::default();
        if matches!(
            payload,
            Payload::CaseReported(_)
                | Payload::CaseAccepted(_)
                | Payload::WhistleIssued(_)
                | Payload::CaseClosed(_)
                | Payload::CaseReopened(_)
        ) && !event.case_id.is_empty()
        {
            let region = event.region.as_ref().map(|region| CaseRegion {
                street_code: region.street_code.clone(),
                community_code: region.community_code.clone(),
            });
            // where the case is (who may rate it) and whether it is closed (call-backs)
            let closed = match payload {
                Payload::CaseClosed(_) => Some((true, event.case_version)),
                Payload::CaseReopened(_) => Some((false, event.case_version)),
                _ => None,
            };
            change.state = Some(StateNote {
                case_id: event.case_id.clone(),
                region,
                closed,
            });
        }
        let (assignment, extras) = match payload {
            Payload::WhistleIssued(issued) => (&issued.assignment, WhistleExtras::default()),
            Payload::AssignmentAcknowledged(acknowledged) => (
                &acknowledged.assignment,
                WhistleExtras {
                    verdict: Some((Milestone::Acknowledged, acknowledged.within_limit)),
                    ..WhistleExtras::default()
                },
            ),
            Payload::AssignmentCheckedIn(checked_in) => (
                &checked_in.assignment,
                WhistleExtras {
                    verdict: Some((Milestone::OnSite, checked_in.within_limit)),
                    ..WhistleExtras::default()
                },
            ),
            Payload::AssignmentProgressed(progressed) => {
                (&progressed.assignment, WhistleExtras::default())
            }
            Payload::AssignmentResolved(resolved) => (
                &resolved.assignment,
                WhistleExtras {
                    verdict: Some((Milestone::Resolved, resolved.within_limit)),
                    ..WhistleExtras::default()
                },
            ),
            Payload::AssignmentReturned(returned) => {
                let in_time = returned.assignment.as_ref().is_some_and(|assignment| {
                    let deadlines = assignment.deadlines.unwrap_or_default();
                    matches!(
                        (
                            millis(assignment.returned_at.as_ref()),
                            millis(deadlines.acknowledge_by.as_ref())
                        ),
                        (Some(returned_at), Some(limit)) if returned_at <= limit
                    )
                });
                (
                    &returned.assignment,
                    WhistleExtras {
                        fact: Some((FactKind::Returned, in_time)),
                        ..WhistleExtras::default()
                    },
                )
            }
            // the facts these carry (extension requests, the street's decisions) are not scored
            // yet; the assignment they carry keeps the snapshot current
            Payload::AssignmentExtensionRequested(requested) => {
                (&requested.assignment, WhistleExtras::default())
            }
            Payload::AssignmentExtensionRefused(refused) => {
                (&refused.assignment, WhistleExtras::default())
            }
            Payload::AssignmentReturnDecided(decided) => (
                &decided.assignment,
                WhistleExtras {
                    fact: Some((FactKind::ReturnDecided, decided.upheld)),
                    ..WhistleExtras::default()
                },
            ),
            Payload::AssignmentOverdue(overdue) => (
                &overdue.assignment,
                WhistleExtras {
                    raised_flag: Some(overdue.flag),
                    fact: Some((FactKind::Overdue, false)),
                    ..WhistleExtras::default()
                },
            ),
            Payload::AssignmentExtended(extended) => (
                &extended.assignment,
                WhistleExtras {
                    raised_flag: Some(AssignmentFlag::Extended as i32),
                    new_resolve_by_ms: millis(extended.new_resolve_by.as_ref()),
                    ..WhistleExtras::default()
                },
            ),
            Payload::CaseVerified(verified) => {
                let decisions = verified
                    .verdicts
                    .iter()
                    .map(|verdict| (verdict.assignment_id.as_str(), verdict.passed));
                return change.with_facts(event, FactKind::Verdict, decisions);
            }
            Payload::CaseEscalated(escalated) => {
                let assignment_id = escalated
                    .assignment
                    .as_ref()
                    .map(|assignment| assignment.assignment_id.as_str())
                    .filter(|id| !id.is_empty())
                    .unwrap_or(escalated.assignment_id.as_str());
                return change.with_facts(event, FactKind::Escalated, [(assignment_id, false)]);
            }
            Payload::CaseDeferred(deferred) => {
                let decisions = deferred
                    .assignments
                    .iter()
                    .map(|clock| (clock.assignment_id.as_str(), false));
                return change.with_facts(event, FactKind::Deferred, decisions);
            }
            Payload::CaseResumed(resumed) => {
                let decisions = resumed
                    .assignments
                    .iter()
                    .map(|clock| (clock.assignment_id.as_str(), false));
                return change.with_facts(event, FactKind::Resumed, decisions);
            }
            Payload::CaseResolvedLocally(_) => {
                return change.with_facts(event, FactKind::ResolvedLocally, [("", false)]);
            }
            // closing follows a passed verification whose verdicts were stored; a reopening
            // follows a failed one, whose verdicts name the reworked assignments
            Payload::CaseReported(_)
            | Payload::CaseMerged(_)
            | Payload::CaseAccepted(_)
            | Payload::CaseRejected(_)
            | Payload::CaseClosed(_)
            | Payload::CaseReopened(_)
            | Payload::CaseEvidenceAttached(_)
            | Payload::CaseRecurrent(_)
            | Payload::ReportSplit(_) => {
                change.case_id = case_id_of(event)?.to_string();
                return Ok(change);
            }
            Payload::EvaluationCooperationRated(_)
            | Payload::EvaluationSatisfactionRecorded(_)
            | Payload::EvaluationPeriodClosed(_)
            | Payload::EvaluationPeriodReopened(_)
            | Payload::AssignmentReportMerged(_)
            | Payload::AssignmentEvidenceAttached(_)
            | Payload::AssignmentRecurrent(_) => {
                return Err(format!(
                    "{} changes no case's facts",
                    envelope::kind(payload).label()
                ));
            }
        };
        let Some(assignment) = assignment else {
            return Err("whistle event carries no assignment".into());
        };
        let mut snapshot = snapshot_of(assignment, &event.case_id)?;
        if let Some(flag) = extras.raised_flag {
            raise_flag(&mut snapshot, flag);
        }
        if let Some(new_resolve_by_ms) = extras.new_resolve_by_ms {
            snapshot.resolve_by_ms = Some(
                snapshot
                    .resolve_by_ms
                    .map_or(new_resolve_by_ms, |known| known.max(new_resolve_by_ms)),
            );
        }
        if let Some(kind) = milestone_of(event) {
            change.milestone = Some(milestone::Model {
                event_id: event.event_id.clone(),
                assignment_id: snapshot.assignment_id.clone(),
                kind: kind.to_string(),
                occurred_at_ms: occurred_at(event)?,
            });
        }
        if let Some((kind, flag)) = extras.fact {
            change.facts.push(CaseFact {
                event_id: event.event_id.clone(),
                case_id: snapshot.case_id.clone(),
                assignment_id: snapshot.assignment_id.clone(),
                kind,
                flag,
                occurred_at_ms: occurred_at(event)?,
            });
        }
        change.case_id.clone_from(&snapshot.case_id);
        change.assignment = Some((snapshot, extras.verdict));
        Ok(change)
    }

    /// What a case event decided about each named assignment (empty id: the whole case).
    fn with_facts<'a>(
        mut self,
        event: &Event,
        kind: FactKind,
        decisions: impl IntoIterator<Item = (&'a str, bool)>,
    ) -> Result<Self, String> {
        let case_id = case_id_of(event)?;
        let occurred_at_ms = occurred_at(event)?;
        for (assignment_id, flag) in decisions {
            if assignment_id.is_empty() && kind != FactKind::ResolvedLocally {
                return Err(format!("{} fact names no assignment", kind.as_str()));
            }
            self.facts.push(CaseFact {
                event_id: event.event_id.clone(),
                case_id: case_id.to_string(),
                assignment_id: assignment_id.to_string(),
                kind,
                flag,
                occurred_at_ms,
            });
        }
        self.case_id = case_id.to_string();
        Ok(self)
    }

    /// Changes the batch's copy of the case (read already).
    fn apply(self, batch: &mut CaseBatch, now_ms: i64) -> Result<(), DbErr> {
        if let Some(note) = &self.state {
            batch.note_state(&note.case_id, note.region.as_ref(), note.closed)?;
        }
        batch.remember(&self.case_id, now_ms);
        if let Some((snapshot, verdict)) = &self.assignment {
            let merged = batch.merge_assignment(snapshot, *verdict)?;
            tracing::debug!(
                assignment_id = %merged.assignment_id,
                department_code = %merged.department_code,
                state = merged.state.as_str(),
                "assignment facts updated"
            );
        }
        if let Some(milestone) = self.milestone {
            batch.add_milestone(milestone);
        }
        for fact in self.facts {
            batch.add_fact(fact)?;
        }
        Ok(())
    }
}

/// A rating as published: stored in the history, current when it is the rater's latest.
async fn apply_rating(
    transaction: &DatabaseTransaction,
    event: &Event,
    rated: &EvaluationCooperationRated,
) -> Result<(), HandleError> {
    if rated.assignment_id.is_empty() || rated.rater_id.is_empty() {
        return Err(HandleError::Rejected(
            "cooperation rating names no assignment or rater".into(),
        ));
    }
    let score = domain::parse_cooperation_score(rated.score).map_err(HandleError::Rejected)?;
    let rated_at_ms = millis(rated.rated_at.as_ref())
        .map_or_else(|| occurred_at(event), Ok)
        .map_err(HandleError::Rejected)?;
    storage::apply_rating(
        transaction,
        &event.event_id,
        rating::Model {
            assignment_id: rated.assignment_id.clone(),
            rater: rated.rater.clone(),
            rater_id: rated.rater_id.clone(),
            score: i32::from(score),
            comment: rated.comment.clone(),
            rated_at_ms,
        },
    )
    .await?;
    Ok(())
}

/// A call-back as published; the first under its id counts.
async fn apply_callback(
    transaction: &DatabaseTransaction,
    event: &Event,
    recorded: &EvaluationSatisfactionRecorded,
) -> Result<(), HandleError> {
    let case_id = case_id_of(event).map_err(HandleError::Rejected)?;
    if recorded.callback_id.is_empty() || CallbackResult::parse(&recorded.result).is_none() {
        return Err(HandleError::Rejected(format!(
            "call-back {:?} has no id or an unknown result {:?}",
            recorded.callback_id, recorded.result
        )));
    }
    let recorded_at_ms = millis(recorded.recorded_at.as_ref())
        .map_or_else(|| occurred_at(event), Ok)
        .map_err(HandleError::Rejected)?;
    storage::remember_case(transaction, case_id, recorded_at_ms).await?;
    storage::insert_callback(
        transaction,
        callback::Model {
            callback_id: recorded.callback_id.clone(),
            case_id: case_id.to_string(),
            result: recorded.result.clone(),
            note: recorded.note.clone(),
            recorded_at_ms,
        },
    )
    .await?;
    Ok(())
}

/// A close as published: its frozen cards are served for the period from now on (unless a later
/// reopening came first).
async fn apply_period_closed(
    transaction: &DatabaseTransaction,
    event: &Event,
    closed: &EvaluationPeriodClosed,
) -> Result<(), HandleError> {
    let period = domain::Period::parse(&closed.period).map_err(HandleError::Rejected)?;
    domain::parse_frozen_cards(&closed.frozen_scorecards_json).map_err(HandleError::Rejected)?;
    if domain::sha256_hex(&closed.frozen_scorecards_json) != closed.sha256 {
        return Err(HandleError::Rejected(format!(
            "period {} closed with a sha256 that does not match its cards",
            closed.period
        )));
    }
    let occurred_at_ms = occurred_at(event).map_err(HandleError::Rejected)?;
    storage::apply_period_event(
        transaction,
        period_state::Model {
            period: period.label(),
            closed: true,
            closed_at_ms: Some(millis(closed.closed_at.as_ref()).unwrap_or(occurred_at_ms)),
            sha256: closed.sha256.clone(),
            frozen_scorecards_json: closed.frozen_scorecards_json.clone(),
            scoring_config: closed.scoring_config.clone(),
            reopen_reason: String::new(),
            last_event_at_ms: occurred_at_ms,
            last_event_id: event.event_id.clone(),
        },
    )
    .await?;
    Ok(())
}

async fn apply_period_reopened(
    transaction: &DatabaseTransaction,
    event: &Event,
    reopened: &EvaluationPeriodReopened,
) -> Result<(), HandleError> {
    let period = domain::Period::parse(&reopened.period).map_err(HandleError::Rejected)?;
    storage::apply_period_event(
        transaction,
        period_state::Model {
            period: period.label(),
            closed: false,
            closed_at_ms: None,
            sha256: String::new(),
            frozen_scorecards_json: String::new(),
            scoring_config: String::new(),
            reopen_reason: reopened.reason.clone(),
            last_event_at_ms: occurred_at(event).map_err(HandleError::Rejected)?,
            last_event_id: event.event_id.clone(),
        },
    )
    .await?;
    Ok(())
}

/// The milestone a whistle event carries, if any.
fn milestone_of(event: &Event) -> Option<&'static str> {
    match event.payload.as_ref()? {
        Payload::WhistleIssued(_) => Some("whistled"),
        Payload::AssignmentAcknowledged(_) => Some("acknowledged"),
        Payload::AssignmentCheckedIn(_) => Some("on_site"),
        Payload::AssignmentResolved(_) => Some("resolved"),
        Payload::AssignmentReturned(_) => Some("returned"),
        _ => None,
    }
}

fn millis(timestamp: Option<&prost_types::Timestamp>) -> Option<i64> {
    timestamp.and_then(from_proto_timestamp).map(to_millis)
}

fn occurred_at(event: &Event) -> Result<i64, String> {
    millis(event.occurred_at.as_ref()).ok_or_else(|| "event has no valid occurred_at".to_string())
}

fn case_id_of(event: &Event) -> Result<&str, String> {
    if event.case_id.is_empty() {
        return Err("event has no case_id".into());
    }
    Ok(&event.case_id)
}

/// The evaluation view of an assignment as carried by a whistle event.
pub fn snapshot_of(
    assignment: &Assignment,
    event_case_id: &str,
) -> Result<AssignmentSnapshot, String> {
    if assignment.assignment_id.is_empty() {
        return Err("assignment has no assignment_id".into());
    }
    if assignment.department_code.is_empty() {
        return Err(format!(
            "assignment {} has no department_code",
            assignment.assignment_id
        ));
    }
    let case_id = if assignment.case_id.is_empty() {
        event_case_id
    } else {
        assignment.case_id.as_str()
    };
    if case_id.is_empty() {
        return Err(format!(
            "assignment {} has no case_id",
            assignment.assignment_id
        ));
    }
    let whistled_at_ms = millis(assignment.whistled_at.as_ref()).ok_or_else(|| {
        format!(
            "assignment {} has no valid whistled_at",
            assignment.assignment_id
        )
    })?;
    let state = match AssignmentStatus::try_from(assignment.status) {
        Ok(AssignmentStatus::Acknowledged) => AssignmentState::Acknowledged,
        Ok(AssignmentStatus::OnSite) => AssignmentState::OnSite,
        Ok(AssignmentStatus::Resolved) => AssignmentState::Resolved,
        Ok(AssignmentStatus::Returned) => AssignmentState::Returned,
        Ok(AssignmentStatus::Whistled | AssignmentStatus::Unspecified) | Err(_) => {
            AssignmentState::Whistled
        }
    };
    let role = match whistle_proto::types::AssignmentRole::try_from(assignment.role) {
        Ok(whistle_proto::types::AssignmentRole::Lead) => AssignmentRole::Lead,
        Ok(whistle_proto::types::AssignmentRole::Co) => AssignmentRole::Co,
        _ => AssignmentRole::Unspecified,
    };
    let deadlines = assignment.deadlines.unwrap_or_default();
    let mut snapshot = AssignmentSnapshot {
        assignment_id: assignment.assignment_id.clone(),
        case_id: case_id.to_string(),
        department_code: assignment.department_code.clone(),
        role,
        state,
        version: assignment.version,
        whistled_at_ms,
        acknowledge_by_ms: millis(deadlines.acknowledge_by.as_ref()),
        on_site_by_ms: millis(deadlines.on_site_by.as_ref()),
        resolve_by_ms: millis(deadlines.resolve_by.as_ref()),
        requires_on_site: assignment.requires_on_site,
        acknowledged_at_ms: millis(assignment.acknowledged_at.as_ref()),
        on_site_at_ms: millis(assignment.on_site_at.as_ref()),
        resolved_at_ms: millis(assignment.resolved_at.as_ref()),
        returned_at_ms: millis(assignment.returned_at.as_ref()),
        deferred: false,
        extended: false,
        escalated: false,
    };
    for flag in &assignment.flags {
        raise_flag(&mut snapshot, *flag);
    }
    Ok(snapshot)
}

fn raise_flag(snapshot: &mut AssignmentSnapshot, flag: i32) {
    match AssignmentFlag::try_from(flag) {
        Ok(AssignmentFlag::Deferred) => snapshot.deferred = true,
        Ok(AssignmentFlag::Extended) => snapshot.extended = true,
        Ok(AssignmentFlag::Escalated) => snapshot.escalated = true,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use whistle_platform::clock::{from_millis, to_proto_timestamp};
    use whistle_proto::types::Deadlines;

    #[test]
    fn assignments_become_snapshots() {
        let at = |ms: i64| Some(to_proto_timestamp(from_millis(ms)));
        let assignment = Assignment {
            assignment_id: "a1".into(),
            case_id: String::new(),
            department_code: "zw-sanitation".into(),
            role: whistle_proto::types::AssignmentRole::Co as i32,
            status: AssignmentStatus::Resolved as i32,
            flags: vec![AssignmentFlag::Deferred as i32, 99],
            whistled_at: at(1_000),
            deadlines: Some(Deadlines {
                acknowledge_by: at(2_000),
                on_site_by: None,
                resolve_by: at(9_000),
            }),
            requires_on_site: true,
            resolved_at: at(5_000),
            version: 4,
            ..Assignment::default()
        };
        let snapshot = snapshot_of(&assignment, "c1").expect("valid");
        assert_eq!(snapshot.case_id, "c1");
        assert_eq!(snapshot.role, AssignmentRole::Co);
        assert_eq!(snapshot.state, AssignmentState::Resolved);
        assert_eq!(snapshot.whistled_at_ms, 1_000);
        assert_eq!(snapshot.acknowledge_by_ms, Some(2_000));
        assert_eq!(snapshot.on_site_by_ms, None);
        assert_eq!(snapshot.resolved_at_ms, Some(5_000));
        assert!(snapshot.deferred && !snapshot.extended);

        let mut no_time = assignment.clone();
        no_time.whistled_at = None;
        assert!(snapshot_of(&no_time, "c1").is_err());
        let mut no_department = assignment;
        no_department.department_code.clear();
        assert!(snapshot_of(&no_department, "c1").is_err());
    }
}
