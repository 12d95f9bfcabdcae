//! What one assignment adds to its department's card, kept with the assignment so that a live card
//! is a sum over the period's rows (done by the database) instead of deciding every assignment of
//! the period again on every read. Everything is fixed by the assignment's facts except whether it
//! is due for resolution yet, which is kept as the instant it becomes due.

use super::facts::AssignmentFacts;
use super::scorecards::{Counts, Indicator, SatisfactionScope, counts_for_satisfaction};

/// One bit per count of the card an assignment can add to (see [`Tally::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TallyBit {
    Acknowledged = 0,
    ReportNumerator = 1,
    OnSiteNumerator = 2,
    OnSiteDenominator = 3,
    ResolutionNumerator = 4,
    ResolutionDenominator = 5,
    OnTimeNumerator = 6,
    ReworkNumerator = 7,
    ReworkDenominator = 8,
    Verified = 9,
    Returned = 10,
    ReturnAccepted = 11,
    Deferred = 12,
    Overdue = 13,
    Escalated = 14,
    /// Its case's call-backs count for the department under `SatisfactionScope::Lead`.
    SatisfactionLead = 15,
    /// … under `SatisfactionScope::Resolvers`.
    SatisfactionResolvers = 16,
}

impl TallyBit {
    pub const ALL: [TallyBit; 17] = [
        Self::Acknowledged,
        Self::ReportNumerator,
        Self::OnSiteNumerator,
        Self::OnSiteDenominator,
        Self::ResolutionNumerator,
        Self::ResolutionDenominator,
        Self::OnTimeNumerator,
        Self::ReworkNumerator,
        Self::ReworkDenominator,
        Self::Verified,
        Self::Returned,
        Self::ReturnAccepted,
        Self::Deferred,
        Self::Overdue,
        Self::Escalated,
        Self::SatisfactionLead,
        Self::SatisfactionResolvers,
    ];

    pub fn position(self) -> u32 {
        self as u32
    }

    /// The bit that says an assignment's case's call-backs count under `scope`.
    pub fn satisfaction(scope: SatisfactionScope) -> Self {
        match scope {
            SatisfactionScope::Lead => Self::SatisfactionLead,
            SatisfactionScope::Resolvers => Self::SatisfactionResolvers,
        }
    }
}

/// An assignment's part of its department's card, from its facts and derived outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// [`TallyBit`]s set.
    pub bits: i64,
    /// Returns the street rejected (one per decision).
    pub returns_rejected: i64,
    /// From when it counts as due for resolution (按期办结率's denominator): `i64::MIN` when
    /// resolved, its resolve-by limit otherwise; `None` when it never does (an upheld return, a
    /// deferral, no limit).
    pub due_from_ms: Option<i64>,
}

impl Tally {
    /// The assignment's tally; its `outcome` must be derived already (`derive_outcome`).
    pub fn of(assignment: &AssignmentFacts) -> Self {
        let mut bits = 0i64;
        let mut set = |bit: TallyBit, on: bool| {
            if on {
                bits |= 1 << bit.position();
            }
        };
        // the memberships below do not depend on the time of the read except 按期办结率's
        // denominator, which is `due_from_ms`; `i64::MIN` as "now" leaves only what is due anyway
        let member = |indicator: Indicator| indicator.membership(assignment, i64::MIN);
        let report = member(Indicator::ReportRate);
        let on_site = member(Indicator::OnSiteRate);
        let resolution = member(Indicator::ResolutionRate);
        let on_time = member(Indicator::OnTimeRate);
        let rework = member(Indicator::ReworkRate);
        let outcome = &assignment.outcome;
        set(
            TallyBit::Acknowledged,
            assignment.acknowledged_at_ms.is_some(),
        );
        set(TallyBit::ReportNumerator, report.numerator);
        set(TallyBit::OnSiteNumerator, on_site.numerator);
        set(TallyBit::OnSiteDenominator, on_site.denominator);
        set(TallyBit::ResolutionNumerator, resolution.numerator);
        set(TallyBit::ResolutionDenominator, resolution.denominator);
        set(TallyBit::OnTimeNumerator, on_time.numerator);
        set(TallyBit::ReworkNumerator, rework.numerator);
        set(TallyBit::ReworkDenominator, rework.denominator);
        set(
            TallyBit::Verified,
            assignment.is_resolved() && outcome.verified,
        );
        set(TallyBit::Returned, assignment.is_returned());
        set(TallyBit::ReturnAccepted, outcome.return_accepted);
        set(TallyBit::Deferred, outcome.deferred);
        set(TallyBit::Overdue, outcome.overdue > 0);
        set(TallyBit::Escalated, outcome.escalations > 0);
        set(
            TallyBit::SatisfactionLead,
            counts_for_satisfaction(assignment, SatisfactionScope::Lead),
        );
        set(
            TallyBit::SatisfactionResolvers,
            counts_for_satisfaction(assignment, SatisfactionScope::Resolvers),
        );
        let due_from_ms = if outcome.return_accepted || outcome.deferred {
            None
        } else if assignment.is_resolved() {
            Some(i64::MIN)
        } else {
            assignment.resolve_by_ms
        };
        Self {
            bits,
            returns_rejected: i64::from(outcome.returns_rejected),
            due_from_ms,
        }
    }

    pub fn has(&self, bit: TallyBit) -> bool {
        self.bits & (1 << bit.position()) != 0
    }
}

/// The sums of a department's tallies over a period, as of a moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CardSums {
    pub whistled: u64,
    /// Per [`TallyBit`], by position.
    pub bits: [u64; TallyBit::ALL.len()],
    pub returns_rejected: u64,
    /// Due for resolution as of the moment of the sums.
    pub due: u64,
}

impl CardSums {
    pub fn add(&mut self, tally: &Tally, as_of_ms: i64) {
        self.whistled += 1;
        for bit in TallyBit::ALL {
            if tally.has(bit) {
                self.bits[bit.position() as usize] += 1;
            }
        }
        self.returns_rejected += u64::try_from(tally.returns_rejected).unwrap_or_default();
        if tally.due_from_ms.is_some_and(|due| due <= as_of_ms) {
            self.due += 1;
        }
    }

    pub fn count(&self, bit: TallyBit) -> u64 {
        self.bits[bit.position() as usize]
    }

    /// The card's counts (ratings and call-backs are counted by the caller).
    pub fn counts(&self) -> Counts {
        Counts {
            whistled: self.whistled,
            acknowledged: self.count(TallyBit::Acknowledged),
            acknowledged_within_limit: self.count(TallyBit::ReportNumerator),
            required_on_site: self.count(TallyBit::OnSiteDenominator),
            on_site_within_limit: self.count(TallyBit::OnSiteNumerator),
            resolved: self.count(TallyBit::ReworkDenominator),
            resolved_within_limit: self.count(TallyBit::OnTimeNumerator),
            verified: self.count(TallyBit::Verified),
            returned: self.count(TallyBit::Returned),
            returns_accepted: self.count(TallyBit::ReturnAccepted),
            deferred: self.count(TallyBit::Deferred),
            reopened: self.count(TallyBit::ReworkNumerator),
            due_in_period: self.due,
            cooperation_ratings: 0,
            satisfaction_callbacks: 0,
            returns_rejected: self.returns_rejected,
            overdue: self.count(TallyBit::Overdue),
            escalated: self.count(TallyBit::Escalated),
        }
    }
}
