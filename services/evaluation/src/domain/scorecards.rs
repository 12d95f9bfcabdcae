//! Indicators, weights and scorecards: every number of a department's card and its explanation.

use super::facts::{AssignmentFacts, AssignmentRole, AssignmentState};
use super::tallies::{CardSums, Tally, TallyBit};
use std::collections::{BTreeMap, BTreeSet};

/// Who rated a department's cooperation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rater {
    Street,
    Community,
}

impl Rater {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Street => "street",
            Self::Community => "community",
        }
    }
}

/// One cooperation rating, 1..=5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CooperationRating {
    pub assignment_id: String,
    pub score: u8,
}

/// A resident's answer on a call-back (回访).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallbackResult {
    Satisfied,
    BasicallySatisfied,
    Dissatisfied,
}

impl CallbackResult {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Satisfied => "satisfied",
            Self::BasicallySatisfied => "basically_satisfied",
            Self::Dissatisfied => "dissatisfied",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "satisfied" => Self::Satisfied,
            "basically_satisfied" => Self::BasicallySatisfied,
            "dissatisfied" => Self::Dissatisfied,
            _ => return None,
        })
    }

    /// What the answer counts for in the satisfaction rate.
    pub fn credit(&self) -> f64 {
        match self {
            Self::Satisfied => 1.0,
            Self::BasicallySatisfied => 0.9,
            Self::Dissatisfied => 0.0,
        }
    }
}

/// One resident call-back on a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SatisfactionCallback {
    pub callback_id: String,
    pub case_id: String,
    pub result: CallbackResult,
}

/// The indicators that count assignments, and so can be explained assignment by assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Indicator {
    ReportRate,
    OnSiteRate,
    ResolutionRate,
    OnTimeRate,
    ReworkRate,
}

/// Whether one assignment is in an indicator's numerator and denominator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    pub numerator: bool,
    pub denominator: bool,
}

impl Indicator {
    pub const ALL: [Indicator; 5] = [
        Self::ReportRate,
        Self::OnSiteRate,
        Self::ResolutionRate,
        Self::OnTimeRate,
        Self::ReworkRate,
    ];

    pub fn parse(value: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|indicator| indicator.name() == value)
            .ok_or_else(|| {
                format!(
                    "must be one of report_rate, on_site_rate, resolution_rate, on_time_rate, rework_rate, got {value:?}"
                )
            })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::ReportRate => "report_rate",
            Self::OnSiteRate => "on_site_rate",
            Self::ResolutionRate => "resolution_rate",
            Self::OnTimeRate => "on_time_rate",
            Self::ReworkRate => "rework_rate",
        }
    }

    /// The one definition of each indicator, used by scorecards and explanations alike. The
    /// numerator is always a subset of the denominator, so every rate stays within 0..=1.
    pub fn membership(&self, assignment: &AssignmentFacts, as_of_ms: i64) -> Membership {
        match self {
            // 报到率: responded (acknowledged, or returned with a reason) within the ack limit /
            // assignments whistled; the only indicator an upheld return stays in
            Self::ReportRate => Membership {
                numerator: assignment.responded_within_limit(),
                denominator: true,
            },
            // 到场率: checked in within the on-site limit / assignments that required on-site
            Self::OnSiteRate => {
                let counted = assignment.requires_on_site && !assignment.outcome.return_accepted;
                Membership {
                    numerator: counted && assignment.on_site_within_limit(),
                    denominator: counted,
                }
            }
            // 解决率: resolved and verified / (whistled - upheld returns - deferred)
            Self::ResolutionRate => {
                let counted = !assignment.outcome.return_accepted && !assignment.outcome.deferred;
                Membership {
                    numerator: counted && assignment.is_resolved() && assignment.outcome.verified,
                    denominator: counted,
                }
            }
            // 按期办结率: resolved within the (possibly extended) limit / assignments due
            Self::OnTimeRate => {
                let due = assignment.is_due(as_of_ms);
                Membership {
                    numerator: due && assignment.resolved_within_limit(),
                    denominator: due,
                }
            }
            // 返工率: named in a failed verification verdict / resolved
            Self::ReworkRate => {
                let resolved =
                    assignment.was_ever_resolved() && !assignment.outcome.return_accepted;
                Membership {
                    numerator: resolved && assignment.outcome.reopen_count > 0,
                    denominator: resolved,
                }
            }
        }
    }
}

/// How the composite weighs the indicators. Only the ratios between weights matter: the composite
/// divides by the sum of the weights of the indicators present.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub report_rate: f64,
    pub on_site_rate: f64,
    pub resolution_rate: f64,
    pub on_time_rate: f64,
    pub cooperation: f64,
    pub satisfaction: f64,
    pub rework: f64,
}

impl Default for Weights {
    /// DOMAIN.md: 25·报到率 + 30·解决率 + 15·配合度 + 20·满意率 + 10·(1 − 返工率).
    fn default() -> Self {
        Self {
            report_rate: 25.0,
            on_site_rate: 0.0,
            resolution_rate: 30.0,
            on_time_rate: 0.0,
            cooperation: 15.0,
            satisfaction: 20.0,
            rework: 10.0,
        }
    }
}

impl Weights {
    /// Refuses negative or non-finite weights and weights that sum to zero; names the weight.
    pub fn validate(&self) -> Result<(), String> {
        let named = [
            ("report_rate", self.report_rate),
            ("on_site_rate", self.on_site_rate),
            ("resolution_rate", self.resolution_rate),
            ("on_time_rate", self.on_time_rate),
            ("cooperation", self.cooperation),
            ("satisfaction", self.satisfaction),
            ("rework", self.rework),
        ];
        for (name, weight) in named {
            if !weight.is_finite() || weight < 0.0 {
                return Err(format!(
                    "{name} must be a non-negative number, got {weight}"
                ));
            }
        }
        if named.iter().map(|(_, weight)| weight).sum::<f64>() <= 0.0 {
            return Err("the weights must not all be zero".into());
        }
        Ok(())
    }
}

/// The counts behind a scorecard, over the assignments whistled to a department in a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub whistled: u64,
    pub acknowledged: u64,
    pub acknowledged_within_limit: u64,
    pub required_on_site: u64,
    pub on_site_within_limit: u64,
    /// Resolved at least once (the denominator of the rework rate).
    pub resolved: u64,
    /// Resolved now, within the limit, and due (the numerator of the on-time rate).
    pub resolved_within_limit: u64,
    /// Resolved and verified.
    pub verified: u64,
    pub returned: u64,
    pub returns_accepted: u64,
    pub deferred: u64,
    /// Reopened at least once after a failed verification (the numerator of the rework rate).
    pub reopened: u64,
    pub due_in_period: u64,
    pub cooperation_ratings: u64,
    pub satisfaction_callbacks: u64,
    /// Returns the street rejected (推诿), one per decision.
    pub returns_rejected: u64,
    /// Assignments with at least one overdue clock (超期数).
    pub overdue: u64,
    /// Assignments escalated to supervision (督办数).
    pub escalated: u64,
}

/// Whose call-backs count in a department's 满意率.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SatisfactionScope {
    /// Only the lead department of the case (DOMAIN.md's default).
    #[default]
    Lead,
    /// Every department that resolved its part of the case.
    Resolvers,
}

impl SatisfactionScope {
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "lead" => Ok(Self::Lead),
            "resolvers" => Ok(Self::Resolvers),
            other => Err(format!("must be \"lead\" or \"resolvers\", got {other:?}")),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Lead => "lead",
            Self::Resolvers => "resolvers",
        }
    }
}

/// Everything configurable about scoring: weights, the minimum sample and the satisfaction scope.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scoring {
    pub weights: Weights,
    /// Fewer assignments whistled in the period than this: "not rated" (no composite).
    pub minimum_assignments: u64,
    pub satisfaction_scope: SatisfactionScope,
}

impl Default for Scoring {
    fn default() -> Self {
        Self {
            weights: Weights::default(),
            minimum_assignments: 1,
            satisfaction_scope: SatisfactionScope::Lead,
        }
    }
}

impl Scoring {
    /// Names the configuration that produced a scorecard: a stable FNV-1a hash of the weights and
    /// options, e.g. `scoring-3f2a09c1d4e5b678`.
    pub fn fingerprint(&self) -> String {
        let text = format!(
            "report_rate={};on_site_rate={};resolution_rate={};on_time_rate={};cooperation={};satisfaction={};rework={};minimum_assignments={};satisfaction_scope={}",
            self.weights.report_rate,
            self.weights.on_site_rate,
            self.weights.resolution_rate,
            self.weights.on_time_rate,
            self.weights.cooperation,
            self.weights.satisfaction,
            self.weights.rework,
            self.minimum_assignments,
            self.satisfaction_scope.as_str(),
        );
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in text.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("scoring-{hash:016x}")
    }
}

/// Rates are 0..=1 except cooperation (0..=100); `None` when the denominator is zero.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Indicators {
    pub report_rate: Option<f64>,
    pub on_site_rate: Option<f64>,
    pub resolution_rate: Option<f64>,
    pub on_time_rate: Option<f64>,
    pub rework_rate: Option<f64>,
    pub cooperation: Option<f64>,
    pub satisfaction: Option<f64>,
}

/// A department's figures for a period.
#[derive(Debug, Clone, PartialEq)]
pub struct ScorecardFigures {
    pub counts: Counts,
    pub indicators: Indicators,
    /// 0..=100; `None` when no weighted indicator is present or the department is not rated.
    pub composite: Option<f64>,
    /// Fewer assignments than the configured minimum: no composite, ranked last.
    pub rated: bool,
}

/// `numerator / denominator`, absent when nothing was counted.
pub fn ratio(numerator: u64, denominator: u64) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

/// 配合度: the mean of each assignment's mean rating (so an assignment rated by both the street and
/// the community counts once), mapped linearly from 1..=5 onto 0..=100.
pub fn cooperation_score(ratings: &[CooperationRating]) -> Option<f64> {
    let mut per_assignment: BTreeMap<&str, (f64, u32)> = BTreeMap::new();
    for rating in ratings {
        let score = f64::from(rating.score.clamp(1, 5));
        let entry = per_assignment
            .entry(rating.assignment_id.as_str())
            .or_default();
        entry.0 += score;
        entry.1 += 1;
    }
    if per_assignment.is_empty() {
        return None;
    }
    let mean_of_means = per_assignment
        .values()
        .map(|(sum, count)| sum / f64::from(*count))
        .sum::<f64>()
        / per_assignment.len() as f64;
    Some(((mean_of_means - 1.0) / 4.0 * 100.0).clamp(0.0, 100.0))
}

/// 满意率: (satisfied + 0.9 × basically satisfied) / call-backs.
pub fn satisfaction_rate(callbacks: &[SatisfactionCallback]) -> Option<f64> {
    if callbacks.is_empty() {
        return None;
    }
    // summed per result, so the figure does not depend on the order the call-backs come in
    let mut per_result: BTreeMap<&'static str, (f64, u64)> = BTreeMap::new();
    for callback in callbacks {
        per_result
            .entry(callback.result.as_str())
            .or_insert((callback.result.credit(), 0))
            .1 += 1;
    }
    let credit: f64 = per_result
        .values()
        .map(|(credit, count)| credit * *count as f64)
        .sum();
    Some(credit / callbacks.len() as f64)
}

/// The composite (0..=100): the weighted mean of the indicators present, each as 0..=1, with
/// cooperation divided by 100 and rework counted as (1 − rework rate).
pub fn composite(indicators: &Indicators, weights: &Weights) -> Option<f64> {
    let parts = [
        (weights.report_rate, indicators.report_rate),
        (weights.on_site_rate, indicators.on_site_rate),
        (weights.resolution_rate, indicators.resolution_rate),
        (weights.on_time_rate, indicators.on_time_rate),
        (
            weights.cooperation,
            indicators.cooperation.map(|score| score / 100.0),
        ),
        (weights.satisfaction, indicators.satisfaction),
        (
            weights.rework,
            indicators.rework_rate.map(|rate| 1.0 - rate),
        ),
    ];
    let mut weighted_sum = 0.0;
    let mut weight_present = 0.0;
    for (weight, value) in parts {
        if let Some(value) = value
            && weight > 0.0
        {
            weighted_sum += weight * value.clamp(0.0, 1.0);
            weight_present += weight;
        }
    }
    (weight_present > 0.0).then(|| (100.0 * weighted_sum / weight_present).clamp(0.0, 100.0))
}

/// The scorecard of one department for one period. `assignments` are the department's assignments
/// whistled in the period; ratings of other assignments are ignored, and call-backs count for the
/// cases of those assignments except cases the department correctly returned.
pub fn scorecard(
    assignments: &[AssignmentFacts],
    ratings: &[CooperationRating],
    callbacks: &[SatisfactionCallback],
    as_of_ms: i64,
    scoring: &Scoring,
) -> ScorecardFigures {
    let mut sums = CardSums::default();
    for assignment in assignments {
        sums.add(&Tally::of(assignment), as_of_ms);
    }
    let period_ratings = ratings_counted(assignments, ratings);
    let period_callbacks = callbacks_counted(assignments, callbacks, scoring.satisfaction_scope);
    figures(&sums, &period_ratings, &period_callbacks, scoring)
}

/// A card's figures from the sums of its assignments' tallies and the ratings and call-backs that
/// count in it (see [`ratings_counted`] and [`callbacks_counted`]).
pub fn figures(
    sums: &CardSums,
    period_ratings: &[CooperationRating],
    period_callbacks: &[SatisfactionCallback],
    scoring: &Scoring,
) -> ScorecardFigures {
    let mut counts = sums.counts();
    counts.cooperation_ratings = period_ratings.len() as u64;
    counts.satisfaction_callbacks = period_callbacks.len() as u64;
    let count = |bit: TallyBit| sums.count(bit);
    let indicators = Indicators {
        // 报到率's denominator is every assignment whistled
        report_rate: ratio(count(TallyBit::ReportNumerator), sums.whistled),
        on_site_rate: ratio(
            count(TallyBit::OnSiteNumerator),
            count(TallyBit::OnSiteDenominator),
        ),
        resolution_rate: ratio(
            count(TallyBit::ResolutionNumerator),
            count(TallyBit::ResolutionDenominator),
        ),
        on_time_rate: ratio(count(TallyBit::OnTimeNumerator), sums.due),
        rework_rate: ratio(
            count(TallyBit::ReworkNumerator),
            count(TallyBit::ReworkDenominator),
        ),
        cooperation: cooperation_score(period_ratings),
        satisfaction: satisfaction_rate(period_callbacks),
    };
    let rated = counts.whistled >= scoring.minimum_assignments.max(1);
    ScorecardFigures {
        counts,
        composite: if rated {
            composite(&indicators, &scoring.weights)
        } else {
            None
        },
        indicators,
        rated,
    }
}

/// The ratings of the given assignments.
pub fn ratings_counted(
    assignments: &[AssignmentFacts],
    ratings: &[CooperationRating],
) -> Vec<CooperationRating> {
    let assignment_ids: BTreeSet<&str> = assignments
        .iter()
        .map(|assignment| assignment.assignment_id.as_str())
        .collect();
    ratings
        .iter()
        .filter(|rating| assignment_ids.contains(rating.assignment_id.as_str()))
        .cloned()
        .collect()
}

/// The call-backs that count in the department's 满意率, once per call-back id.
pub fn callbacks_counted(
    assignments: &[AssignmentFacts],
    callbacks: &[SatisfactionCallback],
    scope: SatisfactionScope,
) -> Vec<SatisfactionCallback> {
    let case_ids: BTreeSet<&str> = assignments
        .iter()
        .filter(|assignment| counts_for_satisfaction(assignment, scope))
        .map(|assignment| assignment.case_id.as_str())
        .collect();
    let mut seen_callbacks = BTreeSet::new();
    callbacks
        .iter()
        .filter(|callback| case_ids.contains(callback.case_id.as_str()))
        .filter(|callback| seen_callbacks.insert(callback.callback_id.as_str()))
        .cloned()
        .collect()
}

/// Whether the department did something on the assignment that can be rated: acknowledged,
/// checked in, resolved or returned it.
pub fn department_acted(assignment: &AssignmentFacts) -> bool {
    assignment.state != AssignmentState::Whistled
        || assignment.acknowledged_at_ms.is_some()
        || assignment.returned_at_ms.is_some()
        || assignment.first_resolved_at_ms.is_some()
}

/// Whether the call-backs on this assignment's case count for its department.
pub fn counts_for_satisfaction(assignment: &AssignmentFacts, scope: SatisfactionScope) -> bool {
    if assignment.outcome.return_accepted {
        return false;
    }
    match scope {
        SatisfactionScope::Lead => assignment.role == AssignmentRole::Lead,
        SatisfactionScope::Resolvers => assignment.was_ever_resolved(),
    }
}

/// The assignments behind an indicator's numerator and denominator, sorted by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Explanation {
    pub numerator_assignment_ids: Vec<String>,
    pub denominator_assignment_ids: Vec<String>,
}

pub fn explain(
    indicator: Indicator,
    assignments: &[AssignmentFacts],
    as_of_ms: i64,
) -> Explanation {
    let mut explanation = Explanation::default();
    for assignment in assignments {
        let membership = indicator.membership(assignment, as_of_ms);
        if membership.numerator {
            explanation
                .numerator_assignment_ids
                .push(assignment.assignment_id.clone());
        }
        if membership.denominator {
            explanation
                .denominator_assignment_ids
                .push(assignment.assignment_id.clone());
        }
    }
    explanation.numerator_assignment_ids.sort();
    explanation.denominator_assignment_ids.sort();
    explanation
}

/// What ExplainScore explains: an indicator that counts assignments, 配合度, 满意率 or the composite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Explained {
    Indicator(Indicator),
    Cooperation,
    Satisfaction,
    Composite,
}

impl Explained {
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "cooperation" => Ok(Self::Cooperation),
            "satisfaction" => Ok(Self::Satisfaction),
            "composite" => Ok(Self::Composite),
            other => Indicator::parse(other).map(Self::Indicator).map_err(|_| {
                format!(
                    "must be one of report_rate, on_site_rate, resolution_rate, on_time_rate, rework_rate, cooperation, satisfaction, composite, got {other:?}"
                )
            }),
        }
    }
}

/// One assignment behind an explained score, and the events that decided its facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainedAssignment {
    pub assignment_id: String,
    pub numerator: bool,
    pub denominator: bool,
    pub deciding_event_ids: Vec<String>,
}

/// One indicator's part in the composite.
#[derive(Debug, Clone, PartialEq)]
pub struct CompositePart {
    pub indicator: &'static str,
    pub weight: f64,
    /// As the composite uses it, 0..=1: cooperation / 100, rework as 1 − rate; `None` when absent.
    pub value: Option<f64>,
    /// `weight` ÷ the sum of the weights of the indicators present; 0 when absent.
    pub effective_weight: f64,
}

/// Everything behind one number of a scorecard.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreExplanation {
    pub value: Option<f64>,
    pub assignments: Vec<ExplainedAssignment>,
    /// The call-backs counted (满意率).
    pub callback_ids: Vec<String>,
    /// The composite's parts (composite only).
    pub parts: Vec<CompositePart>,
    pub rated: bool,
}

/// Explains one number of the scorecard [`scorecard`] computes from the same inputs.
pub fn explain_score(
    explained: Explained,
    assignments: &[AssignmentFacts],
    ratings: &[CooperationRating],
    callbacks: &[SatisfactionCallback],
    as_of_ms: i64,
    scoring: &Scoring,
) -> ScoreExplanation {
    let figures = scorecard(assignments, ratings, callbacks, as_of_ms, scoring);
    let rated_ids: BTreeSet<String> = ratings_counted(assignments, ratings)
        .into_iter()
        .map(|rating| rating.assignment_id)
        .collect();
    let member = |assignment: &AssignmentFacts| -> (bool, bool) {
        match explained {
            Explained::Indicator(indicator) => {
                let membership = indicator.membership(assignment, as_of_ms);
                (membership.numerator, membership.denominator)
            }
            Explained::Cooperation => {
                let rated = rated_ids.contains(&assignment.assignment_id);
                (rated, rated)
            }
            Explained::Satisfaction => {
                let counted = counts_for_satisfaction(assignment, scoring.satisfaction_scope);
                (counted, counted)
            }
            Explained::Composite => (true, true),
        }
    };
    let mut explained_assignments: Vec<ExplainedAssignment> = assignments
        .iter()
        .filter_map(|assignment| {
            let (numerator, denominator) = member(assignment);
            (numerator || denominator).then(|| ExplainedAssignment {
                assignment_id: assignment.assignment_id.clone(),
                numerator,
                denominator,
                deciding_event_ids: assignment.outcome.deciding_event_ids.clone(),
            })
        })
        .collect();
    explained_assignments.sort_by(|left, right| left.assignment_id.cmp(&right.assignment_id));
    let indicators = &figures.indicators;
    let value = match explained {
        Explained::Indicator(Indicator::ReportRate) => indicators.report_rate,
        Explained::Indicator(Indicator::OnSiteRate) => indicators.on_site_rate,
        Explained::Indicator(Indicator::ResolutionRate) => indicators.resolution_rate,
        Explained::Indicator(Indicator::OnTimeRate) => indicators.on_time_rate,
        Explained::Indicator(Indicator::ReworkRate) => indicators.rework_rate,
        Explained::Cooperation => indicators.cooperation,
        Explained::Satisfaction => indicators.satisfaction,
        Explained::Composite => figures.composite,
    };
    let callback_ids = match explained {
        Explained::Satisfaction => {
            let mut ids: Vec<String> =
                callbacks_counted(assignments, callbacks, scoring.satisfaction_scope)
                    .into_iter()
                    .map(|callback| callback.callback_id)
                    .collect();
            ids.sort();
            ids
        }
        _ => Vec::new(),
    };
    let parts = match explained {
        Explained::Composite => composite_parts(indicators, &scoring.weights),
        _ => Vec::new(),
    };
    ScoreExplanation {
        value,
        assignments: explained_assignments,
        callback_ids,
        parts,
        rated: figures.rated,
    }
}

/// The composite's parts: each indicator's weight, value and share once re-weighted over the
/// indicators present.
pub fn composite_parts(indicators: &Indicators, weights: &Weights) -> Vec<CompositePart> {
    let parts = [
        ("report_rate", weights.report_rate, indicators.report_rate),
        (
            "on_site_rate",
            weights.on_site_rate,
            indicators.on_site_rate,
        ),
        (
            "resolution_rate",
            weights.resolution_rate,
            indicators.resolution_rate,
        ),
        (
            "on_time_rate",
            weights.on_time_rate,
            indicators.on_time_rate,
        ),
        (
            "cooperation",
            weights.cooperation,
            indicators.cooperation.map(|score| score / 100.0),
        ),
        (
            "satisfaction",
            weights.satisfaction,
            indicators.satisfaction,
        ),
        (
            "rework_rate",
            weights.rework,
            indicators.rework_rate.map(|rate| 1.0 - rate),
        ),
    ];
    let present: f64 = parts
        .iter()
        .filter(|(_, weight, value)| value.is_some() && *weight > 0.0)
        .map(|(_, weight, _)| weight)
        .sum();
    parts
        .into_iter()
        .map(|(indicator, weight, value)| CompositePart {
            indicator,
            weight,
            value: value.map(|value| value.clamp(0.0, 1.0)),
            effective_weight: if value.is_some() && weight > 0.0 && present > 0.0 {
                weight / present
            } else {
                0.0
            },
        })
        .collect()
}
