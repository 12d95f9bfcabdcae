//! What evaluation knows about each assignment: the latest snapshot dispatch published, the
//! milestones' verdicts, and the decisions published as facts (returns decided, verification
//! verdicts, overdue clocks, escalations, deferrals, 自办), folded by [`derive_outcome`].

/// Where an assignment stands, as in the latest version seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AssignmentState {
    Whistled,
    Acknowledged,
    OnSite,
    Resolved,
    Returned,
}

impl AssignmentState {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Whistled => "whistled",
            Self::Acknowledged => "acknowledged",
            Self::OnSite => "on_site",
            Self::Resolved => "resolved",
            Self::Returned => "returned",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "whistled" => Self::Whistled,
            "acknowledged" => Self::Acknowledged,
            "on_site" => Self::OnSite,
            "resolved" => Self::Resolved,
            "returned" => Self::Returned,
            _ => return None,
        })
    }
}

/// Lead (牵头) or co-department (配合).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AssignmentRole {
    Lead,
    Co,
    Unspecified,
}

impl AssignmentRole {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Lead => "lead",
            Self::Co => "co",
            Self::Unspecified => "unspecified",
        }
    }

    pub fn parse(value: &str) -> Self {
        match value {
            "lead" => Self::Lead,
            "co" => Self::Co,
            _ => Self::Unspecified,
        }
    }
}

/// Dispatch's own verdict on whether a milestone was reached within its limit, with the assignment
/// version that carried it (a newer verdict replaces an older one, e.g. after rework).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportedVerdict {
    pub within_limit: bool,
    pub version: u64,
}

/// The milestones whose events carry a `within_limit` verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Milestone {
    Acknowledged,
    OnSite,
    Resolved,
}

/// What one whistle event says about an assignment (every whistle event carries all of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentSnapshot {
    pub assignment_id: String,
    pub case_id: String,
    pub department_code: String,
    pub role: AssignmentRole,
    pub state: AssignmentState,
    pub version: u64,
    pub whistled_at_ms: i64,
    pub acknowledge_by_ms: Option<i64>,
    pub on_site_by_ms: Option<i64>,
    pub resolve_by_ms: Option<i64>,
    pub requires_on_site: bool,
    pub acknowledged_at_ms: Option<i64>,
    pub on_site_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    pub returned_at_ms: Option<i64>,
    pub deferred: bool,
    pub extended: bool,
    pub escalated: bool,
}

/// Everything evaluation keeps about one assignment: the latest snapshot, facts that never go away
/// (flags, first resolution, dispatch's verdicts), and outcomes derived from the case's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentFacts {
    pub assignment_id: String,
    pub case_id: String,
    pub department_code: String,
    pub role: AssignmentRole,
    pub state: AssignmentState,
    pub version: u64,
    pub whistled_at_ms: i64,
    pub acknowledge_by_ms: Option<i64>,
    pub on_site_by_ms: Option<i64>,
    pub resolve_by_ms: Option<i64>,
    pub requires_on_site: bool,
    pub acknowledged_at_ms: Option<i64>,
    pub acknowledged_verdict: Option<ReportedVerdict>,
    pub on_site_at_ms: Option<i64>,
    pub on_site_verdict: Option<ReportedVerdict>,
    pub resolved_at_ms: Option<i64>,
    /// The first time the assignment was resolved, kept through rework.
    pub first_resolved_at_ms: Option<i64>,
    pub resolved_verdict: Option<ReportedVerdict>,
    pub returned_at_ms: Option<i64>,
    pub deferred: bool,
    pub extended: bool,
    pub escalated: bool,
    pub outcome: DerivedOutcome,
}

/// What the producers' decision events say about one assignment, folded by [`derive_outcome`].
/// Nothing here is inferred: each field comes from an event that states it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DerivedOutcome {
    /// Resolved, and the latest verification verdict on this assignment (`CaseVerified.verdicts`)
    /// passed.
    pub verified: bool,
    /// How many failed verification verdicts named this assignment (返工).
    pub reopen_count: u32,
    /// The street's latest decision on a return of this assignment upheld it (退回 accepted).
    pub return_accepted: bool,
    /// Returns the street rejected (推诿): each counts against the department.
    pub returns_rejected: u32,
    /// Returned with a reason within the acknowledge limit in force when it returned (a timely
    /// response for 报到率, whatever the street decides).
    pub returned_in_time: bool,
    /// Clocks of this assignment that went overdue (`whistle.overdue`).
    pub overdue: u32,
    /// Escalations of this assignment to supervision (`case.escalated`, 督办).
    pub escalations: u32,
    /// The latest of `case.deferred` / `case.resumed` naming this assignment was a deferral.
    pub deferred: bool,
    /// The community resolved the case itself (`case.resolved_locally`, 自办).
    pub resolved_locally: bool,
    /// The events that decided the above, in the order they happened.
    pub deciding_event_ids: Vec<String>,
}

/// What kind of decision a stored fact records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FactKind {
    /// `whistle.returned`; `flag`: returned within the acknowledge limit in force then.
    Returned,
    /// `whistle.return_decided`; `flag` is `upheld`.
    ReturnDecided,
    /// One verdict of `case.verified`; `flag` is `passed`.
    Verdict,
    /// `whistle.overdue`.
    Overdue,
    /// `case.escalated`.
    Escalated,
    /// `case.deferred`, per assignment whose clocks stopped.
    Deferred,
    /// `case.resumed`, per assignment whose clocks continue.
    Resumed,
    /// `case.resolved_locally`; about the whole case (no assignment).
    ResolvedLocally,
}

impl FactKind {
    pub const ALL: [FactKind; 8] = [
        Self::Returned,
        Self::ReturnDecided,
        Self::Verdict,
        Self::Overdue,
        Self::Escalated,
        Self::Deferred,
        Self::Resumed,
        Self::ResolvedLocally,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Returned => "returned",
            Self::ReturnDecided => "return_decided",
            Self::Verdict => "verdict",
            Self::Overdue => "overdue",
            Self::Escalated => "escalated",
            Self::Deferred => "deferred",
            Self::Resumed => "resumed",
            Self::ResolvedLocally => "resolved_locally",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == value)
    }
}

/// One decision an event published about an assignment of a case, or about the whole case when
/// `assignment_id` is empty. Stored as it arrives, keyed by event and assignment, so a redelivery
/// changes nothing and a fact that arrives before its assignment waits for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseFact {
    pub event_id: String,
    pub case_id: String,
    pub assignment_id: String,
    pub kind: FactKind,
    /// `upheld` for a return decision, `passed` for a verdict; false otherwise.
    pub flag: bool,
    pub occurred_at_ms: i64,
}

impl AssignmentFacts {
    /// The assignment as a snapshot says, with nothing remembered yet.
    pub fn from_snapshot(snapshot: &AssignmentSnapshot) -> Self {
        Self {
            assignment_id: snapshot.assignment_id.clone(),
            case_id: snapshot.case_id.clone(),
            department_code: snapshot.department_code.clone(),
            role: snapshot.role,
            state: snapshot.state,
            version: snapshot.version,
            whistled_at_ms: snapshot.whistled_at_ms,
            acknowledge_by_ms: snapshot.acknowledge_by_ms,
            on_site_by_ms: snapshot.on_site_by_ms,
            resolve_by_ms: snapshot.resolve_by_ms,
            requires_on_site: snapshot.requires_on_site,
            acknowledged_at_ms: snapshot.acknowledged_at_ms,
            acknowledged_verdict: None,
            on_site_at_ms: snapshot.on_site_at_ms,
            on_site_verdict: None,
            resolved_at_ms: snapshot.resolved_at_ms,
            first_resolved_at_ms: snapshot.resolved_at_ms,
            resolved_verdict: None,
            returned_at_ms: snapshot.returned_at_ms,
            deferred: snapshot.deferred,
            extended: snapshot.extended,
            escalated: snapshot.escalated,
            outcome: DerivedOutcome::default(),
        }
    }

    pub fn is_resolved(&self) -> bool {
        self.state == AssignmentState::Resolved
    }

    /// Resolved at least once, even if it is being reworked now.
    pub fn was_ever_resolved(&self) -> bool {
        self.first_resolved_at_ms.is_some() || self.is_resolved()
    }

    pub fn is_returned(&self) -> bool {
        self.state == AssignmentState::Returned
    }

    /// 报到 within the acknowledge limit: dispatch's verdict when it gave one, otherwise the
    /// acknowledgement time against the deadline.
    pub fn acknowledged_within_limit(&self) -> bool {
        within_limit(
            self.acknowledged_at_ms,
            self.acknowledge_by_ms,
            self.acknowledged_verdict,
        )
    }

    /// 到场 within the on-site limit.
    pub fn on_site_within_limit(&self) -> bool {
        within_limit(self.on_site_at_ms, self.on_site_by_ms, self.on_site_verdict)
    }

    /// 办结 within the (possibly extended) resolve limit; only while resolved.
    pub fn resolved_within_limit(&self) -> bool {
        self.is_resolved()
            && within_limit(
                self.resolved_at_ms,
                self.resolve_by_ms,
                self.resolved_verdict,
            )
    }

    /// Due for resolution as of `as_of_ms`: resolved already, or its (possibly extended) resolve
    /// deadline has passed. An upheld return or a deferral takes it out.
    pub fn is_due(&self, as_of_ms: i64) -> bool {
        if self.outcome.return_accepted || self.outcome.deferred {
            return false;
        }
        self.is_resolved() || self.resolve_by_ms.is_some_and(|due| due <= as_of_ms)
    }

    /// Returned with a reason within the acknowledge limit in force when it returned: a timely
    /// response for 报到率. Judged when `whistle.returned` arrives, because a rejected return
    /// restarts the clocks.
    pub fn returned_within_ack_limit(&self) -> bool {
        self.outcome.returned_in_time
    }

    /// Responded within the acknowledge limit: acknowledged in time, or returned in time.
    pub fn responded_within_limit(&self) -> bool {
        self.acknowledged_within_limit() || self.returned_within_ack_limit()
    }
}

fn within_limit(
    reached_at_ms: Option<i64>,
    deadline_ms: Option<i64>,
    verdict: Option<ReportedVerdict>,
) -> bool {
    let Some(reached_at_ms) = reached_at_ms else {
        return false;
    };
    match (verdict, deadline_ms) {
        (Some(verdict), _) => verdict.within_limit,
        (None, Some(deadline_ms)) => reached_at_ms <= deadline_ms,
        (None, None) => false,
    }
}

/// Folds one whistle event into what is known about its assignment. A snapshot older than the one
/// stored does not replace it, but flags, the first resolution and dispatch's verdicts are facts that
/// hold whatever order events arrive in. Derived outcomes are kept; recompute them with
/// [`derive_outcome`] afterwards.
pub fn merge_snapshot(
    existing: Option<&AssignmentFacts>,
    snapshot: &AssignmentSnapshot,
    verdict: Option<(Milestone, bool)>,
) -> AssignmentFacts {
    let mut merged = match existing {
        Some(existing) if existing.version > snapshot.version => existing.clone(),
        Some(existing) => AssignmentFacts {
            acknowledged_verdict: existing.acknowledged_verdict,
            on_site_verdict: existing.on_site_verdict,
            resolved_verdict: existing.resolved_verdict,
            first_resolved_at_ms: existing.first_resolved_at_ms,
            deferred: existing.deferred,
            extended: existing.extended,
            escalated: existing.escalated,
            outcome: existing.outcome.clone(),
            ..AssignmentFacts::from_snapshot(snapshot)
        },
        None => AssignmentFacts::from_snapshot(snapshot),
    };
    merged.deferred |= snapshot.deferred;
    merged.extended |= snapshot.extended;
    merged.escalated |= snapshot.escalated;
    merged.first_resolved_at_ms = match (merged.first_resolved_at_ms, snapshot.resolved_at_ms) {
        (Some(known), Some(seen)) => Some(known.min(seen)),
        (known, seen) => known.or(seen),
    };
    if let Some((milestone, within_limit)) = verdict {
        let slot = match milestone {
            Milestone::Acknowledged => &mut merged.acknowledged_verdict,
            Milestone::OnSite => &mut merged.on_site_verdict,
            Milestone::Resolved => &mut merged.resolved_verdict,
        };
        if slot.is_none_or(|stored| stored.version <= snapshot.version) {
            *slot = Some(ReportedVerdict {
                within_limit,
                version: snapshot.version,
            });
        }
    }
    merged
}

/// What the case's published facts mean for `assignment`. A pure function of the set of facts, so
/// any delivery order and any redelivery give the same outcome.
pub fn derive_outcome(assignment: &AssignmentFacts, facts: &[CaseFact]) -> DerivedOutcome {
    let mut mine: Vec<&CaseFact> = facts
        .iter()
        .filter(|fact| {
            fact.case_id == assignment.case_id
                && (fact.assignment_id == assignment.assignment_id
                    || (fact.assignment_id.is_empty() && fact.kind == FactKind::ResolvedLocally))
        })
        .collect();
    mine.sort_by(|left, right| {
        (left.occurred_at_ms, left.kind, &left.event_id).cmp(&(
            right.occurred_at_ms,
            right.kind,
            &right.event_id,
        ))
    });
    mine.dedup_by(|later, earlier| {
        later.event_id == earlier.event_id && later.kind == earlier.kind
    });
    let mut outcome = DerivedOutcome::default();
    let mut last_verdict = None;
    let mut last_decision = None;
    for fact in &mine {
        match fact.kind {
            FactKind::Returned => outcome.returned_in_time |= fact.flag,
            FactKind::ReturnDecided => {
                last_decision = Some(fact.flag);
                if !fact.flag {
                    outcome.returns_rejected += 1;
                }
            }
            FactKind::Verdict => {
                last_verdict = Some(fact.flag);
                if !fact.flag {
                    outcome.reopen_count += 1;
                }
            }
            FactKind::Overdue => outcome.overdue += 1,
            FactKind::Escalated => outcome.escalations += 1,
            FactKind::Deferred => outcome.deferred = true,
            FactKind::Resumed => outcome.deferred = false,
            FactKind::ResolvedLocally => outcome.resolved_locally = true,
        }
        outcome.deciding_event_ids.push(fact.event_id.clone());
    }
    outcome.verified = assignment.is_resolved() && last_verdict == Some(true);
    outcome.return_accepted = last_decision == Some(true);
    outcome
}
