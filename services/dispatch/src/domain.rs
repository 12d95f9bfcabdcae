//! Dispatch's rules: routing through the responsibility catalogue, time limits, the case and
//! assignment state machines. Pure: no I/O, no gRPC, no database.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// How urgent a case is; chooses the default limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Severity {
    Routine,
    Urgent,
    Emergency,
    Complex,
}

/// The three time limits of an assignment, counted from the whistle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub acknowledge_within: Duration,
    pub on_site_within: Duration,
    pub resolve_within: Duration,
}

impl Severity {
    /// DOMAIN.md's defaults (Pinggu's 30-minute arrival rule, Beijing 12345's feedback limits).
    pub fn default_limits(self) -> Limits {
        let (acknowledge, on_site, resolve) = match self {
            Severity::Emergency => (
                Duration::minutes(15),
                Duration::minutes(30),
                Duration::hours(2),
            ),
            Severity::Urgent => (
                Duration::minutes(30),
                Duration::hours(2),
                Duration::hours(24),
            ),
            Severity::Routine => (Duration::hours(2), Duration::hours(24), Duration::days(7)),
            Severity::Complex => (Duration::hours(2), Duration::hours(24), Duration::days(15)),
        };
        Limits {
            acknowledge_within: acknowledge,
            on_site_within: on_site,
            resolve_within: resolve,
        }
    }
}

/// Limits a route or an operator sets; unset ones fall back to the severity's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitOverrides {
    pub acknowledge_within: Option<Duration>,
    pub on_site_within: Option<Duration>,
    pub resolve_within: Option<Duration>,
}

impl LimitOverrides {
    /// These overrides over `base`.
    pub fn apply(&self, base: Limits) -> Limits {
        Limits {
            acknowledge_within: self.acknowledge_within.unwrap_or(base.acknowledge_within),
            on_site_within: self.on_site_within.unwrap_or(base.on_site_within),
            resolve_within: self.resolve_within.unwrap_or(base.resolve_within),
        }
    }

    /// `self` where set, else `fallback`.
    pub fn or(&self, fallback: &LimitOverrides) -> LimitOverrides {
        LimitOverrides {
            acknowledge_within: self.acknowledge_within.or(fallback.acknowledge_within),
            on_site_within: self.on_site_within.or(fallback.on_site_within),
            resolve_within: self.resolve_within.or(fallback.resolve_within),
        }
    }

    /// Every set limit must be positive and at most a year.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (name, value) in [
            ("acknowledge_within", self.acknowledge_within),
            ("on_site_within", self.on_site_within),
            ("resolve_within", self.resolve_within),
        ] {
            if let Some(value) = value
                && (value <= Duration::zero() || value > Duration::days(366))
            {
                return Err((name, "must be positive and at most 366 days".into()));
            }
        }
        Ok(())
    }
}

/// One entry of the responsibility catalogue (责任清单): category x area -> departments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub route_id: String,
    pub category_code: String,
    /// A prefix of grid codes: a city, district, street, community or grid code.
    pub area_code: String,
    pub lead_department_code: String,
    pub co_department_codes: Vec<String>,
    pub auto_whistle: bool,
    pub requires_on_site: bool,
    pub limits: LimitOverrides,
}

/// The route for a case: same category, the longest area code that prefixes the grid code.
/// A city code like `420300` covers its districts through the first four digits.
pub fn select_route<'a>(
    routes: &'a [Route],
    category_code: &str,
    grid_code: &str,
) -> Option<&'a Route> {
    routes
        .iter()
        .filter(|route| {
            route.category_code == category_code && area_covers(&route.area_code, grid_code)
        })
        .max_by_key(|route| {
            (
                route.area_code.trim_end_matches("00").len(),
                route.area_code.len(),
            )
        })
}

fn area_covers(area_code: &str, grid_code: &str) -> bool {
    if grid_code.starts_with(area_code) {
        return true;
    }
    // a city code (420300) covers every district of the city (4203xx)
    area_code.len() == 6 && area_code.ends_with("00") && grid_code.starts_with(&area_code[..4])
}

/// Checks a department code: it becomes a NATS subject token.
pub fn check_department_code(code: &str) -> Result<(), String> {
    if code.is_empty() {
        return Err("required".into());
    }
    let valid = code.len() <= 64
        && code.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-' || byte == b'_'
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "must be lowercase letters, digits, - or _ (at most 64), got {code:?}"
        ))
    }
}

/// Status of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CaseStatus {
    Reported,
    Accepted,
    Rejected,
    Merged,
    Whistled,
    AwaitingVerification,
    Closed,
    Reopened,
}

impl CaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CaseStatus::Reported => "REPORTED",
            CaseStatus::Accepted => "ACCEPTED",
            CaseStatus::Rejected => "REJECTED",
            CaseStatus::Merged => "MERGED",
            CaseStatus::Whistled => "WHISTLED",
            CaseStatus::AwaitingVerification => "AWAITING_VERIFICATION",
            CaseStatus::Closed => "CLOSED",
            CaseStatus::Reopened => "REOPENED",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [
            CaseStatus::Reported,
            CaseStatus::Accepted,
            CaseStatus::Rejected,
            CaseStatus::Merged,
            CaseStatus::Whistled,
            CaseStatus::AwaitingVerification,
            CaseStatus::Closed,
            CaseStatus::Reopened,
        ]
        .into_iter()
        .find(|status| status.as_str() == value)
    }
}

/// Status of one department's assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AssignmentStatus {
    Whistled,
    Acknowledged,
    OnSite,
    Resolved,
    Returned,
}

impl AssignmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AssignmentStatus::Whistled => "WHISTLED",
            AssignmentStatus::Acknowledged => "ACKNOWLEDGED",
            AssignmentStatus::OnSite => "ON_SITE",
            AssignmentStatus::Resolved => "RESOLVED",
            AssignmentStatus::Returned => "RETURNED",
        }
    }

    /// Still owes work: not resolved and not returned.
    pub fn is_open(self) -> bool {
        !matches!(
            self,
            AssignmentStatus::Resolved | AssignmentStatus::Returned
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Lead,
    Co,
}

/// Flags raised on the way; they stay once raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Flag {
    AckOverdue,
    ArrivalOverdue,
    ResolveOverdue,
    Escalated,
    Extended,
    Deferred,
}

/// An action a state does not allow; maps to FAILED_PRECONDITION with the current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionError {
    pub action: &'static str,
    pub current: &'static str,
    pub hint: &'static str,
}

impl fmt::Display for TransitionError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "cannot {}: current status is {}",
            self.action, self.current
        )?;
        if !self.hint.is_empty() {
            write!(formatter, " ({})", self.hint)?;
        }
        Ok(())
    }
}

/// An attachment reference kept with an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub uri: String,
    pub sha256: String,
    pub media_type: String,
    pub size_bytes: u64,
}

/// One department's work on a case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub assignment_id: String,
    pub case_id: String,
    pub department_code: String,
    pub role: Role,
    pub status: AssignmentStatus,
    pub flags: BTreeSet<Flag>,
    pub whistled_at: DateTime<Utc>,
    pub acknowledge_by: DateTime<Utc>,
    pub on_site_by: DateTime<Utc>,
    pub resolve_by: DateTime<Utc>,
    pub requires_on_site: bool,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub responsible_person: String,
    pub contact_phone: String,
    pub promised_at: Option<DateTime<Utc>>,
    pub on_site_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolution: String,
    pub evidence: Vec<Evidence>,
    pub returned_at: Option<DateTime<Utc>>,
    pub return_reason: String,
    pub suggested_department_code: String,
    pub version: u64,
}

impl Assignment {
    /// A fresh assignment whistled at `at`, with its clocks started.
    pub fn whistle(
        assignment_id: String,
        case_id: String,
        department_code: String,
        role: Role,
        at: DateTime<Utc>,
        limits: Limits,
        requires_on_site: bool,
    ) -> Self {
        Self {
            assignment_id,
            case_id,
            department_code,
            role,
            status: AssignmentStatus::Whistled,
            flags: BTreeSet::new(),
            whistled_at: at,
            acknowledge_by: at + limits.acknowledge_within,
            on_site_by: at + limits.on_site_within,
            resolve_by: at + limits.resolve_within,
            requires_on_site,
            acknowledged_at: None,
            responsible_person: String::new(),
            contact_phone: String::new(),
            promised_at: None,
            on_site_at: None,
            resolved_at: None,
            resolution: String::new(),
            evidence: Vec::new(),
            returned_at: None,
            return_reason: String::new(),
            suggested_department_code: String::new(),
            version: 1,
        }
    }

    fn refuse(&self, action: &'static str, hint: &'static str) -> TransitionError {
        TransitionError {
            action,
            current: self.status.as_str(),
            hint,
        }
    }

    /// 报到. Returns whether it came within the acknowledge limit.
    pub fn acknowledge(
        &mut self,
        at: DateTime<Utc>,
        responsible_person: String,
        contact_phone: String,
        promised_at: Option<DateTime<Utc>>,
    ) -> Result<bool, TransitionError> {
        if self.status != AssignmentStatus::Whistled {
            return Err(self.refuse("acknowledge", "an assignment is acknowledged once"));
        }
        self.status = AssignmentStatus::Acknowledged;
        self.acknowledged_at = Some(at);
        self.responsible_person = responsible_person;
        self.contact_phone = contact_phone;
        self.promised_at = promised_at;
        self.version += 1;
        Ok(at <= self.acknowledge_by)
    }

    /// 到场. `distance_meters` from the case's place must be within `radius_meters`.
    /// Returns whether it came within the on-site limit.
    pub fn check_in(
        &mut self,
        at: DateTime<Utc>,
        distance_meters: f64,
        radius_meters: f64,
    ) -> Result<bool, CheckInError> {
        if self.status != AssignmentStatus::Acknowledged {
            return Err(CheckInError::Transition(
                self.refuse("check in", "acknowledge first"),
            ));
        }
        if distance_meters > radius_meters {
            return Err(CheckInError::TooFar {
                distance_meters,
                radius_meters,
            });
        }
        self.status = AssignmentStatus::OnSite;
        self.on_site_at = Some(at);
        self.version += 1;
        Ok(at <= self.on_site_by)
    }

    /// Progress feedback with its evidence; allowed while the assignment is being worked on. The
    /// assignment keeps at most `max_evidence` items over all its actions, so its stored state and
    /// the events that carry it stay bounded.
    pub fn progress(
        &mut self,
        evidence: Vec<Evidence>,
        max_evidence: usize,
    ) -> Result<(), ProgressError> {
        if !matches!(
            self.status,
            AssignmentStatus::Acknowledged | AssignmentStatus::OnSite
        ) {
            return Err(ProgressError::Transition(
                self.refuse("report progress", "acknowledge first"),
            ));
        }
        if self.evidence.len().saturating_add(evidence.len()) > max_evidence {
            return Err(ProgressError::TooMuchEvidence {
                kept: self.evidence.len(),
                adding: evidence.len(),
                max_evidence,
            });
        }
        self.evidence.extend(evidence);
        self.version += 1;
        Ok(())
    }

    /// 办结. Needs an on-site check-in when the route requires one. Returns whether it came
    /// within the (possibly extended) resolve limit.
    pub fn resolve(
        &mut self,
        at: DateTime<Utc>,
        resolution: String,
        evidence: Vec<Evidence>,
    ) -> Result<bool, TransitionError> {
        match self.status {
            AssignmentStatus::OnSite => {}
            AssignmentStatus::Acknowledged if !self.requires_on_site => {}
            AssignmentStatus::Acknowledged => {
                return Err(self.refuse(
                    "resolve",
                    "this assignment requires an on-site check-in first",
                ));
            }
            _ => return Err(self.refuse("resolve", "acknowledge first")),
        }
        self.status = AssignmentStatus::Resolved;
        self.resolved_at = Some(at);
        self.resolution = resolution;
        self.evidence = evidence;
        self.version += 1;
        Ok(at <= self.resolve_by)
    }

    /// 退回: the department says it is not responsible.
    pub fn return_to_street(
        &mut self,
        at: DateTime<Utc>,
        reason: String,
        suggested_department_code: String,
    ) -> Result<(), TransitionError> {
        if !matches!(
            self.status,
            AssignmentStatus::Whistled | AssignmentStatus::Acknowledged
        ) {
            return Err(self.refuse("return", "only before arriving on site"));
        }
        self.status = AssignmentStatus::Returned;
        self.returned_at = Some(at);
        self.return_reason = reason;
        self.suggested_department_code = suggested_department_code;
        self.version += 1;
        Ok(())
    }

    /// Verification failed (返工): a resolved assignment goes back to work with a fresh resolve clock.
    pub fn reopen(&mut self, at: DateTime<Utc>, resolve_within: Duration) -> bool {
        if self.status != AssignmentStatus::Resolved {
            return false;
        }
        self.status = if self.on_site_at.is_some() {
            AssignmentStatus::OnSite
        } else {
            AssignmentStatus::Acknowledged
        };
        self.resolved_at = None;
        self.resolve_by = at + resolve_within;
        self.version += 1;
        true
    }
}

/// Why a check-in was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckInError {
    Transition(TransitionError),
    TooFar {
        distance_meters: f64,
        radius_meters: f64,
    },
}

/// Why progress was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressError {
    Transition(TransitionError),
    /// The evidence would grow past what one assignment keeps.
    TooMuchEvidence {
        kept: usize,
        adding: usize,
        max_evidence: usize,
    },
}

impl fmt::Display for ProgressError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProgressError::Transition(error) => error.fmt(formatter),
            ProgressError::TooMuchEvidence {
                kept,
                adding,
                max_evidence,
            } => write!(
                formatter,
                "cannot add {adding} evidence items: the assignment keeps {kept} of at most {max_evidence}"
            ),
        }
    }
}

/// The case status once its assignments changed: every assignment resolved or returned, with at
/// least one resolved, means the street must verify.
pub fn case_status_after(current: CaseStatus, assignments: &[Assignment]) -> CaseStatus {
    if !matches!(current, CaseStatus::Whistled | CaseStatus::Reopened) {
        return current;
    }
    let any_open = assignments
        .iter()
        .any(|assignment| assignment.status.is_open());
    let any_resolved = assignments
        .iter()
        .any(|assignment| assignment.status == AssignmentStatus::Resolved);
    if !any_open && any_resolved {
        CaseStatus::AwaitingVerification
    } else {
        current
    }
}

/// Whether the street may whistle a case in this status (first whistle, or re-whistle after a return).
pub fn may_whistle(status: CaseStatus) -> bool {
    matches!(
        status,
        CaseStatus::Reported | CaseStatus::Accepted | CaseStatus::Whistled | CaseStatus::Reopened
    )
}

/// Geodesic distance on the WGS-84 ellipsoid, in meters.
pub fn distance_meters(lat1: f64, lng1: f64, lat2: f64, lng2: f64) -> f64 {
    use geographiclib_rs::{Geodesic, InverseGeodesic};
    let distance: f64 = Geodesic::wgs84().inverse(lat1, lng1, lat2, lng2);
    distance
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_763_000_000, 0).expect("time") + Duration::minutes(minutes)
    }

    fn route(id: &str, category: &str, area: &str) -> Route {
        Route {
            route_id: id.into(),
            category_code: category.into(),
            area_code: area.into(),
            lead_department_code: "lead".into(),
            co_department_codes: vec![],
            auto_whistle: true,
            requires_on_site: true,
            limits: LimitOverrides::default(),
        }
    }

    fn fresh(requires_on_site: bool) -> Assignment {
        Assignment::whistle(
            "a1".into(),
            "c1".into(),
            "zw-sanitation".into(),
            Role::Lead,
            at(0),
            Severity::Urgent.default_limits(),
            requires_on_site,
        )
    }

    #[test]
    fn the_most_specific_route_wins() {
        let routes = vec![
            route("city", "E-01-03", "420300"),
            route("district", "E-01-03", "420303"),
            route("community", "E-01-03", "420303003001"),
            route("other-category", "E-05-07", "420303003001"),
        ];
        let chosen = |grid: &str| {
            select_route(&routes, "E-01-03", grid).map(|route| route.route_id.as_str())
        };
        assert_eq!(chosen("420303003001001"), Some("community"));
        assert_eq!(chosen("420303003002001"), Some("district"));
        assert_eq!(chosen("420302001001001"), Some("city"));
        assert_eq!(chosen("110101001001001"), None);
        assert_eq!(select_route(&routes, "C-01-01", "420303003001001"), None);
    }

    #[test]
    fn limits_follow_severity_and_overrides() {
        let emergency = Severity::Emergency.default_limits();
        assert_eq!(emergency.acknowledge_within, Duration::minutes(15));
        assert_eq!(emergency.on_site_within, Duration::minutes(30));
        assert_eq!(
            Severity::Complex.default_limits().resolve_within,
            Duration::days(15)
        );
        let overrides = LimitOverrides {
            resolve_within: Some(Duration::hours(4)),
            ..Default::default()
        };
        let limits = overrides.apply(emergency);
        assert_eq!(limits.resolve_within, Duration::hours(4));
        assert_eq!(limits.acknowledge_within, Duration::minutes(15));
        assert!(
            LimitOverrides {
                acknowledge_within: Some(Duration::zero()),
                ..Default::default()
            }
            .check()
            .is_err()
        );
    }

    fn evidence() -> Evidence {
        Evidence {
            uri: "https://files.example/1.jpg".into(),
            sha256: String::new(),
            media_type: String::new(),
            size_bytes: 0,
        }
    }

    #[test]
    fn evidence_is_bounded_per_assignment() {
        let mut assignment = fresh(true);
        assignment
            .acknowledge(at(1), "x".into(), String::new(), None)
            .expect("ack");
        assignment
            .progress(vec![evidence(); 3], 5)
            .expect("three of five");
        let refused = assignment
            .progress(vec![evidence(); 3], 5)
            .expect_err("six of five");
        assert_eq!(
            refused.to_string(),
            "cannot add 3 evidence items: the assignment keeps 3 of at most 5"
        );
        assert_eq!(assignment.evidence.len(), 3);
        assert_eq!(assignment.version, 3);
        assignment
            .progress(vec![evidence(); 2], 5)
            .expect("five of five");
    }

    #[test]
    fn the_assignment_walks_whistle_ack_on_site_resolve() {
        let mut assignment = fresh(true);
        assert_eq!(assignment.acknowledge_by, at(30));
        assert_eq!(
            assignment.acknowledge(at(10), "王主任".into(), String::new(), None),
            Ok(true)
        );
        let refused = assignment
            .acknowledge(at(11), "again".into(), String::new(), None)
            .expect_err("twice");
        assert_eq!(refused.current, "ACKNOWLEDGED");
        let early = assignment
            .resolve(at(12), "done".into(), vec![])
            .expect_err("needs check-in");
        assert!(early.to_string().contains("on-site"), "{early}");
        assert_eq!(
            assignment.check_in(at(150), 20.0, 500.0),
            Ok(false),
            "2 h limit passed"
        );
        assert_eq!(
            assignment.resolve(at(200), "清运完毕".into(), vec![]),
            Ok(true)
        );
        assert_eq!(assignment.status, AssignmentStatus::Resolved);
        assert_eq!(assignment.version, 4);
    }

    #[test]
    fn check_in_far_away_is_refused() {
        let mut assignment = fresh(true);
        assignment
            .acknowledge(at(1), "x".into(), String::new(), None)
            .expect("ack");
        assert!(matches!(
            assignment.check_in(at(2), 1200.0, 500.0),
            Err(CheckInError::TooFar { .. })
        ));
        assert_eq!(assignment.status, AssignmentStatus::Acknowledged);
    }

    #[test]
    fn resolve_without_on_site_when_not_required() {
        let mut assignment = fresh(false);
        assignment
            .acknowledge(at(1), "x".into(), String::new(), None)
            .expect("ack");
        assert_eq!(assignment.resolve(at(2), "ok".into(), vec![]), Ok(true));
    }

    #[test]
    fn late_acknowledgement_is_not_within_limit() {
        let mut assignment = fresh(true);
        assert_eq!(
            assignment.acknowledge(at(31), "x".into(), String::new(), None),
            Ok(false)
        );
    }

    #[test]
    fn returns_and_case_status() {
        let mut lead = fresh(false);
        let mut co = fresh(false);
        co.assignment_id = "a2".into();
        co.role = Role::Co;
        assert_eq!(
            case_status_after(CaseStatus::Whistled, &[lead.clone(), co.clone()]),
            CaseStatus::Whistled
        );
        co.return_to_street(at(3), "not ours".into(), "zw-housing".into())
            .expect("return");
        assert_eq!(
            case_status_after(CaseStatus::Whistled, &[lead.clone(), co.clone()]),
            CaseStatus::Whistled
        );
        lead.acknowledge(at(4), "x".into(), String::new(), None)
            .expect("ack");
        lead.resolve(at(5), "ok".into(), vec![]).expect("resolve");
        assert_eq!(
            case_status_after(CaseStatus::Whistled, &[lead.clone(), co.clone()]),
            CaseStatus::AwaitingVerification
        );
        assert_eq!(
            case_status_after(CaseStatus::Closed, &[lead.clone(), co]),
            CaseStatus::Closed
        );
        assert!(lead.reopen(at(6), Duration::hours(24)));
        assert_eq!(lead.status, AssignmentStatus::Acknowledged);
        assert_eq!(lead.resolve_by, at(6) + Duration::hours(24));
    }

    #[test]
    fn geodesic_distance_is_sane() {
        // one degree of latitude near Shiyan is about 110.9 km
        let distance = distance_meters(32.0, 110.8, 33.0, 110.8);
        assert!((distance - 110_900.0).abs() < 300.0, "{distance}");
        assert!(distance_meters(32.6369, 110.7986, 32.6369, 110.7986) < 0.001);
    }

    #[test]
    fn department_codes_are_subject_tokens() {
        assert!(check_department_code("zw-sanitation").is_ok());
        assert!(check_department_code("").is_err());
        assert!(check_department_code("zw.sanitation").is_err());
        assert!(check_department_code("ZW").is_err());
    }

    #[derive(Debug, Clone)]
    enum Action {
        Acknowledge(i64),
        CheckIn(i64, f64),
        Progress(usize),
        Resolve(i64),
        Return(i64),
        Reopen(i64),
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            (0i64..10_000).prop_map(Action::Acknowledge),
            (0i64..10_000, 0.0f64..2000.0).prop_map(|(t, d)| Action::CheckIn(t, d)),
            (0usize..4).prop_map(Action::Progress),
            (0i64..10_000).prop_map(Action::Resolve),
            (0i64..10_000).prop_map(Action::Return),
            (0i64..10_000).prop_map(Action::Reopen),
        ]
    }

    proptest! {
        /// Whatever a department does, the assignment stays consistent: the version counts the
        /// accepted changes, timestamps match the status, a returned assignment never changes again,
        /// the evidence it keeps stays within its bound.
        #[test]
        fn the_state_machine_stays_consistent(requires_on_site: bool, actions in proptest::collection::vec(action(), 0..24)) {
            let mut assignment = fresh(requires_on_site);
            let mut changes = 1u64;
            for action in actions {
                let before = assignment.clone();
                let changed = match action {
                    Action::Acknowledge(t) => assignment.acknowledge(at(t), "p".into(), String::new(), None).is_ok(),
                    Action::CheckIn(t, d) => assignment.check_in(at(t), d, 500.0).is_ok(),
                    Action::Progress(items) => assignment.progress(vec![evidence(); items], 5).is_ok(),
                    Action::Resolve(t) => assignment.resolve(at(t), "r".into(), vec![]).is_ok(),
                    Action::Return(t) => assignment.return_to_street(at(t), "x".into(), String::new()).is_ok(),
                    Action::Reopen(t) => assignment.reopen(at(t), Duration::hours(1)),
                };
                if changed { changes += 1; } else { prop_assert_eq!(&assignment, &before); }
                if before.status == AssignmentStatus::Returned { prop_assert_eq!(&assignment, &before); }
                prop_assert_eq!(assignment.version, changes);
                prop_assert!(assignment.evidence.len() <= 5, "evidence stays bounded");
                match assignment.status {
                    AssignmentStatus::Whistled => prop_assert!(assignment.acknowledged_at.is_none()),
                    AssignmentStatus::Returned => {}
                    _ => prop_assert!(assignment.acknowledged_at.is_some()),
                }
                prop_assert_eq!(assignment.resolved_at.is_some(), assignment.status == AssignmentStatus::Resolved);
                if assignment.status == AssignmentStatus::OnSite { prop_assert!(assignment.on_site_at.is_some()); }
                if assignment.status == AssignmentStatus::Resolved && requires_on_site { prop_assert!(assignment.on_site_at.is_some()); }
            }
        }
    }
}
