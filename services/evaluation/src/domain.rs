//! Evaluation's rules (考核评价): periods, the facts kept per assignment, and every indicator, count
//! and composite of a scorecard (see DOMAIN.md, "Evaluation"). Pure: no I/O, no gRPC, no database.
//! Timestamps are epoch milliseconds.

use chrono::NaiveDate;
use std::collections::{BTreeMap, BTreeSet};

const MILLIS_PER_HOUR: i64 = 3_600_000;

/// The offset of the evaluation time zone from UTC, in whole hours (China: +8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcOffset {
    hours: i32,
}

impl UtcOffset {
    pub fn from_hours(hours: i32) -> Result<Self, String> {
        if !(-12..=14).contains(&hours) {
            return Err(format!("must be between -12 and 14 hours, got {hours}"));
        }
        Ok(Self { hours })
    }

    pub fn hours(&self) -> i32 {
        self.hours
    }
}

/// A scoring period: a month (`2026-11`), a quarter (`2026-Q4`) or a year (`2026`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Month { year: i32, month: u32 },
    Quarter { year: i32, quarter: u32 },
    Year { year: i32 },
}

/// The instants a period covers: `start_ms` included, `end_ms` excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodBounds {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl PeriodBounds {
    pub fn contains(&self, at_ms: i64) -> bool {
        self.start_ms <= at_ms && at_ms < self.end_ms
    }
}

const PERIOD_FORMS: &str =
    "must be a month like \"2026-11\", a quarter like \"2026-Q4\" or a year like \"2026\"";

impl Period {
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() {
            return Err(format!("required; {PERIOD_FORMS}"));
        }
        let malformed = || format!("{PERIOD_FORMS}, got {value:?}");
        let (year_text, rest) = match value.split_once('-') {
            Some((year, rest)) => (year, Some(rest)),
            None => (value, None),
        };
        let year = parse_year(year_text).ok_or_else(malformed)?;
        let Some(rest) = rest else {
            return Ok(Self::Year { year });
        };
        if let Some(quarter_text) = rest.strip_prefix('Q') {
            let quarter = parse_digits(quarter_text, 1).ok_or_else(malformed)?;
            if !(1..=4).contains(&quarter) {
                return Err(format!("quarter must be Q1 to Q4, got {value:?}"));
            }
            return Ok(Self::Quarter { year, quarter });
        }
        let month = parse_digits(rest, 2).ok_or_else(malformed)?;
        if !(1..=12).contains(&month) {
            return Err(format!("month must be 01 to 12, got {value:?}"));
        }
        Ok(Self::Month { year, month })
    }

    /// The canonical text of the period, the form `parse` accepts.
    pub fn label(&self) -> String {
        match self {
            Self::Month { year, month } => format!("{year:04}-{month:02}"),
            Self::Quarter { year, quarter } => format!("{year:04}-Q{quarter}"),
            Self::Year { year } => format!("{year:04}"),
        }
    }

    /// The first month of the period and the first month after it, as (year, month).
    fn month_range(&self) -> ((i32, u32), (i32, u32)) {
        let (start, months) = match *self {
            Self::Month { year, month } => ((year, month), 1),
            Self::Quarter { year, quarter } => ((year, (quarter - 1) * 3 + 1), 3),
            Self::Year { year } => ((year, 1), 12),
        };
        let index = start.0 * 12 + (start.1 as i32 - 1) + months;
        let end = (index.div_euclid(12), index.rem_euclid(12) as u32 + 1);
        (start, end)
    }

    /// Where the period starts and ends in UTC, for local midnights at `offset`.
    pub fn bounds(&self, offset: UtcOffset) -> PeriodBounds {
        let (start, end) = self.month_range();
        PeriodBounds {
            start_ms: local_month_start_ms(start, offset),
            end_ms: local_month_start_ms(end, offset),
        }
    }
}

fn parse_year(text: &str) -> Option<i32> {
    let year = parse_digits(text, 4)?;
    (1970..=9999).contains(&year).then_some(year as i32)
}

fn parse_digits(text: &str, length: usize) -> Option<u32> {
    if text.len() != length || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn local_month_start_ms((year, month): (i32, u32), offset: UtcOffset) -> i64 {
    // Years are 1970..=10000 and months 1..=12 here, so the date always exists.
    let utc_midnight_ms = NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|midnight| midnight.and_utc().timestamp_millis())
        .unwrap_or_default();
    utc_midnight_ms - i64::from(offset.hours) * MILLIS_PER_HOUR
}

/// The administrative level of a department in the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DepartmentLevel {
    City,
    District,
    Property,
}

impl DepartmentLevel {
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "city" => Ok(Self::City),
            "district" => Ok(Self::District),
            "property" => Ok(Self::Property),
            other => Err(format!(
                "must be \"city\", \"district\" or \"property\", got {other:?}"
            )),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::City => "city",
            Self::District => "district",
            Self::Property => "property",
        }
    }
}

/// The level filter of a ranking: empty means every level.
pub fn parse_level_filter(value: &str) -> Result<Option<DepartmentLevel>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    DepartmentLevel::parse(value).map(Some)
}

/// A region filter of a ranking: an administrative division code prefix (`420303`), empty for all.
pub fn parse_region_filter(value: &str) -> Result<Option<String>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > 15 || !value.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(format!(
            "must be a division code of at most 15 digits such as \"420303\", got {value:?}"
        ));
    }
    Ok(Some(value.to_string()))
}

/// A department code as it appears in subjects: letters, digits, `-` or `_`, at most 64 bytes.
pub fn parse_department_code(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("required".into());
    }
    let well_formed = value.len() <= 64
        && value
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    if !well_formed {
        return Err(format!(
            "must be at most 64 letters, digits, - or _, got {value:?}"
        ));
    }
    Ok(value.to_string())
}

/// An identifier the caller supplies (assignment, case, rater, call-back): not empty, no control
/// characters. Its length is held to `limits.id_chars` before.
pub fn parse_identifier(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("required".into());
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(value.to_string())
}

/// A cooperation score (配合度) given to one assignment.
pub fn parse_cooperation_score(score: u32) -> Result<u8, String> {
    match u8::try_from(score) {
        Ok(score @ 1..=5) => Ok(score),
        _ => Err(format!("must be between 1 and 5, got {score}")),
    }
}

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
    pub const ALL: [FactKind; 7] = [
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

    /// Returned with a reason within the acknowledge limit: a timely response for 报到率.
    pub fn returned_within_ack_limit(&self) -> bool {
        matches!(
            (self.returned_at_ms, self.acknowledge_by_ms),
            (Some(returned), Some(limit)) if returned <= limit
        )
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
    let credit: f64 = callbacks
        .iter()
        .map(|callback| callback.result.credit())
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
    let count = |include: &dyn Fn(&AssignmentFacts) -> bool| {
        assignments
            .iter()
            .filter(|assignment| include(assignment))
            .count() as u64
    };
    let tally = |indicator: Indicator| {
        let numerator = count(&|assignment| indicator.membership(assignment, as_of_ms).numerator);
        let denominator =
            count(&|assignment| indicator.membership(assignment, as_of_ms).denominator);
        (numerator, denominator)
    };
    let report = tally(Indicator::ReportRate);
    let on_site = tally(Indicator::OnSiteRate);
    let resolution = tally(Indicator::ResolutionRate);
    let on_time = tally(Indicator::OnTimeRate);
    let rework = tally(Indicator::ReworkRate);
    let mut counts = Counts {
        whistled: assignments.len() as u64,
        acknowledged: count(&|assignment| assignment.acknowledged_at_ms.is_some()),
        acknowledged_within_limit: report.0,
        required_on_site: on_site.1,
        on_site_within_limit: on_site.0,
        resolved: rework.1,
        resolved_within_limit: on_time.0,
        verified: count(&|assignment| assignment.is_resolved() && assignment.outcome.verified),
        returned: count(&AssignmentFacts::is_returned),
        returns_accepted: count(&|assignment| assignment.outcome.return_accepted),
        deferred: count(&|assignment| assignment.outcome.deferred),
        reopened: rework.0,
        due_in_period: on_time.1,
        cooperation_ratings: 0,
        satisfaction_callbacks: 0,
        returns_rejected: assignments
            .iter()
            .map(|assignment| u64::from(assignment.outcome.returns_rejected))
            .sum(),
        overdue: count(&|assignment| assignment.outcome.overdue > 0),
        escalated: count(&|assignment| assignment.outcome.escalations > 0),
    };

    let assignment_ids: BTreeSet<&str> = assignments
        .iter()
        .map(|assignment| assignment.assignment_id.as_str())
        .collect();
    let period_ratings: Vec<CooperationRating> = ratings
        .iter()
        .filter(|rating| assignment_ids.contains(rating.assignment_id.as_str()))
        .cloned()
        .collect();
    let case_ids: BTreeSet<&str> = assignments
        .iter()
        .filter(|assignment| counts_for_satisfaction(assignment, scoring.satisfaction_scope))
        .map(|assignment| assignment.case_id.as_str())
        .collect();
    let mut seen_callbacks = BTreeSet::new();
    let period_callbacks: Vec<SatisfactionCallback> = callbacks
        .iter()
        .filter(|callback| case_ids.contains(callback.case_id.as_str()))
        .filter(|callback| seen_callbacks.insert(callback.callback_id.as_str()))
        .cloned()
        .collect();
    counts.cooperation_ratings = period_ratings.len() as u64;
    counts.satisfaction_callbacks = period_callbacks.len() as u64;

    let indicators = Indicators {
        report_rate: ratio(report.0, report.1),
        on_site_rate: ratio(on_site.0, on_site.1),
        resolution_rate: ratio(resolution.0, resolution.1),
        on_time_rate: ratio(on_time.0, on_time.1),
        rework_rate: ratio(rework.0, rework.1),
        cooperation: cooperation_score(&period_ratings),
        satisfaction: satisfaction_rate(&period_callbacks),
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

/// A department to rank.
#[derive(Debug, Clone, PartialEq)]
pub struct RankingCandidate {
    pub department_code: String,
    pub composite: Option<f64>,
    pub whistled: u64,
}

/// A department's place in a ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedDepartment {
    pub rank: u32,
    pub department_code: String,
    pub composite: Option<f64>,
    pub whistled: u64,
}

/// Ranks by composite, highest first; equal composites share a rank (1, 1, 3). Departments without
/// a composite (no whistles in the period) come last and share the rank after everyone else.
/// Ties are listed by department code.
pub fn rank(mut candidates: Vec<RankingCandidate>) -> Vec<RankedDepartment> {
    candidates.sort_by(|left, right| {
        let by_composite = match (left.composite, right.composite) {
            (Some(left), Some(right)) => right.total_cmp(&left),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        by_composite.then_with(|| left.department_code.cmp(&right.department_code))
    });
    let mut ranked: Vec<RankedDepartment> = Vec::with_capacity(candidates.len());
    for (position, candidate) in candidates.into_iter().enumerate() {
        let rank = match ranked.last() {
            Some(previous) if same_composite(previous.composite, candidate.composite) => {
                previous.rank
            }
            _ => u32::try_from(position + 1).unwrap_or(u32::MAX),
        };
        ranked.push(RankedDepartment {
            rank,
            department_code: candidate.department_code,
            composite: candidate.composite,
            whistled: candidate.whistled,
        });
    }
    ranked
}

fn same_composite(left: Option<f64>, right: Option<f64>) -> bool {
    match (left, right) {
        (Some(left), Some(right)) => (left - right).abs() < 1e-9,
        (None, None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: i64 = MILLIS_PER_HOUR;
    /// 2026-11-10T09:00:00+08:00
    const WHISTLED: i64 = 1_794_272_400_000;

    fn snapshot(id: &str, department: &str) -> AssignmentSnapshot {
        AssignmentSnapshot {
            assignment_id: id.into(),
            case_id: format!("case-{id}"),
            department_code: department.into(),
            role: AssignmentRole::Lead,
            state: AssignmentState::Whistled,
            version: 1,
            whistled_at_ms: WHISTLED,
            acknowledge_by_ms: Some(WHISTLED + HOUR / 2),
            on_site_by_ms: Some(WHISTLED + 2 * HOUR),
            resolve_by_ms: Some(WHISTLED + 24 * HOUR),
            requires_on_site: true,
            acknowledged_at_ms: None,
            on_site_at_ms: None,
            resolved_at_ms: None,
            returned_at_ms: None,
            deferred: false,
            extended: false,
            escalated: false,
        }
    }

    fn facts(id: &str) -> AssignmentFacts {
        AssignmentFacts::from_snapshot(&snapshot(id, "zw-sanitation"))
    }

    /// Acknowledged, on site and resolved at the given hours after the whistle; verified.
    fn done(id: &str, ack_hours: f64, on_site_hours: f64, resolve_hours: f64) -> AssignmentFacts {
        let at = |hours: f64| WHISTLED + (hours * HOUR as f64) as i64;
        let mut facts = facts(id);
        facts.state = AssignmentState::Resolved;
        facts.acknowledged_at_ms = Some(at(ack_hours));
        facts.on_site_at_ms = Some(at(on_site_hours));
        facts.resolved_at_ms = Some(at(resolve_hours));
        facts.first_resolved_at_ms = Some(at(resolve_hours));
        facts.outcome.verified = true;
        facts
    }

    fn approx(actual: Option<f64>, expected: f64) {
        let actual = actual.expect("indicator present");
        assert!(
            (actual - expected).abs() < 1e-9,
            "expected {expected}, got {actual}"
        );
    }

    #[test]
    fn periods_parse_and_print() {
        assert_eq!(
            Period::parse("2026-11"),
            Ok(Period::Month {
                year: 2026,
                month: 11
            })
        );
        assert_eq!(
            Period::parse("2026-Q4"),
            Ok(Period::Quarter {
                year: 2026,
                quarter: 4
            })
        );
        assert_eq!(Period::parse("2026"), Ok(Period::Year { year: 2026 }));
        for text in ["2026-11", "2026-Q4", "2026", "2026-01"] {
            assert_eq!(Period::parse(text).expect("valid").label(), text);
        }
        for bad in [
            "",
            "26",
            "2026-13",
            "2026-00",
            "2026-1",
            "2026-Q5",
            "2026-Q0",
            "2026-q4",
            "2026-11-01",
            "1969",
            "x026",
            "2026-",
            "２０２６",
        ] {
            assert!(Period::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            Period::parse("2026-13")
                .expect_err("bad month")
                .contains("01 to 12")
        );
    }

    #[test]
    fn period_bounds_are_local_midnights() {
        let china = UtcOffset::from_hours(8).expect("offset");
        let november = Period::parse("2026-11").expect("valid").bounds(china);
        // 2026-11-01T00:00+08:00 = 2026-10-31T16:00Z; 2026-12-01T00:00+08:00 = 2026-11-30T16:00Z
        assert_eq!(november.start_ms, 1_793_462_400_000);
        assert_eq!(november.end_ms, 1_796_054_400_000);
        let q4 = Period::parse("2026-Q4").expect("valid").bounds(china);
        assert_eq!(q4.start_ms, 1_790_784_000_000); // 2026-09-30T16:00Z
        assert_eq!(q4.end_ms, november.end_ms + 31 * 24 * HOUR); // December has 31 days
        let year = Period::parse("2026").expect("valid").bounds(china);
        assert_eq!(year.end_ms, q4.end_ms);
        assert!(year.contains(year.start_ms));
        assert!(!year.contains(year.end_ms));
        let utc = UtcOffset::from_hours(0).expect("offset");
        assert_eq!(
            Period::parse("2026-11")
                .expect("valid")
                .bounds(utc)
                .start_ms,
            november.start_ms + 8 * HOUR
        );
        assert!(UtcOffset::from_hours(15).is_err());
    }

    #[test]
    fn small_parsers() {
        assert_eq!(parse_cooperation_score(0).map_err(|_| ()), Err(()));
        assert_eq!(parse_cooperation_score(6).map_err(|_| ()), Err(()));
        assert_eq!(parse_cooperation_score(5), Ok(5));
        assert_eq!(parse_level_filter(""), Ok(None));
        assert_eq!(parse_level_filter("city"), Ok(Some(DepartmentLevel::City)));
        assert!(parse_level_filter("street").is_err());
        assert_eq!(parse_region_filter("420303"), Ok(Some("420303".into())));
        assert!(parse_region_filter("42a").is_err());
        assert!(parse_department_code("zw-sanitation").is_ok());
        assert!(parse_department_code("zw.sanitation").is_err());
        assert!(parse_department_code("").is_err());
        assert!(parse_identifier("").is_err());
        assert!(parse_identifier("rater\u{0}").is_err());
        assert_eq!(Indicator::parse("on_time_rate"), Ok(Indicator::OnTimeRate));
        assert!(Indicator::parse("cooperation").is_err());
    }

    #[test]
    fn every_indicator_on_hand_computed_assignments() {
        // a: all within limits, verified
        let a = done("a", 0.25, 1.0, 5.0);
        // b: late everywhere (ack 1h > 30min, on site 3h > 2h, resolved 30h > 24h), verified
        let b = done("b", 1.0, 3.0, 30.0);
        // c: acknowledged in time, no on-site needed, resolved in time but verification failed once
        let mut c = done("c", 0.1, 0.0, 10.0);
        c.requires_on_site = false;
        c.on_site_at_ms = None;
        c.outcome.verified = false;
        c.outcome.reopen_count = 1;
        // d: returned, and the return was accepted
        let mut d = facts("d");
        d.state = AssignmentState::Returned;
        d.returned_at_ms = Some(WHISTLED + HOUR);
        d.acknowledged_at_ms = Some(WHISTLED + HOUR / 4);
        d.outcome.return_accepted = true;
        // e: deferred, never resolved, deadline passed
        let mut e = facts("e");
        e.outcome.deferred = true;
        // f: still open, deadline not passed as of the scorecard
        let f = facts("f");
        let as_of = WHISTLED + 20 * HOUR;
        let mut g = facts("g");
        g.resolve_by_ms = Some(WHISTLED + 10 * HOUR); // g: open and overdue
        let assignments = vec![a, b, c, d, e, f, g];

        let figures = scorecard(&assignments, &[], &[], as_of, &Scoring::default());
        let counts = figures.counts;
        assert_eq!(counts.whistled, 7);
        assert_eq!(counts.acknowledged, 4); // a b c d
        assert_eq!(counts.acknowledged_within_limit, 3); // a c d
        assert_eq!(counts.required_on_site, 5); // all but c, and d (upheld return)
        assert_eq!(counts.on_site_within_limit, 1); // a
        assert_eq!(counts.resolved, 3); // a b c
        assert_eq!(counts.verified, 2); // a b
        assert_eq!(counts.returned, 1);
        assert_eq!(counts.returns_accepted, 1);
        assert_eq!(counts.deferred, 1);
        assert_eq!(counts.reopened, 1); // c
        assert_eq!(counts.due_in_period, 4); // a b c g (d returned, e deferred, f not yet due)
        assert_eq!(counts.resolved_within_limit, 2); // a c

        let indicators = figures.indicators;
        approx(indicators.report_rate, 3.0 / 7.0);
        approx(indicators.on_site_rate, 1.0 / 5.0);
        approx(indicators.resolution_rate, 2.0 / 5.0); // a b / (7 - d - e)
        approx(indicators.on_time_rate, 2.0 / 4.0);
        approx(indicators.rework_rate, 1.0 / 3.0);
        assert_eq!(indicators.cooperation, None);
        assert_eq!(indicators.satisfaction, None);
        // re-weighted over report (25), resolution (30) and rework (10):
        // (25·3/7 + 30·2/5 + 10·2/3) / 65 · 100
        let expected = (25.0 * 3.0 / 7.0 + 30.0 * 0.4 + 10.0 * 2.0 / 3.0) / 65.0 * 100.0;
        approx(figures.composite, expected);

        let explanation = explain(Indicator::OnTimeRate, &assignments, as_of);
        assert_eq!(explanation.numerator_assignment_ids, vec!["a", "c"]);
        assert_eq!(
            explanation.denominator_assignment_ids,
            vec!["a", "b", "c", "g"]
        );
        let explanation = explain(Indicator::ResolutionRate, &assignments, as_of);
        assert_eq!(explanation.numerator_assignment_ids, vec!["a", "b"]);
        assert_eq!(
            explanation.denominator_assignment_ids,
            vec!["a", "b", "c", "f", "g"]
        );
    }

    #[test]
    fn the_full_composite_of_domain_md() {
        let assignments = vec![done("a", 0.1, 0.5, 2.0), done("b", 2.0, 0.5, 2.0)];
        let ratings = vec![
            CooperationRating {
                assignment_id: "a".into(),
                score: 4,
            },
            CooperationRating {
                assignment_id: "a".into(),
                score: 5,
            },
            CooperationRating {
                assignment_id: "b".into(),
                score: 3,
            },
            CooperationRating {
                assignment_id: "elsewhere".into(),
                score: 1,
            },
        ];
        let callbacks = vec![
            SatisfactionCallback {
                callback_id: "cb1".into(),
                case_id: "case-a".into(),
                result: CallbackResult::Satisfied,
            },
            SatisfactionCallback {
                callback_id: "cb2".into(),
                case_id: "case-b".into(),
                result: CallbackResult::BasicallySatisfied,
            },
            SatisfactionCallback {
                callback_id: "cb3".into(),
                case_id: "case-b".into(),
                result: CallbackResult::Dissatisfied,
            },
            SatisfactionCallback {
                callback_id: "cb4".into(),
                case_id: "case-other".into(),
                result: CallbackResult::Dissatisfied,
            },
        ];
        let figures = scorecard(
            &assignments,
            &ratings,
            &callbacks,
            WHISTLED + 100 * HOUR,
            &Scoring::default(),
        );
        assert_eq!(figures.counts.cooperation_ratings, 3);
        assert_eq!(figures.counts.satisfaction_callbacks, 3);
        approx(figures.indicators.report_rate, 0.5);
        approx(figures.indicators.resolution_rate, 1.0);
        approx(figures.indicators.rework_rate, 0.0);
        // per assignment: a 4.5, b 3 -> mean 3.75 -> (3.75 - 1) / 4 · 100 = 68.75
        approx(figures.indicators.cooperation, 68.75);
        // (1 + 0.9 + 0) / 3
        approx(figures.indicators.satisfaction, 1.9 / 3.0);
        // 25·0.5 + 30·1 + 15·0.6875 + 20·(1.9/3) + 10·(1 − 0)
        let expected = 12.5 + 30.0 + 10.3125 + 20.0 * 1.9 / 3.0 + 10.0;
        approx(figures.composite, expected);
    }

    #[test]
    fn no_assignments_means_no_indicators() {
        let figures = scorecard(&[], &[], &[], WHISTLED, &Scoring::default());
        assert_eq!(figures.counts, Counts::default());
        assert_eq!(figures.indicators, Indicators::default());
        assert_eq!(figures.composite, None);
    }

    #[test]
    fn composite_ignores_zero_weights_and_absent_indicators() {
        let indicators = Indicators {
            on_site_rate: Some(0.0),
            satisfaction: Some(0.5),
            ..Indicators::default()
        };
        // on-site weighs 0 by default, so only satisfaction counts
        approx(composite(&indicators, &Weights::default()), 50.0);
        let only_on_site = Weights {
            on_site_rate: 1.0,
            satisfaction: 0.0,
            ..Weights::default()
        };
        approx(composite(&indicators, &only_on_site), 0.0);
        assert_eq!(composite(&Indicators::default(), &Weights::default()), None);
    }

    #[test]
    fn weights_are_validated() {
        assert!(Weights::default().validate().is_ok());
        let negative = Weights {
            cooperation: -1.0,
            ..Weights::default()
        };
        assert!(
            negative
                .validate()
                .expect_err("negative")
                .starts_with("cooperation")
        );
        let zero = Weights {
            report_rate: 0.0,
            on_site_rate: 0.0,
            resolution_rate: 0.0,
            on_time_rate: 0.0,
            cooperation: 0.0,
            satisfaction: 0.0,
            rework: 0.0,
        };
        assert!(zero.validate().is_err());
        let nan = Weights {
            rework: f64::NAN,
            ..Weights::default()
        };
        assert!(nan.validate().is_err());
    }

    #[test]
    fn dispatch_verdicts_win_over_timestamps() {
        let mut late_by_clock = done("a", 1.0, 3.0, 30.0);
        assert!(!late_by_clock.acknowledged_within_limit());
        late_by_clock.acknowledged_verdict = Some(ReportedVerdict {
            within_limit: true,
            version: 2,
        });
        assert!(late_by_clock.acknowledged_within_limit());
        // an extension moves the resolve deadline
        late_by_clock.resolve_by_ms = Some(WHISTLED + 48 * HOUR);
        assert!(late_by_clock.resolved_within_limit());
        let mut never = facts("n");
        never.acknowledged_verdict = Some(ReportedVerdict {
            within_limit: true,
            version: 2,
        });
        assert!(
            !never.acknowledged_within_limit(),
            "no acknowledgement, no credit"
        );
    }

    #[test]
    fn older_snapshots_do_not_replace_newer_ones() {
        let mut acknowledged = snapshot("a", "zw-sanitation");
        acknowledged.version = 2;
        acknowledged.state = AssignmentState::Acknowledged;
        acknowledged.acknowledged_at_ms = Some(WHISTLED + HOUR / 4);
        let mut resolved = acknowledged.clone();
        resolved.version = 4;
        resolved.state = AssignmentState::Resolved;
        resolved.resolved_at_ms = Some(WHISTLED + 5 * HOUR);
        resolved.extended = true;

        // in order
        let first = merge_snapshot(None, &acknowledged, Some((Milestone::Acknowledged, true)));
        let in_order = merge_snapshot(Some(&first), &resolved, Some((Milestone::Resolved, true)));
        // out of order
        let first = merge_snapshot(None, &resolved, Some((Milestone::Resolved, true)));
        let out_of_order = merge_snapshot(
            Some(&first),
            &acknowledged,
            Some((Milestone::Acknowledged, true)),
        );
        assert_eq!(in_order, out_of_order);
        assert_eq!(in_order.version, 4);
        assert_eq!(in_order.state, AssignmentState::Resolved);
        assert!(in_order.extended);
        assert_eq!(
            in_order.acknowledged_verdict,
            Some(ReportedVerdict {
                within_limit: true,
                version: 2
            })
        );

        // flags never go away, the first resolution is kept through rework
        let mut reworked = resolved.clone();
        reworked.version = 6;
        reworked.state = AssignmentState::Acknowledged;
        reworked.resolved_at_ms = None;
        reworked.extended = false;
        let after_rework = merge_snapshot(Some(&in_order), &reworked, None);
        assert!(after_rework.extended);
        assert_eq!(after_rework.first_resolved_at_ms, Some(WHISTLED + 5 * HOUR));
        assert!(!after_rework.is_resolved());
        assert!(after_rework.was_ever_resolved());
        // a stale verdict does not overwrite a newer one
        let mut resolved_again = reworked.clone();
        resolved_again.version = 8;
        resolved_again.state = AssignmentState::Resolved;
        resolved_again.resolved_at_ms = Some(WHISTLED + 40 * HOUR);
        let latest = merge_snapshot(
            Some(&after_rework),
            &resolved_again,
            Some((Milestone::Resolved, false)),
        );
        let replayed = merge_snapshot(Some(&latest), &resolved, Some((Milestone::Resolved, true)));
        assert_eq!(
            replayed.resolved_verdict,
            Some(ReportedVerdict {
                within_limit: false,
                version: 8
            })
        );
        assert_eq!(replayed.resolved_at_ms, Some(WHISTLED + 40 * HOUR));
    }

    enum Delivery {
        Snapshot(AssignmentSnapshot),
        Fact(CaseFact),
    }

    /// Applies deliveries the way the consumers and the store do (snapshots merged, facts kept
    /// once per event and assignment) and scores the result.
    fn deliver<'a>(deliveries: impl Iterator<Item = &'a Delivery>) -> ScorecardFigures {
        let mut assignments: BTreeMap<String, AssignmentFacts> = BTreeMap::new();
        let mut facts: BTreeMap<(String, String), CaseFact> = BTreeMap::new();
        for delivery in deliveries {
            match delivery {
                Delivery::Snapshot(snapshot) => {
                    let merged =
                        merge_snapshot(assignments.get(&snapshot.assignment_id), snapshot, None);
                    assignments.insert(snapshot.assignment_id.clone(), merged);
                }
                Delivery::Fact(fact) => {
                    facts
                        .entry((fact.event_id.clone(), fact.assignment_id.clone()))
                        .or_insert_with(|| fact.clone());
                }
            }
        }
        let facts: Vec<CaseFact> = facts.into_values().collect();
        let scored: Vec<AssignmentFacts> = assignments
            .into_values()
            .map(|mut assignment| {
                assignment.outcome = derive_outcome(&assignment, &facts);
                assignment
            })
            .collect();
        scorecard(&scored, &[], &[], WHISTLED + 30 * HOUR, &Scoring::default())
    }

    fn fact(event: &str, assignment: &str, kind: FactKind, flag: bool, hours: i64) -> CaseFact {
        CaseFact {
            event_id: event.into(),
            case_id: format!("case-{assignment}"),
            assignment_id: assignment.into(),
            kind,
            flag,
            occurred_at_ms: WHISTLED + hours * HOUR,
        }
    }

    #[test]
    fn verified_by_the_latest_verdict_naming_the_assignment() {
        let resolved = done("a", 0.1, 0.5, 5.0);
        assert!(!derive_outcome(&resolved, &[]).verified);
        let passed = fact("v1", "a", FactKind::Verdict, true, 6);
        let outcome = derive_outcome(&resolved, std::slice::from_ref(&passed));
        assert!(outcome.verified);
        assert_eq!(outcome.reopen_count, 0);
        assert_eq!(outcome.deciding_event_ids, vec!["v1"]);
        // a verdict on another assignment of another case says nothing about this one
        let other = fact("v2", "b", FactKind::Verdict, true, 6);
        assert!(!derive_outcome(&resolved, &[other]).verified);
        // failed then passed: verified, reworked once; listed in any order
        let failed = fact("v0", "a", FactKind::Verdict, false, 5);
        let outcome = derive_outcome(&resolved, &[passed.clone(), failed.clone()]);
        assert!(outcome.verified);
        assert_eq!(outcome.reopen_count, 1);
        assert_eq!(outcome.deciding_event_ids, vec!["v0", "v1"]);
        // a passed verdict does not verify work that is not resolved now
        let open = facts("a");
        assert!(!derive_outcome(&open, &[passed]).verified);
    }

    #[test]
    fn returns_are_decided_by_the_street() {
        let mut returned = facts("a");
        returned.state = AssignmentState::Returned;
        returned.returned_at_ms = Some(WHISTLED + HOUR / 4);
        // undecided: not upheld, stays in every denominator
        assert!(!derive_outcome(&returned, &[]).return_accepted);
        let upheld = fact("d1", "a", FactKind::ReturnDecided, true, 2);
        let outcome = derive_outcome(&returned, std::slice::from_ref(&upheld));
        assert!(outcome.return_accepted);
        assert_eq!(outcome.returns_rejected, 0);
        // rejected once (推诿), then returned again and upheld
        let rejected = fact("d0", "a", FactKind::ReturnDecided, false, 1);
        let outcome = derive_outcome(&returned, &[upheld, rejected.clone()]);
        assert!(outcome.return_accepted);
        assert_eq!(outcome.returns_rejected, 1);
        let outcome = derive_outcome(&returned, &[rejected]);
        assert!(!outcome.return_accepted);
        assert_eq!(outcome.returns_rejected, 1);
    }

    #[test]
    fn deferral_overdue_escalation_and_local_resolution() {
        let open = facts("a");
        let deferred = fact("x1", "a", FactKind::Deferred, false, 1);
        let resumed = fact("x2", "a", FactKind::Resumed, false, 3);
        assert!(derive_outcome(&open, std::slice::from_ref(&deferred)).deferred);
        assert!(!derive_outcome(&open, &[resumed.clone(), deferred.clone()]).deferred);
        let deferred_again = fact("x3", "a", FactKind::Deferred, false, 4);
        assert!(derive_outcome(&open, &[resumed, deferred_again, deferred]).deferred);
        let outcome = derive_outcome(
            &open,
            &[
                fact("o1", "a", FactKind::Overdue, false, 1),
                fact("o2", "a", FactKind::Overdue, false, 25),
                fact("e1", "a", FactKind::Escalated, false, 26),
                // a redelivered event is one fact
                fact("e1", "a", FactKind::Escalated, false, 26),
                fact("l1", "", FactKind::ResolvedLocally, false, 30),
            ],
        );
        assert_eq!(outcome.overdue, 2);
        assert_eq!(outcome.escalations, 1);
        // the whole-case fact is on case-, not on case-a: not this case
        assert!(!outcome.resolved_locally);
        let mut local = fact("l1", "", FactKind::ResolvedLocally, false, 30);
        local.case_id = "case-a".into();
        assert!(derive_outcome(&open, &[local]).resolved_locally);
    }

    #[test]
    fn report_rate_counts_a_timely_return_and_upheld_returns_leave_the_rest() {
        // whistled at 0, ack limit 0.5h
        // a: returned at 0.25h with a reason, upheld: responded in time; in 报到率 only
        let mut a = facts("a");
        a.state = AssignmentState::Returned;
        a.returned_at_ms = Some(WHISTLED + HOUR / 4);
        a.outcome.return_accepted = true;
        // b: returned late (1h), the return rejected (推诿); then never acknowledged, still open
        let mut b = facts("b");
        b.state = AssignmentState::Whistled;
        b.returned_at_ms = Some(WHISTLED + HOUR);
        b.outcome.returns_rejected = 1;
        // c: acknowledged in time, resolved, verified; d: acknowledged late, resolved, reworked
        let c = done("c", 0.25, 1.0, 5.0);
        let mut d = done("d", 1.0, 1.0, 5.0);
        d.outcome.reopen_count = 1;
        d.outcome.verified = false;
        let assignments = vec![a, b, c, d];
        let as_of = WHISTLED + 30 * HOUR;
        let figures = scorecard(&assignments, &[], &[], as_of, &Scoring::default());
        // 报到率 = (a returned in time + c) / 4
        approx(figures.indicators.report_rate, 2.0 / 4.0);
        // 到场率 = c d (on site at 1h ≤ 2h) / (b c d): a left with its upheld return
        approx(figures.indicators.on_site_rate, 2.0 / 3.0);
        // 解决率 = c / (4 − 1 upheld) = 1/3
        approx(figures.indicators.resolution_rate, 1.0 / 3.0);
        // 按期办结率 = c d (resolved at 5 h ≤ 24 h) / due (b open past 24 h, c, d; a upheld)
        approx(figures.indicators.on_time_rate, 2.0 / 3.0);
        // 返工率 = d / (c d)
        approx(figures.indicators.rework_rate, 1.0 / 2.0);
        assert_eq!(figures.counts.returns_accepted, 1);
        assert_eq!(figures.counts.returns_rejected, 1);
        // composite over 报到 25, 解决 30, 返工 10: (25·0.5 + 30/3 + 10·0.5) / 65 · 100
        approx(figures.composite, (12.5 + 10.0 + 5.0) / 65.0 * 100.0);
    }

    #[test]
    fn under_the_minimum_sample_a_department_is_not_rated() {
        let assignments = vec![done("a", 0.1, 0.5, 2.0), done("b", 0.1, 0.5, 2.0)];
        let scoring = Scoring {
            minimum_assignments: 3,
            ..Scoring::default()
        };
        let figures = scorecard(&assignments, &[], &[], WHISTLED, &scoring);
        assert!(!figures.rated);
        assert_eq!(figures.composite, None);
        // the indicators are still shown
        approx(figures.indicators.report_rate, 1.0);
        let scoring = Scoring {
            minimum_assignments: 2,
            ..Scoring::default()
        };
        let figures = scorecard(&assignments, &[], &[], WHISTLED, &scoring);
        assert!(figures.rated);
        approx(figures.composite, 100.0);
        // no assignments at all: never rated, never 0 and never 100
        let figures = scorecard(&[], &[], &[], WHISTLED, &Scoring::default());
        assert!(!figures.rated);
        assert_eq!(figures.composite, None);
        assert_ne!(Scoring::default().fingerprint(), scoring.fingerprint());
        assert_eq!(
            Scoring::default().fingerprint(),
            Scoring::default().fingerprint()
        );
    }

    #[test]
    fn satisfaction_counts_for_the_lead_only_by_default() {
        let lead = done("a", 0.1, 0.5, 2.0);
        let mut co = done("b", 0.1, 0.5, 2.0);
        co.role = AssignmentRole::Co;
        co.case_id = lead.case_id.clone();
        let callbacks = vec![
            SatisfactionCallback {
                callback_id: "cb1".into(),
                case_id: lead.case_id.clone(),
                result: CallbackResult::BasicallySatisfied,
            },
            SatisfactionCallback {
                callback_id: "cb2".into(),
                case_id: lead.case_id.clone(),
                result: CallbackResult::Dissatisfied,
            },
        ];
        let lead_card = scorecard(&[lead], &[], &callbacks, WHISTLED, &Scoring::default());
        // (0 + 0.9 × 1) / 2
        approx(lead_card.indicators.satisfaction, 0.45);
        let co_card = scorecard(
            std::slice::from_ref(&co),
            &[],
            &callbacks,
            WHISTLED,
            &Scoring::default(),
        );
        assert_eq!(co_card.indicators.satisfaction, None);
        assert_eq!(co_card.counts.satisfaction_callbacks, 0);
        let resolvers = Scoring {
            satisfaction_scope: SatisfactionScope::Resolvers,
            ..Scoring::default()
        };
        let co_card = scorecard(&[co], &[], &callbacks, WHISTLED, &resolvers);
        approx(co_card.indicators.satisfaction, 0.45);
    }

    #[test]
    fn ranking_puts_departments_without_whistles_last() {
        let candidate = |code: &str, composite: Option<f64>, whistled: u64| RankingCandidate {
            department_code: code.into(),
            composite,
            whistled,
        };
        let ranked = rank(vec![
            candidate("idle-b", None, 0),
            candidate("good", Some(90.0), 3),
            candidate("idle-a", None, 0),
            candidate("tie-b", Some(80.0), 1),
            candidate("tie-a", Some(80.0), 2),
            candidate("poor", Some(10.0), 5),
        ]);
        let summary: Vec<(u32, &str)> = ranked
            .iter()
            .map(|entry| (entry.rank, entry.department_code.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, "good"),
                (2, "tie-a"),
                (2, "tie-b"),
                (4, "poor"),
                (5, "idle-a"),
                (5, "idle-b"),
            ]
        );
    }

    fn any_state() -> impl Strategy<Value = AssignmentState> {
        prop_oneof![
            Just(AssignmentState::Whistled),
            Just(AssignmentState::Acknowledged),
            Just(AssignmentState::OnSite),
            Just(AssignmentState::Resolved),
            Just(AssignmentState::Returned),
        ]
    }

    prop_compose! {
        fn any_assignment()(
            id in 0u32..1000,
            state in any_state(),
            version in 0u64..10,
            deadlines in proptest::array::uniform3(proptest::option::of(-50i64..100)),
            reached in proptest::array::uniform4(proptest::option::of(-50i64..100)),
            verdicts in proptest::array::uniform3(proptest::option::of(any::<bool>())),
            requires_on_site in any::<bool>(),
            flags in proptest::array::uniform3(any::<bool>()),
            verified in any::<bool>(),
            reopen_count in 0u32..3,
            return_accepted in any::<bool>(),
            case in 0u32..5,
        ) -> AssignmentFacts {
            let at = |hours: Option<i64>| hours.map(|hours| WHISTLED + hours * HOUR);
            let verdict = |within: Option<bool>| within.map(|within_limit| ReportedVerdict { within_limit, version });
            AssignmentFacts {
                assignment_id: format!("a{id}"),
                case_id: format!("c{case}"),
                department_code: "zw-sanitation".into(),
                role: AssignmentRole::Lead,
                state,
                version,
                whistled_at_ms: WHISTLED,
                acknowledge_by_ms: at(deadlines[0]),
                on_site_by_ms: at(deadlines[1]),
                resolve_by_ms: at(deadlines[2]),
                requires_on_site,
                acknowledged_at_ms: at(reached[0]),
                acknowledged_verdict: verdict(verdicts[0]),
                on_site_at_ms: at(reached[1]),
                on_site_verdict: verdict(verdicts[1]),
                resolved_at_ms: at(reached[2]),
                first_resolved_at_ms: at(reached[3]),
                resolved_verdict: verdict(verdicts[2]),
                returned_at_ms: None,
                deferred: flags[0],
                extended: flags[1],
                escalated: flags[2],
                outcome: DerivedOutcome { verified, reopen_count, return_accepted, ..DerivedOutcome::default() },
            }
        }
    }

    fn any_weights() -> impl Strategy<Value = Weights> {
        proptest::array::uniform7(0.0f64..100.0).prop_map(|weights| Weights {
            report_rate: weights[0],
            on_site_rate: weights[1],
            resolution_rate: weights[2],
            on_time_rate: weights[3],
            cooperation: weights[4],
            satisfaction: weights[5],
            rework: weights[6],
        })
    }

    proptest! {
        #[test]
        fn indicators_and_composite_stay_within_bounds(
            assignments in proptest::collection::vec(any_assignment(), 0..30),
            scores in proptest::collection::vec((0u32..1000, 1u8..=5), 0..20),
            answers in proptest::collection::vec((0u32..5, 0u8..3), 0..10),
            as_of_hours in -60i64..200,
            weights in any_weights(),
        ) {
            let ratings: Vec<CooperationRating> = scores
                .into_iter()
                .map(|(id, score)| CooperationRating { assignment_id: format!("a{id}"), score })
                .collect();
            let callbacks: Vec<SatisfactionCallback> = answers
                .into_iter()
                .enumerate()
                .map(|(index, (case, answer))| SatisfactionCallback {
                    callback_id: format!("cb{index}"),
                    case_id: format!("c{case}"),
                    result: [CallbackResult::Satisfied, CallbackResult::BasicallySatisfied, CallbackResult::Dissatisfied][answer as usize],
                })
                .collect();
            let as_of = WHISTLED + as_of_hours * HOUR;
            let scoring = Scoring { weights, ..Scoring::default() };
            let figures = scorecard(&assignments, &ratings, &callbacks, as_of, &scoring);
            let indicators = figures.indicators;
            for rate in [
                indicators.report_rate,
                indicators.on_site_rate,
                indicators.resolution_rate,
                indicators.on_time_rate,
                indicators.rework_rate,
                indicators.satisfaction,
            ]
            .into_iter()
            .flatten()
            {
                prop_assert!((0.0..=1.0).contains(&rate), "rate {rate}");
            }
            if let Some(cooperation) = indicators.cooperation {
                prop_assert!((0.0..=100.0).contains(&cooperation));
            }
            if let Some(composite) = figures.composite {
                prop_assert!((0.0..=100.0).contains(&composite), "composite {composite}");
            }
            prop_assert_eq!(figures.counts.whistled, assignments.len() as u64);
            prop_assert_eq!(indicators.report_rate.is_some(), !assignments.is_empty());
            let counts = figures.counts;
            prop_assert!(counts.acknowledged_within_limit <= counts.whistled);
            prop_assert!(counts.on_site_within_limit <= counts.required_on_site);
            prop_assert!(counts.resolved_within_limit <= counts.due_in_period);
            prop_assert!(counts.reopened <= counts.resolved);
            for indicator in Indicator::ALL {
                let explanation = explain(indicator, &assignments, as_of);
                for id in &explanation.numerator_assignment_ids {
                    prop_assert!(explanation.denominator_assignment_ids.contains(id));
                }
            }
        }

        #[test]
        fn period_parsing_never_panics_and_round_trips(input in "[0-9Q-]{0,10}") {
            if let Ok(period) = Period::parse(&input) {
                prop_assert_eq!(period.label(), input);
                let bounds = period.bounds(UtcOffset::from_hours(8).expect("offset"));
                prop_assert!(bounds.start_ms < bounds.end_ms);
            }
        }

        #[test]
        fn consecutive_months_tile_the_year(year in 1970i32..2500, offset in -12i32..=14) {
            let offset = UtcOffset::from_hours(offset).expect("offset");
            let whole = Period::Year { year }.bounds(offset);
            let mut start = whole.start_ms;
            for month in 1..=12 {
                let bounds = Period::Month { year, month }.bounds(offset);
                prop_assert_eq!(bounds.start_ms, start);
                start = bounds.end_ms;
            }
            prop_assert_eq!(start, whole.end_ms);
        }

        #[test]
        fn merging_snapshots_in_any_order_agrees(versions in proptest::collection::vec(1u64..20, 1..6)) {
            let snapshots: Vec<AssignmentSnapshot> = versions
                .iter()
                .map(|version| {
                    let mut snapshot = snapshot("a", "zw-sanitation");
                    snapshot.version = *version;
                    snapshot.resolved_at_ms = Some(WHISTLED + *version as i64 * HOUR);
                    snapshot.deferred = version % 3 == 0;
                    snapshot
                })
                .collect();
            let fold = |order: &mut dyn Iterator<Item = &AssignmentSnapshot>| {
                let mut facts: Option<AssignmentFacts> = None;
                for snapshot in order {
                    facts = Some(merge_snapshot(facts.as_ref(), snapshot, None));
                }
                facts
            };
            let forward = fold(&mut snapshots.iter()).expect("some");
            let backward = fold(&mut snapshots.iter().rev()).expect("some");
            let newest = versions.iter().max().copied().unwrap_or_default();
            prop_assert_eq!(forward.version, newest);
            prop_assert_eq!(backward.version, newest);
            prop_assert_eq!(forward.first_resolved_at_ms, backward.first_resolved_at_ms);
            prop_assert_eq!(forward.deferred, backward.deferred);
            prop_assert_eq!(forward.resolved_at_ms, Some(WHISTLED + newest as i64 * HOUR));
            prop_assert_eq!(backward.resolved_at_ms, Some(WHISTLED + newest as i64 * HOUR));
        }

        /// A generated history of two assignments on one case: snapshots (whistle events) and
        /// published facts (case events). Delivered in any order, with any event delivered twice,
        /// it gives the same scorecard as delivered in order once.
        #[test]
        fn any_delivery_order_and_redelivery_gives_the_same_scorecard(
            kinds in proptest::collection::vec((0usize..7, 0usize..2, any::<bool>(), 0i64..60), 0..12),
            states in proptest::collection::vec((0usize..2, 1u64..6), 1..8),
            order in Just((0usize..20).collect::<Vec<_>>()).prop_shuffle(),
            repeats in proptest::collection::vec(0usize..20, 0..6),
        ) {
            let ids = ["a", "b"];
            let mut events: Vec<Delivery> = Vec::new();
            // one version is one snapshot: a is worked and resolved (and reworked); b is returned,
            // the return rejected, then acknowledged
            use AssignmentState::{Acknowledged, OnSite, Resolved, Returned, Whistled};
            let lives = [
                [Whistled, Acknowledged, OnSite, Resolved, Resolved],
                [Whistled, Returned, Whistled, Acknowledged, Returned],
            ];
            for (which, version) in &states {
                let mut snapshot = snapshot(ids[*which], "zw-sanitation");
                snapshot.case_id = "case-x".into();
                snapshot.version = *version;
                snapshot.state = lives[*which][(*version - 1) as usize];
                if snapshot.state == AssignmentState::Resolved {
                    snapshot.resolved_at_ms = Some(WHISTLED + *version as i64 * HOUR);
                }
                if snapshot.state == AssignmentState::Returned {
                    snapshot.returned_at_ms = Some(WHISTLED + HOUR / 4);
                }
                if *version > 1 {
                    snapshot.acknowledged_at_ms = Some(WHISTLED + *version as i64 * HOUR / 8);
                }
                events.push(Delivery::Snapshot(snapshot));
            }
            for (index, (kind, which, flag, hours)) in kinds.iter().enumerate() {
                let mut fact = fact(&format!("e{index}"), ids[*which], FactKind::ALL[*kind], *flag, *hours);
                fact.case_id = "case-x".into();
                if fact.kind == FactKind::ResolvedLocally {
                    fact.assignment_id.clear();
                }
                events.push(Delivery::Fact(fact));
            }
            let in_order = deliver(events.iter());
            let mut shuffled: Vec<&Delivery> = order
                .iter()
                .filter_map(|index| events.get(*index))
                .collect();
            shuffled.extend(repeats.iter().filter_map(|index| events.get(*index)));
            let reordered = deliver(shuffled.into_iter());
            prop_assert_eq!(in_order, reordered);
        }
    }
}
