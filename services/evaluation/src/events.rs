//! Consuming the case and whistle events into per-assignment facts. Each event is applied inside
//! the inbox transaction, so a redelivered event changes nothing; handlers accept the two streams'
//! events in either order (see `domain::merge_snapshot` and `domain::derive_outcome`). Decisions
//! (return decided, verdicts, overdue, escalation, deferral, 自办) are stored as the events publish
//! them and folded when scoring; nothing is inferred.

use crate::domain::{
    self, AssignmentRole, AssignmentSnapshot, AssignmentState, CallbackResult, CaseFact,
    CaseRegion, FactKind, Milestone,
};
use crate::storage::{self, callback, milestone, period_state, rating};
use sea_orm::{DatabaseTransaction, DbErr};
use whistle_platform::clock::{SharedClock, from_proto_timestamp, to_millis};
use whistle_platform::envelope::{Event, Payload};
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

/// Applies case and whistle events to evaluation's tables.
#[derive(Debug, Clone)]
pub struct EvaluationEvents {
    pub clock: SharedClock,
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

impl EventHandler for EvaluationEvents {
    /// Every case (and period) of the batch is locked before any event is applied: the three
    /// consumers, and every replica's, merge events into the same rows, and two merges of one case
    /// at once on PostgreSQL would each start from the row as it was, the later write dropping the
    /// earlier event (seen as a resolution missing from a scorecard with two replicas).
    async fn before_batch(
        &self,
        transaction: &DatabaseTransaction,
        events: &[BatchEvent<'_>],
    ) -> Result<(), DbErr> {
        let keys: Vec<String> = events
            .iter()
            .filter_map(|batch_event| lock_key(batch_event.event))
            .collect();
        whistle_platform::db::lock_keys(transaction, keys.iter().map(String::as_str)).await
    }

    async fn handle(
        &self,
        transaction: &DatabaseTransaction,
        _subject: &str,
        event: &Event,
    ) -> Result<(), HandleError> {
        let now_ms = to_millis(self.clock.now());
        let Some(payload) = &event.payload else {
            return Err(HandleError::Rejected("event has no payload".into()));
        };
        // where the case is (who may rate it) and whether it is closed (call-backs)
        let closed = match payload {
            Payload::CaseClosed(_) => Some((true, event.case_version)),
            Payload::CaseReopened(_) => Some((false, event.case_version)),
            _ => None,
        };
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
            storage::note_case_state(transaction, &event.case_id, region.as_ref(), closed).await?;
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
                let case_id = case_id_of(event)?;
                let facts = verified
                    .verdicts
                    .iter()
                    .map(|verdict| (verdict.assignment_id.as_str(), verdict.passed))
                    .collect::<Vec<_>>();
                return record_facts(transaction, event, case_id, FactKind::Verdict, &facts, now_ms)
                    .await;
            }
            Payload::CaseEscalated(escalated) => {
                let case_id = case_id_of(event)?;
                let assignment_id = escalated
                    .assignment
                    .as_ref()
                    .map(|assignment| assignment.assignment_id.as_str())
                    .filter(|id| !id.is_empty())
                    .unwrap_or(escalated.assignment_id.as_str());
                let facts = [(assignment_id, false)];
                return record_facts(
                    transaction,
                    event,
                    case_id,
                    FactKind::Escalated,
                    &facts,
                    now_ms,
                )
                .await;
            }
            Payload::CaseDeferred(deferred) => {
                let case_id = case_id_of(event)?;
                let facts = deferred
                    .assignments
                    .iter()
                    .map(|clock| (clock.assignment_id.as_str(), false))
                    .collect::<Vec<_>>();
                return record_facts(transaction, event, case_id, FactKind::Deferred, &facts, now_ms)
                    .await;
            }
            Payload::CaseResumed(resumed) => {
                let case_id = case_id_of(event)?;
                let facts = resumed
                    .assignments
                    .iter()
                    .map(|clock| (clock.assignment_id.as_str(), false))
                    .collect::<Vec<_>>();
                return record_facts(transaction, event, case_id, FactKind::Resumed, &facts, now_ms)
                    .await;
            }
            Payload::CaseResolvedLocally(_) => {
                let case_id = case_id_of(event)?;
                return record_facts(
                    transaction,
                    event,
                    case_id,
                    FactKind::ResolvedLocally,
                    &[("", false)],
                    now_ms,
                )
                .await;
            }
            Payload::CaseReported(_)
            | Payload::CaseMerged(_)
            | Payload::CaseAccepted(_)
            | Payload::CaseRejected(_)
            // closing follows a passed verification whose verdicts were stored; a reopening follows
            // a failed one, whose verdicts name the reworked assignments
            | Payload::CaseClosed(_)
            | Payload::CaseReopened(_)
            | Payload::CaseEvidenceAttached(_)
            | Payload::CaseRecurrent(_)
            | Payload::ReportSplit(_) => return remember(transaction, event, now_ms).await,
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
        };
        let Some(assignment) = assignment else {
            return Err(HandleError::Rejected(
                "whistle event carries no assignment".into(),
            ));
        };
        apply_assignment(transaction, event, assignment, extras, now_ms).await
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
    let rated_at_ms = millis(rated.rated_at.as_ref()).map_or_else(|| occurred_at(event), Ok)?;
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
    let case_id = case_id_of(event)?;
    if recorded.callback_id.is_empty() || CallbackResult::parse(&recorded.result).is_none() {
        return Err(HandleError::Rejected(format!(
            "call-back {:?} has no id or an unknown result {:?}",
            recorded.callback_id, recorded.result
        )));
    }
    let recorded_at_ms =
        millis(recorded.recorded_at.as_ref()).map_or_else(|| occurred_at(event), Ok)?;
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
    let occurred_at_ms = occurred_at(event)?;
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
            last_event_at_ms: occurred_at(event)?,
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

fn occurred_at(event: &Event) -> Result<i64, HandleError> {
    millis(event.occurred_at.as_ref())
        .ok_or_else(|| HandleError::Rejected("event has no valid occurred_at".into()))
}

fn case_id_of(event: &Event) -> Result<&str, HandleError> {
    if event.case_id.is_empty() {
        return Err(HandleError::Rejected("event has no case_id".into()));
    }
    Ok(&event.case_id)
}

async fn remember(
    transaction: &DatabaseTransaction,
    event: &Event,
    now_ms: i64,
) -> Result<(), HandleError> {
    storage::remember_case(transaction, case_id_of(event)?, now_ms).await?;
    Ok(())
}

/// Stores what one case event decided about each named assignment (empty id: the whole case).
async fn record_facts(
    transaction: &DatabaseTransaction,
    event: &Event,
    case_id: &str,
    kind: FactKind,
    decisions: &[(&str, bool)],
    now_ms: i64,
) -> Result<(), HandleError> {
    let occurred_at_ms = occurred_at(event)?;
    storage::remember_case(transaction, case_id, now_ms).await?;
    for (assignment_id, flag) in decisions {
        if assignment_id.is_empty() && kind != FactKind::ResolvedLocally {
            return Err(HandleError::Rejected(format!(
                "{} fact names no assignment",
                kind.as_str()
            )));
        }
        let fact = CaseFact {
            event_id: event.event_id.clone(),
            case_id: case_id.to_string(),
            assignment_id: (*assignment_id).to_string(),
            kind,
            flag: *flag,
            occurred_at_ms,
        };
        storage::record_fact(transaction, &fact).await?;
    }
    storage::retally_case(transaction, case_id).await?;
    tracing::debug!(
        case_id,
        kind = kind.as_str(),
        count = decisions.len(),
        "facts recorded"
    );
    Ok(())
}

async fn apply_assignment(
    transaction: &DatabaseTransaction,
    event: &Event,
    assignment: &Assignment,
    extras: WhistleExtras,
    now_ms: i64,
) -> Result<(), HandleError> {
    let mut snapshot = snapshot_of(assignment, &event.case_id).map_err(HandleError::Rejected)?;
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
    let existing = storage::find_assignment(transaction, &snapshot.assignment_id).await?;
    if existing
        .as_ref()
        .is_some_and(|existing| existing.version > snapshot.version)
    {
        tracing::debug!(
            assignment_id = %snapshot.assignment_id,
            version = snapshot.version,
            "older assignment version, keeping the newer snapshot"
        );
    }
    let merged = domain::merge_snapshot(existing.as_ref(), &snapshot, extras.verdict);
    storage::remember_case(transaction, &merged.case_id, now_ms).await?;
    storage::save_assignment(transaction, &merged, now_ms).await?;
    if let Some(kind) = milestone_of(event) {
        storage::record_milestone(
            transaction,
            milestone::Model {
                event_id: event.event_id.clone(),
                assignment_id: merged.assignment_id.clone(),
                kind: kind.to_string(),
                occurred_at_ms: occurred_at(event)?,
            },
        )
        .await?;
    }
    if let Some((kind, flag)) = extras.fact {
        let fact = CaseFact {
            event_id: event.event_id.clone(),
            case_id: merged.case_id.clone(),
            assignment_id: merged.assignment_id.clone(),
            kind,
            flag,
            occurred_at_ms: occurred_at(event)?,
        };
        storage::record_fact(transaction, &fact).await?;
    }
    storage::retally_case(transaction, &merged.case_id).await?;
    tracing::debug!(
        assignment_id = %merged.assignment_id,
        department_code = %merged.department_code,
        state = merged.state.as_str(),
        "assignment facts updated"
    );
    Ok(())
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
