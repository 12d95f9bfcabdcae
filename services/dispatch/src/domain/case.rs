//! The case aggregate: a case and its assignments. Commands come in, events go out; a refused
//! command changes nothing. Storage loads and saves it, the gRPC layer and the clock scanner only
//! turn requests and ticks into commands.
//!
//! ```text
//! REPORTED ─► ACCEPTED (立案) ─► WHISTLED (吹哨) ─► AWAITING_VERIFICATION (核查) ─► CLOSED
//!    │           ▲    │              │   ▲                    │
//!    │           │    └─ 自办 ───────┼───┼──────────────►─────┤
//!    ▼           └── every assignment returned                └─ failed ─► REOPENED (返工) ─► …
//! REJECTED
//! ```
//! Deferral (缓办) freezes a case in ACCEPTED, WHISTLED or REOPENED: its clocks stop, and nothing
//! but `Resume` changes it.

use super::assignment::{
    Assignment, AssignmentStatus, CheckInError, Evidence, ProgressError, Role, TransitionError,
    WhistleTarget,
};
use super::clock::{ClockKind, ClockStep};
use super::deadline::DeadlinePolicy;
use super::limits::{Limits, Severity};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

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

/// A deferral (缓办) in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deferral {
    pub since: DateTime<Utc>,
    pub by: String,
    pub reason: String,
    pub until: Option<DateTime<Utc>>,
}

/// A case and its assignments.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub case_id: String,
    pub status: CaseStatus,
    /// Increases by one with every event.
    pub version: u64,
    pub severity: Severity,
    /// The case's place (WGS-84), for on-site check-ins.
    pub lat: f64,
    pub lng: f64,
    pub reject_reason: String,
    pub deferral: Option<Deferral>,
    /// The community solved it itself (自办) and it awaits or passed verification.
    pub resolved_locally: bool,
    pub assignments: Vec<Assignment>,
    /// Reports merged into the case after its first one (intake's `case.merged`), oldest first.
    pub merged_reports: Vec<CaseReport>,
    /// A recurring problem (几经反复): the earlier closed cases, oldest first; empty when not.
    pub earlier_case_ids: Vec<String>,
    pub recurrent: bool,
    /// Photos attached after the report (intake's `case.evidence_attached`), oldest first.
    pub evidence: Vec<Evidence>,
}

/// A report that joined the case (intake's `case.merged`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseReport {
    pub report_id: String,
    pub reporter_id: String,
    /// `whistle.types.v1.Channel` as on the wire.
    pub channel: i32,
    pub description: String,
    /// WGS-84.
    pub lat: f64,
    pub lng: f64,
    pub address: String,
    pub observed_at: Option<DateTime<Utc>>,
    pub attachments: Vec<Evidence>,
    /// `whistle.types.v1.Severity` as on the wire.
    pub severity: i32,
}

/// What a department does to its assignment, already validated.
#[derive(Debug, Clone, PartialEq)]
pub enum DepartmentAction {
    Acknowledge {
        responsible_person: String,
        contact_phone: String,
        promised_at: Option<DateTime<Utc>>,
    },
    CheckIn {
        lat: f64,
        lng: f64,
        person: String,
    },
    Progress {
        note: String,
        evidence: Vec<Evidence>,
    },
    Resolve {
        resolution: String,
        evidence: Vec<Evidence>,
    },
    Return {
        reason: String,
        suggested_department_code: String,
    },
    RequestExtension {
        extra: Duration,
        reason: String,
    },
}

impl DepartmentAction {
    /// The action's name, as recorded with its `action_id`.
    pub fn name(&self) -> &'static str {
        match self {
            DepartmentAction::Acknowledge { .. } => "acknowledge",
            DepartmentAction::CheckIn { .. } => "check_in",
            DepartmentAction::Progress { .. } => "progress",
            DepartmentAction::Resolve { .. } => "resolve",
            DepartmentAction::Return { .. } => "return",
            DepartmentAction::RequestExtension { .. } => "request_extension",
        }
    }
}

/// The rules of department actions that come from configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActionRules {
    /// How far from the case's place a check-in may be.
    pub check_in_radius_meters: f64,
    /// Evidence items one assignment keeps over all its actions (`limits.evidence_per_assignment`).
    pub evidence_per_assignment: usize,
}

/// The area's fallback owner, whistled when an upheld return leaves nobody responsible.
#[derive(Debug, Clone, PartialEq)]
pub struct Fallback {
    pub target: WhistleTarget,
    pub limits: Limits,
    pub requires_on_site: bool,
}

/// What the street, a department or the clock asks of a case.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// 立案.
    Accept {
        by: String,
    },
    /// 不予立案.
    Reject {
        by: String,
        reason: String,
    },
    /// 吹哨 (accepting first when still REPORTED): one assignment per target that has no open one.
    Whistle {
        by: String,
        targets: Vec<WhistleTarget>,
        limits: Limits,
        requires_on_site: bool,
    },
    /// 自办.
    ResolveLocally {
        by: String,
        resolution: String,
    },
    /// 核查. When failed, the named resolved assignments are reworked (all resolved ones when
    /// none are named).
    Verify {
        by: String,
        passed: bool,
        note: String,
        failed_assignment_ids: Vec<String>,
    },
    DecideExtension {
        by: String,
        assignment_id: String,
        approved: bool,
        note: String,
    },
    /// `route_departments`: every department the case's route names; `fallback`: the area's
    /// fallback owner, if one is configured.
    DecideReturn {
        by: String,
        assignment_id: String,
        upheld: bool,
        note: String,
        route_departments: Vec<String>,
        fallback: Option<Fallback>,
    },
    /// 缓办.
    Defer {
        by: String,
        reason: String,
        until: Option<DateTime<Utc>>,
    },
    Resume {
        by: String,
        note: String,
    },
    /// A department's action on its assignment.
    Act {
        assignment_id: String,
        department_code: String,
        action: DepartmentAction,
        rules: ActionRules,
    },
    /// Time passed: fire every due step of every running clock.
    Tick,
    /// Another report of the same problem joined the case: kept once per `report_id`, and each
    /// open assignment is told once. No clock changes.
    MergeReport {
        report: CaseReport,
    },
    /// A wrongly merged report left the case (its own case comes as a new `case.reported`).
    SplitReport {
        report_id: String,
    },
    /// The case is a recurring problem; each open assignment is told once.
    MarkRecurrent {
        earlier_case_ids: Vec<String>,
    },
    /// Photos were added to the case; each open assignment is told.
    AttachEvidence {
        attached_by: String,
        by_community: bool,
        attachments: Vec<Evidence>,
    },
}

/// The deadlines of one assignment, as deferral events carry them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentClocks {
    pub assignment_id: String,
    pub department_code: String,
    pub acknowledge_by: DateTime<Utc>,
    pub on_site_by: DateTime<Utc>,
    pub resolve_by: DateTime<Utc>,
}

impl AssignmentClocks {
    fn of(assignment: &Assignment) -> Self {
        Self {
            assignment_id: assignment.assignment_id.clone(),
            department_code: assignment.department_code.clone(),
            acknowledge_by: assignment.acknowledge_by,
            on_site_by: assignment.on_site_by,
            resolve_by: assignment.resolve_by,
        }
    }
}

/// A verification's verdict on one assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub assignment_id: String,
    pub department_code: String,
    pub passed: bool,
}

/// A fact about the case. Events about an assignment carry it as it was right after the fact.
#[derive(Debug, Clone, PartialEq)]
pub enum CaseEvent {
    Accepted,
    Rejected {
        reason: String,
    },
    Whistled {
        assignment: Assignment,
        /// The other departments named in the same whistle.
        co_department_codes: Vec<String>,
    },
    Acknowledged {
        assignment: Assignment,
        within_limit: bool,
    },
    CheckedIn {
        assignment: Assignment,
        within_limit: bool,
        distance_meters: f64,
        person: String,
    },
    Progressed {
        assignment: Assignment,
        note: String,
    },
    Resolved {
        assignment: Assignment,
        within_limit: bool,
    },
    Returned {
        assignment: Assignment,
    },
    ExtensionRequested {
        assignment: Assignment,
        extra: Duration,
        reason: String,
        current_due_at: DateTime<Utc>,
    },
    Extended {
        assignment: Assignment,
        previous_due_at: DateTime<Utc>,
        new_due_at: DateTime<Utc>,
        extra: Duration,
        note: String,
    },
    ExtensionRefused {
        assignment: Assignment,
        extra: Duration,
        note: String,
    },
    ReturnDecided {
        assignment: Assignment,
        upheld: bool,
        note: String,
        /// The fallback owner whistled because nobody was left, if one was.
        fallback_department_code: Option<String>,
    },
    Overdue {
        assignment: Assignment,
        clock: ClockKind,
        due_at: DateTime<Utc>,
        late_by: Duration,
        escalates_at: DateTime<Utc>,
    },
    Escalated {
        assignment: Assignment,
        clock: ClockKind,
        due_at: DateTime<Utc>,
        overdue_by: Duration,
        supervision_department_code: String,
    },
    Verified {
        passed: bool,
        note: String,
        verdicts: Vec<Verdict>,
    },
    Closed,
    Reopened {
        reason: String,
        assignment_ids: Vec<String>,
    },
    ResolvedLocally {
        resolution: String,
    },
    Deferred {
        reason: String,
        until: Option<DateTime<Utc>>,
        assignments: Vec<AssignmentClocks>,
    },
    Resumed {
        note: String,
        deferred_for: Duration,
        assignments: Vec<AssignmentClocks>,
    },
    /// A notice to an open assignment: another report joined the case.
    ReportMerged {
        assignment: Assignment,
        report: CaseReport,
        report_count: usize,
    },
    /// A notice to an open assignment: photos were added to the case.
    EvidenceAttached {
        assignment: Assignment,
        by_community: bool,
        attachments: Vec<Evidence>,
        evidence_count: usize,
    },
    /// A notice to an open assignment: the case is a recurring problem.
    MarkedRecurrent {
        assignment: Assignment,
        earlier_case_ids: Vec<String>,
    },
}

impl CaseEvent {
    /// The assignment an event is about, if it is about one.
    pub fn assignment(&self) -> Option<&Assignment> {
        match self {
            CaseEvent::Whistled { assignment, .. }
            | CaseEvent::Acknowledged { assignment, .. }
            | CaseEvent::CheckedIn { assignment, .. }
            | CaseEvent::Progressed { assignment, .. }
            | CaseEvent::Resolved { assignment, .. }
            | CaseEvent::Returned { assignment }
            | CaseEvent::ExtensionRequested { assignment, .. }
            | CaseEvent::Extended { assignment, .. }
            | CaseEvent::ExtensionRefused { assignment, .. }
            | CaseEvent::ReturnDecided { assignment, .. }
            | CaseEvent::Overdue { assignment, .. }
            | CaseEvent::Escalated { assignment, .. }
            | CaseEvent::ReportMerged { assignment, .. }
            | CaseEvent::EvidenceAttached { assignment, .. }
            | CaseEvent::MarkedRecurrent { assignment, .. } => Some(assignment),
            _ => None,
        }
    }
}

/// An event with its place in the case's history.
#[derive(Debug, Clone, PartialEq)]
pub struct Emitted {
    /// The case version after the event.
    pub version: u64,
    pub at: DateTime<Utc>,
    /// Operator id, department code, `route:<id>`, or `system` for the clock.
    pub actor: String,
    pub event: CaseEvent,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum CaseError {
    /// Not allowed in the current state (FAILED_PRECONDITION), saying which.
    Refused(String),
    /// The assignment is not on this case (NOT_FOUND).
    UnknownAssignment(String),
    /// The assignment belongs to another department (PERMISSION_DENIED).
    NotAddressed {
        assignment_id: String,
        department_code: String,
    },
    /// A field of the command names something the case cannot accept (INVALID_ARGUMENT).
    Invalid { field: String, reason: String },
}

impl fmt::Display for CaseError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaseError::Refused(message) => formatter.write_str(message),
            CaseError::UnknownAssignment(id) => write!(formatter, "assignment {id} not found"),
            CaseError::NotAddressed {
                assignment_id,
                department_code,
            } => write!(
                formatter,
                "assignment {assignment_id} is not addressed to department {department_code}"
            ),
            CaseError::Invalid { field, reason } => write!(formatter, "{field}: {reason}"),
        }
    }
}

impl From<TransitionError> for CaseError {
    fn from(error: TransitionError) -> Self {
        CaseError::Refused(error.to_string())
    }
}

impl From<ProgressError> for CaseError {
    fn from(error: ProgressError) -> Self {
        CaseError::Refused(error.to_string())
    }
}

/// The actor of the clock's events.
pub const SYSTEM: &str = "system";

impl Case {
    /// A case as reported, waiting for the street.
    pub fn reported(case_id: &str, version: u64, severity: Severity, lat: f64, lng: f64) -> Self {
        Self {
            case_id: case_id.to_string(),
            status: CaseStatus::Reported,
            version,
            severity,
            lat,
            lng,
            reject_reason: String::new(),
            deferral: None,
            resolved_locally: false,
            assignments: Vec::new(),
            merged_reports: Vec::new(),
            earlier_case_ids: Vec::new(),
            recurrent: false,
            evidence: Vec::new(),
        }
    }

    /// The assignments still owing work, as they are now.
    fn open_assignments(&self) -> Vec<Assignment> {
        self.assignments
            .iter()
            .filter(|assignment| assignment.status.is_open())
            .cloned()
            .collect()
    }

    /// What intake tells about the case after it was reported: merged and split reports,
    /// recurrence, evidence. Never refused; notices go to the open assignments only.
    fn apply_report_news(
        &mut self,
        command: Command,
        now: DateTime<Utc>,
        events: &mut Vec<Emitted>,
    ) -> Result<(), CaseError> {
        match command {
            Command::MergeReport { report } => {
                if self
                    .merged_reports
                    .iter()
                    .any(|known| known.report_id == report.report_id)
                {
                    return Ok(());
                }
                self.merged_reports.push(report.clone());
                let report_count = 1 + self.merged_reports.len();
                for assignment in self.open_assignments() {
                    let actor = report.reporter_id.clone();
                    self.emit(
                        events,
                        now,
                        &actor,
                        CaseEvent::ReportMerged {
                            assignment,
                            report: report.clone(),
                            report_count,
                        },
                    );
                }
            }
            Command::SplitReport { report_id } => {
                self.merged_reports
                    .retain(|known| known.report_id != report_id);
            }
            Command::MarkRecurrent { earlier_case_ids } => {
                if self.recurrent {
                    return Ok(());
                }
                self.recurrent = true;
                self.earlier_case_ids = earlier_case_ids.clone();
                for assignment in self.open_assignments() {
                    self.emit(
                        events,
                        now,
                        SYSTEM,
                        CaseEvent::MarkedRecurrent {
                            assignment,
                            earlier_case_ids: earlier_case_ids.clone(),
                        },
                    );
                }
            }
            Command::AttachEvidence {
                attached_by,
                by_community,
                attachments,
            } => {
                self.evidence.extend(attachments.iter().cloned());
                let evidence_count = self.evidence.len();
                for assignment in self.open_assignments() {
                    self.emit(
                        events,
                        now,
                        &attached_by,
                        CaseEvent::EvidenceAttached {
                            assignment,
                            by_community,
                            attachments: attachments.clone(),
                            evidence_count,
                        },
                    );
                }
            }
            _ => {
                return Err(CaseError::Refused(
                    "not news about the case's reports".into(),
                ));
            }
        }
        Ok(())
    }

    /// Runs `command` at `now`: the events it caused, oldest first, or why it was refused (then
    /// nothing changed).
    pub fn execute(
        &mut self,
        command: Command,
        now: DateTime<Utc>,
        policy: &dyn DeadlinePolicy,
    ) -> Result<Vec<Emitted>, CaseError> {
        let mut next = self.clone();
        let mut events = Vec::new();
        next.apply(command, now, policy, &mut events)?;
        *self = next;
        Ok(events)
    }

    /// The assignment with this id.
    pub fn assignment(&self, assignment_id: &str) -> Option<&Assignment> {
        self.assignments
            .iter()
            .find(|assignment| assignment.assignment_id == assignment_id)
    }

    /// Whether an assignment still owes work.
    pub fn any_open(&self) -> bool {
        self.assignments
            .iter()
            .any(|assignment| assignment.status.is_open())
    }

    /// Whether any department has ever been whistled on the case under this code.
    fn tried(&self, department_code: &str) -> bool {
        self.assignments
            .iter()
            .any(|assignment| assignment.department_code == department_code)
    }

    /// The street may whistle a case in this status (first whistle, or re-whistle).
    pub fn may_whistle(status: CaseStatus) -> bool {
        matches!(
            status,
            CaseStatus::Reported
                | CaseStatus::Accepted
                | CaseStatus::Whistled
                | CaseStatus::Reopened
        )
    }

    fn emit(
        &mut self,
        events: &mut Vec<Emitted>,
        at: DateTime<Utc>,
        actor: &str,
        event: CaseEvent,
    ) {
        self.version += 1;
        events.push(Emitted {
            version: self.version,
            at,
            actor: actor.to_string(),
            event,
        });
    }

    fn refuse(&self, action: &str) -> CaseError {
        CaseError::Refused(format!(
            "cannot {action}: current status is {}",
            self.status.as_str()
        ))
    }

    fn check_not_deferred(&self, action: &str) -> Result<(), CaseError> {
        match &self.deferral {
            Some(deferral) => Err(CaseError::Refused(format!(
                "cannot {action}: the case is deferred (缓办) since {}; the street resumes it first",
                deferral
                    .since
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ))),
            None => Ok(()),
        }
    }

    fn index_of(&self, assignment_id: &str) -> Result<usize, CaseError> {
        self.assignments
            .iter()
            .position(|assignment| assignment.assignment_id == assignment_id)
            .ok_or_else(|| CaseError::UnknownAssignment(assignment_id.to_string()))
    }

    /// The case status that follows from its assignments: work owed keeps it WHISTLED (or
    /// REOPENED); all done with something resolved (or solved by the community) awaits
    /// verification; every assignment returned puts it back in the street's queue (ACCEPTED).
    fn settle_status(&mut self) {
        if !matches!(
            self.status,
            CaseStatus::Accepted
                | CaseStatus::Whistled
                | CaseStatus::Reopened
                | CaseStatus::AwaitingVerification
        ) || self.assignments.is_empty()
        {
            return;
        }
        let any_resolved = self
            .assignments
            .iter()
            .any(|assignment| assignment.status == AssignmentStatus::Resolved);
        self.status = if self.any_open() {
            match self.status {
                CaseStatus::Reopened => CaseStatus::Reopened,
                _ => CaseStatus::Whistled,
            }
        } else if any_resolved || self.resolved_locally {
            CaseStatus::AwaitingVerification
        } else {
            CaseStatus::Accepted
        };
    }

    fn apply(
        &mut self,
        command: Command,
        now: DateTime<Utc>,
        policy: &dyn DeadlinePolicy,
        events: &mut Vec<Emitted>,
    ) -> Result<(), CaseError> {
        match command {
            command @ (Command::MergeReport { .. }
            | Command::SplitReport { .. }
            | Command::MarkRecurrent { .. }
            | Command::AttachEvidence { .. }) => self.apply_report_news(command, now, events),
            Command::Accept { by } => self.accept(now, &by, events),
            Command::Reject { by, reason } => {
                self.check_not_deferred("reject")?;
                let allowed = self.status == CaseStatus::Reported
                    || (self.status == CaseStatus::Accepted && self.assignments.is_empty());
                if !allowed {
                    return Err(self.refuse("reject"));
                }
                self.status = CaseStatus::Rejected;
                self.reject_reason = reason.clone();
                self.emit(events, now, &by, CaseEvent::Rejected { reason });
                Ok(())
            }
            Command::Whistle {
                by,
                targets,
                limits,
                requires_on_site,
            } => self.whistle(now, policy, &by, &targets, limits, requires_on_site, events),
            Command::ResolveLocally { by, resolution } => {
                self.check_not_deferred("resolve locally")?;
                if !matches!(self.status, CaseStatus::Reported | CaseStatus::Accepted)
                    || self.any_open()
                {
                    return Err(self.refuse("resolve locally"));
                }
                self.status = CaseStatus::AwaitingVerification;
                self.resolved_locally = true;
                self.emit(events, now, &by, CaseEvent::ResolvedLocally { resolution });
                Ok(())
            }
            Command::Verify {
                by,
                passed,
                note,
                failed_assignment_ids,
            } => self.verify(
                now,
                policy,
                &by,
                passed,
                note,
                failed_assignment_ids,
                events,
            ),
            Command::DecideExtension {
                by,
                assignment_id,
                approved,
                note,
            } => {
                self.check_not_deferred("decide the extension")?;
                let index = self.index_of(&assignment_id)?;
                let assignment = &mut self.assignments[index];
                let extra = assignment
                    .extension
                    .as_ref()
                    .map_or(Duration::zero(), |extension| extension.extra);
                let moved = assignment.decide_extension(now, approved, &by, &note, policy)?;
                let snapshot = assignment.clone();
                let event = match moved {
                    Some(moved) => CaseEvent::Extended {
                        assignment: snapshot,
                        previous_due_at: moved.previous_due_at,
                        new_due_at: moved.new_due_at,
                        extra,
                        note,
                    },
                    None => CaseEvent::ExtensionRefused {
                        assignment: snapshot,
                        extra,
                        note,
                    },
                };
                self.emit(events, now, &by, event);
                Ok(())
            }
            Command::DecideReturn {
                by,
                assignment_id,
                upheld,
                note,
                route_departments,
                fallback,
            } => self.decide_return(
                now,
                policy,
                &by,
                &assignment_id,
                upheld,
                note,
                &route_departments,
                fallback,
                events,
            ),
            Command::Defer { by, reason, until } => {
                self.check_not_deferred("defer")?;
                if !matches!(
                    self.status,
                    CaseStatus::Accepted | CaseStatus::Whistled | CaseStatus::Reopened
                ) {
                    return Err(self.refuse("defer"));
                }
                let mut stopped = Vec::new();
                for assignment in &mut self.assignments {
                    if assignment.pause(now, policy) {
                        stopped.push(AssignmentClocks::of(assignment));
                    }
                }
                self.deferral = Some(Deferral {
                    since: now,
                    by: by.clone(),
                    reason: reason.clone(),
                    until,
                });
                self.emit(
                    events,
                    now,
                    &by,
                    CaseEvent::Deferred {
                        reason,
                        until,
                        assignments: stopped,
                    },
                );
                Ok(())
            }
            Command::Resume { by, note } => {
                let Some(deferral) = self.deferral.take() else {
                    return Err(CaseError::Refused(format!(
                        "cannot resume: the case is not deferred (current status is {})",
                        self.status.as_str()
                    )));
                };
                let mut resumed = Vec::new();
                for assignment in &mut self.assignments {
                    if assignment.resume(now, policy) {
                        resumed.push(AssignmentClocks::of(assignment));
                    }
                }
                self.emit(
                    events,
                    now,
                    &by,
                    CaseEvent::Resumed {
                        note,
                        deferred_for: (now - deferral.since).max(Duration::zero()),
                        assignments: resumed,
                    },
                );
                Ok(())
            }
            Command::Act {
                assignment_id,
                department_code,
                action,
                rules,
            } => self.act(now, &assignment_id, &department_code, action, rules, events),
            Command::Tick => {
                self.tick(now, events);
                Ok(())
            }
        }
    }

    fn accept(
        &mut self,
        now: DateTime<Utc>,
        by: &str,
        events: &mut Vec<Emitted>,
    ) -> Result<(), CaseError> {
        self.check_not_deferred("accept")?;
        if self.status != CaseStatus::Reported {
            return Err(self.refuse("accept"));
        }
        self.status = CaseStatus::Accepted;
        self.emit(events, now, by, CaseEvent::Accepted);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn whistle(
        &mut self,
        now: DateTime<Utc>,
        policy: &dyn DeadlinePolicy,
        by: &str,
        targets: &[WhistleTarget],
        limits: Limits,
        requires_on_site: bool,
        events: &mut Vec<Emitted>,
    ) -> Result<(), CaseError> {
        self.check_not_deferred("whistle")?;
        if !Self::may_whistle(self.status) {
            return Err(self.refuse("whistle"));
        }
        let fresh: Vec<&WhistleTarget> = targets
            .iter()
            .filter(|target| {
                !self.assignments.iter().any(|existing| {
                    existing.department_code == target.department_code && existing.status.is_open()
                })
            })
            .collect();
        if fresh.is_empty() {
            return Err(CaseError::Refused(
                "cannot whistle: every named department already has an open assignment on this case"
                    .into(),
            ));
        }
        if self.status == CaseStatus::Reported {
            self.accept(now, by, events)?;
        }
        let named: Vec<String> = targets
            .iter()
            .map(|target| target.department_code.clone())
            .collect();
        for target in fresh {
            let assignment =
                Assignment::whistle(target, &self.case_id, now, limits, requires_on_site, policy);
            let co_department_codes = named
                .iter()
                .filter(|code| **code != target.department_code)
                .cloned()
                .collect();
            self.assignments.push(assignment.clone());
            self.emit(
                events,
                now,
                by,
                CaseEvent::Whistled {
                    assignment,
                    co_department_codes,
                },
            );
        }
        if self.status != CaseStatus::Reopened {
            self.status = CaseStatus::Whistled;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn verify(
        &mut self,
        now: DateTime<Utc>,
        policy: &dyn DeadlinePolicy,
        by: &str,
        passed: bool,
        note: String,
        failed_assignment_ids: Vec<String>,
        events: &mut Vec<Emitted>,
    ) -> Result<(), CaseError> {
        if self.status != CaseStatus::AwaitingVerification {
            return Err(self.refuse("verify"));
        }
        if let Some(pending) = self.assignments.iter().find(|a| a.return_pending()) {
            return Err(CaseError::Refused(format!(
                "cannot verify: the return of assignment {} ({}) awaits the street's decision (DecideReturn)",
                pending.assignment_id, pending.department_code
            )));
        }
        if passed && !failed_assignment_ids.is_empty() {
            return Err(CaseError::Invalid {
                field: "failed_assignment_ids".into(),
                reason: "must be empty when the verification passed".into(),
            });
        }
        let resolved: Vec<&Assignment> = self
            .assignments
            .iter()
            .filter(|assignment| assignment.status == AssignmentStatus::Resolved)
            .collect();
        let mut failing: BTreeSet<&str> = BTreeSet::new();
        if !passed {
            for (index, id) in failed_assignment_ids.iter().enumerate() {
                if !resolved.iter().any(|a| a.assignment_id == *id) {
                    return Err(CaseError::Invalid {
                        field: format!("failed_assignment_ids[{index}]"),
                        reason: format!("{id} is not a resolved assignment of this case"),
                    });
                }
                if !failing.insert(id.as_str()) {
                    return Err(CaseError::Invalid {
                        field: format!("failed_assignment_ids[{index}]"),
                        reason: format!("names {id} twice"),
                    });
                }
            }
            if failing.is_empty() {
                failing = resolved.iter().map(|a| a.assignment_id.as_str()).collect();
            }
        }
        let verdicts: Vec<Verdict> = resolved
            .iter()
            .map(|assignment| Verdict {
                assignment_id: assignment.assignment_id.clone(),
                department_code: assignment.department_code.clone(),
                passed: !failing.contains(assignment.assignment_id.as_str()),
            })
            .collect();
        let failing: BTreeSet<String> = failing.into_iter().map(str::to_string).collect();
        self.emit(
            events,
            now,
            by,
            CaseEvent::Verified {
                passed,
                note: note.clone(),
                verdicts,
            },
        );
        if passed {
            self.status = CaseStatus::Closed;
            self.emit(events, now, by, CaseEvent::Closed);
            return Ok(());
        }
        let mut reopened = Vec::new();
        for assignment in &mut self.assignments {
            if failing.contains(&assignment.assignment_id) && assignment.reopen(now, policy) {
                reopened.push(assignment.assignment_id.clone());
            }
        }
        self.resolved_locally = false;
        if reopened.is_empty() {
            // a community's own solution failed: back to the street's queue
            self.status = CaseStatus::Accepted;
            return Ok(());
        }
        self.status = CaseStatus::Reopened;
        self.emit(
            events,
            now,
            by,
            CaseEvent::Reopened {
                reason: note,
                assignment_ids: reopened,
            },
        );
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn decide_return(
        &mut self,
        now: DateTime<Utc>,
        policy: &dyn DeadlinePolicy,
        by: &str,
        assignment_id: &str,
        upheld: bool,
        note: String,
        route_departments: &[String],
        fallback: Option<Fallback>,
        events: &mut Vec<Emitted>,
    ) -> Result<(), CaseError> {
        self.check_not_deferred("decide the return")?;
        if matches!(
            self.status,
            CaseStatus::Closed | CaseStatus::Rejected | CaseStatus::Merged
        ) {
            return Err(self.refuse("decide the return"));
        }
        let index = self.index_of(assignment_id)?;
        if !upheld {
            self.assignments[index].take_back(now, by, &note, policy)?;
            let assignment = self.assignments[index].clone();
            self.emit(
                events,
                now,
                by,
                CaseEvent::ReturnDecided {
                    assignment,
                    upheld: false,
                    note,
                    fallback_department_code: None,
                },
            );
            self.settle_status();
            return Ok(());
        }
        self.assignments[index].uphold_return(now, by, &note)?;
        // nobody left and nobody else named by the route: the area's fallback owner
        let nobody_responsible = !self.assignments.iter().any(|assignment| {
            assignment.status.is_open() || assignment.status == AssignmentStatus::Resolved
        });
        let fallback = fallback.filter(|fallback| {
            nobody_responsible
                && route_departments.iter().all(|code| self.tried(code))
                && !self.tried(&fallback.target.department_code)
        });
        let assignment = self.assignments[index].clone();
        self.emit(
            events,
            now,
            by,
            CaseEvent::ReturnDecided {
                assignment,
                upheld: true,
                note,
                fallback_department_code: fallback
                    .as_ref()
                    .map(|fallback| fallback.target.department_code.clone()),
            },
        );
        if let Some(fallback) = fallback {
            let target = WhistleTarget {
                role: Role::Lead,
                ..fallback.target
            };
            let actor = format!("fallback:{by}");
            self.whistle(
                now,
                policy,
                &actor,
                &[target],
                fallback.limits,
                fallback.requires_on_site,
                events,
            )?;
        }
        self.settle_status();
        Ok(())
    }

    fn act(
        &mut self,
        now: DateTime<Utc>,
        assignment_id: &str,
        department_code: &str,
        action: DepartmentAction,
        rules: ActionRules,
        events: &mut Vec<Emitted>,
    ) -> Result<(), CaseError> {
        let index = self.index_of(assignment_id)?;
        if self.assignments[index].department_code != department_code {
            return Err(CaseError::NotAddressed {
                assignment_id: assignment_id.to_string(),
                department_code: department_code.to_string(),
            });
        }
        self.check_not_deferred(action.name())?;
        let (case_lat, case_lng) = (self.lat, self.lng);
        let assignment = &mut self.assignments[index];
        let event = match action {
            DepartmentAction::Acknowledge {
                responsible_person,
                contact_phone,
                promised_at,
            } => {
                let within_limit =
                    assignment.acknowledge(now, responsible_person, contact_phone, promised_at)?;
                CaseEvent::Acknowledged {
                    assignment: assignment.clone(),
                    within_limit,
                }
            }
            DepartmentAction::CheckIn { lat, lng, person } => {
                let distance = super::distance_meters(lat, lng, case_lat, case_lng);
                let within_limit = assignment
                    .check_in(now, distance, rules.check_in_radius_meters)
                    .map_err(|error| match error {
                        CheckInError::Transition(error) => CaseError::from(error),
                        CheckInError::TooFar {
                            distance_meters,
                            radius_meters,
                        } => CaseError::Refused(format!(
                            "cannot check in: {distance_meters:.0} m from the case's place, more than {radius_meters:.0} m"
                        )),
                    })?;
                CaseEvent::CheckedIn {
                    assignment: assignment.clone(),
                    within_limit,
                    distance_meters: distance,
                    person,
                }
            }
            DepartmentAction::Progress { note, evidence } => {
                assignment.progress(evidence, rules.evidence_per_assignment)?;
                CaseEvent::Progressed {
                    assignment: assignment.clone(),
                    note,
                }
            }
            DepartmentAction::Resolve {
                resolution,
                evidence,
            } => {
                if evidence.len() > rules.evidence_per_assignment {
                    return Err(ProgressError::TooMuchEvidence {
                        kept: 0,
                        adding: evidence.len(),
                        max_evidence: rules.evidence_per_assignment,
                    }
                    .into());
                }
                let within_limit = assignment.resolve(now, resolution, evidence)?;
                CaseEvent::Resolved {
                    assignment: assignment.clone(),
                    within_limit,
                }
            }
            DepartmentAction::Return {
                reason,
                suggested_department_code,
            } => {
                assignment.return_to_street(now, reason, suggested_department_code)?;
                CaseEvent::Returned {
                    assignment: assignment.clone(),
                }
            }
            DepartmentAction::RequestExtension { extra, reason } => {
                let current_due_at = assignment.request_extension(now, extra, reason.clone())?;
                CaseEvent::ExtensionRequested {
                    assignment: assignment.clone(),
                    extra,
                    reason,
                    current_due_at,
                }
            }
        };
        self.emit(events, now, department_code, event);
        self.settle_status();
        Ok(())
    }

    /// Fires every due step of every running clock, in assignment and clock order.
    fn tick(&mut self, now: DateTime<Utc>, events: &mut Vec<Emitted>) {
        if self.deferral.is_some() {
            return;
        }
        for index in 0..self.assignments.len() {
            for kind in ClockKind::ALL {
                while let Some(firing) = self.assignments[index].fire(kind, now) {
                    let assignment = self.assignments[index].clone();
                    let event = match firing.step {
                        ClockStep::Overdue => CaseEvent::Overdue {
                            assignment,
                            clock: kind,
                            due_at: firing.due_at,
                            late_by: (now - firing.due_at).max(Duration::zero()),
                            escalates_at: firing.escalate_at,
                        },
                        ClockStep::Escalation => {
                            let supervision_department_code =
                                assignment.supervision_department_code.clone();
                            CaseEvent::Escalated {
                                assignment,
                                clock: kind,
                                due_at: firing.due_at,
                                overdue_by: (now - firing.due_at).max(Duration::zero()),
                                supervision_department_code,
                            }
                        }
                    };
                    self.emit(events, now, SYSTEM, event);
                }
            }
        }
    }

    /// The earliest time a clock of this case will fire a step, if any runs.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        if self.deferral.is_some() {
            return None;
        }
        self.assignments
            .iter()
            .filter(|assignment| assignment.status.is_open())
            .flat_map(Assignment::pending_steps)
            .map(|(_, _, due)| due)
            .min()
    }
}
